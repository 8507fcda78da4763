"""The timing helper the benchmarks share: median wall time of a callable (CUDA synchronised)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(
    fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu", warmup: int = 2
) -> float:
    """Median over `repeats` calls of fn's wall time in milliseconds, after `warmup` calls."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
