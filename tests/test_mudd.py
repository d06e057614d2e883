"""MUDDFormer's multiway dynamic dense connections (models/connections/mudd.py): the mixing rule by hand, the ways
each sub-layer reads, causality, the exact reduction to the residual network, gradients against finite differences
(the DA aggregation and MLA with separate query/key/value inputs), cached decoding, training through the trainer, the
parameter count and the config."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import attention
from models.attention import AttentionInputs, MultiHeadLatentAttention
from models.config import ConfigError, apply_overrides, validate_model_config
from models.connections import VARIANTS, MUDDConfig, MultiwayDynamicDense
from models.connections.mudd import DynamicAggregation, MUDDEnds, mudd_mix
from models.layers import RMSNorm, rope_frequencies
from models.registry import model_config
from models.summary import expected_connection_params, summarize
from models.transformer import Transformer
from tests.conftest import needs_corpus
from tests.helpers import tiny_run_overrides
from training.config import load_run_config
from training.trainer import Trainer


def gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_registered():
    assert VARIANTS["mudd"] == (MultiwayDynamicDense, MUDDConfig)
    assert isinstance(model_config("tiny", "mudd").connection, MUDDConfig)


def test_mixing_rule_by_hand():
    """FFN sub-layer 1 (W = 2 ways over E = 2 entries), C = 2, hidden W E = 4 (no rounding), norm eps 0.

    X_0 = [1, 2], X_1 = [2, -2]: RMS(X_1) = [1, -1]; W1 = rows e_0, e_1, 0, 0: hidden GELU([1, -1, 0, 0]) =
    [g1, g-1, 0, 0] with g1 = GELU(1) = 0.8413, g-1 = GELU(-1) = -0.1587; W2 rows [1,0,0,0], [0,1,0,0], 0, [2,0,0,0]:
    dynamic (way-major) [[g1, g-1], [0, 2 g1]]; B = [[0, 1], [1, 0]]: A = [[g1, 1 + g-1], [1, 2 g1]].
    FFN input u = g1 X_0 + (1 + g-1) X_1, residual r = X_0 + 2 g1 X_1; F(u) = 10 u: X_2 = r + 10 u."""
    conn = MultiwayDynamicDense(MUDDConfig(mudd_round64=False), dim=2, index=1, norm_eps=0.0)
    assert conn.ways == 2 and conn.da.w1.shape == (4, 2) and conn.da.w2.shape == (4, 4)
    with torch.no_grad():
        conn.da.w1.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
        conn.da.w2.zero_()
        conn.da.w2[0, 0], conn.da.w2[1, 1], conn.da.w2[3, 0] = 1.0, 1.0, 2.0
        conn.da.static.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    x0, x1 = torch.tensor([1.0, 2.0]), torch.tensor([2.0, -2.0])
    seen = {}

    def sublayer(u):
        seen["u"] = u
        return 10 * u

    state = conn((x0.expand(3, 2), x1.expand(3, 2)), sublayer)
    g1, gm1 = gelu(1.0), gelu(-1.0)
    u = g1 * x0 + (1 + gm1) * x1
    r = x0 + 2 * g1 * x1
    assert len(state) == 3 and state[0] is not None
    torch.testing.assert_close(seen["u"], u.expand(3, 2), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state[2], (r + 10 * u).expand(3, 2), rtol=1e-6, atol=1e-6)
    assert torch.equal(state[0], x0.expand(3, 2)) and torch.equal(state[1], x1.expand(3, 2))


def test_attention_sublayer_reads_query_key_value_and_residual_in_that_order():
    """Attention sub-layer 2 (4 ways over X_0, X_1, X_2) with the dynamic part zero and B selecting X_0, X_1, X_2,
    X_0: the attention gets (X_0, X_1, X_2) and X_3 = X_0 + F."""
    conn = MultiwayDynamicDense(MUDDConfig(), dim=3, index=2)
    assert conn.ways == 4 and conn.da.static.shape == (4, 3)
    assert torch.equal(conn.da.static, torch.tensor([[0.0, 0.0, 1.0]] * 4))  # init: every way reads the latest
    with torch.no_grad():
        conn.da.static.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]))
    xs = tuple(torch.randn(2, 5, 3) for _ in range(3))
    seen = {}

    def sublayer(u):
        seen["u"] = u
        return u.query * 0 + 7.0

    state = conn(xs, sublayer)
    assert isinstance(seen["u"], AttentionInputs)
    for got, want in zip(seen["u"], xs, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(state[3], xs[0] + 7.0)


def test_first_sublayer_reads_the_embedding_and_the_exit_mixes_every_entry():
    conn = MultiwayDynamicDense(MUDDConfig(), dim=4, index=0)
    assert conn.da is None and not list(conn.parameters())
    h = torch.randn(2, 3, 4)
    state = conn(MultiwayDynamicDense.expand(h, MUDDConfig()), lambda u: 2 * u)
    assert torch.equal(state[1], 3 * h)
    ends = MUDDEnds(MUDDConfig(), dim=4, n_sublayers=2)
    xs = tuple(torch.randn(2, 3, 4) for _ in range(3))
    assert torch.equal(ends.collapse(xs), xs[2])  # init: the latest entry
    with torch.no_grad():
        ends.da.static.copy_(torch.tensor([[0.5, 0.25, 2.0]]))
    torch.testing.assert_close(ends.collapse(xs), 0.5 * xs[0] + 0.25 * xs[1] + 2.0 * xs[2])
    assert ends.da.w1.shape == (64, 4)  # hidden 4 x 3 = 12, rounded to 64


def _activate(model: Transformer, std: float = 0.3, seed: int = 0) -> None:
    """Random DA parameters (the dynamic part and the static weights), so that the mixing depends on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DynamicAggregation):
                module.w2.normal_(0.0, std, generator=g)
                module.static.add_(torch.randn(module.static.shape, generator=g, dtype=module.static.dtype) * std)


