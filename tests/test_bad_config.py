"""Bad input through the two front doors, `python -m models.train` and the Snakefile: every malformed config is
refused with a message naming the key, exit code non-zero, no traceback, nothing written. And good input is read
the way people write it (`3e-3`, `1e-20`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.config import load_run_config

REPO = Path(__file__).resolve().parent.parent
BASE = {
    "scale": "tiny",
    "arch": "mhc",
    "train": {"steps": 2, "batch_size": 4, "seq_len": 32},
    "data": {"shards_dir": "/nonexistent/shards"},  # never reached: the config is refused first
    "run": {"progress": False},
}

# (what is wrong, YAML file edits or None, --set overrides, text the error must contain)
TRAIN_CASES = [
    ("zero batch", None, ["train.batch_size=0"], "train.batch_size must be >= 1"),
    ("negative learning rate", None, ["train.lr=-3e-3"], "train.lr must be > 0"),
    ("zero learning rate", None, ["train.lr=0"], "train.lr must be > 0"),
    ("zero steps", None, ["train.steps=0"], "train.steps must be >= 1"),
    ("negative sequence length", None, ["train.seq_len=-4"], "train.seq_len must be >= 1"),
    ("negative warm-up", None, ["train.warmup_steps=-1"], "train.warmup_steps must be >= 0"),
    ("beta of 1.5", None, ["train.betas=[0.9, 1.5]"], "train.betas must be < 1"),
    ("unpaired decay", None, ["train.decay_at=[0.8]"], "train.decay_at"),
    ("learning rate not a number", None, ["train.lr=fast"], "train.lr: expected a number"),
    ("zero width", None, ["model.dim=0"], "model.dim must be >= 1"),
    ("negative depth", None, ["model.n_layers=-2"], "model.n_layers must be >= 1"),
    ("odd rotary width", None, ["model.attention.qk_rope_dim=3"], "qk_rope_dim must be even"),
    ("zero streams", None, ["model.connection.n=0"], "model.connection.n must be >= 1"),
    ("zero Sinkhorn iterations", None, ["model.connection.sinkhorn_iters=0"], "sinkhorn_iters must be >= 1"),
    ("HC field under mHC", None, ["model.connection.hc_tanh=true"], "hc_tanh applies to arch 'hc' only"),
    ("RMT rank not dividing the width", None, ["arch=rmt", "model.connection.rmt_rank=3"], "rmt_rank (3) must divide"),
    ("mHC field under the baseline", None, ["arch=baseline", "model.connection.bias_init=zero"], "bias_init"),
    ("unknown arch", None, ["arch=mhx"], "'mhx' is not one of"),
    ("unknown scale", None, ["scale=tiny-x"], "unknown scale 'tiny-x'"),
    ("misspelled key", None, ["train.lrr=1e-3"], "unknown config key 'train.lrr' (did you mean 'lr'?)"),
    ("unknown section", {"optimizer": {"lr": 1e-3}}, [], "unknown config key 'optimizer'"),
    ("negative seed", None, ["seed=-1"], "seed must be >= 0"),
    ("zero eval batches", None, ["run.eval_batches=0"], "run.eval_batches must be >= 1"),
    ("zero checkpoints kept", None, ["run.keep_checkpoints=0"], "run.keep_checkpoints must be >= 1"),
    ("unknown precision", None, ["run.precision=fp8"], "'fp8' is not one of"),
    ("micro-batch not dividing", None, ["run.micro_batch=3"], "run.micro_batch (3) must divide"),
    ("sequence longer than the model's", None, ["train.seq_len=4096"], "exceeds model.max_seq_len"),
    ("zero max_docs", None, ["data.max_docs=0"], "data.max_docs must be >= 1"),
    ("override without =", None, ["train.lr"], "is not of the form key=value"),
    ("section not a mapping", {"train": [1, 2]}, [], "train: expected a mapping"),
]


def _train_command(tmp: Path, edits: dict | None, overrides: list[str]) -> tuple[list[str], Path]:
    cfg = {**BASE, **(edits or {})}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "models.train", "--config", str(tmp / "c.yaml"), "--out", str(tmp / "run")]
    for item in overrides:
        cmd += ["--set", item]
    return cmd, tmp / "run"


def _run_together(jobs: dict[str, tuple[list[str], Path, Path]]) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """{name: (command, cwd, path to keep)} -> {name: (finished process, path)}: all started at once, each a fresh
    Python process that fails in its config, so the cases cost about one start-up per core."""
    procs = {
        name: (subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), path)
        for name, (cmd, cwd, path) in jobs.items()
    }
    results = {}
    for name, (proc, path) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), path)
    return results


@pytest.fixture(scope="module")
def train_results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case's CLI run."""
    jobs = {}
    for name, edits, overrides, _ in TRAIN_CASES:
        cmd, out = _train_command(tmp_path_factory.mktemp("bad"), edits, overrides)
        jobs[name] = (cmd, REPO, out)
    return _run_together(jobs)


