"""
planner_node over real ROS 2: the built executable in a subprocess, talked to with rclpy.

One node with the tiny model + adapter serves the first tests of this module; the queue,
failure and shutdown tests start their own nodes on the openai backend against a fake server
(no torch import, so they start in about a second) on their own ROS_DOMAIN_ID. The ROS-free
parameter table is checked at the top without rclpy.
"""

import dataclasses
import json
import math
import os
import re
import signal
import threading
import time

from doubles import fake_server_parameters
from helpers import codes, wait_until
from planner_harness import (assert_exactly_one_answer, flat_parameters, NodeProcess, ros_domain,
                             schema_validator, wait_for_answers)
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from robot_llm_planner.core.executor_parameters import EXECUTOR_PARAMETERS, ExecutorConfig
from robot_llm_planner.core.parameter_text import cli_option, markdown_table, parse_text
from robot_llm_planner.core.parameters import (check_value, default_value, load_config, NodeConfig,
                                               PARAMETERS, PARAMETERS_BY_NAME,
                                               settings_fields_without_parameter)
from robot_llm_planner.core.settings import PlannerSettings
from std_msgs.msg import String
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------- ROS-free
def test_every_planner_setting_is_a_parameter():
    assert settings_fields_without_parameter() == []
    defaults = PlannerSettings()
    for parameter in PARAMETERS:
        if parameter.field:
            assert default_value(parameter) == getattr(defaults, parameter.field), parameter.name


def test_planner_yaml_has_every_parameter_with_its_default():
    with open(os.path.join(ROOT, 'config', 'planner.yaml'), encoding='utf-8') as stream:
        text = stream.read()
    values = flat_parameters(yaml.safe_load(text)['/**']['ros__parameters'])
    assert sorted(values) == sorted(PARAMETERS_BY_NAME)
    for name, value in values.items():
        assert value == default_value(PARAMETERS_BY_NAME[name]), (
            'config/planner.yaml sets %s to %r but the node default is %r'
            % (name, value, default_value(PARAMETERS_BY_NAME[name])))
    for line in text.splitlines():  # every value line is commented (or under a comment)
        if re.match(r'\s+\w+: \S', line) and 'system:' not in line:
            assert '#' in line, line


def test_docs_parameter_reference_is_generated_from_the_table():
    with open(os.path.join(ROOT, 'docs', 'parameters.md'), encoding='utf-8') as stream:
        assert stream.read() == markdown_table(), (
            'docs/parameters.md differs from the parameter table: run '
            '`python3 -m robot_llm_planner.cli parameters > docs/parameters.md`')
    for name in PARAMETERS_BY_NAME:
        assert '| `%s` |' % name in markdown_table(), name


def test_cli_options_are_the_settings_parameters_with_the_same_checks():
    from robot_llm_planner.cli.commands import build_parser, settings_from_args
    options = [cli_option(p) for p in PARAMETERS if p.field]
    assert len(set(options)) == len(options) and all(options)
    assert not any(cli_option(p) for p in PARAMETERS if not p.field)
    # a value the node refuses the command line refuses too, and the other way round
    parser = build_parser()
    cases = (('model.max_prompt_tokens', '7', '0'), ('model.device', 'cuda:1', 'gpu'),
             ('remote.timeout_s', '0.5', 'inf'), ('queue.max_command_chars', '3', '-1'))
    for name, good, bad in cases:
        parameter = PARAMETERS_BY_NAME[name]
        args = parser.parse_args(['plan', cli_option(parameter), good, 'x'])
        assert getattr(settings_from_args(args), parameter.field) == parse_text(parameter, good)
        assert check_value(parameter, parse_text(parameter, good))[1] is None
        with pytest.raises(SystemExit):
            parser.parse_args(['plan', cli_option(parameter), bad, 'x'])
    assert settings_from_args(parser.parse_args(['plan', 'x'])) == PlannerSettings()


def test_defaults_are_valid():
    config, errors = load_config({})
    assert errors == []
    assert (config.command_topic, config.plan_topic) == ('command', 'action_plan')
    assert (config.queue_policy, config.queue_max_size, config.queue_max_batch) == ('fifo', 16, 1)


