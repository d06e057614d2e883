"""mHC ops behind one dispatch: fused kernels (Triton on CUDA, C++ on the CPU) or the eager PyTorch ops.

`connection.kernels` selects the backend:
- "auto" (default): Triton on CUDA tensors, the fused CPU kernels on float32 CPU tensors when they can be built
  (a C++ compiler on the PATH and the Python headers), the eager PyTorch ops (`torch_ops`) everywhere else;
- "reference": always the eager PyTorch ops (`torch_ops`);
- "triton": always Triton. On the CPU this needs TRITON_INTERPRET=1 (Triton's interpreter; how the parity
  tests run in CI) and is an error without it;
- "cpu": always the fused CPU kernels (`cpu_ops`; compiled on first use, so it needs a C++ compiler).
A failing kernel raises; nothing falls back silently.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sysconfig
from pathlib import Path
from types import ModuleType

import torch

from . import torch_ops

BACKENDS = ("auto", "reference", "triton", "cpu")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def cpu_compiler_available() -> bool:
    """Whether the fused CPU kernels can be built here: a C++ compiler (torch's extension builder uses $CXX, else
    c++) and the Python headers it compiles against."""
    return _can_build(os.environ.get("CXX", "c++"))


@functools.cache
def _can_build(compiler: str) -> bool:
    # cached: the PATH search and file checks cost ~0.1 ms each time
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(compiler) is not None and headers.is_file()


def get_ops(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> ModuleType:
    """The module holding `proj_rms`, `coefficients`, `pre_mix`, `post_res_mix` for this backend, device and
    activation dtype. Every connection call asks, so the answer is cached; the two environment variables the
    answer depends on are part of the key, so setting them later still takes effect."""
    return _resolve(backend, device.type, dtype, os.environ.get("CXX", "c++"), os.environ.get("TRITON_INTERPRET"))


@functools.cache
def _resolve(
    backend: str, device_type: str, dtype: torch.dtype, compiler: str, triton_interpret: str | None
) -> ModuleType:
    if backend not in BACKENDS:
        raise ValueError(f"connection.kernels: {backend!r} is not one of {list(BACKENDS)}")
    if backend == "cpu" or (
        backend == "auto" and device_type == "cpu" and dtype == torch.float32 and _can_build(compiler)
    ):
        if device_type != "cpu":
            raise RuntimeError(f"connection.kernels='cpu' on a {device_type} tensor; use 'auto' or 'triton'")
        from . import cpu_ops

        return cpu_ops
    if backend == "reference" or (backend == "auto" and (device_type != "cuda" or not triton_available())):
        return torch_ops
    if not triton_available():
        raise RuntimeError("connection.kernels='triton' but the triton package is not installed")
    if device_type != "cuda" and triton_interpret != "1":
        raise RuntimeError(
            f"connection.kernels='triton' on a {device_type} tensor needs TRITON_INTERPRET=1 (set before triton is "
            "imported); use kernels='reference' or 'auto' on the CPU"
        )
    from . import triton_ops

    return triton_ops
