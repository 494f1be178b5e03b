"""
The planner service's state: one value, replaced whole at every change.

A :class:`State` says where the lifecycle has brought the service (:class:`Phase`), why it
cannot plan when it cannot (:class:`Failure`), what it serves (:class:`Served`) and the
managed node's lifecycle label. Its methods are the transitions (``configuring``,
``activated``, ``closing``, ...): once shutting down, the service stays so whatever else
happens. Whether a new command is queued (:meth:`State.takes_commands`), whether the worker
plans (:meth:`State.plans`) and the ``state`` the status shows (:meth:`State.name`) all follow
from the value.

:class:`StateCell` holds the current value and the lock every change takes; a decision that
must not race a change (queue this command? plan this batch?) is taken under it too.
"""

from dataclasses import dataclass, field, replace
import enum
import threading
from typing import Callable, Dict, Optional


class Phase(enum.Enum):
    """Where the lifecycle has brought the service, and what a new command meets there."""

    UNCONFIGURED = 'unconfigured'  # no model: commands are refused (node_inactive)
    STARTING = 'starting'          # on its way to active by itself: commands wait in the queue
    LOADING = 'loading'            # configure loads the model: commands are refused
    INACTIVE = 'inactive'          # the model is loaded: commands are refused
    ACTIVE = 'active'              # commands are queued and planned
    CLOSING = 'closing'            # shutting down: commands are refused (node_shutting_down)
    CLOSED = 'closed'              # shut down: nothing is published any more


_SHUTTING_DOWN = (Phase.CLOSING, Phase.CLOSED)


@dataclass(frozen=True)
class Failure:
    """Why the service cannot plan: every command is answered ``error`` with it."""

    message: str
    code: str               # invalid_parameters or model_load_failed
    retrying: bool = False  # the load is tried again (a remote server down)


def _no_hashes() -> Dict[str, str]:
    return {'base': '', 'adapter': ''}


@dataclass(frozen=True)
class Served:
    """What the service serves: the model as answers name it, where it runs, its hashes."""

    model: Dict[str, str]   # backend, base, adapter (and quantization when there is one)
    device: str = ''
    dtype: str = ''
    hashes: Dict[str, str] = field(default_factory=_no_hashes)

    def describe(self) -> str:
        """Return the model in words, for the log."""
        text = '%s backend, base %s' % (self.model.get('backend'),
                                        self.model.get('base') or '(none)')
        if self.model.get('adapter'):
            text += ', adapter %s' % self.model['adapter']
        return text


@dataclass(frozen=True)
class State:
    """The service's state: its phase, its failure, what it serves, the lifecycle label."""

    phase: Phase
    served: Served
    failure: Optional[Failure] = None
    lifecycle: str = 'unconfigured'  # the managed node's state label (status, refusals)

    def takes_commands(self) -> bool:
        """Return True when a new command is queued; False: it is refused at once."""
        return self.failure is None and self.phase in (Phase.STARTING, Phase.ACTIVE)

    def plans(self) -> bool:
        """Return True when the worker plans the queue."""
        return self.failure is None and self.phase is Phase.ACTIVE

    def shutting_down(self) -> bool:
        """Return True from the start of the shutdown on."""
        return self.phase in _SHUTTING_DOWN

    def name(self, busy: bool) -> str:
        """Return the ``state`` of the status; ``busy``: commands are in flight or waiting."""
        if self.failure is not None:
            return 'error'
        if self.phase is Phase.ACTIVE:
            return 'busy' if busy else 'ready'
        if self.phase in (Phase.STARTING, Phase.LOADING):
            return 'loading'  # configuring, or on its way to active (autostart)
        if self.phase is Phase.UNCONFIGURED:
            return 'unconfigured'
        return 'inactive'  # inactive, or shutting down

    # ------------------------------------------------------------------ transitions
    def _to(self, phase: Phase, **changes) -> 'State':
        if self.shutting_down() and phase not in _SHUTTING_DOWN:
            phase = self.phase  # a shutdown is never undone
        return replace(self, phase=phase, **changes)

    def labelled(self, lifecycle: str) -> 'State':
        """Return the state with the node's new lifecycle label."""
        return replace(self, lifecycle=lifecycle)

    def configuring(self, served: Served) -> 'State':
        """Return the state at the start of configure: the model loads (commands may wait)."""
        phase = Phase.STARTING if self.phase is Phase.STARTING else Phase.LOADING
        return self._to(phase, failure=None, served=served)

    def model_built(self, served: Served) -> 'State':
        """Return the state once the planner exists (not loaded yet), named as it serves."""
        return replace(self, served=served)

    def failed(self, failure: Failure) -> 'State':
        """Return the state of unusable parameters or a model that did not load (yet)."""
        return replace(self, failure=failure)

    def model_loaded(self, served: Served) -> 'State':
        """Return the state once the model is loaded: an earlier try's failure is over."""
        return replace(self, failure=None, served=served)

    def configured(self, loaded: bool) -> 'State':
        """Return the state at the end of configure: inactive if loaded (or still starting)."""
        if not loaded:
            return self._to(Phase.UNCONFIGURED)
        return self._to(Phase.STARTING if self.phase is Phase.STARTING else Phase.INACTIVE)

    def activated(self) -> 'State':
        """Return the state after activate: commands are queued and planned."""
        return self._to(Phase.ACTIVE)

    def deactivated(self) -> 'State':
        """Return the state after deactivate: commands are refused."""
        return self._to(Phase.INACTIVE)

    def cleaned_up(self, served: Served) -> 'State':
        """Return the state after cleanup: no model (a failure stays until configure)."""
        return self._to(Phase.UNCONFIGURED, served=served)

    def closing(self) -> 'State':
        """Return the state once the shutdown began: commands are refused from now on."""
        return self._to(Phase.CLOSING)

    def closed(self) -> 'State':
        """Return the state once the shutdown ended: nothing is published any more."""
        return self._to(Phase.CLOSED)


class StateCell:
    """The service's current :class:`State` and the lock (a condition) of every change."""

    def __init__(self, state: State) -> None:
        """Hold ``state``; the lock is reentrant, so a change may be made under it."""
        self.lock = threading.Condition(threading.RLock())
        self._state = state

    @property
    def value(self) -> State:
        """Return the current state (a value: it never changes under the caller)."""
        return self._state

    def apply(self, transition: Callable[[State], State]) -> State:
        """Replace the state by ``transition(state)`` and wake the waiters; return it."""
        with self.lock:
            self._state = transition(self._state)
            self.lock.notify_all()
            return self._state

    def notify(self) -> None:
        """Wake the waiters after a change they wait for that is not in the state."""
        with self.lock:
            self.lock.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (called under the lock) is true; False after ``timeout``."""
        with self.lock:
            return self.lock.wait_for(predicate, timeout)