def test_the_node_config_is_built_from_the_table_alone():
    # every parameter fills a PlannerSettings field or a NodeConfig attribute, never both
    assert all((p.field is None) != (p.config_field is None) for p in PARAMETERS)
    attributes = {f.name for f in dataclasses.fields(NodeConfig)} - {'settings'}
    assert attributes == {p.config_field for p in PARAMETERS if p.config_field}
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(NodeConfig))
    # and every executor parameter an ExecutorConfig attribute: plan_executor's config too
    assert all(p.field is None and p.config_field for p in EXECUTOR_PARAMETERS)
    attributes = {f.name for f in dataclasses.fields(ExecutorConfig)}
    assert attributes == {p.config_field for p in EXECUTOR_PARAMETERS}
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(ExecutorConfig))


@pytest.mark.parametrize('name,value,error', [
    ('model.backend', 'vllm', "model.backend must be one of transformers, openai, got 'vllm'"),
    ('queue.max_size', -1, 'queue.max_size must be >= 1, got -1'),
    ('queue.max_batch', 0, 'queue.max_batch must be >= 1, got 0'),
    ('cache.size', -5, 'cache.size must be >= 0, got -5'),
    ('queue.policy', 'lifo', "queue.policy must be one of fifo, latest, got 'lifo'"),
    ('generation.max_new_tokens', 'many', "must be an integer, got a string ('many')"),
    ('generation.do_sample', 1, 'generation.do_sample must be true or false, got an integer'),
    ('remote.timeout_s', 0, 'remote.timeout_s must be > 0, got 0.0'),
    ('remote.timeout_s', float('inf'), 'remote.timeout_s must be a finite number, got inf'),
    ('validation.min_confidence', 1.5, 'validation.min_confidence must be <= 1, got 1.5'),
    ('validation.min_confidence', float('nan'), 'must be a finite number, got nan'),
    ('model.device', 'gpu', "model.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ('model.dtype', 'fp8', 'model.dtype must be one of auto, bfloat16, float16, float32'),
    ('topics.plan', ' ', 'topics.plan must not be empty'),
    ('qos.plan_depth', 0, 'qos.plan_depth must be >= 1'),
    ('remote.grammar_field', 'structured_output', 'remote.grammar_field must be one of '
     "structured_outputs, guided_grammar, none, got 'structured_output'"),
])
def test_invalid_values_are_reported_and_replaced_by_the_default(name, value, error):
    config, errors = load_config({name: value})
    assert len(errors) == 1 and error in errors[0]
    assert load_config({})[0] == config


def test_values_are_converted():
    assert check_value(PARAMETERS_BY_NAME['remote.timeout_s'], 5) == (5.0, None)
    assert check_value(PARAMETERS_BY_NAME['remote.model'], 7) == ('7', None)
    assert check_value(PARAMETERS_BY_NAME['model.device'], 'cuda:1') == ('cuda:1', None)


# ---------------------------------------------------------------------- the tiny model
@pytest.fixture(scope='module')
def tiny(tiny_model, tiny_adapter, tmp_path_factory):
    """Start planner_node with the tiny model + adapter; yield (domain, node, status)."""
    with ros_domain() as domain:
        status = domain.status()  # before the node starts: sees `loading`
        client = domain.client()
        node = NodeProcess(
            domain, tmp_path_factory.mktemp('tiny_node'),
            {'model.path': tiny_model, 'model.device': 'cpu', 'generation.fast_path': 'off',
             'generation.constrained': False, 'generation.max_new_tokens': 48},
            overrides=[('model.adapter_path', tiny_adapter), ('queue.max_size', 8)])
        try:
            yield domain, node, status, client
        finally:
            node.kill()


def test_status_goes_from_loading_to_ready(tiny, tiny_model, tiny_adapter):
    _, node, status, _ = tiny
    ready = status.wait_for(lambda s: s['state'] != 'loading', timeout=120)
    assert ready['state'] == 'ready', node.stderr()[-3000:]
    assert status.states()[:2] == ['loading', 'ready']
    assert ready['model'] == {'backend': 'transformers', 'base': tiny_model,
                              'adapter': tiny_adapter}
    assert ready['queue_depth'] == 0 and ready['error'] == ''
    assert ready['queue_max_size'] == 8 and ready['queue_policy'] == 'fifo'
    assert ready['node'] == '/planner_node'


def test_plain_and_json_commands_get_one_schema_valid_answer_each(tiny):
    _, _, status, client = tiny
    status.wait_for(lambda s: s['state'] == 'ready', timeout=120)
    validator = schema_validator()
    plain = '帮我拿一瓶水。'
    client.send_raw(plain)
    ids = [client.send('去客厅', 'bt-1'), client.send('打开冰箱门', 'bt-2')]
    answers = wait_for_answers(client, ids)
    wait_until(lambda: any(answer['command'] == plain for answer in client.received()), 30,
               failure=None)
    assigned = [answer for answer in client.received() if answer['command'] == plain]
    assert len(assigned) == 1
    assert re.fullmatch(r'planner_node-[0-9a-f]{6}-\d+', assigned[0]['id'])
    assert_exactly_one_answer(client, ids + [assigned[0]['id']])
    for answer in list(answers.values()) + assigned:
        validator.validate(answer)
        # random weights: the model answers, but not with this robot's skills
        assert answer['status'] == 'invalid' and answer['steps'] and answer['errors']
        assert answer['timing']['inference_ms'] > 0
        assert answer['model']['backend'] == 'transformers'
    assert answers['bt-1']['command'] == '去客厅'
    assert answers['bt-2']['command'] == '打开冰箱门'


def test_busy_while_planning_then_ready_again(tiny):
    _, _, status, client = tiny
    before = status.wait_for(lambda s: s['state'] == 'ready', timeout=120)
    seen = len(status.messages)
    request_id = client.send('把红色的杯子放到厨房的桌子上', 'busy-1')
    wait_for_answers(client, [request_id])
    after = status.wait_for(lambda s: s['state'] == 'ready' and s['answered'] > before['answered'])
    states = [message['state'] for message in status.messages[seen:]]
    assert 'busy' in states and states[-1] == 'ready'
    assert after['last_latency_ms'] > 0 and after['counts']['invalid'] >= 1


def test_the_status_is_republished_every_second(tiny):
    _, _, status, _ = tiny
    status.wait_for(lambda s: s['state'] == 'ready', timeout=120)
    count = len(status.messages)
    time.sleep(2.5)
    assert len(status.messages) - count >= 2


@pytest.mark.parametrize('data,code,request_id', [
    ('{"id": "m1", "text": 5}', 'invalid_request', 'm1'),
    ('{"id": "m2"}', 'invalid_request', 'm2'),
    ('{"id": "m3", "text": ', 'invalid_json', 'm3'),
    ('{"id": 4, "text": "去客厅"}', 'invalid_request', '4'),
    ('{"id": "m5", "text": "   "}', 'empty_command', 'm5'),
    ('{"id": "m6", "text": "%s"}' % ('水' * 300), 'command_too_long', 'm6'),
    ('{"id": "m7", "text": ' + '[' * 5000, 'invalid_json', 'm7'),  # deeper than json can go
])
def test_malformed_and_unplannable_commands_are_rejected(tiny, data, code, request_id):
    _, _, status, client = tiny
    status.wait_for(lambda s: s['state'] == 'ready', timeout=120)
    client.send_raw(data, request_id)
    answer = wait_for_answers(client, [request_id])[request_id]
    schema_validator().validate(answer)
    assert answer['status'] == 'rejected'
    assert codes(answer) == [code]
    assert answer['errors'][0]['message']


def test_garbage_without_an_id_is_answered_with_an_assigned_one(tiny):
    _, _, status, client = tiny
    status.wait_for(lambda s: s['state'] == 'ready', timeout=120)
    client.send_raw('[1, 2, 3]')
    found = wait_until(lambda: [answer for answer in client.received()
                                if answer['command'] == '[1, 2, 3]'], 30, failure=None)
    assert len(found) == 1 and found[0]['status'] == 'rejected'
    assert found[0]['id'].startswith('planner_node-')


def test_late_subscribers_get_old_answers_only_if_transient_local(tiny):
    domain, _, status, client = tiny
    status.wait_for(lambda s: s['state'] == 'ready', timeout=120)
    request_id = client.send('去客厅', 'history-1')
    wait_for_answers(client, [request_id])
    got = {'volatile': [], 'transient_local': []}
    subscriptions = [domain.node.create_subscription(
        String, '/action_plan', lambda msg, kind=kind: got[kind].append(json.loads(msg.data)),
        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                   durability=getattr(DurabilityPolicy, kind.upper())))
        for kind in got]
    try:
        wait_until(lambda: got['transient_local'], 10, failure=None)
        time.sleep(1.0)
        assert 'history-1' in [answer['id'] for answer in got['transient_local']]
        assert got['volatile'] == []  # a behavior tree is never handed old plans
    finally:
        for subscription in subscriptions:
            domain.node.destroy_subscription(subscription)


