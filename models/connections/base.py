"""The connection interface: how one sub-layer F is wired into the residual state.

Every transformer block calls `state = connection(state, F)` twice (attention, then FFN), where F is
the sub-layer *including its own pre-norm*. The connection decides what F reads from the state and how
F's output is merged back. The model calls `expand` once after the embedding and `collapse` once before
the final norm. What the state is belongs to the variant:

- residual: the hidden vector x, [..., C]              (x + F(x))
- HC / mHC: n residual streams, [..., n, C]            (H_res x + H_post^T F(H_pre x))
- MUDDFormer: the tuple of all earlier sub-layer outputs (X_0, ..., X_l), read with dynamic weights
- RMT: a matrix-valued residual state, [..., D_k, D_v]          (S + K_write F(K_read^T S))

so new variants plug into the same block without a second transformer.

The model does not call `expand`/`collapse` directly but through `connection_ends`, the module `Connection.ends`
returns, which it keeps at its top level (outside the blocks). By default that module has no parameters and calls the
static `expand`/`collapse`; a variant whose entry or exit is learned (RMT's entry and exit keys) returns its own.

Diagnostics: a connection with `capture = True` keeps its last mappings (float32, detached) in
`self.record` as {"H_pre": [..., n], "H_post": [..., n], "H_res": [..., n, n], "spread": [...], "state": ...},
where "spread" is the per-token stream spread of the state the connection received (`stream_spread`) and
"state" that state itself (so that the mapping can be recomputed on it with other parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from ..config import ConnectionConfig
from ..kernels import get_ops
from .recompute import recomputed_forward
from .scope import connection_ops

SubLayer = Callable[[torch.Tensor], torch.Tensor]


class Connection(nn.Module):
    # Whether the connection may give the attention separate query/key/value inputs (`AttentionInputs`, MUDD):
    # the model's KV cache then also keeps the value latents.
    separate_attention_inputs = False

    def __init__(self, cfg: ConnectionConfig, dim: int, index: int, norm_eps: float = 1e-6):
        """`index` counts sub-layers from 0 (block b has attention 2b and FFN 2b+1); `norm_eps` is the
        model's RMSNorm epsilon, for variants that normalise the state."""
        super().__init__()
        self.cfg = cfg
        self.norm_eps = norm_eps
        self.dim = dim
        self.index = index
        self.capture = False
        self.record: dict[str, torch.Tensor] | None = None

    def forward(self, state: torch.Tensor, sublayer: SubLayer) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise this connection's parameters; random draws use `generator` (the model passes the
        connections' own generator, so that a variant's parameters never shift the shared weights)."""

    @staticmethod
    def expand(h: torch.Tensor, cfg: ConnectionConfig) -> torch.Tensor:
        """Embedding output [..., C] -> initial state."""
        raise NotImplementedError

    @staticmethod
    def collapse(state: torch.Tensor, cfg: ConnectionConfig) -> torch.Tensor:
        """Final state -> [..., C] for the final norm."""
        raise NotImplementedError

    @classmethod
    def ends(cls, cfg: ConnectionConfig, dim: int, n_sublayers: int = 0, norm_eps: float = 1e-6) -> ConnectionEnds:
        """The module that carries the state in and out of the blocks (see `ConnectionEnds`); `n_sublayers` is the
        model's number of sub-layers (MUDD's exit reads all of their outputs)."""
        return ConnectionEnds(cls, cfg)

    def _keep(self, state: torch.Tensor, H_pre: torch.Tensor, H_post: torch.Tensor, H_res: torch.Tensor) -> None:
        if self.capture:
            self.record = {
                "H_pre": H_pre.detach().float(),
                "H_post": H_post.detach().float(),
                "H_res": H_res.detach().float(),
                "spread": stream_spread(state.detach()),
                "state": state.detach(),
            }

    def residual_map(self, state: torch.Tensor) -> torch.Tensor | None:
        """H_res [..., n, n] this connection applies to `state` (None for the plain residual, which has none)."""
        return None

    def mapping_grad_norms(self) -> dict[str, float | None]:
        """L2 norm of the current gradient of the parameters behind each mapping ("res", "pre", "post"); None
        where the variant has no such parameters or no gradient was computed."""
        return {"res": None, "pre": None, "post": None}


class ConnectionEnds(nn.Module):
    """`expand` after the embedding and `collapse` before the final norm, as a module the model keeps at its top level
    (`Transformer.connection_ends`): its parameters, if any, are connection parameters (initialised with the
    connections' generator, counted with them) that belong to no sub-layer, and they sit outside the blocks, so FSDP's
    per-block sharding leaves them whole during the model's forward. This default has no parameters and calls the
    variant's static `expand`/`collapse`."""

    def __init__(self, connection_cls: type[Connection], cfg: ConnectionConfig):
        super().__init__()
        self.connection_cls = connection_cls
        self.cfg = cfg

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise the parameters of the ends (none here)."""

    def expand(self, h: torch.Tensor) -> torch.Tensor:
        return self.connection_cls.expand(h, self.cfg)

    def collapse(self, state: torch.Tensor) -> torch.Tensor:
        return self.connection_cls.collapse(state, self.cfg)


def stream_spread(state: torch.Tensor) -> torch.Tensor:
    """How different the n streams are, per token: sqrt(mean_i ||x_i - mean_j x_j||^2) / ||mean_j x_j||.

    state [..., n, C] -> [...] float32; 0 for identical streams (and for a single stream)."""
    x = state.float()
    mean = x.mean(-2)
    deviation = (x - mean.unsqueeze(-2)).pow(2).sum(-1).mean(-1).sqrt()
    return deviation / mean.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)


def grad_norm(*parts: torch.Tensor | None) -> float | None:
    """L2 norm over several gradient tensors (slices allowed); None when none of them has a gradient."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    return float(torch.sqrt(sum(p.detach().float().pow(2).sum() for p in present)))


@dataclass
class StreamConfig(ConnectionConfig):
    """Fields of the multi-stream variants (HC, mHC): the mHC paper's Table 1 switches.

    A disabled mapping is replaced by its fixed form (H_pre -> 1/n, H_post -> 1, H_res -> I) and has no
    parameters. mHC with learn_res = false is "identity HC": the learned pre/post maps without stream mixing.
    """

    learn_res: bool = True
    learn_pre: bool = True
    learn_post: bool = True

    def streams(self) -> int:
        return self.n


class StreamConnection(Connection):
    """Shared machinery of the n-stream variants (HC, mHC): replicate at entry, sum/mean at exit,
    and the update x_{l+1} = H_res x_l + H_post^T F(H_pre x_l) with coefficients from `mappings`.

    A variant whose coefficients are a function of one projection of the state, hh = x @ W with the state's RMS
    (mHC: all n streams flattened, one RMS per token; HC: each stream, one RMS per stream), says so through
    `projection` and `coefficients_from`; `mappings` then composes them, and a kernel backend that fuses the whole
    pre-sub-layer step (`ops.stream_pre`, the CPU kernels) runs the same two functions inside one autograd node."""

    def projection(self) -> tuple[torch.Tensor, bool] | None:
        """(W, per_stream) of the projection the coefficients are computed from, or None when they are not."""
        return None

    def coefficients_from(self, hh: torch.Tensor, inv_rms: torch.Tensor, ops: ModuleType):
        """(H_pre, H_post, H_res) from the projection hh and the RMS inverse (per token, or per stream)."""
        raise NotImplementedError

    def coefficient_params(self) -> list[torch.Tensor]:
        """The parameters `coefficients_from` uses (besides its arguments)."""
        return []

    def mappings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [..., n, C] -> float32 (H_pre [..., n], H_post [..., n], H_res [..., n, n]), per token."""
        projection = self.projection()
        if projection is None:
            raise NotImplementedError
        weight, per_stream = projection
        ops = get_ops(self.cfg.kernels, x.device, x.dtype)
        hh, inv_rms = ops.proj_rms(x if per_stream else x.flatten(-2), weight, self.norm_eps)
        return self.coefficients_from(hh, inv_rms, ops)

    # Set by the model for each forward pass when block recomputation is on: (block, position in block).
    recompute_slot: tuple | None = None

    def forward(self, state: torch.Tensor, sublayer: SubLayer) -> torch.Tensor:
        if self.recompute_slot is not None and torch.is_grad_enabled():
            block, k = self.recompute_slot
            return recomputed_forward(self, state, sublayer, block, k)
        ops = get_ops(self.cfg.kernels, state.device, state.dtype)
        # Autocast would run the coefficient matmuls and the stream mixes in bf16 and re-round the residual
        # streams every sub-layer (the baseline's `x + F(x)` stays float32): keep it for F only.
        with connection_ops(state.device.type):
            projection = self.projection() if hasattr(ops, "stream_pre") else None
            if projection is not None:
                weight, per_stream = projection
                # `state` comes back through the fused node, which then also receives the post-mix's gradient
                u, H_pre, H_post, H_res, state = ops.stream_pre(
                    state,
                    weight,
                    self.norm_eps,
                    per_stream,
                    lambda hh, inv_rms: self.coefficients_from(hh, inv_rms, ops),
                    self.coefficient_params(),
                )
            else:
                H_pre, H_post, H_res = self.mappings(state)
                u = ops.pre_mix(state, H_pre)
            self._keep(state, H_pre, H_post, H_res)
        y = sublayer(u)
        with connection_ops(state.device.type):
            return ops.post_res_mix(state, H_res, H_post, y)

    def residual_map(self, state: torch.Tensor) -> torch.Tensor:
        with connection_ops(state.device.type):
            return self.mappings(state)[2]

    @staticmethod
    def expand(h: torch.Tensor, cfg: ConnectionConfig) -> torch.Tensor:
        return h.unsqueeze(-2).expand(*h.shape[:-1], cfg.n, h.shape[-1]).contiguous()

    @staticmethod
    def collapse(state: torch.Tensor, cfg: ConnectionConfig) -> torch.Tensor:
        return state.sum(-2) if cfg.collapse == "sum" else state.mean(-2)
