#!/usr/bin/env python3
"""
Recovery: the linear tree against the reactive one, on the shipped labels, with faults.

Every label of a shipped split that the planner publishes ``ok`` (it parses and passes the
skills and preconditions checks; task2 labels: task1 has no action list) runs through
plan_executor's own :class:`PlanRunner` in the simulated household, with a zero step duration
and a virtual clock that advances ``--tick`` seconds per tick (so the retry delays count, and
the figure does not depend on the machine). Conditions: each attempt fails with the
probability ``fail_rate`` (``--rates``), and with disturbances (the first object a plan picks
up slips out of the hand as its next step begins: ``drop*1``). Each plan gets its own seed,
the same in both modes. Per mode and condition: plans completed, attempts started (steps
run), recovery steps inserted, retries, steps skipped, attempts that started while a need of
theirs was false (checked against the state each RUNNING message carries), the executed time
on the virtual clock, and the executor's wall time::

    python3 benchmarks/recovery.py --out /tmp/recovery          # every ok label of the test split
    python3 benchmarks/recovery.py --limit 50 --rates 0.2 --out /tmp/r
"""

import argparse
from dataclasses import astuple
import json
import os
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from report import write_report  # noqa: E402
from robot_llm_planner.core.message import message_steps  # noqa: E402
from robot_llm_planner.core.output_check import OutputCheck  # noqa: E402
from robot_llm_planner.core.plan import Step  # noqa: E402
from robot_llm_planner.core.recovery import reactive_plan  # noqa: E402
from robot_llm_planner.core.skills import SkillSet  # noqa: E402
from robot_llm_planner.execution.behaviours import BehaviourMap  # noqa: E402
from robot_llm_planner.execution.faults import Faults  # noqa: E402
from robot_llm_planner.execution.runner import PlanRunner  # noqa: E402
from robot_llm_planner.execution.simulation import SimulationSettings  # noqa: E402

MAX_TICKS = 100000  # a plan not ended by then is counted as hung


def ok_plans(split: str, task: str, skills: SkillSet) -> List[dict]:
    """Return the /action_plan message of every label of the split the planner publishes ok."""
    path = os.path.join(ROOT, 'training', 'data', '%s_prompt0_%s.json' % (task, split))
    with open(path, encoding='utf-8') as stream:
        rows = json.load(stream)
    check = OutputCheck(skills)
    plans = []
    for number, row in enumerate(rows):
        result = check.check(row['input'], row['output'])
        if result.status == 'ok':
            plans.append(result.message('%s-%d' % (split, number)))
    return plans


class Clock:
    """The virtual clock of one run."""

    def __init__(self) -> None:
        """Start at 0 s."""
        self.now = 0.0

    def __call__(self) -> float:
        """Return the time."""
        return self.now


def false_starts(messages: List[dict], plan: dict, skills: SkillSet) -> int:
    """Return how many attempts started while a need of theirs was false in their state."""
    actions = reactive_plan(skills, message_steps(plan['steps']))
    count = 0
    for message in messages:
        if message['status'] != 'RUNNING' or not message['attempt']:
            continue
        state = skills.initial_state()
        shown = message['state']
        state.place, state.held = shown['place'], list(shown['held'])
        state.found, state.opened, state.closed = (set(shown[key])
                                                   for key in ('found', 'open', 'closed'))
        action = actions[message['step']]
        inserted = message['recovery']
        if inserted is not None:
            action = reactive_plan(skills, [Step('', inserted['action'], inserted['target'],
                                                 inserted['location'])])[0]
        count += any(not need.goal.holds(state) for need in action.needs)
    return count


def run_plan(plan: dict, skills: SkillSet, recovery: bool, faults: Faults,
             tick: float) -> Dict:
    """Run one plan to its end; return its figures."""
    clock = Clock()
    runner = PlanRunner(skills, BehaviourMap(skills), SimulationSettings(0.0, faults, clock),
                        recovery=recovery, clock=clock)
    started = time.perf_counter()
    messages, _ = runner.submit(json.dumps(plan, ensure_ascii=False))
    ticks = 0
    while not runner.idle and ticks < MAX_TICKS:
        messages += runner.tick()
        clock.now += tick
        ticks += 1
    wall = time.perf_counter() - started
    attempts = [m for m in messages if m['status'] == 'RUNNING' and m['attempt']]
    end = [m for m in messages if m['step'] is None and m['status'] != 'RUNNING']
    return {'completed': bool(end) and end[-1]['status'] == 'SUCCESS', 'hung': not end,
            'steps_run': len(attempts),
            'recovery_steps': sum(m['recovery'] is not None for m in attempts),
            'retries': sum(m['attempt'] > 1 for m in attempts),
            'skipped': sum(m['status'] == 'SUCCESS' and m['step'] is not None
                           and m['reason'].startswith('skipped') for m in messages),
            'false_starts': false_starts(messages, plan, skills),
            'seconds': clock.now - tick, 'wall_ms': 1000.0 * wall}


