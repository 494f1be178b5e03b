"""
What ROS adds to a plan: planner_node's round trip minus the answer's own inference time.

Starts the installed ``planner_node`` as a subprocess (a tiny random-weight Qwen2 built here,
or ``--model``), sends ``--commands`` different commands one at a time from a client in this
process (``{"id", "text"}`` on /command, the answer on /action_plan, as ``plan_client``
does) and times each round trip with the client's clock, from just before publishing to the
answer's arrival. The overhead of a command is its round trip minus the inference and parse
time the answer reports (``timing.inference_ms`` + ``timing.parse_ms``): what the topics, the
JSON, the node's queue and its threads add. Reported: p50 and p99 of the overhead, the round
trip and the inference time. The plan cache is off, so every command is decoded.

Needs the built workspace sourced (``colcon build`` + ``source install/setup.bash``).

    python3 benchmarks/ros_overhead.py --commands 200 --out DIR
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'training'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from report import write_report  # noqa: E402, I100
from robot_llm_planner.core.stats import percentile  # noqa: E402

DEFAULT_SPLIT = os.path.join(ROOT, 'training', 'data', 'task2_prompt0_test.json')
WARM_UP = 5  # commands answered before the timed ones (not counted)


def tiny_model(directory):
    """Build a random-weight tiny Qwen2 and its tokenizer in ``directory``; return it."""
    import yaml
    from planner_training.tiny_qwen import build_model, build_tokenizer
    with open(os.path.join(ROOT, 'config', 'skills.yaml'), encoding='utf-8') as stream:
        texts = list(yaml.safe_load(stream)['skills'])
    with open(DEFAULT_SPLIT, encoding='utf-8') as stream:
        texts += [row['input'] + row['output'] for row in json.load(stream)]
    build_tokenizer(texts, directory, vocab_size=600)
    build_model(directory, directory, hidden_size=64, layers=2, seed=0)
    return directory


def start_node(directory, model, max_new_tokens, env):
    """Start planner_node with the model; return the process."""
    import yaml
    from ament_index_python.packages import get_package_prefix
    executable = os.path.join(get_package_prefix('robot_llm_planner'), 'lib',
                              'robot_llm_planner', 'planner_node')
    parameters = {'model': {'path': model, 'device': 'cpu'},
                  'generation': {'max_new_tokens': max_new_tokens},
                  'cache': {'size': 0}, 'queue': {'max_size': 16}}
    path = os.path.join(directory, 'params.yaml')
    with open(path, 'w', encoding='utf-8') as stream:
        yaml.safe_dump({'/**': {'ros__parameters': parameters}}, stream)
    log = open(os.path.join(directory, 'node.log'), 'w')
    return subprocess.Popen([executable, '--ros-args', '--params-file', path], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def measure(commands, timeout):
    """Send each command, wait for its answer; return one row of figures per command."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from robot_llm_planner.ros.client import PlanClient
    rclpy.init()
    node = rclpy.create_node('ros_overhead_%d' % os.getpid())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    client = PlanClient(node, '/command', '/action_plan', executor=executor)
    rows = []
    try:
        if not client.wait_for_planner(timeout):
            raise RuntimeError('no planner_node on /command within %g s' % timeout)
        for index, command in enumerate(commands):
            sent_at = time.time()
            started = time.perf_counter()
            request_id = client.send(command)
            answer = client.wait_for_answers([request_id], timeout).get(request_id)
            round_trip = (time.perf_counter() - started) * 1000.0
            received_at = time.time()
            if answer is None:
                raise RuntimeError('no answer to %r within %g s' % (command, timeout))
            timing = answer.get('timing') or {}
            if index >= WARM_UP:
                inference = timing.get('inference_ms', 0.0) + timing.get('parse_ms', 0.0)
                # the answer's stamp (the node's clock, this machine's) splits the overhead
                # into the way in (topic, queue, checks) and the way out (JSON, topic)
                stamp = answer.get('stamp', received_at)
                rows.append({'round_trip_ms': round_trip, 'inference_ms': inference,
                             'queue_ms': timing.get('queue_ms', 0.0),
                             'overhead_ms': round_trip - inference,
                             'in_ms': (stamp - sent_at) * 1000.0 - inference,
                             'out_ms': (received_at - stamp) * 1000.0,
                             'status': answer['status']})
    finally:
        client.destroy()
        node.destroy_node()
        rclpy.shutdown()
    return rows


