#!/usr/bin/env python3
"""
Learning curve of a demo-model recipe: held-out exact match against rows seen.

Recipe research tool, not the recipe: ``make demo`` trains with ``llamafactory-cli``
(``planner_training.demo_model``). This script builds the same tokenizer and random-weight
Qwen2 from a ``Recipe`` and trains it on the same rows with a plain torch loop (AdamW,
the prompt masked out of the loss as LLaMA-Factory does, batches of similar length), so
that one run shows *when* the model starts to get held-out commands right instead of one
figure at the end.

Every ``--eval-every`` steps it measures teacher-forced plan exact match on the test split:
a row counts when every label token (the closing ``<|im_end|>`` included) is the model's
argmax given the label before it, which is exactly when greedy decoding without the grammar
writes the label. Reported per held-out kind of the test split's cycle (object, place,
phrasing, none). One JSON line per measurement on stdout (and in ``--out``)::

    python3 benchmarks/demo_curve.py --recipe '{"layers": 2}' --epochs 2.5 --out c.jsonl
"""

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from typing import Callable, List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'training')]  # the package and the training side

from planner_training import demo_model  # noqa: E402
from planner_training.dataset import TEST_KINDS  # noqa: E402
from robot_llm_planner.core.plan import NO_TASK  # noqa: E402
from robot_llm_planner.core.prompt import IM_END, PromptBuilder  # noqa: E402

Encoded = Tuple[List[int], List[int]]  # prompt ids, label ids


def encode_rows(tokenizer, rows: Sequence[dict], system: str) -> List[Encoded]:
    """Return (prompt ids, label ids) per row, the label ending like LLaMA-Factory's qwen."""
    builder = PromptBuilder(system=system)
    end = tokenizer.encode(IM_END + '\n', add_special_tokens=False)
    return [(builder.token_ids(tokenizer, row['input']),
             tokenizer.encode(row['output'], add_special_tokens=False) + end) for row in rows]


def collate(items: Sequence[Encoded], pad_id: int):
    """Return input ids, labels (-100 outside the label) and attention mask, right-padded."""
    import torch
    length = max(len(prompt) + len(label) for prompt, label in items)
    ids = torch.full((len(items), length), pad_id)
    labels = torch.full((len(items), length), -100)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, (prompt, label) in enumerate(items):
        ids[row, :len(prompt) + len(label)] = torch.tensor(prompt + label)
        labels[row, len(prompt):len(prompt) + len(label)] = torch.tensor(label)
        mask[row, :len(prompt) + len(label)] = 1
    return ids, labels, mask


def exact_match(model, test: Sequence[Encoded], pad_id: int, batch_size: int = 100):
    """Return teacher-forced exact match overall and per test kind (the split's cycle)."""
    import torch
    right = [0] * len(TEST_KINDS)
    total = [0] * len(TEST_KINDS)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            ids, labels, mask = collate(test[start:start + batch_size], pad_id)
            predicted = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
            target = labels[:, 1:]
            rows_right = ((predicted == target) | (target == -100)).all(-1).tolist()
            for offset, ok in enumerate(rows_right):
                kind = (start + offset) % len(TEST_KINDS)
                right[kind] += ok
                total[kind] += 1
    model.train()
    by_kind = {kind: round(right[k] / total[k], 3) if total[k] else None
               for k, kind in enumerate(TEST_KINDS)}
    return sum(right) / max(1, sum(total)), by_kind


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random):
    """Return one epoch of batches: shuffled, grouped by length within groups of 50 batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * 50
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start:start + group], key=lambda index: -lengths[index])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Return the learning-rate multiplier: linear warm-up, then cosine to 0 or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == 'constant':
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def run(args, emit: Callable[[str], None] = print) -> List[dict]:
    """Train from the recipe's random weights; return the measurements, each also emitted."""
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    recipe = demo_model.Recipe(**json.loads(args.recipe))
    rows = demo_model.training_rows(recipe)
    folder = demo_model.build_initial_model(
        recipe, demo_model.tokenizer_texts(rows, recipe), args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = Qwen2ForCausalLM.from_pretrained(folder)
    train = encode_rows(tokenizer, rows, recipe.system)
    # the task commands (the kinds cycle over them), as in the curves measured before the
    # split had commands without a task
    test = [row for row in demo_model.split_rows('test') if row['output'] != NO_TASK]
    test = encode_rows(tokenizer, test[:args.limit] if args.limit else test, recipe.system)
    pad_id = tokenizer.pad_token_id

    # the recipe's full-SFT settings unless given
    epochs = recipe.full_epochs if args.epochs is None else args.epochs
    batch_size = recipe.full_batch_size if args.batch is None else args.batch
    learning_rate = recipe.full_learning_rate if args.lr is None else args.lr
    warmup = recipe.full_warmup if args.warmup is None else args.warmup
    steps = int(math.ceil(len(train) / batch_size) * epochs)
    warmup = int(warmup * steps) if warmup < 1 else int(warmup)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps, warmup, args.schedule))
    rng = random.Random(recipe.seed)
    lengths = [len(prompt) + len(label) for prompt, label in train]
    results, losses, step, train_seconds = [], [], 0, 0.0
    clock = time.perf_counter()
    while step < steps:
        for batch in length_batches(lengths, batch_size, rng):
            if step >= steps:
                break
            ids, labels, mask = collate([train[index] for index in batch], pad_id)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % args.eval_every and step != steps:
                continue
            train_seconds += time.perf_counter() - clock  # measuring is not training
            overall, by_kind = exact_match(model, test, pad_id)
            result = {'step': step, 'rows_seen': step * batch_size,
                      'epochs': round(step * batch_size / len(train), 3),
                      'train_seconds': round(train_seconds, 1),
                      'loss': round(sum(losses[-50:]) / len(losses[-50:]), 4),
                      'exact_match': round(overall, 3), 'by_kind': by_kind}
            results.append(result)
            emit(json.dumps(result, ensure_ascii=False))
            clock = time.perf_counter()
    return results


def main(argv=None) -> int:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--recipe', default='{}', help='JSON object of Recipe fields')
    parser.add_argument('--epochs', type=float, help="default: the recipe's full_epochs")
    parser.add_argument('--batch', type=int, help="default: the recipe's full_batch_size")
    parser.add_argument('--lr', type=float, help="default: the recipe's full_learning_rate")
    parser.add_argument('--schedule', choices=('cosine', 'constant'), default='cosine')
    parser.add_argument('--warmup', type=float,
                        help='warm-up steps, or a fraction of all steps when < 1 '
                        "(default: the recipe's full_warmup)")
    parser.add_argument('--eval-every', type=int, default=500, help='steps between measures')
    parser.add_argument('--limit', type=int, default=0, help='first N test rows only')
    parser.add_argument('--threads', type=int, default=2, help='torch threads')
    parser.add_argument('--model-dir', default=os.path.join(ROOT, '.cache', 'demo_curve'),
                        help='where the tokenizer and random model are written')
    parser.add_argument('--out', default='', help='also write the JSON lines here')
    args = parser.parse_args(argv)
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # as demo_model; before torch
    with (open(args.out, 'w', encoding='utf-8') if args.out
          else contextlib.nullcontext()) as out:
        def emit(line: str) -> None:
            print(line, flush=True)
            if out is not None:
                out.write(line + '\n')
                out.flush()
        run(args, emit)
    return 0


if __name__ == '__main__':
    sys.exit(main())
