"""
``make demo``: the whole pipeline on CPU with a small model it trains itself.

1. makes the data set if ``training/data`` lacks it (``training/make_dataset.py``);
2. trains the demo model with ``llamafactory-cli train`` (:mod:`planner_training.demo_model`;
   cached in ``.cache/demo_model``, so a second run skips this);
3. starts the built ``planner_node`` with base + adapter, on its own random ROS_DOMAIN_ID, and
   ``plan_executor`` beside it (the simulated household runs every ok plan);
4. sends sample commands through ``plan_client``: training-like ones, unseen ones (held-out
   objects, places and phrasings of ``training/data/dataset_meta.json``, a command without a
   task), one the demo model plans impossibly (refused ``precondition_failed``) and a
   nonsense one, and prints each plan as a table;
5. shows the ok plans running in the simulated household: the first step by step with the
   state, the others one line each (/plan_execution); the first attempt to pick something up
   fails (``simulation.fail`` ``拿起物体*1``), and the reactive tree retries it;
6. prints the held-out test split's plan exact match (the figure of docs/demo.md, same code);
7. stops the nodes with SIGINT and waits for them.

Run with ``make demo`` (or, in a sourced workspace, ``python -m planner_training.demo``).
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

from planner_training import demo_model
from robot_llm_planner.core.plan import NO_TASK, parse_plan

NONSENSE = '紫色的大象今天会唱歌吗？'
# A test-split command the demo model answers with a plan whose step cannot run where it is:
# the planner refuses it (precondition_failed) and nothing is executed.
IMPOSSIBLE = '把笔记本送到姐姐那里！'
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 15.0
STEP_DURATION_S = 0.3    # each step of the simulated household
FAIL_ONCE = '拿起物体*1'  # the first pick-up attempt fails: the demo shows it retried
MAX_SAMPLES = 16         # planner_node's default queue.max_size: no sample is refused
EXECUTION_TIMEOUT_S = 120.0


def _say(text: str = '') -> None:
    print(text, flush=True)


def ensure_dataset(root: str) -> None:
    """Make the data set when the shipped files are missing (nothing downloads)."""
    needed = [os.path.join(demo_model.data_dir(root), name) for name in (
        'task2_prompt0_train.json', 'task2_prompt0_test.json', 'dataset_meta.json')]
    if all(os.path.isfile(path) for path in needed):
        return
    _say('data set missing: python3 training/make_dataset.py')
    subprocess.run([sys.executable, os.path.join('training', 'make_dataset.py')],
                   cwd=root, check=True)


def sample_commands(root: str) -> List[Tuple[str, str, Optional[str]]]:
    """
    Return (kind, command, label or None) for the demo.

    Training-like commands come from the training split, unseen ones from the test split: the
    first rows that contain each kind of held-out item listed in dataset_meta.json.
    """
    with open(os.path.join(demo_model.data_dir(root), 'dataset_meta.json'),
              encoding='utf-8') as stream:
        heldout = json.load(stream)['heldout']
    train = demo_model.split_rows('train', root)
    test = demo_model.split_rows('test', root)
    samples = [('seed example', '帮我拿一瓶水。', None)]
    manual = {row['input']: row['output'] for row in demo_model.split_rows('manual', root)}
    samples[0] = ('seed example', '帮我拿一瓶水。', manual.get('帮我拿一瓶水。'))
    for row in [r for r in train if len(r['output']) <= 60][:3]:
        samples.append(('training', row['input'], row['output']))
    places = heldout['rooms'] + heldout['furniture']
    # a phrasing is found by its literal parts: '把{loc}的{obj}取过来' -> 把, 的, 取过来
    phrasings = [[part for part in re.split(r'\{[^}]*\}', template) if part]
                 for template in heldout['templates'].values()]
    by_length = sorted(test, key=lambda row: len(row['input']))
    for kind, patterns, count in (('held-out object', [[w] for w in heldout['objects']], 3),
                                  ('held-out place', [[p] for p in places], 3),
                                  ('held-out phrasing', phrasings, 3)):
        chosen = 0
        for parts in patterns:
            row = next((r for r in by_length if all(part in r['input'] for part in parts)
                        and all(r['input'] != s[1] for s in samples)), None)
            if row is not None:
                samples.append((kind, row['input'], row['output']))
                chosen += 1
            if chosen == count:
                break
    no_task = next((row for row in test if row['output'] == NO_TASK), None)
    if no_task is not None:  # the test split's first one has a held-out phrasing
        samples.append(('held-out, no task', no_task['input'], no_task['output']))
    impossible = next((row for row in test if row['input'] == IMPOSSIBLE), None)
    if impossible is not None:
        samples.append(('held-out, planned impossibly', impossible['input'],
                        impossible['output']))
    samples.append(('nonsense', NONSENSE, None))
    return samples


# --- the ROS side -----------------------------------------------------------------------------

def _ros_environment(domain_id: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               PYTHONUNBUFFERED='1')
    if env.get('ROS_DISTRO') == 'humble':  # no discovery range before Iron
        env['ROS_LOCALHOST_ONLY'] = '1'
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    return env


def _executable(name: str) -> List[str]:
    """Return the command of an installed executable of this package (colcon build)."""
    try:
        from ament_index_python.packages import get_package_prefix
        path = os.path.join(get_package_prefix('robot_llm_planner'), 'lib',
                            'robot_llm_planner', name)
        if os.access(path, os.X_OK):
            return [path]
    except Exception:  # not in a sourced workspace: run the module
        pass
    return [sys.executable, '-m', 'robot_llm_planner.ros.' + name]


def start_node(model: demo_model.DemoModel, env: Dict[str, str], log_path: str,
               namespace: str = ''):
    """Start planner_node serving the demo model (in ``namespace``); return the process."""
    from robot_llm_planner.core.skills import package_share_path
    params = package_share_path('config', 'planner.yaml')
    overrides = {
        'model.path': model.base, 'model.adapter_path': model.adapter, 'model.device': 'cpu',
        'prompt.instruction': "''", 'generation.max_new_tokens': '256',
    }
    command = _executable('planner_node') + ['--ros-args', '--params-file', params]
    for name, value in overrides.items():
        command += ['-p', '%s:=%s' % (name, value)]
    if namespace:
        command += ['-r', '__ns:=' + namespace]
    _say('starting planner_node (ROS_DOMAIN_ID=%s, log %s):' % (env['ROS_DOMAIN_ID'], log_path))
    _say('  ' + ' '.join(command))
    log = open(log_path, 'w', encoding='utf-8')
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def start_executor(env: Dict[str, str], log_path: str, namespace: str = ''):
    """Start plan_executor (simulated household) beside planner_node; return the process."""
    from robot_llm_planner.core.skills import package_share_path
    command = _executable('plan_executor') + [
        '--ros-args', '--params-file', package_share_path('config', 'plan_executor.yaml'),
        '-p', 'simulation.step_duration_s:=%g' % STEP_DURATION_S,
        '-p', 'simulation.fail:=%s' % FAIL_ONCE,
        # every sample's plan may arrive while the first runs: none is refused queue_full
        '-p', 'execution.max_queued:=%d' % MAX_SAMPLES]
    if namespace:
        command += ['-r', '__ns:=' + namespace]
    _say('starting plan_executor (log %s):' % log_path)
    _say('  ' + ' '.join(command))
    log = open(log_path, 'w', encoding='utf-8')
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


class ExecutionWatcher:
    """Records /plan_execution in a thread of its own (an rclpy context of the demo)."""

    def __init__(self, env: Dict[str, str], namespace: str = '') -> None:
        """Subscribe to ``namespace``/plan_execution and spin until :meth:`close`."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from robot_llm_planner.ros.interface import execution_qos
        from std_msgs.msg import String
        for name in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_LOCALHOST_ONLY'):
            if name in env:
                os.environ[name] = env[name]
        self.messages: List[dict] = []
        self.namespace = namespace
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self.node = rclpy.create_node('execution_demo_%d' % os.getpid(), context=self._context)
        self.node.create_subscription(String, namespace + '/plan_execution',
                                      lambda msg: self.messages.append(json.loads(msg.data)),
                                      execution_qos())
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self._context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context shut down under the executor
                return

    def executor_ready(self, timeout: float) -> bool:
        """Wait until plan_executor subscribes to the plans."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node.count_subscribers(self.namespace + '/action_plan') >= 1:
                return True
            time.sleep(0.05)
        return False

    def ended(self, plan_id: str) -> bool:
        """Return whether the plan's last message has arrived."""
        return any(m['plan_id'] == plan_id and m['step'] is None and m['status'] != 'RUNNING'
                   for m in list(self.messages))

    def wait_for(self, plan_ids: List[str], timeout: float) -> bool:
        """Wait until every plan ended; return whether they did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.ended(plan_id) for plan_id in plan_ids):
                return True
            time.sleep(0.05)
        return False

    def of(self, plan_id: str) -> List[dict]:
        """Return the messages about one plan, in order."""
        return [m for m in list(self.messages) if m['plan_id'] == plan_id]

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        self._context.try_shutdown()
        self._thread.join(5)


def wait_ready(process, env: Dict[str, str], timeout: float = READY_TIMEOUT_S,
               namespace: str = '') -> dict:
    """Wait until planner_node's status says ready (or error); return the last status."""
    for name in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_LOCALHOST_ONLY'):
        if name in env:
            os.environ[name] = env[name]
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from robot_llm_planner.ros.interface import status_qos
    from std_msgs.msg import String
    context = rclpy.Context()
    rclpy.init(context=context)
    last: dict = {}
    try:
        node = rclpy.create_node('planner_demo_%d' % os.getpid(), context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)

        def on_status(msg):
            try:
                last.update(json.loads(msg.data))
            except ValueError:
                pass
        node.create_subscription(String, namespace + '/planner_status', on_status,
                                 status_qos())
        deadline = time.monotonic() + timeout
        shown = None
        while time.monotonic() < deadline and process.poll() is None:
            executor.spin_once(timeout_sec=0.2)
            state = last.get('state')
            if state != shown and state:
                _say('  planner_node: %s' % state)
                shown = state
            if state in ('ready', 'error'):
                break
        node.destroy_node()
    finally:
        context.try_shutdown()
    return last