def test_sigint_stops_the_node_cleanly(tiny):
    _, node, _, _ = tiny
    assert node.alive()
    assert node.stop(signal.SIGINT) == 0
    stderr = node.stderr()
    assert 'Traceback' not in stderr and 'shutting down' in stderr


# ---------------------------------------------------------------------- own nodes
def _start(ros, tmp_path, parameters, overrides=()):
    status = ros.status()
    client = ros.client()
    node = NodeProcess(ros, tmp_path, parameters, overrides)
    return node, status, client


def _wait_connected(client, timeout=60):
    assert client.wait_for_planner(timeout), 'planner_node did not connect'


def test_bad_model_path_gives_status_error_and_answers_every_command(ros, tmp_path):
    missing = str(tmp_path / 'no_such_model')
    node, status, client = _start(ros, tmp_path / 'node', {'model.path': missing,
                                                           'generation.constrained': False})
    try:
        _wait_connected(client)
        early = [client.send('帮我拿一瓶水。', 'early-%d' % n) for n in range(3)]
        failed = status.wait_for(lambda s: s['state'] == 'error')
        assert 'model directory %s does not exist' % missing in failed['error']
        late = [client.send('去客厅', 'late-1')]
        client.send_raw('打开冰箱门')
        answers = wait_for_answers(client, early + late)
        assert_exactly_one_answer(client, early + late)
        validator = schema_validator()
        for answer in answers.values():
            validator.validate(answer)
            assert answer['status'] == 'error'
            assert answer['errors'][0]['code'] == 'model_load_failed'
            assert missing in answer['errors'][0]['message']
        plain = wait_until(lambda: [a for a in client.received() if a['command'] == '打开冰箱门'],
                           10, failure=None)
        assert len(plain) == 1 and plain[0]['status'] == 'error'
        time.sleep(1.5)
        assert node.alive(), node.stderr()[-3000:]
        assert status.latest()['state'] == 'error'
        assert node.stop(signal.SIGTERM) == 0
        assert 'Traceback' not in node.stderr()
    finally:
        node.kill()


