"""
Where a plan's decode time goes on the fast path, grammar and confidence on: before and after.

Loads a model (base + adapter) as the planner does, with the plan grammar, and decodes the
same commands (the first ``--limit`` of a split) with the fast path in two ways, taking turns
command by command:

- **per row** (before): what the decode loop did per kept token until it was split into
  phases: a log-sum-exp over the token's logits row, a bitmask fill and a mask pass over the
  row for every token, an ``int(argmax)`` per row (a host synchronization each) and one small
  device tensor per token for its log-probability; and attention over the whole static cache
  (``max_prompt_tokens + max_new_tokens + draft_tokens + 1`` slots);
- **batched** (after, :meth:`StaticCacheDecoder._accept`): one max over all rows of a pass,
  one ``tolist()``, the grammar asked only whether it allows the model's own choice (a mask
  only when it does not), one log-sum-exp over the rows kept; attention over the slots in
  use (rounded up to 64).

Both give the same tokens (checked). Reported: the plan's decode time p50 for each (the model's
forward passes included, the same in both), and, from a second, instrumented run of each, the
time per kept token in each stage: the log-sum-exp, the bitmask fill, the mask pass, the argmax
and its synchronization, the grammar's accept, the log-probability bookkeeping, and the rest
(Python per token). ``--draft-tokens`` sets the prompt-lookup drafts.

    python3 benchmarks/token_cost.py --model BASE --adapter LORA --out DIR
"""

import argparse
from collections import defaultdict
import json
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout too
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from report import write_report  # noqa: E402, I100
from robot_llm_planner.inference.decoding import StaticCacheDecoder  # noqa: E402
import torch  # noqa: E402

DEFAULT_SPLIT = os.path.join(ROOT, 'training', 'data', 'task2_prompt0_test.json')


class Stages:
    """Seconds spent per named stage (only when ``on``)."""

    def __init__(self) -> None:
        """Start with nothing counted."""
        self.on = False
        self.seconds = defaultdict(float)
        self.tokens = 0
        self.passes = 0

    def add(self, name: str, started: float) -> float:
        """Count the time since ``started`` under ``name``; return now."""
        now = time.perf_counter()
        if self.on:
            self.seconds[name] += now - started
        return now


class TimedPasses(StaticCacheDecoder):
    """A decoder whose model passes count as the stage 'model forward passes'."""

    stages: Stages

    def _prefill(self, prompt_ids):
        started = time.perf_counter()
        logits = super()._prefill(prompt_ids)
        self.stages.add('model forward passes', started)
        return logits

    def _step(self, last, draft, position):
        started = time.perf_counter()
        logits = super()._step(last, draft, position)
        self.stages.add('model forward passes', started)
        return logits


class PerRowDecoder(TimedPasses):
    """The fast path with the previous per-token work of the accept phase (the baseline)."""

    def _accept(self, logits, draft, constraint=None):
        stages = self.stages
        kept, logprobs = [], []
        for row_index in range(logits.shape[0]):
            started = time.perf_counter()
            row = logits[row_index]
            total = torch.logsumexp(row.float(), -1)
            started = stages.add('log-sum-exp', started)
            if constraint is not None:
                needed = constraint.fill(_bitmask(constraint))
                started = stages.add('bitmask fill', started)
                if needed:
                    from robot_llm_planner.inference.grammar import apply_bitmask
                    apply_bitmask(row.unsqueeze(0), constraint._bitmask,
                                  constraint.grammar.vocab_size, constraint._device_masks)
                started = stages.add('mask pass', started)
            token = int(torch.argmax(row))
            started = stages.add('argmax + sync', started)
            if constraint is not None:
                constraint.accept(token)
                started = stages.add('grammar accept', started)
            kept.append(token)
            logprobs.append(torch.nan_to_num(row[token].float() - total, nan=-math.inf))
            started = stages.add('log-probability', started)
            if token in self.stop_ids or row_index >= len(draft) or token != draft[row_index]:
                break
        started = time.perf_counter()
        values = torch.stack(logprobs).tolist()
        stages.add('log-probability', started)
        return kept, values


class BatchedDecoder(TimedPasses):
    """The current accept phase, instrumented stage by stage (same operations)."""

    def _accept(self, logits, draft, constraint=None):
        stages = self.stages
        started = time.perf_counter()
        best, greedy = logits.max(-1)
        tokens = greedy.tolist()
        started = stages.add('argmax + sync', started)
        kept, overruled = [], {}
        for row, token in enumerate(tokens):
            if constraint is not None:
                allowed = constraint.accept_if_allowed(token)
                started = stages.add('grammar accept', started)
                if not allowed:
                    total = logits[row].float().logsumexp(-1)
                    started = stages.add('log-sum-exp', started)
                    token = constraint.best_allowed(logits[row])
                    overruled[row] = (total, token)
                    started = stages.add('mask pass (refused rows)', started)
            kept.append(token)
            if token in self.stop_ids or row >= len(draft) or token != draft[row]:
                break
        started = time.perf_counter()
        total = logits[:len(kept)].float().logsumexp(-1)
        started = stages.add('log-sum-exp', started)
        logprobs = best[:len(kept)].float() - total
        for row, (total, token) in overruled.items():
            logprobs[row] = logits[row, token].float() - total
        values = [value if value == value else -math.inf for value in logprobs.tolist()]
        stages.add('log-probability', started)
        return kept, values


