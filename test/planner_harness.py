"""
Test helpers for planner_node over real ROS 2 (rclpy + Fast DDS), shared by the node tests.

The ROS-free doubles (the fake OpenAI server) are in test/doubles.py, the waiting and the
error codes in test/helpers.py.

- :func:`ros_domain`: a ROS_DOMAIN_ID of its own (set in os.environ before rclpy.init and in the
  environment handed to subprocesses), an rclpy context, a test node spun in a thread, a
  :class:`~robot_llm_planner.ros.client.PlanClient` and a status recorder;
- :class:`NodeProcess`: the BUILT planner_node executable started as a subprocess with a
  parameters YAML written by the test plus ``-p`` overrides;
- :class:`LifecycleClient` and :class:`DiagnosticsRecorder`: the managed node's lifecycle
  services as ``ros2 lifecycle`` calls them, and /diagnostics as rqt_robot_monitor reads it.
"""

from contextlib import contextmanager
import json
import os
import signal
import subprocess
import threading
import time

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray
from doubles import ANSWERED
from helpers import claimed_ros_domain, wait_until
import jsonschema
from lifecycle_msgs.srv import ChangeState, GetState
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from robot_llm_planner.ros.client import PlanClient
from robot_llm_planner.ros.interface import diagnostics_qos, status_qos
from std_msgs.msg import String
import yaml

PACKAGE = 'robot_llm_planner'


def executable(name):
    """Return the path of an installed console script (the built workspace must be sourced)."""
    try:
        prefix = get_package_prefix(PACKAGE)
    except Exception as exc:  # PackageNotFoundError: not built or not sourced
        pytest.fail('%s is not installed: run the tests with `make test` (%s)' % (PACKAGE, exc))
    path = os.path.join(prefix, 'lib', PACKAGE, name)
    if not os.access(path, os.X_OK):
        pytest.fail('%s is missing: run `make build`' % path)
    return path


def share_path(*parts):
    """Return a path in the installed share directory of the package."""
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def schema_validator():
    """Return a validator for config/action_plan.schema.json."""
    with open(share_path('config', 'action_plan.schema.json'), encoding='utf-8') as stream:
        return jsonschema.Draft202012Validator(json.load(stream))


class StatusRecorder:
    """Keep every status message of the planner (subscribed transient local, like the node)."""

    def __init__(self, node, topic='/planner_status'):
        """Subscribe to ``topic``."""
        self.messages = []
        self._lock = threading.Lock()
        self._subscription = node.create_subscription(String, topic, self._on_status,
                                                      status_qos())

    def _on_status(self, msg):
        with self._lock:
            self.messages.append(json.loads(msg.data))

    def latest(self):
        """Return the last status, or None."""
        with self._lock:
            return self.messages[-1] if self.messages else None

    def states(self):
        """Return the states seen, consecutive repeats collapsed."""
        with self._lock:
            states = [message['state'] for message in self.messages]
        return [state for index, state in enumerate(states)
                if index == 0 or states[index - 1] != state]

    def wait_for(self, predicate, timeout=ANSWERED):
        """Wait until the latest status satisfies ``predicate``; return it."""
        def matched():
            latest = self.latest()
            return latest if latest is not None and predicate(latest) else None
        return wait_until(matched, timeout,
                          lambda: 'status never matched; last: %s' % self.latest())


def _wait_future(future, timeout):
    wait_until(future.done, timeout, 'no response within %g s' % timeout)
    return future.result()


class LifecycleClient:
    """Call a managed node's change_state and get_state services, as `ros2 lifecycle` does."""

    def __init__(self, node, target='/planner_node'):
        """Create the service clients on the test node."""
        self._change = node.create_client(ChangeState, target + '/change_state')
        self._get = node.create_client(GetState, target + '/get_state')

    def get(self, timeout=30):
        """Return the node's lifecycle state label (`ros2 lifecycle get`)."""
        assert self._get.wait_for_service(timeout_sec=timeout), 'no get_state service'
        return _wait_future(self._get.call_async(GetState.Request()), timeout).current_state.label

    def set_async(self, transition, timeout=30):
        """Request a transition by label (`ros2 lifecycle set`); return the future."""
        assert self._change.wait_for_service(timeout_sec=timeout), 'no change_state service'
        request = ChangeState.Request()
        request.transition.label = transition
        return self._change.call_async(request)

    def change(self, transition, timeout=120):
        """Request a transition by label and wait; return whether it succeeded."""
        return _wait_future(self.set_async(transition), timeout).success

    @staticmethod
    def wait(future, timeout=120):
        """Wait for a transition requested with set_async; return whether it succeeded."""
        return _wait_future(future, timeout).success


class DiagnosticsRecorder:
    """Keep every planner status received on /diagnostics as a plain dict."""

    def __init__(self, node, name='planner_node'):
        """Subscribe to /diagnostics (default QoS, like rqt_robot_monitor)."""
        self.name = name
        self.messages = []
        self._lock = threading.Lock()
        self._subscription = node.create_subscription(DiagnosticArray, '/diagnostics',
                                                      self._on_array, diagnostics_qos())

    def _on_array(self, msg):
        for status in msg.status:
            if status.name != self.name:
                continue
            level = status.level
            entry = {'level': ('OK', 'WARN', 'ERROR', 'STALE')[
                         level[0] if isinstance(level, bytes) else int(level)],
                     'message': status.message, 'hardware_id': status.hardware_id,
                     'values': {pair.key: pair.value for pair in status.values},
                     'received': time.monotonic()}
            with self._lock:
                self.messages.append(entry)

    def wait_for(self, predicate, timeout=ANSWERED, fresh=True):
        """Wait until a status (received from now on if ``fresh``) satisfies ``predicate``."""
        with self._lock:
            seen = len(self.messages) if fresh else 0

        def matched():
            with self._lock:
                return next((entry for entry in self.messages[seen:] if predicate(entry)), None)

        def last():
            with self._lock:
                return '/diagnostics never matched; last: %s' % (
                    self.messages[-1] if self.messages else None)
        return wait_until(matched, timeout, last)


