"""
planner_node as a managed node over real ROS 2: lifecycle transitions, memory and /diagnostics.

The built node runs as a subprocess; this process drives it through its lifecycle services
(``change_state``, ``get_state``, as ``ros2 lifecycle`` does), sends commands in every state
and counts the answers on /action_plan, and reads /planner_status and /diagnostics as any
subscriber would. The commands are planned by the openai backend against the scripted
FakeOpenAIServer (test/doubles.py), or by tiny Qwen2 models on CPU.
"""

import signal
import time

from doubles import fake_server_parameters
from helpers import codes, free_port
from planner_harness import (assert_exactly_one_answer, NodeProcess, schema_validator,
                             wait_for_answers)
import psutil
import pytest

MANUAL = {'lifecycle.autostart': False}


def _assert_in_order(seen, expected):
    """Check that ``expected`` occurs in ``seen`` in this order (other labels between)."""
    position = 0
    for label in seen:
        if position < len(expected) and label == expected[position]:
            position += 1
    assert position == len(expected), (expected[position:], seen)


def _rejected_inactive(client, request_id):
    answer = wait_for_answers(client, [request_id])[request_id]
    assert answer['status'] == 'rejected' and codes(answer) == ['node_inactive'], answer
    schema_validator().validate(answer)
    return answer


@pytest.mark.slow
def test_configure_activate_deactivate_activate_cleanup_shutdown_answers_every_command(
        ros, tmp_path, server):
    status, client, lifecycle = ros.status(), ros.client(), ros.lifecycle()
    diagnostics = ros.diagnostics()
    node = NodeProcess(ros, tmp_path, fake_server_parameters(server, **MANUAL))
    try:
        assert lifecycle.get() == 'unconfigured'
        assert client.wait_for_planner(60)
        ids = [client.send('去客厅', 'unconfigured')]
        message = _rejected_inactive(client, 'unconfigured')['errors'][0]['message']
        assert 'lifecycle state unconfigured' in message
        assert server.requests == [] and status.latest()['state'] == 'unconfigured'

        configuring = lifecycle.set_async('configure')
        ids.append(client.send('去客厅', 'configuring'))  # while it loads, or just after
        assert lifecycle.wait(configuring)
        _rejected_inactive(client, 'configuring')
        assert lifecycle.get() == 'inactive'
        ids.append(client.send('去客厅', 'inactive'))
        _rejected_inactive(client, 'inactive')

        assert lifecycle.change('activate') and lifecycle.get() == 'active'
        ids.append(client.send('帮我拿一瓶水。', 'active-1'))
        assert wait_for_answers(client, ['active-1'])['active-1']['status'] == 'ok'

        # deactivate with a generation held by the server and a command waiting
        server.gate.clear()
        ids.append(client.send('帮我拿一瓶水吧', 'in-flight'))  # not cached: it reaches the server
        server.wait_for_requests(2)
        ids.append(client.send('去客厅', 'waiting'))
        status.wait_for(lambda s: s['queue_depth'] == 1)
        deactivating = lifecycle.set_async('deactivate')
        waiting = _rejected_inactive(client, 'waiting')
        assert 'deactivated before planning' in waiting['errors'][0]['message']
        ids.append(client.send('去客厅', 'deactivating'))
        _rejected_inactive(client, 'deactivating')
        assert lifecycle.wait(deactivating) and lifecycle.get() == 'inactive'
        # the remote backend cannot cancel: after the grace period the command is answered
        in_flight = _rejected_inactive(client, 'in-flight')
        assert 'did not end in time' in in_flight['errors'][0]['message']
        server.gate.set()

        assert lifecycle.change('activate')
        ids.append(client.send('帮我拿一瓶水。', 'active-2'))
        assert wait_for_answers(client, ['active-2'])['active-2']['status'] == 'ok'
        assert lifecycle.change('deactivate') and lifecycle.change('cleanup')
        assert lifecycle.get() == 'unconfigured'
        ids.append(client.send('去客厅', 'cleaned-up'))
        _rejected_inactive(client, 'cleaned-up')

        assert lifecycle.change('shutdown')
        assert node.process.wait(15) == 0  # finalized: the process ends by itself
        assert_exactly_one_answer(client, ids)
        assert 'Traceback' not in node.stderr()
        # the status keeps depth 1: a subscriber may miss a short-lived state, not the order
        seen = [s['lifecycle'] for s in status.messages]
        assert 'configuring' in seen and 'deactivating' in seen
        _assert_in_order(seen, ['unconfigured', 'inactive', 'active', 'inactive', 'active',
                                'inactive', 'unconfigured', 'finalized'])
        # /diagnostics is sent on every change of state (volatile: from the configure on)
        _assert_in_order([entry['values']['lifecycle state'] for entry in diagnostics.messages],
                         ['configuring', 'inactive', 'active', 'deactivating',
                          'inactive', 'active', 'inactive', 'unconfigured', 'finalized'])
    finally:
        server.gate.set()
        node.kill()