def send_commands(commands: List[str], env: Dict[str, str], timeout: float,
                  namespace: str = '') -> List[dict]:
    """Send the commands with plan_client --json; return the answers in order."""
    command = _executable('plan_client') + list(commands)
    command += ['--json', '--timeout', str(timeout), '--topic-command', namespace + '/command',
                '--topic-plan', namespace + '/action_plan']
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    answers = {}
    for line in done.stdout.splitlines():
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        answers.setdefault(answer.get('command'), answer)
    if done.returncode not in (0, 1, 3, 4) or not answers:
        _say('plan_client exited with %d: %s' % (done.returncode, done.stderr.strip()))
    return [answers.get(text, {}) for text in commands]


def stop_node(process, timeout: float = STOP_TIMEOUT_S) -> int:
    """Stop planner_node with SIGINT (then SIGTERM, then SIGKILL); return its exit status."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if process.poll() is not None:
            break
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            _say('  planner_node did not stop within %g s after %s' % (timeout, sig.name))
    if process.poll() is None:
        process.kill()
    return process.wait()


# --- printing ---------------------------------------------------------------------------------

MAX_SHOWN_CHARS = 160  # of a model output printed in full otherwise


SHOWN_MIN_CONFIDENCE = 0.6  # the threshold the demo shows the effect of (docs/confidence.md)


def confidence_summary(predictions: List[dict],
                       threshold: float = SHOWN_MIN_CONFIDENCE) -> str:
    """Return what ``validation.min_confidence`` = ``threshold`` would do to these plans."""
    from robot_llm_planner.cli.evaluate import confidence_counts
    kept, right, caught, wrong = confidence_counts(predictions, threshold)
    return ('   plan confidence: validation.min_confidence %g would keep %d of the %d right plans '
            'and hold back %d of the %d wrong ones (docs/confidence.md)'
            % (threshold, kept, right, caught, wrong))


def format_plan_table(kind: str, command: str, label: Optional[str], answer: dict) -> str:
    """Return one answer as a readable block: command, status, latency, confidence, steps."""
    from robot_llm_planner.core.answer_text import error_lines, format_steps, latency_text
    status = answer.get('status', 'no answer')
    facts = ['status %s' % status]
    latency = latency_text(answer.get('timing') or {})
    if latency:
        facts.append('latency ' + latency)
    if isinstance(answer.get('confidence'), (int, float)):
        facts.append('confidence %.2f' % answer['confidence'])
    same = None
    if label is not None and answer:
        answered, expected = parse_plan(answer.get('raw_output', '')), parse_plan(label)
        same = (answered.steps, answered.no_task) == (expected.steps, expected.no_task)
        facts.append('matches the label' if same else 'differs from the label')
    lines = ['[%s] %s' % (kind, command), '    ' + ', '.join(facts)]
    steps = answer.get('steps') or []
    if any(step.get('action') for step in steps):  # not a table of empty rows
        lines += ['    ' + line for line in format_steps(steps, descriptions=False)]
    lines += ['    error ' + line for line in error_lines(answer.get('errors') or [])]
    raw = answer.get('raw_output', '')
    if same is False or (label is None and raw and status != 'ok'):
        shown = raw if len(raw) <= MAX_SHOWN_CHARS else raw[:MAX_SHOWN_CHARS] + ' ...'
        lines.append('    model: %s' % shown)
    if same is False:
        lines.append('    label: %s' % label)
    return '\n'.join(lines)


def _state_text(state: Optional[dict]) -> str:
    if not state:
        return ''
    parts = ['at %s' % state['place'] if state['place'] else 'place unknown',
             'holds %s' % ('、'.join(state['held']) or 'nothing')]
    if state['found']:
        parts.append('found %s' % '、'.join(state['found']))
    for key in ('open', 'closed'):
        if state[key]:
            parts.append('%s %s' % (key, '、'.join(state[key])))
    return ', '.join(parts)


def format_execution(messages: List[dict]) -> str:
    """Return a plan's /plan_execution messages as lines, step by step, with the state."""
    lines = []
    for message in messages:
        inserted = message.get('recovery')
        if message['step'] is None:
            head = 'plan %s' % message['status']
        elif message.get('changed'):
            head = 'step %d: the world changed: %s' % (message['step'] + 1,
                                                       ', '.join(message['changed']))
        else:
            head = 'step %d %s %s%s: %s' % (
                message['step'] + 1, message['action'], message['target'],
                ' @' + message['location'] if message['location'] else '', message['status'])
            if inserted:
                head = 'step %d, recovery %s %s for %s: %s' % (
                    message['step'] + 1, inserted['action'], inserted['target'],
                    inserted['achieves'], message['status'])
        tail = message['reason'] if message['status'] in ('FAILURE', 'RETRYING') else (
            _state_text(message['state']) if message['status'] == 'SUCCESS' else '')
        lines.append('    %s%s' % (head, '  (%s)' % tail if tail else ''))
    return '\n'.join(lines)