def summary(rows):
    """Return p50/p99 of each figure over the rows."""
    result = {'commands': len(rows),
              'statuses': {s: sum(r['status'] == s for r in rows)
                           for s in sorted({r['status'] for r in rows})}}
    for key in ('overhead_ms', 'in_ms', 'out_ms', 'round_trip_ms', 'inference_ms', 'queue_ms'):
        values = [row[key] for row in rows]
        result[key] = {'p50': round(statistics.median(values), 3),
                       'p99': round(percentile(values, 0.99), 3),
                       'max': round(max(values), 3)}
    return result


def main(argv=None):
    """Run the benchmark; write ros_overhead.json/.md under --out; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    parser.add_argument('--commands', type=int, default=200)
    parser.add_argument('--model', default='', help='model directory (default: a tiny one)')
    parser.add_argument('--max-new-tokens', type=int, default=16)
    parser.add_argument('--timeout', type=float, default=120.0, help='seconds per answer')
    parser.add_argument('--domain-id', type=int, default=random.randint(10, 101),
                        help='ROS_DOMAIN_ID of the node (default: one at random, 10-101)')
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    with open(DEFAULT_SPLIT, encoding='utf-8') as stream:
        texts = list(dict.fromkeys(row['input'] for row in json.load(stream)))
    count = WARM_UP + args.commands
    if count > len(texts):
        texts = [texts[i % len(texts)] + '%d' % (i // len(texts)) for i in range(count)]
    commands = texts[:count]  # all different: nothing is answered from a cache
    work = tempfile.mkdtemp(prefix='ros_overhead_')
    model = args.model or tiny_model(os.path.join(work, 'model'))
    env = dict(os.environ, ROS_DOMAIN_ID=str(args.domain_id),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1')
    if os.environ.get('ROS_DISTRO') == 'humble':
        env['ROS_LOCALHOST_ONLY'] = '1'
    os.environ.update({key: env[key] for key in ('ROS_DOMAIN_ID',
                                                 'ROS_AUTOMATIC_DISCOVERY_RANGE')})
    node = start_node(work, model, args.max_new_tokens, env)
    load_start = os.getloadavg()[0]
    try:
        rows = measure(commands, args.timeout)
    finally:
        node.terminate()
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    report = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
              'model': args.model or 'tiny random Qwen2 (hidden 64, 2 layers, 600 tokens)',
              'max_new_tokens': args.max_new_tokens, 'cpus': os.cpu_count(),
              'load_average': [round(load_start, 2), round(os.getloadavg()[0], 2)],
              'rmw': os.environ.get('RMW_IMPLEMENTATION', 'default'),
              **summary(rows)}
    lines = ['%s, %d CPUs, load average %.2f -> %.2f, RMW %s; %s, max_new_tokens %d; %d '
             'commands one at a time (after %d not counted): %s' % (
                 report['date'], report['cpus'], report['load_average'][0],
                 report['load_average'][1], report['rmw'], report['model'],
                 report['max_new_tokens'], report['commands'], WARM_UP,
                 json.dumps(report['statuses'])), '',
             '| ms | p50 | p99 | max |', '|---|---|---|---|']
    for key, label in (('overhead_ms', 'overhead (round trip - inference - parse)'),
                       ('in_ms', 'of which before the answer is stamped (way in, checks)'),
                       ('out_ms', 'of which after it is stamped (JSON, topic, client)'),
                       ('round_trip_ms', 'round trip (client clock)'),
                       ('inference_ms', "inference + parse (the answer's timing)"),
                       ('queue_ms', 'of which queued in the node (timing.queue_ms)')):
        lines.append('| %s | %.2f | %.2f | %.2f |' % (
            label, report[key]['p50'], report[key]['p99'], report[key]['max']))
    write_report(args.out, 'ros_overhead', dict(report, rows=rows), '\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
