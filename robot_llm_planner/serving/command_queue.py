"""
The bounded, thread-safe queue between the service's intake and its worker.

Two overflow policies:

- ``fifo``: when full, the NEW command is refused (``queue_full``);
- ``latest``: when full, the OLDEST queued command is dropped (``superseded``) and the new one
  is queued, so the robot plans what it was told last.

Either way the caller gets every refused or dropped command back to answer it: nothing is lost
silently.
"""

from collections import deque
import threading
import time
from typing import Deque, List, Optional, Tuple

from robot_llm_planner.core.command import Command, QUEUE_FULL, SHUTTING_DOWN
from robot_llm_planner.core.settings import QUEUE_POLICIES as POLICIES


class CommandQueue:
    """A bounded thread-safe queue of commands with the fifo or latest overflow policy."""

    def __init__(self, max_size: int = 16, policy: str = 'fifo', max_batch: int = 1) -> None:
        """
        Hold at most ``max_size`` waiting commands; ``policy`` decides who goes when full.

        ``max_batch`` is how many the worker takes at once (:meth:`get_batch` is told).
        """
        self._items: Deque[Command] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self.max_size = 1
        self.policy = 'fifo'
        self.max_batch = 1
        self.configure(max_size, policy, max_batch)

    def configure(self, max_size: Optional[int] = None, policy: Optional[str] = None,
                  max_batch: Optional[int] = None) -> None:
        """
        Change the size, policy or batch size; raise ValueError for an invalid one.

        Commands already queued stay queued when the size shrinks; the new limit applies to
        the next arrivals.
        """
        for name, value in (('max_size', max_size), ('max_batch', max_batch)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError('queue.%s must be an integer >= 1, got %r' % (name, value))
        if policy is not None and policy not in POLICIES:
            raise ValueError('queue.policy must be one of %s, got %r'
                             % (', '.join(POLICIES), policy))
        with self._condition:
            if max_size is not None:
                self.max_size = max_size
            if policy is not None:
                self.policy = policy
            if max_batch is not None:
                self.max_batch = max_batch

    def __len__(self) -> int:
        """Return how many commands are waiting."""
        with self._condition:
            return len(self._items)

    @property
    def closed(self) -> bool:
        """Return True once :meth:`close` was called."""
        return self._closed

    def put(self, command: Command) -> Tuple[Optional[str], List[Command]]:
        """
        Queue ``command``; return (why it was refused or None, commands dropped for it).

        The refusal is ``queue_full`` (fifo, full) or ``node_shutting_down`` (closed). With the
        latest policy the dropped commands are the oldest queued ones, to be answered
        ``superseded``.
        """
        with self._condition:
            if self._closed:
                return SHUTTING_DOWN, []
            dropped = []
            if len(self._items) >= self.max_size:
                if self.policy == 'fifo':
                    return QUEUE_FULL, []
                while len(self._items) >= self.max_size:
                    dropped.append(self._items.popleft())
            self._items.append(command)
            self._condition.notify()
            return None, dropped

    def get_batch(self, max_batch: int = 1, timeout: Optional[float] = None) -> List[Command]:
        """
        Wait for commands and take up to ``max_batch`` of them, oldest first.

        Returns an empty list when the queue is closed (and empty) or ``timeout`` passed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self._items and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._condition.wait(remaining)
            batch = []
            while self._items and len(batch) < max(1, max_batch):
                batch.append(self._items.popleft())
            return batch

    def drain(self) -> List[Command]:
        """Take every waiting command at once (they will not be planned)."""
        with self._condition:
            pending = list(self._items)
            self._items.clear()
            return pending

    def close(self) -> List[Command]:
        """Refuse further commands, wake the waiting worker and return the queued ones."""
        with self._condition:
            self._closed = True
            pending = list(self._items)
            self._items.clear()
            self._condition.notify_all()
            return pending
