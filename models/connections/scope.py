"""The region in which a connection runs its own ops (not the sub-layer F).

`connection_ops` opens it (the forward paths in `base.py` and `recompute.py`); `in_connection_ops` says whether
the current code runs inside one, which lets `models/diagnostics.py` attribute saved activations. The marker is
a context variable, set and reset by the context manager, so nothing else can leave it set.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_IN_CONNECTION: ContextVar[bool] = ContextVar("in_connection_ops", default=False)


def in_connection_ops() -> bool:
    return _IN_CONNECTION.get()


@contextmanager
def connection_ops(device_type: str) -> Iterator[None]:
    """Region of a connection's own ops: autocast off (the mappings and stream mixes stay float32 when the
    streams are float32, while F keeps the caller's autocast) and marked for saved-tensor accounting."""
    token = _IN_CONNECTION.set(True)
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        _IN_CONNECTION.reset(token)
