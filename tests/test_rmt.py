"""The Residual Matrix Transformer connection (models/connections/rmt.py): the read and write by hand, causality, the
exact reduction to the residual network, gradients against finite differences, training through the trainer, and the
config refusing another variant's field."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from models.config import ConfigError, apply_overrides, validate_model_config
from models.connections import VARIANTS, RMTConfig
from models.connections.rmt import ResidualMatrix, RMTEnds
from models.registry import model_config
from models.summary import expected_connection_params, summarize
from models.transformer import Transformer
from tests.conftest import needs_corpus
from tests.helpers import tiny_run_overrides
from training.config import load_run_config
from training.trainer import Trainer


def small_rmt(key_dim: int = 2, rank: int = 2, dim: int = 4, index: int = 0) -> tuple[ResidualMatrix, RMTEnds]:
    cfg = RMTConfig(rmt_key_dim=key_dim, rmt_rank=rank)
    return ResidualMatrix(cfg, dim, index), RMTEnds(cfg, dim)


def test_registered():
    assert VARIANTS["rmt"] == (ResidualMatrix, RMTConfig)
    assert isinstance(model_config("tiny", "rmt").connection, RMTConfig)


def test_read_and_write_by_hand():
    """D_k = 2, R = 2, C = 4 (D_v = 2); S = [[1, 2], [3, 4]] (rows: keys), F(u) = 2u.

    read:  head 0 = S^T [1, -1] = [1, 2] - [3, 4] = [-2, -2]; head 1 = S^T [0.5, 2] = [0.5, 1] + [6, 8] = [6.5, 9]
    F:     y = [-4, -4, 13, 18], Y = [[-4, -4], [13, 18]]
    write: K_w Y with K_w = [[2, 0], [1, -1]]: row 0 = 2 [-4, -4] = [-8, -8]; row 1 = [-4, -4] - [13, 18] = [-17, -22]
    S' = S + K_w Y = [[-7, -6], [-14, -18]]"""
    conn, _ = small_rmt()
    with torch.no_grad():
        conn.read_keys.copy_(torch.tensor([[1.0, 0.5], [-1.0, 2.0]]))
        conn.write_keys.copy_(torch.tensor([[2.0, 0.0], [1.0, -1.0]]))
    state = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(3, 2, 2, 2)  # batch dims [3, 2]
    seen = {}

    def sublayer(u):
        seen["u"] = u
        return 2 * u

    out = conn(state, sublayer)
    assert torch.equal(seen["u"], torch.tensor([-2.0, -2.0, 6.5, 9.0]).expand(3, 2, 4))
    assert torch.equal(out, torch.tensor([[-7.0, -6.0], [-14.0, -18.0]]).expand(3, 2, 2, 2))


def test_entry_and_exit_by_hand():
    """h = [1, 2, 3, 4] -> X = [[1, 2], [3, 4]]; K_in = [[1, 2], [0, 1]]: S_0 = K_in X = [[7, 10], [3, 4]].
    K_out = [[1, 0], [1, 1]]: head 0 = S^T [1, 1] = [10, 14], head 1 = S^T [0, 1] = [3, 4]."""
    _, ends = small_rmt()
    with torch.no_grad():
        ends.entry_keys.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        ends.exit_keys.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    state = ends.expand(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert torch.equal(state, torch.tensor([[[7.0, 10.0], [3.0, 4.0]]]))
    assert torch.equal(ends.collapse(state), torch.tensor([[10.0, 14.0, 3.0, 4.0]]))


def test_whole_model_is_causal():
    torch.manual_seed(1)
    model = Transformer(model_config("tiny", "rmt")).eval()
    tokens = torch.randint(0, 512, (2, 24))
    changed = tokens.clone()
    changed[:, 15] = (changed[:, 15] + 7) % 512
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=0)
    assert (a[:, 15:] - b[:, 15:]).abs().amax(-1).min() > 1e-4  # every later position sees the change


