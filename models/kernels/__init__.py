"""mHC ops behind one dispatch: fused Triton kernels or their pure-PyTorch references.

`connection.kernels` selects the backend:
- "auto" (default): Triton on CUDA tensors, the reference everywhere else;
- "reference": always the PyTorch reference;
- "triton": always Triton. On the CPU this needs TRITON_INTERPRET=1 (Triton's interpreter; how the parity
  tests run in CI) and is an error without it.
A failing kernel raises; nothing falls back silently.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

from . import reference

BACKENDS = ("auto", "reference", "triton")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def get_ops(backend: str, device: torch.device) -> ModuleType:
    """The module holding `proj_rms`, `coefficients`, `pre_mix`, `post_res_mix` for this backend/device."""
    if backend not in BACKENDS:
        raise ValueError(f"connection.kernels: {backend!r} is not one of {list(BACKENDS)}")
    if backend == "reference" or (backend == "auto" and (device.type != "cuda" or not triton_available())):
        return reference
    if not triton_available():
        raise RuntimeError("connection.kernels='triton' but the triton package is not installed")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"connection.kernels='triton' on a {device.type} tensor needs TRITON_INTERPRET=1 (set before triton is "
            "imported); use kernels='reference' or 'auto' on the CPU"
        )
    from . import triton_ops

    return triton_ops
