"""MLflow tracking (training/tracking.py): names, round trips, statuses, nesting, resume, the experiment-kind tag,
concurrent jobs, and that neither disabled nor failing tracking can stop a job.

MLflow is slow to import (~5 s) and a fresh SQLite store takes seconds to migrate, so the in-process tests share one
store per module (each test uses its own experiment) and only the concurrency tests pay for fresh ones.
"""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import needs_corpus
from training import tracking
from training.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, NullTracker, Tracker, init_store, make_tracker
from training.tracking import sanitize_metric_name as sanitize

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "_tracking_worker.py"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One initialised SQLite store for the module, in a directory that does not exist yet (init creates it)."""
    db = tmp_path_factory.mktemp("mlflow") / "nested" / "dir" / "mlflow.db"
    uri = f"sqlite:///{db}"
    init_store(uri, "base")
    assert db.is_file()
    return uri


@pytest.fixture
def client(store: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store)


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _runs(client, experiment: str) -> list:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)


def _broken_uri(tmp_path: Path) -> str:
    """A SQLite URI that cannot work: its directory would have to live inside a regular file."""
    (tmp_path / "not_a_dir").write_text("")
    return f"sqlite:///{tmp_path / 'not_a_dir' / 'mlflow.db'}"


# ------------------------------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("train/loss", "train/loss"),  # valid names are unchanged
        ("a b.c-d_e/F9", "a b.c-d_e/F9"),
        ("acc,none", "acc__none"),
        ("gsm8k_cot/exact_match,strict-match", "gsm8k_cot/exact_match__strict-match"),
        ("loss:val", "loss_val"),
        ("ppl(x)=[1]", "ppl_x___1_"),
        ("naïve", "na_ve"),
        ("/a//b/", "a/b"),
        ("a/./b", "a/_/b"),
        ("a/../b", "a/__/b"),
        ("..x", "__x"),
        (".hidden", ".hidden"),
        ("...", "___"),
    ],
)
def test_sanitize_examples(raw: str, expected: str) -> None:
    assert sanitize(raw) == expected
    assert sanitize(expected) == expected  # idempotent


def test_sanitize_long_names_stay_distinct_within_mlflows_limit_and_bad_input_raises() -> None:
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    sa, sb = sanitize("x" * 300 + "a"), sanitize("x" * 300 + "b")
    assert len(sa) == len(sb) == MAX_ENTITY_KEY_LENGTH and sa != sb
    assert sanitize("y" * MAX_ENTITY_KEY_LENGTH) == "y" * MAX_ENTITY_KEY_LENGTH  # at the limit: unchanged
    for bad in ["", "/", "///"]:
        with pytest.raises(ValueError, match="empty"):
            sanitize(bad)
    with pytest.raises(TypeError):
        sanitize(3)  # type: ignore[arg-type]


def test_sanitize_output_passes_mlflow_validation() -> None:
    """Random keys over an alphabet rich in troublemakers all become names MLflow itself accepts."""
    from mlflow.utils.validation import _validate_metric_name

    rng = random.Random(0)
    alphabet = "ab/.,:- _()[]=é\t\n%*?\\"
    for _ in range(3000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        try:
            name = sanitize(raw)
        except ValueError:
            assert raw.replace("/", "") == ""  # only all-slash names have nothing left
            continue
        _validate_metric_name(name)
        assert sanitize(name) == name and "," not in name


def test_flatten_params() -> None:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    flat = tracking.flatten_params({"model": {"n_layer": 4, "mhc": {"n": 4}}, "lr": 1e-3, "empty": {}, "x,y": None})
    assert flat == {"model.n_layer": "4", "model.mhc.n": "4", "lr": "0.001", "empty": "{}", "x__y": "None"}
    assert len(tracking.flatten_params({"k": "v" * 10_000})["k"]) == MAX_PARAM_VAL_LENGTH


# ------------------------------------------------------------------------------------------------------------------
# one run: params, tags, metrics, artifacts, statuses


def test_run_round_trip(store: str, client, tmp_path: Path) -> None:
    params = {"model": {"n_layer": 2, "d_model": 64}, "optim": {"lr": 3e-4}, "note": "n" * 7000}
    tags = {"arch": "mhc", "seed": 1, "config_sha256": "f" * 64}
    tracker = Tracker(store, "round_trip", "mhc-tiny-s1", params, tags)
    steps = 25
    for step in range(steps):
        values = {"train/loss": 10.0 - step / 10, "acc,none": torch.tensor(step / 100), "big": 10**400}
        values |= {"bad/nan": math.nan, "bad/inf": math.inf, "bad/str": "x", "bad/bool": True}  # all skipped
        tracker.log_metrics(values, step)
        if step % 10 == 9:
            tracker.flush()
    assert tracker.skipped == 5 * steps
    (tmp_path / "config.yaml").write_text("model: {n_layer: 2}\n")
    tracker.log_artifact(tmp_path / "config.yaml")
    tracker.finish("completed")  # flushes steps 20..24
    tracker.finish("completed")  # a second call does nothing

    run = client.get_run(tracker.run_id)
    assert (run.info.status, run.info.run_name, run.data.tags["status"]) == ("FINISHED", "mhc-tiny-s1", "completed")
    assert run.data.params["model.n_layer"] == "2" and run.data.params["optim.lr"] == "0.0003"
    assert len(run.data.params["note"]) == 6000
    assert all(run.data.tags[k] == str(v) for k, v in tags.items())
    assert set(run.data.metrics) == {"train/loss", "acc__none"}
    loss, acc = _history(client, tracker.run_id, "train/loss"), _history(client, tracker.run_id, "acc__none")
    assert loss == pytest.approx({s: 10.0 - s / 10 for s in range(steps)})
    assert acc == pytest.approx({s: s / 100 for s in range(steps)})
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["config.yaml"]
    assert run.info.artifact_uri.startswith(tracking.default_artifact_location(store))  # beside the DB, not ./mlruns


@pytest.mark.parametrize(("status", "mlflow_status"), [("diverged", "FINISHED"), ("failed", "FAILED")])
def test_finish_status_mapping(store: str, client, status: str, mlflow_status: str) -> None:
    tracker = Tracker(store, "statuses", f"run-{status}", {}, {"arch": "hc"})
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker.finish(status)
    tracker.finish("completed")  # once finished, the status stays
    run = client.get_run(tracker.run_id)
    assert (run.info.status, run.data.tags["status"]) == (mlflow_status, status)
    assert _history(client, tracker.run_id, "loss") == {0: 1.0}
    with pytest.raises(ValueError, match="unknown run status 'crashed'"):
        Tracker(store, "statuses", "bad", {}, {}).finish("crashed")


def test_metrics_reach_the_store_while_the_run_trains(store: str, client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI follows a run live: buffered values are written once FLUSH_EVERY_S has passed, without a flush."""
    monkeypatch.setattr(tracking, "FLUSH_EVERY_S", 0.2)
    tracker = Tracker(store, "live", "live", {}, {})
    tracker.log_metrics({"loss": 1.0}, 0)
    assert _history(client, tracker.run_id, "loss") == {}  # buffered
    time.sleep(0.3)
    tracker.log_metrics({"loss": 0.5}, 1)
    assert _history(client, tracker.run_id, "loss") == {0: 1.0, 1: 0.5}
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    tracker.finish("completed")


