"""
The planner service: a managed node's commands and lifecycle, without ROS.

:class:`PlannerService` takes the text of each /command message (:meth:`~PlannerService.submit`)
and either answers it at once or queues it for the worker. It follows the managed node's
lifecycle: ``configure`` starts a :class:`~robot_llm_planner.serving.worker.Worker`, which
loads the model; ``activate`` lets it plan; ``deactivate`` refuses what waits and lets the
batch in progress finish or cancels it; ``cleanup`` frees the model; ``begin_shutdown`` and
``finish_shutdown`` end it in order. Its state is one value
(:class:`~robot_llm_planner.serving.state.State`); every command gets exactly one answer
through :class:`~robot_llm_planner.serving.answers.Answers`.

planner_node hands it ``publish_answer(message)`` and ``publish_status(status)``; this
module imports no rclpy and is tested without DDS.
"""

import gc
import sys
import threading
import time
from typing import Callable, Dict, Optional, Sequence

from robot_llm_planner.core.command import (Command, ECHO_CHARS, IdFactory, parse_command,
                                            QUEUE_FULL, SHUTTING_DOWN)
from robot_llm_planner.core.parameters import NodeConfig
from robot_llm_planner.core.plan import PlanError
from robot_llm_planner.serving.answers import Answers
from robot_llm_planner.serving.command_queue import CommandQueue
from robot_llm_planner.serving.health import memory_figures
from robot_llm_planner.serving.loader import requested
from robot_llm_planner.serving.refusals import (ON_ARRIVAL, PLANNING, queue_full, superseded,
                                                WAITING)
from robot_llm_planner.serving.state import Failure, Phase, Served, State, StateCell
from robot_llm_planner.serving.status import status_message, Tally
from robot_llm_planner.serving.worker import POLL_S, Worker

# On shutdown or deactivation, how long the batch being planned may take to finish before it
# is cancelled and answered rejected (launch escalates SIGINT to SIGTERM after 5 s).
SHUTDOWN_GRACE_S = 2.0
# After a cancel at deactivation, how long the generation may take to stop.
CANCEL_WAIT_S = 1.0
# How long the node waits for subscribers to acknowledge its last answers and status before it
# exits (grace + flush + teardown stay under launch's 5 s before it escalates to SIGKILL).
FLUSH_TIMEOUT_S = 1.5
# How long cleanup waits for the worker thread to let go of the model.
CLEANUP_JOIN_S = 5.0

INVALID_PARAMETERS = 'invalid_parameters'


