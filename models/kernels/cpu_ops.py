"""Fused CPU ops for the n-stream connections: the same four ops as `torch_ops.py`, on a float32 state.

On the CPU the connection ops are memory-bound: the residual state is n x C floats per token, and every eager
PyTorch op walks over all of it once. The reference path takes ~20 such walks per sub-layer (forward and
backward), which made HC and mHC steps 1.6-2x a plain residual's on the CPU. Here each op is one walk:

(a) `proj_rms`      hh = x @ phi and the RMS from one pass (C++ for up to 8 outputs, HC's per-stream projection;
                    a BLAS matmul and a norm reduction for mHC's 24); the backward adds the RMS term in place.
(b)+(c) `coefficients`  sigmoids and the whole Sinkhorn iteration for many tokens at once, one token per SIMD
                    lane (probability domain for logit spreads up to 60, log domain beyond); the backward
                    recomputes the iterations and walks back through them.
(d) `pre_mix`       u = H_pre x, and its backward (dx and dH_pre) in one pass.
(e) `post_res_mix`  H_res x + H_post^T y in one pass; its backward (dx, dy, dH_res, dH_post) in one pass.

and `stream_pre`, (a) + the variant's coefficients + (d) as one autograd node, which the connections use when the
backend offers it: its backward builds the state's whole gradient in one matmul and one pass.

The loops are C++ (`cpu_fused.cpp`, compiled on first use with the machine's C++ compiler and cached, see
`extension`). Why not `torch.compile`: Inductor's C++ code for these ops keeps one loop over all tokens per
output (the post-mix backward became four passes over the state) and cannot vectorise the Sinkhorn across tokens;
per op it was 1.3-9x slower than these kernels (BENCHMARKS.md).

Limits, each handled by the reference op rather than an error: the Sinkhorn kernel is the paper's eps = 0
iteration (`sinkhorn_eps` > 0 runs the reference coefficients), and the kernels are unrolled for n <= 8 streams
(wider states run the reference ops). The state must be float32 (the ops raise otherwise; `auto` picks the
reference for other dtypes); F's output may be bf16 under autocast, the merge upcasts it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from . import torch_ops

BACKEND = "cpu"  # the connection.kernels value that selects this module

MAX_STREAMS = 8
_BLOCK_M = 8  # projection outputs per block in the C++ kernel (kBlockM)

# Compiler flags per ATen CPU capability: ATen's Vectorized<float> (used for the Sinkhorn lanes) picks its width
# from these macros, the same ones torch.compile's C++ backend uses. Anything else builds the portable version.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}

_extension = None


SOURCE = Path(__file__).with_name("cpu_fused.cpp")


def cache_dir() -> Path:
    """Where the compiled kernels live: $MHC_KERNEL_CACHE, else ~/.cache/mhc-replication/cpu-kernels, one folder
    per torch version, CPU capability and kernel source (a shared home on a mixed cluster keeps an AVX2 and an
    AVX-512 build, and two checkouts with different kernels do not rebuild over each other)."""
    root = os.environ.get("MHC_KERNEL_CACHE") or Path.home() / ".cache" / "mhc-replication" / "cpu-kernels"
    capability = torch.backends.cpu.get_cpu_capability()
    source = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return Path(root) / f"torch-{torch.__version__}-{capability.lower()}-{source}"


def extension():
    """The compiled kernels, built on first use (about 20-40 s) and loaded from `cache_dir()` afterwards (torch
    rebuilds only when the source or the flags change; concurrent processes wait on its lock file)."""
    global _extension
    if _extension is None:
        from torch.utils.cpp_extension import load

        capability = torch.backends.cpu.get_cpu_capability()
        # -fopenmp: at::parallel_for is inlined from ATen's headers and splits work across threads only when the
        # extension itself is compiled with OpenMP (the process then shares torch's libgomp, loaded first)
        flags = ["-O3", "-fopenmp"]
        if capability in _ISA_FLAGS:
            flags += _ISA_FLAGS[capability] + [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        _extension = load(
            name=f"mhc_cpu_kernels_{capability.lower()}",
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(directory),
            verbose=False,
        )
        seconds = time.perf_counter() - start
        if seconds > 2.0:  # a build, not a load from the cache
            print(f"fused CPU kernels compiled in {seconds:.0f} s (cached in {directory})", file=sys.stderr)
    return _extension


def _float32(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype != torch.float32:
            raise TypeError(
                f"the fused CPU connection ops take float32 tensors, got {t.dtype}; use connection.kernels="
                "'reference' for other dtypes on the CPU"
            )


def _padded_transpose(weight: torch.Tensor) -> torch.Tensor:
    """weight [K, M] -> [M', K], M' the next multiple of the projection kernel's block of outputs (zero rows)."""
    M = weight.shape[1]
    wt = torch.zeros(-(-M // _BLOCK_M) * _BLOCK_M, weight.shape[0], dtype=weight.dtype)
    wt[:M] = weight.t()
    return wt


# Up to this many projection outputs (HC: n + 2) the C++ kernels project the state and build its gradient
# faster than BLAS; mHC's n^2 + 2n = 24 outputs are faster as BLAS matmuls. Measured at 2048 tokens, n = 4,
# C = 256, 2 threads (2026-12-01): projection 0.32 ms (C++) vs 0.46 (BLAS + norm) for HC's 6 outputs, 0.74 vs 0.57
# for mHC's 24; the state's gradient 0.55 vs 0.91 and 1.49 vs 1.05.
_KERNEL_MAX_M = _BLOCK_M


def _project(x: torch.Tensor, weight: torch.Tensor, eps: float, per_stream: bool):
    """hh [T, R, M], inv_rms [T, R] of the rows of x [T, n, C] (R = n rows of C, or one of nC), and the padded
    transposed weight (None on the BLAS path): one function for `proj_rms` and `stream_pre`, so that both give
    bitwise the same mappings (block recomputation rebuilds them with the former)."""
    K = x.shape[-1] if per_stream else x.shape[-2] * x.shape[-1]
    M = weight.shape[1]
    if M > _KERNEL_MAX_M:
        rows = x.view(-1, K)
        hh = (rows @ weight).view(x.shape[0], -1, M)
        sumsq = torch.linalg.vector_norm(rows, dim=-1).square().view(x.shape[0], -1)
        wt = None
    else:
        wt = _padded_transpose(weight)
        hh, sumsq = extension().stream_project(x, wt, per_stream)
        hh = hh[..., :M]
    return hh, torch.rsqrt(sumsq / K + eps), wt


class _ProjRms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_flat: torch.Tensor, phi: torch.Tensor, eps: float):
        x2 = x_flat.reshape(-1, x_flat.shape[-1]).contiguous()
        hh, inv, _ = _project(x2.unsqueeze(1), phi, eps, per_stream=False)
        inv = inv.view(-1)
        ctx.save_for_backward(x2, phi, inv)
        ctx.shape = x_flat.shape
        return hh.reshape(*x_flat.shape[:-1], phi.shape[1]), inv.view(x_flat.shape[:-1])

    @staticmethod
    def backward(ctx, dhh: torch.Tensor, dinv: torch.Tensor):
        x2, phi, inv = ctx.saved_tensors
        dhh = dhh.reshape(-1, phi.shape[1])
        dx = dphi = None
        if ctx.needs_input_grad[0]:
            # hh = x phi: dhh phi^T; inv = (mean(x^2) + eps)^-1/2: d inv / dx = -inv^3 x / K
            dx = dhh @ phi.t()
            dx.addcmul_(x2, (dinv.reshape(-1) * inv.pow(3) / -x2.shape[-1]).unsqueeze(-1))
            dx = dx.view(ctx.shape)
        if ctx.needs_input_grad[1]:
            dphi = (dhh.t() @ x2).t()  # 2-3x faster on the CPU than x2.t() @ dhh (both operands read row-wise)
        return dx, dphi, None


class _Coefficients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hh, inv, alpha, bias, n: int, iters: int, pre_eps: float):
        hh, inv, alpha, bias = (t.contiguous() for t in (hh, inv, alpha, bias))
        ctx.save_for_backward(hh, inv, alpha, bias)
        ctx.n, ctx.iters = n, iters
        return tuple(extension().coefficients_fwd(hh, inv, alpha, bias, n, iters, pre_eps))

    @staticmethod
    def backward(ctx, d_pre, d_post, d_res):
        hh, inv, alpha, bias = ctx.saved_tensors
        n = ctx.n
        dhh, dinv, partial = extension().coefficients_bwd(
            d_pre.contiguous(), d_post.contiguous(), d_res.contiguous(), hh, inv, alpha, bias, n, ctx.iters
        )
        # per-block sums of dz and dz * h, z = alpha h + b the pre-activations: dbias and dalpha
        dbias, dzh = partial.sum(0).split(hh.shape[-1])
        dalpha = torch.stack([part.sum() for part in dzh.split([n, n, n * n])])
        return dhh, dinv, dalpha, dbias, None, None, None


class _PreMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, H_pre):
        x, H_pre = x.contiguous(), H_pre.contiguous()
        ctx.save_for_backward(x, H_pre)
        return extension().pre_mix_fwd(x, H_pre)

    @staticmethod
    def backward(ctx, du):
        x, H_pre = ctx.saved_tensors
        dx, dH_pre = extension().pre_mix_bwd(du.contiguous(), x, H_pre)
        return dx, dH_pre


