"""
The service's status: the figures it keeps of its answers, and the status message.

:class:`Tally` counts the answers by status, keeps the last latency, the window of recent
plans (:class:`~robot_llm_planner.serving.health.RecentPlans`) and the reason the backend
failed the last batch. :func:`status_message` puts them together with the service's state
and queue into the dict /planner_status publishes as JSON and /diagnostics shows
(``docs/ros.md`` lists its keys), its health included.
"""

import threading
import time
from typing import Dict, Optional, Sequence

from robot_llm_planner.core.message import STATUSES
from robot_llm_planner.serving.command_queue import CommandQueue
from robot_llm_planner.serving.health import health, LEVEL_NAMES, memory_figures, RecentPlans
from robot_llm_planner.serving.state import State


class Tally:
    """What the service answered: counts by status, the last latency, the recent plans."""

    def __init__(self) -> None:
        """Start at zero; every method is thread-safe."""
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = dict.fromkeys(STATUSES, 0)
        self._last_latency_ms: Optional[float] = None
        self._recent = RecentPlans()
        self._backend_error = ''  # why the last batch failed, until one succeeds

    def answered(self, message: dict) -> None:
        """Count one published answer (its latency, unless it was rejected unplanned)."""
        latency = message.get('timing', {}).get('total_ms')
        with self._lock:
            self._counts[message['status']] += 1
            if latency is not None and message['status'] != 'rejected':
                self._last_latency_ms = round(latency, 1)

    def planned(self, results: Sequence) -> None:
        """Record a planned batch: its plans in the window, whether the backend failed it."""
        failed = [result for result in results if result.status == 'error']
        with self._lock:
            self._recent.add([(result.status, result.timing) for result in results
                              if result.status in ('ok', 'invalid')])
            if failed and len(failed) == len(results):
                self._backend_error = failed[0].errors[0].message
            elif not failed:
                self._backend_error = ''

    def figures(self) -> dict:
        """Return the status's figures of the answers."""
        with self._lock:
            return {'last_latency_ms': self._last_latency_ms,
                    'answered': sum(self._counts.values()),
                    'rejected': self._counts['rejected'],
                    'counts': dict(self._counts),
                    'recent': self._recent.summary(),
                    'backend_error': self._backend_error}


def status_message(state: State, queue: CommandQueue, in_flight: int, tally: Tally,
                   node: str) -> dict:
    """Return the status message (a dict) of a service in ``state``, with its health."""
    served = state.served
    figures = tally.figures()
    status = {
        'state': state.name(busy=bool(in_flight or len(queue))),
        'lifecycle': state.lifecycle,
        'queue_depth': len(queue),
        'queue_max_size': queue.max_size,
        'queue_policy': queue.policy,
        'in_flight': in_flight,
        'model': dict(served.model),
        'model_hash': dict(served.hashes),
        'device': served.device,
        'dtype': served.dtype,
        'last_latency_ms': figures['last_latency_ms'],
        'answered': figures['answered'],
        'rejected': figures['rejected'],
        'counts': figures['counts'],
        'recent': figures['recent'],
        'error': state.failure.message if state.failure else '',
        'retrying': bool(state.failure and state.failure.retrying),
        'backend_error': figures['backend_error'],
        'memory': memory_figures(served.device),
        'node': node,
        'stamp': time.time(),
    }
    level, message = health(status)
    status['health'] = {'level': LEVEL_NAMES[level], 'message': message}
    return status
