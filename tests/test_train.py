"""The training CLI end to end: metrics, exact resume after SIGKILL, divergence, bad input, DDP, MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import needs_corpus

REPO = Path(__file__).resolve().parent.parent
WALL_CLOCK = ("step_time_s", "tokens_per_s")  # the only fields that may differ between two identical runs
TRAIN_FIELDS = {"step", "tokens", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "epoch"}
AMAX_FIELDS = {"amax_single_fwd", "amax_single_bwd", "amax_composite_fwd", "amax_composite_bwd"}


def write_config(path: Path, shards: Path, **sections) -> Path:
    cfg = {
        "scale": "tiny",
        "arch": "mhc",
        "seed": 0,
        "train": {"steps": 16, "batch_size": 4, "seq_len": 32, "warmup_steps": 2, "lr": 3e-3},
        "data": {"shards_dir": str(shards)},
        "run": {"eval_interval": 8, "diag_interval": 8, "ckpt_interval": 4, "progress": False, "threads": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_cmd(config: Path, out: Path, *overrides: str) -> list[str]:
    cmd = [sys.executable, "-m", "models.train", "--config", str(config), "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def run_cli(config: Path, out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(config, out, *overrides), cwd=REPO, capture_output=True, text=True, timeout=600, env=env
    )


def metrics(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def without_wall_clock(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]


@needs_corpus
@pytest.mark.parametrize("arch", ["baseline", "hc", "mhc"])
def test_cli_run_writes_every_field_and_val_loss_falls(tmp_path, shards, arch):
    config = write_config(tmp_path / "c.yaml", shards, arch=arch)
    out = tmp_path / "run"
    proc = run_cli(config, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "completed"
    # which connection ops ran (the fused CPU kernels on this float32 CPU run), and their load time
    assert status.get("kernels") == (None if arch == "baseline" else "cpu")
    assert (arch == "baseline") == ("kernel_load_s" not in status)
    records = metrics(out)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert all(TRAIN_FIELDS <= r.keys() for r in steps)
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 3 and val[0] > val[1] > val[2], val  # steps 0, 8, 16
    amax = [r for r in records if "amax_single_fwd" in r]
    if arch == "baseline":
        assert amax == []
    else:
        assert [r["step"] for r in amax] == [0, 8, 16] and all(AMAX_FIELDS <= r.keys() for r in amax)
    if arch == "mhc":  # rows of every H_res sum to 1 exactly, so the composite forward gain is 1
        assert all(abs(r["amax_composite_fwd"] - 1) < 1e-5 for r in amax)
    assert (out / "model" / "model.safetensors").is_file()
    sidecar = json.loads((out / "model" / "model.json").read_text())
    assert sidecar["config"]["arch"] == arch and len(sidecar["sha256"]) == 64


@needs_corpus
def test_sigkill_then_rerun_gives_the_uninterrupted_metrics(tmp_path, shards):
    config = write_config(tmp_path / "c.yaml", shards, train={"steps": 24}, run={"ckpt_interval": 5})
    reference = tmp_path / "uninterrupted"
    assert run_cli(config, reference).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(config, killed), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Kill after the step-10 checkpoint, mid-way between checkpoints (metrics past it are already written).
    while time.time() < deadline:
        latest = killed / "checkpoints" / "latest"
        if latest.is_file() and latest.read_text().strip() >= "step_0000010" and (killed / "metrics.jsonl").is_file():
            if max(r["step"] for r in metrics(killed)) >= 12:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "status.json").read_text())["status"] == "running"  # died without a word
    assert max(r["step"] for r in metrics(killed)) < 24

    rerun = run_cli(config, killed)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    status = json.loads((killed / "status.json").read_text())
    assert status["status"] == "completed"
    a, b = metrics(reference), metrics(killed)
    assert without_wall_clock(a) == without_wall_clock(b)  # bit for bit: floats compared exactly
    assert all(all(k in r for k in WALL_CLOCK) for r in b if "loss" in r)


@needs_corpus
def test_huge_learning_rate_ends_as_diverged(tmp_path, shards):
    config = write_config(tmp_path / "c.yaml", shards, arch="hc", train={"lr": 1e6, "warmup_steps": 1})
    out = tmp_path / "run"
    proc = run_cli(config, out, "run.grad_clip=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "diverged"
    assert "non-finite" in status["reason"]
    records = metrics(out)
    assert all(
        v == v and abs(v) != float("inf") for r in records for v in r.values() if isinstance(v, float)
    )  # the last finite metrics are kept, no NaN written
    assert not (out / "model").exists()


@needs_corpus
def test_unknown_config_key_fails_at_once_naming_it(tmp_path, shards):
    config = write_config(tmp_path / "c.yaml", shards, model={"connection": {"nn": 2}})
    out = tmp_path / "run"
    proc = run_cli(config, out)
    assert proc.returncode == 2
    assert "unknown config key 'model.connection.nn'" in proc.stderr and "did you mean 'n'" in proc.stderr
    assert not out.exists()
    proc = run_cli(write_config(tmp_path / "d.yaml", shards), out, "run.eval_intervall=3")
    assert proc.returncode == 2 and "unknown config key 'run.eval_intervall'" in proc.stderr
    assert not out.exists()


@needs_corpus
def test_corrupted_checkpoint_fails_clearly_and_writes_nothing(tmp_path, shards):
    config = write_config(tmp_path / "c.yaml", shards, train={"steps": 8})
    out = tmp_path / "run"
    assert run_cli(config, out).returncode == 0
    tensor_file = out / "checkpoints" / "step_0000008" / "state.safetensors"
    data = bytearray(tensor_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = run_cli(config, out, "train.steps=8")
    assert proc.returncode == 2
    assert f"checkpoint file {tensor_file} is corrupted" in proc.stderr
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


@needs_corpus
def test_shard_with_wrong_sha256_fails_clearly_and_writes_nothing(tmp_path, shards):
    import shutil

    bad = tmp_path / "bad_shards"
    shutil.copytree(shards, bad)
    train_bin = bad / "train.bin"
    data = bytearray(train_bin.read_bytes())
    data[100] ^= 0x01
    train_bin.write_bytes(bytes(data))
    out = tmp_path / "run"
    proc = run_cli(write_config(tmp_path / "c.yaml", bad), out)
    assert proc.returncode == 2
    assert "sha256" in proc.stderr and "train.bin" in proc.stderr
    expected = json.loads((bad / "manifest.json").read_text())["shards"]["train"]["sha256"]
    assert expected in proc.stderr
    assert not out.exists()


MOE = {
    "ffn": {"kind": "moe", "n_dense_layers": 1, "moe": {"n_routed": 4, "n_active": 2, "n_shared": 1, "expert_dim": 32}}
}


@needs_corpus
@pytest.mark.parametrize("parallel, model", [("ddp", {}), ("fsdp", {}), ("fsdp", MOE)], ids=["ddp", "fsdp", "fsdp-moe"])
def test_two_gloo_processes_match_one_process(tmp_path, shards, parallel, model):
    """Same global batch (4) on 1 process and on 2 ranks x 2 (DDP, or FSDP2 with every block sharded; with MoE
    some experts get no token on a rank): losses agree within 1e-5 relative (float reduction order only)."""
    # AdamW eps 1e-8 here (the scales use Table 5's 1e-20): with 1e-20 Adam turns the reduction-order differences of
    # near-zero gradients into full-size steps of either sign, and the final weights would only agree to ~2 lr steps.
    config = write_config(
        tmp_path / "c.yaml", shards, arch="mhc", model=model, train={"steps": 6, "eps": 1e-8}, run={"eval_interval": 3}
    )
    single = tmp_path / "single"
    assert run_cli(config, single).returncode == 0
    double = tmp_path / "double"
    port = str(29517 + len(tmp_path.name) % 50)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port]
    cmd += ["-m", "models.train", "--config", str(config), "--out", str(double), "--set", f"run.parallel={parallel}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = [r for r in metrics(single) if "loss" in r]
    b = [r for r in metrics(double) if "loss" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)
    va = [r["val_loss"] for r in metrics(single) if "val_loss" in r]
    vb = [r["val_loss"] for r in metrics(double) if "val_loss" in r]
    assert vb == pytest.approx(va, rel=1e-5)
    # The final model gathered from the ranks equals the single-process one up to one Adam step (lr 3e-3) for every
    # parameter whose gradient is not ~0: Adam normalises tiny reduction-order differences to O(lr) updates.
    from safetensors.torch import load_file

    wa, wb = load_file(single / "model" / "model.safetensors"), load_file(double / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    # The first sub-layer's connection is the exception: its H_res acts on replicated streams (expansion copies x),
    # so the gradient reaching its H_res share of phi / bias / alpha is ~0 by construction and each Adam step follows
    # the reduction-order noise with a full-size update of either sign; it gets the bound of a random walk of 6
    # steps (Adam's bias-corrected update is at most ~2 lr per step here), the rest the one-step bound.
    noise_only = {k for k in wa if k.startswith("blocks.0.attn_connection.")}
    assert noise_only
    drift = {k: (wa[k] - wb[k]).abs().max().item() for k in wa}
    assert max(drift[k] for k in wa if k not in noise_only) < 3e-3
    assert max(drift[k] for k in noise_only) < 6 * 2 * 3e-3
    # The mechanism diagnostics work on sharded parameters too (the step-0 maps are swapped in as full tensors).
    diag_a, diag_b = metrics(single, "diagnostics.jsonl")[-1], metrics(double, "diagnostics.jsonl")[-1]
    assert all(v is not None for v in diag_b["hres_learned"])
    # (sub-layer 0 excepted: its H_res parameters follow the noise, see above)
    assert diag_b["hres_learned"][1:] == pytest.approx(diag_a["hres_learned"][1:], abs=1e-3)


@needs_corpus
@pytest.mark.slow
def test_four_concurrent_training_runs_lose_no_run_and_no_metric(tmp_path, shards):
    from mlflow.tracking import MlflowClient

    from training.tracking import init_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = init_store(uri, "concurrency")  # once, before the jobs (as the DAG's init rule does)
    config = write_config(
        tmp_path / "c.yaml",
        shards,
        train={"steps": 8},
        run={"eval_interval": 4, "diag_interval": 4, "ckpt_interval": 2},
        tracking={"enabled": True, "tracking_uri": uri, "experiment": "concurrency"},
    )
    procs = [
        subprocess.Popen(
            train_cmd(config, tmp_path / f"run{seed}", f"seed={seed}", f"arch={arch}"),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed, arch in enumerate(["baseline", "hc", "mhc", "mhc"])
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([experiment_id], max_results=100)
    assert len(runs) == 4
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
        run_dir = Path(run.data.tags["run_dir"])
        jsonl = metrics(run_dir)
        for key in ("loss", "grad_norm", "lr", "val_loss") + (
            ("amax_composite_bwd",) if run.data.tags["arch"] != "baseline" else ()
        ):
            expected = [(r["step"], r[key]) for r in jsonl if key in r]
            history = client.get_metric_history(run.info.run_id, key)
            got = sorted((m.step, m.value) for m in history)
            assert [step for step, _ in got] == [step for step, _ in sorted(expected)], key
            assert [v for _, v in got] == pytest.approx([v for _, v in sorted(expected)], rel=1e-6), key
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 8


@needs_corpus
def test_torn_last_line_and_crash_before_first_checkpoint_resume_cleanly(tmp_path, shards):
    config = write_config(tmp_path / "c.yaml", shards, train={"steps": 8})
    reference = tmp_path / "reference"
    assert run_cli(config, reference).returncode == 0
    out = tmp_path / "run"
    out.mkdir()
    # what a crash before the first checkpoint leaves: a step-0 record and a half-written line
    (out / "metrics.jsonl").write_text('{"step": 0, "tokens": 0, "val_loss": 1.0}\n{"step": 1, "tok')
    proc = run_cli(config, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert without_wall_clock(metrics(out)) == without_wall_clock(metrics(reference))


def test_sigterm_marks_the_run_failed(tmp_path, shards):
    config = write_config(tmp_path / "c.yaml", shards, train={"steps": 400})
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(config, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").is_file():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "signal" in status["reason"]


@needs_corpus
def test_workflow_flags_summary_stale_run_and_tracking_file(tmp_path, shards):
    """--summary writes the outcome; --replace-stale moves a run of another configuration aside (without it that is
    an error); a tracking file that says tracking is off tracks nothing; a diverged run gets a summary too."""
    config = write_config(tmp_path / "c.yaml", shards, train={"steps": 4})
    off = tmp_path / "tracking.json"
    off.write_text(json.dumps({"enabled": False, "tracking_uri": "sqlite:///unused.db", "experiments": {}}))
    out, summary = tmp_path / "run", tmp_path / "run" / "final.json"
    proc = run_cli(config, out, "run.ckpt_interval=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = train_cmd(config, out, "run.ckpt_interval=2") + ["--summary", str(summary), "--tracking-file", str(off)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert result["status"] == "completed" and result["steps_done"] == 4 and result["final_val_loss"] > 0
    assert not (out / "mlflow_run_id").exists() and not (tmp_path / "unused.db").exists()

    changed = train_cmd(config, out, "run.ckpt_interval=2", "train.lr=0.001")
    proc = subprocess.run(changed, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "different configuration" in proc.stderr
    proc = subprocess.run(changed + ["--replace-stale"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stale = list(tmp_path.glob("run.stale-*"))
    assert len(stale) == 1 and (stale[0] / "final.json").is_file()  # the old run is kept, not deleted
    assert json.loads((out / "config.json").read_text())["config"]["train"]["lr"] == 0.001
    assert "resuming" not in proc.stderr  # started afresh

    diverged = write_config(tmp_path / "d.yaml", shards, train={"lr": 1e6, "warmup_steps": 1, "steps": 4})
    cmd = train_cmd(diverged, tmp_path / "div", "run.grad_clip=0") + ["--summary", str(tmp_path / "div.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "div.json").read_text())
    assert result["status"] == "diverged" and result["final_val_loss"] is None and result["model"] is None
