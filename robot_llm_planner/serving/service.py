"""
The planner service: the life of a command inside planner_node, without ROS.

:class:`PlannerService` takes the text of each /command message, answers it or queues it, and
plans the queue on its worker thread. It follows the managed node's lifecycle: ``configure``
loads the model (retrying a failure that may pass), ``activate`` takes commands,
``deactivate`` stops taking them (the batch in progress finishes or is cancelled),
``cleanup`` frees the model, and ``begin_shutdown``/``finish_shutdown`` end it in order.
Whatever its state, every command gets exactly one answer, built by
:meth:`PlannerService._answer`. The node hands it ``publish_answer(message)`` and
``publish_status(status)`` and forwards messages to it; this module imports no rclpy and is
unit-tested without DDS.
"""

import gc
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from robot_llm_planner.core.backend import EngineError
from robot_llm_planner.core.command import (Command, ECHO_CHARS, IdFactory, NODE_INACTIVE,
                                            parse_command, QUEUE_FULL, shown_command,
                                            SHUTTING_DOWN, SUPERSEDED)
from robot_llm_planner.core.fingerprint import fingerprint
from robot_llm_planner.core.message import plan_message, STATUSES
from robot_llm_planner.core.parameters import NodeConfig
from robot_llm_planner.core.plan import PlanError
from robot_llm_planner.core.settings import split_adapters
from robot_llm_planner.serving.command_queue import CommandQueue
from robot_llm_planner.serving.health import health, LEVEL_NAMES, memory_figures, RecentPlans

# On shutdown or deactivation, how long the batch being planned may take to finish before it
# is cancelled and answered rejected (launch escalates SIGINT to SIGTERM after 5 s).
SHUTDOWN_GRACE_S = 2.0
# After a cancel at deactivation, how long the generation may take to stop.
CANCEL_WAIT_S = 1.0
# A model load that failed for a reason that may pass (a remote server down or overloaded) is
# retried after these many seconds, doubling up to the maximum.
LOAD_RETRY_S = 1.0
LOAD_RETRY_MAX_S = 30.0
# How long the node waits for subscribers to acknowledge its last answers and status before it
# exits (grace + flush + teardown stay under launch's 5 s before it escalates to SIGKILL).
FLUSH_TIMEOUT_S = 1.5
# How long cleanup waits for the worker thread to let go of the model.
CLEANUP_JOIN_S = 5.0
POLL_S = 0.1

INVALID_PARAMETERS = 'invalid_parameters'
MODEL_LOAD_FAILED = 'model_load_failed'
# When a command that will not be planned was refused (see PlannerService._refuse).
_WHEN = {
    'queued': 'before planning this command',
    'in_flight': 'while planning this command (its generation did not end in time)',
    'cancelled': 'while planning this command (generation cancelled)',
}


def settings_model(config: NodeConfig) -> Dict[str, str]:
    """Return what the settings ask to serve, as answers name it before the model is built."""
    settings = config.settings
    if settings.backend == 'openai':
        return {'backend': 'openai', 'base': settings.remote_base_url,
                'adapter': settings.remote_model}
    return {'backend': settings.backend, 'base': settings.model_path,
            'adapter': ','.join(split_adapters(settings.adapter_path))}


def describe_model(model: Dict[str, str]) -> str:
    """Return the served model in words, for the log."""
    text = '%s backend, base %s' % (model.get('backend'), model.get('base') or '(none)')
    if model.get('adapter'):
        text += ', adapter %s' % model['adapter']
    return text


