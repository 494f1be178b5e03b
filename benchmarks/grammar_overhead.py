"""
Grammar overhead: decode time per token with and without the plan grammar, same run.

Builds a random-weight model (``--config tiny`` on CPU, ``--config qwen1.5-7b`` on a GPU) with
a matching tokenizer (tiny: the byte-level BPE the tests use; qwen1.5-7b: Qwen1.5's real
tokenizer, 151,646 tokens, built by ``cli qwen-tokenizer`` from the installed dashscope
package, logits padded to 151,936 like Qwen1.5) or the one of ``--tokenizer DIR`` (e.g.
Qwen1.5's on the tiny shape, with ``--vocab-size 151936``), or loads a model directory
(``--model``, ``--adapter`` merged at load). Nothing downloads. Then, batch 1, for each of
``--commands`` commands:

- fast path (:class:`~robot_llm_planner.inference.decoding.StaticCacheDecoder`, CUDA graphs
  on CUDA): one constrained decode (grammar matcher, stops when the plan is complete or at
  ``--max-new-tokens``), and an unconstrained decode of exactly as many forward passes;
- ``generate()`` path (default on CPU; ``--paths fast generate`` on CUDA): the same with the
  grammar's logits processor;
- the mask alone: the constrained tokens, and the shipped test split's plans (``--labels``),
  replayed through fresh matchers, timing bitmask fill, mask application on the logits'
  device and token acceptance. ``--mask-only`` skips the model (compile time and this only).

Reported: ms per decode step without/with the grammar and the difference (median over
``--runs`` runs of every command), the mask-alone µs per token, grammar compile time. JSON
and markdown go to ``--out``.

    python3 benchmarks/grammar_overhead.py --config tiny --device cpu --out /tmp/g   # CPU
    python3 benchmarks/grammar_overhead.py --config qwen1.5-7b --mask-only --out /tmp/g
    python3 benchmarks/grammar_overhead.py --config tiny --tokenizer DIR --vocab-size 151936
        --device cpu --out /tmp/g     # (one line) Qwen1.5's vocabulary, tiny model, on CPU
    python3 benchmarks/grammar_overhead.py --config qwen1.5-7b --device cuda --out $OUT
    python3 benchmarks/grammar_overhead.py --model /models/Qwen1.5-7B --adapter /lora --out .
"""

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run from a checkout (the GPU machine has no colcon install); training/ for the tiny model
sys.path[:0] = [ROOT, os.path.join(ROOT, 'training')]

from bench_models import build_model, SHAPES, synchronize  # noqa: E402, I100
from report import write_report  # noqa: E402
from robot_llm_planner.core.prompt import IM_END, PromptBuilder  # noqa: E402
from robot_llm_planner.core.skills import SkillSet  # noqa: E402
from robot_llm_planner.inference.decoding import StaticCacheDecoder  # noqa: E402
from robot_llm_planner.inference.grammar import PlanGrammar  # noqa: E402
import torch  # noqa: E402

COMMANDS = ['帮我拿一瓶水。', '把红色的杯子放到厨房的桌子上', '去客厅', '打开冰箱门',
            '能不能帮我把遥控器拿给爸爸', '关上卧室的窗户吧', '在书房找一下那本蓝色的书',
            '请把充电器从沙发旁边拿过来']


def _version(package):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return 'unknown'


def _project_texts():
    from robot_llm_planner.core.prompt import SYSTEM_PROMPT
    texts = COMMANDS + [SYSTEM_PROMPT] + SkillSet.load().names()
    for path in sorted(glob.glob(os.path.join(ROOT, 'training', 'data',
                                              'task*_prompt0_*.json'))):
        with open(path, encoding='utf-8') as stream:
            for row in json.load(stream)[:2000]:
                texts += [row.get('input', ''), row.get('output', '')]
    return [text for text in texts if text]


def build_tokenizer(args):
    """Return the tokenizer of ``--model`` or ``--tokenizer``, or one made for ``--config``."""
    from transformers import AutoTokenizer
    if args.model or args.tokenizer:
        return AutoTokenizer.from_pretrained(args.model or args.tokenizer)
    directory = tempfile.mkdtemp(prefix='grammar_overhead_')
    if args.config == 'tiny':
        from planner_training.tiny_qwen import build_tokenizer as build_tiny
        return build_tiny(_project_texts(), directory, vocab_size=600)
    from robot_llm_planner.cli.qwen_tokenizer import write_qwen_tokenizer
    write_qwen_tokenizer(directory)  # Qwen1.5's, from the dashscope package's qwen.tiktoken
    return AutoTokenizer.from_pretrained(directory)


