"""
The demo model's quality figures on the held-out test split, in one run.

Plans the 525 commands of ``task2_prompt0_test`` with the demo model that ``make demo`` trains
(base + LoRA, greedy, batches of 50, CPU) three ways: the shipped settings (grammar on), the
grammar off, and the grammar off with ``model.quantization: int8``. Reports, for each: plan
exact match (by held-out kind), format / skill validity, refusals, and the statuses the node
would publish; for the shipped settings also what ``validation.grounded_arguments`` flags,
what each ``validation.min_confidence`` keeps and catches, the area under the ROC curve of the
confidence, where the least confident step is in a wrong plan, and commands naming things in
Latin letters (no training row has any). Markdown on stdout, JSON in ``--out``::

    python3 benchmarks/demo_quality.py [--model-dir DIR] [--out FILE] [--limit N]

Needs the trained demo model (``make demo`` or ``python3 -m planner_training.demo_model``),
run from the repository root. The demo model's figures in benchmarks/RESULTS.md come from here.
"""

import argparse
from collections import Counter
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'training')]  # the package and the training side

from planner_training import demo_model  # noqa: E402
from planner_training.dataset import TEST_KINDS  # noqa: E402
from robot_llm_planner.cli.evaluate import evaluate_rows, is_exact  # noqa: E402
from robot_llm_planner.cli.results import confidence_table  # noqa: E402
from robot_llm_planner.cli.runs import plan_examples  # noqa: E402
from robot_llm_planner.core.plan import NO_TASK, parse_plan  # noqa: E402

LATIN_COMMANDS = ('帮我拿一下iPad', '把USB线放到桌子上', '去Tom那里', '把iPhone拿给妈妈',
                  '打开TV', '从桌子上拿Switch')
VARIANTS = (('shipped settings (grammar on)', {}),
            ('grammar off', {'constrained': False}),
            ('grammar off, int8', {'constrained': False, 'quantization': 'int8'}))


def by_kind(rows):
    """Return exact match per held-out kind of the test split's cycle (task commands)."""
    right, total = Counter(), Counter()
    tasks = [row for row in rows if row['label'] != NO_TASK]
    for index, row in enumerate(tasks):
        kind = TEST_KINDS[index % len(TEST_KINDS)]
        total[kind] += 1
        right[kind] += is_exact(parse_plan(row['predict'], row['command']),
                                parse_plan(row['label']))
    return {kind: round(right[kind] / total[kind], 3) for kind in TEST_KINDS if total[kind]}


def auroc(rows):
    """Return the area under the ROC curve of the confidence, right against wrong ok plans."""
    scored = [(row['confidence'], is_exact(parse_plan(row['predict'], row['command']),
                                           parse_plan(row['label'])))
              for row in rows if row['status'] == 'ok' and row['confidence'] is not None]
    right = [value for value, exact in scored if exact]
    wrong = [value for value, exact in scored if not exact]
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return round(wins / (len(right) * len(wrong)), 3)


def least_confident_step(planner, rows):
    """Return (wrong ok plans differing by step, least confident differs, first differing)."""
    wrong = [row for row in rows if row['status'] == 'ok' and row['label'] != NO_TASK
             and not is_exact(parse_plan(row['predict'], row['command']),
                              parse_plan(row['label']))]
    counted = at_a_differing = at_the_first = 0
    for row, result in zip(wrong, planner.plan_batch([row['command'] for row in wrong])):
        label = parse_plan(row['label']).steps
        steps = result.plan.steps
        differing = [i for i, step in enumerate(steps)
                     if i >= len(label) or (step.action, step.target, step.location)
                     != (label[i].action, label[i].target, label[i].location)]
        scores = [step.confidence for step in steps]
        if not differing or None in scores:
            continue
        counted += 1
        lowest = scores.index(min(scores))
        at_a_differing += lowest in differing
        at_the_first += lowest == differing[0]
    return counted, at_a_differing, at_the_first


