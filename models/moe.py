"""DeepSeekMoE feed-forward: shared experts + top-k routed experts with loss-free load balancing.

Routing follows DeepSeek-V3: sigmoid affinities s = sigmoid(W_g x); experts are *selected* by the
top-k of s + b, where b is a per-expert balancing bias that is not trained by gradient; the chosen
experts are *weighted* by their s normalised to sum to one (times `route_scale`). After each optimiser
step the trainer calls `update_balance_bias()`, which moves b toward under-loaded experts
(Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing"): b_i += rate * sign(mean_load - load_i).

The routed experts run without a Python loop over experts: the (token, expert) pairs are sorted by expert once,
and all experts' SwiGLUs are two grouped matmuls over the sorted rows, w1 and w3 side by side, then w2 (where
grouped_mm is unavailable: batched matmuls over blocks zero-padded to the busiest expert). The experts keep their
own `SwiGLU` modules, so parameter names, checkpoints and initialisation are those of one module per expert; the
weights are stacked on the fly, a copy of the routed weights per forward (small next to the matmuls).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from .config import MoEConfig
from .layers import SwiGLU

# One op for all experts' matmuls over rows sorted by expert (torch >= 2.10); older torch takes the padded
# batched-matmul path below.
_grouped_mm = getattr(F, "grouped_mm", None)
# Set by `padded_experts()`: every MoE takes the padded batched-matmul path.
_PADDED: ContextVar[bool] = ContextVar("padded_experts", default=False)


@contextmanager
def padded_experts() -> Iterator[None]:
    """Inside, the routed experts run as batched matmuls over zero-padded blocks instead of grouped_mm (the same
    function): grouped_mm has no forward-mode AD, which the Jacobian gain diagnostics (models/jacobian_gain.py) need."""
    token = _PADDED.set(True)
    try:
        yield
    finally:
        _PADDED.reset(token)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the experts' matmuls run in: what `nn.Linear` would use under autocast, else the input's.
    grouped_mm is not on autocast's cast lists, so the stacked weights are cast by hand."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _can_group(device: torch.device, dtype: torch.dtype, *widths: int) -> bool:
    """Whether grouped_mm takes these operands: CPU or CUDA, float32 / bfloat16 / float16, and rows that start
    on 16-byte boundaries, i.e. every matrix width (the model's, the expert's) a multiple of 16 bytes. Anything
    else (float64, odd widths, older torch, other devices) takes the padded path."""
    if _grouped_mm is None or _PADDED.get() or device.type not in ("cpu", "cuda"):
        return False
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    return all(w * dtype.itemsize % 16 == 0 for w in widths)


def _grouped_swiglu(rows: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """SwiGLU of each expert over its block of `rows` (sorted by expert, `counts` rows each, all > 0).
    w13: [E, dim, 2 * hidden] (w1 and w3 side by side), w2: [E, hidden, dim]."""
    ends = torch.tensor(counts, device=rows.device).cumsum(0).to(torch.int32)
    gate, up = _grouped_mm(rows, w13, offs=ends).chunk(2, dim=-1)
    return _grouped_mm(F.silu(gate) * up, w2, offs=ends)


def _padded_swiglu(rows: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Same as `_grouped_swiglu` with batched matmuls: each expert's block is zero-padded to the largest block.
    Padding rows are zero in the input, stay zero through SwiGLU (silu(0) * 0) and get zero gradient, so
    they add nothing to the weight gradients."""
    n_experts, cap = len(counts), max(counts)
    sizes = torch.tensor(counts, device=rows.device)
    expert = torch.repeat_interleave(torch.arange(n_experts, device=rows.device), sizes)
    first = sizes.cumsum(0) - sizes
    slot = expert * cap + torch.arange(rows.shape[0], device=rows.device) - first[expert]
    padded = rows.new_zeros(n_experts * cap, rows.shape[1]).index_copy(0, slot, rows).view(n_experts, cap, -1)
    gate, up = torch.bmm(padded, w13).chunk(2, dim=-1)
    return torch.bmm(F.silu(gate) * up, w2).flatten(0, 1).index_select(0, slot)


