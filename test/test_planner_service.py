"""
PlannerService, the command lifecycle inside planner_node, without ROS or DDS.

The service is driven as the node drives it (``submit`` for each /command message) with plain
callables that collect what it publishes. Behind it is a real planner: the openai backend
against the scripted FakeOpenAIServer of test/doubles.py (answers held back or released by
the test), or the tiny Qwen2 model with the transformers backend. Nothing here uses ROS.
"""

import logging
import threading
import time

from doubles import fake_server_parameters, FakeOpenAIServer
from helpers import codes, free_port, wait_until
import pytest
from robot_llm_planner.core.parameters import load_config
from robot_llm_planner.serving.service import PlannerService

WAIT_S = 60.0


class Published:
    """What the service published: answers and statuses, in order."""

    def __init__(self):
        """Start empty."""
        self.answers = []
        self.statuses = []
        self._lock = threading.Lock()

    def answer(self, message):
        """Collect one published answer: the service's publish_answer."""
        with self._lock:
            self.answers.append(message)

    def status(self, status):
        """Collect one published status: the service's publish_status."""
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
        def answered():
            found = self.by_id()
            return found if all(request_id in found for request_id in ids) else None
        found = wait_until(answered, timeout, lambda: 'no answer to %s within %g s' % (
            [i for i in ids if i not in self.by_id()], timeout))
        return {request_id: found[request_id][0] for request_id in ids}

    def latest_status(self):
        """Return the last status published, or None."""
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def wait_for_status(self, predicate, timeout=WAIT_S):
        """Wait until the latest status satisfies ``predicate``; return it."""
        def matched():
            latest = self.latest_status()
            return latest if latest is not None and predicate(latest) else None
        return wait_until(matched, timeout,
                          lambda: 'status never matched; last: %s' % self.latest_status())

    def assert_one_answer_each(self, ids, settle=0.3):
        """Check, after ``settle`` seconds more, that each id was answered exactly once."""
        time.sleep(settle)
        counts = {request_id: len(answers) for request_id, answers in self.by_id().items()}
        assert counts == dict.fromkeys(ids, 1), counts


def make_service(parameters, autostart=True):
    """Return (service, published) for planner parameters, not configured yet."""
    config, _ = load_config(parameters)
    published = Published()
    service = PlannerService(config, published.answer, published.status,
                             logging.getLogger('test_planner_service'), '/planner_node',
                             queue_until_active=autostart)
    return service, published


def walk_to_active(service, parameters):
    """Configure then activate on a thread, as the node's lifecycle.autostart does."""
    def walk():
        config, errors = load_config(parameters)
        if service.configure(config, errors):
            service.activate()
    thread = threading.Thread(target=walk, daemon=True)
    thread.start()
    return thread


def start(parameters):
    """Return (service, published) walking to active (not waited for)."""
    service, published = make_service(parameters)
    walk_to_active(service, parameters)
    return service, published


def send(service, request_id, text='去客厅'):
    """Submit a JSON command with its id, as a /command message carries it."""
    service.submit('{"id": "%s", "text": "%s"}' % (request_id, text))
    return request_id


@pytest.fixture
def held(server):
    """Yield a function starting a service on the fake server whose answers are held back."""
    services = []

    def held_start(**extra):
        service, published = start(fake_server_parameters(server, **extra))
        services.append(service)
        published.wait_for_status(lambda s: s['state'] == 'ready')
        server.gate.clear()
        first = send(service, 'c1', '帮我拿一瓶水。')
        server.wait_for_requests(1)
        published.wait_for_status(lambda s: s['in_flight'] == 1)
        return service, published, first

    yield held_start
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
        assert codes(answer) == ['queue_full']
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
        assert codes(answer) == ['superseded']
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
    parameters = {'model.path': missing, 'generation.constrained': False}
    service, published = make_service(parameters)
    early = send(service, 'early')  # queued while loading
    walk_to_active(service, parameters).join(30)
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
    service, published = start({'queue.max_size': -3, 'model.backend': 'tensorrt'})
    answer = published.wait_for([send(service, 'p1')])['p1']
    assert answer['status'] == 'error' and answer['errors'][0]['code'] == 'invalid_parameters'
    assert 'queue.max_size must be >= 1' in answer['errors'][0]['message']
    assert "model.backend must be one of transformers, openai, got 'tensorrt'" \
        in answer['errors'][0]['message']
    assert service.status()['state'] == 'error'


