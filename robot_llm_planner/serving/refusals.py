"""
The answer of a command that will not be planned: its status and the words that say why.

:func:`refusal` words what the service's state means for a command: shutting down
(``rejected``, ``node_shutting_down``), unable to plan (``error`` with the failure's code and
reason: invalid parameters, a model that did not load) or not active (``rejected``,
``node_inactive``). The moment is in the words too: on arrival, while the command waited in
the queue, or while it was planned, so an operator can tell which.
:func:`queue_full` and :func:`superseded` word the two queue policies' refusals.
"""

from typing import Tuple

from robot_llm_planner.core.command import NODE_INACTIVE, QUEUE_FULL, SHUTTING_DOWN, SUPERSEDED
from robot_llm_planner.core.plan import PlanError
from robot_llm_planner.serving.state import State

# When a command is refused.
ON_ARRIVAL = 'on_arrival'
WAITING = 'waiting'      # it was in the queue
PLANNING = 'planning'    # its generation did not end in time
CANCELLED = 'cancelled'  # its generation was cancelled

_WHEN = {
    WAITING: 'before planning this command',
    PLANNING: 'while planning this command (its generation did not end in time)',
    CANCELLED: 'while planning this command (generation cancelled)',
}


def refusal(state: State, moment: str) -> Tuple[str, PlanError]:
    """Return the status and the error of a command refused at ``moment`` in ``state``."""
    if state.shutting_down():
        if moment == ON_ARRIVAL:
            return 'rejected', PlanError(SHUTTING_DOWN, 'the planner node is shutting down')
        return 'rejected', PlanError(SHUTTING_DOWN, 'the planner node shut down ' + _WHEN[moment])
    if state.failure is not None:
        return 'error', PlanError(state.failure.code, state.failure.message)
    if moment == ON_ARRIVAL:
        return 'rejected', PlanError(NODE_INACTIVE, 'the planner node is not active (lifecycle '
                                     'state %s): it plans commands only when active'
                                     % state.lifecycle)
    return 'rejected', PlanError(NODE_INACTIVE,
                                 'the planner node was deactivated ' + _WHEN[moment])


def queue_full(max_size: int) -> PlanError:
    """Return why a command was refused by the full fifo queue."""
    return PlanError(QUEUE_FULL, 'the queue is full (queue.max_size %d, queue.policy fifo); '
                     'try again later' % max_size)


def superseded(max_size: int, newer_id: str) -> PlanError:
    """Return why a waiting command was dropped by the full latest queue."""
    return PlanError(SUPERSEDED, 'dropped from the full queue (queue.policy latest, '
                     'queue.max_size %d) for the newer command %s' % (max_size, newer_id))
