"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def throughput(
    fn: Callable[[], object], batch: int, warmup: int = 3, min_seconds: float = 1.5, min_iters: int = 5
) -> dict[str, float]:
    """Clips per second of `fn` (one call = `batch` clips): median over timed calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"clips_per_s": batch / med, "ms_per_call": med * 1000, "calls": len(times)}