def test_a_transient_load_failure_is_retried_until_the_server_comes_back():
    port = free_port()
    service, published = start({
        'model.backend': 'openai', 'remote.base_url': 'http://127.0.0.1:%d/v1' % port,
        'remote.model': 'fake', 'remote.retries': 0, 'remote.timeout_s': 2.0,
        'generation.constrained': False, 'validation.grounded_arguments': False})
    server = None
    try:
        failed = published.wait_for_status(lambda s: s['state'] == 'error')
        assert 'unreachable' in failed['error'] and 'retrying in 1 s' in failed['error']
        down = published.wait_for([send(service, 'down')])['down']
        assert down['status'] == 'error' and down['errors'][0]['code'] == 'model_load_failed'
        server = FakeOpenAIServer(port=port)
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
    service, published = start(fake_server_parameters(
        server, **{'queue.max_size': 3, 'queue.policy': policy, 'queue.max_batch': 2}))
    published.wait_for_status(lambda s: s['state'] == 'ready')
    threads, per_thread = 6, 40
    ids = ['t%d-%d' % (t, n) for t in range(threads) for n in range(per_thread)]
    go = threading.Barrier(threads + 1)

    def sender(t):
        go.wait()
        for n in range(per_thread):
            send(service, 't%d-%d' % (t, n), '帮我拿一瓶水。')
            if t == 0 and n == per_thread // 2:
                service.configure_queue(max_size=2)  # a parameter change in the middle

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    go.wait()
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
    service, published = start(fake_server_parameters(server, **{'queue.max_size': 4}))
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
    parameters = {
        'model.path': tiny_model, 'model.adapter_path': tiny_adapter, 'model.device': 'cpu',
        'generation.fast_path': 'off', 'generation.constrained': False,
        'generation.max_new_tokens': 16, 'queue.max_batch': 4}
    service, published = make_service(parameters)
    ids = [send(service, 'b%d' % n, text) for n, text in
           enumerate(['去客厅', '打开冰箱门', '帮我拿一瓶水。'])]  # waiting while it loads
    walk_to_active(service, parameters)
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


# ---------------------------------------------------------------------- the lifecycle
def test_every_lifecycle_state_answers_each_command_once(server):
    parameters = fake_server_parameters(server, **{'queue.max_size': 4})
    service, published = make_service(parameters, autostart=False)
    ids = [send(service, 'unconfigured')]
    service.set_lifecycle('unconfigured')
    answer = published.wait_for(['unconfigured'])['unconfigured']
    assert answer['status'] == 'rejected' and codes(answer) == ['node_inactive']
    assert 'lifecycle state unconfigured' in answer['errors'][0]['message']
    assert service.status()['state'] == 'unconfigured'

    assert service.configure(*load_config(parameters))
    service.set_lifecycle('inactive')
    assert service.status()['state'] == 'inactive'
    ids.append(send(service, 'inactive'))
    assert codes(published.wait_for(['inactive'])['inactive']) == ['node_inactive']

    service.activate()
    service.set_lifecycle('active')
    ids.append(send(service, 'active-1', '帮我拿一瓶水。'))
    assert published.wait_for(['active-1'])['active-1']['status'] == 'ok'

    # deactivate with one command in generation and two waiting: the remote backend cannot
    # cancel, so the generation is abandoned after the grace period and answered rejected
    server.gate.clear()
    ids.append(send(service, 'in-flight'))
    server.wait_for_requests(2)
    ids += [send(service, 'queued-1'), send(service, 'queued-2')]
    service.set_lifecycle('deactivating')
    started = time.monotonic()
    service.deactivate(grace_s=0.3)
    assert time.monotonic() - started < 3.0
    service.set_lifecycle('inactive')
    answers = published.wait_for(['in-flight', 'queued-1', 'queued-2'])
    for answer in answers.values():
        assert answer['status'] == 'rejected' and codes(answer) == ['node_inactive']
    assert 'deactivated before planning' in answers['queued-1']['errors'][0]['message']
    assert 'did not end in time' in answers['in-flight']['errors'][0]['message']
    server.gate.set()  # the abandoned generation ends: its plan is not published

    service.activate()
    service.set_lifecycle('active')
    ids.append(send(service, 'active-2', '帮我拿一瓶水。'))
    assert published.wait_for(['active-2'])['active-2']['status'] == 'ok'
    service.deactivate()
    service.set_lifecycle('inactive')
    figures = service.cleanup()
    service.set_lifecycle('unconfigured')
    assert 'rss_mb_before' in figures and 'rss_mb_after' in figures
    assert service.status()['state'] == 'unconfigured'
    ids.append(send(service, 'cleaned-up'))
    assert codes(published.wait_for(['cleaned-up'])['cleaned-up']) == ['node_inactive']

    service.begin_shutdown()
    service.set_lifecycle('finalized')
    ids.append(send(service, 'finalized'))
    assert codes(published.wait_for(['finalized'])['finalized']) == ['node_shutting_down']
    assert service.finish_shutdown(grace_s=1.0)
    published.assert_one_answer_each(ids, settle=0.5)
    assert [s['lifecycle'] for s in published.statuses][-1] == 'finalized'


