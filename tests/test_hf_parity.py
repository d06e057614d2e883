"""Parity with Hugging Face transformers' DeepSeek-V3: our baseline model is the same function.

Our weights are copied into `DeepseekV3ForCausalLM` built from the same config (benchmarks/hf_throughput.py
holds the mapping); both must give the same logits and the same gradients. This pins MLA (latent KV,
shared rotary key, 1/sqrt(192) scale), the sigmoid-routed MoE with its balancing bias, the shared experts
and the dense first layer to an independent implementation.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks.hf_throughput import build_hf, copy_weights, logits_of  # noqa: E402
from models.config import MoEConfig  # noqa: E402
from models.registry import model_config  # noqa: E402
from models.transformer import Transformer  # noqa: E402


def _moe_tiny():
    cfg = model_config("tiny", "baseline")
    moe = MoEConfig(n_routed=6, n_active=2, n_shared=2, expert_dim=32)
    return dataclasses.replace(cfg, ffn=dataclasses.replace(cfg.ffn, kind="moe", n_dense_layers=1, moe=moe))


@pytest.mark.parametrize("make_cfg", [lambda: model_config("tiny", "baseline"), _moe_tiny], ids=["dense", "moe"])
def test_logits_and_gradients_match_hf_deepseek_v3(make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg()
    ours = Transformer(cfg).eval()
    with torch.no_grad():
        for moe in ours.moe_layers():
            moe.balance_bias.normal_(std=0.1)  # the bias must select experts the same way in both
    hf, _ = build_hf(cfg, experts="eager")
    hf.eval()
    copy_weights(ours, hf)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24))
    a, b = logits_of(ours, tokens), logits_of(hf, tokens)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    a.square().mean().backward()
    b.square().mean().backward()
    hf_wkv_a = hf.model.layers[0].self_attn.kv_a_proj_with_mqa.weight
    torch.testing.assert_close(ours.blocks[0].attn.wkv_a.weight.grad, hf_wkv_a.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ours.embed.weight.grad, hf.model.embed_tokens.weight.grad, atol=1e-6, rtol=1e-4)
