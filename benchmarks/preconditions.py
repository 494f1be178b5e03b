#!/usr/bin/env python3
"""
Preconditions on a trained model: the wrong plans they catch, the right plans they keep.

Plans a shipped split once with the demo model (greedy, every check of the planner on except
``validation.preconditions`` and ``validation.min_confidence``), then checks each answer again
with preconditions on, through the planner's own :class:`OutputCheck` (same text, same
confidence: what planner_node would publish). A plan is right when it equals its label (the
measure of ``cli evaluate``; a plan for a command labelled 无法执行 is wrong). Prints, for
``validation.min_confidence`` 0, 0.3 and 0.6, how many plans are published ``ok`` and what
share of them is wrong, without and with preconditions, and the reasons of the refusals::

    python3 benchmarks/preconditions.py                 # the cached demo model (make demo)
    python3 benchmarks/preconditions.py --model-dir .cache/demo_model/<key> --out p.json
"""

import argparse
from collections import Counter
import json
import os
import sys
import time
from typing import Dict, List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'training')]  # the package and the training side

from planner_training import demo_model  # noqa: E402
from robot_llm_planner.cli.evaluate import is_exact  # noqa: E402
from robot_llm_planner.core.output_check import OutputCheck  # noqa: E402
from robot_llm_planner.core.plan import parse_plan  # noqa: E402

THRESHOLDS = (0.0, 0.3, 0.6)


def plan_split(base: str, adapter: str, split: str, limit: int) -> List[dict]:
    """Return one row per command: the answer, its label and what each check set says."""
    model = demo_model.DemoModel(base, adapter, '', True, {})
    planner = demo_model.load_planner(model, preconditions=False)
    rows = demo_model.split_rows(split, ROOT)[:limit or None]
    with_preconditions = OutputCheck(planner.skills, preconditions=True,
                                     max_new_tokens=planner.generation.max_new_tokens)
    results = []
    for start in range(0, len(rows), 50):
        chunk = rows[start:start + 50]
        for row, result in zip(chunk, planner.plan_batch([r['input'] for r in chunk])):
            truncated = any(e.code == 'truncated_output' for e in result.errors)
            again = with_preconditions.check(result.command, result.plan.raw_output,
                                             not truncated, result.confidence)
            expected = parse_plan(row['output'])
            results.append({
                'command': row['input'], 'predict': result.plan.raw_output,
                'label': row['output'], 'confidence': result.confidence,
                'right': is_exact(result.plan, expected),
                'ok': result.status == 'ok',
                'ok_with_preconditions': again.status == 'ok',
                'refusal': ' '.join(e.message for e in again.errors
                                    if e.code == 'precondition_failed'),
                'unmet': unmet_fact(planner.skills, again.plan) if again.errors else ''})
    return results


def unmet_fact(skills, plan) -> str:
    """Return 'skill fact' of the first condition the plan does not meet ('' if none)."""
    state = skills.initial_state()
    for step in plan.steps:
        skill = skills.skills.get(step.action)
        for fact in skill.requires if skill is not None else ():
            if not state.holds(fact, step):
                return '%s %s' % (step.action, fact)
        skills.apply_effects(state, step)
    return ''


def summary(rows: Sequence[dict]) -> Dict:
    """Return the counts the report shows (see the module docstring)."""
    ok = [row for row in rows if row['ok']]
    right = [row for row in ok if row['right']]
    wrong = [row for row in ok if not row['right']]
    refused = [row for row in ok if not row['ok_with_preconditions']]
    table = []
    for threshold in THRESHOLDS:
        line = {'min_confidence': threshold}
        for name, key in (('without', 'ok'), ('with', 'ok_with_preconditions')):
            kept = [row for row in rows if row[key] and (row['confidence'] or 0.0) >= threshold]
            line[name] = {'ok': len(kept), 'wrong': sum(not row['right'] for row in kept)}
        table.append(line)
    reasons = Counter(row['unmet'] for row in refused)
    return {'commands': len(rows), 'ok': len(ok), 'right': len(right), 'wrong': len(wrong),
            'wrong_caught': sum(not row['right'] for row in refused),
            'right_kept': sum(row['right'] and row['ok_with_preconditions'] for row in ok),
            'table': table, 'reasons': reasons.most_common()}


def _share(wrong: int, total: int) -> str:
    return '%d of %d (%.1f %%)' % (wrong, total, 100.0 * wrong / total) if total else '-'


def markdown(report: Dict) -> str:
    """Return the report as markdown."""
    lines = ['%d commands; %d plans published ok without preconditions: %d right, %d wrong.'
             % (report['commands'], report['ok'], report['right'], report['wrong']), '',
             'validation.preconditions caught %d of the %d wrong plans and kept %d of the %d '
             'right ones.' % (report['wrong_caught'], report['wrong'], report['right_kept'],
                              report['right']), '',
             '| min_confidence | wrong among ok, without preconditions | '
             'wrong among ok, with preconditions |', '|---|---|---|']
    for line in report['table']:
        lines.append('| %g | %s | %s |' % (
            line['min_confidence'], _share(line['without']['wrong'], line['without']['ok']),
            _share(line['with']['wrong'], line['with']['ok'])))
    lines += ['', 'Refusals (precondition_failed) by the first condition not met:', '']
    lines += ['- %d x %s' % (count, reason) for reason, count in report['reasons']]
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    """Plan, check again, print the report; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--model-dir', help='a demo model folder with base/ and adapter/ '
                        '(default: the cached demo model of this checkout)')
    parser.add_argument('--base', help='base model folder (instead of --model-dir)')
    parser.add_argument('--adapter', default='', help='LoRA adapter folder (with --base)')
    parser.add_argument('--split', default='test', help='shipped split (default: test)')
    parser.add_argument('--limit', type=int, default=0, help='first N commands only')
    parser.add_argument('--out', help='also write the report and rows as JSON here')
    args = parser.parse_args(argv)
    if args.base:
        base, adapter = args.base, args.adapter
    else:
        directory = args.model_dir or demo_model.model_directory(root=ROOT)
        base, adapter = os.path.join(directory, 'base'), os.path.join(directory, 'adapter')
    started = time.perf_counter()
    rows = plan_split(base, adapter, args.split, args.limit)
    report = summary(rows)
    report['seconds'] = round(time.perf_counter() - started, 1)
    report['load_average'] = list(os.getloadavg())
    print(markdown(report), end='')
    print('(%d commands planned and checked in %.0f s; load average %.2f %.2f %.2f)' % (
        len(rows), report['seconds'], *report['load_average']))
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as stream:
            json.dump(dict(report, rows=rows), stream, ensure_ascii=False, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