def measure(model, examples, settings):
    """Plan ``examples`` with the demo model and ``settings``; return (planner, rows, s)."""
    planner = demo_model.load_planner(model, **settings)
    started = time.perf_counter()
    rows = plan_examples(planner, examples, batch_size=50)
    return planner, rows, time.perf_counter() - started


def summary(rows, skills):
    """Return the figures of one variant's rows."""
    metrics = evaluate_rows(rows, skills)
    statuses = Counter(row['status'] for row in rows)
    no_task = [row for row in rows if row['label'] == NO_TASK]
    return {
        'exact_match': round(metrics['exact_match'], 4),
        'right': sum(is_exact(parse_plan(r['predict'], r['command']), parse_plan(r['label']))
                     for r in rows),
        'format_valid': round(metrics['format_valid'], 4),
        'skill_valid': round(metrics['skill_valid'], 4),
        'action_f1': round(metrics.get('action_f1') or 0.0, 4),
        'by_kind': by_kind(rows),
        'no_task_refused': sum(parse_plan(r['predict']).no_task for r in no_task),
        'no_task': len(no_task),
        'task_refused': sum(parse_plan(r['predict']).no_task for r in rows
                            if r['label'] != NO_TASK),
        'statuses': dict(statuses),
    }


def main():
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--model-dir', default='', help='demo model folder (default: the '
                        "default recipe's cache folder)")
    parser.add_argument('--out', default=os.path.join(ROOT, '.cache', 'demo_quality.json'))
    parser.add_argument('--limit', type=int, default=0, help='first N test rows only')
    args = parser.parse_args()
    os.environ.update(demo_model.reproducible_environment(demo_model.Recipe()))
    directory = args.model_dir or demo_model.model_directory()
    model = demo_model.DemoModel(os.path.join(directory, 'base'),
                                 os.path.join(directory, 'adapter'), directory, True, {})
    examples = demo_model.split_rows('test')
    examples = examples[:args.limit] if args.limit else examples
    results, rows_of = {'model': directory, 'commands': len(examples)}, {}
    planner = None
    for name, settings in VARIANTS:
        variant_planner, rows, seconds = measure(model, examples, settings)
        planner = planner or variant_planner
        rows_of[name] = rows
        results[name] = dict(summary(rows, variant_planner.skills), seconds=round(seconds, 1))
    shipped, off, int8 = (rows_of[name] for name, _ in VARIANTS)
    accepted_off = [i for i, row in enumerate(off) if row['status'] in ('ok', 'rejected')]
    results['grammar'] = {
        'accepted_without': len(accepted_off),
        'same_with': sum(off[i]['predict'] == shipped[i]['predict'] for i in accepted_off)}
    results['int8_differs'] = sum(a['predict'] != b['predict'] for a, b in zip(off, int8))
    passed_skills = [row for row in shipped if row['status'] == 'ok'
                     or row['errors'] == ['argument_not_in_command']]
    flagged = [row for row in passed_skills if 'argument_not_in_command' in row['errors']]
    results['grounding'] = {
        'wrong_passing_skills': sum(not is_exact(parse_plan(r['predict'], r['command']),
                                                 parse_plan(r['label'])) for r in passed_skills),
        'flagged': len(flagged),
        'right_flagged': sum(is_exact(parse_plan(r['predict'], r['command']),
                                      parse_plan(r['label'])) for r in flagged)}
    results['confidence_table'] = confidence_table(shipped)
    results['auroc'] = auroc(shipped)
    results['least_confident_step'] = dict(zip(('wrong_plans', 'at_a_differing_step',
                                                'at_the_first'),
                                               least_confident_step(planner, shipped)))
    results['latin'] = [{'command': result.command, 'status': result.status,
                         'output': result.plan.raw_output[:60]}
                        for result in planner.plan_batch(list(LATIN_COMMANDS))]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as stream:
        json.dump(results, stream, ensure_ascii=False, indent=1)
    print(json.dumps({k: v for k, v in results.items() if k != 'confidence_table'},
                     ensure_ascii=False, indent=1))
    print('\n' + results['confidence_table'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