def _set_all_keys(model: Transformer, keys: torch.Tensor) -> None:
    with torch.no_grad():
        for conn in model.connections():
            conn.read_keys.copy_(keys)
            conn.write_keys.copy_(keys)
        model.connection_ends.entry_keys.copy_(keys)
        model.connection_ends.exit_keys.copy_(keys)


@pytest.mark.parametrize("key_dim, rank", [(4, 4), (7, 4), (16, 1)])
def test_orthonormal_keys_reduce_to_the_residual_network(key_dim, rank):
    """With one key matrix Q (Q^T Q = I_R) everywhere, S_l = Q X_l, every read gives X_l and the write Q (X_l + Y_l):
    the model is the pre-norm residual network with the same core weights, to rounding (float64 here). With c Q
    everywhere S_l = c Q X_l and every read c^2 X_l, which F's pre-norm and the final norm remove (norm_eps 1e-20)."""
    torch.manual_seed(3)
    base = Transformer(model_config("tiny", "baseline")).double()
    torch.manual_seed(3)
    cfg = model_config("tiny", "rmt", rmt_key_dim=key_dim, rmt_rank=rank)
    rmt = Transformer(cfg).double()
    core = rmt.core_parameters()
    assert all(torch.equal(p, core[name]) for name, p in base.core_parameters().items())
    tokens = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        expected = base(tokens)
        assert (rmt(tokens) - expected).abs().max() > 1e-3  # random keys: not the residual network
        q, _ = torch.linalg.qr(torch.randn(key_dim, rank, dtype=torch.float64))
        _set_all_keys(rmt, q)
        torch.testing.assert_close(rmt(tokens), expected, rtol=1e-10, atol=1e-10)
        # one common scale of all keys changes nothing (every read feeds a norm), but write keys 1.5 Q give
        # x + 1.5 F(x): a branch gain, no longer the residual network
        _set_all_keys(rmt, 3.0 * q)
        torch.testing.assert_close(rmt(tokens), expected, rtol=0, atol=1e-6)  # RMSNorm rounds through float32
        for conn in rmt.connections():
            conn.write_keys.mul_(0.5)  # 1.5 Q against 3 Q for the reads and the entry
        assert (rmt(tokens) - expected).abs().max() > 1e-3


def test_gradients_match_finite_differences():
    torch.manual_seed(4)
    conn, ends = small_rmt(key_dim=3, rank=2, dim=6)
    conn, ends = conn.double(), ends.double()
    weight = torch.randn(6, 6, dtype=torch.float64)

    def sublayer(u):
        return torch.tanh(u @ weight) * u.pow(2).mean(-1, keepdim=True).add(1).rsqrt()

    def sublayer_step(read_keys, write_keys, state):
        params = {"read_keys": read_keys, "write_keys": write_keys}
        return torch.func.functional_call(conn, params, (state, sublayer))

    def leaf(t):
        return t.detach().clone().requires_grad_(True)

    state = leaf(torch.randn(2, 5, 3, 3, dtype=torch.float64))
    assert torch.autograd.gradcheck(sublayer_step, (leaf(conn.read_keys), leaf(conn.write_keys), state))
    h = leaf(torch.randn(2, 5, 6, dtype=torch.float64))
    entry, exit_ = leaf(ends.entry_keys), leaf(ends.exit_keys)

    def through_ends(entry_keys, exit_keys, read_keys, write_keys, h):
        s = RMTEnds.expand(_KeysOf(ends, entry_keys=entry_keys, exit_keys=exit_keys), h)
        s = sublayer_step(read_keys, write_keys, s)
        return RMTEnds.collapse(_KeysOf(ends, entry_keys=entry_keys, exit_keys=exit_keys), s)

    assert torch.autograd.gradcheck(through_ends, (entry, exit_, leaf(conn.read_keys), leaf(conn.write_keys), h))


class _KeysOf:
    """A stand-in for `ends` with other key tensors, to call RMTEnds' methods on them (gradcheck's inputs)."""

    def __init__(self, ends: RMTEnds, **keys: torch.Tensor):
        self.cfg = ends.cfg
        self.__dict__.update(keys)


