"""Sinkhorn-Knopp projection onto (approximately) doubly stochastic matrices, paper Eq. 9.

M^(0) = exp(logits), then t_max iterations of M <- T_r(T_c(M)): normalise columns, then rows. The row
step runs last, so every row of the result sums to 1 exactly (forward gain exact) and the columns carry
the truncation error (backward gain ~ 1), as the paper's Fig. 7 shows.

Numerics: the per-matrix maximum is subtracted before exp (exact: Sinkhorn is invariant to a scalar
factor). `eps` (default 0, as in the paper; DeepSeek-V4's code uses 1e-6) is added to every
denominator, and every denominator is floored at the dtype's smallest normal number, so that a column
that underflows entirely (logit spread > ~87 in float32) gives zeros instead of 0/0 = NaN; in normal
operation the floor never binds and the result is exactly Eq. 9.

The backward is plain autograd through the unrolled iterations, i.e. the exact gradient of the truncated
map (not an implicit-function approximation).
"""

from __future__ import annotations

import torch


def sinkhorn(logits: torch.Tensor, iters: int = 20, eps: float = 0.0) -> torch.Tensor:
    """logits [..., n, n] -> doubly stochastic [..., n, n] in the logits' dtype (use float32 or float64)."""
    tiny = torch.finfo(logits.dtype).tiny
    m = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))
    for _ in range(iters):
        m = m / (m.sum(dim=-2, keepdim=True) + eps).clamp_min(tiny)  # T_c: every column sums to 1
        m = m / (m.sum(dim=-1, keepdim=True) + eps).clamp_min(tiny)  # T_r: every row sums to 1 (last: exact)
    return m


class _Sinkhorn(torch.autograd.Function):
    """`sinkhorn` with its backward written out: the same map and the same (exact) gradient of the truncated
    iteration, with far less overhead on the CPU, where the unrolled loop's ~100 tiny ops dominate the connection's
    time. Two things make it cheaper: the matrices are laid out token-last ([n, n, tokens], one copy in and out),
    because PyTorch's CPU kernels are ~7x slower on a trailing n x n dimension than on long contiguous rows, and the
    backward walks the saved normalised matrices in reverse with d/dM of M / s(M) = (g - s(g * M / s)) / s (s sums
    along the normalised axis) instead of autograd's longer chain."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
        shape = logits.shape
        z = logits.reshape(-1, shape[-2], shape[-1]).permute(1, 2, 0).contiguous()  # [n, n, tokens]
        tiny = torch.finfo(z.dtype).tiny
        top = z.amax(dim=(0, 1), keepdim=True)
        m = torch.exp(z - top)
        saved = [m]
        floors = []  # per step: where the denominator was floored (no gradient flows through it there)
        for _ in range(iters):
            for dim in (0, 1):  # columns (sum over the output index i), then rows
                d = m.sum(dim=dim, keepdim=True)
                if eps:
                    d = d + eps
                floors.append(d < tiny)
                m = m / d.clamp_min(tiny)
                saved.append(m)
        ctx.iters, ctx.floors, ctx.eps, ctx.shape = iters, floors, eps, shape
        ctx.save_for_backward(z, top, *saved)
        return m.permute(2, 0, 1).reshape(shape).contiguous()  # (a strided H_res sends bmm to a slow path)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, top, m0, *outs = ctx.saved_tensors
        tiny = torch.finfo(z.dtype).tiny
        shape = ctx.shape
        g = grad.reshape(-1, shape[-2], shape[-1]).permute(1, 2, 0).contiguous()
        for step in range(2 * ctx.iters - 1, -1, -1):
            dim = step % 2
            before = outs[step - 1] if step else m0
            d = before.sum(dim=dim, keepdim=True)
            if ctx.eps:
                d = d + ctx.eps
            through = (g * outs[step]).sum(dim=dim, keepdim=True).masked_fill(ctx.floors[step], 0.0)
            g = (g - through) / d.clamp_min(tiny)
        # m0 = exp(z - max): d/dz = g m0, and the max (a constant shift of the logits) passes its share to the
        # maximal entries, as autograd's amax does (zero in total when eps = 0: the map ignores a constant shift)
        gz = g * m0
        is_top = z == top
        gz = gz - is_top / is_top.sum(dim=(0, 1), keepdim=True) * gz.sum(dim=(0, 1), keepdim=True)
        return gz.permute(2, 0, 1).reshape(shape).contiguous(), None, None


def sinkhorn_fast(logits: torch.Tensor, iters: int = 20, eps: float = 0.0) -> torch.Tensor:
    """The same map as `sinkhorn` with a hand-written backward (see `_Sinkhorn`); tested against `sinkhorn`."""
    return _Sinkhorn.apply(logits, iters, eps)
