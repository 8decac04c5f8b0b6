"""Wall-clock timing shared by the benchmarks (each is run as ``python benchmarks/bench_X.py``,
so this folder is on ``sys.path``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def call_times(function: Callable[[], object], repeats: int) -> list[float]:
    """Wall time in seconds of each of ``repeats`` calls of ``function``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def median_time(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``function`` (seconds)."""
    return statistics.median(call_times(function, repeats))


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls of ``function`` (seconds)."""
    return min(call_times(function, repeats))