@pytest.mark.parametrize("name, edits, overrides, message", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_training_cli_refuses_bad_config_naming_it(train_results, name, edits, overrides, message):
    proc, out = train_results[name]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()  # nothing written


def test_missing_and_unreadable_config_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "broken.yaml").write_text("train: {lr: [\n")
    for path, message in [
        (tmp_path / "missing.yaml", "does not exist"),
        (tmp_path / "list.yaml", "must hold a mapping"),
        (tmp_path / "broken.yaml", "is not valid YAML"),
    ]:
        cmd = [sys.executable, "-m", "models.train", "--config", str(path), "--out", str(tmp_path / "run")]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "run").exists()


def test_numbers_are_read_as_people_write_them(tmp_path):
    cfg = load_run_config(None, ["train.lr=3e-3", "train.eps=1e-20", "model.norm_eps=1E-6", "train.betas=[0.9, 0.95]"])
    assert cfg.train.lr == 0.003 and cfg.train.eps == 1e-20 and cfg.model.norm_eps == 1e-6
    assert cfg.train.betas == (0.9, 0.95)
    (tmp_path / "c.yaml").write_text("scale: tiny\ntrain:\n  lr: 3e-3\n  eps: 1e-20\n")
    cfg = load_run_config(str(tmp_path / "c.yaml"), [])
    assert cfg.train.lr == 0.003 and cfg.train.eps == 1e-20
    assert load_run_config(None, ["run.device=cuda:1", "data.root=1e3dir"]).data.root == "1e3dir"
    # a YAML 1.1 reader upstream (Snakemake's config) hands the number over as text: still a number
    assert load_run_config(None, ['train.lr="3e-3"']).train.lr == 0.003


# ---- the Snakefile ------------------------------------------------------------------------------------------------
def _edit(path: list[str], value):
    def apply(config: dict) -> None:
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    return apply


SNAKEFILE_CASES = [
    ("zero batch at a scale", _edit(["scales", "tiny", "train"], {"batch_size": 0}), "train.batch_size must be >= 1"),
    ("negative learning rate", _edit(["scales", "tiny", "train"], {"lr": -0.003}), "train.lr must be > 0"),
    ("HC field in an mHC variant", _edit(["variants", "mhc", "connection"], {"hc_tanh": False}), "hc_tanh"),
    ("unknown arch", _edit(["variants", "mhc", "arch"], "mhx"), "'mhx' is not one of"),
    ("zero eval batches for every run", _edit(["run"], {"eval_batches": 0}), "run.eval_batches must be >= 1"),
    ("zero streams", _edit(["variants", "hc", "connection"], {"n": 0}), "connection.n must be >= 1"),
]


@pytest.fixture(scope="module")
def snakefile_results(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    jobs = {}
    for name, edit, _ in SNAKEFILE_CASES:
        work = tmp_path_factory.mktemp("snake")
        config = yaml.safe_load(yaml.safe_dump(smoke))
        edit(config)
        (work / "bad.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work), "-n"]
        jobs[name] = ([*cmd, "--configfile", str(work / "bad.yaml")], work, work)
    return _run_together(jobs)


@pytest.mark.parametrize("name, edit, message", SNAKEFILE_CASES, ids=[c[0] for c in SNAKEFILE_CASES])
def test_snakefile_refuses_bad_config_at_parse_time_naming_it(snakefile_results, name, edit, message):
    proc, work = snakefile_results[name]
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    assert message in output, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    assert not (work / "results").exists()  # nothing written


def test_snakefile_takes_a_learning_rate_written_3e_3(tmp_path):
    """Snakemake reads configs as YAML 1.1, where `lr: 3e-3` is the text '3e-3'; the plan and the jobs take it."""
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["scales"]["tiny"]["train"]["lr"] = "3e-3"  # what a YAML 1.1 reader makes of `lr: 3e-3`
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n"]
    cmd += ["--configfile", str(tmp_path / "c.yaml")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
