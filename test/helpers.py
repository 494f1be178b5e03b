"""
What tests of every kind share, without ROS: waiting for a condition, a free port, error codes.

Tests wait with :func:`wait_until` (never a hand-written deadline loop), find a port nobody
listens on with :func:`free_port`, and read an answer's error codes with :func:`codes`.
"""

import socket
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


def codes(answer):
    """Return the error codes of an answer (an /action_plan message), in order."""
    return [error['code'] for error in answer['errors']]
