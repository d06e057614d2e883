"""Jacobian gains (models/jacobian_gain.py) and their CLI (analysis/jacobian_gain.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.connections import VARIANTS
from models.jacobian_gain import (
    _backward_chain,
    _Graph,
    _randn_like,
    eager_mode,
    jacobian_gains,
    measure_steps,
    model_state,
)
from models.kernels.sinkhorn import _UNROLLED
from models.moe import _PADDED
from models.transformer import Transformer
from tests.conftest import needs_corpus
from tests.helpers import tiny_config
from tests.test_train import run_cli, write_config

REPO = Path(__file__).resolve().parent.parent


def tiny_model(arch: str, moe: bool = False, n_layers: int | None = None, **connection) -> Transformer:
    cfg = tiny_config(arch, moe=moe, **connection)
    if n_layers is not None:
        cfg = dataclasses.replace(cfg, n_layers=n_layers)
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def tokens(model: Transformer, batch: int = 2, seq: int = 8) -> torch.Tensor:
    return torch.randint(0, model.cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))


# ---- hand-computable cases ---------------------------------------------------------------------------------------


@torch.no_grad()
def _zero_outputs(model: Transformer) -> None:
    for name, p in model.named_parameters():
        if name.endswith(("wo.weight", "w2.weight")):
            p.zero_()


@pytest.mark.parametrize("moe", [False, True])
def test_sublayers_with_zero_output_have_identity_jacobian(moe):
    model = tiny_model("baseline", moe=moe)
    _zero_outputs(model)
    result = jacobian_gains(model, tokens(model), probes=2, power_iters=2)
    L = 2 * model.cfg.n_layers
    for name in ("single_fwd", "single_bwd", "composite_fwd", "composite_bwd"):
        assert result[name] == pytest.approx([1.0] * L, abs=1e-6), name
        assert result[f"{name}_max"] == pytest.approx([1.0] * L, abs=1e-6), name
    assert result["spectral"]["sigma_max"] == pytest.approx(1.0, abs=1e-6)
    assert result["summary"]["final_composite_fwd"] == pytest.approx(1.0, abs=1e-6)


def test_scalar_steps_give_their_factors_and_products():
    factors = [2.0, 0.5, 3.0, 1.5]
    steps = [lambda s, c=c: c * s for c in factors]
    result = measure_steps(steps, torch.randn(3, 5, 7), probes=3, power_iters=2)
    products = [math.prod(factors[: i + 1]) for i in range(4)]
    suffix = [math.prod(factors[i:]) for i in range(4)]
    assert result["single_fwd"] == pytest.approx(factors, rel=1e-6)
    assert result["single_bwd"] == pytest.approx(factors, rel=1e-6)
    assert result["composite_fwd"] == pytest.approx(products, rel=1e-6)
    assert result["composite_bwd"] == pytest.approx(suffix, rel=1e-6)
    assert result["summary"]["final_composite_fwd"] == pytest.approx(4.5, rel=1e-6)
    assert result["summary"]["final_composite_bwd"] == pytest.approx(4.5, rel=1e-6)
    assert result["spectral"]["sigma_max"] == pytest.approx(4.5, rel=1e-6)


def test_composite_gain_of_a_huge_growth_does_not_overflow():
    steps = [lambda s: 1e6 * s] * 12  # 10^72: beyond float32
    result = measure_steps(steps, torch.randn(4, 4), probes=1)
    assert result["composite_fwd"][-1] == pytest.approx(1e72, rel=1e-5)
    assert result["composite_bwd"][0] == pytest.approx(1e72, rel=1e-5)


def _dense_steps(weights: list[torch.Tensor]):
    """A MUDDFormer-like toy: the state is a tuple that grows by one entry per step, new = tanh(sum_k entries_k W)."""

    def step(state, w):
        return (*state, torch.tanh(sum(state) @ w))

    return [lambda s, w=w: step(s, w) for w in weights]


def _flat(state) -> torch.Tensor:
    return torch.cat([t.flatten() for t in state])


def test_growing_tuple_state_matches_its_explicit_jacobian():
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(3, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    steps = _dense_steps(weights)
    state = (torch.randn(2, 3, generator=gen, dtype=torch.float64),)
    result = measure_steps(steps, state, probes=1)

    # the same draws as measure_steps (composite v, single v's, composite u, single u's), against explicit Jacobians
    states = [state]
    for step in steps:
        states.append(step(states[-1]))
    draws = torch.Generator().manual_seed(0)
    jac = []
    for layer, step in enumerate(steps):
        sizes = [t.numel() for t in states[layer]]

        def flat_step(x, layer=layer, sizes=sizes, step=step):
            parts = [p.view_as(t) for p, t in zip(x.split(sizes), states[layer], strict=True)]
            return _flat(step(tuple(parts)))

        jac.append(torch.autograd.functional.jacobian(flat_step, _flat(states[layer])))

    # A dense state is measured on its newest entry: perturbations and cotangents sit there (zeros elsewhere), gains
    # read it there, and the chain between carries every entry.
    def newest(flat: torch.Tensor, layer: int) -> torch.Tensor:
        return flat[-states[layer][-1].numel() :]

    def on_newest(flat: torch.Tensor, layer: int) -> torch.Tensor:
        out = torch.zeros_like(flat)
        n = states[layer][-1].numel()
        out[-n:] = flat[-n:]
        return out

    v = _flat(_randn_like(states[0], draws))  # s_0 has one entry: all of it is the newest
    composite, t = [], v
    for layer, J in enumerate(jac):
        t = J @ t
        composite.append(float(newest(t, layer + 1).norm() / v.norm()))
    assert result["composite_fwd"] == pytest.approx(composite, rel=1e-9)
    single = []
    for layer, J in enumerate(jac):
        w = on_newest(_flat(_randn_like(states[layer], draws)), layer)
        single.append(float(newest(J @ w, layer + 1).norm() / w.norm()))
    assert result["single_fwd"] == pytest.approx(single, rel=1e-9)
    u = on_newest(_flat(_randn_like(states[-1], draws)), 3)
    back, g = [0.0] * 3, u
    for layer in range(2, -1, -1):
        g = jac[layer].T @ g
        back[layer] = float(newest(g, layer).norm() / u.norm())
    assert result["composite_bwd"] == pytest.approx(back, rel=1e-9)
    single = []
    for layer, J in enumerate(jac):
        w = on_newest(_flat(_randn_like(states[layer + 1], draws)), layer + 1)
        single.append(float(newest(J.T @ w, layer).norm() / w.norm()))
    assert result["single_bwd"] == pytest.approx(single, rel=1e-9)
    # measured on the whole list instead, the carried entries would add to every gain: the newest-entry gains are
    # smaller than the whole-list ones wherever the list has older entries
    whole = [float((jac[0] @ v).norm() / v.norm())]
    assert composite[0] < whole[0]


# ---- finite differences on the model -----------------------------------------------------------------------------

# The model in float64 still computes its RMSNorms, RoPE and the HC / mHC coefficients and mixes in float32
# (models/layers.py, models/kernels/torch_ops.py), so the differences are float32-accurate: with a step of 1e-3 of
# the state's norm they agree to ~1e-6 (a missing term of the Jacobian is off by far more).
FD_REL = 1e-4


@pytest.mark.parametrize("arch", ["baseline", "hc", "mhc", "mhc-lite", "rmt"])
def test_jvp_and_vjp_agree_with_central_finite_differences(arch):
    model = tiny_model(arch).double()
    toks = tokens(model, batch=1, seq=6)
    result = jacobian_gains(model, toks, probes=1, seed=3)
    with eager_mode(model), torch.no_grad():
        steps = model.sublayer_steps(toks.shape[1])
        s0 = model_state(model, toks)
        v = _randn_like(s0, torch.Generator().manual_seed(3))  # measure_steps' first draw: the composite tangent
        h = 1e-3 * float(s0.norm() / v.norm())
        plus, minus, fd = s0 + h * v, s0 - h * v, []
        for step in steps:
            plus, minus = step(plus), step(minus)
            fd.append(float(((plus - minus) / (2 * h)).norm() / v.norm()))
    assert result["composite_fwd"] == pytest.approx(fd, rel=FD_REL)

    # the backward chain: <J^T u, w> = d/dh <u, F(s0 + h w)>
    with eager_mode(model):
        steps = model.sublayer_steps(toks.shape[1])
        graph = _Graph(steps, s0)
        u = torch.randn(graph.outputs[-1].shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        gains, g0 = _backward_chain(graph, u)
        w = torch.randn(s0.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        h = 1e-3 * float(s0.norm() / w.norm())
        with torch.no_grad():
            plus, minus = s0 + h * w, s0 - h * w
            for step in steps:
                plus, minus = step(plus), step(minus)
            directional = float((u * (plus - minus)).sum() / (2 * h))
    # g0 is J^T u normalised: its norm is gains[0] * ||u||. One inner product sums terms that cancel, so its float32
    # noise is larger relative to it (~2e-4 for mHC-lite): 1e-3 (a wrong VJP is off by O(1)).
    assert float((g0 * w).sum()) * gains[0] * float(u.norm()) == pytest.approx(directional, rel=10 * FD_REL)


# ---- HC against mHC ----------------------------------------------------------------------------------------------


def test_amplified_hc_residual_grows_with_depth_while_mhc_stays_bounded():
    hc = tiny_model("hc", n_layers=4)
    mhc = tiny_model("mhc", n_layers=4)
    with torch.no_grad():
        for c in hc.connections():
            c.static_res.mul_(1.5)  # H_res = 1.5 I: every sub-layer amplifies the residual by 1.5
        for c in mhc.connections():
            n = c.cfg.n
            # strong logits that favour the identity and one off-diagonal: still doubly stochastic after Sinkhorn
            c.bias[-n * n :].copy_(8.0 * (torch.eye(n) + torch.eye(n).roll(1, 0)).flatten())
    toks = tokens(hc)
    hc_gains = jacobian_gains(hc, toks, probes=2)
    mhc_gains = jacobian_gains(mhc, toks, probes=2)
    L = 8
    assert hc_gains["composite_fwd"][-1] > 0.5 * 1.5**L
    assert hc_gains["composite_bwd"][0] > 0.5 * 1.5**L
    assert all(b > a for a, b in zip(hc_gains["composite_fwd"], hc_gains["composite_fwd"][1:], strict=False))
    assert max(mhc_gains["composite_fwd"]) < 2.0
    assert max(mhc_gains["composite_bwd"]) < 2.0


# ---- every variant, and the eager mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_every_variant_is_measured_and_its_settings_restored(arch):
    model = tiny_model(arch, moe=True)
    model.train()
    kernels = model.cfg.connection.kernels
    result = jacobian_gains(model, tokens(model), probes=2, power_iters=1)
    L = 2 * model.cfg.n_layers
    assert result["sublayers"] == L
    for name in ("single_fwd", "single_bwd", "composite_fwd", "composite_bwd"):
        assert len(result[name]) == L
        assert all(math.isfinite(g) and g > 0 for g in result[name]), (name, result[name])
        assert all(m >= g for m, g in zip(result[f"{name}_max"], result[name], strict=True))
    json.dumps(result)  # plain floats and lists
    assert model.training
    assert model.cfg.connection.kernels == kernels
    assert all(c.cfg.kernels == kernels for c in model.connection_modules())
    assert not _UNROLLED.get() and not _PADDED.get()
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated into the model


def test_eager_mode_restores_after_an_error():
    model = tiny_model("mhc")
    model.cfg.connection.kernels = "auto"
    with pytest.raises(RuntimeError, match="boom"), eager_mode(model):
        assert model.cfg.connection.kernels == "reference" and not model.training
        assert _UNROLLED.get() and _PADDED.get()
        raise RuntimeError("boom")
    assert model.cfg.connection.kernels == "auto"
    assert not _UNROLLED.get() and not _PADDED.get()


# ---- the CLI -----------------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "analysis.jacobian_gain", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_cli_rejects_a_missing_run_dir_without_traceback(tmp_path):
    proc = _cli("--run", str(tmp_path / "nope"), "--out", str(tmp_path / "out.json"))
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli("--run", str(empty), "--out", str(tmp_path / "out.json"))
    assert proc.returncode != 0
    assert "no usable final model" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.json").exists()


@needs_corpus
def test_cli_writes_init_and_final_gains_of_a_trained_run(tmp_path, shards):
    from analysis.jacobian_gain import initial_model
    from training.config import build_run_config
    from training.trainer import Trainer

    config = write_config(
        tmp_path / "c.yaml", shards, arch="mhc", train={"steps": 20}, run={"eval_interval": 0, "diag_interval": 0}
    )
    run = tmp_path / "run"
    proc = run_cli(config, run)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "gain.json"
    proc = _cli("--run", str(run), "--out", str(out), "--batch", "2", "--seq", "16", "--probes", "2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["arch"] == "mhc" and result["sublayers"] == 4 and result["tokens"] == "validation"
    assert result["settings"]["batch"] == 2 and result["settings"]["seq"] == 16
    for name in ("init", "final"):
        assert len(result[name]["composite_fwd"]) == 4
        assert set(result[name]["summary"]) >= {"max_single_fwd", "final_composite_fwd", "final_composite_bwd"}
    assert result["init"]["composite_fwd"] != result["final"]["composite_fwd"]
    # mHC's residual path hands every sub-layer the embedding itself at init
    assert len(result["init"]["identity_path"]["sublayers"]) == 4 and result["init"]["identity_path"]["max"] < 1e-4

    # a trained model whose states overflow (a collapsed run) has no finite gain: recorded as such, exit 0
    import hashlib

    from safetensors.torch import load_file, save_file

    weights_file = run / "model" / "model.safetensors"
    weights = load_file(weights_file)
    weights["embed.weight"] = torch.full_like(weights["embed.weight"], float("inf"))
    save_file(weights, weights_file)
    sidecar_file = run / "model" / "model.json"
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["sha256"] = hashlib.sha256(weights_file.read_bytes()).hexdigest()  # a collapsed run, not a corrupted file
    sidecar_file.write_text(json.dumps(sidecar))
    proc = _cli("--run", str(run), "--out", str(out), "--batch", "2", "--seq", "16", "--probes", "1")
    assert proc.returncode == 0, proc.stderr
    broken = json.loads(out.read_text())
    assert "not finite" in proc.stderr and broken["final"]["not_finite"] and "composite_fwd" in broken["init"]

    # the rebuilt model at init is the trainer's
    sidecar = json.loads((run / "model" / "model.json").read_text())
    rebuilt = initial_model(sidecar)
    trainer = Trainer(build_run_config(sidecar["config"]), tmp_path / "fresh")
    reference = trainer.model.state_dict()
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, reference[key]), key
