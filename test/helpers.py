"""
What tests of every kind share, without ROS: waiting, free ports, ROS domains, error codes.

Tests wait with :func:`wait_until` (never a hand-written deadline loop), find a port nobody
listens on with :func:`free_port`, hold a ROS_DOMAIN_ID no other test process uses with
:func:`claimed_ros_domain`, and read an answer's error codes with :func:`codes`.
"""

from contextlib import contextmanager
import fcntl
import os
import random
import socket
import tempfile
import time

import pytest

POLL_S = 0.02  # how often a condition is asked again


def wait_until(condition, timeout, failure='the condition never held'):
    """
    Return the first true value of ``condition()`` within ``timeout`` seconds.

    After ``timeout`` the test fails with ``failure`` (a text, or a callable that gives it, so
    the message can show the last state); with ``failure=None`` it returns that last false
    value instead, for a test that looks at what came.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    if not value and failure is not None:
        pytest.fail(failure() if callable(failure) else failure)
    return value


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on (a server that is down)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


# 0-101 is the safe range on Linux (ephemeral ports); below 10 are the ones people use
TEST_DOMAINS = range(10, 102)
DOMAIN_LOCKS = os.path.join(tempfile.gettempdir(), 'robot_llm_planner_test_domains')


@contextmanager
def claimed_ros_domain():
    """
    Yield a ROS_DOMAIN_ID that no other test holds, in this process or another, until exit.

    Each domain is a lock file under DOMAIN_LOCKS, held with flock: two pytest processes on
    one machine would otherwise meet on a domain and answer each other's commands. The lock
    goes with the file descriptor, so a test process that dies frees its domains.
    """
    os.makedirs(DOMAIN_LOCKS, exist_ok=True)
    for domain_id in random.sample(TEST_DOMAINS, len(TEST_DOMAINS)):
        lock = open(os.path.join(DOMAIN_LOCKS, '%d.lock' % domain_id), 'w')
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another test
            lock.close()
            continue
        try:
            yield domain_id
        finally:
            lock.close()
        return
    pytest.fail('every ROS domain %d-%d is held by another test' % (
        TEST_DOMAINS[0], TEST_DOMAINS[-1]))


def codes(answer):
    """Return the error codes of an answer (an /action_plan message), in order."""
    return [error['code'] for error in answer['errors']]
