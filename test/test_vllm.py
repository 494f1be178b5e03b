"""
The remote backend against a real vLLM server: the engine a fleet runs.

One server (the pinned CPU build, ``make vllm-env``) serves a tiny random-weight Qwen2 base
with two LoRA adapters, ``robot_a`` and ``robot_b`` (two robot types, one server), and wants an
API key. The local backend on the same weights, adapter merged, is the reference: the remote
plans must be the same text, and their plan and step confidences the same within 0.01. The
tests over ROS start the built planner_node against the server; the last of them stops and
restarts it (with another chat template) in the middle of a stream of commands.
"""

import json
import os
import subprocess
import sys
import threading
import time

from conftest import SAMPLE_COMMANDS, VLLM_API_KEY, VLLM_KEY_ENV
from helpers import claimed_ros_domain
from planner_harness import NodeProcess, schema_validator, wait_for_answers
import pytest
from robot_llm_planner.core.backend import RemoteError
from robot_llm_planner.core.settings import PlannerSettings
from robot_llm_planner.inference.build import build_planner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 0.01
PARITY_TOKENS = 96  # answers cut at this many tokens too: the cut must look the same


def _test_split_commands(count):
    path = os.path.join(ROOT, 'training', 'data', 'task2_prompt0_test.json')
    with open(path, encoding='utf-8') as stream:
        return [row['input'] for row in json.load(stream)[:count]]


COMMANDS = SAMPLE_COMMANDS + _test_split_commands(6)
# The grammar's checks are the subject; a random model's plans name nothing in the command.
CHECKS = {'preconditions': False, 'grounded_arguments': False, 'cache_size': 0}


def _local(vllm_model, adapter, max_new_tokens=PARITY_TOKENS):
    planner = build_planner(PlannerSettings(
        model_path=vllm_model.base, adapter_path=vllm_model.adapters[adapter], device='cpu',
        dtype='float32', max_new_tokens=max_new_tokens, **CHECKS))
    planner.load()
    return planner


def _remote(server, adapter, max_new_tokens=PARITY_TOKENS, **settings):
    planner = build_planner(PlannerSettings(
        backend='openai', remote_base_url=server.url, remote_model=adapter,
        remote_api_key_env=settings.pop('api_key_env', VLLM_KEY_ENV),
        max_new_tokens=max_new_tokens, **dict(CHECKS, **settings)))
    planner.load()
    return planner


def _assert_same_plans(local, remote, commands):
    """Check text, status and confidences; return the number of step confidences compared."""
    compared = 0
    for command in commands:
        mine, theirs = local.plan(command), remote.plan(command)
        assert theirs.plan.raw_output == mine.plan.raw_output, command
        assert theirs.status == mine.status, (command, theirs.errors)
        assert mine.confidence is not None and theirs.confidence is not None
        assert abs(theirs.confidence - mine.confidence) <= TOLERANCE, command
        for step, reference in zip(theirs.plan.steps, mine.plan.steps):
            assert reference.confidence is not None and step.confidence is not None, command
            assert abs(step.confidence - reference.confidence) <= TOLERANCE, command
            compared += 1
    return compared


@pytest.mark.slow
@pytest.mark.parametrize('adapter', ['robot_a', 'robot_b'])
def test_remote_plans_equal_the_local_backend_on_the_same_weights(
        vllm_server, vllm_model, vllm_key, adapter):
    remote = _remote(vllm_server, adapter)
    assert remote.backend.describe()['endpoint'] == 'completions'  # auto: vLLM has /tokenize
    steps = _assert_same_plans(_local(vllm_model, adapter), remote, COMMANDS)
    assert steps >= len(COMMANDS)


@pytest.mark.slow
def test_two_adapters_on_one_server_are_two_robot_types(vllm_server, vllm_key):
    robot_a, robot_b = _remote(vllm_server, 'robot_a'), _remote(vllm_server, 'robot_b')
    differ = [command for command in COMMANDS
              if robot_a.plan(command).plan.raw_output != robot_b.plan(command).plan.raw_output]
    assert len(differ) >= len(COMMANDS) // 2, differ


@pytest.mark.slow
def test_the_chat_endpoint_renders_the_training_prompt(vllm_server, vllm_model, vllm_key):
    chat = _remote(vllm_server, 'robot_a', remote_endpoint='chat')
    described = chat.backend.describe()
    assert described['endpoint'] == 'chat'
    assert described['prompt_check'].startswith('the chat template renders the training prompt')
    _assert_same_plans(_local(vllm_model, 'robot_a'), chat, COMMANDS[:4])


