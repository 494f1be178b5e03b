"""
PlannerService, the command lifecycle inside planner_node, without ROS or DDS.

The service is driven as the node drives it (``submit`` for each /command message) with plain
callables that collect what it publishes. Behind it is a real planner: the openai backend
against the scripted FakeServer (answers held back or released by the test), or the tiny
Qwen2 model with the transformers backend.
"""

import logging
import socket
import threading
import time

from planner_harness import FakeServer, fake_server_parameters
import pytest
from robot_llm_planner.core.parameters import load_config
from robot_llm_planner.ros.service import PlannerService

WAIT_S = 60.0


class Published:
    """What the service published: answers and statuses, in order."""

    def __init__(self):
        """Start empty."""
        self.answers = []
        self.statuses = []
        self._lock = threading.Lock()

    def answer(self, message):
        """Collect one answer (the service's publish_answer)."""
        with self._lock:
            self.answers.append(message)

    def status(self, status):
        """Collect one status (the service's publish_status)."""
        with self._lock:
            self.statuses.append(status)

    def by_id(self):
        """Return {id: [answers]}."""
        with self._lock:
            found = {}
            for message in self.answers:
                found.setdefault(message['id'], []).append(message)
            return found

    def wait_for(self, ids, timeout=WAIT_S):
        """Wait until every id has an answer; return {id: its first answer}."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.by_id()
            if all(request_id in found for request_id in ids):
                return {request_id: found[request_id][0] for request_id in ids}
            time.sleep(0.01)
        pytest.fail('no answer to %s within %g s' % (
            [i for i in ids if i not in self.by_id()], timeout))

    def wait_for_status(self, predicate, timeout=WAIT_S):
        """Wait until the latest status satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                latest = self.statuses[-1] if self.statuses else None
            if latest is not None and predicate(latest):
                return latest
            time.sleep(0.01)
        pytest.fail('status never matched; last: %s' % latest)

    def assert_one_answer_each(self, ids, settle=0.3):
        """Check, after ``settle`` seconds more, that each id was answered exactly once."""
        time.sleep(settle)
        counts = {request_id: len(answers) for request_id, answers in self.by_id().items()}
        assert counts == dict.fromkeys(ids, 1), counts


def make_service(parameters, errors=()):
    """Return (service, published) for planner parameters (not started)."""
    config, config_errors = load_config(parameters)
    published = Published()
    service = PlannerService(config, published.answer, published.status,
                             logging.getLogger('test_planner_service'), '/planner_node',
                             list(config_errors) + list(errors))
    return service, published


def send(service, request_id, text='去客厅'):
    """Submit a JSON command with its id, as a /command message carries it."""
    service.submit('{"id": "%s", "text": "%s"}' % (request_id, text))
    return request_id


@pytest.fixture
def held(server):
    """Yield a function starting a service on the fake server whose answers are held back."""
    services = []

    def start(**extra):
        service, published = make_service(fake_server_parameters(server, **extra))
        service.start()
        services.append(service)
        published.wait_for_status(lambda s: s['state'] == 'ready')
        server.gate.clear()
        first = send(service, 'c1', '帮我拿一瓶水。')
        server.wait_for_requests(1)
        published.wait_for_status(lambda s: s['in_flight'] == 1)
        return service, published, first

    yield start
    server.gate.set()
    for service in services:
        service.begin_shutdown()
        service.finish_shutdown(grace_s=1.0)


def test_fifo_queue_full_rejects_the_new_commands(held, server):
    service, published, first = held(**{'queue.max_size': 2, 'queue.policy': 'fifo'})
    ids = [first] + [send(service, 'c%d' % n) for n in range(2, 6)]
    refused = published.wait_for(['c4', 'c5'])
    for answer in refused.values():
        assert answer['status'] == 'rejected'
        assert [error['code'] for error in answer['errors']] == ['queue_full']
        assert 'queue.max_size 2' in answer['errors'][0]['message']
    assert service.status()['queue_depth'] == 2
    server.gate.set()
    answers = published.wait_for(ids)
    assert [answers[i]['status'] for i in ids] == ['ok', 'ok', 'ok', 'rejected', 'rejected']
    published.assert_one_answer_each(ids)
    assert service.status()['counts'] == {'ok': 3, 'invalid': 0, 'error': 0, 'rejected': 2}


