"""
plan_executor over real ROS 2: plans from a running planner_node, executed and reported.

planner_node (the openai backend against a scripted HTTP server,
:class:`doubles.FakeOpenAIServer`) and plan_executor run as the installed executables in
subprocesses; the test sends commands with the PlanClient and records /plan_execution, every
message checked against config/plan_execution.schema.json. Plugged behaviours come from
test/executor_behaviours.py.
"""

import json
import os
import signal
import threading
import time

from doubles import fake_server_parameters
from helpers import wait_until
import jsonschema
from planner_harness import flat_parameters, NodeProcess, ros_domain, share_path, wait_for_answers
import pytest
from robot_llm_planner.core.executor_parameters import (EXECUTOR_PARAMETERS_BY_NAME,
                                                        load_executor_config)
from robot_llm_planner.execution.tree import STATUSES
from robot_llm_planner.ros.interface import execution_qos
from std_msgs.msg import String
import yaml

TEST_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TEST_DIR)
ANSWERS = {
    '把水拿给我': '寻找水；拿起水；走到我身边；把水递给我。寻找物体，水；拿起物体，水；移动到，我；递给，我',
    '去厨房拿杯子给我': ('去厨房；寻找杯子；拿起杯子；走到我身边；把杯子递给我。移动到，厨房；'
                 '寻找物体，杯子；拿起物体，杯子；移动到，我；递给，我'),
    '把水递给我': '把水递给我。递给，我',
    '去客厅': '去客厅。移动到，客厅',
    '把遥控器拿给我': ('寻找遥控器；拿起遥控器；走到我身边；把遥控器递给我。寻找物体，遥控器；拿起物体，遥控器；'
                '移动到，我；递给，我'),
}
DONE = 60.0  # seconds a test waits for a plan to end


# ---------------------------------------------------------------------- ROS-free
def test_plan_executor_yaml_has_every_parameter_with_its_default():
    with open(os.path.join(ROOT, 'config', 'plan_executor.yaml'), encoding='utf-8') as stream:
        values = flat_parameters(yaml.safe_load(stream)['/**']['ros__parameters'])
    assert values == {name: parameter.default
                      for name, parameter in EXECUTOR_PARAMETERS_BY_NAME.items()}
    assert load_executor_config(values) == (load_executor_config({})[0], [])


def test_the_progress_topic_names_every_status_a_message_has():
    description = EXECUTOR_PARAMETERS_BY_NAME['topics.execution'].description
    assert all(status in description for status in STATUSES)


@pytest.mark.parametrize('name,value,error', [
    ('execution.policy', 'lifo', "execution.policy must be one of queue, preempt, got 'lifo'"),
    ('execution.max_queued', 0, 'execution.max_queued must be >= 1, got 0'),
    ('execution.tick_period_s', 0.0, 'execution.tick_period_s must be > 0, got 0.0'),
    ('simulation.step_duration_s', -1.0, 'simulation.step_duration_s must be >= 0, got -1.0'),
    ('topics.execution', ' ', 'topics.execution must not be empty'),
    ('behaviours.skills', ['移动到=a:b'], 'behaviours.skills must be a string, got a list'),
])
def test_invalid_executor_values_are_reported_and_replaced_by_the_default(name, value, error):
    config, errors = load_executor_config({name: value})
    assert len(errors) == 1 and error in errors[0]
    assert config == load_executor_config({})[0]


