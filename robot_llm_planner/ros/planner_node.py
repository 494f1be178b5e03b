"""
planner_node: the ROS 2 shell around the planner (``ros2 run robot_llm_planner planner_node``).

Commands come in on ``topics.command`` (std_msgs/String, plain text or JSON
``{"id": "...", "text": "..."}``); every command gets exactly one answer on ``topics.plan``
(std_msgs/String carrying the /action_plan JSON of :mod:`robot_llm_planner.core.message`). The
node's state is published on ``topics.status``. See the README section "ROS interface".

Threads: the executor (one thread) runs the subscription, the 1 Hz status timer and the
parameter services; a worker thread loads the model and plans batches taken from a bounded
:class:`~robot_llm_planner.core.command.CommandQueue`, so the node stays responsive while the
model generates. The planner itself is ROS-free (:mod:`robot_llm_planner.core.planner`).
"""

import json
import os
import signal
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
import rclpy
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from robot_llm_planner.core.backend import EngineError
from robot_llm_planner.core.command import (Command, ECHO_CHARS, IdFactory, parse_command,
                                            QUEUE_FULL, shown_command, SHUTTING_DOWN, SUPERSEDED)
from robot_llm_planner.core.message import plan_message, STATUSES, to_json
from robot_llm_planner.core.parameters import (check_value, default_value, load_config, NodeConfig,
                                               PARAMETERS, PARAMETERS_BY_NAME)
from robot_llm_planner.core.plan import PlanError
from robot_llm_planner.core.skills import default_skills_path
from robot_llm_planner.ros.command_queue import CommandQueue
from std_msgs.msg import String

NODE_NAME = 'planner_node'
STATES = ('loading', 'ready', 'busy', 'error')
STATUS_PERIOD_S = 1.0
# On shutdown, how long the batch being planned may take to finish before it is answered
# rejected (launch escalates SIGINT to SIGTERM after 5 s).
SHUTDOWN_GRACE_S = 2.0
# A model load that failed for a reason that may pass (a remote server down or overloaded) is
# retried after these many seconds, doubling up to the maximum.
LOAD_RETRY_S = 1.0
LOAD_RETRY_MAX_S = 30.0
# How long the node waits for subscribers to acknowledge its last answers and status before it
# exits (grace + flush + teardown stay under launch's 5 s before it escalates to SIGKILL).
FLUSH_TIMEOUT_S = 1.5


