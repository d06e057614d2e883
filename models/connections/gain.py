"""A single residual stream with learnable gains: x_{l+1} = a_l x_l + b_l F(x_l).

A control, not a method from the paper. Part of what a hyper-connection learns is how strongly each sub-layer's
residual and output are weighted (row sums of H_res above 1 amplify the residual; H_post scales the output). Two
learnable scalars per sub-layer, initialised to 1 (so the network starts as the plain pre-norm residual network),
can learn exactly that and nothing else: no second stream, no mixing. If this control recovers a hyper-connection's
gain over the baseline, the gain is a residual gain, not stream mixing.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConnectionConfig
from .base import SubLayer, grad_norm
from .residual import Residual


class ResidualGain(Residual):
    """The residual connection with a learnable residual gain a_l and branch gain b_l (the streams: see Residual)."""

    def __init__(self, cfg: ConnectionConfig, dim: int, index: int, norm_eps: float = 1e-6):
        super().__init__(cfg, dim, index, norm_eps)
        self.residual_gain = nn.Parameter(torch.ones(()))  # a_l
        self.branch_gain = nn.Parameter(torch.ones(()))  # b_l
        # (scalars: no weight decay, see models.train.param_groups)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.residual_gain.fill_(1.0)
        self.branch_gain.fill_(1.0)

    def forward(self, state: torch.Tensor, sublayer: SubLayer) -> torch.Tensor:
        a, b = self.residual_gain.to(state.dtype), self.branch_gain.to(state.dtype)
        if self.capture:
            # a 1 x 1 "H_res" so that the gain diagnostics (Amax) mean the same thing as for HC / mHC
            one = state.new_ones((*state.shape[:-1], 1), dtype=torch.float32)
            self.record = {
                "H_pre": one,
                "H_post": b.detach().float() * one,
                "H_res": (a.detach().float() * one).unsqueeze(-1),
                "spread": state.new_zeros(state.shape[:-1], dtype=torch.float32),
                "state": state.detach(),
            }
        return a * state + b * sublayer(state)

    def residual_map(self, state: torch.Tensor) -> torch.Tensor:
        return self.residual_gain.detach().float() * state.new_ones((*state.shape[:-1], 1, 1), dtype=torch.float32)

    def mapping_grad_norms(self) -> dict[str, float | None]:
        return {"res": grad_norm(self.residual_gain.grad), "pre": None, "post": grad_norm(self.branch_gain.grad)}