def test_whole_model_is_causal():
    torch.manual_seed(1)
    model = Transformer(model_config("tiny", "mudd")).eval()
    _activate(model)
    tokens = torch.randint(0, 512, (2, 24))
    changed = tokens.clone()
    changed[:, 15] = (changed[:, 15] + 7) % 512
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=0)
    assert (a[:, 15:] - b[:, 15:]).abs().amax(-1).min() > 1e-4  # every later position sees the change


def test_latest_entry_weights_reduce_to_the_residual_network():
    """At init (W2 = 0, B selecting the latest entry) and again after any W1 with W2 = 0 and that B, every stream is
    X_l and the model is the pre-norm residual network with the same core weights: the same logits, exactly."""
    torch.manual_seed(3)
    base = Transformer(model_config("tiny", "baseline"))
    torch.manual_seed(3)
    mudd = Transformer(model_config("tiny", "mudd"))
    core = mudd.core_parameters()
    assert all(torch.equal(p, core[name]) for name, p in base.core_parameters().items())
    tokens = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        expected = base(tokens)
        assert torch.equal(mudd(tokens), expected)
        _activate(mudd)
        assert (mudd(tokens) - expected).abs().max() > 1e-3  # an active DA: not the residual network
        for module in mudd.modules():
            if isinstance(module, DynamicAggregation):
                module.w1.normal_()
                module.w2.zero_()
                module.static.zero_()
                module.static[:, -1] = 1.0
        assert torch.equal(mudd(tokens), expected)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def test_da_aggregation_gradients_match_finite_differences():
    torch.manual_seed(4)
    da = DynamicAggregation(dim=5, ways=3, entries=4, hidden=6, norm_eps=1e-6).double()
    with torch.no_grad():
        da.w2.normal_()
        da.static.normal_()
    entries = [_leaf(torch.randn(2, 3, 5, dtype=torch.float64)) for _ in range(4)]

    def aggregate(w1, w2, static, *xs):
        weights = torch.func.functional_call(da, {"w1": w1, "w2": w2, "static": static}, (xs[-1],))
        return mudd_mix(xs, weights)

    params = (_leaf(da.w1), _leaf(da.w2), _leaf(da.static))
    assert torch.autograd.gradcheck(aggregate, (*params, *entries))


def test_attention_with_separate_inputs_gradients_match_finite_differences(monkeypatch):
    """MLA with separate query/key/value inputs, in float64 throughout (the norms and the rotary embedding compute in
    float32 in the model: here their float64 forms, so that finite differences are exact enough)."""

    def rope64(x, table):
        half = x.shape[-1] // 2
        cos, sin = table[..., :half], table[..., half:]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def norm64(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    monkeypatch.setattr(attention, "apply_rope", rope64)
    monkeypatch.setattr(RMSNorm, "forward", norm64)
    torch.manual_seed(5)
    cfg = model_config("tiny", "mudd")
    attn = MultiHeadLatentAttention(16, cfg.attention, cfg.norm_eps).double()
    with torch.no_grad():
        for p in attn.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    rope = rope_frequencies(cfg.attention.qk_rope_dim, 4, cfg.attention.rope_theta).to(torch.float64)
    q, k, v = (_leaf(torch.randn(1, 4, 16, dtype=torch.float64)) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, rope, key=k, value=v), (q, k, v))
    with torch.no_grad():  # the same input three times is the single-input attention, exactly
        assert torch.equal(attn(q, rope, key=q, value=q), attn(q, rope))
        assert (attn(q, rope, key=k, value=v) - attn(q, rope)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="both `key` and `value`"):
        attn(q, rope, key=k)