def test_invalid_parameters_give_status_error_with_every_reason(ros, tmp_path):
    node, status, client = _start(
        ros, tmp_path, {'model.backend': 'tensorrt', 'queue.policy': 'random',
                        'generation.constrained': False},
        overrides=[('queue.max_size', -2), ('cache.size', -1),
                   ('generation.max_new_tokens', 'lots'), ('topics.plan', 'bad topic!')])
    try:
        failed = status.wait_for(lambda s: s['state'] == 'error')
        for reason in ("model.backend must be one of transformers, openai, got 'tensorrt'",
                       "queue.policy must be one of fifo, latest, got 'random'",
                       'queue.max_size must be >= 1, got -2', 'cache.size must be >= 0',
                       'generation.max_new_tokens must be an integer',
                       "topics.plan 'bad topic!' is not a valid topic name"):
            assert reason in failed['error']
        _wait_connected(client)
        request_id = client.send('帮我拿一瓶水。')
        long_id = client.send('打开\n冰箱\t门' + '水' * 300)
        answers = wait_for_answers(client, [request_id, long_id])
        for answer in answers.values():
            assert answer['status'] == 'error'
            assert answer['errors'][0]['code'] == 'invalid_parameters'
            assert 'tensorrt' in answer['errors'][0]['message']
        # echoed as every answer echoes a command: cleaned and cut (queue.max_command_chars)
        assert answers[long_id]['command'] == '打开 冰箱 门' + '水' * 249 + '…'
        assert node.alive()
        assert node.stop(signal.SIGTERM) == 0
        assert 'Traceback' not in node.stderr()
    finally:
        node.kill()


