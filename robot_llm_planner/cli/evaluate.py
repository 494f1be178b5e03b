"""
Plan quality metrics for predictions against labels, for one run or several side by side.

A run is a JSONL file: LLaMA-Factory's ``generated_predictions.jsonl`` (``{"prompt",
"predict", "label"}`` per line) or rows ``{"command", "predict", "label"[, "latency_ms"]}``
such as a run of the planner itself writes. :func:`evaluate_rows` computes, per run:

- ``format_valid``: share of predictions that parse with no errors (:func:`parse_plan`), or
  are the no-task answer ``无法执行``;
- ``skill_valid``: share that also pass :meth:`SkillSet.validate` (what planner_node
  publishes as ``ok``, or ``rejected``/``not_a_task``; a task1 output has no actions and is
  never skill-valid);
- ``grounded_valid``: share that are also grounded: every target and location appears in
  the row's command (what planner_node publishes as ``ok`` with its default
  ``validation.grounded_arguments``, or ``rejected``/``not_a_task``);
- ``exact_match``: share of labelled rows whose normalized step list equals the label's (a
  no-task label is matched only by the no-task answer);
- ``no_task_recall``: share of the rows labelled ``无法执行`` that the prediction refuses too;
  ``false_refusals``: share of the rows labelled with a plan that it refuses;
- ``description_*``: micro precision / recall / F1 of output1 step descriptions;
- ``action_*``: the same for output2 ``(action, target, location)`` tuples (None when the
  labels have no output2, i.e. task1);
- ``latency_p50_ms`` / ``p90`` / ``p99`` when rows carry ``latency_ms`` (nearest rank,
  :func:`~robot_llm_planner.core.stats.percentile`).

:func:`confidence_table` shows, for a run of the planner whose rows carry ``confidence``, what
each ``validation.min_confidence`` would keep of its right plans and catch of its wrong ones.

Steps are matched as multisets: a predicted step counts once against an equal label step,
whatever its position. Texts are compared after :func:`clean_text` (spaces collapsed).
Rates are fractions in [0, 1]; a metric with nothing to measure (no labelled rows, labels
without output2, no latencies) is None. No predicted steps where steps were expected is a
precision of 0, not None.
"""

from collections import Counter
import csv
import io
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

from robot_llm_planner.cli.postprocess import command_from_prompt
from robot_llm_planner.core.plan import clean_text, parse_plan, Plan, ungrounded_arguments
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.core.stats import percentile

# (key, label in the table, kind): kind 'count', 'rate' or 'ms'.
METRICS = (
    ('n', 'examples', 'count'),
    ('labelled', 'labelled examples', 'count'),
    ('format_valid', 'format valid', 'rate'),
    ('skill_valid', 'skill valid', 'rate'),
    ('grounded_valid', 'valid, arguments in the command', 'rate'),
    ('exact_match', 'plan exact match', 'rate'),
    ('no_task_labelled', 'labelled no task', 'count'),
    ('no_task_recall', 'no task refused', 'rate'),
    ('false_refusals', 'task refused', 'rate'),
    ('description_precision', 'output1 step precision', 'rate'),
    ('description_recall', 'output1 step recall', 'rate'),
    ('description_f1', 'output1 step F1', 'rate'),
    ('action_precision', 'output2 step precision', 'rate'),
    ('action_recall', 'output2 step recall', 'rate'),
    ('action_f1', 'output2 step F1', 'rate'),
    ('latency_count', 'rows with latency', 'count'),
    ('latency_p50_ms', 'latency p50 (ms)', 'ms'),
    ('latency_p90_ms', 'latency p90 (ms)', 'ms'),
    ('latency_p99_ms', 'latency p99 (ms)', 'ms'),
)
CHART_RATES = ('format_valid', 'skill_valid', 'exact_match', 'description_f1', 'action_f1')
CHART_LATENCIES = ('latency_p50_ms', 'latency_p90_ms', 'latency_p99_ms')
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


def is_exact(predicted: Plan, expected: Plan) -> bool:
    """Return True when a prediction is what the planner would publish as the label's plan."""
    if expected.no_task:
        return predicted.no_task
    # a plan with parse errors is invalid, not right
    return bool(expected.steps) and predicted.ok and _normalized(predicted) == _normalized(
        expected)


def confidence_table(rows: Sequence[dict],
                     thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
                     ) -> str:
    """
    Return a markdown table: what each ``validation.min_confidence`` keeps and catches.

    It counts the plans that pass every other check (status ``ok``, or ``invalid`` for
    ``low_confidence`` alone), carry a confidence and have a label; "right" is
    :func:`is_exact` (a plan for a command labelled ``无法执行`` is wrong).
    Empty when no such row exists.
    """
    scored = _scored_plans(rows)
    if not scored:
        return ''
    right = sum(1 for _, exact in scored if exact)
    wrong = len(scored) - right
    lines = ['| min_confidence | right plans kept (of %d) | wrong plans caught (of %d) | '
             'wrong among the kept |' % (right, wrong), '|---|---|---|---|']
    for threshold in (0.0,) + tuple(thresholds):
        kept_right, _, caught, _ = _threshold_counts(scored, threshold)
        kept = kept_right + wrong - caught
        lines.append('| %g | %d (%s) | %d (%s) | %s |' % (
            threshold, kept_right, _percent(kept_right, right), caught, _percent(caught, wrong),
            _percent(wrong - caught, kept)))
    return '\n'.join(lines) + '\n'


