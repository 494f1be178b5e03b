"""The ROS-free pieces of planner_node: command parsing and the queue policies."""

import threading
import time

import pytest

from robot_llm_planner.core.command import (Command, IdFactory, INVALID_JSON, INVALID_REQUEST,
                                            looks_like_json, parse_command, QUEUE_FULL,
                                            SHUTTING_DOWN)
from robot_llm_planner.serving.command_queue import CommandQueue


@pytest.fixture
def new_id():
    return IdFactory('test')


def test_ids_are_unique_and_readable():
    first, second = IdFactory('planner_node'), IdFactory('planner_node')
    ids = [first() for _ in range(3)] + [second() for _ in range(3)]
    assert len(set(ids)) == 6
    assert ids[0].startswith('planner_node-') and ids[0].endswith('-1')
    assert ids[2].endswith('-3')


def test_ids_from_threads_are_unique():
    factory = IdFactory()
    ids = []

    def make():
        ids.extend(factory() for _ in range(200))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 800


@pytest.mark.parametrize('text', ['帮我拿一瓶水。', '  去客厅 ', '', '"quoted"', '123',
                                  'a {json} inside'])
def test_plain_text_is_a_command_with_an_assigned_id(new_id, text):
    command = parse_command(text, new_id)
    assert command.error is None and command.text == text
    assert command.request_id.startswith('test-')


def test_json_command_keeps_its_id(new_id):
    command = parse_command('{"id": "bt-7", "text": "帮我拿一瓶水。"}', new_id)
    assert (command.request_id, command.text, command.error) == ('bt-7', '帮我拿一瓶水。', None)


@pytest.mark.parametrize('data', ['{"text": "去客厅"}', '{"id": null, "text": "去客厅"}',
                                  ' \n{"text": "去客厅", "extra": 1}'])
def test_json_command_without_id_gets_one(new_id, data):
    command = parse_command(data, new_id)
    assert command.error is None and command.text == '去客厅'
    assert command.request_id.startswith('test-')


@pytest.mark.parametrize('data,code,echo_id,reason', [
    ('{"id": "a1", "text": ', INVALID_JSON, 'a1', 'not valid JSON'),
    ('{bad json', INVALID_JSON, None, 'not valid JSON'),
    ('{"id": "a\\"2", "text" "x"}', INVALID_JSON, 'a"2', 'not valid JSON'),
    ('[1, 2]', INVALID_REQUEST, None, 'got a list'),
    ('{"id": "a3"}', INVALID_REQUEST, 'a3', 'has no "text" (keys: id)'),
    ('{"id": "a4", "text": 5}', INVALID_REQUEST, 'a4', '"text" must be a string, got int'),
    ('{"id": "a5", "text": null}', INVALID_REQUEST, 'a5', 'got NoneType'),
    ('{"id": 42, "text": "去客厅"}', INVALID_REQUEST, '42', '"id" must be a string'),
    ('{"id": "", "text": "去客厅"}', INVALID_REQUEST, None, '"id" must not be empty'),
    ('{"id": ["x"], "text": "去客厅"}', INVALID_REQUEST, None, 'got list'),
    ('{"command": "去客厅"}', INVALID_REQUEST, None, 'keys: command'),
])
def test_malformed_json_is_rejected_with_a_reason(new_id, data, code, echo_id, reason):
    command = parse_command(data, new_id)
    assert command.error is not None and command.error.code == code
    assert reason in command.error.message
    if echo_id is None:
        assert command.request_id.startswith('test-')
    else:
        assert command.request_id == echo_id
    assert command.text == data  # echoed so the sender sees what arrived


def test_huge_malformed_message_is_echoed_shortened(new_id):
    command = parse_command('{' + 'x' * 5000, new_id)
    assert command.error.code == INVALID_JSON and len(command.text) < 600


def test_looks_like_json():
    assert looks_like_json('  {"id": 1}') and looks_like_json('[')
    assert not looks_like_json('帮我{拿}水') and not looks_like_json('')


def _commands(count):
    return [Command('c%d' % number, 'text %d' % number) for number in range(1, count + 1)]


def test_fifo_rejects_the_new_command_when_full():
    queue = CommandQueue(2, 'fifo')
    one, two, three = _commands(3)
    assert queue.put(one) == (None, []) and queue.put(two) == (None, [])
    assert queue.put(three) == (QUEUE_FULL, [])
    assert len(queue) == 2
    assert queue.get_batch(5) == [one, two]


def test_latest_drops_the_oldest_waiting_command():
    queue = CommandQueue(2, 'latest')
    one, two, three, four = _commands(4)
    queue.put(one)
    queue.put(two)
    assert queue.put(three) == (None, [one])
    assert queue.put(four) == (None, [two])
    assert queue.get_batch(5) == [three, four]


def test_batches_take_the_oldest_first_up_to_max_batch():
    queue = CommandQueue(10)
    commands = _commands(5)
    for command in commands:
        queue.put(command)
    assert queue.get_batch(2) == commands[:2]
    assert queue.get_batch(1) == commands[2:3]
    assert queue.get_batch(10) == commands[3:]
    assert queue.get_batch(1, timeout=0.01) == []


def test_get_batch_waits_for_a_command():
    queue = CommandQueue(4)
    command = Command('late', 'x')
    threading.Timer(0.1, queue.put, [command]).start()
    started = time.monotonic()
    assert queue.get_batch(4, timeout=5) == [command]
    assert time.monotonic() - started < 4


def test_close_returns_the_waiting_commands_and_wakes_the_worker():
    queue = CommandQueue(4)
    commands = _commands(2)
    for command in commands:
        queue.put(command)
    got = []
    queue2 = CommandQueue(4)
    worker = threading.Thread(target=lambda: got.append(queue2.get_batch(1)))
    worker.start()
    time.sleep(0.05)
    assert queue.close() == commands and queue.closed
    queue2.close()
    worker.join(2)
    assert got == [[]] and not worker.is_alive()
    assert queue.put(Command('after', 'x')) == (SHUTTING_DOWN, [])
    assert queue.get_batch(1) == []


def test_shrinking_keeps_waiting_commands_and_applies_to_new_ones():
    queue = CommandQueue(3, 'fifo')
    commands = _commands(3)
    for command in commands:
        queue.put(command)
    queue.configure(max_size=1, policy='latest')
    new = Command('new', 'x')
    assert queue.put(new) == (None, commands)
    assert queue.get_batch(5) == [new]


@pytest.mark.parametrize('size,policy,message', [
    (0, None, 'queue.max_size must be an integer >= 1, got 0'),
    (-3, None, 'got -3'), (True, None, 'got True'), (2.5, None, 'got 2.5'),
    (None, 'lifo', "queue.policy must be one of fifo, latest, got 'lifo'"),
])
def test_invalid_queue_settings_are_refused(size, policy, message):
    with pytest.raises(ValueError) as raised:
        CommandQueue(2).configure(size, policy)
    assert message in str(raised.value)


def test_queued_ms():
    command = Command('x', 'y', received=10.0)
    assert command.queued_ms(10.25) == pytest.approx(250.0)
    assert command.queued_ms(9.0) == 0.0