def _hold_one_in_flight(server, client, status):
    """Send a command the fake server holds; return its id once it is being planned."""
    status.wait_for(lambda s: s['state'] == 'ready')
    server.gate.clear()
    _wait_connected(client)
    first = client.send('帮我拿一瓶水。', 'c1')
    server.wait_for_requests(1)
    status.wait_for(lambda s: s['state'] == 'busy' and s['in_flight'] == 1)
    return first


def test_fifo_queue_rejects_new_commands_when_full(ros, tmp_path, server):
    node, status, client = _start(ros, tmp_path, fake_server_parameters(
        server, **{'queue.max_size': 2, 'queue.policy': 'fifo'}))
    try:
        ids = [_hold_one_in_flight(server, client, status)]
        ids += [client.send('去\t客厅', 'c%d' % n) for n in range(2, 6)]
        rejected = wait_for_answers(client, ['c4', 'c5'])
        for answer in rejected.values():
            assert answer['status'] == 'rejected'
            assert answer['errors'][0]['code'] == 'queue_full'
            assert answer['command'] == '去 客厅'  # cleaned, like the planned ones
        assert status.wait_for(lambda s: s['queue_depth'] == 2)['state'] == 'busy'
        server.gate.set()
        answers = wait_for_answers(client, ids)
        assert [answers[i]['status'] for i in ids] == ['ok', 'ok', 'ok', 'rejected', 'rejected']
        assert_exactly_one_answer(client, ids)
        final = status.wait_for(lambda s: s['state'] == 'ready')
        assert final['counts'] == {'ok': 3, 'invalid': 0, 'error': 0, 'rejected': 2}
        assert final['answered'] == 5 and final['rejected'] == 2
        validator = schema_validator()
        for answer in answers.values():
            validator.validate(answer)
        assert answers['c1']['steps'][1]['action'] == '拿起物体'
    finally:
        node.kill()


def test_no_task_and_made_up_arguments_are_answered_with_their_codes(ros, tmp_path, server):
    server.answers['今天天气怎么样？'] = '无法执行'
    # the node's default: a plan's targets and locations must appear in the command
    node, status, client = _start(ros, tmp_path, fake_server_parameters(
        server, **{'validation.grounded_arguments': True}))
    try:
        _wait_connected(client)
        ids = [client.send('今天天气怎么样？', 'n1'), client.send('帮我拿一瓶水。', 'n2'),
               client.send('去客厅', 'n3')]  # answered with OK_PLAN: 一瓶水 is not in it
        answers = wait_for_answers(client, ids)
        refused = answers['n1']
        assert refused['status'] == 'rejected' and refused['steps'] == []
        assert codes(refused) == ['not_a_task']
        assert refused['raw_output'] == '无法执行' and refused['timing']['inference_ms'] > 0
        assert answers['n2']['status'] == 'ok' and answers['n2']['errors'] == []
        made_up = answers['n3']
        assert made_up['status'] == 'invalid' and len(made_up['steps']) == 2
        assert [(e['code'], e['step']) for e in made_up['errors']] == \
            [('argument_not_in_command', 0), ('argument_not_in_command', 1)]
        assert "target '一瓶水'" in made_up['errors'][0]['message']
        for answer in answers.values():
            schema_validator().validate(answer)
        final = status.wait_for(lambda s: s['answered'] == 3)
        assert final['counts'] == {'ok': 1, 'invalid': 1, 'error': 0, 'rejected': 1}
    finally:
        node.kill()