def _large_model(tiny_model, directory):
    """Save a random Qwen2 of about 100 MB (float32) with the tiny model's tokenizer."""
    from planner_training.tiny_qwen import build_model
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(str(directory))
    build_model(str(directory), str(directory), hidden_size=768, layers=5, seed=3)
    weights = sum(path.stat().st_size for path in directory.glob('*.safetensors'))
    return str(directory), weights / 2 ** 20


@pytest.mark.slow
def test_cleanup_frees_the_model_memory(ros, tmp_path, tiny_model):
    model, model_mb = _large_model(tiny_model, tmp_path / 'model')
    status, client, lifecycle = ros.status(), ros.client(), ros.lifecycle()
    node = NodeProcess(ros, tmp_path / 'node', {
        'model.path': model, 'model.device': 'cpu', 'generation.constrained': False,
        'generation.fast_path': 'off', 'generation.max_new_tokens': 8, **MANUAL})
    try:
        process = psutil.Process(node.process.pid)
        assert lifecycle.get() == 'unconfigured'
        figures = []
        for _ in range(2):  # load and free twice: nothing stays behind
            assert lifecycle.change('configure', timeout=240), node.stderr()[-3000:]
            loaded = process.memory_info().rss / 2 ** 20
            assert status.wait_for(lambda s: s['lifecycle'] == 'inactive')['device'] == 'cpu'
            assert lifecycle.change('cleanup')
            freed = process.memory_info().rss / 2 ** 20
            figures.append((loaded, freed))
        print('\nnode RSS, %.1f MB of weights: loaded %.0f MB -> cleaned up %.0f MB; '
              'again %.0f MB -> %.0f MB' % ((model_mb,) + figures[0] + figures[1]))
        for loaded, freed in figures:
            assert loaded - freed > 0.8 * model_mb, figures
        assert abs(figures[1][1] - figures[0][1]) < 0.2 * model_mb, figures
        assert 'model freed: rss_mb' in node.stderr()
        ids = [client.send('去客厅', 'after-cleanup')]
        _rejected_inactive(client, 'after-cleanup')
        assert node.stop(signal.SIGINT) == 0
        assert_exactly_one_answer(client, ids)
    finally:
        node.kill()


@pytest.mark.slow
def test_a_bad_model_path_fails_configure_and_reports_error(ros, tmp_path):
    missing = str(tmp_path / 'no_such_model')
    status, client, lifecycle = ros.status(), ros.client(), ros.lifecycle()
    diagnostics = ros.diagnostics()
    node = NodeProcess(ros, tmp_path / 'node', {'model.path': missing,
                                                'generation.constrained': False, **MANUAL})
    try:
        assert lifecycle.get() == 'unconfigured'
        assert not lifecycle.change('configure')  # the transition fails ...
        assert lifecycle.get() == 'unconfigured'  # ... and the node stays unconfigured
        failed = status.wait_for(lambda s: s['state'] == 'error')
        assert 'model directory %s does not exist' % missing in failed['error']
        error = diagnostics.wait_for(lambda d: d['values']['lifecycle state'] == 'unconfigured'
                                     and d['level'] == 'ERROR', fresh=False)
        assert missing in error['message'] and missing in error['values']['error']
        assert client.wait_for_planner(60)
        answer = wait_for_answers(client, [client.send('去客厅', 'failed')])['failed']
        assert answer['status'] == 'error' and codes(answer) == ['model_load_failed']
        assert not lifecycle.change('activate')  # not from unconfigured
        assert not lifecycle.change('configure') and lifecycle.get() == 'unconfigured'
        assert 'cannot load the model' in node.stderr()
        assert lifecycle.change('shutdown') and node.process.wait(15) == 0
        assert 'Traceback' not in node.stderr()
    finally:
        node.kill()


