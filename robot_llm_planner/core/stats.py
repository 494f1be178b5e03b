"""
The one percentile of the project: /diagnostics, ``cli evaluate`` and the benchmarks use it.

Nearest rank: the value at rank ``ceil(share * n)`` of the sorted values, so every figure
reported is a latency (or length) that was measured, never one between two.
"""

import math
from typing import Optional, Sequence


def percentile(values: Sequence[float], share: float) -> Optional[float]:
    """Return the nearest-rank value at ``share`` (0 to 1) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]
