"""
The same plans and confidences from a vLLM server as from the local backend, command by command.

Starts vLLM (the pinned CPU build of ``.venv-vllm``) with the model and its LoRA adapter, and
plans every command of a test split (the first ``--limit``) twice: with the local backend
(transformers, adapter merged, CPU, float32) and with the openai backend on the server
(``--endpoint``), both with the node's default checks and grammar. Reported: plans whose
text is identical, plan confidences and step confidences within ``--tolerance`` of the local
ones, the largest differences, and any step whose confidence one side could not tell.

    python3 benchmarks/remote_parity.py --demo --out DIR
    python3 benchmarks/remote_parity.py --model BASE --adapter LORA --endpoint chat --out DIR
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout too
sys.path.insert(0, os.path.join(ROOT, 'training'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from fleet import add_server_arguments, DEFAULT_SPLIT, model_arguments  # noqa: E402, I100
from fleet import served, shown_path  # noqa: E402
from report import write_report  # noqa: E402
from robot_llm_planner.core.stats import percentile  # noqa: E402


def compare(local, remote, command, tolerance):
    """Return one row: how the two plans of ``command`` differ."""
    mine, theirs = local.plan(command), remote.plan(command)
    row = {'command': command, 'same_text': mine.plan.raw_output == theirs.plan.raw_output,
           'same_status': mine.status == theirs.status,
           'confidence': [mine.confidence, theirs.confidence], 'step_gaps': [],
           'steps_unknown': 0}
    if None in row['confidence']:
        row['confidence_gap'] = None
    else:
        row['confidence_gap'] = abs(mine.confidence - theirs.confidence)
    for step, reference in zip(theirs.plan.steps, mine.plan.steps):
        if step.confidence is None or reference.confidence is None:
            row['steps_unknown'] += 1
        else:
            row['step_gaps'].append(abs(step.confidence - reference.confidence))
    row['within'] = (row['same_text'] and row['confidence_gap'] is not None and
                     row['confidence_gap'] <= tolerance and not row['steps_unknown'] and
                     all(gap <= tolerance for gap in row['step_gaps']))
    return row


def time_request(remote, command):
    """Return (whole request ms, scoring request ms) of the remote backend for ``command``."""
    generation = remote.backend.generate([command], remote.prompt, remote.generation)[0]
    return generation.stats['request_ms'], generation.stats.get('scoring_ms', 0.0)


def _gap(value):
    return '-' if value is None else '%.2g' % value


def main(argv=None):
    """Run the comparison; write remote_parity.json/.md under --out; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    add_server_arguments(parser)
    parser.add_argument('--split', default=DEFAULT_SPLIT)
    parser.add_argument('--limit', type=int, default=0, help='first N commands (0: all)')
    parser.add_argument('--endpoint', default='auto', choices=['auto', 'completions', 'chat'])
    parser.add_argument('--tolerance', type=float, default=0.01)
    parser.add_argument('--timed', type=int, default=50, help='commands whose remote request '
                        'and scoring are timed, after the comparison (0: none)')
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    model_arguments(parser, args)
    from robot_llm_planner.core.settings import PlannerSettings
    from robot_llm_planner.inference.build import build_planner
    with open(args.split, encoding='utf-8') as stream:
        commands = list(dict.fromkeys(row['input'] for row in json.load(stream)))
    commands = commands[:args.limit] if args.limit else commands
    local = build_planner(PlannerSettings(model_path=args.model, adapter_path=args.adapter,
                                          device='cpu', dtype='float32', cache_size=0))
    local.load()
    work = tempfile.mkdtemp(prefix='remote_parity_')
    with served(args, work) as url:
        remote = build_planner(PlannerSettings(
            backend='openai', remote_base_url=url, remote_model=args.server_model,
            remote_api_key_env=args.api_key_env, remote_endpoint=args.endpoint, cache_size=0))
        remote.load()
        endpoint = remote.backend.describe()['endpoint']
        rows = [compare(local, remote, command, args.tolerance) for command in commands]
        timed = [time_request(remote, command) for command in commands[:args.timed]]
    gaps = [row['confidence_gap'] for row in rows if row['confidence_gap'] is not None]
    step_gaps = [gap for row in rows for gap in row['step_gaps']]
    report = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
              'model': '%s + %s' % (shown_path(args.model), shown_path(args.adapter)),
              'split': shown_path(args.split), 'endpoint': endpoint,
              'tolerance': args.tolerance, 'commands': len(rows),
              'same_text': sum(row['same_text'] for row in rows),
              'same_status': sum(row['same_status'] for row in rows),
              'confidence_within': sum(gap <= args.tolerance for gap in gaps),
              'confidence_unknown': len(rows) - len(gaps),
              'max_confidence_gap': max(gaps, default=None),
              'steps': len(step_gaps) + sum(row['steps_unknown'] for row in rows),
              'steps_within': sum(gap <= args.tolerance for gap in step_gaps),
              'steps_unknown': sum(row['steps_unknown'] for row in rows),
              'max_step_gap': max(step_gaps, default=None),
              'all_within': sum(row['within'] for row in rows),
              'timed': len(timed), 'request_p50_ms': percentile([t[0] for t in timed], 0.5),
              'scoring_p50_ms': percentile([t[1] for t in timed], 0.5), 'rows': rows}
    shown = dict(report, max_confidence_gap=_gap(report['max_confidence_gap']),
                 max_step_gap=_gap(report['max_step_gap']))
    text = ('%(date)s; %(model)s; %(split)s, %(commands)d commands; endpoint %(endpoint)s; '
            'tolerance %(tolerance)g.\n\n| | of | largest gap |\n|---|---|---|\n'
            '| identical plan text | %(same_text)d / %(commands)d | - |\n'
            '| same status | %(same_status)d / %(commands)d | - |\n'
            '| plan confidence within tolerance | %(confidence_within)d / %(commands)d | '
            '%(max_confidence_gap)s |\n'
            '| step confidence within tolerance | %(steps_within)d / %(steps)d | '
            '%(max_step_gap)s |\n'
            '| steps whose confidence one side could not tell | %(steps_unknown)d | - |\n'
            % shown)
    if timed:
        text += ('\nRemote request p50 %(request_p50_ms).1f ms over %(timed)d commands, of '
                 'which scoring the answer again %(scoring_p50_ms).1f ms (p50).\n' % report)
    write_report(args.out, 'remote_parity', report, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
