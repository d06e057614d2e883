"""The plain pre-norm residual connection: x_{l+1} = x_l + F(x_l)."""

from __future__ import annotations

import torch

from ..config import ConnectionConfig
from .base import Connection, SubLayer


class Residual(Connection):
    def forward(self, state: torch.Tensor, sublayer: SubLayer) -> torch.Tensor:
        return state + sublayer(state)

    @staticmethod
    def expand(h: torch.Tensor, cfg: ConnectionConfig) -> torch.Tensor:
        return h

    @staticmethod
    def collapse(state: torch.Tensor, cfg: ConnectionConfig) -> torch.Tensor:
        return state