# Discovery stays on this machine: the range variable from Iron on, the older flag on Humble.
LOCALHOST_ONLY = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
if os.environ.get('ROS_DISTRO') == 'humble':
    LOCALHOST_ONLY['ROS_LOCALHOST_ONLY'] = '1'


class RosDomain:
    """An rclpy context on its own domain with a spinning test node."""

    def __init__(self, domain_id):
        """Initialize rclpy on ``domain_id`` and start spinning a test node."""
        self.domain_id = domain_id
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED='1',
                        **LOCALHOST_ONLY)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node('planner_test_%d' % os.getpid(), context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context shut down under the executor
                return

    def client(self, namespace=''):
        """Return a PlanClient on the planner's topics (spun by the domain's thread)."""
        return PlanClient(self.node, namespace + '/command', namespace + '/action_plan')

    def status(self, namespace=''):
        """Return a StatusRecorder on the planner's status topic."""
        return StatusRecorder(self.node, namespace + '/planner_status')

    def lifecycle(self, node='/planner_node'):
        """Return a LifecycleClient on the managed node's lifecycle services."""
        return LifecycleClient(self.node, node)

    def diagnostics(self):
        """Return a DiagnosticsRecorder on /diagnostics."""
        return DiagnosticsRecorder(self.node)

    def close(self):
        """Stop spinning and shut the context down."""
        self.context.try_shutdown()
        self._thread.join(5)
        self.node.destroy_node()


@contextmanager
def ros_domain():
    """
    Yield a RosDomain on a ROS_DOMAIN_ID no other test holds (os.environ restored afterwards).

    Never one held already, here or in another test process: a node on a shared domain would
    answer another test's commands.
    """
    names = ('ROS_DOMAIN_ID',) + tuple(LOCALHOST_ONLY)
    saved = {name: os.environ.get(name) for name in names}
    with claimed_ros_domain() as domain_id:
        os.environ['ROS_DOMAIN_ID'] = str(domain_id)
        os.environ.update(LOCALHOST_ONLY)
        domain = RosDomain(domain_id)
        try:
            yield domain
        finally:
            domain.close()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class NodeProcess:
    """An installed node executable (planner_node unless told) in a subprocess."""

    def __init__(self, domain, directory, parameters=None, overrides=(), ros_args=(),
                 params_file=None, node='planner_node'):
        """Write ``parameters`` as a YAML params file and start the node with ``overrides``."""
        directory = str(directory)
        os.makedirs(directory, exist_ok=True)
        if params_file is None:
            params_file = os.path.join(directory, 'params.yaml')
            with open(params_file, 'w', encoding='utf-8') as stream:
                yaml.safe_dump({'/**': {'ros__parameters': _nest(parameters or {})}}, stream,
                               allow_unicode=True)
        self.node = node
        command = [executable(node), '--ros-args', '--params-file', params_file]
        for name, value in overrides:
            command += ['-p', '%s:=%s' % (name, value)]
        command += list(ros_args)
        self.stdout_path = os.path.join(directory, 'stdout.log')
        self.stderr_path = os.path.join(directory, 'stderr.log')
        with open(self.stdout_path, 'w') as out, open(self.stderr_path, 'w') as err:
            self.process = subprocess.Popen(command, env=domain.env, stdout=out, stderr=err)

    def alive(self):
        """Return True while the process runs."""
        return self.process.poll() is None

    def stderr(self):
        """Return the node's log (its standard error)."""
        with open(self.stderr_path, encoding='utf-8', errors='replace') as stream:
            return stream.read()

    def stop(self, signum=signal.SIGINT, timeout=30):
        """Send ``signum`` and return the exit code."""
        if self.alive():
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail('%s did not exit %d s after signal %d:\n%s'
                        % (self.node, timeout, signum, self.stderr()[-3000:]))

    def kill(self):
        """Kill the process if it still runs (test teardown)."""
        if self.alive():
            self.process.kill()
            self.process.wait()


def flat_parameters(tree, prefix=''):
    """Return a parameters YAML's nested mapping as {'group.name': value}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_parameters(value, prefix + key + '.'))
        else:
            flat[prefix + key] = value
    return flat


def _nest(flat):
    nested = {}
    for name, value in flat.items():
        *parents, leaf = name.split('.')
        level = nested
        for parent in parents:
            level = level.setdefault(parent, {})
        level[leaf] = value
    return nested


def wait_for_answers(client, ids, timeout=ANSWERED):
    """Wait for one answer per id; fail naming the missing ones."""
    answers = client.wait_for_answers(ids, timeout)
    missing = [request_id for request_id in ids if request_id not in answers]
    if missing:
        pytest.fail('no answer to %s within %g s' % (missing, timeout))
    return answers


def assert_exactly_one_answer(client, ids, settle=0.5):
    """Check, after ``settle`` seconds more, that each id got exactly one answer."""
    time.sleep(settle)
    received = [answer['id'] for answer in client.received()]
    counts = {request_id: received.count(request_id) for request_id in ids}
    assert counts == dict.fromkeys(ids, 1), counts