def confidence_counts(rows: Sequence[dict], threshold: float) -> Tuple[int, int, int, int]:
    """
    Return what ``validation.min_confidence`` = ``threshold`` does to the plans of a run.

    (right plans kept, right plans, wrong plans held back, wrong plans), counted over the
    plans :func:`confidence_table` counts.
    """
    return _threshold_counts(_scored_plans(rows), threshold)


def _scored_plans(rows: Sequence[dict]) -> List[Tuple[float, bool]]:
    # (confidence, right) of each labelled plan that passes every other check
    scored = []
    for row in rows:
        passed = row.get('status') == 'ok' or (
            row.get('status') == 'invalid' and row.get('errors') == ['low_confidence'])
        confidence = row.get('confidence')
        expected = parse_plan(row.get('label', ''))
        if passed and isinstance(confidence, (int, float)) and (expected.steps
                                                                or expected.no_task):
            predicted = parse_plan(row.get('predict', ''), row.get('command', ''))
            scored.append((float(confidence), is_exact(predicted, expected)))
    return scored


def _threshold_counts(scored: Sequence[Tuple[float, bool]],
                      threshold: float) -> Tuple[int, int, int, int]:
    right = sum(1 for _, exact in scored if exact)
    kept_right = sum(1 for value, exact in scored if exact and value >= threshold)
    caught = sum(1 for value, exact in scored if not exact and value < threshold)
    return kept_right, right, caught, len(scored) - right


def _percent(numerator: int, denominator: int) -> str:
    return '%.1f %%' % (100.0 * numerator / denominator) if denominator else '-'


def _faulty(plan: Plan) -> set:
    # steps the parser found at fault (e.g. an extra argument it dropped): they count as
    # predicted steps that match nothing
    return {error.step for error in plan.errors if error.step is not None}


def _descriptions(plan: Plan) -> list:
    faulty = _faulty(plan)
    return [('\0faulty', index) if index in faulty else clean_text(step.description)
            for index, step in enumerate(plan.steps) if clean_text(step.description)]


def _actions(plan: Plan) -> list:
    faulty = _faulty(plan)
    return [('\0faulty', index) if index in faulty
            else (clean_text(s.action), clean_text(s.target), clean_text(s.location))
            for index, s in enumerate(plan.steps) if clean_text(s.action)]


def _normalized(plan: Plan) -> List[Tuple[str, ...]]:
    return [tuple(clean_text(value) for value in (s.description, s.action, s.target, s.location))
            for s in plan.steps]


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return numerator / denominator if denominator else None


def _f1(precision: Optional[float], recall: Optional[float]) -> Optional[float]:
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


class _Matches:
    """Micro-averaged multiset matching counts of one kind of step."""

    def __init__(self) -> None:
        self.matched = self.predicted = self.expected = 0

    def add(self, predicted: list, expected: list) -> None:
        self.matched += sum((Counter(predicted) & Counter(expected)).values())
        self.predicted += len(predicted)
        self.expected += len(expected)

    def metrics(self, prefix: str) -> Dict[str, Optional[float]]:
        precision = _ratio(self.matched, self.predicted)
        if precision is None and self.expected:
            precision = 0.0  # steps were expected and none predicted: nothing right
        recall = _ratio(self.matched, self.expected)
        return {prefix + '_precision': precision, prefix + '_recall': recall,
                prefix + '_f1': _f1(precision, recall)}


def evaluate_rows(rows: Sequence[dict], skills: SkillSet) -> Dict[str, Optional[float]]:
    """
    Return the metrics of rows ``{"command", "predict", "label"[, "latency_ms"]}``.

    A row whose label has no steps (an unlabelled demo set) counts for the validity rates
    and latency only.
    """
    format_valid = skill_valid = grounded_valid = labelled = exact = 0
    no_task_labelled = refused = wrongly_refused = 0
    descriptions, actions = _Matches(), _Matches()
    label_has_actions = False
    latencies = []
    for row in rows:
        predicted = parse_plan(row.get('predict', ''), row.get('command', ''))
        if predicted.ok or predicted.no_task:
            format_valid += 1
            if not skills.validate(predicted):
                skill_valid += 1
                grounded_valid += not ungrounded_arguments(predicted, row.get('command', ''))
        if row.get('latency_ms') is not None:
            latencies.append(float(row['latency_ms']))
        expected = parse_plan(row.get('label', ''))
        if expected.no_task:
            labelled += 1
            no_task_labelled += 1
            refused += predicted.no_task
            exact += is_exact(predicted, expected)
            descriptions.add(_descriptions(predicted), [])  # a plan where none was due
            actions.add(_actions(predicted), [])
            continue
        if not expected.steps:
            continue
        labelled += 1
        wrongly_refused += predicted.no_task
        exact += is_exact(predicted, expected)
        descriptions.add(_descriptions(predicted), _descriptions(expected))
        if expected.has_output2:
            label_has_actions = True
            actions.add(_actions(predicted), _actions(expected))
    result: Dict[str, Optional[float]] = {
        'n': len(rows), 'labelled': labelled,
        'format_valid': _ratio(format_valid, len(rows)),
        'skill_valid': _ratio(skill_valid, len(rows)),
        'grounded_valid': _ratio(grounded_valid, len(rows)),
        'exact_match': _ratio(exact, labelled),
        'no_task_labelled': no_task_labelled,
        'no_task_recall': _ratio(refused, no_task_labelled),
        'false_refusals': _ratio(wrongly_refused, labelled - no_task_labelled),
    }
    result.update(descriptions.metrics('description'))
    if label_has_actions:
        result.update(actions.metrics('action'))
    else:
        result.update({'action_precision': None, 'action_recall': None, 'action_f1': None})
    result['latency_count'] = len(latencies)
    for q in (50, 90, 99):
        result['latency_p%d_ms' % q] = percentile(latencies, q / 100.0)
    return result


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


