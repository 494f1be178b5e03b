"""
Rendering the metrics: runs side by side as markdown, CSV and a chart, and the confidence table.

:func:`evaluate_files` is ``cli evaluate``: it reads the runs (:mod:`.runs`), computes their
metrics (:mod:`.evaluate`) and writes ``results.md``, ``results.csv`` and ``results.png``.
:data:`METRICS` names every metric in the order the tables show them.
"""

import csv
import io
import os
from typing import List, Optional, Sequence, Tuple

from robot_llm_planner.cli.evaluate import evaluate_rows, scored_plans, threshold_counts
from robot_llm_planner.cli.runs import EvaluationError, load_rows, run_names
from robot_llm_planner.core.skills import SkillSet

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
    scored = scored_plans(rows)
    if not scored:
        return ''
    right = sum(1 for _, exact in scored if exact)
    wrong = len(scored) - right
    lines = ['| min_confidence | right plans kept (of %d) | wrong plans caught (of %d) | '
             'wrong among the kept |' % (right, wrong), '|---|---|---|---|']
    for threshold in (0.0,) + tuple(thresholds):
        kept_right, _, caught, _ = threshold_counts(scored, threshold)
        kept = kept_right + wrong - caught
        lines.append('| %g | %d (%s) | %d (%s) | %s |' % (
            threshold, kept_right, _percent(kept_right, right), caught, _percent(caught, wrong),
            _percent(wrong - caught, kept)))
    return '\n'.join(lines) + '\n'


def _percent(numerator: int, denominator: int) -> str:
    return '%.1f %%' % (100.0 * numerator / denominator) if denominator else '-'


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