def logits_width(args, tokenizer):
    """Return the model's vocab_size (its logits width) without building it."""
    if args.model:
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(args.model).vocab_size
    return args.vocab_size or max(SHAPES[args.config]['vocab_size'], len(tokenizer))


def load_model(args, tokenizer, device, dtype):
    """Return the model of ``--model`` (adapter merged) or a random-weight ``--config`` one."""
    return build_model(device, dtype, args.config, args.model, args.adapter,
                       vocab_size=logits_width(args, tokenizer),
                       eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                       pad_token_id=tokenizer.pad_token_id)


def label_tokens(tokenizer, limit):
    """Return the token ids of the first ``limit`` plans of the shipped test split."""
    path = os.path.join(ROOT, 'training', 'data', 'task2_prompt0_test.json')
    with open(path, encoding='utf-8') as stream:
        labels = [row['output'] for row in json.load(stream)][:limit]
    return [tokenizer.encode(label, add_special_tokens=False) for label in labels]


def fast_path(decoder, grammar, prompts, max_new, runs, device):
    """Time the fast path with and without the grammar on the same forward passes."""
    stop_ids = decoder.stop_ids
    with_ms, without_ms, tokens = [], [], []
    for ids in prompts:
        for _ in range(runs):
            decoder.stop_ids = stop_ids
            constrained = decoder.decode(ids, max_new, grammar.matcher())
            passes = constrained.stats['decode_passes']
            if passes == 0:
                continue
            decoder.stop_ids = set()  # never stops: exactly as many passes, no grammar
            free = decoder.decode(ids, len(constrained.tokens) + 1)
            with_ms.append(constrained.stats['decode_ms'] / passes)
            without_ms.append(free.stats['decode_ms'] / max(1, free.stats['decode_passes']))
            tokens.append(len(constrained.tokens) + constrained.finished)
    decoder.stop_ids = stop_ids
    return _summary(without_ms, with_ms, tokens)


def generate_path(model, grammar, prompts, stop_ids, pad_id, max_new, runs, device):
    """Time generate() with and without the grammar's logits processor, same token counts."""
    with_ms, without_ms, tokens = [], [], []
    for ids in prompts:
        prompt = torch.tensor([ids], device=device)
        common = {'attention_mask': torch.ones_like(prompt), 'do_sample': False,
                  'temperature': None, 'top_p': None, 'top_k': None, 'pad_token_id': pad_id,
                  'repetition_penalty': 1.0}
        for _ in range(runs):
            synchronize(device)
            started = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(prompt, max_new_tokens=max_new, eos_token_id=stop_ids,
                                     logits_processor=[grammar.logits_processor(1)], **common)
            synchronize(device)
            constrained_ms = (time.perf_counter() - started) * 1000.0
            count = out.shape[1] - prompt.shape[1]
            started = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(prompt, max_new_tokens=count, min_new_tokens=count,
                                     eos_token_id=None, **common)
            synchronize(device)
            free_ms = (time.perf_counter() - started) * 1000.0
            with_ms.append(constrained_ms / count)
            without_ms.append(free_ms / count)
            tokens.append(count)
    return _summary(without_ms, with_ms, tokens)


def _summary(without_ms, with_ms, tokens):
    without, with_ = statistics.median(without_ms), statistics.median(with_ms)
    return {'ms_per_token_without': round(without, 4), 'ms_per_token_with': round(with_, 4),
            'overhead_ms_per_token': round(with_ - without, 4),
            'overhead_pct': round(100.0 * (with_ - without) / without, 2),
            'samples': len(with_ms), 'tokens_per_plan_median': statistics.median(tokens)}