def _bitmask(constraint):
    if constraint._bitmask is None:
        import xgrammar as xgr
        constraint._bitmask = xgr.allocate_token_bitmask(1, constraint.grammar.vocab_size)
    return constraint._bitmask


def decoders(backend, draft_tokens):
    """Return the per-row and batched decoders over the backend's model, with their stages."""
    made = {}
    for name, kind in (('per row (before)', PerRowDecoder), ('batched (after)', BatchedDecoder)):
        decoder = kind(backend.model, backend.stop_ids, backend.tokenizer.pad_token_id,
                       backend.max_prompt_tokens, backend.max_new_tokens,
                       draft_tokens=draft_tokens)
        decoder.stages = Stages()
        decoder._views = kind is BatchedDecoder  # before: attention over the whole cache
        made[name] = decoder
    return made


def main(argv=None) -> int:
    """Run the comparison; write token_cost.json/.md under --out; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    parser.add_argument('--model', required=True)
    parser.add_argument('--adapter', default='')
    parser.add_argument('--split', default=DEFAULT_SPLIT)
    parser.add_argument('--limit', type=int, default=20)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--draft-tokens', type=int, default=8)
    parser.add_argument('--max-new-tokens', type=int, default=256)
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from robot_llm_planner.core.prompt import PromptBuilder
    from robot_llm_planner.core.skills import SkillSet
    from robot_llm_planner.inference.grammar import PlanGrammar
    from robot_llm_planner.inference.transformers_backend import TransformersBackend
    backend = TransformersBackend(args.model, args.adapter, device='cpu', fast_path='off',
                                  max_new_tokens=args.max_new_tokens,
                                  grammar=PlanGrammar(SkillSet.load()))
    backend.load()
    with open(args.split, encoding='utf-8') as stream:
        commands = [row['input'] for row in json.load(stream)][:args.limit]
    prompts = [backend.encode(command, PromptBuilder()) for command in commands]
    paths = decoders(backend, args.draft_tokens)
    load_start = os.getloadavg()[0]
    decode_ms = {name: [] for name in paths}
    answers = {name: [] for name in paths}
    for instrumented in (False, True):
        for name, decoder in paths.items():
            decoder.decode(prompts[0], None, backend.grammar.matcher())  # warm
            decoder.stages.on = instrumented
        for round_index in range(args.runs):
            for ids in prompts:
                for name, decoder in paths.items():
                    result = decoder.decode(ids, None, backend.grammar.matcher())
                    if instrumented:
                        decoder.stages.tokens += len(result.logprobs)
                        decoder.stages.passes += 1 + result.stats['decode_passes']
                        decoder.stages.seconds['plan (instrumented)'] += (
                            result.stats['prefill_ms'] + result.stats['decode_ms']) / 1000.0
                    else:
                        decode_ms[name].append(result.stats['prefill_ms']
                                               + result.stats['decode_ms'])
                        if round_index == 0:
                            answers[name].append(result.tokens)
    first, second = list(paths)
    report = {'model': args.model, 'adapter': args.adapter, 'commands': len(commands),
              'runs': args.runs, 'threads': args.threads, 'draft_tokens': args.draft_tokens,
              'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
              'load_average': [round(load_start, 2), round(os.getloadavg()[0], 2)],
              'same_tokens': answers[first] == answers[second], 'paths': {}}
    for name, decoder in paths.items():
        stages = decoder.stages
        seconds = dict(stages.seconds)
        plan = seconds.pop('plan (instrumented)', 0.0)
        seconds['rest (Python per token, drafts)'] = plan - sum(seconds.values())
        per_token = {stage: round(value * 1e6 / max(1, stages.tokens), 2)
                     for stage, value in seconds.items()}
        per_token['all (instrumented)'] = round(plan * 1e6 / max(1, stages.tokens), 2)
        report['paths'][name] = {
            'decode_ms_p50': round(statistics.median(decode_ms[name]), 2),
            'tokens_per_plan': round(stages.tokens / max(1, len(commands) * args.runs), 1),
            'passes_per_plan': round(stages.passes / max(1, len(commands) * args.runs), 1),
            'us_per_kept_token': per_token}
    lines = ['%s, load average %.2f -> %.2f, %d torch thread(s); %s (+ %s); %d commands x %d '
             'runs, %d draft tokens, grammar and confidence on; same tokens on both: %s' % (
                 report['date'], report['load_average'][0], report['load_average'][1],
                 args.threads, args.model, args.adapter or 'no adapter', len(commands),
                 args.runs, args.draft_tokens, report['same_tokens']), '']
    stage_names = sorted({stage for path in report['paths'].values()
                          for stage in path['us_per_kept_token']})
    lines.append('| | ' + ' | '.join(report['paths']) + ' |')
    lines.append('|---|' + '---|' * len(report['paths']))
    lines.append('| plan decode p50 ms (not instrumented) | ' + ' | '.join(
        '%.2f' % path['decode_ms_p50'] for path in report['paths'].values()) + ' |')
    lines.append('| kept tokens / forward passes per plan | ' + ' | '.join(
        '%.1f / %.1f' % (path['tokens_per_plan'], path['passes_per_plan'])
        for path in report['paths'].values()) + ' |')
    for stage in stage_names:
        lines.append('| µs per kept token: %s | ' % stage + ' | '.join(
            '%.1f' % path['us_per_kept_token'].get(stage, 0.0)
            for path in report['paths'].values()) + ' |')
    write_report(args.out, 'token_cost', report, '\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
