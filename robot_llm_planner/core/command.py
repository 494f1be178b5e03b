"""
A /command message, before the model sees it: parse it, give it an id, clean and check its text.

:func:`parse_command` turns the text of a std_msgs/String into a :class:`Command`: plain text
is a command; a JSON object ``{"id": "...", "text": "..."}`` carries the request id a behavior
tree matches answers with. Anything that looks like JSON but is not such an object becomes a
command with a rejection reason (and the id, when one could be read).

:func:`check_command` says why a command's text cannot be planned (empty, too long, a
chat-template control token); :func:`clean_command` and :func:`shown_command` give the text the
planner uses and the one answers echo.
"""

from dataclasses import dataclass, field
import itertools
import json
import os
import re
import threading
import time
from typing import Callable, Optional, Tuple
import unicodedata

from robot_llm_planner.core.plan import PlanError

# Rejection codes of a command that is not planned (the model's own no is not_a_task).
EMPTY_COMMAND = 'empty_command'
COMMAND_TOO_LONG = 'command_too_long'
CONTROL_TOKEN_IN_COMMAND = 'control_token_in_command'
INVALID_JSON = 'invalid_json'
INVALID_REQUEST = 'invalid_request'
QUEUE_FULL = 'queue_full'
SUPERSEDED = 'superseded'
SHUTTING_DOWN = 'node_shutting_down'
NODE_INACTIVE = 'node_inactive'  # the managed node is not active (lifecycle)

DEFAULT_MAX_COMMAND_CHARS = 256

# How much of a malformed message is echoed back in the answer's `command` field.
ECHO_CHARS = 512

# The text of a chat-template control token (<|im_start|>, <|im_end|>, <|endoftext|>, ...):
# tokenizers turn it into the real token, so a command holding one could end the user's turn
# and write a system turn of its own.
CONTROL_TOKEN = re.compile(r'<\|[^<>|\s]{1,64}\|>')

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


def clean_command(text: str) -> str:
    """
    Return the command with control characters replaced by spaces and spaces collapsed.

    Lone surrogates (undecodable bytes that Python smuggled into a str) become U+FFFD, which
    every tokenizer can encode.
    """
    text = ''.join(' ' if unicodedata.category(ch) == 'Cc'
                   else '\ufffd' if unicodedata.category(ch) == 'Cs' else ch for ch in text)
    return ' '.join(text.split())


def shown_command(text: str, max_chars: int = DEFAULT_MAX_COMMAND_CHARS) -> str:
    """Return the command as an answer echoes it: cleaned, cut at ``max_chars`` with '…'."""
    if len(text) > max_chars:  # cut first: a huge string is never cleaned whole
        return clean_command(text[:max_chars]) + '…'
    return clean_command(text)


def check_command(command: str, max_chars: int = DEFAULT_MAX_COMMAND_CHARS) -> Optional[PlanError]:
    """Return why a command's text cannot be planned, or None when it can."""
    if not command.strip():
        return PlanError(EMPTY_COMMAND, 'the command is empty')
    if len(command) > max_chars:
        return PlanError(COMMAND_TOO_LONG, 'the command has %d characters; at most %d are '
                         'planned' % (len(command), max_chars))
    token = CONTROL_TOKEN.search(command)
    if token is not None:
        return PlanError(CONTROL_TOKEN_IN_COMMAND, 'the command contains %s, the text of a '
                         'chat-template control token; it is refused, since it could end the '
                         'user turn and inject instructions' % token.group(0))
    return None


def prepare_command(raw: str,
                    max_chars: int = DEFAULT_MAX_COMMAND_CHARS) -> Tuple[str, Optional[PlanError]]:
    """
    Return the command as it is planned (cleaned) and why it cannot be, or None when it can.

    Length first, on the raw text: a huge string is never cleaned whole; its answer echoes the
    start (:func:`shown_command`).
    """
    if len(raw) > max_chars:
        return shown_command(raw, max_chars), check_command(raw, max_chars)
    command = clean_command(raw)
    return command, check_command(command, max_chars)
