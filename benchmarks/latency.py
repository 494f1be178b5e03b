"""
Plan latency: this project's decode path against LLaMA-Factory's serving path, same run.

Builds a Qwen1.5-7B-shaped model from its config with random weights on the GPU (nothing
downloads), or loads a model directory (``--model``, optional ``--adapter`` merged at load),
and measures at fixed output lengths (every path generates exactly ``--new-tokens`` tokens):

- baseline: the merged model, plain ``generate()``, dynamic cache (LLaMA-Factory's HF engine);
- engine: :class:`~robot_llm_planner.inference.decoding.StaticCacheDecoder` (static KV cache,
  compiled
  step with CUDA graphs on CUDA), with 0 draft tokens and with each ``--draft-tokens`` k
  (per-pass cost of verifying k drafts; acceptance needs real weights, see below);
- the bandwidth floor: weight bytes read per step over the device copy bandwidth measured in
  this run.

Reported per path: first-token ms, decode ms/token, plan ms p50/p90 over ``--runs`` runs, and
for the run: peak GPU memory, model build/load time and warm-up (compile) time. JSON and
markdown go to ``--out``. On CPU, ``--config tiny`` runs a tiny model as a smoke test.

With random weights greedy decoding repeats itself, so prompt-lookup acceptance would be
meaningless: ``--acceptance-model DIR`` measures it on a real (e.g. the demo) model's plans.

    python3 benchmarks/latency.py --config qwen1.5-7b --out $OUT        # GPU
    python3 benchmarks/latency.py --config tiny --runs 3 --out /tmp/b   # CPU smoke test
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout (the GPU machine has no colcon install)

from bench_models import build_model, SHAPES, synchronize  # noqa: E402, I100
from robot_llm_planner.core.stats import percentile  # noqa: E402
from robot_llm_planner.inference.decoding import StaticCacheDecoder  # noqa: E402
import torch  # noqa: E402


def copy_bandwidth(device, megabytes):
    """Return device-to-device copy bandwidth in bytes/s, counting bytes read and written."""
    source = torch.empty(megabytes * 2 ** 20, dtype=torch.uint8, device=device).random_()
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    synchronize(device)
    started = time.perf_counter()
    repeats = 10
    for _ in range(repeats):
        target.copy_(source)
    synchronize(device)
    return 2 * source.numel() * repeats / (time.perf_counter() - started)


def percentiles(values):
    """Return p50 and p90 of a list of milliseconds."""
    return {'p50_ms': round(statistics.median(values), 3),
            'p90_ms': round(percentile(values, 0.9), 3)}


def time_runs(function, device, runs):
    """Call ``function`` ``runs`` times; return the wall times in ms."""
    times = []
    for _ in range(runs):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def measure(name, generate, device, new_tokens, runs):
    """Time first token (1 new token) and whole plans (``new_tokens``) for one path."""
    for _ in range(2):
        generate(new_tokens)  # warm-up (and compilation for compiled paths)
    first = time_runs(lambda: generate(1), device, runs)
    plan = time_runs(lambda: generate(new_tokens), device, runs)
    first_ms = statistics.median(first)
    plan_stats = percentiles(plan)
    result = {'first_token_ms': round(first_ms, 3), 'plan': plan_stats,
              'decode_ms_per_token': round((plan_stats['p50_ms'] - first_ms)
                                           / max(1, new_tokens - 1), 3)}
    print('%-28s first %8.2f ms  decode %7.3f ms/token  plan p50 %9.2f ms  p90 %9.2f ms' % (
        name, first_ms, result['decode_ms_per_token'], plan_stats['p50_ms'],
        plan_stats['p90_ms']), flush=True)
    return result


def baseline_generate(model, prompt):
    """Return the baseline: plain generate() with the dynamic cache, fixed output length."""
    def generate(new_tokens):
        with torch.inference_mode():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=0)
        assert out.shape[1] == prompt.shape[1] + new_tokens
    return generate


def engine_generate(decoder, prompt_ids):
    """Return the engine's decode for a fixed output length (no stop token: never stops)."""
    def generate(new_tokens):
        result = decoder.decode(prompt_ids, new_tokens)
        assert len(result.tokens) == new_tokens
        generate.stats = result.stats
    return generate