# ---------------------------------------------------------------------- over ROS
class ExecutionRecorder:
    """Every /plan_execution message, checked against the schema as it arrives."""

    def __init__(self, node, topic):
        """Subscribe to ``topic``."""
        with open(share_path('config', 'plan_execution.schema.json'), encoding='utf-8') as f:
            self.validator = jsonschema.Draft202012Validator(json.load(f))
        self.messages, self.errors = [], []
        self._lock = threading.Lock()
        self._subscription = node.create_subscription(String, topic, self._on_message,
                                                      execution_qos())

    def _on_message(self, msg):
        message = json.loads(msg.data)
        try:
            self.validator.validate(message)
        except jsonschema.ValidationError as exc:
            self.errors.append(str(exc))
        with self._lock:
            self.messages.append(message)

    def of(self, plan_id):
        """Return (step, status, code, reason) of the messages about ``plan_id``."""
        with self._lock:
            return [(m['step'], m['status'], m['code'], m['reason']) for m in self.messages
                    if m['plan_id'] == plan_id]

    def ended(self, plan_id):
        """Return the message that ended ``plan_id``, or None while it has not ended."""
        with self._lock:
            return next((m for m in self.messages if m['plan_id'] == plan_id
                         and m['step'] is None and m['status'] != 'RUNNING'), None)

    def wait_for_end(self, plan_id, timeout=DONE):
        """Wait for the message that ends ``plan_id``; return it."""
        return wait_until(lambda: self.ended(plan_id), timeout, lambda: (
            'plan %s did not end; messages: %s' % (plan_id, self.of(plan_id))))

    def wait_for(self, plan_id, step, status, timeout=DONE):
        """Wait until ``plan_id`` reported ``status`` for ``step``."""
        wait_until(lambda: any(m[:2] == (step, status) for m in self.of(plan_id)), timeout,
                   lambda: 'plan %s step %s never %s: %s' % (plan_id, step, status,
                                                             self.of(plan_id)))


@pytest.fixture
def server(server):
    """Return the conftest's FakeOpenAIServer, answering this file's commands."""
    server.answers.update(ANSWERS)
    return server


def _start(domain, server, tmp_path, namespace='', executor_parameters=None,
           params_file=None):
    ros_args = ['-r', '__ns:=%s' % namespace] if namespace else []
    planner = NodeProcess(domain, tmp_path / 'planner', fake_server_parameters(
        server, **{'validation.grounded_arguments': True}), ros_args=ros_args)
    executor = NodeProcess(domain, tmp_path / 'executor', executor_parameters or {},
                           overrides=[(name, value) for name, value in
                                      (executor_parameters or {}).items()]
                           if params_file else (), ros_args=ros_args,
                           params_file=params_file, node='plan_executor')
    return planner, executor


def _wait_for_executor(domain, executor, client, recorder, namespace=''):
    """
    Wait until a plan from planner_node reaches plan_executor and its report reaches the test.

    The test node seeing the executor's subscription does not mean that the planner process
    has matched it yet (discovery is per pair of participants), and a plan published before
    that is not delivered: warm-up plans are sent until one is reported ended.
    """
    def not_subscribed():
        return 'plan_executor did not subscribe:\n' + executor.stderr()[-3000:]

    wait_until(lambda: not executor.alive()
               or domain.node.count_subscribers(namespace + '/action_plan') >= 2, 30,
               not_subscribed)
    if not executor.alive():
        pytest.fail(not_subscribed())
    for attempt in range(12):
        plan_id = client.send('去客厅', 'warm-up-%d' % attempt)
        if wait_until(lambda: recorder.ended(plan_id), 5, failure=None):
            return
    pytest.fail('no plan reached plan_executor:\n' + executor.stderr()[-3000:])


def _stop(*processes):
    codes = [process.stop(signal.SIGINT) for process in processes]
    for process in processes:
        assert 'Traceback' not in process.stderr(), process.stderr()[-3000:]
    return codes