def test_incremental_decoding_matches_the_full_forward():
    torch.manual_seed(5)
    model = Transformer(model_config("tiny", "mudd")).eval()
    _activate(model)
    tokens = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2)
        assert all(c.value_latent is not None for c in cache)
        steps = torch.cat([model(tokens[:, i : i + 1], start_pos=i, cache=cache) for i in range(10)], dim=1)
        torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)
        cache = model.new_cache(2)
        model(tokens[:, :4], cache=cache)
        torch.testing.assert_close(model(tokens[:, 4:], start_pos=4, cache=cache), full[:, 4:], rtol=1e-4, atol=1e-5)
        plain = [b.attn.new_cache(2, 16, "cpu", torch.float32) for b in model.blocks]
        with pytest.raises(ValueError, match="value latents"):
            model(tokens, cache=plain)


def test_parameter_count_is_exactly_the_equation():
    """tiny (2 blocks, C = 64): sub-layers 1..3 read (W, E) = (2, 2), (4, 3), (2, 4) and the exit (1, 5); every hidden
    width rounds to 64: sum of 64 C + 64 W E + W E = 4356 + 4876 + 4616 + 4421."""
    base = summarize(model_config("tiny", "baseline"))
    s = summarize(model_config("tiny", "mudd"))
    assert s["connection_params"] == s["expected_connection_params"] == 4356 + 4876 + 4616 + 4421
    assert s["total_params"] - base["total_params"] == s["connection_params"]
    cfg = apply_overrides(
        model_config("tiny"), ["connection.arch=mudd", "connection.mudd_round64=false", "n_layers=3", "dim=32"]
    )
    assert summarize(cfg)["connection_params"] == expected_connection_params(cfg)
    out = subprocess.run(
        [sys.executable, "-m", "models.summary", "--scale", "cpu-dense-d8", "--arch", "mudd"],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = json.loads(out.stdout)
    assert printed["arch"] == "mudd" and printed["connection_params"] == printed["expected_connection_params"] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["connection.arch=mudd", "connection.rmt_rank=2"], "rmt_rank applies to arch 'rmt' only"),
        (["connection.arch=mhc", "connection.mudd_round64=false"], "mudd_round64 applies to arch 'mudd' only"),
    ],
)
def test_config_refuses_other_variants_fields(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_model_config(apply_overrides(model_config("tiny"), overrides))


def test_recomputation_is_ignored():
    torch.manual_seed(6)
    model = Transformer(model_config("tiny", "mudd", recompute_layers=2))
    assert model.recompute_block_size() == 0
    model(torch.randint(0, 512, (1, 8))).sum().backward()


def test_init_weights_redraws_every_da_from_the_seed():
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(Transformer(model_config("tiny", "mudd")))
    a, b = (dict(m.named_parameters()) for m in models)
    assert not torch.equal(a["connection_ends.da.w1"], b["connection_ends.da.w1"])
    for model in models:
        model.init_weights(seed=11)
    assert all(torch.equal(p, b[name]) for name, p in a.items())
    assert 0.09 < a["connection_ends.da.w1"].std().item() < 0.16  # N(0, 1 / C), C = 64


@needs_corpus
def test_tiny_model_trains_through_the_trainer(shards: Path, tmp_path: Path):
    steps = 6
    cfg = load_run_config(None, tiny_run_overrides("mudd", shards, steps))
    assert isinstance(cfg.model.connection, MUDDConfig)
    trainer = Trainer(cfg, tmp_path)
    w2_before = trainer.model.connection_ends.da.w2.detach().clone()
    assert trainer.run() == "completed"
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)
    # the diagnostics probe runs on MUDD: no mappings recorded; the DA gradients (none for sub-layer 0) as "pre"
    diagnostics = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    assert diagnostics and all(r["stream_spread"] == [] for r in diagnostics)
    grad_pre = diagnostics[0]["grad_pre"]
    assert grad_pre[0] is None and all(g > 0 for g in grad_pre[1:])
    assert all(g is None for g in diagnostics[0]["grad_res"] + diagnostics[0]["grad_post"])
    assert not torch.equal(trainer.model.connection_ends.da.w2.detach(), w2_before)
