"""Model-level properties: causality, stream divergence, KV-cached decoding, overfitting one batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.diagnostics import capture_mappings
from models.transformer import Transformer
from tests.helpers import tiny_config

ARCHS = ["baseline", "hc", "mhc", "mhc-lite", "mudd"]


def _final_streams(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The state after the last sub-layer ([B, T, n, C]), just before the collapse."""
    out = {}
    handle = model.connections()[-1].register_forward_hook(lambda m, a, o: out.setdefault("s", o.detach()))
    model(tokens)
    handle.remove()
    return out["s"]


def _stream_spread(model: Transformer, tokens: torch.Tensor) -> float:
    """||x_i - mean_i x_i|| / ||mean_i x_i|| over all tokens: 0 iff the streams are identical."""
    s = _final_streams(model, tokens).double()
    mean = s.mean(-2, keepdim=True)
    return ((s - mean).norm() / mean.norm()).item()


def _train(model: Transformer, tokens: torch.Tensor, steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_balance_biases()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("arch", ["hc", "mhc"])
def test_causality_of_coefficients_and_logits(arch):
    model = Transformer(tiny_config(arch, moe=True)).eval()
    if arch == "hc":  # at Eq. 14's init the coefficients ignore the input; make them depend on it
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "connection.dynamic_" in name and not name.endswith("_scale"):
                    p.normal_(std=0.1)
    tokens = torch.randint(0, 256, (2, 20))
    t = 9
    changed = tokens.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 17) % 256
    with capture_mappings(model) as rec_a:
        logits_a = model(tokens)
    with capture_mappings(model) as rec_b:
        logits_b = model(changed)
    assert len(rec_a) == 2 * model.cfg.n_layers
    torch.testing.assert_close(logits_a[:, : t + 1], logits_b[:, : t + 1], atol=1e-6, rtol=1e-6)
    for ra, rb in zip(rec_a, rec_b, strict=True):
        for key in ("H_pre", "H_post", "H_res"):
            torch.testing.assert_close(ra[key][:, : t + 1], rb[key][:, : t + 1], atol=1e-6, rtol=1e-6)
    # the perturbation is visible after t (so the test could fail)
    assert (logits_a[:, t + 1 :] - logits_b[:, t + 1 :]).abs().max() > 1e-3
    last = rec_a[-1]["H_res"][:, t + 1 :] - rec_b[-1]["H_res"][:, t + 1 :]
    assert last.abs().max() > 0


@pytest.mark.parametrize("arch", ["hc", "mhc"])
def test_streams_diverge_with_training(arch):
    torch.manual_seed(0)
    model = Transformer(tiny_config(arch))
    tokens = torch.randint(0, 256, (8, 33))
    start = _stream_spread(model, tokens[:, :-1])
    _train(model, tokens, steps=12, lr=3e-3)
    end = _stream_spread(model, tokens[:, :-1])
    if arch == "hc":  # HC starts with identical streams (Eq. 14); learning separates them
        assert start == 0.0 and end > 1e-3, (start, end)
    else:  # mHC's shipped init writes a different amount into each stream from the first sub-layer on
        assert start > 0.05 and end > 0.05, (start, end)


def test_symmetric_static_streams_never_diverge():
    """Control for the test above: with every mapping fixed (a stream-symmetric connection) the streams
    stay identical under training; the divergence above comes from the learned mappings."""
    model = Transformer(tiny_config("hc", learn_res=False, learn_pre=False, learn_post=False))
    tokens = torch.randint(0, 256, (8, 33))
    _train(model, tokens, steps=5, lr=3e-3)
    assert _stream_spread(model, tokens[:, :-1]) == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_decoding_matches_full_forward(arch):
    model = Transformer(tiny_config(arch, moe=True)).eval()
    tokens = torch.randint(0, 256, (2, 14))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch=2, max_len=32)
        prefill = model(tokens[:, :6], start_pos=0, cache=cache)
        steps = [model(tokens[:, i : i + 1], start_pos=i, cache=cache) for i in range(6, 14)]
    torch.testing.assert_close(prefill, full[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 6:], atol=1e-5, rtol=1e-5)
    # a chunk of several new tokens at once uses the explicit mask path
    with torch.no_grad():
        cache = model.new_cache(batch=2, max_len=32)
        model(tokens[:, :5], cache=cache)
        chunk = model(tokens[:, 5:14], start_pos=5, cache=cache)
    torch.testing.assert_close(chunk, full[:, 5:], atol=1e-5, rtol=1e-5)