def test_plans_from_planner_node_run_step_by_step_and_a_failing_skill_stops_the_tree(
        server, tmp_path):
    with ros_domain() as domain:
        # plugged navigation imported from the test folder, as a robot's package would be
        domain.env['PYTHONPATH'] = TEST_DIR + os.pathsep + domain.env.get('PYTHONPATH', '')
        goals = []
        domain.node.create_subscription(String, '/robot1/navigation_goals',
                                        lambda msg: goals.append(msg.data), 10)
        recorder = ExecutionRecorder(domain.node, '/robot1/plan_execution')
        client = domain.client('/robot1')
        # what `ros2 launch ... namespace:=robot1 executor:=true` starts, with overrides
        planner, executor = _start(domain, server, tmp_path, '/robot1', {
            'execution.recovery': False,  # the linear tree: each step once, in plan order
            'simulation.step_duration_s': 0.2, 'simulation.fail': '拿起物体=杯子',
            'behaviours.skills': '移动到=executor_behaviours:navigate_to'},
            params_file=share_path('config', 'plan_executor.yaml'))
        try:
            assert client.wait_for_planner(30), planner.stderr()[-3000:]
            _wait_for_executor(domain, executor, client, recorder, '/robot1')
            bring = client.send('把水拿给我', 'bring-1')
            answer = wait_for_answers(client, [bring])[bring]
            assert answer['status'] == 'ok', answer
            end = recorder.wait_for_end(bring)
            assert recorder.of(bring) == [
                (None, 'RUNNING', '', ''),
                (0, 'RUNNING', '', ''), (0, 'SUCCESS', '', ''),
                (1, 'RUNNING', '', ''), (1, 'SUCCESS', '', ''),
                (2, 'RUNNING', '', ''), (2, 'SUCCESS', '', ''),
                (3, 'RUNNING', '', ''), (3, 'SUCCESS', '', ''),
                (None, 'SUCCESS', '', '')]
            assert end['state'] == {'place': '我', 'found': ['水'], 'held': [], 'open': [],
                                    'closed': []}
            assert end['command'] == '把水拿给我' and end['steps'] == 4
            fetch = client.send('去厨房拿杯子给我', 'fetch-1')
            end = recorder.wait_for_end(fetch)
            failed = 'simulated failure of 拿起物体 杯子 (simulation.fail)'
            assert recorder.of(fetch)[-3:] == [(2, 'RUNNING', '', ''),
                                               (2, 'FAILURE', 'step_failed', failed),
                                               (None, 'FAILURE', 'step_failed', failed)]
            assert all(step in (None, 0, 1, 2) for step, *_ in recorder.of(fetch))
            assert end['state']['place'] == '厨房' and end['state']['held'] == []
            assert '厨房 3 1.5' in goals  # the plugged behaviour ran, set up with the node
            # the planner refuses an impossible plan: nothing runs
            impossible = client.send('把水递给我', 'hand-1')
            refused = wait_for_answers(client, [impossible])[impossible]
            assert [e['code'] for e in refused['errors']] == ['precondition_failed']
            time.sleep(1.0)
            assert recorder.of(impossible) == []
            assert recorder.errors == []
            assert _stop(executor, planner) == [0, 0]
        finally:
            executor.kill()
            planner.kill()


def test_recovery_retries_a_failed_pick_finds_a_dropped_object_and_fails_in_bounded_time(
        server, tmp_path):
    with ros_domain() as domain:
        recorder = ExecutionRecorder(domain.node, '/plan_execution')
        client = domain.client()
        duration, delay = 0.1, 0.5  # delay_s: the shipped skills' retry default
        planner, executor = _start(domain, server, tmp_path, executor_parameters={
            'simulation.step_duration_s': duration,
            'simulation.fail': '拿起物体=杯子*2, 拿起物体=遥控器',
            'simulation.disturbances': 'drop=水*1'})
        try:
            assert client.wait_for_planner(30), planner.stderr()[-3000:]
            _wait_for_executor(domain, executor, client, recorder)
            # a pick that fails twice, then works: the plan succeeds, both failures reported
            fetch = client.send('去厨房拿杯子给我', 'fetch-2')
            assert recorder.wait_for_end(fetch)['status'] == 'SUCCESS'
            failed = 'simulated failure of 拿起物体 杯子 (simulation.fail) (attempt %d of 3)'
            assert [m for m in recorder.of(fetch) if m[0] == 2] == [
                (2, 'RUNNING', '', ''), (2, 'RETRYING', 'step_failed', failed % 1),
                (2, 'RUNNING', '', ''), (2, 'RETRYING', 'step_failed', failed % 2),
                (2, 'RUNNING', '', ''), (2, 'SUCCESS', '', '')]
            # a pick that always fails: FAILURE with the fact and what was tried, in bounded
            # time (3 attempts of the step and 2 delays between them, plus the other steps)
            started = time.monotonic()
            remote = client.send('把遥控器拿给我', 'remote-1')
            end = recorder.wait_for_end(remote, timeout=30)
            elapsed = time.monotonic() - started
            assert (end['status'], end['code'], end['unmet']) == (
                'FAILURE', 'step_failed', 'held(遥控器)')
            assert end['reason'] == ('simulated failure of 拿起物体 遥控器 (simulation.fail) '
                                     '(attempt 3 of 3)')
            assert end['tried'] == [{'action': '拿起物体', 'target': '遥控器', 'location': '',
                                     'attempts': 3, 'achieves': ''}]
            assert elapsed < 4 * duration + 2 * delay + 5.0  # + planning and ticks
            # a dropped object is found and picked again before it is handed over
            bring = client.send('把水拿给我', 'bring-2')
            assert recorder.wait_for_end(bring)['status'] == 'SUCCESS'
            with recorder._lock:
                messages = [m for m in recorder.messages if m['plan_id'] == bring]
            assert [m['changed'] for m in messages if m['changed']] == [
                ['not held(水)'], ['not found(水)']]
            assert [(m['step'], m['recovery']['action'], m['status']) for m in messages
                    if m['recovery']] == [(3, '寻找物体', 'RUNNING'), (3, '寻找物体', 'SUCCESS'),
                                          (3, '拿起物体', 'RUNNING'), (3, '拿起物体', 'SUCCESS')]
            assert messages[-1]['state']['held'] == [] and recorder.errors == []
            assert _stop(executor, planner) == [0, 0]
        finally:
            executor.kill()
            planner.kill()


