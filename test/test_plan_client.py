"""
plan_client: the installed executable against a planner_node, its output and exit codes.

The node runs the openai backend against a fake server that answers an executable plan, an
unusable text or an HTTP error depending on the command, so every exit code is reachable.
"""

import json
import os
import subprocess
import sys
import time

from doubles import fake_server_parameters, FakeOpenAIServer
from planner_harness import executable, NodeProcess, ros_domain, schema_validator
import pytest
from robot_llm_planner.core.answer_text import format_answer, format_table
from robot_llm_planner.ros import plan_client
from robot_llm_planner.ros.client import PlanClient
from std_msgs.msg import String

GARBAGE = '胡说八道'
BROKEN = '坏掉的命令'


# ---------------------------------------------------------------------- ROS-free
def test_table_aligns_chinese_text():
    lines = format_table([['#', 'action', 'target'], ['1', '寻找物体', '水'],
                          ['2', 'go', '红色的杯子']])
    assert lines[0] == '#  action    target'
    assert lines[1] == '1  寻找物体  水'
    assert lines[2] == '2  go        红色的杯子'


def test_format_answer_shows_steps_errors_and_latency():
    answer = {'id': 'x', 'command': '帮我拿一瓶水。', 'status': 'invalid', 'raw_output': 'abc',
              'steps': [{'index': 0, 'description': '找水', 'action': '飞', 'target': '水',
                         'location': '厨房'}],
              'errors': [{'code': 'unknown_action', 'message': '飞 is not a skill', 'step': 0}],
              'timing': {'total_ms': 12.4, 'queue_ms': 2.0, 'inference_ms': 10.0,
                         'tokens_generated': 7}}
    text = format_answer(answer)
    assert text.splitlines()[0] == '帮我拿一瓶水。  [id x]'
    assert 'status: invalid   latency: 12 ms (queue 2 ms, inference 10 ms, 7 tokens)' in text
    assert '1  飞      水      厨房      找水' in text
    assert '  - unknown_action (step 1): 飞 is not a skill' in text
    assert 'model output: abc' in text
    assert 'confidence' not in text  # none given (a server without log-probabilities)
    text = format_answer(dict(answer, confidence=0.4271))
    assert 'latency: 12 ms (queue 2 ms, inference 10 ms, 7 tokens)   confidence: 0.43' in text
    scored = dict(answer, steps=[dict(answer['steps'][0], confidence=0.4271)])
    assert ['1', '飞', '水', '厨房', '找水', '0.43'] in [
        line.split() for line in format_answer(scored).splitlines()]


def test_exit_codes_are_distinct_and_documented():
    codes = [plan_client.EXIT_OK, plan_client.EXIT_INVALID, plan_client.EXIT_USAGE,
             plan_client.EXIT_ERROR, plan_client.EXIT_REJECTED, plan_client.EXIT_TIMEOUT,
             plan_client.EXIT_NO_PLANNER]
    assert codes == list(range(7))
    assert '0 every plan ok, 1 a plan is\ninvalid, 2 usage error, 3' in plan_client.__doc__


class _FakeNode:
    def create_subscription(self, *args):
        return None

    def create_publisher(self, *args):
        class Publisher:
            def publish(self, msg):
                pass
        return Publisher()


def _deliver(client, request_id, stamp, command='去客厅'):
    client._on_plan(String(data=json.dumps({'id': request_id, 'stamp': stamp,
                                            'command': command})))


def test_client_keeps_only_fresh_answers_to_its_own_ids():
    client = PlanClient(_FakeNode())
    now = time.time()
    _deliver(client, 'reused', now - 5, 'old')  # history from an earlier run, before sending
    _deliver(client, 'other', now)              # another client's answer
    assert client.answers('reused') == [] and len(client.received()) == 2
    client.send('new', 'reused')
    _deliver(client, 'reused', now - 5, 'old')   # the old one again, delivered late
    _deliver(client, 'reused', now - 600, 'ancient')  # long before we sent: not ours
    assert client.answers('reused') == []
    _deliver(client, 'reused', time.time(), 'new')
    assert [a['command'] for a in client.answers('reused')] == ['new']
    assert client.wait_for_answers(['reused'], 0.1)['reused']['command'] == 'new'


# ---------------------------------------------------------------------- over ROS
@pytest.fixture(scope='module')
def planner(tmp_path_factory):
    """Start a planner_node on a fake server; yield the ROS domain."""
    server = FakeOpenAIServer()
    server.answers[GARBAGE] = 'this is not a plan'
    server.answers[BROKEN] = 400
    with ros_domain() as domain:
        node = NodeProcess(domain, tmp_path_factory.mktemp('client_node'),
                           fake_server_parameters(server))
        try:
            yield domain
        finally:
            node.kill()
            server.close()


