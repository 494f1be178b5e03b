"""The test helpers that other tests rely on to stay apart: ROS domains across processes."""

from contextlib import ExitStack
import os
import subprocess
import sys

from helpers import claimed_ros_domain, DOMAIN_LOCKS, TEST_DOMAINS
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# another pytest process: claims a domain and prints it, or says why it could not
OTHER_PROCESS = """
import sys
sys.path.insert(0, %r)
from helpers import claimed_ros_domain
with claimed_ros_domain() as domain_id:
    print(domain_id)
""" % HERE


def _claim_in_other_process():
    result = subprocess.run([sys.executable, '-c', OTHER_PROCESS], capture_output=True,
                            text=True, timeout=60)
    return result.returncode, result.stdout.strip(), result.stderr


def test_a_claimed_domain_is_nobody_elses_until_released():
    with claimed_ros_domain() as first, claimed_ros_domain() as second:
        assert first != second and {first, second} <= set(TEST_DOMAINS)
        assert os.path.exists(os.path.join(DOMAIN_LOCKS, '%d.lock' % first))
        for _ in range(20):  # another process never gets either of them
            rc, out, err = _claim_in_other_process()
            assert rc == 0, err
            assert int(out) not in (first, second)


def test_a_process_finds_no_domain_while_another_holds_them_all():
    with ExitStack() as stack:  # every domain no other process holds now
        held = []
        while True:
            try:
                held.append(stack.enter_context(claimed_ros_domain()))
            except pytest.fail.Exception:  # the remaining ones are held elsewhere
                break
        assert held
        rc, out, err = _claim_in_other_process()
        assert rc != 0 and 'every ROS domain 10-101 is held by another test' in out + err
    rc, out, err = _claim_in_other_process()  # all released on leaving
    assert rc == 0 and int(out) in TEST_DOMAINS, err