@pytest.mark.slow
def test_diagnostics_report_every_second_and_warn_when_the_queue_fills(ros, tmp_path, server):
    status, client, diagnostics = ros.status(), ros.client(), ros.diagnostics()
    node = NodeProcess(ros, tmp_path, fake_server_parameters(server, **{'queue.max_size': 2}))
    try:
        ready = diagnostics.wait_for(lambda d: d['values']['planner state'] == 'ready' and
                                     d['values']['lifecycle state'] == 'active', fresh=False)
        assert ready['level'] == 'OK' and ready['message'] == 'ready: planning commands'
        assert ready['hardware_id'] == server.url  # the remote backend's server
        values = ready['values']
        assert (values['lifecycle state'], values['backend'], values['model'],
                values['adapter'], values['device']) == ('active', 'openai', server.url, 'fake',
                                                         'remote')
        assert (values['queue depth'], values['queue capacity']) == ('0', '2')
        for key in ('model hash', 'dtype', 'answers ok', 'answers rejected',
                    'plan latency p50 (ms)', 'plan latency p95 (ms)', 'tokens per second',
                    'process RSS (MB)'):
            assert key in values, key
        assert 'GPU memory allocated (MB)' not in values  # not on CUDA
        count = len(diagnostics.messages)
        time.sleep(2.5)
        assert len(diagnostics.messages) - count >= 2  # at 1 Hz
        server.gate.clear()
        ids = [client.send('帮我拿一瓶水。', 'c1')]
        server.wait_for_requests(1)
        ids += [client.send('去客厅', 'c2'), client.send('去客厅', 'c3')]
        warn = diagnostics.wait_for(lambda d: d['level'] == 'WARN')
        assert warn['message'] == 'queue above 80 %: 2 of 2 commands waiting'
        assert warn['values']['queue depth'] == '2'
        server.gate.set()
        wait_for_answers(client, ids)
        done = diagnostics.wait_for(lambda d: d['values']['answers ok'] == '3')
        assert done['level'] == 'OK'
        assert float(done['values']['plan latency p50 (ms)']) > 0
        assert float(done['values']['tokens per second']) > 0
        assert status.latest()['health']['level'] == 'OK'  # the same status, as JSON
        assert node.stop(signal.SIGINT) == 0
    finally:
        server.gate.set()
        node.kill()


@pytest.mark.slow
def test_sigterm_while_configure_retries_an_unreachable_server_exits_at_once(ros, tmp_path):
    port = free_port()
    status, client, lifecycle = ros.status(), ros.client(), ros.lifecycle()
    node = NodeProcess(ros, tmp_path, {
        'model.backend': 'openai', 'remote.base_url': 'http://127.0.0.1:%d/v1' % port,
        'remote.model': 'fake', 'remote.retries': 0, 'generation.constrained': False, **MANUAL})
    try:
        assert lifecycle.get() == 'unconfigured'
        configuring = lifecycle.set_async('configure')
        retrying = status.wait_for(lambda s: s['retrying'] and 'retrying in 2 s' in s['error'])
        assert retrying['lifecycle'] == 'configuring' and retrying['health']['level'] == 'WARN'
        assert client.wait_for_planner(60)
        answer = wait_for_answers(client, [client.send('去客厅', 'retrying')])['retrying']
        assert answer['status'] == 'error' and codes(answer) == ['model_load_failed']
        started = time.monotonic()
        assert node.stop(signal.SIGTERM, timeout=10) == 0
        elapsed = time.monotonic() - started
        assert elapsed < 5.0, elapsed
        assert not configuring.done() or not configuring.result().success
        assert [s['lifecycle'] for s in status.messages][-1] == 'finalized'
        assert 'Traceback' not in node.stderr()
        print('\nSIGTERM while configure retries: exited in %.2f s' % elapsed)
    finally:
        node.kill()