class MoE(nn.Module):
    def __init__(self, dim: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(dim, cfg.n_routed, bias=False)
        self.experts = nn.ModuleList(SwiGLU(dim, cfg.expert_dim) for _ in range(cfg.n_routed))
        # The shared experts are always active, so they are one SwiGLU of n_shared x the expert width.
        self.shared = SwiGLU(dim, cfg.n_shared * cfg.expert_dim) if cfg.n_shared else None
        self.register_buffer("balance_bias", torch.zeros(cfg.n_routed))  # saved with the model
        self.register_buffer("load", torch.zeros(cfg.n_routed), persistent=False)  # tokens since last update

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N, dim] -> (expert ids [N, k], weights [N, k] in float32)."""
        scores = torch.sigmoid(self.gate(x).float())
        ids = torch.topk(scores + self.balance_bias, self.cfg.n_active, dim=-1).indices
        weights = scores.gather(-1, ids)
        weights = weights / weights.sum(-1, keepdim=True) * self.cfg.route_scale
        return ids, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        ids, weights = self.route(x)
        counts = torch.bincount(ids.flatten(), minlength=self.cfg.n_routed)
        if self.training:
            self.load += counts.to(self.load.dtype)
        # The routed outputs are added into the shared experts' output rather than into zeros that are then added
        # to it: one pass less over [N, dim]. Adding in place is safe because SwiGLU's last linear does not save
        # its output for backward. Under autocast that output is bfloat16; the sum stays in x's dtype.
        out = self.shared(x).to(x.dtype) if self.shared is not None else torch.zeros_like(x)
        # Only experts that received tokens enter the graph, so an idle expert's gradient stays None (as with a
        # per-expert loop): AdamW then skips it instead of moving it by momentum and weight decay, and DDP's
        # unused-parameter detection sees it as unused.
        sizes = counts.tolist()
        active = [e for e, n in enumerate(sizes) if n]
        if active:
            # Sort the (token, slot) pairs by expert once; a stable sort keeps each expert's tokens in order.
            order = torch.argsort(ids.flatten(), stable=True)
            token = order // self.cfg.n_active
            dtype = _compute_dtype(x)
            experts = [self.experts[e] for e in active]
            w13 = torch.cat(
                [torch.stack([e.w1.weight for e in experts]), torch.stack([e.w3.weight for e in experts])], 1
            )
            w2 = torch.stack([e.w2.weight for e in experts])
            # [E, out, in] -> [E, in, out] views: rows @ w, as nn.Linear computes rows @ weight.T.
            w13, w2 = w13.to(dtype).transpose(1, 2), w2.to(dtype).transpose(1, 2)
            # index_select rather than x[token]: its backward is index_add_, much cheaper on CPU than the
            # accumulating index_put_ of advanced indexing.
            rows = x.index_select(0, token).to(dtype)
            grouped = _can_group(x.device, dtype, shape[-1], self.cfg.expert_dim)
            swiglu = _grouped_swiglu if grouped else _padded_swiglu
            y = swiglu(rows, w13, w2, [sizes[e] for e in active])
            y = y * weights.flatten().index_select(0, order)[:, None].to(x.dtype)
            out.index_add_(0, token, y)
        return out.view(shape)

    @torch.no_grad()
    def update_balance_bias(self, load: torch.Tensor | None = None) -> None:
        """Move the balancing bias toward under-loaded experts, then reset the load counter.

        `load` overrides the locally counted load (a data-parallel trainer passes the all-reduced one).
        """
        load = self.load if load is None else load
        self.balance_bias += self.cfg.bias_update_rate * torch.sign(load.float().mean() - load.float())
        self.load.zero_()
