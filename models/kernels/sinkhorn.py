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
