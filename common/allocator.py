"""Keep freed activation memory in the process on Linux/glibc, instead of handing it back to the OS each step.

glibc's malloc serves large blocks (above its mmap threshold) with fresh mappings and returns freed memory at the
top of the heap to the kernel (the trim threshold), so the multi-megabyte activations of a CPU training step are
page-faulted in again, zero-filled by the kernel, on every step: ~45,000 minor faults per step at the
side-by-side benchmark's scale. The n-stream connections allocate n times more of that memory than a residual, so
they pay the most. Raising both thresholds took that benchmark's training step (2026-12-01, 2 cores, two
processes per setting, alternating) from 453-477 to 438-449 ms for the residual and from 575-617 to 542-556 ms for
HC and mHC on the fused CPU kernels, i.e. from 1.27-1.29x to 1.23-1.24x the residual (BENCHMARKS.md). The cost is
that the process keeps its peak heap until it exits, which a training process does anyway. This is what
LD_PRELOAD-ing jemalloc or tcmalloc achieves for PyTorch on the CPU, without a dependency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if applied (False off glibc, or if refused:
    then malloc keeps its defaults, which is slower but correct)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    if not mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # the largest value older glibc versions accept
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