@pytest.mark.slow
def test_the_grammar_holds_on_a_random_model(vllm_server, vllm_key):
    """Every plan ends within the budget, parses and names only skills."""
    for adapter in ('robot_a', 'robot_b'):
        remote = _remote(vllm_server, adapter, max_new_tokens=1200)
        for command in SAMPLE_COMMANDS:
            result = remote.plan(command)
            assert result.status == 'ok', (adapter, command, result.errors)
            assert result.timing['tokens_generated'] <= 1200
            assert all(step.action in remote.skills.names() for step in result.plan.steps)


@pytest.mark.slow
def test_without_the_key_configure_fails_with_the_reason(vllm_server):
    with pytest.raises(RemoteError) as caught:
        _remote(vllm_server, 'robot_a', api_key_env='')
    assert 'HTTP 401' in str(caught.value) and 'remote.api_key_env' in str(caught.value)


def _node_parameters(server, **extra):
    parameters = {'model.backend': 'openai', 'remote.base_url': server.url,
                  'remote.model': 'robot_a', 'remote.api_key_env': VLLM_KEY_ENV,
                  'remote.retries': 0, 'remote.timeout_s': 30.0,
                  'generation.max_new_tokens': 48, 'validation.preconditions': False,
                  'validation.grounded_arguments': False, 'cache.size': 0}
    parameters.update(extra)
    return parameters


@pytest.mark.slow
def test_a_node_with_the_key_plans_and_one_without_fails_configure_and_nothing_leaks_it(
        ros, tmp_path, vllm_server, vllm_key):
    ros.env[VLLM_KEY_ENV] = VLLM_API_KEY
    status, client, diagnostics = ros.status(), ros.client(), ros.diagnostics()
    keyed = NodeProcess(ros, tmp_path / 'keyed', _node_parameters(vllm_server))
    try:
        assert client.wait_for_planner(60)
        ids = [client.send(command) for command in SAMPLE_COMMANDS[:3]]
        answers = wait_for_answers(client, ids)
        assert {answer['status'] for answer in answers.values()} <= {'ok', 'invalid'}
        for answer in answers.values():
            schema_validator().validate(answer)
            assert answer['model']['adapter'] == 'robot_a' and answer['confidence'] is not None
        assert keyed.stop() == 0
    finally:
        keyed.kill()
    ros.env.pop(VLLM_KEY_ENV)
    keyless = NodeProcess(ros, tmp_path / 'keyless', _node_parameters(
        vllm_server, **{'remote.api_key_env': '', 'lifecycle.autostart': False}))
    try:
        lifecycle = ros.lifecycle()
        assert lifecycle.get() == 'unconfigured'
        assert not lifecycle.change('configure')
        error = diagnostics.wait_for(lambda d: d['level'] == 'ERROR')
        assert 'HTTP 401' in error['values']['error']
        assert 'remote.api_key_env' in error['values']['error']
        assert keyless.stop() == 0
    finally:
        keyless.kill()
    published = json.dumps([client.received(), status.messages, diagnostics.messages],
                           ensure_ascii=False)
    for text in (published, keyed.stderr(), keyless.stderr(), _read(keyed.stdout_path),
                 _read(keyless.stdout_path)):
        assert VLLM_API_KEY not in text


def _read(path):
    with open(path, encoding='utf-8', errors='replace') as stream:
        return stream.read()


def _run_benchmark(script, vllm_server, vllm_model, tmp_path, *options):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', script), '--model', vllm_model.base,
         '--adapter', vllm_model.adapters['robot_a'], '--server', vllm_server.url,
         '--server-model', 'robot_a', '--api-key-env', VLLM_KEY_ENV, '--out', str(tmp_path)]
        + list(options), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    name = script[:-len('.py')]
    return (json.loads((tmp_path / (name + '.json')).read_text()),
            (tmp_path / (name + '.md')).read_text())


@pytest.mark.slow
def test_fleet_benchmark_smoke(vllm_server, vllm_model, vllm_key, tmp_path):
    with claimed_ros_domain() as domain_id:
        report, table = _run_benchmark('fleet.py', vllm_server, vllm_model, tmp_path,
                                       '--robots', '1', '2', '--commands', '2',
                                       '--max-new-tokens', '8', '--domain-id', str(domain_id))
    runs = {(run['path'], run['robots']): run for run in report['runs']}
    assert sorted(runs) == [('local', 1), ('local', 2), ('remote', 1), ('remote', 2)]
    for (_, robots), run in runs.items():
        assert run['plans'] == 2 * robots and sum(run['statuses'].values()) == run['plans']
        assert run['p90_ms'] >= run['p50_ms'] > 0 and run['plans_per_s'] > 0
    assert '| 2 |' in table and 'One robot (batch 1)' in table