def agreement(model, decoder, prompt, device, new_tokens):
    """Compare the engine's greedy tokens with generate()'s for the benchmark prompt."""
    with torch.inference_mode():
        expected = model.generate(prompt.to(device), attention_mask=torch.ones_like(prompt).to(
            device), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, pad_token_id=0)[0, prompt.shape[1]:]
    got = decoder.decode(prompt[0].tolist(), new_tokens).tokens
    expected = expected.tolist()
    same = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), len(got))
    print('greedy agreement with generate(): %d of %d tokens identical before any difference'
          % (same, new_tokens), flush=True)
    return {'identical_prefix_tokens': same, 'new_tokens': new_tokens}


def acceptance(model_dir, adapter, split, draft_tokens, limit):
    """Measure prompt-lookup acceptance on a real model's plans (CPU is fine)."""
    sys.path.insert(0, ROOT)
    from robot_llm_planner.core.backend import GenerationConfig
    from robot_llm_planner.core.prompt import PromptBuilder
    from robot_llm_planner.inference.transformers_backend import TransformersBackend
    with open(split, encoding='utf-8') as stream:
        commands = [row['input'] for row in json.load(stream)][:limit]
    results = {}
    for k in draft_tokens:
        backend = TransformersBackend(model_dir, adapter, device='cpu', fast_path='on',
                                      draft_tokens=k)
        backend.load()
        tokens = passes = 0
        for command in commands:
            generation = backend.generate([command], PromptBuilder(),
                                          GenerationConfig(max_new_tokens=96))[0]
            tokens += generation.tokens
            passes += 1 + generation.stats['decode_passes']  # prefill gives the first token
        results[k] = {'commands': len(commands), 'tokens': tokens, 'forward_passes': passes,
                      'tokens_per_pass': round(tokens / max(1, passes), 3)}
        print('acceptance k=%d: %.3f tokens per forward pass over %d commands'
              % (k, results[k]['tokens_per_pass'], len(commands)), flush=True)
    return results


def markdown(report):
    """Return the report as a markdown table (whatever phases finished)."""
    lines = ['Device: %s; torch %s; transformers %s; %s; prompt %d tokens, %d new tokens, '
             '%d runs; %s' % (report['device'], report['torch'], report['transformers'],
                              report['model'], report['prompt_tokens'], report['new_tokens'],
                              report['runs'], report['date']), '',
             '| path | first token ms | decode ms/token | plan p50 ms | plan p90 ms | '
             'vs baseline | peak GPU GiB |', '|---|---|---|---|---|---|---|']
    base = report['paths'].get('baseline_generate_dynamic', {}).get('plan', {}).get('p50_ms')
    for name, path in report['paths'].items():
        lines.append('| %s | %.2f | %.3f | %.2f | %.2f | %s | %s |' % (
            name, path['first_token_ms'], path['decode_ms_per_token'], path['plan']['p50_ms'],
            path['plan']['p90_ms'], '%.2fx' % (base / path['plan']['p50_ms']) if base else '-',
            path.get('peak_gpu_memory_gib', '-')))
    for key, label in (('floor_ms_per_token', 'floor (weights / copy bandwidth)'),
                       ('floor_int8_ms_per_token', 'floor, int8 weights')):
        if key in report:
            lines.append('| %s | | %.3f | | | | |' % (label, report[key]))
    if report.get('verify_ms_per_pass'):
        lines += ['', 'Verify pass (1 + k tokens) ms: ' + ', '.join(
            'k=%s %.3f' % item for item in report['verify_ms_per_pass'].items())]
    for k, item in report.get('draft_estimate', {}).items():
        lines.append('Estimate with %s drafts at %.3f plan tokens per pass (measured on real '
                     'plans): %.3f ms/token, plan %.1f ms, %.2fx the fast path without drafts'
                     % (k, item['tokens_per_pass'], item['decode_ms_per_token'],
                        item['plan_ms'], item['vs_fast_path']))
    facts = ['%s %.1f s' % (report.get('model_source', 'build'), report['build_s'])
             if 'build_s' in report else None,
             'engine warm-up (compile) %.1f s' % report['engine_warmup_s']
             if 'engine_warmup_s' in report else None,
             'peak GPU memory %s GiB' % report['peak_gpu_memory_gib']
             if 'peak_gpu_memory_gib' in report else None,
             'copy bandwidth %.3f TB/s (bytes read + written)' % report['copy_tb_s']
             if 'copy_tb_s' in report else None]
    lines += ['', '; '.join(fact for fact in facts if fact) + '.']
    if report.get('compile'):
        lines += ['', 'Compilation: %s' % json.dumps(report['compile'], sort_keys=True)]
    for name, error in report.get('errors', {}).items():
        lines.append('**%s failed**: %s' % (name, error))
    return '\n'.join(lines) + '\n'


