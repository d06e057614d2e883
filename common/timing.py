"""The benchmarks' timing loop: warm-up calls, then timed calls, several functions interleaved."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | None) -> None:
    """Wait for the work queued on `device` (a no-op off CUDA), so that a timer sees it finish."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin(
    steps: dict[str, Callable[[], None]],
    repeats: int,
    warmup: int = 3,
    device: torch.device | None = None,
    prepare: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median seconds per call of every step function after `warmup` untimed rounds: the functions run interleaved
    (round-robin), so drift in machine load hits all of them alike. On CUDA the device is synchronised before and
    after each timed call; `prepare()`, when given, runs before each call, outside the timed span."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, fn in steps.items():
            if prepare is not None:
                prepare()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def median_seconds(
    fn: Callable[[], None],
    repeats: int,
    warmup: int = 3,
    device: torch.device | None = None,
    prepare: Callable[[], None] | None = None,
) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup` untimed ones (`round_robin` of one function)."""
    return round_robin({"fn": fn}, repeats, warmup, device, prepare)["fn"]