class PlannerService:
    """
    Answers every command once: queued and planned by the worker, or refused at once.

    Commands are queued while the service is active; with ``queue_until_active`` (the node's
    ``lifecycle.autostart``) also while it comes up, so that commands sent at start-up wait for
    the model instead of being refused.
    """

    def __init__(self, config: NodeConfig, publish_answer: Callable[[dict], None],
                 publish_status: Callable[[dict], None], logger, node_name: str = '/planner_node',
                 queue_until_active: bool = False) -> None:
        """
        Hold the configuration; nothing loads until :meth:`configure`.

        :param config: the node's parameters (from :func:`load_config`).
        :param publish_answer: publishes one /action_plan message (a dict).
        :param publish_status: publishes one status message (a dict).
        :param logger: has ``debug``, ``info``, ``warning`` and ``error`` (rclpy's or logging's).
        :param node_name: the node's fully qualified name, in the status and the request ids.
        :param queue_until_active: queue the commands that come before the first activation.
        """
        self.config = config
        self.node_name = node_name
        self._publish_status = publish_status
        self._logger = logger
        self._status_lock = threading.Lock()
        first = Phase.STARTING if queue_until_active else Phase.UNCONFIGURED
        self._cell = StateCell(State(first, requested(config.settings)))
        self._tally = Tally()
        self._answers = Answers(publish_answer, self._tally, logger, self._cell,
                                config.settings.max_command_chars)
        self._queue = CommandQueue(config.queue_max_size, config.queue_policy,
                                   config.queue_max_batch)
        self._new_id = IdFactory(node_name.rsplit('/', 1)[-1])
        self._worker: Optional[Worker] = None

    @property
    def lifecycle(self) -> str:
        """Return the managed node's lifecycle state, as :meth:`set_lifecycle` last set it."""
        return self._cell.value.lifecycle

    @property
    def served(self) -> Served:
        """Return what is served: the model as answers name it, its device and hashes."""
        return self._cell.value.served

    @property
    def planner(self):
        """Return the planner of the last configure (it checks commands while it loads)."""
        worker = self._worker
        return worker.planner if worker is not None else None

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
            self._answers.send_without_plan(command, 'error', PlanError('internal_error', reason))
        self.publish_status()

    def _take(self, command: Command) -> None:
        if command.error is not None:
            self._answers.send_without_plan(command, 'rejected', command.error)
            return
        planner = self.planner
        reason = planner.check(command.text) if planner is not None else None
        refused, dropped = None, []
        # Decided and queued under the state's lock: a load failing or a deactivation
        # meanwhile either finds this command in the queue (and answers it) or comes first.
        with self._cell.lock:
            taken = self._cell.value.takes_commands()
            if taken and reason is None:
                refused, dropped = self._queue.put(command)
        for old in dropped:
            self._answers.send_without_plan(old, 'rejected', superseded(
                self._queue.max_size, command.request_id))
        if not taken or refused == SHUTTING_DOWN:  # by the state, or the queue just closed
            self._answers.refuse(command, ON_ARRIVAL)
        elif reason is not None:
            self._answers.send_without_plan(command, 'rejected', reason)
        elif refused == QUEUE_FULL:
            self._answers.send_without_plan(command, 'rejected', queue_full(self._queue.max_size))

    def configure_queue(self, max_size: Optional[int] = None, policy: Optional[str] = None,
                        max_batch: Optional[int] = None) -> None:
        """Change the queue's size, policy or batch size while the service runs."""
        self._queue.configure(max_size, policy, max_batch)
        self.publish_status()

    # ------------------------------------------------------------------ lifecycle
    def set_lifecycle(self, label: str) -> None:
        """Record the managed node's lifecycle state (its label) and publish the status."""
        self._cell.apply(lambda state: state.labelled(label))
        self.publish_status()

    def configure(self, config: Optional[NodeConfig] = None, errors: Sequence[str] = ()) -> bool:
        """
        Check the parameters, load and warm up the model; return True once it is loaded.

        ``errors`` are the reasons the parameters are unusable (``load_config``): then
        nothing loads. Blocks until the load ends: a failure that may pass (the remote
        server is down) is retried meanwhile, until it loads or :meth:`begin_shutdown`.
        """
        if self._cell.value.shutting_down():
            return False
        if config is not None:
            self.config = config
            self._queue.configure(config.queue_max_size, config.queue_policy,
                                  config.queue_max_batch)
            self._answers.max_command_chars = config.settings.max_command_chars
        self._cell.apply(lambda state: state.configuring(requested(self.config.settings)))
        if errors:
            self.load_failed(Failure('invalid parameters: ' + '; '.join(errors),
                                     INVALID_PARAMETERS))
            return self._configured(False)
        with self._cell.lock:  # begin_shutdown either sees this worker or stops it starting
            if self._cell.value.shutting_down():
                return False
            worker = self._worker = Worker(self.config.settings, self._queue, self._cell,
                                           self._answers, self)
        self.publish_status()
        worker.start()
        while not worker.load_ended.wait(POLL_S) and not worker.stop.is_set():
            pass
        return self._configured(worker.loaded and not worker.stop.is_set())

    def _configured(self, loaded: bool) -> bool:
        self._cell.apply(lambda state: state.configured(loaded))
        if not loaded:
            self._answers.refuse_all(self._queue.drain(), WAITING)
        self.publish_status()
        return loaded

    def activate(self) -> None:
        """Take commands and plan them."""
        self._cell.apply(State.activated)
        self.publish_status()

    def deactivate(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """
        Stop taking commands: queued ones are answered rejected (node_inactive).

        The batch in progress may finish within ``grace_s``; then it is cancelled, and what
        is still not answered after :data:`CANCEL_WAIT_S` is answered rejected as well.
        """
        self._cell.apply(State.deactivated)
        self._answers.refuse_all(self._queue.drain(), WAITING)
        worker = self._worker
        if worker is not None and not worker.wait_idle(grace_s):
            worker.cancel()
            if not worker.wait_idle(CANCEL_WAIT_S):
                self._answers.refuse_all(worker.in_flight(), PLANNING)
        self.publish_status()

    def cleanup(self) -> Dict[str, Optional[float]]:
        """
        Free the model and its memory (GPU memory too); return the memory before and after.

        The keys are ``<figure>_before`` and ``<figure>_after`` for each of
        :func:`~robot_llm_planner.serving.health.memory_figures` (MB).
        """
        device = self.served.device
        before = memory_figures(device)
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop.set()
            if not worker.join(CLEANUP_JOIN_S):
                self._logger.warning('the worker is still in a generation: the model is freed '
                                     'when it ends')
        self._cell.apply(lambda state: state.cleaned_up(requested(self.config.settings)))
        del worker
        gc.collect()
        torch = sys.modules.get('torch')
        if torch is not None and device.startswith('cuda') and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        after = memory_figures(device)
        self._logger.info('model freed: %s' % ', '.join(
            '%s %s -> %s' % (key, before[key], after.get(key)) for key in before))
        self.publish_status()
        return {'%s_%s' % (key, when): value for when, values in
                (('before', before), ('after', after)) for key, value in values.items()}

    # ------------------------------------------------------------------ what the worker says
    def load_failed(self, failure: Failure) -> None:
        """Say why the model did not load; with a retry to come, answer what waits."""
        self._cell.apply(lambda state: state.failed(failure))
        (self._logger.warning if failure.retrying else self._logger.error)(failure.message)
        if failure.retrying:
            self._answers.refuse_all(self._queue.drain(), WAITING)
        self.publish_status()

    def model_loaded(self, served: Served, seconds: float) -> None:
        """Record what is served now that the model is loaded."""
        self._cell.apply(lambda state: state.model_loaded(served))
        self._logger.info('model loaded in %.1f s: %s' % (seconds, served.describe()))
        self.publish_status()

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """Return the status message (a dict): /planner_status and /diagnostics show it."""
        worker = self._worker
        with self._cell.lock:
            in_flight = len(worker.in_flight()) if worker is not None else 0
            return status_message(self._cell.value, self._queue, in_flight, self._tally,
                                  self.node_name)

    def publish_status(self) -> None:
        """Publish the current status (on every change; the node's timer calls it at 1 Hz)."""
        with self._status_lock:
            if self._cell.value.phase is Phase.CLOSED:
                return
            try:
                self._publish_status(self.status())
            except Exception as exc:  # the context is going away
                self._logger.debug('status not published: %s' % exc)

    # ------------------------------------------------------------------ shutdown
    def begin_shutdown(self) -> None:
        """Refuse new commands and answer the queued ones rejected (node_shutting_down)."""
        self._cell.apply(State.closing)
        worker = self._worker
        if worker is not None:
            worker.stop.set()  # a load being retried gives up at once
        self._answers.refuse_all(self._queue.close(), WAITING)
        planner = self.planner
        if planner is not None:
            planner.cancel()  # the batch in progress stops after its current token
        self.publish_status()

    def busy(self) -> bool:
        """Return True while the worker thread runs (loading or planning)."""
        worker = self._worker
        return worker is not None and worker.alive()

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
        while self.busy() and time.monotonic() < deadline:
            wait(0.05)
        worker = self._worker
        if worker is not None:
            self._answers.refuse_all(worker.in_flight(), PLANNING)
        self.publish_status()
        # Answers published while waiting for the acknowledgements are flushed by this loop.
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while time.monotonic() < deadline and not flushed():
            wait(0.02)
        with self._status_lock:
            self._answers.close()
        return not self.busy()