def measure(plans: List[dict], skills: SkillSet, rates: List[float], seed: int,
            tick: float) -> List[Dict]:
    """Return one row per condition and mode (see the module docstring)."""
    conditions = [('fail_rate %g' % rate, rate, '') for rate in rates]
    conditions += [('drop*1', 0.0, 'drop*1'), ('drop*1, fail_rate 0.2', 0.2, 'drop*1')]
    rows = []
    for name, rate, disturbances in conditions:
        for mode in ('linear', 'reactive'):
            runs = [run_plan(plan, skills, mode == 'reactive',
                             Faults('', rate, seed + number, disturbances), tick)
                    for number, plan in enumerate(plans)]
            row = {'condition': name, 'mode': mode, 'plans': len(runs)}
            for key in ('completed', 'hung', 'steps_run', 'recovery_steps', 'retries',
                        'skipped', 'false_starts', 'seconds', 'wall_ms'):
                row[key] = sum(run[key] for run in runs)
            row['max_seconds'] = max(run['seconds'] for run in runs)
            rows.append(row)
    return rows


def markdown(rows: List[Dict], plans: int) -> str:
    """Return the table of the rows."""
    lines = ['%d ok plans; each attempt fails with fail_rate; drop*1: the first object a plan '
             'picks up slips out of the hand as the next step begins.' % plans, '',
             '| condition | tree | plans completed | steps run | recovery steps | retries | '
             'skipped | started with a need false | executed s (mean / max) | wall ms per plan |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        lines.append('| %s | %s | %d (%.1f %%)%s | %d | %d | %d | %d | %d | %.2f / %.1f | %.2f |'
                     % (row['condition'], row['mode'], row['completed'],
                        100.0 * row['completed'] / row['plans'],
                        ', %d hung' % row['hung'] if row['hung'] else '', row['steps_run'],
                        row['recovery_steps'], row['retries'], row['skipped'],
                        row['false_starts'], row['seconds'] / row['plans'],
                        row['max_seconds'], row['wall_ms'] / row['plans']))
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    """Measure, print and write the report; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--split', default='test', help='shipped split (default: test)')
    parser.add_argument('--task', default='task2', help='task of the labels (default: task2)')
    parser.add_argument('--rates', type=float, nargs='+', default=[0.0, 0.1, 0.2, 0.3],
                        help='fail_rate values (default: 0 0.1 0.2 0.3)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the first plan (then +1)')
    parser.add_argument('--tick', type=float, default=0.1,
                        help='seconds of the virtual clock per tick (execution.tick_period_s)')
    parser.add_argument('--limit', type=int, default=0, help='first N ok plans only')
    parser.add_argument('--skills', default='', help='skills YAML (default: the shipped one)')
    parser.add_argument('--out', required=True, help='write recovery.json and .md here')
    args = parser.parse_args(argv)
    skills = SkillSet.load(args.skills or None)
    plans = ok_plans(args.split, args.task, skills)[:args.limit or None]
    started = time.perf_counter()
    rows = measure(plans, skills, args.rates, args.seed, args.tick)
    report = {'split': args.split, 'task': args.task, 'plans': len(plans), 'seed': args.seed,
              'tick_s': args.tick,
              'retry': {skill.name: list(astuple(skills.retry_of(skill.name)))
                        for skill in skills},  # attempts, delay_s, timeout_s
              'rows': rows, 'seconds': round(time.perf_counter() - started, 1),
              'load_average': list(os.getloadavg())}
    write_report(args.out, 'recovery', report, markdown(rows, len(plans)))
    print('(%d plans x %d runs in %.0f s; load average %.2f %.2f %.2f)' % (
        len(plans), len(rows), report['seconds'], *report['load_average']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
