"""Block recomputation of the connection intermediates (mHC paper section 4.3.2, Table 3).

The sub-layers are cut into blocks of L_r consecutive connections. In the forward pass a block keeps only
its first stream state x_{l0} (nC per token) plus, per sub-layer, the output of F (C per token, which F's
consumer needs anyway) and the tiny coefficients H_post, H_res (n + n^2); everything else the connection
computes (the stream states x_l inside the block, RMS, projections, sigmoid/Sinkhorn intermediates, H_pre x)
is discarded. In the backward pass the block's states are rebuilt once from x_{l0} by replaying
x_{l+1} = H_res x_l + H_post^T F_l (F is *not* re-run: its outputs were kept), and each connection's
coefficients are recomputed locally and differentiated with autograd.

Resident memory per token: nC * ceil(L / L_r) + (C + n^2 + n) * L; transient during one block's backward:
the block's L_r states (nC each). The optimum of nC ceil(L/L_r) + (n+2) C L_r is L_r* ~ sqrt(nL/(n+2))
(Eq. 20). Recompute blocks here follow the model's sub-layer order; with pipeline parallelism they must be
aligned with the stages (not relevant on one device).

Two autograd Functions per sub-layer, `_Pre` (x_l -> u_l = H_pre x_l, H_post, H_res) and `_Post`
(x_l, H_res, H_post, F_l -> x_{l+1}), because F runs between them with its own autograd graph.
"""

from __future__ import annotations

import math
import weakref

import torch

from ..kernels import get_ops
from .scope import connection_ops


def optimal_block(n: int, sublayers: int) -> int:
    """L_r* of Eq. 20: the integer minimising nC ceil(L/L_r) + (n+2) C L_r (C cancels)."""
    return min(range(1, sublayers + 1), key=lambda r: (n * math.ceil(sublayers / r) + (n + 2) * r, r))


class RecomputeBlock:
    """Shared state of one block of consecutive connections for one forward/backward pass."""

    def __init__(self) -> None:
        self.first_pre: weakref.ref | None = None  # ctx of the first _Pre: holds x_{l0}
        self.posts: list[weakref.ref] = []  # ctx of each _Post: hold (H_res, H_post, F_l)
        self.states: list[torch.Tensor] | None = None  # rebuilt x_l, only during the block's backward

    def state(self, k: int) -> torch.Tensor:
        """x_{l0 + k}, rebuilding every state of the block on first use (no grad, F not re-run)."""
        if self.states is None:
            (x,) = self.first_pre().saved_tensors
            states = [x]
            with torch.no_grad():
                for ref in self.posts[:-1]:
                    ctx = ref()
                    H_res, H_post, y = ctx.saved_tensors
                    states.append(get_ops(ctx.backend, x.device, x.dtype).post_res_mix(states[-1], H_res, H_post, y))
            self.states = states
        return self.states[k]

    def release(self) -> None:
        self.states = None


class _Pre(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, conn, block: RecomputeBlock, k: int, *params):
        ctx.conn, ctx.block, ctx.k = conn, block, k
        H_pre, H_post, H_res = conn.mappings(x)
        conn._keep(x, H_pre, H_post, H_res)
        u = get_ops(conn.cfg.kernels, x.device, x.dtype).pre_mix(x, H_pre)
        if k == 0:
            ctx.save_for_backward(x)  # the only stream state the block stores
            block.first_pre = weakref.ref(ctx)
        ctx.x_meta = (x.shape, x.dtype)
        return u, H_post, H_res

    @staticmethod
    def backward(ctx, g_u, g_post, g_res):
        conn, block = ctx.conn, ctx.block
        x = block.state(ctx.k).detach().requires_grad_()
        params = [p for p in conn.parameters()]
        with torch.enable_grad():
            H_pre, H_post, H_res = conn.mappings(x)
            u = get_ops(conn.cfg.kernels, x.device, x.dtype).pre_mix(x, H_pre)
            outs, grads = [], []
            for out, g in ((u, g_u), (H_post, g_post), (H_res, g_res)):
                if g is not None and out.requires_grad:
                    outs.append(out)
                    grads.append(g)
            inputs = [x, *[p for p in params if p.requires_grad]]
            got = torch.autograd.grad(outs, inputs, grads, allow_unused=True)
        if ctx.k == 0:
            block.release()  # the block's backward is complete
        grad_params = iter(got[1:])
        return (got[0], None, None, None, *[next(grad_params) if p.requires_grad else None for p in params])


class _Post(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, H_res, H_post, y, block: RecomputeBlock, k: int, backend: str):
        ctx.block, ctx.k, ctx.backend = block, k, backend
        ctx.save_for_backward(H_res, H_post, y)
        block.posts.append(weakref.ref(ctx))
        return get_ops(backend, x.device, x.dtype).post_res_mix(x, H_res, H_post, y)

    @staticmethod
    def backward(ctx, g_out):
        H_res, H_post, y = ctx.saved_tensors
        x = ctx.block.state(ctx.k).detach().requires_grad_()
        leaves = [t.detach().requires_grad_() for t in (H_res, H_post, y)]
        with torch.enable_grad():
            out = get_ops(ctx.backend, x.device, x.dtype).post_res_mix(x, *leaves)
            gx, gr, gp, gy = torch.autograd.grad(out, [x, *leaves], g_out)
        return gx, gr, gp, gy, None, None, None


def recomputed_forward(conn, state: torch.Tensor, sublayer, block: RecomputeBlock, k: int) -> torch.Tensor:
    """One connection's forward under block recomputation (k = its position inside the block)."""
    with connection_ops(state.device.type):  # as in StreamConnection.forward
        u, H_post, H_res = _Pre.apply(state, conn, block, k, *conn.parameters())
    y = sublayer(u)
    with connection_ops(state.device.type):
        return _Post.apply(state, H_res, H_post, y, block, k, conn.cfg.kernels)
