"""Config errors, the scale registry and the parameter summary (Table 5)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from models.config import ConfigError, ModelConfig, apply_overrides, from_dict
from models.registry import SCALES, get_scale, model_config
from models.summary import expected_connection_params, summarize

TABLE5 = {  # Table 5: total, active
    "paper-3b": (2.97e9, 612e6),
    "paper-9b": (9.18e9, 1.66e9),
    "paper-27b": (27.0e9, 4.14e9),
    "paper-3b-1t": (2.97e9, 612e6),
}


@pytest.mark.parametrize("name", list(TABLE5))
def test_paper_scales_match_table5_counts(name):
    total, active = TABLE5[name]
    s = summarize(model_config(name, "baseline"))
    # Table 5's parameter counts within 0.5% (the layout differs in rounding only)
    assert abs(s["total_params"] / total - 1) < 0.005
    assert abs(s["active_params"] / active - 1) < 0.005
    # vocab params: embedding + head (Table 5 "Vocab params" 331M / 496M / 662M)
    assert s["embedding_params"] + s["head_params"] == pytest.approx(get_scale(name).paper["vocab_params"], rel=0.01)


def test_paper_table5_schedule_and_optimiser():
    for name, steps, batch, lr in [
        ("paper-3b", 30000, 320, 8.6e-4),
        ("paper-9b", 50000, 512, 5.9e-4),
        ("paper-27b", 50000, 1280, 4.0e-4),
        ("paper-3b-1t", 100000, 2560, 9.0e-4),
    ]:
        t = get_scale(name).train
        assert (t.steps, t.batch_size, t.lr, t.seq_len, t.warmup_steps) == (steps, batch, lr, 4096, 2000)
        assert t.betas == (0.9, 0.95) and t.weight_decay == 0.1 and t.eps == 1e-20
        assert t.decay_at == (0.8, 0.9) and t.decay_rates == (0.316, 0.1)
        assert t.tokens == pytest.approx(get_scale(name).paper["tokens"], rel=0.01)


@pytest.mark.parametrize("arch", ["mhc", "hc", "mhc-lite", "rmt", "mudd"])
def test_connection_params_are_exactly_the_equations(arch):
    base = summarize(model_config("paper-3b", "baseline"))
    s = summarize(model_config("paper-3b", arch))
    assert s["connection_params"] == s["expected_connection_params"] > 0
    assert s["total_params"] - base["total_params"] == s["connection_params"]
    if arch == "mhc":  # 24 sub-layers x (4*1280*24 + 24 + 3)
        assert s["connection_params"] == 24 * (4 * 1280 * 24 + 24 + 3)
    if arch == "mhc-lite":  # 24 sub-layers x (nC (2n + n!) + (2n + n!) + 3), n! = 24 permutations at n = 4
        assert s["connection_params"] == 24 * (4 * 1280 * 32 + 32 + 3)
    if arch == "rmt":  # 24 sub-layers x (read + write) + entry + exit, each [D_k, R] = [16, 4]
        assert s["connection_params"] == (24 * 2 + 2) * 16 * 4


def test_summary_cli_is_fast_and_prints_json():
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "models.summary", "--scale", "paper-27b", "--arch", "mhc"],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.time() - start
    data = json.loads(out.stdout)
    assert data["connection_params"] == data["expected_connection_params"] == 60 * (4 * 2560 * 24 + 27)
    assert elapsed < 60


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scale", "paper-3x"], "unknown scale 'paper-3x'"),
        (["--scale", "tiny", "--arch", "mhx"], "'mhx' is not one of"),
        (["--scale", "tiny", "--set", "connection.nn=2"], "unknown config key 'connection.nn' (did you mean 'n'?)"),
    ],
)
def test_summary_cli_errors(argv, message):
    out = subprocess.run([sys.executable, "-m", "models.summary", *argv], capture_output=True, text=True)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""


def test_from_dict_rejects_unknown_keys_and_bad_types():
    with pytest.raises(ConfigError, match="unknown config key 'attention.n_head' .did you mean 'n_heads'"):
        from_dict(ModelConfig, {"attention": {"n_head": 4}})
    with pytest.raises(ConfigError, match="dim: expected an integer"):
        from_dict(ModelConfig, {"dim": "wide"})
    with pytest.raises(ConfigError, match="connection.arch: 'foo' is not one of"):
        from_dict(ModelConfig, {"connection": {"arch": "foo"}})


def test_overrides_roundtrip():
    cfg = apply_overrides(model_config("tiny"), ["connection.arch=mhc", "connection.n=2", "dim=32"])
    assert cfg.connection.arch == "mhc" and cfg.connection.n == 2 and cfg.dim == 32
    assert expected_connection_params(cfg) == 2 * cfg.n_layers * (2 * 32 * 8 + 8 + 3)


def test_every_registered_scale_builds_on_meta():
    for name in SCALES:
        for arch in ("baseline", "mhc"):
            s = summarize(model_config(name, arch))
            assert s["total_params"] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["connection.arch=baseline", "connection.learn_res=false"],
            "learn_res applies to arch 'hc' or 'mhc' or 'mhc-lite' only",
        ),
        (["connection.arch=hc", "connection.phi_init=normal"], "phi_init applies to arch 'mhc' or 'mhc-lite' only"),
        (["connection.arch=mhc", "connection.hc_tanh=false"], "hc_tanh applies to arch 'hc' only"),
        (["connection.arch=mhc", "connection.kernels=triton", "connection.learn_res=false"], "needs every mHC"),
        (["connection.arch=hc", "connection.bias_init=identity"], "bias_init applies to arch 'mhc' or 'mhc-lite' only"),
        (["attention.n_heads=0"], "attention.n_heads must be >= 1"),
        (["ffn.n_dense_layers=9"], "exceeds n_layers"),
        (["connection.kernels=fast"], "'fast' is not one of"),
        (["connection.arch=mhc", "connection.hc_tanh=true"], "hc_tanh applies to arch 'hc' only"),
    ],
)
def test_semantic_config_errors(overrides, message):
    from models.config import validate_model_config

    with pytest.raises(ConfigError, match=message):
        validate_model_config(apply_overrides(model_config("tiny"), overrides))


def test_each_variant_has_its_own_config_class():
    from models.config import ConnectionConfig, archs, connection_config, from_dict, model_config_from_record

    assert set(archs()) == {"baseline", "gain", "hc", "mhc", "mhc-lite", "rmt", "mudd"}
    assert type(from_dict(ConnectionConfig, {"arch": "mhc", "sinkhorn_iters": 5})).__name__ == "MHCConfig"
    assert type(from_dict(ConnectionConfig, {"arch": "hc", "hc_tanh": False})).__name__ == "HCConfig"
    assert type(connection_config("gain")) is ConnectionConfig
    # a field of another variant is refused even at its default value (a "differs from the default" check missed it)
    with pytest.raises(ConfigError, match="hc_dynamic applies to arch 'hc' only"):
        from_dict(ConnectionConfig, {"arch": "mhc", "hc_dynamic": True})
    with pytest.raises(TypeError):
        connection_config("baseline", sinkhorn_iters=20)
    # records written when one class held every variant's fields still load; a genuinely unknown key does not
    legacy = {"connection": {"arch": "mhc", "hc_dynamic": True, "hc_tanh": True, "sinkhorn_iters": 7}}
    assert model_config_from_record(legacy).connection.sinkhorn_iters == 7
    with pytest.raises(ConfigError, match="bogus"):
        model_config_from_record({"connection": {"arch": "mhc", "bogus": 1}})
