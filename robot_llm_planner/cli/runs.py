"""
Runs: a planner's answers to an alpaca split, and the run files the metrics are taken from.

A run file is JSON lines: LLaMA-Factory's ``generated_predictions.jsonl`` (``{"prompt",
"predict", "label"}``) or rows ``{"command", "predict", "label"[, "latency_ms"]}``, which
:func:`plan_split` writes for the planner itself. :func:`load_rows` reads either into rows
for :func:`~robot_llm_planner.cli.evaluate.evaluate_rows`; :func:`run_names` names the runs
of a comparison.
"""

import json
import math
import os
from typing import List, Optional, Sequence

from robot_llm_planner.cli.postprocess import command_from_prompt

PREDICTIONS_FILE = 'generated_predictions.jsonl'


class EvaluationError(ValueError):
    """A run file is missing or malformed, or the arguments do not fit."""


def plan_examples(planner, examples: Sequence[dict], batch_size: int = 1) -> List[dict]:
    """
    Plan the ``input`` of each alpaca row, ``batch_size`` commands at a time; return run rows.

    Each row is ``{"command", "predict", "label", "latency_ms", "status", "errors",
    "confidence"}`` (``errors``: the answer's error codes); ``latency_ms`` is the planner's
    total time for the command (with ``batch_size`` > 1, the time of its whole batch).
    """
    rows = []
    for start in range(0, len(examples), max(1, batch_size)):
        chunk = examples[start:start + max(1, batch_size)]
        for example, result in zip(chunk, planner.plan_batch([row['input'] for row in chunk])):
            rows.append({'command': example['input'], 'predict': result.plan.raw_output,
                         'label': str(example.get('output', '')),
                         'latency_ms': round(result.timing.get('total_ms', 0.0), 3),
                         'status': result.status, 'errors': error_codes(result),
                         'confidence': result.confidence})
    return rows


def plan_split(planner, split: str, output: str, batch_size: int = 1) -> List[dict]:
    """
    Run ``planner`` over the commands of an alpaca split and write a run file.

    The rows (:func:`plan_examples`) go to ``output``, one JSON line each; return them.
    """
    try:
        with open(split, encoding='utf-8') as stream:
            examples = json.load(stream)
    except OSError as exc:
        raise EvaluationError('cannot read %s: %s' % (split, exc.strerror)) from exc
    except ValueError as exc:
        raise EvaluationError('%s is not JSON: %s' % (split, exc)) from exc
    if not isinstance(examples, list) or not all(
            isinstance(row, dict) and isinstance(row.get('input'), str) for row in examples):
        raise EvaluationError('%s: expected an alpaca JSON list of rows with "input"' % split)
    rows = plan_examples(planner, examples, batch_size)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w', encoding='utf-8') as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + '\n')
    return rows


def load_rows(path: str, instruction: str = '') -> List[dict]:
    """
    Read a run file into rows ``{"command", "predict", "label"[, "latency_ms"]}``.

    A LLaMA-Factory row's command is recovered from its prompt; give the alpaca
    ``instruction`` of a prompt1..3 run so that it is stripped and the command stands alone
    (else the grounding check would accept arguments that only the instruction names). Prompts
    that do not start with it (a prompt0 run) and rows with a ``command`` are kept as they are.
    """
    try:
        with open(path, encoding='utf-8') as stream:
            lines = stream.readlines()
    except OSError as exc:
        raise EvaluationError('cannot read %s: %s' % (path, exc.strerror)) from exc
    except UnicodeDecodeError as exc:
        raise EvaluationError('%s is not UTF-8 text: %s' % (path, exc)) from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise EvaluationError('%s line %d is not JSON: %s' % (path, number, exc)) from exc
        if not isinstance(data, dict) or not all(
                isinstance(data.get(key), str) for key in ('predict', 'label')):
            raise EvaluationError('%s line %d: expected an object with string "predict" and '
                                  '"label"' % (path, number))
        if 'command' in data:
            command = str(data['command'])
        else:
            command = command_from_prompt(str(data.get('prompt', '')), instruction)
        row = {'command': command, 'predict': data['predict'], 'label': data['label']}
        latency = data.get('latency_ms')
        if latency is not None:
            if isinstance(latency, bool) or not isinstance(latency, (int, float)) \
                    or not math.isfinite(latency):
                raise EvaluationError('%s line %d: "latency_ms" must be a number, got %r'
                                      % (path, number, latency))
            row['latency_ms'] = float(latency)
        rows.append(row)
    if not rows:
        raise EvaluationError('%s has no predictions' % path)
    return rows


def error_codes(result) -> List[str]:
    """Return the error codes of a planner result (the parser's and the planner's)."""
    return [error.code for error in result.plan.errors + result.errors]


def run_names(paths: Sequence[str], names: Optional[Sequence[str]] = None) -> List[str]:
    """
    Return one unique display name per run.

    Default: the folder name for a LLaMA-Factory ``generated_predictions.jsonl`` (its output
    dir names the run), the file name without extension otherwise.
    """
    if names:
        if len(names) != len(paths):
            raise EvaluationError('got %d names for %d runs' % (len(names), len(paths)))
        chosen = list(names)
    else:
        chosen = []
        for path in paths:
            path = os.path.abspath(path)
            if os.path.basename(path) == PREDICTIONS_FILE:
                chosen.append(os.path.basename(os.path.dirname(path)))
            else:
                chosen.append(os.path.splitext(os.path.basename(path))[0])
    unique = []
    for name in chosen:
        candidate, number = name, 2
        while candidate in unique:
            candidate, number = '%s (%d)' % (name, number), number + 1
        unique.append(candidate)
    return unique