def test_deactivate_cancels_a_long_generation_and_activate_plans_again(tiny_model):
    # the untrained model never writes its stop token: every answer is 300 tokens long
    parameters = {'model.path': tiny_model, 'model.device': 'cpu', 'generation.fast_path': 'off',
                  'generation.constrained': False, 'generation.max_new_tokens': 300,
                  'cache.size': 0}
    service, published = make_service(parameters, autostart=False)
    assert service.configure(*load_config(parameters))
    service.activate()
    send(service, 'long', '把红色的杯子放到厨房的桌子上')
    published.wait_for_status(lambda s: s['in_flight'] == 1)
    service.set_lifecycle('deactivating')
    started = time.monotonic()
    service.deactivate(grace_s=0.0)  # no grace: cancelled at once
    elapsed = time.monotonic() - started
    answer = published.wait_for(['long'])['long']
    assert answer['status'] == 'rejected' and codes(answer) == ['node_inactive']
    assert 'generation cancelled' in answer['errors'][0]['message']
    assert elapsed < 1.0, elapsed  # the cancel's wait at most, not the whole generation
    service.activate()  # the backend generates again after the cancel
    send(service, 'again', '去客厅')
    again = published.wait_for(['again'], timeout=180)['again']
    assert again['status'] == 'invalid', again  # planned to the end, not cancelled
    assert again['timing']['tokens_generated'] == 300
    published.assert_one_answer_each(['long', 'again'])
    service.begin_shutdown()
    assert service.finish_shutdown(grace_s=5.0)


def test_cleanup_frees_the_model(tiny_model):
    import weakref
    parameters = {'model.path': tiny_model, 'model.device': 'cpu', 'generation.fast_path': 'off',
                  'generation.constrained': False}
    service, published = make_service(parameters, autostart=False)
    assert service.configure(*load_config(parameters))
    model = weakref.ref(service.planner.backend.model)
    status = service.status()
    assert status['device'] == 'cpu' and status['dtype'] == 'float32'
    assert len(status['model_hash']['base']) == 12
    service.cleanup()
    assert model() is None  # no reference left: torch freed the weights
    status = service.status()
    assert (status['state'], status['device'], status['model_hash']['base']) == \
        ('unconfigured', '', '')
    assert service.configure(*load_config(parameters))  # and it loads again
    assert service.status()['state'] == 'inactive'
    service.begin_shutdown()
    assert service.finish_shutdown(grace_s=5.0)


# ---------------------------------------------------------------------- health
def test_health_levels_follow_the_queue_failures_and_plans(held, server):
    service, published, first = held(**{'queue.max_size': 2})
    assert service.status()['health'] == {'level': 'OK', 'message': 'busy: planning commands'}
    send(service, 'c2')
    assert service.status()['health']['level'] == 'OK'  # 1 of 2: 50 %
    send(service, 'c3')
    health = service.status()['health']
    assert health == {'level': 'WARN',
                      'message': 'queue above 80 %: 2 of 2 commands waiting'}
    server.gate.set()
    published.wait_for([first, 'c2', 'c3'])
    recent = published.wait_for_status(lambda s: s['recent']['plans'] == 3)['recent']
    assert recent['latency_p50_ms'] > 0 and recent['latency_p95_ms'] >= recent['latency_p50_ms']
    assert recent['tokens_per_s'] > 0  # 12 completion tokens per answer from the server
    assert service.status()['health']['level'] == 'OK'
    server.answers['坏'] = 502  # the backend fails: ERROR until a plan succeeds again
    published.wait_for([send(service, 'bad', '坏')])
    health = service.status()['health']
    assert health['level'] == 'ERROR' and 'HTTP 502' in health['message']
    assert health['message'].startswith('the backend failed the last plan')
    published.wait_for([send(service, 'good', '帮我拿一瓶水。')])
    assert service.status()['health']['level'] == 'OK'
    server.answers['乱'] = '这不是计划'  # most recent plans invalid: WARN
    for n in range(5):
        published.wait_for([send(service, 'garbage-%d' % n, '乱')])
    health = service.status()['health']
    assert health == {'level': 'WARN', 'message': '5 of the last 9 plans were invalid'}


def test_health_is_error_after_a_failed_load_and_warn_while_retrying(tmp_path):
    service, published = start({'model.path': str(tmp_path / 'missing'),
                                'generation.constrained': False})
    failed = published.wait_for_status(lambda s: s['state'] == 'error')
    assert failed['health']['level'] == 'ERROR'
    assert 'does not exist' in failed['health']['message']
    service, published = start({
        'model.backend': 'openai', 'remote.base_url': 'http://127.0.0.1:%d/v1' % free_port(),
        'remote.model': 'fake', 'remote.retries': 0, 'generation.constrained': False})
    retrying = published.wait_for_status(lambda s: s['state'] == 'error')
    assert retrying['retrying'] and retrying['health']['level'] == 'WARN'
    assert 'retrying in 1 s' in retrying['health']['message']
    service.begin_shutdown()
    assert service.finish_shutdown(grace_s=2.0)