def test_plans_carry_their_confidence_and_unsure_ones_are_invalid(ros, tmp_path, server):
    server.logprobs['帮我拿一瓶水。'] = [-0.01, math.log(0.9), -0.05]
    server.logprobs['帮我拿一瓶水吧'] = [-0.01, math.log(0.2)]
    node, status, client = _start(ros, tmp_path, fake_server_parameters(
        server, **{'validation.min_confidence': 0.5}))
    try:
        _wait_connected(client)
        ids = [client.send('帮我拿一瓶水。', 'c1'), client.send('帮我拿一瓶水吧', 'c2'),
               client.send('帮我拿一瓶水', 'c3')]  # no log-probabilities in its reply
        answers = wait_for_answers(client, ids)
        assert answers['c1']['status'] == 'ok' and answers['c1']['confidence'] == 0.9, answers
        unsure = answers['c2']
        assert unsure['status'] == 'invalid' and unsure['confidence'] == 0.2
        assert codes(unsure) == ['low_confidence']
        assert len(unsure['steps']) == 2  # kept, so a behavior tree can ask to confirm it
        assert answers['c3']['status'] == 'ok' and answers['c3']['confidence'] is None
        assert all(body['logprobs'] is True for body in server.bodies)
        for answer in answers.values():
            schema_validator().validate(answer)
    finally:
        node.kill()


def test_prompt_system_and_instruction_reach_the_model(ros, tmp_path, server):
    system = '你是家用机器人的任务规划器。'
    node, status, client = _start(ros, tmp_path, fake_server_parameters(
        server, **{'prompt.system': system, 'prompt.instruction': '请规划'}))
    try:
        status.wait_for(lambda s: s['state'] == 'ready')
        _wait_connected(client)
        request_id = client.send('去客厅', 'p1')
        answer = wait_for_answers(client, [request_id])[request_id]
        assert answer['status'] == 'ok'
        assert len(server.bodies) == 1
        # the alpaca query: instruction and command joined by a newline (prompt.join_query)
        assert server.bodies[-1]['messages'] == [{'role': 'system', 'content': system},
                                                 {'role': 'user', 'content': '请规划\n去客厅'}]
    finally:
        node.kill()


FLY_PLAN = '飞到阳台。飞，阳台'


def _skills_with_fly(path):
    """Write config/skills.yaml plus the action 飞 (one target) to ``path``; return it."""
    with open(os.path.join(ROOT, 'config', 'skills.yaml'), encoding='utf-8') as stream:
        skills = yaml.safe_load(stream)
    skills['skills']['飞'] = {'description': 'Fly to a place.', 'required': ['target'],
                             'optional': []}
    with open(path, 'w', encoding='utf-8') as stream:
        yaml.safe_dump(skills, stream, allow_unicode=True)
    return str(path)


@pytest.mark.parametrize('custom', [True, False], ids=['skills-file-with-fly', 'default'])
def test_plans_are_checked_against_the_skills_file(ros, tmp_path, server, custom):
    server.answers['飞到阳台'] = FLY_PLAN
    extra = {'skills_file': _skills_with_fly(tmp_path / 'skills.yaml')} if custom else {}
    node, status, client = _start(ros, tmp_path / 'node', fake_server_parameters(server, **extra))
    try:
        status.wait_for(lambda s: s['state'] == 'ready')
        _wait_connected(client)
        request_id = client.send('飞到阳台', 'fly')
        answer = wait_for_answers(client, [request_id])[request_id]
        schema_validator().validate(answer)
        assert answer['raw_output'] == FLY_PLAN
        assert [(step['action'], step['target']) for step in answer['steps']] == [('飞', '阳台')]
        if custom:
            assert answer['status'] == 'ok' and answer['errors'] == []
        else:
            assert answer['status'] == 'invalid'
            assert [(e['code'], e['step']) for e in answer['errors']] == [('unknown_action', 0)]
            assert "'飞' is not a skill of this robot" in answer['errors'][0]['message']
    finally:
        node.kill()