@pytest.mark.slow
def test_remote_parity_benchmark_smoke(vllm_server, vllm_model, vllm_key, tmp_path):
    report, table = _run_benchmark('remote_parity.py', vllm_server, vllm_model, tmp_path,
                                   '--limit', '3')
    assert report['commands'] == 3 and report['endpoint'] == 'completions'
    assert report['same_text'] == 3 and report['all_within'] == 3, report['rows']
    assert '| identical plan text | 3 / 3 | - |' in table
    assert report['timed'] == 3 and 0 < report['scoring_p50_ms'] < report['request_p50_ms']
    assert 'of which scoring the answer again' in table


class CommandStream:
    """Sends a command every ``period_s`` from a thread until stopped."""

    def __init__(self, client, period_s=0.5):
        self.client, self.period_s = client, period_s
        self.ids = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.ids.append(self.client.send(COMMANDS[len(self.ids) % len(COMMANDS)]))
            self._stop.wait(self.period_s)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        return list(self.ids)


def _statuses_since(client, ids, first):
    """Return the statuses of the answers to ``ids[first:]`` received so far, in id order."""
    answers = {answer['id']: answer for answer in client.received()}
    return [answers[request_id]['status'] for request_id in ids[first:]
            if request_id in answers]


@pytest.mark.slow
def test_a_server_restart_mid_stream_answers_every_command_and_the_node_carries_on(
        ros, tmp_path, vllm_server, vllm_model, vllm_key):
    """
    The server stops and comes back (rendering chat with another template from then on).

    During the outage commands are answered ``error`` with the reason; afterwards plans
    again, from the same node process, never leaving the active state. Then a node that
    sends chat messages fails configure: the new template renders another prompt.
    """
    ros.env[VLLM_KEY_ENV] = VLLM_API_KEY
    status, client = ros.status(), ros.client()
    node = NodeProcess(ros, tmp_path / 'node', _node_parameters(vllm_server))
    pid = node.process.pid
    stream = None
    try:
        assert client.wait_for_planner(60)
        wait_for_answers(client, [client.send('去客厅')])
        seen = len(status.messages)
        stream = CommandStream(client)
        time.sleep(2.0)
        vllm_server.stop()
        outage = len(stream.ids)
        assert client.wait_until(lambda: _statuses_since(client, stream.ids, outage)
                                 .count('error') >= 3, 60)
        reasons = [answer['errors'][0]['message'] for answer in client.received()
                   if answer['id'] in stream.ids[outage:] and answer['status'] == 'error']
        assert all('unreachable' in reason for reason in reasons), reasons
        vllm_server.chat_template = vllm_model.other_template
        vllm_server.start()
        back = len(stream.ids)
        assert client.wait_until(lambda: sum(
            status_ != 'error' for status_ in _statuses_since(client, stream.ids, back)) >= 3,
            120)
        ids = stream.stop()
        answers = wait_for_answers(client, ids)
        assert len(answers) == len(ids)  # every command answered, exactly once each:
        received = [answer['id'] for answer in client.received() if answer['id'] in ids]
        twice = [(answer['id'], answer['status'], answer['stamp'])
                 for answer in client.received()
                 if answer['id'] in ids and received.count(answer['id']) > 1]
        assert sorted(received) == sorted(ids), twice[:6]
        assert node.alive() and node.process.pid == pid
        assert {message['lifecycle'] for message in status.messages[seen:]} == {'active'}
        assert node.stop() == 0
    finally:
        if stream is not None:
            stream.stop()
        node.kill()
        if not vllm_server.ready():
            vllm_server.start()
    _a_chat_node_fails_configure_on_another_template(ros, tmp_path, vllm_server)


def _a_chat_node_fails_configure_on_another_template(ros, tmp_path, server):
    diagnostics, lifecycle = ros.diagnostics(), ros.lifecycle()
    node = NodeProcess(ros, tmp_path / 'chat', _node_parameters(
        server, **{'remote.endpoint': 'chat', 'lifecycle.autostart': False}))
    try:
        assert lifecycle.get() == 'unconfigured'
        assert not lifecycle.change('configure')
        error = diagnostics.wait_for(lambda d: d['level'] == 'ERROR')
        reason = error['values']['error']
        assert 'chat template differs' in reason, reason
        # the first differing text: LLaMA-Factory 0.9.2's system prompt against 0.9.3's
        assert "the server has 'a helpful assistant." in reason, reason
        assert "the planner has 'Qwen, created by Alibaba" in reason, reason
        assert node.stop() == 0
    finally:
        node.kill()
