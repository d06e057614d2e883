"""An experiment is only evidence if its mechanism operated: mHC's residual mixing at the shipped defaults.

With b = 0 the n streams start as copies and every row of H_res sums to 1, so H_res x = x for any logits and the
H_res logits get (almost) no gradient; with AdamW eps = 1e-8 they then never move and mHC is the baseline with a
branch gain. These tests train the unit-test model for a few dozen steps and require the shipped defaults to move
H_res and make the streams differ, and show that the degenerate setting fails the same check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.diagnostics import MECHANISM_THRESHOLDS, mechanism_operated
from tests.conftest import needs_corpus
from training.config import load_run_config
from training.trainer import Trainer

STEPS = 40


def train_tiny_mhc(shards: Path, out: Path, *overrides: str) -> dict:
    """40 steps of the `tiny` mHC model; returns the last diagnostics record."""
    base = [
        "scale=tiny",
        "arch=mhc",
        "seed=0",
        f"data.shards_dir={shards}",
        f"train.steps={STEPS}",
        "train.batch_size=8",
        "train.seq_len=64",
        "train.warmup_steps=4",
        f"run.diag_interval={STEPS}",
        f"run.eval_interval={STEPS}",
        "run.eval_batches=2",
        "run.ckpt_interval=1000",
        "run.progress=false",
    ]
    cfg = load_run_config(None, base + list(overrides))
    assert Trainer(cfg, out).run() == "completed"
    records = [json.loads(line) for line in (out / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, STEPS]
    return records


@pytest.fixture(scope="module")
def shipped_default_records(shards, tmp_path_factory) -> list[dict]:
    """The diagnostics of one training at the shipped defaults, shared by the tests that read it."""
    return train_tiny_mhc(shards, tmp_path_factory.mktemp("mechanism") / "default")


@needs_corpus
def test_shipped_defaults_move_h_res_and_separate_the_streams(shipped_default_records):
    first, last = shipped_default_records
    ok, why = mechanism_operated(last)
    assert ok, why
    # the H_res parameters get a real gradient from the first step on (b = 0 gives ~1e-9)
    assert max(first["grad_res"]) > 1e-6
    # and the forward gain stays exactly 1 while H_res moves (row-stochastic by construction)
    assert max(abs(g - 1) for g in last["single_forward"]) < 1e-5


@needs_corpus
def test_zero_bias_normal_phi_with_adamw_eps_1e8_fails_the_check(shards, tmp_path):
    first, last = train_tiny_mhc(
        shards,
        tmp_path / "degenerate",
        "model.connection.bias_init=zero",
        "model.connection.phi_init=normal",
        "train.eps=1e-8",
    )
    ok, why = mechanism_operated(last)
    assert not ok, why
    assert max(last["hres_learned"]) < MECHANISM_THRESHOLDS["hres_learned"]
    assert max(last["stream_spread"]) < MECHANISM_THRESHOLDS["stream_spread"]
    assert max(first["grad_res"]) < 1e-8  # what starves it: H_res acts on copies


def test_mechanism_check_on_records():
    ok, _ = mechanism_operated({"hres_learned": [0.0, 0.3], "stream_spread": [0.0, 0.2]})
    assert ok
    assert not mechanism_operated({"hres_learned": [0.3], "stream_spread": [0.01]})[0]
    assert not mechanism_operated({"hres_learned": [None], "stream_spread": [0.2]})[0]
    # one sub-layer that separates the streams while the others keep them copies is not enough (the b = 0 pattern)
    assert not mechanism_operated({"hres_learned": [0.3] * 4, "stream_spread": [0.1, 0.001, 0.002, 0.001]})[0]
    # a single criterion where only one applies (the gain control: no streams; identity HC: H_res fixed)
    assert mechanism_operated({"hres_learned": [0.3], "stream_spread": [0.0]}, ("hres_learned",))[0]


@needs_corpus
def test_learned_change_is_measured_on_the_same_input(shipped_default_records):
    """At step 0 the learned change is exactly 0 (the same parameters on the same input), while the token-averaged
    H_res itself is far from J/n for the shipped init: the two quantities are different measurements."""
    first, last = shipped_default_records
    assert max(first["hres_learned"]) == 0.0 and max(first["hres_from_init"]) == 0.0
    assert max(first["hres_from_uniform"]) > 0.3
