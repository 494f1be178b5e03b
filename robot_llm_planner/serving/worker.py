"""
The planner's thread: it loads the model, then plans the queue one batch at a time.

The service starts a :class:`Worker` at each configure and stops it at cleanup and shutdown.
The worker loads the model (:func:`~robot_llm_planner.serving.loader.load`), then, while the
service is active, takes up to ``queue.max_batch`` waiting commands and plans them as one
batch; every command of the batch is answered from here, planned, cancelled or failed. The
batch is put in flight under the state's lock, which a deactivation takes too: a batch taken
just as the service stopped being active is refused, never planned.

Threads: :meth:`Worker.start` runs the loop on a thread of its own; the other methods are
called from the service's threads.
"""

import threading
import time
from typing import List, Optional, Protocol

from robot_llm_planner.core.command import Command
from robot_llm_planner.core.plan import PlanError
from robot_llm_planner.core.settings import PlannerSettings
from robot_llm_planner.serving.answers import Answers
from robot_llm_planner.serving.command_queue import CommandQueue
from robot_llm_planner.serving.loader import load
from robot_llm_planner.serving.refusals import WAITING
from robot_llm_planner.serving.state import Failure, Served, StateCell

POLL_S = 0.1  # how often an idle worker looks at its stop event


class WorkerEvents(Protocol):
    """What the worker tells the service that started it."""

    def load_failed(self, failure: Failure) -> None:
        """Say that the model did not load (it is tried again if ``failure.retrying``)."""

    def model_loaded(self, served: Served, seconds: float) -> None:
        """Say that the model is loaded: the service may plan."""

    def publish_status(self) -> None:
        """Publish the status: a batch went in flight or came back."""


class Worker:
    """Loads the model, then plans the queue while the service is active."""

    def __init__(self, settings: PlannerSettings, queue: CommandQueue, cell: StateCell,
                 answers: Answers, events: WorkerEvents) -> None:
        """
        Prepare the thread (:meth:`start` starts it).

        :param settings: what to load.
        :param queue: the commands waiting; ``queue.max_batch`` are planned together.
        :param cell: the service's state: the worker plans while it says so.
        :param answers: where every command of a batch is answered.
        :param events: what the worker tells the service (:class:`WorkerEvents`).
        """
        self._settings = settings
        self._queue = queue
        self._cell = cell
        self._answers = answers
        self._events = events
        self.stop = threading.Event()     # set at cleanup and shutdown
        self.load_ended = threading.Event()
        self.planner = None               # once built: it checks commands while it loads
        self.loaded = False
        self._in_flight: List[Command] = []  # under the state's lock
        self._thread = threading.Thread(target=self._run, name='planner-worker', daemon=True)

    def start(self) -> None:
        """Start loading (then planning) on the worker's thread."""
        self._thread.start()

    def alive(self) -> bool:
        """Return True while the thread runs (loading or planning)."""
        return self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end; return True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def in_flight(self) -> List[Command]:
        """Return the commands being planned."""
        with self._cell.lock:
            return list(self._in_flight)

    def wait_idle(self, seconds: float) -> bool:
        """Wait until no batch is in flight; False after ``seconds``."""
        return self._cell.wait_for(lambda: not self._in_flight, seconds)

    def cancel(self) -> None:
        """Cancel the generation in flight: it stops after its current token."""
        with self._cell.lock:
            if self._in_flight and self.planner is not None:
                self.planner.cancel()  # resumed after the batch, unless shutting down

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        started = time.monotonic()
        served = load(self._settings, self.stop, self._built, self._events.load_failed)
        if served is not None:
            self.loaded = True
            self._events.model_loaded(served, time.monotonic() - started)
        self.load_ended.set()
        while self.loaded and not self.stop.is_set():
            batch = self._take()
            if batch:
                self._plan(batch)

    def _built(self, planner) -> None:
        self.planner = planner
        self._cell.apply(lambda state: state.model_built(Served(planner.backend.describe())))

    def _take(self) -> Optional[List[Command]]:
        """Wait for an active service and a batch; return the batch, now in flight."""
        if not self._cell.wait_for(lambda: self._cell.value.plans(), POLL_S):
            return None
        batch = self._queue.get_batch(self._queue.max_batch, timeout=POLL_S)
        if not batch:
            return None
        with self._cell.lock:
            planning = self._cell.value.plans()
            self._in_flight = batch if planning else []
        if not planning:  # deactivated while the batch was taken
            self._answers.refuse_all(batch, WAITING)
            return None
        self._events.publish_status()
        return batch

    def _plan(self, batch: List[Command]) -> None:
        planner = self.planner
        now = time.monotonic()
        try:
            results = planner.plan_batch([command.text for command in batch],
                                         queued_ms=[command.queued_ms(now) for command in batch])
            self._answers.send_batch(batch, results)
        except Exception as exc:  # never leave a command unanswered
            error = PlanError('engine_error', '%s: %s' % (type(exc).__name__, exc))
            for command in batch:
                self._answers.send_without_plan(command, 'error', error)
        with self._cell.lock:
            self._in_flight = []
            if not self._cell.value.shutting_down():
                planner.backend.resume()  # after a cancel at deactivation
            self._cell.notify()
        self._events.publish_status()
