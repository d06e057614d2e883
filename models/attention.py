"""Multi-head Latent Attention (DeepSeek-V2/V3), without query compression, with a latent KV cache.

Keys and values are produced from a low-rank latent c_kv = RMSNorm(W_a x) of width `kv_rank`, plus one
rotary key of width `qk_rope_dim` shared by all heads. The KV cache stores exactly these two (the
point of MLA); cached latents are expanded to per-head keys/values on every decoding step, which is
simple and exact (the "absorbed" fast path of DeepSeek's inference code is an optimisation we do
not need at our scales).

A connection may feed the attention three different inputs (MUDD's query, key and value streams, passed as
`AttentionInputs`): then q comes from the query input, the KV latent and the rotary key from the key input, and the
values from the latent of the value input (the same `wkv_a`, `kv_norm` and `wkv_b`); the cache then also keeps the
value latents. With one input, as for every other variant, the computation is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import AttentionConfig
from .layers import RMSNorm, apply_rope


class AttentionInputs(NamedTuple):
    """Separate query, key and value inputs of one attention sub-layer, each [B, T, dim] (MUDD's streams)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor


@dataclass
class LayerKVCache:
    """Per-layer cache: normalised KV latents and rotated shared keys for positions [0, max_len), and the value
    latents when keys and values come from separate inputs (None otherwise)."""

    latent: torch.Tensor  # [B, max_len, kv_rank]
    k_rope: torch.Tensor  # [B, max_len, qk_rope_dim]
    value_latent: torch.Tensor | None = None  # [B, max_len, kv_rank]


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, dim: int, cfg: AttentionConfig, norm_eps: float):
        super().__init__()
        self.cfg = cfg
        qk_dim = cfg.qk_nope_dim + cfg.qk_rope_dim
        self.wq = nn.Linear(dim, cfg.n_heads * qk_dim, bias=False)
        self.wkv_a = nn.Linear(dim, cfg.kv_rank + cfg.qk_rope_dim, bias=False)
        self.kv_norm = RMSNorm(cfg.kv_rank, eps=norm_eps)
        self.wkv_b = nn.Linear(cfg.kv_rank, cfg.n_heads * (cfg.qk_nope_dim + cfg.v_dim), bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.v_dim, dim, bias=False)

    def new_cache(self, batch: int, max_len: int, device, dtype, separate_value: bool = False) -> LayerKVCache:
        """An empty cache; with `separate_value` it also holds the value latents (separate key/value inputs)."""
        return LayerKVCache(
            latent=torch.zeros(batch, max_len, self.cfg.kv_rank, device=device, dtype=dtype),
            k_rope=torch.zeros(batch, max_len, self.cfg.qk_rope_dim, device=device, dtype=dtype),
            value_latent=(
                torch.zeros(batch, max_len, self.cfg.kv_rank, device=device, dtype=dtype) if separate_value else None
            ),
        )

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: LayerKVCache | None = None,
        start_pos: int = 0,
        key_valid: torch.Tensor | None = None,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T, dim] at positions start_pos..start_pos+T-1; rope: the table rows of those positions.

        `key` and `value` ([B, T, dim], both or neither): separate inputs of the keys and of the values; x is then
        the query input only.

        `key_valid` [B, S] (S = start_pos + T) marks real tokens; padding positions are never attended to
        (except by themselves, which keeps their own rows finite). With left padding this is exact: RoPE
        scores depend on relative positions only."""
        cfg = self.cfg
        B, T, _ = x.shape
        H = cfg.n_heads
        q = self.wq(x).view(B, T, H, cfg.qk_nope_dim + cfg.qk_rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([cfg.qk_nope_dim, cfg.qk_rope_dim], dim=-1)
        q = torch.cat([q_nope, apply_rope(q_rope, rope)], dim=-1)

        if (key is None) != (value is None):
            raise ValueError("pass both `key` and `value` inputs, or neither")
        latent, k_rope = self.wkv_a(x if key is None else key).split([cfg.kv_rank, cfg.qk_rope_dim], dim=-1)
        latent = self.kv_norm(latent)
        k_rope = apply_rope(k_rope, rope)
        v_latent = None if value is None else self.kv_norm(self.wkv_a(value)[..., : cfg.kv_rank])
        if cache is not None:
            end = start_pos + T
            if end > cache.latent.shape[1]:
                raise ValueError(f"KV cache holds {cache.latent.shape[1]} positions; decoding reached {end}")
            cache.latent[:B, start_pos:end] = latent
            cache.k_rope[:B, start_pos:end] = k_rope
            latent, k_rope = cache.latent[:B, :end], cache.k_rope[:B, :end]
            if v_latent is not None:
                if cache.value_latent is None:
                    raise ValueError("separate value inputs need a cache with value latents (separate_value)")
                cache.value_latent[:B, start_pos:end] = v_latent
                v_latent = cache.value_latent[:B, :end]
        S = latent.shape[1]

        kv = self.wkv_b(latent).view(B, S, H, cfg.qk_nope_dim + cfg.v_dim).transpose(1, 2)
        k_nope, v = kv.split([cfg.qk_nope_dim, cfg.v_dim], dim=-1)
        if v_latent is not None:
            v = self.wkv_b(v_latent).view(B, S, H, cfg.qk_nope_dim + cfg.v_dim).transpose(1, 2)[..., cfg.qk_nope_dim :]
        k = torch.cat([k_nope, k_rope[:, None].expand(B, H, S, cfg.qk_rope_dim)], dim=-1)

        if S == T and key_valid is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Queries sit at positions start_pos.. and may see every cached key up to themselves.
            q_pos = torch.arange(start_pos, start_pos + T, device=x.device)
            k_pos = torch.arange(S, device=x.device)
            mask = k_pos[None, :] <= q_pos[:, None]
            if key_valid is not None:
                mask = mask & (key_valid[:, None, None, :S] | (k_pos[None, :] == q_pos[:, None]))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(B, T, H * cfg.v_dim))