class _PostResMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, H_res, H_post, y):
        x, H_res, H_post, y = (t.contiguous() for t in (x, H_res, H_post, y))
        ctx.save_for_backward(x, H_res, H_post, y)
        return extension().post_res_mix_fwd(x, H_res, H_post, y)

    @staticmethod
    def backward(ctx, grad):
        return tuple(extension().post_res_mix_bwd(grad.contiguous(), *ctx.saved_tensors))


def proj_rms(x_flat: torch.Tensor, phi: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x_flat [..., nC], phi [nC, M] -> (hh [..., M], inv_rms [...]) in float32 (see torch_ops.proj_rms)."""
    _float32(x_flat, phi)
    return _ProjRms.apply(x_flat, phi, eps)


def coefficients(
    hh: torch.Tensor,
    inv: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    n: int,
    iters: int,
    pre_eps: float = 0.0,
    sinkhorn_eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H_pre, H_post, H_res) as torch_ops.coefficients."""
    if sinkhorn_eps or n > MAX_STREAMS:
        return torch_ops.coefficients(hh, inv, alpha, bias, n, iters, pre_eps, sinkhorn_eps)
    _float32(hh, inv, alpha, bias)
    return _Coefficients.apply(hh, inv, alpha, bias, n, iters, pre_eps)


def pre_mix(x: torch.Tensor, H_pre: torch.Tensor) -> torch.Tensor:
    """x [..., n, C], H_pre [..., n] -> [..., C] (see torch_ops.pre_mix)."""
    if x.shape[-2] > MAX_STREAMS:
        return torch_ops.pre_mix(x, H_pre)
    _float32(x, H_pre)
    return _PreMix.apply(x, H_pre)


def post_res_mix(x: torch.Tensor, H_res: torch.Tensor, H_post: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x [..., n, C], H_res [..., n, n], H_post [..., n], y [..., C] -> [..., n, C] (see torch_ops.post_res_mix)."""
    if x.shape[-2] > MAX_STREAMS:
        return torch_ops.post_res_mix(x, H_res, H_post, y)
    _float32(x, H_res, H_post)
    # F's output may be bf16 (autocast runs F alone in bf16); the merge accumulates in float32, as the reference
    return _PostResMix.apply(x, H_res, H_post, y.float())


class _StreamPre(torch.autograd.Function):
    """Everything a connection does before its sub-layer, as one autograd node: the projection and RMS of the
    state, the variant's coefficients (any differentiable function of (hh, inv_rms), run as a small graph of its
    own) and u = H_pre x. Its backward produces dx in one matmul and one pass (projection, RMS and pre-mix terms
    together), where the separate ops leave three gradients of the state for autograd to add up.

    The state also leaves the node unchanged (the last output, the same storage): the connection hands that to the
    post-mix, so the post-mix's gradient of the state arrives here too and is added by the matmul (addmm) instead
    of by autograd in one more pass over the state."""

    @staticmethod
    def forward(ctx, x, weight, eps, per_stream, coefficients_fn, *params):
        n, C = x.shape[-2:]
        lead = x.shape[:-2]
        x = x.contiguous()
        M = weight.shape[1]
        hh, inv, wt = _project(x, weight, eps, per_stream)
        group = (*lead, n) if per_stream else lead
        with torch.enable_grad():
            hh_leaf = hh.reshape(*group, M).detach().requires_grad_()
            inv_leaf = inv.view(group).detach().requires_grad_()
            outputs = coefficients_fn(hh_leaf, inv_leaf)
        H_pre = outputs[0].detach().contiguous()
        u = extension().pre_mix_fwd(x, H_pre)
        ctx.save_for_backward(x, weight if wt is None else wt, inv, H_pre)
        ctx.graph = (hh_leaf, inv_leaf, outputs, params)
        ctx.per_stream, ctx.M, ctx.blas = per_stream, M, wt is None
        return (u, *(o.detach() for o in outputs), x.detach())

    @staticmethod
    @once_differentiable
    def backward(ctx, du, d_pre, d_post, d_res, d_state):
        x, w, inv, H_pre = ctx.saved_tensors
        hh_leaf, inv_leaf, outputs, params = ctx.graph
        ctx.graph = None
        n, C = x.shape[-2:]
        du = du.contiguous()
        d_pre = extension().pre_mix_dh(du, x) + d_pre
        pairs = [(o, g) for o, g in zip(outputs, (d_pre, d_post, d_res), strict=True) if o.requires_grad]
        wanted = [p for p in params if p.requires_grad]
        grads = torch.autograd.grad(
            [o for o, _ in pairs], [hh_leaf, inv_leaf, *wanted], [g for _, g in pairs], allow_unused=True
        )
        dhh = torch.zeros_like(hh_leaf) if grads[0] is None else grads[0]
        dinv = torch.zeros_like(inv_leaf) if grads[1] is None else grads[1]
        found = iter(grads[2:])
        dparams = [next(found) if p.requires_grad else None for p in params]
        K = C if ctx.per_stream else n * C
        # inv = (mean(row^2) + eps)^-1/2: d inv / d row = -inv^3 row / K, one factor per row (stream or token)
        k = (dinv.reshape(-1) * inv.reshape(-1).pow(3) / -K).view(*x.shape[:-2], -1).expand(*x.shape[:-1])
        dhh = dhh.contiguous()
        if ctx.blas:  # the post-mix's gradient plus the projection's in one addmm, then the pre-mix and RMS terms
            dx = torch.addmm(d_state.reshape(-1, K), dhh.view(-1, ctx.M), w.t()).view_as(x)
            extension().pre_mix_bwd_accumulate(dx, du, x, H_pre, k.contiguous())
        else:
            dx = extension().stream_pre_dx(d_state.contiguous(), dhh, w, du, x, H_pre, k.contiguous(), ctx.per_stream)
        dweight = None
        if ctx.needs_input_grad[1]:
            rows = x.view(-1, K)
            dweight = (dhh.reshape(rows.shape[0], ctx.M).t() @ rows).t()  # faster than rows.t() @ dhh
        return (dx, dweight, None, None, None, *dparams)


def stream_pre(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    per_stream: bool,
    coefficients_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    params: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, H_pre, H_post, H_res, x) for the state x [..., n, C], the same as

        hh, inv = proj_rms(x if per_stream else x.flatten(-2), weight, eps)
        H_pre, H_post, H_res = coefficients_fn(hh, inv)
        u = pre_mix(x, H_pre)

    in one autograd node; the returned x (same values and storage) is the state to hand to `post_res_mix`.
    `params` lists every tensor requiring grad that `coefficients_fn` uses besides its arguments (their gradients
    are routed through this node)."""
    if x.shape[-2] > MAX_STREAMS:
        hh, inv = torch_ops.proj_rms(x if per_stream else x.flatten(-2), weight, eps)
        H_pre, H_post, H_res = coefficients_fn(hh, inv)
        return torch_ops.pre_mix(x, H_pre), H_pre, H_post, H_res, x
    _float32(x, weight)
    return _StreamPre.apply(x, weight, eps, per_stream, coefficients_fn, *params)
