"""Sinkhorn-Knopp projection onto (approximately) doubly stochastic matrices, paper Eq. 9.

M^(0) = exp(logits), then t_max iterations of M <- T_r(T_c(M)): normalise columns, then rows. The row
step runs last, so every row of the result sums to 1 (forward gain exact up to float rounding) and the
columns carry the truncation error (backward gain ~ 1), as the paper's Fig. 7 shows.

Numerics: with eps = 0 (the paper) the iteration runs in the log domain, L <- log_softmax(L) over the
columns, then over the rows, and returns exp(L). That is the same map in exact arithmetic, and it stays
exact where exp(logits) would underflow: with a logit spread beyond ~87 (float32) a whole row of
exp(logits - max) is 0, the normalisations divide by a floored 0, the row sums to 0 instead of 1 and the
gradient is NaN (the learning-rate stress test reaches such spreads). `eps` > 0 (DeepSeek-V4's code adds 1e-6
to every denominator) runs the probability-domain form it is defined in, with the per-matrix maximum
subtracted before exp and the denominators floored at the dtype's smallest normal number.

The backward is the exact gradient of the truncated map (not an implicit-function approximation):
autograd through the unrolled iterations in `sinkhorn`, the definition the tests hold everything to, and a
hand-written reverse pass in `sinkhorn_fast`, the CPU path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch.autograd.function import once_differentiable

# Set by `unrolled_sinkhorn()`: `sinkhorn_fast` then runs the unrolled `sinkhorn` (forward-mode AD, double backward).
_UNROLLED: ContextVar[bool] = ContextVar("unrolled_sinkhorn", default=False)


@contextmanager
def unrolled_sinkhorn() -> Iterator[None]:
    """Inside, `sinkhorn_fast` is the unrolled `sinkhorn`: the same map, differentiable to any order and in forward
    mode (the hand-written `_Sinkhorn` has a once-differentiable backward and no jvp). The Jacobian gain diagnostics
    (models/jacobian_gain.py) measure inside it."""
    token = _UNROLLED.set(True)
    try:
        yield
    finally:
        _UNROLLED.reset(token)


def sinkhorn(logits: torch.Tensor, iters: int = 20, eps: float = 0.0) -> torch.Tensor:
    """logits [..., n, n] -> doubly stochastic [..., n, n] in the logits' dtype (use float32 or float64)."""
    if not eps:
        log_m = logits
        for _ in range(iters):
            log_m = torch.log_softmax(log_m, dim=-2)  # T_c: every column sums to 1
            log_m = torch.log_softmax(log_m, dim=-1)  # T_r: every row sums to 1 (last: exact)
        return torch.exp(log_m)
    tiny = torch.finfo(logits.dtype).tiny
    m = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))
    for _ in range(iters):
        m = m / (m.sum(dim=-2, keepdim=True) + eps).clamp_min(tiny)  # T_c
        m = m / (m.sum(dim=-1, keepdim=True) + eps).clamp_min(tiny)  # T_r
    return m


class _Sinkhorn(torch.autograd.Function):
    """The log-domain `sinkhorn` (eps = 0) with its backward written out: the same map and the same exact gradient
    of the truncated iteration, with far less overhead on the CPU, where the unrolled loop's ~100 tiny ops dominate
    the connection's time. Two things make it cheaper: the matrices are laid out token-last ([n, n, tokens], one
    copy in and out), because PyTorch's CPU kernels are ~7x slower on a trailing n x n dimension than on long
    contiguous rows, and the backward walks the saved normalised matrices in reverse: for L' = log_softmax(L) along
    an axis, dL = dL' - P' sum(dL') with P' = exp(L') the normalised matrix."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, iters: int) -> torch.Tensor:
        shape = logits.shape
        log_m = logits.reshape(-1, shape[-2], shape[-1]).permute(1, 2, 0).contiguous()  # [n, n, tokens]
        normalised = []  # P after each half-step (what the backward needs)
        for _ in range(iters):
            for dim in (0, 1):  # columns (the output index i runs along dim 0), then rows
                log_m = torch.log_softmax(log_m, dim=dim)
                normalised.append(torch.exp(log_m))
        ctx.iters, ctx.shape = iters, shape
        ctx.save_for_backward(*normalised)
        out = normalised[-1] if normalised else torch.exp(log_m)
        return out.permute(2, 0, 1).reshape(shape).contiguous()  # (a strided H_res sends bmm to a slow path)

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad: torch.Tensor):
        normalised = ctx.saved_tensors
        shape = ctx.shape
        g = grad.reshape(-1, shape[-2], shape[-1]).permute(1, 2, 0).contiguous()
        g = g * normalised[-1]  # out = exp(L_last)
        for step in range(2 * ctx.iters - 1, -1, -1):
            g = g - normalised[step] * g.sum(dim=step % 2, keepdim=True)
        return g.permute(2, 0, 1).reshape(shape).contiguous(), None


def sinkhorn_fast(logits: torch.Tensor, iters: int = 20, eps: float = 0.0) -> torch.Tensor:
    """The same map as `sinkhorn` with a hand-written backward for eps = 0 (see `_Sinkhorn`); tested against
    `sinkhorn`. With eps > 0 (or inside `unrolled_sinkhorn()`) it is `sinkhorn` itself."""
    if eps or iters < 1 or _UNROLLED.get():
        return sinkhorn(logits, iters, eps)
    return _Sinkhorn.apply(logits, iters)
