"""
Plan quality metrics: a run's predictions against their labels.

A run is a JSONL file: LLaMA-Factory's ``generated_predictions.jsonl`` (``{"prompt",
"predict", "label"}`` per line) or rows ``{"command", "predict", "label"[, "latency_ms"]}``
such as a run of the planner itself writes (:mod:`.runs` reads and writes them,
:mod:`.results` renders the metrics). :func:`evaluate_rows` computes, per run:

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

:func:`confidence_counts` says, for a run of the planner whose rows carry ``confidence``, what
a ``validation.min_confidence`` would keep of its right plans and catch of its wrong ones.

Steps are matched as multisets: a predicted step counts once against an equal label step,
whatever its position. Texts are compared after :func:`clean_text` (spaces collapsed).
Rates are fractions in [0, 1]; a metric with nothing to measure (no labelled rows, labels
without output2, no latencies) is None. No predicted steps where steps were expected is a
precision of 0, not None.
"""

from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from robot_llm_planner.core.plan import clean_text, parse_plan, Plan, ungrounded_arguments
from robot_llm_planner.core.skills import SkillSet
from robot_llm_planner.core.stats import percentile


def is_exact(predicted: Plan, expected: Plan) -> bool:
    """Return True when a prediction is what the planner would publish as the label's plan."""
    if expected.no_task:
        return predicted.no_task
    # a plan with parse errors is invalid, not right
    return bool(expected.steps) and predicted.ok and _normalized(predicted) == _normalized(
        expected)


def confidence_counts(rows: Sequence[dict], threshold: float) -> Tuple[int, int, int, int]:
    """
    Return what ``validation.min_confidence`` = ``threshold`` does to the plans of a run.

    (right plans kept, right plans, wrong plans held back, wrong plans), counted over the
    plans :func:`scored_plans` keeps.
    """
    return threshold_counts(scored_plans(rows), threshold)


def scored_plans(rows: Sequence[dict]) -> List[Tuple[float, bool]]:
    """Return (confidence, right) of each labelled plan that passes every other check."""
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


def threshold_counts(scored: Sequence[Tuple[float, bool]],
                     threshold: float) -> Tuple[int, int, int, int]:
    """Return (right plans kept, right, wrong plans held back, wrong) at ``threshold``."""
    right = sum(1 for _, exact in scored if exact)
    kept_right = sum(1 for value, exact in scored if exact and value >= threshold)
    caught = sum(1 for value, exact in scored if not exact and value < threshold)
    return kept_right, right, caught, len(scored) - right


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
