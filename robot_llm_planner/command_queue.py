"""
What planner_node does with a /command message before the model sees it (ROS-free).

:func:`parse_command` turns the text of a std_msgs/String into a :class:`Command`: plain text
is a command; a JSON object ``{"id": "...", "text": "..."}`` carries the request id a behavior
tree matches answers with. Anything that looks like JSON but is not such an object becomes a
command with a rejection reason (and the id, when one could be read).

:class:`CommandQueue` is the bounded, thread-safe queue between the subscription callback and
the inference worker, with the two overflow policies:

- ``fifo``: when full, the NEW command is refused (``queue_full``);
- ``latest``: when full, the OLDEST queued command is dropped (``superseded``) and the new one
  is queued, so the robot plans what it was told last.

Either way the caller gets every refused or dropped command back to answer it: nothing is lost
silently.
"""

from collections import deque
from dataclasses import dataclass, field
import itertools
import json
import os
import re
import threading
import time
from typing import Callable, Deque, List, Optional, Tuple

from robot_llm_planner.plan import PlanError

POLICIES = ('fifo', 'latest')

# Rejection codes this module gives (the planner adds empty_command and command_too_long).
INVALID_JSON = 'invalid_json'
INVALID_REQUEST = 'invalid_request'
QUEUE_FULL = 'queue_full'
SUPERSEDED = 'superseded'
SHUTTING_DOWN = 'node_shutting_down'

# How much of a malformed message is echoed back in the answer's `command` field.
ECHO_CHARS = 512

_ID_IN_TEXT = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.){1,256})"')


@dataclass
class Command:
    """One request: its id, its text and when it arrived; ``error`` if it cannot be planned."""

    request_id: str
    text: str
    received: float = field(default_factory=time.monotonic)
    error: Optional[PlanError] = None
    answered: bool = False  # set by whoever publishes its answer (under the node's lock)

    def queued_ms(self, now: Optional[float] = None) -> float:
        """Return how long the command has waited, in milliseconds."""
        now = time.monotonic() if now is None else now
        return max(0.0, (now - self.received) * 1000.0)


class IdFactory:
    """
    Make request ids that are unique across nodes and restarts: ``<prefix>-<random>-<n>``.

    The random part is drawn once per process; the counter makes ids readable in logs.
    """

    def __init__(self, prefix: str = 'planner') -> None:
        """Start the counter at 1 for ids beginning with ``prefix``."""
        self._stem = '%s-%s' % (prefix, os.urandom(3).hex())
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self) -> str:
        """Return the next id."""
        with self._lock:
            return '%s-%d' % (self._stem, next(self._counter))


def looks_like_json(text: str) -> bool:
    """Return True when ``text`` is meant as JSON (starts with ``{`` or ``[``)."""
    return text.lstrip().startswith(('{', '['))


def _echo(text: str) -> str:
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + '…'


def _id_from_broken_json(text: str) -> Optional[str]:
    match = _ID_IN_TEXT.search(text)
    if match is None:
        return None
    try:
        value = json.loads('"%s"' % match.group(1))
    except ValueError:
        return None
    return value.strip() or None


def parse_command(data: str, new_id: Callable[[], str]) -> Command:
    """
    Return the command in a /command message; never raises.

    ``new_id`` is called for a command that brings no id (plain text, or JSON without one).
    A malformed JSON request gives a Command whose ``error`` says why, with the request's id
    when one could be read so the sender can match the rejection.
    """
    if not isinstance(data, str):
        data = '' if data is None else str(data)
    if not looks_like_json(data):
        return Command(new_id(), data)

    def reject(code: str, message: str, request_id: Optional[str] = None) -> Command:
        return Command(request_id or new_id(), _echo(data), error=PlanError(code, message))

    try:
        request = json.loads(data)
    except ValueError as exc:
        return reject(INVALID_JSON, 'the command starts like JSON but is not valid JSON (%s); '
                      'send plain text or {"id": "...", "text": "..."}' % exc,
                      _id_from_broken_json(data))
    except RecursionError:  # e.g. '[' * 2000: nested deeper than the decoder can go
        return reject(INVALID_JSON, 'the command starts like JSON but is nested too deeply to '
                      'read; send plain text or {"id": "...", "text": "..."}',
                      _id_from_broken_json(data))
    if not isinstance(request, dict):
        return reject(INVALID_REQUEST, 'a JSON command must be an object {"id": "...", '
                      '"text": "..."}, got a %s' % type(request).__name__)
    request_id = request.get('id')
    echo_id = None
    id_error = None
    if request_id is None:
        pass
    elif isinstance(request_id, str) and request_id.strip():
        echo_id = request_id
    elif isinstance(request_id, (int, float)) and not isinstance(request_id, bool):
        echo_id = str(request_id)
        id_error = '"id" must be a string, got a number (%s)' % echo_id
    elif isinstance(request_id, str):
        id_error = '"id" must not be empty (leave it out to get one assigned)'
    else:
        id_error = '"id" must be a string, got %s' % type(request_id).__name__
    if id_error:
        return reject(INVALID_REQUEST, id_error, echo_id)
    if 'text' not in request:
        return reject(INVALID_REQUEST, 'the JSON command has no "text" (keys: %s); send '
                      '{"id": "...", "text": "..."}' % (', '.join(sorted(request)) or 'none'),
                      echo_id)
    text = request['text']
    if not isinstance(text, str):
        return reject(INVALID_REQUEST, '"text" must be a string, got %s'
                      % type(text).__name__, echo_id)
    return Command(echo_id or new_id(), text)


class CommandQueue:
    """A bounded thread-safe queue of commands with the fifo or latest overflow policy."""

    def __init__(self, max_size: int = 16, policy: str = 'fifo') -> None:
        """Hold at most ``max_size`` waiting commands; ``policy`` decides who goes when full."""
        self._items: Deque[Command] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self.max_size = 1
        self.policy = 'fifo'
        self.configure(max_size, policy)

    def configure(self, max_size: Optional[int] = None, policy: Optional[str] = None) -> None:
        """
        Change the size or policy; raise ValueError for an invalid one.

        Commands already queued stay queued when the size shrinks; the new limit applies to
        the next arrivals.
        """
        if max_size is not None:
            if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
                raise ValueError('queue.max_size must be an integer >= 1, got %r' % (max_size,))
        if policy is not None and policy not in POLICIES:
            raise ValueError('queue.policy must be one of %s, got %r'
                             % (', '.join(POLICIES), policy))
        with self._condition:
            if max_size is not None:
                self.max_size = max_size
            if policy is not None:
                self.policy = policy

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

    def close(self) -> List[Command]:
        """Refuse further commands, wake the waiting worker and return the queued ones."""
        with self._condition:
            self._closed = True
            pending = list(self._items)
            self._items.clear()
            self._condition.notify_all()
            return pending
