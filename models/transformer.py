"""The shared transformer (DeepSeek-V3 family): embedding -> blocks -> final RMSNorm -> untied head.

Each block has two sub-layers, attention (MLA) and feed-forward (dense SwiGLU or MoE), each with its own
pre-norm and its own connection module. Residual, HC and mHC differ only in that connection module and
in how the state is expanded after the embedding and collapsed before the final norm; there is one
transformer for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionInputs, LayerKVCache, MultiHeadLatentAttention
from .config import ModelConfig, validate_model_config
from .connections import Connection, StreamConnection, build_connection, connection_class
from .connections.recompute import RecomputeBlock, optimal_block
from .layers import RMSNorm, SwiGLU, rope_frequencies
from .loss import linear_cross_entropy
from .moe import MoE

# Mixed into the seed of the connections' generator so that it differs from the core weights' generator.
CONNECTION_SEED_SALT = 0x5EED_C0DE


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.attn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = MultiHeadLatentAttention(cfg.dim, cfg.attention, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        ffn = cfg.ffn
        if ffn.kind == "dense" or layer_id < ffn.n_dense_layers:
            self.ffn: nn.Module = SwiGLU(cfg.dim, ffn.dense_dim)
        else:
            self.ffn = MoE(cfg.dim, ffn.moe)
        self.attn_connection = build_connection(cfg.connection, cfg.dim, 2 * layer_id, cfg.norm_eps)
        self.ffn_connection = build_connection(cfg.connection, cfg.dim, 2 * layer_id + 1, cfg.norm_eps)

    def steps(
        self,
        rope: torch.Tensor,
        cache: LayerKVCache | None = None,
        start_pos: int = 0,
        key_valid: torch.Tensor | None = None,
    ) -> list[Callable[[Any], Any]]:
        """The block's two sub-layer steps, attention then FFN, each `state -> state` through its connection.

        The forward pass applies them in order; the gain diagnostics (models/jacobian_gain.py) differentiate each one
        on its own, so that what they measure is exactly what the forward pass computes.

        The attention's input is one tensor, or separate query/key/value inputs (`AttentionInputs`, MUDD): then the
        attention pre-norm (one weight) normalises each of them."""

        def attend(u: torch.Tensor | AttentionInputs) -> torch.Tensor:
            if isinstance(u, AttentionInputs):
                q, k, v = (self.attn_norm(t) for t in u)
                return self.attn(q, rope, cache, start_pos, key_valid, key=k, value=v)
            return self.attn(self.attn_norm(u), rope, cache, start_pos, key_valid)

        return [
            lambda state: self.attn_connection(state, attend),
            lambda state: self.ffn_connection(state, lambda u: self.ffn(self.ffn_norm(u))),
        ]

    def forward(
        self,
        state: Any,
        rope: torch.Tensor,
        cache: LayerKVCache | None = None,
        start_pos: int = 0,
        key_valid: torch.Tensor | None = None,
    ) -> Any:
        for step in self.steps(rope, cache, start_pos, key_valid):
            state = step(state)
        return state


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        validate_model_config(cfg)
        self.cfg = cfg
        # One draw from the global RNG before anything is built. The weights come from generators seeded by it, not
        # from the global stream, whose position after construction depends on the variant; so every variant built
        # after `torch.manual_seed(s)` starts from the same embedding, attention, FFN, norm and head weights, and
        # the connection parameters come from a generator of their own (paired comparisons across variants).
        self.init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        self.connection_cls = connection_class(cfg.connection)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        # expand after the embedding / collapse before the final norm (RMT's entry/exit keys, MUDD's exit DA)
        self.connection_ends = self.connection_cls.ends(cfg.connection, cfg.dim, 2 * cfg.n_layers, cfg.norm_eps)
        self.norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        rope = rope_frequencies(cfg.attention.qk_rope_dim, cfg.max_seq_len, cfg.attention.rope_theta)
        self.register_buffer("rope", rope, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """N(0, init_std) for every linear and embedding weight; norms to one; each connection resets its own
        parameters (connections know their paper-specific init); buffers recomputed. On the meta device
        (parameter counting) there is nothing to initialise: `model.to_empty(device=...)` followed by
        `model.init_weights()` materialises a meta-built model.

        Two generators seeded from `seed` (default: the draw made at construction) give the weights: one the
        shared core in module order, the other the connections. A variant's connection parameters therefore never
        shift the core weights, which are identical for every arch at the same seed."""
        if self.head.weight.is_meta:
            return
        seed = self.init_seed if seed is None else seed
        device = self.head.weight.device
        core = torch.Generator(device=device).manual_seed(seed)
        connection_gen = torch.Generator(device=device).manual_seed(seed ^ CONNECTION_SEED_SALT)
        att = self.cfg.attention
        self.rope.copy_(rope_frequencies(att.qk_rope_dim, self.cfg.max_seq_len, att.rope_theta, self.rope.device))
        inside_connections = {id(m) for c in self.connection_modules() for m in c.modules()}
        for module in self.modules():
            if id(module) in inside_connections:
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, self.cfg.init_std, generator=core)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, MoE):
                module.balance_bias.zero_()
                module.load.zero_()
        for module in self.connection_modules():
            module.reset_parameters(generator=connection_gen)

    def core_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter outside the connection modules (what paired variants share at one seed)."""
        inside = {id(p) for c in self.connection_modules() for p in c.parameters()}
        return {name: p for name, p in self.named_parameters() if id(p) not in inside}

    def connections(self) -> list[Connection]:
        """The connection modules in sub-layer order (attention 0, FFN 0, attention 1, ...)."""
        return [c for b in self.blocks for c in (b.attn_connection, b.ffn_connection)]

    def connection_modules(self) -> list[nn.Module]:
        """The connections and then `connection_ends`: every module that holds connection parameters."""
        return [*self.connections(), self.connection_ends]

    def sublayer_steps(self, seq_len: int) -> list[Callable[[Any], Any]]:
        """Every sub-layer's step `state -> state` (attention 0, FFN 0, attention 1, ...) for a causal pass over
        `seq_len` positions from position 0, without a KV cache: `connection_ends.expand(embed(tokens))` followed by
        all of them is the forward pass up to the final norm."""
        rope = self.rope[:seq_len]
        return [step for block in self.blocks for step in block.steps(rope)]

    def moe_layers(self) -> list[MoE]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoE)]

    def new_cache(self, batch: int, max_len: int | None = None) -> list[LayerKVCache]:
        """An empty KV cache for incremental decoding of up to `max_len` positions."""
        max_len = max_len or self.cfg.max_seq_len
        ref = self.head.weight
        separate = self.connection_cls.separate_attention_inputs
        return [b.attn.new_cache(batch, max_len, ref.device, ref.dtype, separate) for b in self.blocks]

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        cache: list[LayerKVCache] | None = None,
        key_valid: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """tokens [B, T] at positions start_pos.. -> logits [B, T, vocab] (float32 head output dtype).

        With `cache`, keys/values of earlier positions come from the cache and this call's are stored.
        `key_valid` [B, start_pos + T] marks real tokens when sequences are (left-)padded to one length.
        With `targets` [B, T] it returns their cross-entropy instead (`reduction` "mean" or "sum"): in float32
        without autocast through the fused head and loss (models/loss.py), which never holds all the logits.
        """
        T = tokens.shape[1]
        if start_pos + T > self.cfg.max_seq_len:
            raise ValueError(f"positions up to {start_pos + T} exceed max_seq_len={self.cfg.max_seq_len}")
        rope = self.rope[start_pos : start_pos + T]
        self._assign_recompute_blocks()
        state = self.connection_ends.expand(self.embed(tokens))
        for i, block in enumerate(self.blocks):
            state = block(state, rope, None if cache is None else cache[i], start_pos, key_valid)
        h = self.norm(self.connection_ends.collapse(state))
        if targets is None:
            return self.head(h)
        if torch.is_autocast_enabled(h.device.type) or h.dtype != torch.float32 or self.head.weight.dtype != h.dtype:
            logits = self.head(h).float()  # the head in autocast's dtype, the loss in float32, as before
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
        return linear_cross_entropy(h.flatten(0, 1), self.head.weight, targets.flatten(), reduction)

    def recompute_block_size(self) -> int:
        """L_r in sub-layers (0 = recomputation off); -1 in the config means Eq. 20's optimum."""
        conn = self.cfg.connection
        if conn.recompute_layers == 0 or not issubclass(self.connection_cls, StreamConnection):
            return 0
        if conn.recompute_layers == -1:
            return optimal_block(conn.n, 2 * self.cfg.n_layers)
        return conn.recompute_layers

    def _assign_recompute_blocks(self) -> None:
        """Fresh RecomputeBlock objects for this pass: connection i sits at (block i // L_r, slot i % L_r)."""
        size = self.recompute_block_size()
        if not size:
            return
        blocks: dict[int, RecomputeBlock] = {}
        for i, conn in enumerate(self.connections()):
            conn.recompute_slot = (blocks.setdefault(i // size, RecomputeBlock()), i % size)

    @torch.no_grad()
    def update_balance_biases(self) -> None:
        """Loss-free MoE balancing step; the trainer calls this after each optimiser step."""
        for moe in self.moe_layers():
            moe.update_balance_bias()