def test_a_malformed_skills_file_gives_status_error_naming_it(ros, tmp_path, server):
    path = tmp_path / 'broken_skills.yaml'
    path.write_text('skills:\n  飞: [target\n', encoding='utf-8')
    node, status, client = _start(ros, tmp_path / 'node', fake_server_parameters(
        server, skills_file=str(path)))
    try:
        failed = status.wait_for(lambda s: s['state'] == 'error')
        assert 'cannot load the model: skills file %s is not valid YAML' % path \
            in failed['error']
        _wait_connected(client)
        request_id = client.send('去客厅', 'broken')
        answer = wait_for_answers(client, [request_id])[request_id]
        assert answer['status'] == 'error'
        assert answer['errors'][0]['code'] == 'model_load_failed'
        assert str(path) in answer['errors'][0]['message']
        assert server.requests == []  # nothing was planned
        assert node.alive(), node.stderr()[-3000:]
    finally:
        node.kill()


def _set_parameter(ros, name, value):
    client = ros.node.create_client(SetParameters, '/planner_node/set_parameters')
    assert client.wait_for_service(timeout_sec=30)
    if isinstance(value, str):
        parameter_value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    else:
        parameter_value = ParameterValue(type=ParameterType.PARAMETER_INTEGER,
                                         integer_value=value)
    future = client.call_async(SetParameters.Request(
        parameters=[ParameterMsg(name=name, value=parameter_value)]))
    wait_until(future.done, 30, failure=None)
    ros.node.destroy_client(client)
    return future.result().results[0]


def test_latest_queue_drops_the_oldest_waiting_command(ros, tmp_path, server):
    node, status, client = _start(ros, tmp_path, fake_server_parameters(
        server, **{'queue.max_size': 2}))
    try:
        status.wait_for(lambda s: s['state'] == 'ready')
        # queue.policy may change while the node runs; bad values and start-up-only
        # parameters are refused with a reason
        refused = _set_parameter(ros, 'queue.policy', 'lifo')
        assert not refused.successful and 'queue.policy must be one of' in refused.reason
        refused = _set_parameter(ros, 'model.path', '/elsewhere')
        assert not refused.successful and 'read-only' in refused.reason.lower()
        assert _set_parameter(ros, 'queue.policy', 'latest').successful
        status.wait_for(lambda s: s['queue_policy'] == 'latest')
        ids = [_hold_one_in_flight(server, client, status)]
        ids += [client.send('去客厅 %d' % n, 'c%d' % n) for n in range(2, 6)]
        dropped = wait_for_answers(client, ['c2', 'c3'])
        for answer in dropped.values():
            assert answer['status'] == 'rejected'
            assert answer['errors'][0]['code'] == 'superseded'
        server.gate.set()
        answers = wait_for_answers(client, ids)
        assert [answers[i]['status'] for i in ids] == ['ok', 'rejected', 'rejected', 'ok', 'ok']
        assert answers['c4']['command'] == '去客厅 4'
        assert_exactly_one_answer(client, ids)
    finally:
        node.kill()


def test_waiting_commands_are_planned_as_one_batch(ros, tmp_path, server):
    node, status, client = _start(ros, tmp_path, fake_server_parameters(
        server, **{'queue.max_batch': 3}))
    try:
        ids = [_hold_one_in_flight(server, client, status)]
        ids += [client.send('去客厅 %d' % n, 'c%d' % n) for n in range(2, 5)]
        status.wait_for(lambda s: s['queue_depth'] == 3)
        server.gate.set()
        answers = wait_for_answers(client, ids)
        batch = {answers[i]['timing']['inference_ms'] for i in ('c2', 'c3', 'c4')}
        assert len(batch) == 1  # one generate() call timed the three
        assert answers['c1']['timing']['inference_ms'] not in batch
        assert all(answers[i]['timing']['queue_ms'] > 0 for i in ('c2', 'c3', 'c4'))
    finally:
        node.kill()