def save(report, out):
    """Write latency.json and latency.md (after every phase: a timeout keeps what ran)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'latency.json'), 'w', encoding='utf-8') as stream:
        json.dump(report, stream, indent=1)
    with open(os.path.join(out, 'latency.md'), 'w', encoding='utf-8') as stream:
        stream.write(markdown(report))


def phase(report, out, name, function):
    """Run one phase; a failure is recorded in the report instead of ending the run."""
    started = time.perf_counter()
    ok = True
    try:
        function()
    except Exception as exc:  # the next phases may still work: record, go on
        ok = False
        message = str(exc).splitlines()[0][:400] if str(exc) else ''
        report.setdefault('errors', {})[name] = '%s: %s' % (type(exc).__name__, message)
        print('phase %s failed:' % name, flush=True)
        traceback.print_exc()
    report.setdefault('phase_s', {})[name] = round(time.perf_counter() - started, 2)
    save(report, out)
    return ok


def weight_bytes(model):
    """Return the bytes one decode step reads: every weight, not the embedding table's rows."""
    tensors = list(model.parameters()) + list(model.buffers())
    total = sum(t.numel() * t.element_size() for t in tensors)
    embedding = model.get_input_embeddings().weight
    if model.get_output_embeddings().weight is not embedding:  # an untied table: rows gathered
        total -= embedding.numel() * embedding.element_size()
    return total


def compile_counters():
    """Return torch.compile's counters that tell whether CUDA graphs ran (or were skipped)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - another torch
        return {}
    inductor = {key: value for key, value in counters['inductor'].items() if 'cudagraph' in key}
    return {'inductor': inductor, 'stats': dict(counters['stats'])}


def draft_estimate(report, tokens_per_pass, new_tokens):
    """
    Estimate the plan time with k drafts: this run's verify-pass cost over real acceptance.

    ``tokens_per_pass`` holds ``K=TOKENS`` pairs measured on a trained model's plans (random
    weights accept nothing useful); a plan of ``new_tokens`` then takes the fast path's first
    token plus ``(new_tokens - 1) / TOKENS`` verify passes of 1 + K tokens.
    """
    fast = report['paths']['engine_fast_path']
    estimate = {}
    for item in tokens_per_pass:
        k, tokens = item.split('=')
        verify_ms = report['verify_ms_per_pass'][k]
        decode_ms = verify_ms / float(tokens)
        plan_ms = fast['first_token_ms'] + (new_tokens - 1) * decode_ms
        estimate[k] = {'tokens_per_pass': float(tokens), 'verify_ms_per_pass': verify_ms,
                       'decode_ms_per_token': round(decode_ms, 3), 'plan_ms': round(plan_ms, 2),
                       'vs_fast_path': round(fast['plan']['p50_ms'] / plan_ms, 2)}
        print('estimate with %s drafts (%.3f tokens per pass): %.3f ms/token, plan %.1f ms'
              % (k, float(tokens), decode_ms, plan_ms), flush=True)
    return estimate


def note_peak(report, device):
    """Fold the peak GPU memory since the last reset into the run's peak."""
    if device.type == 'cuda':
        peak = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        report['peak_gpu_memory_gib'] = max(peak, report.get('peak_gpu_memory_gib', 0.0))