def test_a_new_plan_preempts_the_running_one(server, tmp_path):
    with ros_domain() as domain:
        recorder = ExecutionRecorder(domain.node, '/plan_execution')
        client = domain.client()
        planner, executor = _start(domain, server, tmp_path, executor_parameters={
            'execution.policy': 'preempt', 'simulation.step_duration_s': 1.5})
        try:
            assert client.wait_for_planner(30), planner.stderr()[-3000:]
            _wait_for_executor(domain, executor, client, recorder)
            first = client.send('把水拿给我', 'long-1')
            recorder.wait_for(first, 0, 'RUNNING')
            second = client.send('去客厅', 'short-1')
            end = recorder.wait_for_end(second)
            assert end['status'] == 'SUCCESS'
            reason = 'preempted by plan short-1'
            assert recorder.of(first)[-2:] == [(0, 'FAILURE', 'preempted', reason),
                                               (None, 'FAILURE', 'preempted', reason)]
            assert recorder.of(second) == [(None, 'RUNNING', '', ''), (0, 'RUNNING', '', ''),
                                           (0, 'SUCCESS', '', ''), (None, 'SUCCESS', '', '')]
            # a plan running at shutdown is reported stopped
            third = client.send('把水拿给我', 'long-2')
            recorder.wait_for(third, 0, 'RUNNING')
            assert _stop(executor) == [0]
            assert recorder.wait_for_end(third, 10)['code'] == 'shutting_down'
            assert recorder.errors == []
            _stop(planner)
        finally:
            executor.kill()
            planner.kill()


def test_invalid_parameters_answer_every_plan_with_the_reason(server, tmp_path):
    with ros_domain() as domain:
        recorder = ExecutionRecorder(domain.node, '/plan_execution')
        client = domain.client()
        planner, executor = _start(domain, server, tmp_path, executor_parameters={
            'behaviours.skills': '移动到=no_such_robot_package.nav:go',
            'execution.policy': 'lifo', 'topics.execution': 'bad topic!'})
        try:
            assert client.wait_for_planner(30), planner.stderr()[-3000:]
            _wait_for_executor(domain, executor, client, recorder)
            plan_id = client.send('去客厅', 'bad-1')
            end = recorder.wait_for_end(plan_id)
            assert (end['status'], end['code']) == ('FAILURE', 'invalid_parameters')
            # the bad topic name falls back to the default, plan_execution, and is reported
            assert end['reason'].startswith(
                'invalid parameters: execution.policy must be one of queue, preempt, got '
                "'lifo'; topics.execution 'bad topic!' is not a valid topic name (")
            assert end['reason'].endswith(
                "); using 'plan_execution'; behaviour factory no_such_robot_package.nav:go: "
                'cannot import no_such_robot_package.nav (ModuleNotFoundError: No module named '
                "'no_such_robot_package')")
            assert executor.alive() and 'invalid parameters' in executor.stderr()
            assert _stop(executor, planner) == [0, 0]
        finally:
            executor.kill()
            planner.kill()