def mask_alone(grammar, token_lists, vocab_size, device, dtype):
    """Replay constrained outputs through fresh matchers; return µs per token per stage."""
    logits = torch.randn(1, vocab_size, device=device).to(dtype)
    fill, apply, accept = [], [], []
    from robot_llm_planner.inference.grammar import apply_bitmask
    import xgrammar as xgr
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    buffers = {}
    for tokens in token_lists:
        matcher = grammar.matcher()
        for token in tokens:
            started = time.perf_counter()
            needed = matcher.fill(bitmask)
            filled = time.perf_counter()
            if needed:
                apply_bitmask(logits, bitmask, vocab_size, buffers)
                synchronize(device)
            applied = time.perf_counter()
            matcher.accept(token)
            accepted = time.perf_counter()
            fill.append(filled - started)
            apply.append(applied - filled)
            accept.append(accepted - applied)
    stages = {'fill_bitmask_us': fill, 'apply_mask_us': apply, 'accept_token_us': accept}
    result = {name: round(1e6 * statistics.mean(values), 2) for name, values in stages.items()}
    result['total_us'] = round(sum(result.values()), 2)
    result['tokens'] = len(fill)
    return result


def markdown(report):
    """Return the report as markdown."""
    lines = ['Device: %s; torch %s; transformers %s; xgrammar %s; Python %s; %s; %s' % (
        report['device'], report['torch'], report['transformers'], report['xgrammar'],
        report['python'], report['model'], report['date']), '',
        'Tokenizer %d tokens, logits width %d; grammar: at most %d steps and %d characters '
        'per text; compiled in %.0f ms.' % (
            report['tokenizer_size'], report['vocab_size'], report['max_steps'],
            report['max_text_chars'], report['compile_ms'])]
    if report['paths']:
        lines += ['', 'Batch 1, %d commands x %d runs, at most %d new tokens, %d draft tokens; '
                  'median ms per decode step, the same number of steps with and without.'
                  % (report['commands'], report['runs'], report['max_new_tokens'],
                     report['draft_tokens']), '',
                  '| path | ms/token without grammar | with grammar | overhead ms/token | '
                  'overhead |', '|---|---|---|---|---|']
        for name, path in report['paths'].items():
            lines.append('| %s | %.3f | %.3f | %.3f | %+.1f %% |' % (
                name, path['ms_per_token_without'], path['ms_per_token_with'],
                path['overhead_ms_per_token'], path['overhead_pct']))
    lines.append('')
    for key, what in (('mask_alone', "the model's constrained outputs"),
                      ('label_mask_alone', 'shipped test-split plans')):
        if key in report:
            mask = report[key]
            lines.append('Mask alone, %s replayed (%d tokens): fill bitmask %.1f µs + apply on '
                         '%s %.1f µs + accept %.1f µs = %.1f µs per token.' % (
                             what, mask['tokens'], mask['fill_bitmask_us'],
                             report['device_type'], mask['apply_mask_us'],
                             mask['accept_token_us'], mask['total_us']))
    return '\n'.join(lines) + '\n'