def execution_line(kind: str, command: str, messages: List[dict]) -> str:
    """Return one line: how a plan's execution ended."""
    end = next((m for m in reversed(messages) if m['step'] is None
                and m['status'] != 'RUNNING'), None)
    if end is None:
        return '[%s] %s: did not end' % (kind, command)
    if end['status'] == 'SUCCESS':
        return '[%s] %s: SUCCESS, %d step%s (%s)' % (
            kind, command, end['steps'], '' if end['steps'] == 1 else 's',
            _state_text(end['state']))
    return '[%s] %s: FAILURE (%s: %s)' % (kind, command, end['code'], end['reason'])


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the demo; return 0 when every step worked."""
    parser = argparse.ArgumentParser(prog='python -m planner_training.demo',
                                     description=__doc__.split('\n')[1])
    parser.add_argument('--root', default=os.getcwd() if os.path.isdir('training')
                        else demo_model.ROOT, help='repository root (default: here)')
    parser.add_argument('--skip-accuracy', action='store_true',
                        help='do not measure the held-out test split')
    parser.add_argument('--cache', default=None, help='model cache folder (default: '
                        '<root>/%s)' % demo_model.DEFAULT_CACHE)
    args = parser.parse_args(argv)
    # Planning (here and in the node) computes with the kernels training was pinned to, so the
    # printed figures are the same on every x86-64 CPU (set before torch is imported).
    os.environ.update(demo_model.reproducible_environment(demo_model.Recipe()))
    # SIGTERM (kill, a CI cancel) ends the demo like Ctrl-C: the finally blocks stop the
    # node and the trainer instead of leaving them running (main thread only: signal handlers
    # can only be set there; restored on return)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    # idle OpenMP threads sleep instead of spinning (a shared 2-core machine); before torch
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    root = os.path.abspath(args.root)
    started = time.perf_counter()
    ensure_dataset(root)
    _say('== 1. the demo model (LLaMA-Factory on CPU; cached after the first run)')
    try:
        model = demo_model.train_demo_model(cache_dir=args.cache, root=root)
    except demo_model.DemoModelError as exc:
        _say('demo: %s' % exc)
        return 1
    _say('   base %s\n   adapter %s' % (model.base, model.adapter))
    domain_id = random.SystemRandom().randint(1, 100)
    env = _ros_environment(domain_id)
    # a namespace of its own: another planner on the same domain is never taken for this one
    namespace = '/planner_demo_%d' % os.getpid()
    log_path = os.path.join(model.directory, 'planner_node.log')
    _say('\n== 2. planner_node with base + adapter, plan_executor beside it')
    process = start_node(model, env, log_path, namespace)
    executor = start_executor(env, os.path.join(model.directory, 'plan_executor.log'),
                              namespace)
    code = 0
    watcher = None
    try:
        status = wait_ready(process, env, namespace=namespace)
        if status.get('state') != 'ready':
            _say('planner_node is not ready (%s); its log %s:' % (
                status.get('error') or 'exited with %s' % process.poll(), log_path))
            with open(log_path, encoding='utf-8', errors='replace') as stream:
                _say(''.join(stream.readlines()[-20:]))
            return 1
        watcher = ExecutionWatcher(env, namespace)
        if not watcher.executor_ready(60.0):
            _say('plan_executor did not start; its log: %s' % os.path.join(
                model.directory, 'plan_executor.log'))
            return 1
        samples = sample_commands(root)
        _say('\n== 3. %d sample commands through plan_client' % len(samples))
        answers = send_commands([command for _, command, _ in samples], env, 120.0,
                                namespace)
        for (kind, command, label), answer in zip(samples, answers):
            _say(format_plan_table(kind, command, label, answer) + '\n')
            code = code or (0 if answer else 1)
        code = code or show_execution(samples, answers, watcher)
        if not args.skip_accuracy:
            _say('\n== 5. held-out test split (plan exact match, greedy; docs/demo.md)')
            planner = demo_model.load_planner(model)
            metrics = demo_model.heldout_accuracy(planner, 'test', root)
            _say('   exact match %.1f %% of %d commands (format valid %.1f %%, skill valid '
                 '%.1f %%, arguments in the command %.1f %%; %.0f s)' % (
                     100 * metrics['exact_match'], metrics['labelled'],
                     100 * metrics['format_valid'], 100 * metrics['skill_valid'],
                     100 * metrics['grounded_valid'], metrics['seconds']))
            if metrics['no_task_labelled']:
                _say('   without a task (无法执行): %d of %d refused; task commands refused: '
                     '%.1f %%' % (round(metrics['no_task_recall'] * metrics['no_task_labelled']),
                                  metrics['no_task_labelled'],
                                  100 * metrics['false_refusals']))
            _say(confidence_summary(metrics['predictions']))
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut this short
        if watcher is not None:
            watcher.close()
        _say('\n== 6. stopping plan_executor and planner_node (SIGINT)')
        executor_code = stop_node(executor)
        _say('   plan_executor exited with %s' % executor_code)
        status_code = stop_node(process)
        _say('   planner_node exited with %s' % status_code)
    _say('demo done in %.0f s' % (time.perf_counter() - started))
    return code or (0 if status_code == executor_code == 0 else 1)


def show_execution(samples: List[Tuple[str, str, Optional[str]]], answers: List[dict],
                   watcher: ExecutionWatcher) -> int:
    """Print how plan_executor ran the ok plans; return 1 when one did not end."""
    ran = [(kind, command, answer['id']) for (kind, command, _), answer in zip(samples, answers)
           if answer.get('status') == 'ok']
    _say('== 4. plan_executor runs the %d ok plans in the simulated household (%g s a step; '
         'simulation.fail %s: the first pick-up attempt fails and is retried)'
         % (len(ran), STEP_DURATION_S, FAIL_ONCE))
    if not watcher.wait_for([plan_id for _, _, plan_id in ran], EXECUTION_TIMEOUT_S):
        _say('   not every plan ended within %g s' % EXECUTION_TIMEOUT_S)
    for number, (kind, command, plan_id) in enumerate(ran):
        if number == 0:
            _say('[%s] %s' % (kind, command))
            _say(format_execution(watcher.of(plan_id)))
        else:
            _say(execution_line(kind, command, watcher.of(plan_id)))
    for (kind, command, _), answer in zip(samples, answers):
        errors = answer.get('errors') or []
        if errors and all(e.get('code') == 'precondition_failed' for e in errors):
            _say('[%s] %s: not executed, the planner refused it: %s'
                 % (kind, command, errors[0].get('message')))
    return 0 if all(watcher.ended(plan_id) for _, _, plan_id in ran) else 1


if __name__ == '__main__':
    sys.exit(main())