def test_two_trackers_in_one_process_do_not_interfere(store: str, client) -> None:
    a = Tracker(store, "two_in_one", "a", {"which": "a"}, {})
    b = Tracker(store, "two_in_one_other", "b", {"which": "b"}, {})
    for step in range(5):
        a.log_metrics({"loss": float(step)}, step)
        b.log_metrics({"loss": float(100 + step)}, step)
    b.finish("failed")
    a.finish("completed")
    assert _history(client, a.run_id, "loss") == {s: float(s) for s in range(5)}
    assert _history(client, b.run_id, "loss") == {s: float(100 + s) for s in range(5)}
    assert [client.get_run(r.run_id).info.status for r in (a, b)] == ["FINISHED", "FAILED"]


def test_flush_waits_out_a_real_sqlite_lock(store: str, client) -> None:
    """Another writer holds an exclusive lock for a second; MLflow's SQLite busy timeout waits it out."""
    tracker = Tracker(store, "locks", "real-lock", {}, {})
    for step in range(20):
        tracker.log_metrics({"loss": float(step)}, step)
    locked = threading.Event()

    def hold_lock() -> None:
        con = sqlite3.connect(store[len("sqlite:///") :], timeout=30)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(1.0)
        con.rollback()
        con.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(30)
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a lock MLflow waits out is no failure
        tracker.flush()
    waited = time.monotonic() - t0
    holder.join()
    tracker.finish("completed")
    assert waited >= 0.3  # it really was blocked
    assert _history(client, tracker.run_id, "loss") == {s: float(s) for s in range(20)}


