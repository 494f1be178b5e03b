"""
The planner service: the life of a command inside planner_node, without ROS.

:class:`PlannerService` takes the text of each /command message, answers it or queues it, and
plans the queue on its worker thread; it loads the model (retrying a failure that may pass),
refuses commands while it cannot plan them, and shuts down in order. Every answer, whatever
path it takes, is built by :meth:`PlannerService._answer`, and every command gets exactly one.
The node hands it two callables, ``publish_answer(message)`` and ``publish_status(status)``,
and forwards messages to it; so this module imports no rclpy and is unit-tested without DDS.
"""

import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from robot_llm_planner.core.backend import EngineError
from robot_llm_planner.core.command import (Command, ECHO_CHARS, IdFactory, parse_command,
                                            QUEUE_FULL, shown_command, SHUTTING_DOWN, SUPERSEDED)
from robot_llm_planner.core.message import plan_message, STATUSES
from robot_llm_planner.core.parameters import NodeConfig
from robot_llm_planner.core.plan import PlanError
from robot_llm_planner.ros.command_queue import CommandQueue

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

INVALID_PARAMETERS = 'invalid_parameters'
MODEL_LOAD_FAILED = 'model_load_failed'


def settings_model(config: NodeConfig) -> Dict[str, str]:
    """Return what the settings ask to serve, as answers name it before the model is built."""
    settings = config.settings
    if settings.backend == 'openai':
        return {'backend': 'openai', 'base': settings.remote_base_url,
                'adapter': settings.remote_model}
    adapters = [part.strip() for part in settings.adapter_path.split(',') if part.strip()]
    return {'backend': settings.backend, 'base': settings.model_path,
            'adapter': ','.join(adapters)}


def describe_model(model: Dict[str, str]) -> str:
    """Return the served model in words, for the log."""
    text = '%s backend, base %s' % (model.get('backend'), model.get('base') or '(none)')
    if model.get('adapter'):
        text += ', adapter %s' % model['adapter']
    return text


