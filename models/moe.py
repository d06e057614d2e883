"""DeepSeekMoE feed-forward: shared experts + top-k routed experts with loss-free load balancing.

Routing follows DeepSeek-V3: sigmoid affinities s = sigmoid(W_g x); experts are *selected* by the
top-k of s + b, where b is a per-expert balancing bias that is not trained by gradient; the chosen
experts are *weighted* by their s normalised to sum to one (times `route_scale`). After each optimiser
step the trainer calls `update_balance_bias()`, which moves b toward under-loaded experts
(Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing"): b_i += rate * sign(mean_load - load_i).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MoEConfig
from .layers import SwiGLU


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
        out = torch.zeros_like(x)
        for e, n_tokens in enumerate(counts.tolist()):
            if n_tokens == 0:
                continue
            token, slot = torch.where(ids == e)
            y = self.experts[e](x[token]) * weights[token, slot, None].to(x.dtype)
            out.index_add_(0, token, y)
        if self.shared is not None:
            out = out + self.shared(x)
        return out.view(shape)

    @torch.no_grad()
    def update_balance_bias(self, load: torch.Tensor | None = None) -> None:
        """Move the balancing bias toward under-loaded experts, then reset the load counter.

        `load` overrides the locally counted load (a data-parallel trainer passes the all-reduced one).
        """
        load = self.load if load is None else load
        self.balance_bias += self.cfg.bias_update_rate * torch.sign(load.float().mean() - load.float())
        self.load.zero_()
