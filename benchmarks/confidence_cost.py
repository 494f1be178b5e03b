"""
What the plan confidence costs per generated token, beside one decode step of a model.

The fast path (robot_llm_planner/decoding.py) does, for every kept token, a log-sum-exp over
the logits row, one subtraction and one minimum, all left on the device (no extra
synchronization). This times exactly those operations on a logits row of each vocabulary size,
and, as the baseline in the same run, one decode step (KV cache, batch 1) of a random Qwen2
of the demo model's shape, or of the given ``--model``, so its share of a step can be read off.

    python3 benchmarks/confidence_cost.py --out /tmp/c               # CPU: 4374 and 151,936
    python3 benchmarks/confidence_cost.py --device cuda --out $OUT   # on a GPU (bf16 logits)
"""

import argparse
import os
import statistics
import sys
import time

from report import write_report
import torch

VOCABS = (4374, 151936)   # the demo model's logits width, Qwen1.5-7B's (vocab_size, padded)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_confidence(vocab: int, dtype, device, repeats: int) -> float:
    """Return the median microseconds of the confidence operations for one token."""
    row = torch.randn(vocab, dtype=dtype, device=device)
    token = int(torch.argmax(row))  # the decode loop has it as a Python int already
    lowest = torch.zeros((), device=device)
    samples = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        for _ in range(100):
            total = torch.logsumexp(row.float(), -1)
            logprob = row[token].float() - total
            lowest = torch.minimum(lowest, logprob)
        _sync(device)
        samples.append((time.perf_counter() - started) * 1e6 / 100)
    return statistics.median(samples)


def time_decode_step(model, device, repeats: int) -> float:
    """Return the median microseconds of one single-token forward pass with a KV cache."""
    ids = torch.randint(0, model.config.vocab_size, (1, 32), device=device)
    samples = []
    with torch.inference_mode():
        for _ in range(repeats):
            out = model(input_ids=ids, use_cache=True)
            step = ids[:, -1:]
            _sync(device)
            started = time.perf_counter()
            for _ in range(10):
                out = model(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
            _sync(device)
            samples.append((time.perf_counter() - started) * 1e6 / 10)
    return statistics.median(samples)


def main(argv=None) -> int:
    """Time the confidence operations and a decode step; write JSON and markdown."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--model', default='', help='model directory for the step baseline '
                        '(default: a tiny random Qwen2 built here)')
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)
        baseline = args.model
    else:
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=VOCABS[0], hidden_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4,
                             intermediate_size=512, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
        baseline = 'tiny Qwen2 (demo model shape: hidden 128, 2 layers, vocab %d)' % VOCABS[0]
    model.eval()
    result = {'device': str(device), 'dtype': str(dtype).replace('torch.', ''),
              'torch': torch.__version__, 'python': sys.version.split()[0],
              'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
              'load_average': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
              'step_baseline': baseline,
              'step_vocab': int(model.config.vocab_size),
              'step_us': time_decode_step(model, device, args.repeats),
              'confidence_us': {str(vocab): time_confidence(vocab, dtype, device, args.repeats)
                                for vocab in sorted(set(VOCABS) | {model.config.vocab_size})}}
    lines = ['| logits width | confidence per token (µs) |', '|---|---|']
    for vocab, micros in result['confidence_us'].items():
        lines.append('| %s | %.1f |' % (vocab, micros))
    own = result['confidence_us'][str(result['step_vocab'])]
    text = ('%s, %s, torch %s, %s, load average %.1f\n\n%s\n\nbaseline: one decode step of %s '
            '= %.0f µs; the confidence at its width (%d) is %.1f %% of it\n'
            % (result['date'], result['device'], result['torch'], result['dtype'],
               result['load_average'] or 0.0, '\n'.join(lines), baseline, result['step_us'],
               result['step_vocab'], 100 * own / result['step_us']))
    write_report(args.out, 'confidence_cost', result, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