def test_latest_policy_drops_the_oldest_waiting_command(held, server):
    service, published, first = held(**{'queue.max_size': 2, 'queue.policy': 'latest'})
    ids = [first] + [send(service, 'c%d' % n, '去客厅 %d' % n) for n in range(2, 6)]
    dropped = published.wait_for(['c2', 'c3'])
    for answer in dropped.values():
        assert answer['status'] == 'rejected'
        assert [error['code'] for error in answer['errors']] == ['superseded']
    assert 'for the newer command c4' in dropped['c2']['errors'][0]['message']
    server.gate.set()
    answers = published.wait_for(ids)
    assert [answers[i]['status'] for i in ids] == ['ok', 'rejected', 'rejected', 'ok', 'ok']
    assert server.requests[1:] == ['去客厅 4', '去客厅 5']
    published.assert_one_answer_each(ids)


def test_the_queue_changes_size_and_policy_while_it_runs(held, server):
    service, published, first = held(**{'queue.max_size': 8})
    service.configure_queue(max_size=1, policy='latest')
    assert published.statuses[-1]['queue_max_size'] == 1  # published at once
    ids = [first, send(service, 'c2'), send(service, 'c3')]
    assert published.wait_for(['c2'])['c2']['errors'][0]['code'] == 'superseded'
    server.gate.set()
    published.wait_for(ids)
    published.assert_one_answer_each(ids)


def test_a_model_that_fails_to_load_answers_every_command_error(tmp_path):
    missing = str(tmp_path / 'no_such_model')
    service, published = make_service({'model.path': missing, 'generation.constrained': False})
    early = send(service, 'early')  # queued while loading
    service.start()
    failed = published.wait_for_status(lambda s: s['state'] == 'error')
    assert 'model directory %s does not exist' % missing in failed['error']
    late = send(service, 'late')
    answers = published.wait_for([early, late])
    for answer in answers.values():
        assert answer['status'] == 'error'
        assert answer['errors'][0]['code'] == 'model_load_failed'
        assert missing in answer['errors'][0]['message']
    published.assert_one_answer_each([early, late])
    service.begin_shutdown()
    assert service.finish_shutdown(grace_s=1.0)


def test_invalid_parameters_answer_error_with_the_reasons():
    service, published = make_service({'queue.max_size': -3, 'model.backend': 'tensorrt'})
    service.start()
    answer = published.wait_for([send(service, 'p1')])['p1']
    assert answer['status'] == 'error' and answer['errors'][0]['code'] == 'invalid_parameters'
    assert 'queue.max_size must be >= 1' in answer['errors'][0]['message']
    assert "model.backend must be one of transformers, openai, got 'tensorrt'" \
        in answer['errors'][0]['message']
    assert service.status()['state'] == 'error'


def test_a_transient_load_failure_is_retried_until_the_server_comes_back():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    service, published = make_service({
        'model.backend': 'openai', 'remote.base_url': 'http://127.0.0.1:%d/v1' % port,
        'remote.model': 'fake', 'remote.retries': 0, 'remote.timeout_s': 2.0,
        'generation.constrained': False, 'validation.grounded_arguments': False})
    service.start()
    server = None
    try:
        failed = published.wait_for_status(lambda s: s['state'] == 'error')
        assert 'unreachable' in failed['error'] and 'retrying in 1 s' in failed['error']
        down = published.wait_for([send(service, 'down')])['down']
        assert down['status'] == 'error' and down['errors'][0]['code'] == 'model_load_failed'
        server = FakeServer(port=port)
        published.wait_for_status(lambda s: s['state'] == 'ready', timeout=30)
        back = published.wait_for([send(service, 'back', '帮我拿一瓶水。')])['back']
        assert back['status'] == 'ok'
        published.assert_one_answer_each(['down', 'back'])
    finally:
        service.begin_shutdown()
        service.finish_shutdown(grace_s=1.0)
        if server is not None:
            server.close()


def test_shutdown_answers_the_queued_and_in_flight_commands_once(held, server):
    service, published, first = held()
    ids = [first, send(service, 'c2'), send(service, 'c3')]
    service.begin_shutdown()
    queued = published.wait_for(['c2', 'c3'])
    for answer in queued.values():
        assert answer['status'] == 'rejected'
        assert answer['errors'][0]['code'] == 'node_shutting_down'
    ids.append(send(service, 'late'))  # a command during the shutdown
    assert published.wait_for(['late'])['late']['errors'][0]['code'] == 'node_shutting_down'
    waited = []
    stopped = service.finish_shutdown(grace_s=0.3, wait=lambda s: waited.append(s) or
                                      time.sleep(s))
    assert not stopped and waited  # the held generation outlived the grace period
    in_flight = published.wait_for([first])[first]
    assert in_flight['status'] == 'rejected'
    assert 'while planning this command' in in_flight['errors'][0]['message']
    server.gate.set()  # the abandoned generation ends: its plan is not published
    published.assert_one_answer_each(ids, settle=0.5)
    assert len(published.answers) == 4


