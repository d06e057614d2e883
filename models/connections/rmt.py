"""Residual Matrix Transformer (Mak & Flanigan, ICML 2025): the residual stream is an outer-product memory matrix.

Each token's residual state is a matrix S in R^{D_k x D_v} (D_k = `rmt_key_dim`, D_v = C / R with R = `rmt_rank`).
A vector of the model width C is read as R value vectors of width D_v, X in R^{R x D_v} (X[r] = x[r D_v:(r+1) D_v]),
and all key matrices K are [D_k, R], one key vector of length D_k per value vector:

    entry (after the embedding)   S_0     = K_in X_emb                    S[k, v] = sum_r K_in[k, r] X[r, v]
    sub-layer l, read             U_l     = K_read_l^T S_l                U[r, v] = sum_k K_read[k, r] S[k, v]
    sub-layer l, write            S_{l+1} = S_l + K_write_l Y_l,   Y_l = F_l(U_l) (as a vector of width C)
    exit (before the final norm)  X_out   = K_out^T S_L

i.e. every read retrieves R value vectors with R learned keys (S^T k_r) and concatenates them to the width C, and
every write stores F's R output chunks as a sum of outer products k_r (x) y_r. This is the reference code's
(github.com/bmac3/residual-matrix-transformer, src/models/rmt/) `storage_linear` (Rank -> ResKey) after the
embedding and in each sub-layer, `retrieval_linear` (ResKey -> Rank) before the MLP and before the unembedding;
there the state is (ResVal, ResKey) = S^T and the embedding is (ResVal, Rank) = X^T.

What differs from the reference model, and why (the rest of the transformer is this repository's, shared by every
variant):
- The norm: the reference normalises the whole matrix (one RMSNorm over D_v x D_k entries, weight per entry) and then
  reads; here the read comes first and F's own pre-norm normalises the read vector (one RMS over its C entries, weight
  per entry), as in every variant of this repository, where F includes its pre-norm. Both are invariant to the scale
  of the state; they differ in which RMS divides and where the elementwise weight sits. The same holds for the final
  norm (exit read, then the model's final RMSNorm).
- The attention: the reference's attention reads q, k and v with three separate key sets (3R keys, one head per key,
  head width D_v) and has no value-side projections (no W_qkv over D_v, no W_o); here F is the shared MLA attention
  with its own projections, fed by one read. The FFN matches the reference's (one read, the MLP, one write).
- Initialisation: the reference draws keys N(0, (0.02 / sqrt(fan_in))^2) with muP multipliers and scales the
  sub-layers' write keys by 1 / sqrt(2 L) (there they are also the attention's/MLP's output projection). Here F keeps
  its own output projection with the shared init, and every key entry is N(0, 1 / fan_in): reads (fan-in D_k) and
  entry/writes (fan-in R) then preserve norms on average, with sub-layer outputs weighted as in the baseline (no
  depth scaling). The keys are independent draws, so a read does not retrieve what the entry or an earlier write
  stored (E[K_read^T K_in] = 0): unlike the other variants, RMT does not start as the residual network, and it must
  learn matching keys (models/diagnostics.py `residual_path_deviation` measures this; see the reduction below for
  keys that do match).

The entry and exit keys belong to no sub-layer: they live in `RMTEnds`, the model's top-level `connection_ends`
(see `Connection.ends`), so FSDP's per-block sharding leaves them whole during the model's forward.

Reduction to the residual network: with D_k >= R and every key matrix equal to one Q with orthonormal columns
(Q^T Q = I_R; e.g. D_k = R, Q = I), S_l = Q X_l for all l (S_0 = Q X_emb; Q^T S_l = X_l; S_l + Q Y_l = Q (X_l + Y_l))
and X_out = X_L: exactly x_{l+1} = x_l + F(x_l). There is no such reduction with D_k < R (then K^T K has rank < R).

Diagnostics: RMT has no input-dependent mappings (its map on the state is the identity plus a write), so it keeps no
`record` when `capture` is on (`capture_mappings` then yields no records for it); `mapping_grad_norms` reports the
read keys as "pre" and the write keys as "post".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError, ConnectionConfig, at_least
from .base import Connection, ConnectionEnds, SubLayer, grad_norm
from .scope import connection_ops


@dataclass
class RMTConfig(ConnectionConfig):
    """Residual Matrix Transformer: the state of a token is a [rmt_key_dim, dim / rmt_rank] matrix."""

    arch: str = "rmt"
    rmt_key_dim: int = at_least(16, 1)  # D_k, the reference code's `reskey_dim`
    rmt_rank: int = at_least(4, 1)  # R, value vectors per read/write (the reference's `rank`); D_v = dim / R

    def validate_width(self, dim: int) -> None:
        self.value_dim(dim)

    def value_dim(self, dim: int) -> int:
        """D_v = C / R (a ConfigError naming the key when R does not divide the model width)."""
        if dim % self.rmt_rank:
            raise ConfigError(f"model.connection.rmt_rank ({self.rmt_rank}) must divide model.dim ({dim})")
        return dim // self.rmt_rank


def rmt_read(state: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """S [..., D_k, D_v], K [D_k, R] -> the R retrieved value vectors K^T S concatenated: [..., R * D_v]."""
    return torch.matmul(keys.to(state.dtype).t(), state).flatten(-2)


def rmt_store(values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """x [..., R * D_v], K [D_k, R] -> sum_r k_r (x) x_r = K X: [..., D_k, D_v]."""
    return torch.matmul(keys.to(values.dtype), values.unflatten(-1, (keys.shape[1], -1)))


def _key_matrix(cfg: RMTConfig) -> nn.Parameter:
    return nn.Parameter(torch.empty(cfg.rmt_key_dim, cfg.rmt_rank))


@torch.no_grad()
def _fan_in_normal(generator: torch.Generator | None, *keys: tuple[torch.Tensor, int]) -> None:
    """Draw each (key matrix, fan-in) from N(0, 1 / fan-in), in order (nothing on the meta device)."""
    for param, fan_in in keys:
        if not param.is_meta:
            param.normal_(0.0, fan_in**-0.5, generator=generator)


class ResidualMatrix(Connection):
    """One sub-layer's read keys K_read and write keys K_write ([D_k, R] each)."""

    cfg: RMTConfig

    def __init__(self, cfg: RMTConfig, dim: int, index: int, norm_eps: float = 1e-6):
        super().__init__(cfg, dim, index, norm_eps)
        self.value_dim = cfg.value_dim(dim)
        self.read_keys = _key_matrix(cfg)
        self.write_keys = _key_matrix(cfg)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        _fan_in_normal(generator, (self.read_keys, self.cfg.rmt_key_dim), (self.write_keys, self.cfg.rmt_rank))

    def forward(self, state: torch.Tensor, sublayer: SubLayer) -> torch.Tensor:
        with connection_ops(state.device.type):
            u = rmt_read(state, self.read_keys)
        y = sublayer(u)
        with connection_ops(state.device.type):
            return state + rmt_store(y.to(state.dtype), self.write_keys)

    @staticmethod
    def expand(h: torch.Tensor, cfg: ConnectionConfig) -> torch.Tensor:
        raise TypeError("RMT's entry has parameters: use the model's `connection_ends` (RMTEnds.expand)")

    @staticmethod
    def collapse(state: torch.Tensor, cfg: ConnectionConfig) -> torch.Tensor:
        raise TypeError("RMT's exit has parameters: use the model's `connection_ends` (RMTEnds.collapse)")

    @classmethod
    def ends(cls, cfg: ConnectionConfig, dim: int, n_sublayers: int = 0, norm_eps: float = 1e-6) -> ConnectionEnds:
        return RMTEnds(cfg, dim)

    def mapping_grad_norms(self) -> dict[str, float | None]:
        return {"res": None, "pre": grad_norm(self.read_keys.grad), "post": grad_norm(self.write_keys.grad)}


class RMTEnds(ConnectionEnds):
    """The entry keys K_in (embedding -> S_0) and the exit keys K_out (S_L -> the final norm's input)."""

    cfg: RMTConfig

    def __init__(self, cfg: RMTConfig, dim: int):
        super().__init__(ResidualMatrix, cfg)
        self.value_dim = cfg.value_dim(dim)
        self.entry_keys = _key_matrix(cfg)
        self.exit_keys = _key_matrix(cfg)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        _fan_in_normal(generator, (self.entry_keys, self.cfg.rmt_rank), (self.exit_keys, self.cfg.rmt_key_dim))

    def expand(self, h: torch.Tensor) -> torch.Tensor:
        with connection_ops(h.device.type):
            return rmt_store(h, self.entry_keys)

    def collapse(self, state: torch.Tensor) -> torch.Tensor:
        with connection_ops(state.device.type):
            return rmt_read(state, self.exit_keys)