def test_kv_cache_overflow_is_a_clear_error():
    model = Transformer(tiny_config()).eval()
    cache = model.new_cache(batch=1, max_len=4)
    with pytest.raises(ValueError, match="KV cache holds 4 positions"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_overfits_one_batch(arch):
    """From ln(256) = 5.55 nats to below 0.5 on one fixed batch of random tokens."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(arch, moe=True))
    tokens = torch.randint(0, 256, (4, 33))
    losses = _train(model, tokens, steps=60, lr=1e-2)
    assert losses[0] > 5.0
    assert losses[-1] < 0.5, losses[-5:]


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_build_then_materialise_matches_eager(arch):
    cfg = tiny_config(arch, moe=True)
    eager = Transformer(cfg).eval()
    with torch.device("meta"):
        lazy = Transformer(cfg)
    lazy.to_empty(device="cpu")
    lazy.init_weights()
    lazy.load_state_dict(eager.state_dict())
    lazy.eval()
    torch.testing.assert_close(lazy.rope, eager.rope)
    assert all(m.load.sum() == 0 for m in lazy.moe_layers())
    tokens = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(lazy(tokens), eager(tokens))


@pytest.mark.parametrize("arch", ["hc", "mhc"])
def test_autocast_keeps_coefficients_and_streams_in_float32(arch):
    """Under bf16 autocast only F runs in bf16: the mappings and the stream mixes stay float32."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(arch)).eval()
    with torch.no_grad():  # make the coefficients input-dependent and the mixing non-trivial
        for name, p in model.named_parameters():
            if "connection" in name and ("dynamic_" in name or "phi" in name) and not name.endswith("_scale"):
                p.normal_(std=0.3)
    conn = model.connections()[1]
    x = 50 * torch.randn(2, 5, 4, model.cfg.dim)  # large values: bf16 rounding would show
    ref = conn.mappings(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conn(x, lambda u: torch.zeros_like(u))
        with capture_mappings(model) as rec:
            model(torch.randint(0, 256, (1, 6)))
    assert out.dtype == torch.float32
    H_pre, H_post, H_res = ref
    expected = torch.einsum("...ij,...jc->...ic", H_res, x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)
    assert all(r["H_res"].dtype == torch.float32 for r in rec)


def test_hc_dynamic_pre_and_post_come_from_their_own_stream():
    from models.config import connection_config
    from models.connections import HyperConnection

    conn = HyperConnection(connection_config(arch="hc", n=3, hc_tanh=False), dim=5, index=1, norm_eps=1e-6)
    with torch.no_grad():
        conn.dynamic_pre.normal_()
        conn.dynamic_post.normal_()
        conn.dynamic_alpha_scale.fill_(1.0)
        conn.dynamic_beta_scale.fill_(1.0)
    x = torch.randn(3, 5)
    H_pre, H_post, _ = conn.mappings(x)
    normed = conn.norm(x)
    torch.testing.assert_close(H_pre, torch.eye(3)[1] + (normed @ conn.dynamic_pre).squeeze(-1))
    torch.testing.assert_close(H_post, 1 + normed @ conn.dynamic_post)


def test_rope_scores_depend_only_on_relative_position():
    from models.layers import apply_rope, rope_frequencies

    table = rope_frequencies(16, 64, 10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def score(i, j):
        return (apply_rope(q[None], table[i : i + 1]) * apply_rope(k[None], table[j : j + 1])).sum().item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_mean_and_sum_collapse_agree_through_the_final_norm():
    torch.manual_seed(0)
    a = Transformer(tiny_config("mhc", collapse="sum")).eval()
    b = Transformer(tiny_config("mhc", collapse="mean")).eval()
    b.load_state_dict(a.state_dict())
    tokens = torch.randint(0, 256, (2, 8))
    torch.testing.assert_close(a(tokens), b(tokens), atol=1e-5, rtol=1e-5)
