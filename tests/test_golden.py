"""Behaviour pinned across refactors: the first training losses and the final weights of a tiny run per variant.

The values in `tests/golden/tiny_runs.json` were recorded from the training CLI before the code was moved into
its current packages. A refactor that is meant to leave behaviour alone must reproduce them; a deliberate change
of the numerics re-records them with `MHC_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py`.
Weights are compared through per-tensor fingerprints (sum and sum of squares in float64), with a tolerance for a
different reduction order but far below what one changed update would move.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import needs_corpus

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_runs.json"
RECORD = os.environ.get("MHC_RECORD_GOLDEN") == "1"
VARIANTS = {
    "baseline": {"arch": "baseline"},
    "hc": {"arch": "hc"},
    "mhc": {"arch": "mhc"},
    "mhc_reference_ops": {"arch": "mhc", "model": {"connection": {"kernels": "reference"}}},
}
STEPS = 6


def tiny_run(tmp: Path, shards: Path, variant: dict) -> dict:
    cfg = {
        "scale": "tiny",
        "seed": 3,
        "train": {"steps": STEPS, "batch_size": 4, "seq_len": 32, "warmup_steps": 2, "lr": 3e-3},
        "data": {"shards_dir": str(shards)},
        "run": {"eval_interval": STEPS, "diag_interval": 0, "ckpt_interval": STEPS, "progress": False, "threads": 1},
        "tracking": {"enabled": False},
    }
    for key, value in variant.items():
        cfg[key] = value
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "models.train", "--config", str(tmp / "c.yaml"), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    latest = (out / "checkpoints" / "latest").read_text().strip()
    state = load_file(out / "checkpoints" / latest / "state.safetensors")
    weights = {
        k.removeprefix("model."): [float(v.double().sum()), float(v.double().square().sum())]
        for k, v in sorted(state.items())
        if k.startswith("model.")
    }
    return {"losses": losses, "weights": weights}


@needs_corpus
@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_tiny_run_matches_recorded_values(tmp_path, shards, name):
    got = tiny_run(tmp_path, shards, VARIANTS[name])
    if RECORD:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(GOLDEN.read_text())[name]
    assert len(got["losses"]) == STEPS
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want["losses"]), rtol=1e-5, atol=0)
    assert sorted(got["weights"]) == sorted(want["weights"]), "parameter names changed"
    for key, (total, squares) in want["weights"].items():
        assert got["weights"][key][0] == pytest.approx(total, rel=1e-4, abs=1e-4), key
        assert got["weights"][key][1] == pytest.approx(squares, rel=1e-5), key