def _cell(value: Optional[float], kind: str) -> str:
    if value is None:
        return 'n/a'
    if kind == 'count':
        return '%d' % value
    if kind == 'rate':
        return '%.1f%%' % (100 * value)
    return '%.1f' % value


def markdown_table(results: Sequence[Tuple[str, dict]]) -> str:
    """Return the runs side by side: one row per metric, one column per run."""
    lines = ['| metric | %s |' % ' | '.join(name for name, _ in results),
             '|---|%s' % ('---:|' * len(results))]
    for key, label, kind in METRICS:
        lines.append('| %s | %s |' % (label, ' | '.join(_cell(m[key], kind) for _, m in results)))
    return '\n'.join(lines) + '\n'


def csv_text(results: Sequence[Tuple[str, dict]]) -> str:
    """Return one CSV row per run with every metric (rates as fractions, empty for None)."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator='\n')
    writer.writerow(['run'] + [key for key, _, _ in METRICS])
    for name, metrics in results:
        writer.writerow([name] + ['' if metrics[key] is None else
                                  ('%d' % metrics[key] if kind == 'count'
                                   else '%.6g' % metrics[key])
                                  for key, _, kind in METRICS])
    return stream.getvalue()


def write_chart(results: Sequence[Tuple[str, dict]], path: str) -> None:
    """Draw grouped bars of the rates (and latency percentiles if any) into a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    labels = {key: label for key, label, _ in METRICS}
    with_latency = any(m['latency_count'] for _, m in results)
    panels = [(CHART_RATES, 'rate (%)', 100.0)]
    if with_latency:
        panels.append((CHART_LATENCIES, 'latency (ms)', 1.0))
    figure, axes = plt.subplots(1, len(panels), squeeze=False,
                                figsize=(6 + 3 * len(results), 4.5))
    width = 0.8 / len(results)
    for axis, (keys, title, scale) in zip(axes[0], panels):
        for index, (name, metrics) in enumerate(results):
            values = [(metrics[key] or 0.0) * scale for key in keys]
            positions = [k + (index - (len(results) - 1) / 2) * width for k in range(len(keys))]
            bars = axis.bar(positions, values, width, label=name)
            axis.bar_label(bars, labels=[_cell(metrics[k], 'ms') if scale == 1.0 else
                                         _cell(metrics[k], 'rate').rstrip('%') for k in keys],
                           fontsize=7)
        axis.set_xticks(range(len(keys)))
        axis.set_xticklabels([labels[key] for key in keys], rotation=20, ha='right', fontsize=8)
        axis.set_ylabel(title)
        if scale == 100.0:
            axis.set_ylim(0, 110)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def evaluate_files(paths: Sequence[str], out_dir: str, names: Optional[Sequence[str]] = None,
                   skills: Optional[SkillSet] = None,
                   instruction: str = '') -> Tuple[List[Tuple[str, dict]], str]:
    """
    Evaluate runs and write ``results.md``, ``results.csv`` and ``results.png`` to ``out_dir``.

    ``instruction`` is stripped from the prompts of LLaMA-Factory runs (:func:`load_rows`).
    Return ``[(name, metrics)]`` and the markdown table.
    """
    if not paths:
        raise EvaluationError('no runs to evaluate')
    skills = skills or SkillSet.load()
    results = [(name, evaluate_rows(load_rows(path, instruction), skills))
               for name, path in zip(run_names(paths, names), paths)]
    table = markdown_table(results)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'results.md'), 'w', encoding='utf-8') as stream:
        stream.write('# Plan evaluation\n\n')
        stream.write(''.join('- %s: `%s`\n' % (name, path)
                             for (name, _), path in zip(results, paths)) + '\n')
        stream.write(table)
    with open(os.path.join(out_dir, 'results.csv'), 'w', encoding='utf-8', newline='') as stream:
        stream.write(csv_text(results))
    write_chart(results, os.path.join(out_dir, 'results.png'))
    return results, table
