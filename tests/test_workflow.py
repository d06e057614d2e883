"""The Snakemake workflow: the experiment plan, config validation, lint, the paper tier's dry run, and (slow) the
smoke tier end to end, its no-op rerun, figure rebuilds and resuming a killed training job."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from analysis.artifacts import PAPER_FIGURES, PAPER_TABLES
from analysis.plan import build_plan, train_overrides

from .conftest import needs_corpus

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def snakemake(workdir: Path, *args: str, configfile: Path | str = "config/config.yaml", timeout: int = 600):
    configfile = Path(configfile) if Path(configfile).is_absolute() else REPO / configfile
    cmd = [*SNAKEMAKE, "--directory", str(workdir), *args, "--configfile", str(configfile)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)


# ---- the plan -----------------------------------------------------------------------------------------------------
def test_default_tier_plan_trains_each_run_once_with_all_its_roles():
    plan = build_plan(load("config.yaml"))
    runs = plan["runs"]
    # main 5 variants x 8 seeds; init ablation +3 variants x 2; LR sweep +2 multipliers x 3 variants x 3 seeds;
    # Table 1 + hc-res, hc-res-pre x 2; compute scaling + 2 scales x 2 variants x 2 seeds; beyond the paper: the
    # depth sweep + 6 variants x 4 depths x 2 seeds less the 6 main runs at cpu-dense-d8, the stress test + 6 variants
    # x 2 multipliers x 2 seeds less the 12 LR-sweep runs of baseline / HC / mHC
    assert len(runs) == 40 + 6 + 18 + 4 + 8 + (48 - 6) + (24 - 12)
    mhc0 = runs["cpu-dense-d8/mhc/seed0"]
    assert set(mhc0["roles"]) == {
        "main", "init_ablation", "lr_sweep", "compute_scaling", "token_scaling", "evaluation", "mappings", "depth_sweep"
    }  # fmt: skip
    assert runs["cpu-dense-d8/hc/seed0"]["roles"] == [
        "main", "lr_sweep", "ablation", "evaluation", "mappings", "depth_sweep"
    ]  # fmt: skip
    assert mhc0["dir"] == "results/cpu/runs/cpu-dense-d8/mhc/seed0"
    rows = {r["variant"]: (r["res"], r["pre"], r["post"]) for r in plan["ablation"]["rows"]}
    assert rows == {
        "baseline": (False, False, False),
        "hc-res": (True, False, False),
        "hc-res-pre": (True, True, False),
        "hc": (True, True, True),
    }
    # the LR sweep's runs are derived variants at m x the variant's rate; 1x is the plain variant
    assert plan["variants"]["hc-lr10x"]["train"]["lr"] == pytest.approx(10 * 3e-3)
    assert "cpu-dense-d8/mhc-lr3x/seed1" in runs and "cpu-dense-d8/mhc-lr1x/seed0" not in runs


def test_paper_tier_plan_is_the_papers_experiment_set():
    runs = build_plan(load("paper.yaml"))["runs"]
    expected = {f"paper-{s}/{v}/seed0" for s in ("3b", "9b", "27b") for v in ("baseline", "hc", "mhc")}
    expected |= {"paper-3b-1t/baseline/seed0", "paper-3b-1t/mhc/seed0"}
    expected |= {"paper-3b/hc-res/seed0", "paper-3b/hc-res-pre/seed0"}
    assert set(runs) == expected


def test_train_overrides_keep_their_types():
    from models.config import parse_value

    config = load("config.yaml")
    config["scales"]["cpu-dense-d8"]["train"] = {"lr": 3e-3, "betas": [0.9, 0.95]}
    plan = build_plan(config)
    run = plan["runs"]["cpu-dense-d8/hc-res/seed0"]
    items = dict(item.split("=", 1) for item in train_overrides(config, run, "results/data/x"))
    parsed = {key: parse_value(value) for key, value in items.items()}
    assert parsed["train.lr"] == 0.003 and isinstance(parsed["train.lr"], float)
    assert parsed["train.betas"] == [0.9, 0.95]
    assert parsed["model.connection.learn_pre"] is False and parsed["model.connection.learn_post"] is False
    assert parsed["arch"] == "hc" and parsed["seed"] == 0 and parsed["data.shards_dir"] == "results/data/x"
    assert parsed["run.keep_checkpoints"] == 5 and parsed["run.ckpt_interval"] == 400 // 5
    # a variant's own train overrides: AdamW eps 1e-8 stays a number (YAML 1.1 would read "1e-08" as a string)
    eps8 = dict(
        item.split("=", 1) for item in train_overrides(config, plan["runs"]["cpu-dense-d8/mhc-eps8/seed0"], "x")
    )
    assert parse_value(eps8["train.eps"]) == 1e-8
    swept = dict(
        item.split("=", 1) for item in train_overrides(config, plan["runs"]["cpu-dense-d8/mhc-lr3x/seed0"], "x")
    )
    assert parse_value(swept["train.lr"]) == pytest.approx(9e-3) and parse_value(swept["arch"]) == "mhc"


def test_plan_rejects_a_misspelled_model_override_naming_it():
    config = load("config.yaml")
    config["scales"]["cpu-dense-d8"]["model"] = {"n_layer": 4}
    with pytest.raises(ValueError, match="n_layer"):
        build_plan(config)
    config = load("config.yaml")
    config["variants"]["hc-res"]["connection"] = {"learn_prex": False}
    with pytest.raises(ValueError, match="learn_prex"):
        build_plan(config)


# ---- the Snakefile ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda c: c.__setitem__("seedz", [0]), "seedz"),
        (lambda c: c["main"].__setitem__("seeds_", [0]), "seeds_"),
        (lambda c: c["scales"]["cpu-dense-d8"].__setitem__("chekpoints", 3), "chekpoints"),
        (lambda c: c["scales"]["cpu-dense-d8"].__setitem__("model", {"dimm": 32}), "dimm"),
        (lambda c: c["main"].__setitem__("scale", "cpu-d9"), "cpu-d9"),
    ],
)
def test_a_misspelled_config_key_fails_at_parse_time_naming_it(tmp_path, edit, named):
    config = load("config.yaml")
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", configfile=path, timeout=120)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()  # nothing written


def test_paper_dry_run_plans_the_paper_runs_in_seconds(tmp_path):
    start = time.monotonic()
    result = snakemake(tmp_path, "-n", "-p", configfile="config/paper.yaml", timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for scale in ("paper-3b", "paper-9b", "paper-27b"):
        for variant in ("baseline", "hc", "mhc"):
            assert f"--out results/paper/runs/{scale}/{variant}/seed0 " in out
    for key in ("paper-3b-1t/baseline/seed0", "paper-3b-1t/mhc/seed0", "paper-3b/hc-res/seed0"):
        assert f"--out results/paper/runs/{key} " in out
    assert "torchrun --standalone --nproc-per-node 8 -m models.train" in out
    assert elapsed < 60, f"dry run took {elapsed:.1f} s"


def test_lint_reports_nothing(tmp_path):
    result = snakemake(tmp_path, "--lint", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Lints for" not in result.stdout + result.stderr


# ---- end to end (slow) --------------------------------------------------------------------------------------------
FIGURES = PAPER_FIGURES  # analysis/artifacts.py
TABLES = PAPER_TABLES


@pytest.mark.slow
@needs_corpus
def test_smoke_tier_runs_every_rule_then_reruns_nothing_and_rebuilds_figures_alone(tmp_path):
    result = snakemake(tmp_path, "--cores", "2", configfile="config/smoke.yaml", timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    log = result.stdout + result.stderr
    for rule in ("prepare_data", "mlflow_init", "train", "evaluate", "checkpoint_losses", "mappings", "measure",
                 "plan", "index", "tables", "figures", "report"):  # fmt: skip
        assert f"rule {rule}:" in log or f"localrule {rule}:" in log, f"rule {rule} did not run"

    root = tmp_path / "results" / "smoke"
    index = json.loads((root / "analysis" / "runs.json").read_text())
    finals = [tmp_path / run["dir"] / "final.json" for run in index["runs"].values()]
    assert finals and all(f.is_file() for f in finals)
    assert all(run["status"] == "completed" for run in index["runs"].values())
    newest_run = max(f.stat().st_mtime for f in finals)
    for name in FIGURES:
        for ext in ("png", "pdf"):
            figure = root / "figures" / f"{name}.{ext}"
            assert figure.stat().st_size > 1000, figure
            # built by this DAG from these runs: after every run ended and after the index that lists them
            assert figure.stat().st_mtime >= newest_run
            assert figure.stat().st_mtime >= (root / "analysis" / "runs.json").stat().st_mtime
    for name in TABLES:
        assert (root / "tables" / f"{name}.csv").stat().st_size > 0
        assert "paper" in (root / "tables" / f"{name}.md").read_text().lower()
    assert "verdict" in (root / "report.md").read_text().lower()

    again = snakemake(tmp_path, "-n", configfile="config/smoke.yaml", timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]

    # editing one run's settings retrains that run only (and what depends on it)
    edited = load("smoke.yaml")
    edited["variants"]["hc-res"]["connection"]["hc_tanh"] = False
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))  # same key order: same args
    plan = snakemake(tmp_path, "-n", configfile=tmp_path / "edited.yaml", timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert plan.stdout.count("rule train:") == 1 and "variant=hc-res," in plan.stdout, plan.stdout[-3000:]
    assert "rule evaluate:" not in plan.stdout

    # deleting one run's folder retrains that run only, then rebuilds what reads it
    run = tmp_path / index["runs"]["cpu-d4/baseline/seed0"]["dir"]
    run.rename(tmp_path / "moved")
    plan = snakemake(tmp_path, "-n", configfile="config/smoke.yaml", timeout=300)
    assert plan.stdout.count("rule train:") == 1 and "scale=cpu-d4, variant=baseline, seed=0" in plan.stdout
    assert "rule evaluate:" not in plan.stdout and "rule measure:" not in plan.stdout
    (tmp_path / "moved").rename(run)

    shutil.rmtree(root / "figures")
    plan = snakemake(tmp_path, "-n", configfile="config/smoke.yaml", timeout=300)
    planned = plan.stdout
    assert "rule figures:" in planned or "localrule figures:" in planned
    for rule in ("train", "evaluate", "index", "tables", "measure"):
        assert f"rule {rule}:" not in planned, f"deleting the figures would rerun {rule}"
    start = time.monotonic()
    rebuilt = snakemake(tmp_path, "--cores", "2", configfile="config/smoke.yaml", timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert all((root / "figures" / f"{name}.png").stat().st_size > 1000 for name in FIGURES)
    print(f"figures rebuilt in {time.monotonic() - start:.1f} s")

    report = snakemake(tmp_path, "--report", "report.html", configfile="config/smoke.yaml", timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "fig3_hc_amax" in html and "Amax Gain Magnitude" in html


@pytest.mark.slow
@needs_corpus
def test_killing_snakemake_during_training_then_rerunning_resumes_from_the_checkpoint(tmp_path):
    config = copy.deepcopy(load("smoke.yaml"))
    config["tier"] = "killtest"
    config["tracking"]["enabled"] = False
    del config["beyond_paper"]  # its depth sweep needs tiny's tokens to equal tiny-d4's, which this test changes
    # long enough that the kill lands mid-run on a fast machine: checkpoints every 100 steps, killed after 2
    config["scales"]["tiny"].update(train={"steps": 1000, "warmup_steps": 2, "batch_size": 8, "seq_len": 64},
                                    checkpoints=10)  # fmt: skip
    config["run"].update(eval_interval=250, diag_interval=250)
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run = tmp_path / "results" / "killtest" / "runs" / "tiny" / "mhc" / "seed0"
    target = str(run.relative_to(tmp_path) / "final.json")
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), target, "--cores", "1", "--configfile", str(path)]
    # SIGINT restored to its default in Snakemake: a shell starts background jobs with SIGINT ignored, and an
    # ignored signal stays ignored across exec, so under `cmd &` the Ctrl-C below would never reach the run.
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # wait for a checkpoint past the first one
            ckpts = sorted((run / "checkpoints").glob("step_*")) if (run / "checkpoints").is_dir() else []
            if len(ckpts) >= 2:
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint within 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: Snakemake and its job get SIGINT
        proc.wait(timeout=120)
    assert not (run / "final.json").exists()
    killed_at = max(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*"))
    assert 0 < killed_at < 1000

    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    log = (tmp_path / "results" / "killtest" / "logs" / "train" / "tiny" / "mhc" / "seed0.log").read_text()
    resumed = [line for line in log.splitlines() if "resuming" in line]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1]) >= killed_at  # the step counter continues from there
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if s > 0]
    assert sorted(set(train_steps)) == list(range(1, 1001)), "every step logged"
    assert json.loads((run / "final.json").read_text())["status"] == "completed"


def test_evaluating_a_diverged_run_writes_a_skipped_result_instead_of_failing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"status": "diverged", "reason": "non-finite loss at step 7"}))
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "eval.run", "--checkpoint", str(run), "--skip-unfinished", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["results"] == {} and "non-finite loss at step 7" in result["mhc_skipped"]
    proc = subprocess.run(cmd[:-3] + ["--out", str(tmp_path / "e2.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "e2.json").exists()  # without the flag: an error, nothing written