def _run(domain, *args, timeout=60, module=False):
    command = ([sys.executable, '-m', 'robot_llm_planner.ros.plan_client'] if module
               else [executable('plan_client')])
    return subprocess.run(command + list(args), env=domain.env, capture_output=True,
                          text=True, timeout=timeout)


def test_ok_plan_is_printed_as_a_table(planner):
    result = _run(planner, '帮我拿一瓶水。', '--id', 'table-1')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == '帮我拿一瓶水。  [id table-1]'
    assert lines[1].startswith('status: ok   latency: ')
    assert lines[2].split() == ['#', 'action', 'target', 'location', 'description']
    assert lines[3].split() == ['1', '寻找物体', '一瓶水', '寻找一瓶水']
    assert lines[4].split() == ['2', '拿起物体', '一瓶水', '拿起一瓶水']


def test_json_output_is_the_action_plan_message(planner):
    result = _run(planner, '去客厅', '--id', 'json-1', '--json')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    answer = json.loads(lines[0])
    schema_validator().validate(answer)
    assert (answer['id'], answer['command'], answer['status']) == ('json-1', '去客厅', 'ok')


@pytest.mark.parametrize('command,code', [(GARBAGE, 1), (BROKEN, 3), ('  ', 4)],
                         ids=['invalid', 'error', 'rejected'])
def test_exit_code_follows_the_status(planner, command, code):
    result = _run(planner, command, '--json')
    assert result.returncode == code, result.stdout + result.stderr
    status = json.loads(result.stdout)['status']
    assert status == {1: 'invalid', 3: 'error', 4: 'rejected'}[code]


def test_several_commands_get_numbered_ids_and_the_worst_exit_code(planner):
    result = _run(planner, '帮我拿一瓶水。', GARBAGE, '打开冰箱门', '--id', 'multi', '--json',
                  module=True)
    assert result.returncode == 1, result.stderr
    answers = {a['id']: a for a in map(json.loads, result.stdout.splitlines())}
    assert sorted(answers) == ['multi-1', 'multi-2', 'multi-3']
    assert [answers['multi-%d' % n]['status'] for n in (1, 2, 3)] == ['ok', 'invalid', 'ok']
    assert answers['multi-3']['command'] == '打开冰箱门'


def test_concurrent_clients_only_take_their_own_answers(planner):
    processes = [subprocess.Popen(
        [executable('plan_client'), '去客厅', '--id', 'mine-%d' % n, '--json'],
        env=planner.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(2)]
    for n, process in enumerate(processes):
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert [json.loads(line)['id'] for line in out.splitlines()] == ['mine-%d' % n]


def test_timeout_when_nobody_answers(planner):
    # a subscriber that never answers: the client connects, then times out
    silent = planner.node.create_subscription(String, '/silent/command', lambda msg: None, 10)
    publisher = planner.node.create_publisher(String, '/silent/action_plan', 10)
    try:
        result = _run(planner, '去客厅', '--timeout', '3', '--topic-command', '/silent/command',
                      '--topic-plan', '/silent/action_plan')
    finally:
        planner.node.destroy_subscription(silent)
        planner.node.destroy_publisher(publisher)
    assert result.returncode == 5, result.stdout + result.stderr
    assert 'no answer to' in result.stderr and '(去客厅) within 3 s' in result.stderr


def test_no_planner_on_the_topic(planner):
    result = _run(planner, '去客厅', '--timeout', '1', '--topic-command', '/nobody/command',
                  '--topic-plan', '/nobody/action_plan')
    assert result.returncode == 6
    assert 'no planner_node subscribes to /nobody/command' in result.stderr


def test_usage_error(planner):
    result = _run(planner)
    assert result.returncode == 2 and 'usage: plan_client' in result.stderr


@pytest.mark.parametrize('args,says', [
    (['--timeout', '-5'], 'must be a positive number of seconds'),
    (['--topic-command', 'bad topic'], 'InvalidTopicNameException'),
    (['--ros-args', '-r'], 'ROS arguments'),
], ids=['negative-timeout', 'bad-topic-name', 'bad-ros-args'])
def test_bad_arguments_are_usage_errors_not_plan_statuses(planner, args, says):
    result = _run(planner, '去客厅', *args, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and 'Traceback' not in result.stderr


def test_help_documents_the_exit_codes():
    env = dict(os.environ)
    result = subprocess.run([sys.executable, '-m', 'robot_llm_planner.ros.plan_client', '--help'],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert '0 ok, 1 invalid, 2 usage, 3 error, 4 rejected, 5 timeout' in result.stdout