def test_shutdown_lets_the_generation_in_progress_finish_within_the_grace_period(held, server):
    service, published, first = held()
    service.begin_shutdown()
    threading.Timer(0.2, server.gate.set).start()
    assert service.finish_shutdown(grace_s=5.0)
    assert published.wait_for([first])[first]['status'] == 'ok'
    published.assert_one_answer_each([first])
    count = len(published.statuses)
    service.publish_status()  # closed: nothing more is published
    assert len(published.statuses) == count


@pytest.mark.parametrize('policy', ['fifo', 'latest'])
def test_exactly_one_answer_per_command_under_concurrency(server, policy):
    service, published = make_service(fake_server_parameters(
        server, **{'queue.max_size': 3, 'queue.policy': policy, 'queue.max_batch': 2}))
    service.start()
    published.wait_for_status(lambda s: s['state'] == 'ready')
    threads, per_thread = 6, 40
    ids = ['t%d-%d' % (t, n) for t in range(threads) for n in range(per_thread)]
    start = threading.Barrier(threads + 1)

    def sender(t):
        start.wait()
        for n in range(per_thread):
            send(service, 't%d-%d' % (t, n), '帮我拿一瓶水。')
            if t == 0 and n == per_thread // 2:
                service.configure_queue(max_size=2)  # a parameter change in the middle

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    for worker in workers:
        worker.join()
    answers = published.wait_for(ids)
    published.assert_one_answer_each(ids)
    statuses = {answer['status'] for answer in answers.values()}
    codes = {error['code'] for answer in answers.values() for error in answer['errors']}
    assert 'ok' in statuses and statuses <= {'ok', 'rejected'}
    assert codes <= {'queue_full', 'superseded'}
    assert service.status()['answered'] == len(ids)
    service.begin_shutdown()
    assert service.finish_shutdown(grace_s=2.0)


def test_commands_racing_the_shutdown_are_answered_once_each(server):
    service, published = make_service(fake_server_parameters(server, **{'queue.max_size': 4}))
    service.start()
    published.wait_for_status(lambda s: s['state'] == 'ready')
    ids = ['r%d' % n for n in range(200)]
    halfway = threading.Event()

    def sender():
        for n, request_id in enumerate(ids):
            send(service, request_id)
            if n == 50:
                halfway.set()
            time.sleep(0.001)

    thread = threading.Thread(target=sender)
    thread.start()
    halfway.wait(10)
    service.begin_shutdown()
    thread.join()
    service.finish_shutdown(grace_s=2.0)
    answers = published.wait_for(ids)
    published.assert_one_answer_each(ids)
    assert {a['status'] for a in answers.values()} <= {'ok', 'rejected'}
    assert 'node_shutting_down' in {a['errors'][0]['code'] for a in answers.values()
                                    if a['errors']}


def test_the_tiny_model_plans_batches_behind_the_service(tiny_model, tiny_adapter):
    service, published = make_service({
        'model.path': tiny_model, 'model.adapter_path': tiny_adapter, 'model.device': 'cpu',
        'generation.fast_path': 'off', 'generation.constrained': False,
        'generation.max_new_tokens': 16, 'queue.max_batch': 4})
    ids = [send(service, 'b%d' % n, text) for n, text in
           enumerate(['去客厅', '打开冰箱门', '帮我拿一瓶水。'])]  # waiting while it loads
    service.start()
    answers = published.wait_for(ids, timeout=180)
    for answer in answers.values():
        assert answer['status'] in ('ok', 'invalid')  # random weights: rarely a skill
        assert answer['model'] == {'backend': 'transformers', 'base': tiny_model,
                                   'adapter': tiny_adapter}
        assert answer['timing']['inference_ms'] > 0
    # queued while loading, so planned as one batch: one generate() call timed the three
    assert len({answer['timing']['inference_ms'] for answer in answers.values()}) == 1
    published.assert_one_answer_each(ids)
    service.begin_shutdown()
    assert service.finish_shutdown(grace_s=5.0)