def test_queue_max_batch_and_max_size_change_while_the_node_runs(ros, tmp_path, server):
    node, status, client = _start(ros, tmp_path, fake_server_parameters(server))
    try:
        ready = status.wait_for(lambda s: s['state'] == 'ready')
        assert ready['queue_max_size'] == 16  # the default, before the change
        assert _set_parameter(ros, 'queue.max_batch', 3).successful
        assert _set_parameter(ros, 'queue.max_size', 3).successful
        status.wait_for(lambda s: s['queue_max_size'] == 3)
        ids = [_hold_one_in_flight(server, client, status)]
        ids += [client.send('去客厅 %d' % n, 'c%d' % n) for n in range(2, 6)]
        full = wait_for_answers(client, ['c5'])['c5']  # the fourth waiting one
        assert full['status'] == 'rejected'
        assert codes(full) == ['queue_full']
        assert 'queue.max_size 3' in full['errors'][0]['message']
        assert status.wait_for(lambda s: s['queue_depth'] == 3)['queue_max_size'] == 3
        server.gate.set()
        answers = wait_for_answers(client, ids)
        assert [answers[i]['status'] for i in ids] == ['ok', 'ok', 'ok', 'ok', 'rejected']
        batch = {answers[i]['timing']['inference_ms'] for i in ('c2', 'c3', 'c4')}
        assert len(batch) == 1  # one generate() call timed the three
        assert answers['c1']['timing']['inference_ms'] not in batch
        assert sorted(server.requests[1:]) == ['去客厅 2', '去客厅 3', '去客厅 4']
        assert_exactly_one_answer(client, ids)
    finally:
        node.kill()


@pytest.mark.parametrize('signum,release', [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=['sigterm-stuck-generation', 'sigint-generation-finishes'])
def test_shutdown_answers_pending_commands_and_exits_0(ros, tmp_path, server, signum, release):
    node, status, client = _start(ros, tmp_path, fake_server_parameters(server))
    try:
        ids = [_hold_one_in_flight(server, client, status)]
        ids += [client.send('去客厅', 'c%d' % n) for n in range(2, 4)]
        status.wait_for(lambda s: s['queue_depth'] == 2)
        if release:
            threading.Timer(0.5, server.gate.set).start()
        else:  # a command that comes while the stuck generation has its grace period
            node.process.send_signal(signum)
            time.sleep(0.8)
            ids.append(client.send('打开冰箱门', 'late'))
        assert node.stop(signum) == 0
        answers = wait_for_answers(client, ids, timeout=10)
        for request_id in ids[1:]:  # c2, c3 (and late)
            assert answers[request_id]['status'] == 'rejected'
            assert answers[request_id]['errors'][0]['code'] == 'node_shutting_down'
        if release:  # the batch in progress finished within the grace period
            assert answers['c1']['status'] == 'ok'
        else:
            assert answers['c1']['status'] == 'rejected'
            assert answers['c1']['errors'][0]['code'] == 'node_shutting_down'
        assert_exactly_one_answer(client, ids)
        stderr = node.stderr()
        assert 'Traceback' not in stderr and 'shutting down' in stderr
    finally:
        node.kill()


def test_ctrl_c_in_a_terminal_signals_it_twice_and_it_still_exits_0(ros, tmp_path, server):
    # A terminal's Ctrl-C reaches launch and the node both: launch's SIGINT comes after the
    # node's own, possibly while Python is already exiting.
    node, status, client = _start(ros, tmp_path, fake_server_parameters(server))
    try:
        status.wait_for(lambda s: s['state'] == 'ready')

        def interrupted():
            node.process.send_signal(signal.SIGINT)  # nothing once it has exited
            return not node.alive()
        wait_until(interrupted, 30, 'planner_node did not exit on SIGINT')
        assert node.process.wait() == 0, node.stderr()[-3000:]
    finally:
        node.kill()