def timed_path(report, device, name, generate, new_tokens, runs):
    """Measure one path, with its own peak GPU memory."""
    if device.type == 'cuda':
        note_peak(report, device)  # the run's peak so far, before this path's own
        torch.cuda.reset_peak_memory_stats(device)
    result = measure(name, generate, device, new_tokens, runs)
    if device.type == 'cuda':
        result['peak_gpu_memory_gib'] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30,
                                              2)
    report['paths'][name] = result


def main(argv=None):
    """Run the benchmark; return 0 (a failed phase is in the report, not the exit status)."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    parser.add_argument('--config', choices=sorted(SHAPES), default='qwen1.5-7b')
    parser.add_argument('--model', help='a model directory instead of random weights')
    parser.add_argument('--adapter', default='', help='LoRA adapter merged into --model')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', default='auto')
    parser.add_argument('--prompt-tokens', type=int, default=48)
    parser.add_argument('--new-tokens', type=int, default=40)
    parser.add_argument('--tokenizer', help="a tokenizer directory (Qwen1.5's: cli "
                        'qwen-tokenizer): the prompt and plan lengths become the medians of the '
                        'test split in its tokens (benchmarks/plan_lengths.py), replacing '
                        '--prompt-tokens and --new-tokens')
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--draft-tokens', type=int, nargs='*', default=[4, 8])
    parser.add_argument('--tokens-per-pass', nargs='*', default=[], metavar='K=TOKENS',
                        help='prompt-lookup acceptance measured on real plans (plan tokens per '
                        'forward pass with K drafts, e.g. 4=1.977): estimates the plan time '
                        'with K drafts from the verify cost measured in this run')
    parser.add_argument('--int8', action='store_true', help='last, quantize the model to '
                        'int8 weights (model.quantization int8) and time the fast path again')
    parser.add_argument('--acceptance-model', help='real model dir for prompt-lookup acceptance')
    parser.add_argument('--acceptance-adapter', default='')
    parser.add_argument('--acceptance-split',
                        default=os.path.join(ROOT, 'training', 'data', 'task2_prompt0_test.json'))
    parser.add_argument('--acceptance-limit', type=int, default=100)
    parser.add_argument('--out', default='.')
    args = parser.parse_args(argv)
    lengths = None
    if args.tokenizer:  # the test split's median prompt and plan (label + stop token)
        from plan_lengths import load_tokenizer, split_lengths
        lengths = split_lengths(load_tokenizer(args.tokenizer), ['test'])['test']
        args.prompt_tokens = int(round(lengths['prompt_tokens']['p50']))
        args.new_tokens = int(round(lengths['plan_tokens']['p50']))

    device = torch.device(args.device)
    dtype = {'auto': torch.bfloat16 if device.type == 'cuda' else torch.float32,
             'bfloat16': torch.bfloat16, 'float16': torch.float16,
             'float32': torch.float32}[args.dtype]
    compile_steps = device.type == 'cuda'
    import transformers
    report = {'device': torch.cuda.get_device_name(device) if device.type == 'cuda'
              else 'CPU (%s, %d threads)' % (platform.processor() or platform.machine(),
                                             torch.get_num_threads()),
              'torch': torch.__version__, 'transformers': transformers.__version__,
              'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
              'model': args.model or 'random weights, %s shape' % args.config,
              'prompt_tokens': args.prompt_tokens, 'new_tokens': args.new_tokens,
              'runs': args.runs, 'paths': {}}
    if lengths is not None:
        report['lengths_from'] = {'tokenizer': args.tokenizer, 'test split': lengths}
    state = {}
    vocab_prompt = torch.Generator().manual_seed(1)

    def build():
        bandwidth = copy_bandwidth(device, 2048 if device.type == 'cuda' else 256)
        report['copy_tb_s'] = round(bandwidth / 1e12, 4)
        started = time.perf_counter()
        model = build_model(device, dtype, args.config, args.model, args.adapter,
                            eos_token_id=0, pad_token_id=0)
        report['build_s'] = round(time.perf_counter() - started, 2)
        report['model_source'] = ('load (and merge) of %s' % args.model if args.model
                                  else 'random init on the device')
        report['params'] = sum(p.numel() for p in model.parameters())
        # bandwidth counts bytes read and written; a step only reads the weights
        report['floor_ms_per_token'] = round(weight_bytes(model) / bandwidth * 1000.0, 4)
        print('device %s, %.2f B params, copy %.3f TB/s, floor %.3f ms/token' % (
            report['device'], report['params'] / 1e9, bandwidth / 1e12,
            report['floor_ms_per_token']), flush=True)
        prompt = torch.randint(1, model.config.vocab_size, (1, args.prompt_tokens),
                               generator=vocab_prompt)
        state.update(model=model, prompt=prompt, bandwidth=bandwidth)

    def baseline():
        timed_path(report, device, 'baseline_generate_dynamic',
                   baseline_generate(state['model'], state['prompt'].to(device)),
                   args.new_tokens, args.runs)

    def engine():
        started = time.perf_counter()
        decoder = StaticCacheDecoder(state['model'], stop_ids=[], pad_id=0,
                                     max_prompt_tokens=512, max_new_tokens=args.new_tokens,
                                     draft_tokens=0, compile_steps=compile_steps)
        run = engine_generate(decoder, state['prompt'][0].tolist())
        run(args.new_tokens)
        run(args.new_tokens)
        synchronize(device)
        report['engine_warmup_s'] = round(time.perf_counter() - started, 2)
        report['engine_compile_error'] = decoder.compile_error  # '' when the step compiled
        report['compile'] = compile_counters()
        timed_path(report, device, 'engine_fast_path', run, args.new_tokens, args.runs)
        report['verify_ms_per_pass'] = {
            '0': round(report['paths']['engine_fast_path']['decode_ms_per_token'], 3)}
        report['greedy_agreement'] = agreement(state['model'], decoder, state['prompt'],
                                               device, args.new_tokens)

    def drafts(k):
        drafting = StaticCacheDecoder(state['model'], stop_ids=[], pad_id=0,
                                      max_prompt_tokens=512, max_new_tokens=args.new_tokens,
                                      draft_tokens=k, compile_steps=compile_steps)
        run = engine_generate(drafting, state['prompt'][0].tolist())
        for _ in range(2):
            run(args.new_tokens)
        times = time_runs(lambda: run(args.new_tokens), device, args.runs)
        stats = run.stats
        passes = max(1, stats['decode_passes'])
        per_pass = (statistics.median(times) - stats['prefill_ms']) / passes
        report.setdefault('verify_ms_per_pass', {})[str(k)] = round(per_pass, 3)
        report['compile'] = compile_counters()
        print('verify %d drafts: %.3f ms per forward pass' % (k, per_pass), flush=True)

    def int8():
        from robot_llm_planner.inference.quantize import quantize_int8
        model = state['model']
        quantize_int8(model)
        report['floor_int8_ms_per_token'] = round(
            weight_bytes(model) / state['bandwidth'] * 1000.0, 4)
        decoder = StaticCacheDecoder(model, stop_ids=[], pad_id=0, max_prompt_tokens=512,
                                     max_new_tokens=args.new_tokens, draft_tokens=0,
                                     compile_steps=compile_steps)
        run = engine_generate(decoder, state['prompt'][0].tolist())
        timed_path(report, device, 'engine_fast_path_int8', run, args.new_tokens, args.runs)
        report['int8_compile_error'] = decoder.compile_error
        report['compile'] = compile_counters()

    if not phase(report, args.out, 'build', build):
        print(markdown(report))
        return 0
    phase(report, args.out, 'baseline', baseline)
    phase(report, args.out, 'engine', engine)
    for k in args.draft_tokens:
        phase(report, args.out, 'drafts_%d' % k, lambda: drafts(k))
    if args.tokens_per_pass:
        phase(report, args.out, 'draft_estimate', lambda: report.update(
            draft_estimate=draft_estimate(report, args.tokens_per_pass, args.new_tokens)))
    if args.int8:
        phase(report, args.out, 'int8', int8)
    if args.acceptance_model:
        phase(report, args.out, 'acceptance', lambda: report.update(acceptance=acceptance(
            args.acceptance_model, args.acceptance_adapter, args.acceptance_split,
            [0] + args.draft_tokens, args.acceptance_limit)))
    note_peak(report, device)
    if device.type != 'cuda':
        report['peak_gpu_memory_gib'] = 'n/a (CPU)'
    save(report, args.out)
    print(markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
