"""
The planner's health, as operators see it on /diagnostics: a level, a message, key-values.

The service's status dict (:mod:`robot_llm_planner.serving.status`) is the one source of
truth: /planner_status publishes it as JSON, and /diagnostics shows the same dict as one
DiagnosticStatus, its level and message from :func:`health` and its rows from
:func:`key_values`. :class:`RecentPlans` keeps the
window the latency, throughput and invalid-plan figures are taken over, and
:func:`memory_figures` the process's and the GPU's memory.

Levels (diagnostic_msgs/DiagnosticStatus):

- ERROR: the planner cannot plan: invalid parameters, the model failed to load, or the
  backend failed the last batch (unreachable, or an exception inside generation);
- WARN: it plans, but look: the queue is above 80 % of ``queue.max_size``, a load is being
  retried (a remote server down), or most of the recent plans were invalid;
- OK: otherwise, including inactive and unconfigured (a managed node that is off on purpose).
"""

from collections import deque
import os
import sys
from typing import Deque, Dict, List, Optional, Sequence, Tuple

from robot_llm_planner.core.stats import percentile

OK, WARN, ERROR = 0, 1, 2  # the values of DiagnosticStatus.OK, WARN and ERROR
LEVEL_NAMES = ('OK', 'WARN', 'ERROR')
WINDOW_PLANS = 50              # the recent window: the last this many plans
QUEUE_WARN_FRACTION = 0.8      # WARN when more commands wait than this share of the queue
INVALID_WARN_FRACTION = 0.5    # WARN when more of the recent plans than this are invalid
MIN_PLANS_FOR_INVALID = 4      # ... counted once the window holds this many plans

_STATE_TEXT = {
    'ready': 'ready: planning commands', 'busy': 'busy: planning commands',
    'loading': 'loading the model', 'inactive': 'inactive: commands are answered rejected',
    'unconfigured': 'unconfigured: no model loaded; commands are answered rejected',
}


class RecentPlans:
    """The last :data:`WINDOW_PLANS` plans and generated batches (not thread-safe: lock it)."""

    def __init__(self, size: int = WINDOW_PLANS) -> None:
        """Keep at most ``size`` plans and ``size`` batches."""
        self._plans: Deque[Tuple[str, float]] = deque(maxlen=size)     # (status, total_ms)
        self._batches: Deque[Tuple[int, float]] = deque(maxlen=size)   # (tokens, seconds)

    def add(self, results: Sequence[Tuple[str, dict]]) -> None:
        """Count one planned batch: (status, timing) of each command the model answered."""
        tokens, seconds = 0, 0.0
        for status, timing in results:
            if 'total_ms' in timing:
                self._plans.append((status, timing['total_ms']))
            if not timing.get('cached'):
                tokens += timing.get('tokens_generated', 0)
                seconds = max(seconds, timing.get('inference_ms', 0.0) / 1000.0)
        if seconds > 0:
            self._batches.append((tokens, seconds))

    def summary(self) -> dict:
        """Return the window's plan count, invalid count, latency p50/p95 and tokens/s."""
        latencies = [total_ms for _, total_ms in self._plans]
        seconds = sum(seconds for _, seconds in self._batches)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        return {
            'plans': len(self._plans),
            'invalid': sum(1 for status, _ in self._plans if status == 'invalid'),
            'latency_p50_ms': None if p50 is None else round(p50, 1),
            'latency_p95_ms': None if p95 is None else round(p95, 1),
            'tokens_per_s': round(sum(t for t, _ in self._batches) / seconds, 1)
            if seconds else None,
        }


def memory_figures(device: str = '') -> Dict[str, Optional[float]]:
    """
    Return this process's resident memory and, on a CUDA ``device``, torch's GPU memory (MB).

    torch is only asked when it is already imported (the remote backend never loads it).
    """
    figures: Dict[str, Optional[float]] = {'rss_mb': None}
    try:
        with open('/proc/self/statm', encoding='ascii') as stream:
            pages = int(stream.read().split()[1])
        figures['rss_mb'] = round(pages * os.sysconf('SC_PAGE_SIZE') / 2 ** 20, 1)
    except (OSError, ValueError, IndexError):  # not Linux
        pass
    torch = sys.modules.get('torch')
    if torch is not None and device.startswith('cuda') and torch.cuda.is_initialized():
        figures['cuda_allocated_mb'] = round(torch.cuda.memory_allocated(device) / 2 ** 20, 1)
        figures['cuda_reserved_mb'] = round(torch.cuda.memory_reserved(device) / 2 ** 20, 1)
    return figures


def health(status: dict) -> Tuple[int, str]:
    """Return the level (:data:`OK`, :data:`WARN`, :data:`ERROR`) and message of a status."""
    if status['state'] == 'error':
        return (WARN if status.get('retrying') else ERROR), status['error']
    if status.get('backend_error'):
        return ERROR, 'the backend failed the last plan: %s' % status['backend_error']
    warnings = []
    depth, capacity = status['queue_depth'], status['queue_max_size']
    if depth > QUEUE_WARN_FRACTION * capacity:
        warnings.append('queue above %d %%: %d of %d commands waiting'
                        % (QUEUE_WARN_FRACTION * 100, depth, capacity))
    recent = status.get('recent') or {}
    plans, invalid = recent.get('plans', 0), recent.get('invalid', 0)
    if plans >= MIN_PLANS_FOR_INVALID and invalid > INVALID_WARN_FRACTION * plans:
        warnings.append('%d of the last %d plans were invalid' % (invalid, plans))
    if warnings:
        return WARN, '; '.join(warnings)
    return OK, _STATE_TEXT.get(status['state'], status['state'])


def _shown(value) -> str:
    if value is None or value == '':
        return '-'
    return str(value)


def key_values(status: dict) -> List[Tuple[str, str]]:
    """Return the /diagnostics rows of a status, in the order operators read them."""
    model = status.get('model') or {}
    hashes = status.get('model_hash') or {}
    counts = status.get('counts') or {}
    recent = status.get('recent') or {}
    memory = status.get('memory') or {}
    rows = [
        ('lifecycle state', status.get('lifecycle')), ('planner state', status['state']),
        ('backend', model.get('backend')), ('model', model.get('base')),
        ('model hash', hashes.get('base')), ('adapter', model.get('adapter')),
        ('adapter hash', hashes.get('adapter')), ('device', status.get('device')),
        ('dtype', status.get('dtype')), ('queue depth', status['queue_depth']),
        ('queue capacity', status['queue_max_size']), ('queue policy', status.get('queue_policy')),
        ('in flight', status.get('in_flight')),
    ]
    rows += [('answers %s' % name, counts.get(name, 0)) for name in sorted(counts)]
    rows += [('recent plans', recent.get('plans', 0)),
             ('recent invalid plans', recent.get('invalid', 0)),
             ('plan latency p50 (ms)', recent.get('latency_p50_ms')),
             ('plan latency p95 (ms)', recent.get('latency_p95_ms')),
             ('tokens per second', recent.get('tokens_per_s')),
             ('process RSS (MB)', memory.get('rss_mb'))]
    if 'cuda_allocated_mb' in memory:
        rows += [('GPU memory allocated (MB)', memory['cuda_allocated_mb']),
                 ('GPU memory reserved (MB)', memory['cuda_reserved_mb'])]
    if status.get('error'):
        rows.append(('error', status['error']))
    return [(key, _shown(value)) for key, value in rows]