def command_qos(depth: int) -> QoSProfile:
    """Return the QoS of the command subscription (and of command publishers); 0: keep all."""
    if depth == 0:
        return QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=1,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def plan_qos(depth: int) -> QoSProfile:
    """
    Return the QoS of the plan publisher: reliable, transient local, keep last ``depth``.

    Transient local keeps the last answers for a subscriber that matches late (a client that
    sent its command just after discovery); volatile subscribers, the ROS default, still get
    only new answers, so a behavior tree started later is not handed old plans.
    """
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def status_qos() -> QoSProfile:
    """Return the QoS of the status topic: the latest state, kept for late joiners."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _settings_model(config: NodeConfig) -> Dict[str, str]:
    settings = config.settings
    if settings.backend == 'openai':
        return {'backend': 'openai', 'base': settings.remote_base_url,
                'adapter': settings.remote_model}
    adapters = [part.strip() for part in settings.adapter_path.split(',') if part.strip()]
    return {'backend': settings.backend, 'base': settings.model_path,
            'adapter': ','.join(adapters)}


class PlannerNode(Node):
    """Plans every command received and publishes one answer for each."""

    def __init__(self, **kwargs) -> None:
        """Declare the parameters, create the topics and start loading the model."""
        super().__init__(NODE_NAME, **kwargs)
        self._lock = threading.RLock()      # state, counts, in-flight batch, answered flags
        self._publish_lock = threading.Lock()
        self._closing = False
        self._stopping = threading.Event()  # set at shutdown: ends load retries at once
        self._closed = False
        self._state = 'loading'
        self._error = ''
        self._error_code = ''
        self._planner = None   # set once the model is loaded
        self._checker = None   # the planner as soon as it is built: checks commands
        self._in_flight: List[Command] = []
        self._counts = dict.fromkeys(STATUSES, 0)
        self._last_latency_ms: Optional[float] = None
        self._new_id = IdFactory(self.get_name())

        values = self._declare_parameters()
        config, errors = load_config(values)
        if not config.settings.skills_file:
            config.settings.skills_file = default_skills_path()
        self._config = config
        self._model = _settings_model(config)
        self._queue = CommandQueue(config.queue_max_size, config.queue_policy)

        self._status_pub = self._create_topic(
            'publisher', 'topics.status', config.status_topic, status_qos(), errors)
        self._plan_pub = self._create_topic(
            'publisher', 'topics.plan', config.plan_topic, plan_qos(config.plan_depth), errors)
        self._command_sub = self._create_topic(
            'subscription', 'topics.command', config.command_topic,
            command_qos(config.command_depth), errors)
        if errors:
            self._fail('invalid parameters: ' + '; '.join(errors), 'invalid_parameters')
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._timer = self.create_timer(STATUS_PERIOD_S, self.publish_status)
        self.get_logger().info(
            'commands on %s, plans on %s, status on %s; %s' % (
                self._command_sub.topic_name, self._plan_pub.topic_name,
                self._status_pub.topic_name, self._describe_model()))
        self.publish_status()
        self._worker = threading.Thread(target=self._work, name='planner-worker', daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ set-up
    def _declare_parameters(self) -> Dict[str, object]:
        values = {}
        for parameter in PARAMETERS:
            default = default_value(parameter)
            if parameter.name == 'skills_file':
                default = default_skills_path()
            descriptor = ParameterDescriptor(
                description=parameter.description, read_only=not parameter.dynamic,
                # typed by node_config, so a wrong type is reported instead of raised
                dynamic_typing=True,
                additional_constraints=self._constraints(parameter))
            values[parameter.name] = self.declare_parameter(
                parameter.name, default, descriptor).value
            self.get_logger().debug('%s = %r' % (parameter.name, values[parameter.name]))
        overrides = getattr(self, '_parameter_overrides', None) or {}
        for name in sorted(name for name in overrides if not self.has_parameter(name)):
            self.get_logger().warning('ignoring unknown parameter %r (a typo?)' % name)
        return values

    @staticmethod
    def _constraints(parameter) -> str:
        parts = []
        if parameter.choices:
            parts.append('one of: ' + ', '.join(parameter.choices))
        if parameter.minimum is not None:
            parts.append('>= %g' % parameter.minimum)
        if parameter.maximum is not None:
            parts.append('<= %g' % parameter.maximum)
        if parameter.positive:
            parts.append('> 0')
        if not parameter.dynamic:
            parts.append('read at start-up')
        return '; '.join(parts)

    def _create_topic(self, kind: str, parameter: str, name: str, qos: QoSProfile,
                      errors: List[str]):
        default = default_value(PARAMETERS_BY_NAME[parameter])
        for topic in (name, default):
            try:
                if kind == 'publisher':
                    return self.create_publisher(String, topic, qos)
                return self.create_subscription(String, topic, self._on_command, qos)
            except Exception as exc:  # an invalid topic name: fall back to the default
                errors.append('%s %r is not a valid topic name (%s); using %r' % (
                    parameter, topic, exc, default))
        raise RuntimeError('cannot create the %s topic' % parameter)  # pragma: no cover

    def _describe_model(self) -> str:
        model = self._model
        text = '%s backend, base %s' % (model.get('backend'), model.get('base') or '(none)')
        if model.get('adapter'):
            text += ', adapter %s' % model['adapter']
        return text

    # ------------------------------------------------------------------ state and status
    def _fail(self, message: str, code: str) -> None:
        with self._lock:
            self._state = 'error'
            self._error = message
            self._error_code = code
        self.get_logger().error(message)

    def _set_state(self, state: str) -> None:
        with self._lock:
            if self._state != 'error':
                self._state = state
        self.publish_status()

    def status(self) -> dict:
        """Return the status message (a dict)."""
        with self._lock:
            return {
                'state': self._state,
                'queue_depth': len(self._queue),
                'queue_max_size': self._queue.max_size,
                'queue_policy': self._queue.policy,
                'in_flight': len(self._in_flight),
                'model': dict(self._model),
                'last_latency_ms': self._last_latency_ms,
                'answered': sum(self._counts.values()),
                'rejected': self._counts['rejected'],
                'counts': dict(self._counts),
                'error': self._error,
                'node': self.get_fully_qualified_name(),
                'stamp': time.time(),
            }

    def publish_status(self) -> None:
        """Publish the current status (on every change and from the 1 Hz timer)."""
        with self._publish_lock:
            if self._closed:
                return
            try:
                self._status_pub.publish(String(data=json.dumps(self.status(),
                                                                ensure_ascii=False)))
            except Exception as exc:  # the context is going away
                self.get_logger().debug('status not published: %s' % exc)

    # ------------------------------------------------------------------ answers
    def _answer(self, command: Command, message: dict) -> bool:
        """Publish the one answer of ``command``; False if it was answered already."""
        with self._lock:
            if command.answered:
                return False
            command.answered = True
            self._counts[message['status']] += 1
            latency = message.get('timing', {}).get('total_ms')
            if latency is not None and message['status'] != 'rejected':
                self._last_latency_ms = round(latency, 1)
        logger = self.get_logger()
        summary = '[%s] %s' % (message['id'], message['status'])
        if message['errors']:
            summary += ' (%s)' % ', '.join(error['code'] for error in message['errors'])
        if message['status'] in ('ok', 'invalid'):
            summary += ' in %.0f ms' % message['timing'].get('total_ms', 0.0)
        logger.info('%s: %s' % (summary, message['command'][:80]))
        with self._publish_lock:
            if self._closed:
                logger.error('answer to %s lost: the node is closed' % message['id'])
                return False
            try:
                self._plan_pub.publish(String(data=to_json(message)))
            except Exception as exc:
                logger.error('answer to %s not published: %s' % (message['id'], exc))
                return False
        return True

    def _shown(self, command: Command) -> str:
        # what answers echo: cleaned and shortened like the planner's own answers
        return shown_command(command.text, self._config.settings.max_command_chars)

    def _reply(self, command: Command, status: str, code: str, text: str) -> bool:
        message = plan_message(command.request_id, self._shown(command), status,
                               errors=[PlanError(code, text)], model=self._model)
        return self._answer(command, message)

    def _reject(self, command: Command, code: str, text: str) -> bool:
        return self._reply(command, 'rejected', code, text)

    def _answer_error(self, command: Command) -> bool:
        with self._lock:
            error, code = self._error, self._error_code
        return self._reply(command, 'error', code, error)

    # ------------------------------------------------------------------ commands in
    def _on_command(self, msg: String) -> None:
        command = None
        try:
            command = parse_command(msg.data, self._new_id)
            self._take(command)
        except Exception as exc:  # a bug must not lose the command or stop the executor
            if command is None:
                command = Command(self._new_id(), str(msg.data)[:ECHO_CHARS])
            self.get_logger().error('command %s: %s: %s' % (command.request_id,
                                                            type(exc).__name__, exc))
            self._reply(command, 'error', 'internal_error', '%s: %s' % (type(exc).__name__, exc))
        self.publish_status()

    def _take(self, command: Command) -> None:
        if command.error is not None:
            self._answer(command, plan_message(command.request_id, self._shown(command),
                                               'rejected', errors=[command.error],
                                               model=self._model))
            return
        checker = self._checker
        reason = checker.check(command.text) if checker is not None else None
        refused, dropped = None, []
        # The state is read and the command queued under the lock that _fail takes: a load
        # failing meanwhile either sees this command in the queue (and answers it) or this
        # call sees the error. Nothing is published while the lock is held.
        with self._lock:
            closing = self._closing
            state, error, code = self._state, self._error, self._error_code
            if not closing and state != 'error' and reason is None:
                refused, dropped = self._queue.put(command)
        if closing:
            self._reject(command, SHUTTING_DOWN, 'the planner node is shutting down')
        elif state == 'error':
            self._reply(command, 'error', code, error)
        elif reason is not None:
            self._answer(command, plan_message(command.request_id, self._shown(command),
                                               'rejected', errors=[reason], model=self._model))
        else:
            self._answer_refused(command, refused, dropped)

    def _answer_refused(self, command: Command, refused: Optional[str],
                        dropped: List[Command]) -> None:
        for old in dropped:
            self._reject(old, SUPERSEDED, 'dropped from the full queue (queue.policy latest, '
                         'queue.max_size %d) for the newer command %s'
                         % (self._queue.max_size, command.request_id))
        if refused == QUEUE_FULL:
            self._reject(command, QUEUE_FULL, 'the queue is full (queue.max_size %d, '
                         'queue.policy fifo); try again later' % self._queue.max_size)
        elif refused == SHUTTING_DOWN:
            self._reject(command, SHUTTING_DOWN, 'the planner node is shutting down')

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        if self._state != 'error':
            self._load()
        while True:
            batch = self._queue.get_batch(self._config.queue_max_batch)
            if not batch:
                return  # closed
            with self._lock:
                self._in_flight = batch
            self._set_state('busy')
            try:
                self._plan(batch)
            except Exception as exc:  # never leave a command unanswered
                for command in batch:
                    self._reply(command, 'error', 'engine_error',
                                '%s: %s' % (type(exc).__name__, exc))
            with self._lock:
                self._in_flight = []
            self._set_state('busy' if len(self._queue) else 'ready')

    def _load(self) -> None:
        from robot_llm_planner.inference.build import build_planner
        started = time.monotonic()
        retry_s = LOAD_RETRY_S
        while True:
            try:
                planner = build_planner(self._config.settings)
                with self._lock:
                    self._model = planner.backend.describe()
                self._checker = planner
                planner.load()
                break
            except Exception as exc:  # EngineError, SkillError, ValueError or a library failure
                detail = str(exc) if isinstance(exc, (EngineError, ValueError)) \
                    else '%s: %s' % (type(exc).__name__, exc)
                if not getattr(exc, 'transient', False):
                    self._fail('cannot load the model: %s' % detail, 'model_load_failed')
                    self.publish_status()
                    return
                # e.g. the remote server is down: say so, answer commands error, try again
                self._fail('cannot load the model: %s; retrying in %.0f s' % (detail, retry_s),
                           'model_load_failed')
                self._answer_waiting_with_error()
                self.publish_status()
                if self._stopping.wait(retry_s):
                    return
                retry_s = min(2 * retry_s, LOAD_RETRY_MAX_S)
        self._planner = planner
        self.get_logger().info('model loaded in %.1f s: %s'
                               % (time.monotonic() - started, self._describe_model()))
        with self._lock:
            self._state, self._error, self._error_code = 'ready', '', ''
        self._set_state('ready')

    def _answer_waiting_with_error(self) -> None:
        # Commands queued while loading are not kept waiting through the retries.
        while True:
            batch = self._queue.get_batch(self._queue.max_size, timeout=0)
            if not batch:
                return
            for command in batch:
                self._answer_error(command)

    def _plan(self, batch: List[Command]) -> None:
        if self._state == 'error':
            for command in batch:
                self._answer_error(command)
            return
        now = time.monotonic()
        results = self._planner.plan_batch([command.text for command in batch],
                                           queued_ms=[command.queued_ms(now) for command in batch])
        for command, result in zip(batch, results):
            if self._closing and any(error.code == 'cancelled' for error in result.errors):
                result.errors = [PlanError(SHUTTING_DOWN, 'the planner node shut down while '
                                           'planning this command (generation cancelled)')]
            self._answer(command, result.message(command.request_id, self._model))

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes = {}
        for item in parameters:
            spec = PARAMETERS_BY_NAME.get(item.name)
            if spec is None:
                continue  # not ours (use_sim_time, ...)
            if not spec.dynamic:
                return SetParametersResult(
                    successful=False, reason='%s is read at start-up; restart the node to '
                    'change it' % item.name)
            value, error = check_value(spec, item.value)
            if error:
                return SetParametersResult(successful=False, reason=error)
            changes[item.name] = value
        if 'queue.max_size' in changes or 'queue.policy' in changes:
            self._queue.configure(changes.get('queue.max_size'), changes.get('queue.policy'))
        if 'queue.max_batch' in changes:
            self._config.queue_max_batch = changes['queue.max_batch']
        if changes:
            self.get_logger().info('parameters changed: %s' % ', '.join(
                '%s=%r' % item for item in sorted(changes.items())))
            self.publish_status()
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ shutdown
    def begin_shutdown(self) -> None:
        """Refuse new commands and answer the queued ones rejected (node_shutting_down)."""
        self._closing = True
        self._stopping.set()
        for command in self._queue.close():
            self._reject(command, SHUTTING_DOWN, 'the planner node shut down before planning '
                         'this command')
        planner = self._checker
        if planner is not None:
            planner.cancel()  # the batch in progress stops after its current token
        self.publish_status()

    def finish_shutdown(self, grace_s: float = SHUTDOWN_GRACE_S,
                        spin: Optional[Callable[[float], None]] = None) -> bool:
        """
        Let the cancelled batch end, answer it rejected if it does not in time, flush.

        ``spin(timeout_s)`` runs the executor once (``executor.spin_once``): called between
        the waits, it keeps answering commands that arrive meanwhile ``node_shutting_down``.
        Returns True when the worker thread has stopped.
        """
        def wait(seconds: float) -> None:
            if spin is not None:
                spin(seconds)
            else:
                time.sleep(seconds)

        deadline = time.monotonic() + grace_s
        while self._worker.is_alive() and time.monotonic() < deadline:
            wait(0.05)
        with self._lock:
            in_flight = list(self._in_flight)
        for command in in_flight:
            self._reject(command, SHUTTING_DOWN, 'the planner node shut down while planning '
                         'this command')
        self.publish_status()
        # Until every subscriber acknowledged both publishers' last messages (or the time is
        # up); answers published while waiting are flushed by the same loop.
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self._acked(publisher) for publisher in (self._plan_pub, self._status_pub)):
                break
            wait(0.02)
        with self._publish_lock:
            self._closed = True
        return not self._worker.is_alive()

    def _acked(self, publisher) -> bool:
        acked = getattr(publisher, 'wait_for_all_acked', None)
        if acked is None:  # pragma: no cover - rclpy without wait_for_all_acked
            return False
        try:
            return bool(acked(Duration(seconds=0.02)))
        except Exception as exc:  # the context is going away
            self.get_logger().debug('flush of %s: %s' % (publisher.topic_name, exc))
            return True


def _install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum, frame):
        stop.set()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _init_ros(args) -> None:
    try:
        from rclpy.signals import SignalHandlerOptions
    except ImportError:  # pragma: no cover - an rclpy without signal handler options
        rclpy.init(args=args)
    else:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def main(args: Optional[List[str]] = None) -> int:
    """Run planner_node until SIGINT or SIGTERM; return 0 after a clean shutdown."""
    stop = threading.Event()
    _install_signal_handlers(stop)
    try:
        _init_ros(args)
    except Exception as exc:
        print('planner_node: cannot initialize ROS: %s' % exc, file=sys.stderr)
        return 1
    # rclpy may install its own handlers on init; ours shut down in order (see README).
    _install_signal_handlers(stop)
    node = None
    worker_stopped = True
    try:
        node = PlannerNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        node.get_logger().info('shutting down')
        node.begin_shutdown()
        # commands that arrived but were not taken yet are answered rejected as well
        deadline = time.monotonic() + 0.3
        while rclpy.ok() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        worker_stopped = node.finish_shutdown(
            spin=lambda seconds: executor.spin_once(timeout_sec=seconds))
        executor.remove_node(node)
    except Exception as exc:  # a ROS failure at start-up (e.g. a bad remapping)
        print('planner_node: %s: %s' % (type(exc).__name__, exc), file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if not worker_stopped:
        # the model is still generating for nobody: do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