def test_parameter_count_is_exactly_the_equation():
    base = summarize(model_config("tiny", "baseline"))
    s = summarize(model_config("tiny", "rmt"))
    # 4 sub-layers x (read + write) + entry + exit, each [D_k, R] = [16, 4]
    assert s["connection_params"] == s["expected_connection_params"] == (4 * 2 + 2) * 16 * 4 == 640
    assert s["total_params"] - base["total_params"] == s["connection_params"]
    cfg = apply_overrides(model_config("tiny"), ["connection.arch=rmt", "connection.rmt_key_dim=5", "dim=48"])
    assert expected_connection_params(cfg) == (4 * 2 + 2) * 5 * 4
    assert summarize(cfg)["connection_params"] == expected_connection_params(cfg)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["connection.arch=rmt", "connection.sinkhorn_iters=5"], "sinkhorn_iters applies to arch 'mhc' only"),
        (["connection.arch=rmt", "connection.hc_tanh=false"], "hc_tanh applies to arch 'hc' only"),
        (["connection.arch=rmt", "connection.rmt_key_dim=0"], "rmt_key_dim must be >= 1"),
        (["connection.arch=mhc", "connection.rmt_rank=2"], "rmt_rank applies to arch 'rmt' only"),
    ],
)
def test_config_refuses_other_variants_fields_and_bad_sizes(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_model_config(apply_overrides(model_config("tiny"), overrides))


def test_rank_must_divide_the_width():
    cfg = dataclasses.replace(model_config("tiny", "rmt"), connection=RMTConfig(rmt_rank=3))
    with pytest.raises(ConfigError, match=r"model.connection.rmt_rank \(3\) must divide model.dim \(64\)"):
        Transformer(cfg)


def test_run_config_file_with_an_mhc_field_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("arch: rmt\nmodel:\n  connection:\n    sinkhorn_iters: 5\n")
    with pytest.raises(ConfigError, match="model.connection.sinkhorn_iters applies to arch 'mhc' only"):
        load_run_config(str(path), [])
    with pytest.raises(ConfigError, match="sinkhorn_iters"):
        load_run_config(None, ["arch=rmt", "model.connection.sinkhorn_iters=5"])


@needs_corpus
def test_tiny_model_trains_through_the_trainer(shards: Path, tmp_path: Path):
    steps = 6
    cfg = load_run_config(None, tiny_run_overrides("rmt", shards, steps))
    assert isinstance(cfg.model.connection, RMTConfig)
    trainer = Trainer(cfg, tmp_path)
    keys_before = trainer.model.connection_ends.entry_keys.detach().clone()
    assert trainer.run() == "completed"
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)
    # the diagnostics probe runs on RMT: no mappings recorded, the gradients of the read and write keys are
    diagnostics = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    assert diagnostics and all(r["stream_spread"] == [] for r in diagnostics)
    assert all(g > 0 for g in diagnostics[0]["grad_pre"] + diagnostics[0]["grad_post"])
    assert all(g is None for g in diagnostics[0]["grad_res"])
    assert not torch.equal(trainer.model.connection_ends.entry_keys.detach(), keys_before)


def test_init_weights_redraws_every_key_from_the_seed():
    """The entry and exit keys (in `connection_ends`) come from the connections' generator like the sub-layers' keys:
    two models built from different seeds are equal after init_weights(seed)."""
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(Transformer(model_config("tiny", "rmt")))
    a, b = (dict(m.named_parameters()) for m in models)
    assert not torch.equal(a["connection_ends.entry_keys"], b["connection_ends.entry_keys"])
    for model in models:
        model.init_weights(seed=11)
    assert all(torch.equal(p, b[name]) for name, p in a.items())
    std = a["connection_ends.entry_keys"].std().item()  # N(0, 1 / R), R = 4
    assert 0.35 < std < 0.65


def test_incremental_decoding_matches_the_full_forward():
    torch.manual_seed(5)
    model = Transformer(model_config("tiny", "rmt")).eval()
    tokens = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2)
        steps = torch.cat([model(tokens[:, i : i + 1], start_pos=i, cache=cache) for i in range(10)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)