def run_model(args, report, model, tokenizer, grammar, stop_ids, device, dtype):
    """Time the decode paths with and without the grammar; add the results to ``report``."""
    vocab_size = model.config.vocab_size
    prompts = [PromptBuilder().token_ids(tokenizer, command)
               for command in COMMANDS[:report['commands']]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    decoder = StaticCacheDecoder(model, stop_ids, pad_id, max_prompt_tokens=256,
                                 max_new_tokens=args.max_new_tokens,
                                 draft_tokens=args.draft_tokens,
                                 compile_steps=device.type == 'cuda')
    started = time.perf_counter()
    for _ in range(2):  # warm-up (compiles the step on CUDA)
        decoder.decode(prompts[0], args.max_new_tokens, grammar.matcher())
    synchronize(device)
    report['warmup_s'] = round(time.perf_counter() - started, 2)
    token_lists = [decoder.decode(ids, args.max_new_tokens, grammar.matcher()).tokens
                   for ids in prompts]
    if 'fast' in args.paths:
        report['paths']['fast path (static cache%s)' % (
            ', CUDA graphs' if device.type == 'cuda' else '')] = fast_path(
            decoder, grammar, prompts, args.max_new_tokens, args.runs, device)
    if 'generate' in args.paths:
        report['paths']['generate() (dynamic cache)'] = generate_path(
            model, grammar, prompts, stop_ids, pad_id, args.max_new_tokens, args.runs, device)
    for name, path in report['paths'].items():
        print('%-36s %8.3f -> %8.3f ms/token (%+.1f %%), %s tokens per plan' % (
            name, path['ms_per_token_without'], path['ms_per_token_with'],
            path['overhead_pct'], path['tokens_per_plan_median']), flush=True)
    report['mask_alone'] = mask_alone(grammar, token_lists, vocab_size, device, dtype)
    report['plans'] = [tokenizer.decode(tokens) for tokens in token_lists]


def main(argv=None):
    """Run the benchmark; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    parser.add_argument('--config', choices=sorted(SHAPES), default='tiny')
    parser.add_argument('--model', help='a model directory (with its tokenizer) instead')
    parser.add_argument('--tokenizer', help="a tokenizer directory (e.g. Qwen1.5's, cli "
                        'qwen-tokenizer) instead of the one made for --config')
    parser.add_argument('--vocab-size', type=int, help="the random model's logits width "
                        "(default: the --config shape's or the tokenizer's, the larger)")
    parser.add_argument('--adapter', default='', help='LoRA adapter merged into --model')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', default='auto')
    parser.add_argument('--commands', type=int, default=4)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--max-new-tokens', type=int, default=64)
    parser.add_argument('--draft-tokens', type=int, default=0)
    parser.add_argument('--paths', nargs='+', choices=('fast', 'generate'),
                        help='decode paths to time (default: both on CPU, the fast path on '
                        'CUDA, where generate() would not fit the time limit of the GPU run)')
    parser.add_argument('--max-steps', type=int, default=PlanGrammar(SkillSet.load()).max_steps)
    parser.add_argument('--max-text-chars', type=int,
                        default=PlanGrammar(SkillSet.load()).max_text_chars)
    parser.add_argument('--labels', type=int, default=100,
                        help='shipped test-split plans replayed through the mask alone')
    parser.add_argument('--mask-only', action='store_true',
                        help='no model: compile time and the mask alone (replayed labels)')
    parser.add_argument('--out', default='.')
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.paths is None:
        args.paths = ['fast'] if device.type == 'cuda' else ['fast', 'generate']
    dtype = {'auto': torch.bfloat16 if device.type == 'cuda' else torch.float32,
             'bfloat16': torch.bfloat16, 'float16': torch.float16,
             'float32': torch.float32}[args.dtype]
    import transformers
    started = time.perf_counter()
    tokenizer = build_tokenizer(args)
    vocab_size = logits_width(args, tokenizer)
    stop_ids = [tokenizer.convert_tokens_to_ids(IM_END)]
    grammar = PlanGrammar(SkillSet.load(), max_steps=args.max_steps,
                          max_text_chars=args.max_text_chars)
    grammar.compile(tokenizer, len(tokenizer), vocab_size, stop_ids=stop_ids)
    report = {'device': torch.cuda.get_device_name(device) if device.type == 'cuda'
              else 'CPU (%s, %d threads)' % (platform.processor() or platform.machine(),
                                             torch.get_num_threads()),
              'device_type': device.type, 'torch': torch.__version__,
              'transformers': transformers.__version__, 'xgrammar': _version('xgrammar'),
              'python': platform.python_version(),
              'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
              'model': args.model or ('no model (mask only), %s tokenizer' % args.config
                                      if args.mask_only
                                      else 'random weights, %s shape' % args.config),
              'dtype': str(dtype).replace('torch.', ''),
              'tokenizer_size': len(tokenizer), 'vocab_size': vocab_size,
              'max_steps': grammar.max_steps, 'max_text_chars': grammar.max_text_chars,
              'compile_ms': round(grammar.compile_ms, 1),
              'commands': min(args.commands, len(COMMANDS)), 'runs': args.runs,
              'max_new_tokens': args.max_new_tokens, 'draft_tokens': args.draft_tokens,
              'paths': {}}
    print('tokenizer %d tokens, logits %d; grammar compiled in %.0f ms' % (
        len(tokenizer), vocab_size, grammar.compile_ms), flush=True)
    report['label_mask_alone'] = mask_alone(grammar, label_tokens(tokenizer, args.labels),
                                            vocab_size, device, dtype)
    print('mask alone on %d label tokens: %.1f us per token' % (
        report['label_mask_alone']['tokens'], report['label_mask_alone']['total_us']),
        flush=True)
    if not args.mask_only:
        model = load_model(args, tokenizer, device, dtype)
        report['build_s'] = round(time.perf_counter() - started, 2)
        run_model(args, report, model, tokenizer, grammar, stop_ids, device, dtype)
    write_report(args.out, 'grammar_overhead', report, markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