class PlannerService:
    """
    Answers every command once: queued and planned by a worker thread, or refused at once.

    ``errors`` are the reasons the parameters are unusable (from ``load_config``): the service
    then answers every command ``error`` with them. ``logger`` has ``debug``, ``info``,
    ``warning`` and ``error`` (an rclpy logger or a :mod:`logging` one).
    """

    def __init__(self, config: NodeConfig, publish_answer: Callable[[dict], None],
                 publish_status: Callable[[dict], None], logger, node_name: str = '/planner_node',
                 errors: Sequence[str] = ()) -> None:
        """Hold the configuration; nothing loads until :meth:`start`."""
        self.config = config
        self.node_name = node_name
        self._publish_answer = publish_answer
        self._publish_status = publish_status
        self._logger = logger
        self._lock = threading.RLock()       # state, counts, in-flight batch, answered flags
        self._publish_lock = threading.Lock()
        self._closing = False
        self._stopping = threading.Event()   # set at shutdown: ends load retries at once
        self._closed = False
        self._state = 'loading'
        self._error = ''
        self._error_code = ''
        self._planner = None   # set once the model is loaded
        self._checker = None   # the planner as soon as it is built: checks commands
        self._in_flight: List[Command] = []
        self._counts = dict.fromkeys(STATUSES, 0)
        self._last_latency_ms: Optional[float] = None
        self._new_id = IdFactory(node_name.rsplit('/', 1)[-1])
        self._model = settings_model(config)
        self._queue = CommandQueue(config.queue_max_size, config.queue_policy)
        self._worker = threading.Thread(target=self._work, name='planner-worker', daemon=True)
        if errors:
            self._fail('invalid parameters: ' + '; '.join(errors), INVALID_PARAMETERS)

    @property
    def model(self) -> Dict[str, str]:
        """Return what is served: backend, base model and adapter(s)."""
        with self._lock:
            return dict(self._model)

    def start(self) -> None:
        """Start the worker thread: it loads the model, then plans the queue."""
        self._worker.start()

    # ------------------------------------------------------------------ state and status
    def _fail(self, message: str, code: str) -> None:
        with self._lock:
            self._state = 'error'
            self._error = message
            self._error_code = code
        self._logger.error(message)

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
                'node': self.node_name,
                'stamp': time.time(),
            }

    def publish_status(self) -> None:
        """Publish the current status (on every change; the node's timer calls it at 1 Hz)."""
        with self._publish_lock:
            if self._closed:
                return
            try:
                self._publish_status(self.status())
            except Exception as exc:  # the context is going away
                self._logger.debug('status not published: %s' % exc)

    # ------------------------------------------------------------------ answers
    def _answer(self, command: Command, status: str, errors: Sequence[PlanError] = (),
                message: Optional[dict] = None) -> bool:
        """
        Publish the one answer of ``command``; False if it was answered already (or lost).

        ``message`` is a planned answer (the planner's result); without it the answer is a
        ``status`` with ``errors`` and the command echoed as the planner would echo it.
        """
        with self._lock:
            if command.answered:
                return False
            command.answered = True
            if message is None:
                shown = shown_command(command.text, self.config.settings.max_command_chars)
                message = plan_message(command.request_id, shown, status, errors=list(errors),
                                       model=self._model)
            self._counts[message['status']] += 1
            latency = message.get('timing', {}).get('total_ms')
            if latency is not None and message['status'] != 'rejected':
                self._last_latency_ms = round(latency, 1)
        summary = '[%s] %s' % (message['id'], message['status'])
        if message['errors']:
            summary += ' (%s)' % ', '.join(error['code'] for error in message['errors'])
        if message['status'] in ('ok', 'invalid'):
            summary += ' in %.0f ms' % message['timing'].get('total_ms', 0.0)
        self._logger.info('%s: %s' % (summary, message['command'][:80]))
        with self._publish_lock:
            if self._closed:
                self._logger.error('answer to %s lost: the node is closed' % message['id'])
                return False
            try:
                self._publish_answer(message)
            except Exception as exc:
                self._logger.error('answer to %s not published: %s' % (message['id'], exc))
                return False
        return True

    def _reject(self, command: Command, code: str, text: str) -> bool:
        return self._answer(command, 'rejected', [PlanError(code, text)])

    def _answer_error(self, command: Command) -> bool:
        with self._lock:
            error, code = self._error, self._error_code
        return self._answer(command, 'error', [PlanError(code, error)])

    # ------------------------------------------------------------------ commands in
    def submit(self, data: str) -> None:
        """Take the text of one /command message: answer it now or queue it."""
        command = None
        try:
            command = parse_command(data, self._new_id)
            self._take(command)
        except Exception as exc:  # a bug must not lose the command or stop the executor
            if command is None:
                command = Command(self._new_id(), str(data)[:ECHO_CHARS])
            reason = '%s: %s' % (type(exc).__name__, exc)
            self._logger.error('command %s: %s' % (command.request_id, reason))
            self._answer(command, 'error', [PlanError('internal_error', reason)])
        self.publish_status()

    def _take(self, command: Command) -> None:
        if command.error is not None:
            self._answer(command, 'rejected', [command.error])
            return
        checker = self._checker
        reason = checker.check(command.text) if checker is not None else None
        refused, dropped = None, []
        # The state is read and the command queued under the lock that _fail takes: a load
        # failing meanwhile either sees this command in the queue (and answers it) or this
        # call sees the error. Nothing is published while the lock is held.
        with self._lock:
            closing = self._closing
            failed = self._state == 'error'
            if not closing and not failed and reason is None:
                refused, dropped = self._queue.put(command)
        if closing:
            self._reject(command, SHUTTING_DOWN, 'the planner node is shutting down')
        elif failed:
            self._answer_error(command)
        elif reason is not None:
            self._answer(command, 'rejected', [reason])
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

    def configure_queue(self, max_size: Optional[int] = None, policy: Optional[str] = None,
                        max_batch: Optional[int] = None) -> None:
        """Change the queue's size, policy or batch size while the service runs."""
        if max_size is not None or policy is not None:
            self._queue.configure(max_size, policy)
        if max_batch is not None:
            self.config.queue_max_batch = max_batch
        self.publish_status()

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        if self._state != 'error':
            self._load()
        while True:
            batch = self._queue.get_batch(self.config.queue_max_batch)
            if not batch:
                return  # closed
            with self._lock:
                self._in_flight = batch
            self._set_state('busy')
            try:
                self._plan(batch)
            except Exception as exc:  # never leave a command unanswered
                for command in batch:
                    self._answer(command, 'error', [PlanError(
                        'engine_error', '%s: %s' % (type(exc).__name__, exc))])
            with self._lock:
                self._in_flight = []
            self._set_state('busy' if len(self._queue) else 'ready')

    def _load(self) -> None:
        from robot_llm_planner.inference.build import build_planner
        started = time.monotonic()
        retry_s = LOAD_RETRY_S
        while True:
            try:
                planner = build_planner(self.config.settings)
                with self._lock:
                    self._model = planner.backend.describe()
                self._checker = planner
                planner.load()
                break
            except Exception as exc:  # EngineError, SkillError, ValueError or a library failure
                detail = str(exc) if isinstance(exc, (EngineError, ValueError)) \
                    else '%s: %s' % (type(exc).__name__, exc)
                if not getattr(exc, 'transient', False):
                    self._fail('cannot load the model: %s' % detail, MODEL_LOAD_FAILED)
                    self.publish_status()
                    return
                # e.g. the remote server is down: say so, answer commands error, try again
                self._fail('cannot load the model: %s; retrying in %.0f s' % (detail, retry_s),
                           MODEL_LOAD_FAILED)
                self._answer_waiting_with_error()
                self.publish_status()
                if self._stopping.wait(retry_s):
                    return
                retry_s = min(2 * retry_s, LOAD_RETRY_MAX_S)
        self._planner = planner
        self._logger.info('model loaded in %.1f s: %s' % (time.monotonic() - started,
                                                          describe_model(self.model)))
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
            self._answer(command, result.status, message=result.message(command.request_id,
                                                                        self.model))

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
                        wait: Callable[[float], None] = time.sleep,
                        flushed: Callable[[], bool] = lambda: True) -> bool:
        """
        Let the cancelled batch end, answer it rejected if it does not in time, flush.

        ``wait(seconds)`` passes the time between checks: the node spins its executor there,
        so commands that arrive meanwhile are answered ``node_shutting_down``. ``flushed()``
        says whether every subscriber has acknowledged the answers published (waited for at
        most :data:`FLUSH_TIMEOUT_S`). Returns True when the worker thread has stopped.
        """
        deadline = time.monotonic() + grace_s
        while self._worker.is_alive() and time.monotonic() < deadline:
            wait(0.05)
        with self._lock:
            in_flight = list(self._in_flight)
        for command in in_flight:
            self._reject(command, SHUTTING_DOWN, 'the planner node shut down while planning '
                         'this command')
        self.publish_status()
        # Answers published while waiting for the acknowledgements are flushed by this loop.
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while time.monotonic() < deadline and not flushed():
            wait(0.02)
        with self._publish_lock:
            self._closed = True
        return not self._worker.is_alive()
