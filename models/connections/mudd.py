"""MUDDFormer (Xiao et al. 2025, arXiv 2502.12170): multiway dynamic dense connections, per sub-layer.

The state is the tuple of every hidden state written so far, (X_0, X_1, ..., X_l), each [..., C]: X_0 the embedding
output, X_j the output of sub-layer j-1. Before sub-layer l its W input streams ("ways") are per-token weighted sums
of all l+1 entries, with weights from a small MLP of the latest entry (the DA, "dynamic aggregation") plus static
weights:

    A_l        = W2_l GELU(W1_l RMS(X_l)) + B_l               A_l [..., W, l+1] (per token), B_l [W, l+1] static
    stream_w   = sum_j A_l[..., w, j] X_j                      w = 1..W
    X_{l+1}    = R + F(inputs)                                 R the residual stream (the last way)
    state      <- (X_0, ..., X_l, X_{l+1})

where RMS(x) = x / sqrt(mean(x^2) + eps) has no weight (the reference's `RMSnormNoscale`), W1_l [h, C], W2_l
[W (l+1), h], and the output of W2 is read way-major (the reference's `(C L)` layout). The hidden width h is W (l+1),
rounded up as the reference's `round64` does ((h // 64 + 1) 64) when `mudd_round64` is on.

- Attention sub-layers read W = 4 ways, query, key, value and residual (the reference's `dense_type = "qkvr"`): the
  sub-layer receives an `AttentionInputs(query, key, value)`; the block applies its attention pre-norm to each and
  MLA takes q from the query, the key latent and rotary key from the key, the value latent from the value
  (models/attention.py).
- FFN sub-layers read W = 2 ways, the FFN input and its residual: the multiway decoupling applied to the FFN's single
  input. This is our per-sub-layer adaptation (the mHC paper counts depth in sub-layers, each with its own
  connection); the reference has dense connections between blocks only, and inside a block the FFN is a plain
  residual on h = r + attention(q, k, v).
- Sub-layer 0 (the first attention) reads X_0 for every way and has no parameters, as the reference's first block
  reads the embedding directly.
- The exit (`MUDDEnds.collapse`, before the final norm) is one more DA with W = 1 over all 2L + 1 entries, computed
  from X_{2L}; with `mudd_expand_last` its hidden width is 4 (2L + 1) (before rounding), as the reference's last
  layer (`last_layer`, `expand_last`), whose single aggregate is what the reference feeds its final norm.

Initialisation. The reference's PyTorch code is inference only (its `dense_bs` are `torch.randn` placeholders that a
checkpoint overwrites, trained by its JAX code, which is not in the snapshot we read). Here: W1 ~ N(0, 1 / C) (unit
pre-activations, the DA's input having unit RMS), W2 = 0 (the dynamic part starts at zero), and B_l selects the latest
entry for every way (B[w, j] = 1 if j = l else 0). At init every stream is X_l exactly, every sub-layer computes
X_{l+1} = X_l + F(X_l) and the exit returns X_{2L}: the model is the plain pre-norm residual network with the same core
weights, exactly (tests/test_mudd.py).

What differs from the reference, and why:
- Dense connections per sub-layer (above), so the FFN gets two ways of its own.
- The attention pre-norm is shared by the three inputs (one RMSNorm weight). The reference's released config uses
  `sepln` (three norms from the second block on); separate norms would add parameters to the shared core (norms are
  core weights here), so that paired variants would no longer share the same core parameter set. The streams are
  already weighted per token and per way before the norm.
- MLA instead of the reference's multi-head attention: three inputs need two KV latents (key, value) instead of one,
  and the KV cache keeps both (`LayerKVCache.value_latent`), so that cached decoding works.

Diagnostics: MUDD has no H_res (its state is not a fixed set of streams mixed by a matrix), so it keeps no `record`
when `capture` is on; `mapping_grad_norms` reports the DA parameters (W1, W2, B) as "pre". Block recomputation
(`recompute_layers`) applies to the n-stream variants only and is ignored here, as for RMT and the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import AttentionInputs
from ..config import ConnectionConfig
from .base import Connection, ConnectionEnds, SubLayer, grad_norm
from .scope import connection_ops

ATTENTION_WAYS = 4  # query, key, value, residual
FFN_WAYS = 2  # FFN input, residual


@dataclass
class MUDDConfig(ConnectionConfig):
    """MUDDFormer: the state is the tuple of all hidden states; each sub-layer reads its inputs through a DA."""

    arch: str = "mudd"
    mudd_round64: bool = True  # the reference's `round64`: the DA hidden width rounded up to (h // 64 + 1) * 64
    mudd_expand_last: bool = True  # the reference's `expand_last`: the exit DA's hidden width x 4


def da_hidden(ways: int, entries: int, cfg: MUDDConfig, last: bool = False) -> int:
    """The DA's hidden width: ways * entries (x 4 for the exit with `mudd_expand_last`), rounded as the reference."""
    hidden = ways * entries * (4 if last and cfg.mudd_expand_last else 1)
    return (hidden // 64 + 1) * 64 if cfg.mudd_round64 else hidden


def mudd_mix(entries: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """entries: E tensors [..., C]; weights [..., W, E] -> the W streams [..., W, C], stream_w = sum_j w[w, j] X_j.

    A sum over the entries (not a stacked matmul) so that autograd keeps references to the entries, not a copy of
    all of them at every sub-layer."""
    out = weights[..., 0, None] * entries[0].unsqueeze(-2)
    for j in range(1, len(entries)):
        out = out + weights[..., j, None] * entries[j].unsqueeze(-2)
    return out


class DynamicAggregation(nn.Module):
    """A = W2 GELU(W1 RMS(x)) + B: [..., C] -> [..., W, E]. W1 [h, C], W2 [W E, h], B [W, E]."""

    def __init__(self, dim: int, ways: int, entries: int, hidden: int, norm_eps: float):
        super().__init__()
        self.ways, self.entries, self.norm_eps = ways, entries, norm_eps
        self.w1 = nn.Parameter(torch.empty(hidden, dim))
        self.w2 = nn.Parameter(torch.empty(ways * entries, hidden))
        self.static = nn.Parameter(torch.empty(ways, entries))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """W1 ~ N(0, 1 / C), W2 = 0, B selects the latest entry for every way (nothing on the meta device)."""
        if self.w1.is_meta:
            return
        self.w1.normal_(0.0, self.w1.shape[1] ** -0.5, generator=generator)
        self.w2.zero_()
        self.static.zero_()
        self.static[:, -1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        dynamic = F.linear(F.gelu(F.linear(x, self.w1.to(x.dtype))), self.w2.to(x.dtype))
        return dynamic.unflatten(-1, (self.ways, self.entries)) + self.static.to(x.dtype)

    def grad_norm(self) -> float | None:
        return grad_norm(self.w1.grad, self.w2.grad, self.static.grad)


class MultiwayDynamicDense(Connection):
    """Sub-layer l's DA (none for l = 0): 4 ways before an attention sub-layer (even l), 2 before an FFN (odd l)."""

    cfg: MUDDConfig
    separate_attention_inputs = True

    def __init__(self, cfg: MUDDConfig, dim: int, index: int, norm_eps: float = 1e-6):
        super().__init__(cfg, dim, index, norm_eps)
        self.attention = index % 2 == 0
        self.ways = ATTENTION_WAYS if self.attention else FFN_WAYS
        entries = index + 1
        self.da = (
            None
            if index == 0
            else DynamicAggregation(dim, self.ways, entries, da_hidden(self.ways, entries, cfg), norm_eps)
        )

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        if self.da is not None:
            self.da.reset_parameters(generator)

    def streams(self, state: Sequence[torch.Tensor]) -> torch.Tensor:
        """The W input streams [..., W, C] of this sub-layer from the state (X_0, ..., X_l)."""
        if len(state) != self.index + 1:
            raise ValueError(f"MUDD sub-layer {self.index} expects {self.index + 1} state entries, got {len(state)}")
        if self.da is None:
            return state[0].unsqueeze(-2).expand(*state[0].shape[:-1], self.ways, state[0].shape[-1])
        return mudd_mix(state, self.da(state[-1]))

    def forward(self, state: tuple[torch.Tensor, ...], sublayer: SubLayer) -> tuple[torch.Tensor, ...]:
        device = state[0].device.type
        if self.da is None:  # the first sub-layer reads the embedding output for every way
            residual = u = state[0]
        else:
            with connection_ops(device):
                streams = self.streams(state).unbind(-2)
            residual = streams[-1]
            u = AttentionInputs(*streams[:3]) if self.attention else streams[0]
        y = sublayer(u)
        with connection_ops(device):
            return (*state, residual + y.to(residual.dtype))

    @staticmethod
    def expand(h: torch.Tensor, cfg: ConnectionConfig) -> tuple[torch.Tensor, ...]:
        return (h,)

    @staticmethod
    def collapse(state: torch.Tensor, cfg: ConnectionConfig) -> torch.Tensor:
        raise TypeError("MUDD's exit has parameters: use the model's `connection_ends` (MUDDEnds.collapse)")

    @classmethod
    def ends(cls, cfg: ConnectionConfig, dim: int, n_sublayers: int = 0, norm_eps: float = 1e-6) -> ConnectionEnds:
        return MUDDEnds(cfg, dim, n_sublayers, norm_eps)

    def mapping_grad_norms(self) -> dict[str, float | None]:
        return {"res": None, "pre": None if self.da is None else self.da.grad_norm(), "post": None}


class MUDDEnds(ConnectionEnds):
    """Entry: the state (X_0,). Exit: one DA with a single way over all 2L + 1 entries (the final norm's input)."""

    cfg: MUDDConfig

    def __init__(self, cfg: MUDDConfig, dim: int, n_sublayers: int, norm_eps: float = 1e-6):
        super().__init__(MultiwayDynamicDense, cfg)
        entries = n_sublayers + 1
        self.da = DynamicAggregation(dim, 1, entries, da_hidden(1, entries, cfg, last=True), norm_eps)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.da.reset_parameters(generator)

    def expand(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (h,)

    def collapse(self, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(state) != self.da.entries:
            raise ValueError(f"MUDD's exit expects a state of {self.da.entries} entries, got {len(state)}")
        with connection_ops(state[0].device.type):
            return mudd_mix(state, self.da(state[-1])).squeeze(-2)