# ------------------------------------------------------------------------------------------------------------------
# tracking never stops a job


def test_a_store_failing_mid_run_warns_and_loses_nothing_once_back(
    store: str, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = Tracker(store, "failing", "mid-run", {}, {})
    real = {name: getattr(tracker._client, name) for name in ("log_batch", "set_tag", "set_terminated", "log_artifact")}

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    for name in real:
        monkeypatch.setattr(tracker._client, name, broken)
    for step in range(10):
        tracker.log_metrics({"loss": float(step)}, step)
    with pytest.warns(UserWarning, match=r"logging metrics failed .*database is locked.*going on"):
        tracker.flush()
    with pytest.warns(UserWarning, match="logging .*metrics.jsonl failed"):
        tracker.log_artifact(Path("metrics.jsonl"))
    for name, method in real.items():
        monkeypatch.setattr(tracker._client, name, method)
    tracker.log_metrics({"loss": 10.0}, 10)
    tracker.finish("completed")  # the values kept from the failed flush land now
    assert _history(client, tracker.run_id, "loss") == {s: float(s) for s in range(11)}
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_an_unusable_store_at_the_start_gives_a_warning_and_a_tracker_that_does_nothing(tmp_path: Path) -> None:
    uri = _broken_uri(tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - whatever MLflow raises
        Tracker(uri, "e", "r")
    with pytest.warns(UserWarning, match="MLflow tracking disabled for this job"):
        tracker = make_tracker(True, tracking_uri=uri, experiment="e", run_name="r", params={"a": 1}, tags={})
    assert isinstance(tracker, NullTracker) and tracker.run_id == ""
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker.flush()
    tracker.log_artifact(tmp_path / "missing")
    tracker.finish("failed")


@needs_corpus
def test_training_with_an_unusable_tracking_store_completes(tmp_path: Path, shards: Path) -> None:
    """End to end: the training CLI pointed at a store that cannot open warns and trains to the end."""
    config = tmp_path / "c.yaml"
    cfg = {
        "scale": "tiny",
        "arch": "mhc",
        "train": {"steps": 4, "batch_size": 2, "seq_len": 16, "warmup_steps": 1},
        "data": {"shards_dir": str(shards)},
        "run": {"eval_interval": 4, "diag_interval": 0, "ckpt_interval": 2, "progress": False, "threads": 1},
    }
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "models.train", "--config", str(config), "--out", str(out)]
    proc = subprocess.run(
        cmd + ["--tracking-uri", _broken_uri(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MLflow tracking disabled for this job" in proc.stderr
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 5  # steps 0..4: the truth is all there
    id_file = out / "mlflow_run_id"  # no run id: a resumed job starts a new run, an evaluation logs none
    assert not id_file.exists() or id_file.read_text().strip() == ""


def test_disabled_tracking_writes_nothing_and_never_imports_mlflow(tmp_path: Path) -> None:
    code = f"""
import sys
from training.tracking import make_tracker
t = make_tracker(False, tracking_uri="sqlite:///{tmp_path}/mlflow.db", experiment="e", run_name="r", params={{}})
t.log_metrics({{"loss": 1.0, "acc,none": float("nan")}}, 0)
t.flush(); t.log_artifact("{tmp_path}/x"); t.finish("diverged")
assert t.run_id is None
try:
    t.finish("done")
except ValueError:
    pass
else:
    raise SystemExit("a bad status passed")
assert "mlflow" not in sys.modules, "imported mlflow"
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# concurrent jobs


def _spawn_workers(uri: str, experiment: str, n: int, steps: int, flush_every: int, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    procs = []
    for i in range(n):
        cmd = [sys.executable, str(WORKER), uri, experiment, f"worker-{i}", str(steps), str(flush_every)]
        cmd += [str(tmp_path / f"ready-{i}"), str(tmp_path / "go")]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def _release_and_collect(procs, n: int, tmp_path: Path, timeout: float = 240) -> list[str]:
    deadline = time.monotonic() + timeout
    while not all((tmp_path / f"ready-{i}").exists() for i in range(n)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        assert time.monotonic() < deadline, "workers never became ready"
        time.sleep(0.02)
    (tmp_path / "go").touch()  # all of them start their run at the same moment
    run_ids = []
    for p in procs:
        out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert p.returncode == 0, err.decode()[-3000:]  # a job never dies of tracking
        run_ids.append(out.decode().splitlines()[-1].strip())
    return run_ids


def _check_runs(uri: str, experiment: str, run_ids: list[str], steps: int) -> None:
    """Every run in ``run_ids`` holds every value of its worker's three curves, and nothing else is there."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    assert len([e for e in client.search_experiments() if e.name == experiment]) == 1
    runs = _runs(client, experiment)
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for run in runs:
        worker = int(run.data.params["worker"])
        assert run.info.run_name == f"worker-{worker}" and run.info.status == "FINISHED"
        assert run.data.params["model.n_layer"] == "2"
        expected = {
            "train/loss": {s: worker + s / 1000 for s in range(steps)},
            "train/lr": {s: s * 1e-4 for s in range(steps)},
            "acc__none": {s: float(worker * 1000 + s) for s in range(steps)},
        }
        for key, curve in expected.items():
            assert _history(client, run.info.run_id, key) == pytest.approx(curve), (run.info.run_name, key)


def test_four_concurrent_jobs_on_one_sqlite_db_lose_nothing(tmp_path: Path) -> None:
    """init once on a fresh DB (through the command line, while the workers import MLflow), then 4 processes log
    205 steps x 3 metrics at the same time, flushing every 10 steps: 4 runs, 2460 values, all there."""
    n, steps = 4, 205  # the last 5 steps reach the store through finish()
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    t0 = time.monotonic()
    procs = _spawn_workers(uri, "concurrency", n, steps, 10, tmp_path)
    out_json = tmp_path / "results" / "experiment.json"
    init_cmd = [sys.executable, "-m", "training.tracking", "init", "--uri", uri, "--experiment", "concurrency"]
    init = subprocess.run(init_cmd + ["--out", out_json], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert init.returncode == 0, init.stderr[-3000:]
    info = json.loads(out_json.read_text())
    assert info == {
        "enabled": True,
        "tracking_uri": uri,
        "experiments": {"concurrency": info["experiments"]["concurrency"]},
    }
    assert init.stdout.strip().endswith(f"concurrency\t{info['experiments']['concurrency']}")
    run_ids = _release_and_collect(procs, n, tmp_path)
    assert all(run_ids), "a worker fell back to tracking nothing"
    _check_runs(uri, "concurrency", run_ids, steps)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # nothing in the cwd
    print(f"\nconcurrency test: {time.monotonic() - t0:.1f} s")


@pytest.mark.slow
def test_four_concurrent_jobs_without_init_all_finish(tmp_path: Path) -> None:
    """Without init, 4 processes race on a fresh DB's migration and most of them lose it (measured: 3 or 4 of 4);
    each loser warns and trains on untracked, none dies, and the runs that did start are complete."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_ids = _release_and_collect(_spawn_workers(uri, "racy", 4, 50, 10, tmp_path), 4, tmp_path)
    started = [r for r in run_ids if r]
    if started:
        _check_runs(uri, "racy", started, 50)


# ------------------------------------------------------------------------------------------------------------------
# parent / child, resume


def test_eval_run_is_child_of_training_run(store: str, client) -> None:
    train = Tracker(store, "nesting", "train", {}, {"stage": "train"})
    train.finish("completed")
    evaluation = Tracker(store, "nesting", "eval-gsm8k", {}, {"stage": "eval"}, parent_run_id=train.run_id)
    evaluation.log_metrics({"gsm8k/exact_match,strict-match": 0.25}, 0)
    evaluation.finish("completed")
    run = client.get_run(evaluation.run_id)
    assert run.data.tags["mlflow.parentRunId"] == train.run_id and run.data.tags["stage"] == "eval"
    assert "mlflow.parentRunId" not in client.get_run(train.run_id).data.tags
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{train.run_id}'")
    assert [c.info.run_id for c in children] == [evaluation.run_id]
    assert _history(client, evaluation.run_id, "gsm8k/exact_match__strict-match") == {0: 0.25}


def test_resume_continues_the_same_run(store: str, client) -> None:
    params = {"model": {"n_layer": 2}}
    first = Tracker(store, "resume", "job", params, {"arch": "mhc"})
    for step in range(5):
        first.log_metrics({"loss": float(step)}, step)
    first.finish("failed")  # the job crashed; Snakemake retries it
    second = Tracker(store, "resume", "job", {**params, "resumed_from": 5}, {}, resume_run_id=first.run_id)
    assert second.run_id == first.run_id
    assert client.get_run(second.run_id).info.status == "RUNNING"
    assert client.get_run(second.run_id).data.tags["status"] == "running"
    for step in range(5, 10):
        second.log_metrics({"loss": float(step)}, step)
    second.finish("completed")
    third = Tracker(store, "resume", "job", {"model": {"n_layer": 3}}, {}, resume_run_id=first.run_id)
    third.finish("completed")  # a changed param keeps its first value (MLflow params are immutable)

    assert len(_runs(client, "resume")) == 1
    run = client.get_run(first.run_id)
    assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "completed")
    assert run.data.params == {"model.n_layer": "2", "resumed_from": "5"}
    assert _history(client, first.run_id, "loss") == {s: float(s) for s in range(10)}

    with pytest.warns(UserWarning, match="cannot resume run missing"):
        fresh = Tracker(store, "resume", "job", params, {}, resume_run_id="missing")
    assert fresh.run_id != first.run_id and client.get_run(fresh.run_id).data.params == {"model.n_layer": "2"}
    fresh.finish("completed")


# ------------------------------------------------------------------------------------------------------------------
# init, the experiment kind, the command line


def test_init_store_is_idempotent_and_tags_the_experiment_kind(store: str, client) -> None:
    first = init_store(store, "idempotent")
    assert init_store(store, "idempotent") == first
    exp = client.get_experiment(first)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert exp.artifact_location == tracking.default_artifact_location(store)
    client.delete_experiment(first)
    assert init_store(store, "idempotent") == first  # a deleted experiment is restored, not shadowed
    assert client.get_experiment(first).lifecycle_stage == "active"

    untagged = client.create_experiment("made_elsewhere")  # e.g. by an older version or by hand
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(untagged).tags
    assert init_store(store, "made_elsewhere") == untagged
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_an_experiment_created_lazily_by_a_job_gets_the_kind_too(store: str, client) -> None:
    tracker = Tracker(store, "lazy", "r", {}, {})
    tracker.finish("completed")
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_cli_bad_uri_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tracking.main(["init", "--uri", "nosuchscheme://x", "--experiment", "e", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.startswith("error: could not initialise MLflow store 'nosuchscheme://x'")
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli_disabled_creates_no_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    assert tracking.main(["init", "--uri", uri, "--experiment", "e", "--disabled", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o").read_text()) == {"enabled": False, "tracking_uri": uri, "experiments": {}}
    assert not (tmp_path / "db").exists()