class PlannerService:
    """
    Answers every command once: queued and planned by a worker thread, or refused at once.

    Commands are queued while the service is active; with ``queue_until_active`` (the node's
    ``lifecycle.autostart``) also while it comes up, so that commands sent at start-up wait for
    the model instead of being refused. ``logger`` has ``debug``, ``info``, ``warning`` and
    ``error`` (an rclpy logger or a :mod:`logging` one).
    """

    def __init__(self, config: NodeConfig, publish_answer: Callable[[dict], None],
                 publish_status: Callable[[dict], None], logger, node_name: str = '/planner_node',
                 queue_until_active: bool = False) -> None:
        """Hold the configuration; nothing loads until :meth:`configure`."""
        self.config = config
        self.node_name = node_name
        self._publish_answer = publish_answer
        self._publish_status = publish_status
        self._logger = logger
        self._lock = threading.RLock()     # everything below, and the answered flags
        self._publish_lock = threading.Lock()
        self._lifecycle = 'unconfigured'
        self._accepting = queue_until_active  # commands are queued (not refused)
        self._serving = threading.Event()     # the worker plans the queue (active)
        self._loading = False
        self._closing = False
        self._closed = False
        self._stopping = threading.Event()    # set at shutdown: ends load retries at once
        self._error, self._error_code, self._retrying = '', '', False
        self._backend_error = ''              # why the last batch failed, until one succeeds
        self._planner = None   # set once the model is loaded
        self._checker = None   # the planner as soon as it is built: checks commands
        self._worker: Optional[threading.Thread] = None
        self._worker_stop = threading.Event()
        self._in_flight: List[Command] = []
        self._counts = dict.fromkeys(STATUSES, 0)
        self._recent = RecentPlans()
        self._last_latency_ms: Optional[float] = None
        self._placement = {'device': '', 'dtype': ''}
        self._hashes = {'base': '', 'adapter': ''}
        self._new_id = IdFactory(node_name.rsplit('/', 1)[-1])
        self._model = settings_model(config)
        self._queue = CommandQueue(config.queue_max_size, config.queue_policy)

    @property
    def lifecycle(self) -> str:
        """Return the managed node's lifecycle state, as :meth:`set_lifecycle` last set it."""
        with self._lock:
            return self._lifecycle

    @property
    def model(self) -> Dict[str, str]:
        """Return what is served: backend, base model and adapter(s)."""
        with self._lock:
            return dict(self._model)

    # ------------------------------------------------------------------ state and status
    def _state(self) -> str:
        if self._error:
            return 'error'
        if self._serving.is_set():
            return 'busy' if self._in_flight or len(self._queue) else 'ready'
        if self._loading or self._accepting:
            return 'loading'  # configuring, or on its way to active (autostart)
        return 'inactive' if self._planner is not None else 'unconfigured'

    def set_lifecycle(self, label: str) -> None:
        """Record the managed node's lifecycle state (its label) and publish the status."""
        with self._lock:
            self._lifecycle = label
        self.publish_status()

    def status(self) -> dict:
        """Return the status message (a dict): /planner_status and /diagnostics show it."""
        with self._lock:
            status = {
                'state': self._state(),
                'lifecycle': self._lifecycle,
                'queue_depth': len(self._queue),
                'queue_max_size': self._queue.max_size,
                'queue_policy': self._queue.policy,
                'in_flight': len(self._in_flight),
                'model': dict(self._model),
                'model_hash': dict(self._hashes),
                'device': self._placement['device'],
                'dtype': self._placement['dtype'],
                'last_latency_ms': self._last_latency_ms,
                'answered': sum(self._counts.values()),
                'rejected': self._counts['rejected'],
                'counts': dict(self._counts),
                'recent': self._recent.summary(),
                'error': self._error,
                'retrying': self._retrying,
                'backend_error': self._backend_error,
                'memory': memory_figures(self._placement['device']),
                'node': self.node_name,
                'stamp': time.time(),
            }
        level, message = health(status)
        status['health'] = {'level': LEVEL_NAMES[level], 'message': message}
        return status

    def publish_status(self) -> None:
        """Publish the current status (on every change; the node's timer calls it at 1 Hz)."""
        with self._publish_lock:
            if self._closed:
                return
            try:
                self._publish_status(self.status())
            except Exception as exc:  # the context is going away
                self._logger.debug('status not published: %s' % exc)

    def _fail(self, message: str, code: str, retrying: bool = False) -> None:
        with self._lock:
            self._error, self._error_code, self._retrying = message, code, retrying
        (self._logger.warning if retrying else self._logger.error)(message)

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

    def _refuse(self, command: Command, moment: str) -> bool:
        """
        Answer a command the service will not plan: shutting down, failed or not active.

        ``moment`` is when it is refused: ``new`` (just arrived), ``queued``, ``in_flight``
        (its generation did not end in time) or ``cancelled`` (its generation was cancelled).
        """
        with self._lock:
            closing, error, code = self._closing, self._error, self._error_code
            lifecycle = self._lifecycle
        if closing:
            return self._reject(command, SHUTTING_DOWN, 'the planner node is shutting down'
                                if moment == 'new' else
                                'the planner node shut down ' + _WHEN[moment])
        if error:
            return self._answer(command, 'error', [PlanError(code, error)])
        return self._reject(command, NODE_INACTIVE, 'the planner node is not active (lifecycle '
                            'state %s): it plans commands only when active' % lifecycle
                            if moment == 'new' else
                            'the planner node was deactivated ' + _WHEN[moment])

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
        # The state is read and the command queued under the lock that every state change
        # takes: a load failing or a deactivation meanwhile either sees this command in the
        # queue (and answers it) or this call sees the change. Nothing is published under it.
        with self._lock:
            taken = not self._closing and not self._error and self._accepting
            if taken and reason is None:
                refused, dropped = self._queue.put(command)
        if not taken:
            self._refuse(command, 'new')
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

    def _refuse_waiting(self) -> None:
        """Answer every queued command (it will not be planned): see :meth:`_refuse`."""
        while True:
            batch = self._queue.get_batch(self._queue.max_size, timeout=0)
            if not batch:
                return
            for command in batch:
                self._refuse(command, 'queued')

    def configure_queue(self, max_size: Optional[int] = None, policy: Optional[str] = None,
                        max_batch: Optional[int] = None) -> None:
        """Change the queue's size, policy or batch size while the service runs."""
        if max_size is not None or policy is not None:
            self._queue.configure(max_size, policy)
        if max_batch is not None:
            self.config.queue_max_batch = max_batch
        self.publish_status()

    # ------------------------------------------------------------------ lifecycle
    def configure(self, config: Optional[NodeConfig] = None, errors: Sequence[str] = ()) -> bool:
        """
        Check the parameters, load and warm up the model; return True once it is loaded.

        ``errors`` are the reasons the parameters are unusable (``load_config``): then
        nothing loads. Blocks until the load ends: a failure that may pass (the remote
        server is down) is retried meanwhile, until it loads or :meth:`begin_shutdown`.
        """
        with self._lock:
            if config is not None:
                self.config = config
                self._model = settings_model(config)
                self._queue.configure(config.queue_max_size, config.queue_policy)
            self._error, self._error_code, self._retrying = '', '', False
            self._loading = True
        if errors:
            self._fail('invalid parameters: ' + '; '.join(errors), INVALID_PARAMETERS)
            return self._configured(False)
        loaded = threading.Event()
        self._worker_stop = threading.Event()
        self._worker = threading.Thread(target=self._work, args=(loaded, self._worker_stop),
                                        name='planner-worker', daemon=True)
        self.publish_status()
        self._worker.start()
        while not loaded.wait(POLL_S) and not self._stopping.is_set():
            pass
        return self._configured(self._planner is not None and not self._stopping.is_set())

    def _configured(self, loaded: bool) -> bool:
        with self._lock:
            self._loading = False
            if not loaded:
                self._accepting = False  # the way to active ends here
        if not loaded:
            self._refuse_waiting()
        self.publish_status()
        return loaded

    def activate(self) -> None:
        """Take commands and plan them."""
        with self._lock:
            self._accepting = True
            self._serving.set()
        self.publish_status()

    def deactivate(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """
        Stop taking commands: queued ones are answered rejected (node_inactive).

        The batch in progress may finish within ``grace_s``; then it is cancelled, and what
        is still not answered after :data:`CANCEL_WAIT_S` is answered rejected as well.
        """
        with self._lock:
            self._accepting = False
            self._serving.clear()
        self._refuse_waiting()
        if not self._wait_idle(grace_s):
            with self._lock:
                if self._in_flight and self._planner is not None:
                    self._planner.cancel()  # the worker resumes it after the batch
            if not self._wait_idle(CANCEL_WAIT_S):
                with self._lock:
                    in_flight = list(self._in_flight)
                for command in in_flight:
                    self._refuse(command, 'in_flight')
        self.publish_status()

    def _wait_idle(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    return True
            time.sleep(0.02)
        with self._lock:
            return not self._in_flight

    def cleanup(self) -> Dict[str, Optional[float]]:
        """
        Free the model and its memory (GPU memory too); return the memory before and after.

        The keys are ``<figure>_before`` and ``<figure>_after`` for each of
        :func:`~robot_llm_planner.serving.health.memory_figures` (MB).
        """
        device = self._placement['device']
        before = memory_figures(device)
        self._worker_stop.set()
        worker = self._worker
        if worker is not None and worker.is_alive():
            worker.join(CLEANUP_JOIN_S)
            if worker.is_alive():
                self._logger.warning('the worker is still in a generation: the model is freed '
                                     'when it ends')
        with self._lock:
            self._planner = self._checker = self._worker = None
            self._placement = {'device': '', 'dtype': ''}
            self._hashes = {'base': '', 'adapter': ''}
            self._model = settings_model(self.config)
        gc.collect()
        torch = sys.modules.get('torch')
        if torch is not None and device.startswith('cuda') and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        after = memory_figures(device)
        figures = {'%s_%s' % (key, when): value for when, values in
                   (('before', before), ('after', after)) for key, value in values.items()}
        self._logger.info('model freed: %s' % ', '.join(
            '%s %s -> %s' % (key, before[key], after.get(key)) for key in before))
        self.publish_status()
        return figures

    # ------------------------------------------------------------------ the worker
    def _work(self, loaded: threading.Event, stop: threading.Event) -> None:
        planner = self._load(stop)
        loaded.set()
        while planner is not None and not stop.is_set():
            if not self._serving.wait(POLL_S):
                continue
            batch = self._queue.get_batch(self.config.queue_max_batch, timeout=POLL_S)
            if not batch:
                if self._queue.closed:
                    return
                continue
            with self._lock:
                serving = self._serving.is_set()
                self._in_flight = batch if serving else []
            if not serving:  # deactivated while the batch was taken
                for command in batch:
                    self._refuse(command, 'queued')
                continue
            self.publish_status()
            try:
                self._plan(planner, batch)
            except Exception as exc:  # never leave a command unanswered
                for command in batch:
                    self._answer(command, 'error', [PlanError(
                        'engine_error', '%s: %s' % (type(exc).__name__, exc))])
            with self._lock:
                self._in_flight = []
                if not self._closing:
                    planner.backend.resume()  # after a cancel at deactivation
            self.publish_status()

    def _load(self, stop: threading.Event):
        """Build and load the planner, retrying transient failures; None if it failed."""
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
                    return None
                # e.g. the remote server is down: say so, answer commands error, try again
                self._fail('cannot load the model: %s; retrying in %.0f s' % (detail, retry_s),
                           MODEL_LOAD_FAILED, retrying=True)
                self._refuse_waiting()
                self.publish_status()
                if stop.wait(retry_s) or self._stopping.is_set():
                    return None
                retry_s = min(2 * retry_s, LOAD_RETRY_MAX_S)
        if stop.is_set() or self._stopping.is_set():
            return None  # shut down while loading
        settings = self.config.settings
        hashes = {'base': fingerprint(settings.model_path), 'adapter': fingerprint(
            settings.adapter_path)} if settings.backend == 'transformers' else {}
        with self._lock:
            self._planner = planner
            self._placement = planner.backend.placement()
            self._hashes.update(hashes)
            self._error, self._error_code, self._retrying = '', '', False
        self._logger.info('model loaded in %.1f s: %s' % (time.monotonic() - started,
                                                          describe_model(self.model)))
        self.publish_status()
        return planner

    def _plan(self, planner, batch: List[Command]) -> None:
        now = time.monotonic()
        results = planner.plan_batch([command.text for command in batch],
                                     queued_ms=[command.queued_ms(now) for command in batch])
        model = self.model
        for command, result in zip(batch, results):
            if any(error.code == 'cancelled' for error in result.errors):
                self._refuse(command, 'cancelled')
                continue
            self._answer(command, result.status, message=result.message(command.request_id,
                                                                        model))
        failed = [result for result in results if result.status == 'error']
        with self._lock:
            self._recent.add([(result.status, result.timing) for result in results
                              if result.status in ('ok', 'invalid')])
            if failed and len(failed) == len(results):
                self._backend_error = failed[0].errors[0].message
            elif not failed:
                self._backend_error = ''

    # ------------------------------------------------------------------ shutdown
    def begin_shutdown(self) -> None:
        """Refuse new commands and answer the queued ones rejected (node_shutting_down)."""
        with self._lock:
            self._closing = True
        self._stopping.set()
        self._worker_stop.set()  # a load being retried gives up at once
        for command in self._queue.close():
            self._refuse(command, 'queued')
        planner = self._checker
        if planner is not None:
            planner.cancel()  # the batch in progress stops after its current token
        self.publish_status()

    def busy(self) -> bool:
        """Return True while the worker thread runs (loading or planning)."""
        worker = self._worker
        return worker is not None and worker.is_alive()

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
        self._worker_stop.set()
        deadline = time.monotonic() + grace_s
        while self.busy() and time.monotonic() < deadline:
            wait(0.05)
        with self._lock:
            in_flight = list(self._in_flight)
        for command in in_flight:
            self._refuse(command, 'in_flight')
        self.publish_status()
        # Answers published while waiting for the acknowledgements are flushed by this loop.
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while time.monotonic() < deadline and not flushed():
            wait(0.02)
        with self._publish_lock:
            self._closed = True
        return not self.busy()
