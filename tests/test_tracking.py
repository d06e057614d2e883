"""MLflow tracking (training/tracking.py): names, round trips, statuses, resume, nesting, locks, concurrent jobs.

MLflow is slow to import (~5 s) and a fresh SQLite store takes seconds to migrate, so the in-process tests share one
store per module (each test uses its own experiment) and only the concurrency test pays for a fresh one.
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
from pathlib import Path

import pytest
import torch

from training import tracking
from training.tracking import (
    NullTracker,
    Tracker,
    TrackingError,
    init_store,
    make_tracker,
    sanitize_metric_name,
)

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "_tracking_worker.py"


# ------------------------------------------------------------------------------------------------------------------
# fixtures


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
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


# ------------------------------------------------------------------------------------------------------------------
# 1. names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("train/loss", "train/loss"),  # valid names are unchanged
        ("a b.c-d_e/F9", "a b.c-d_e/F9"),
        ("acc,none", "acc__none"),
        ("exact_match,strict-match", "exact_match__strict-match"),
        ("gsm8k_cot/exact_match,strict-match", "gsm8k_cot/exact_match__strict-match"),
        ("acc_stderr,none", "acc_stderr__none"),
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
    assert sanitize_metric_name(raw) == expected
    assert sanitize_metric_name(expected) == expected  # idempotent


def test_sanitize_long_names_stay_distinct_and_bad_input_raises() -> None:
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    sa, sb = sanitize_metric_name(a), sanitize_metric_name(b)
    assert len(sa) == len(sb) == tracking.MAX_KEY_LENGTH
    assert sa != sb
    assert sanitize_metric_name(a) == sa  # deterministic
    assert sanitize_metric_name("y" * 250) == "y" * 250  # at the limit: unchanged
    for bad in ["", "/", "///"]:
        with pytest.raises(ValueError, match="empty"):
            sanitize_metric_name(bad)
    with pytest.raises(TypeError):
        sanitize_metric_name(3)  # type: ignore[arg-type]


def test_sanitize_output_passes_mlflow_validation() -> None:
    """Random keys over an alphabet rich in troublemakers all become names MLflow itself accepts."""
    from mlflow.utils.validation import _validate_metric_name

    rng = random.Random(0)
    alphabet = "ab/.,:- _()[]=é\t\n%*?\\"
    for _ in range(3000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        try:
            name = sanitize_metric_name(raw)
        except ValueError:
            assert raw.replace("/", "") == ""  # only all-slash names have nothing left
            continue
        _validate_metric_name(name)
        assert sanitize_metric_name(raw) == name
        assert sanitize_metric_name(name) == name
        assert "," not in name


def test_limits_match_installed_mlflow() -> None:
    from mlflow.utils import validation as v

    assert tracking.MAX_KEY_LENGTH == v.MAX_ENTITY_KEY_LENGTH
    assert tracking.MAX_PARAM_VALUE_LENGTH == v.MAX_PARAM_VAL_LENGTH
    assert tracking.MAX_TAG_VALUE_LENGTH == v.MAX_TAG_VAL_LENGTH
    assert tracking.MAX_METRICS_PER_BATCH == v.MAX_METRICS_PER_BATCH
    assert tracking.MAX_PARAMS_TAGS_PER_BATCH == v.MAX_PARAMS_TAGS_PER_BATCH


def test_flatten_params() -> None:
    flat = tracking.flatten_params({"model": {"n_layer": 4, "mhc": {"n": 4}}, "lr": 1e-3, "empty": {}, "x,y": None})
    assert flat == {"model.n_layer": "4", "model.mhc.n": "4", "lr": "0.001", "empty": "{}", "x__y": "None"}
    assert len(tracking.flatten_params({"k": "v" * 10_000})["k"]) == tracking.MAX_PARAM_VALUE_LENGTH


# ------------------------------------------------------------------------------------------------------------------
# 2. one run: params, tags, metrics, artifacts, statuses


def test_run_round_trip(store: str, client, tmp_path: Path) -> None:
    params = {"model": {"n_layer": 2, "d_model": 64}, "optim": {"lr": 3e-4}, "note": "n" * 7000}
    tags = {"arch": "mhc", "scale": "tiny", "seed": 1, "git_sha": "abc123", "config_sha256": "f" * 64}
    tracker = Tracker(store, "round_trip", "mhc-tiny-s1", params, tags)
    steps = 25
    for step in range(steps):
        tracker.log_metrics(
            {
                "train/loss": 10.0 - step / 10,
                "acc,none": torch.tensor(step / 100),  # 0-d tensor -> float; comma key sanitized
                "bad/nan": float("nan"),  # skipped
                "bad/inf": math.inf,  # skipped
                "bad/str": "x",  # skipped
                "bad/bool": True,  # skipped
            },
            step,
        )
        if step % 10 == 9:
            tracker.flush()
    assert tracker.skipped == 4 * steps
    (tmp_path / "config.yaml").write_text("model: {n_layer: 2}\n")
    tracker.log_artifact(tmp_path / "config.yaml")
    with pytest.raises(FileNotFoundError):
        tracker.log_artifact(tmp_path / "missing.txt")
    tracker.finish("completed")  # flushes steps 20..24
    tracker.finish("completed")  # idempotent

    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mhc-tiny-s1"
    assert run.data.params["model.n_layer"] == "2"
    assert run.data.params["optim.lr"] == "0.0003"
    assert len(run.data.params["note"]) == tracking.MAX_PARAM_VALUE_LENGTH
    for key, value in tags.items():
        assert run.data.tags[key] == str(value)
    assert run.data.tags["status"] == "completed"
    assert set(run.data.metrics) == {"train/loss", "acc__none"}

    loss = _history(client, tracker.run_id, "train/loss")
    acc = _history(client, tracker.run_id, "acc__none")
    assert sorted(loss) == list(range(steps)) and sorted(acc) == list(range(steps))
    for step in range(steps):
        assert loss[step] == pytest.approx(10.0 - step / 10)
        assert acc[step] == pytest.approx(step / 100)

    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["config.yaml"]
    # artifacts live beside the DB, not in the cwd's ./mlruns
    artifact_uri = run.info.artifact_uri
    assert artifact_uri.startswith(tracking.default_artifact_location(store))


@pytest.mark.parametrize(("status", "mlflow_status"), [("diverged", "FINISHED"), ("failed", "FAILED")])
def test_finish_status_mapping(store: str, client, status: str, mlflow_status: str) -> None:
    tracker = Tracker(store, "statuses", f"run-{status}", {}, {"arch": "hc"})
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker.finish(status)
    run = client.get_run(tracker.run_id)
    assert run.info.status == mlflow_status
    assert run.data.tags["status"] == status
    assert _history(client, tracker.run_id, "loss") == {0: 1.0}
    with pytest.raises(RuntimeError, match="already finished"):
        tracker.finish("completed")
    with pytest.raises(RuntimeError, match="already finished"):
        tracker.log_metrics({"loss": 2.0}, 1)


def test_bad_status_and_context_manager(store: str, client) -> None:
    tracker = Tracker(store, "statuses", "bad-status", {}, {})
    with pytest.raises(ValueError, match="unknown run status 'crashed'"):
        tracker.finish("crashed")
    tracker.finish("completed")

    with pytest.raises(ZeroDivisionError), Tracker(store, "statuses", "ctx-error", {}, {}) as t:
        t.log_metrics({"loss": 1.0}, 0)
        1 / 0  # noqa: B018
    run = client.get_run(t.run_id)
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "failed")
    assert _history(client, t.run_id, "loss") == {0: 1.0}  # flushed on the way out

    with Tracker(store, "statuses", "ctx-ok", {}, {}) as t2:
        t2.log_metrics({"loss": 2.0}, 0)
    assert client.get_run(t2.run_id).info.status == "FINISHED"


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
    assert client.get_run(a.run_id).info.status == "FINISHED"
    assert client.get_run(b.run_id).info.status == "FAILED"
    assert client.get_run(a.run_id).info.experiment_id != client.get_run(b.run_id).info.experiment_id


# ------------------------------------------------------------------------------------------------------------------
# locks and retries


def _locked_error():
    import sqlalchemy.exc

    return sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))


def test_flush_retries_while_locked(store: str, client, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = Tracker(store, "locks", "retry", {}, {})
    real = tracker._client.log_batch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise _locked_error()
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker._client, "log_batch", flaky)
    for step in range(10):
        tracker.log_metrics({"loss": float(step)}, step)
    tracker.flush()
    assert calls["n"] == 4
    assert _history(client, tracker.run_id, "loss") == {s: float(s) for s in range(10)}


def test_flush_gives_up_with_clear_error_and_keeps_buffer(store: str, client, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = Tracker(store, "locks", "give-up", {}, {}, retry_timeout_s=0.5)
    real = tracker._client.log_batch

    def locked(*args, **kwargs):
        raise _locked_error()

    monkeypatch.setattr(tracker._client, "log_batch", locked)
    tracker.log_metrics({"loss": 1.0}, 0)
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=r"logging metrics .* still failing .*database is locked"):
        tracker.flush()
    assert time.monotonic() - t0 < 5
    monkeypatch.setattr(tracker._client, "log_batch", real)
    tracker.flush()  # the buffered point was kept and now lands
    assert _history(client, tracker.run_id, "loss") == {0: 1.0}


def test_non_transient_errors_are_not_retried(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = Tracker(store, "locks", "permanent", {}, {})
    calls = {"n": 0}

    def broken(*args, **kwargs):
        calls["n"] += 1
        raise KeyError("bug")

    monkeypatch.setattr(tracker._client, "log_batch", broken)
    tracker.log_metrics({"loss": 1.0}, 0)
    with pytest.raises(KeyError):
        tracker.flush()
    assert calls["n"] == 1


def test_flush_waits_out_a_real_sqlite_lock(store: str, client) -> None:
    """Another process-like writer holds an exclusive lock for a second; the flush lands after it."""
    tracker = Tracker(store, "locks", "real-lock", {}, {})
    for step in range(20):
        tracker.log_metrics({"loss": float(step)}, step)
    db = tracking._sqlite_path(store)
    locked = threading.Event()

    def hold_lock() -> None:
        con = sqlite3.connect(db, timeout=30)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(1.0)
        con.rollback()
        con.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(30)
    t0 = time.monotonic()
    tracker.flush()
    waited = time.monotonic() - t0
    holder.join()
    tracker.finish("completed")
    assert waited >= 0.3  # it really was blocked (the holder kept the lock for 1 s)
    assert _history(client, tracker.run_id, "loss") == {s: float(s) for s in range(20)}


# ------------------------------------------------------------------------------------------------------------------
# 3. concurrent jobs


def _spawn_workers(uri: str, experiment: str, n: int, steps: int, flush_every: int, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    procs = []
    for i in range(n):
        cmd = [sys.executable, str(WORKER), uri, experiment, f"worker-{i}", str(steps), str(flush_every)]
        cmd += [str(tmp_path / f"ready-{i}"), str(tmp_path / "go")]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def _release_and_collect(procs, n: int, tmp_path: Path, timeout: float = 240) -> list[str]:
    deadline = time.monotonic() + timeout
    while not all((tmp_path / f"ready-{i}").exists() for i in range(n)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        assert time.monotonic() < deadline, "workers never became ready"
        time.sleep(0.02)
    (tmp_path / "go").touch()  # all four create their Tracker at the same moment
    run_ids = []
    for p in procs:
        out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert p.returncode == 0, err.decode()[-3000:]
        run_ids.append(out.decode().strip().splitlines()[-1])
    return run_ids


def _check_concurrent_runs(uri: str, experiment: str, run_ids: list[str], n: int, steps: int) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [e for e in client.search_experiments() if e.name == experiment]
    assert len(experiments) == 1  # concurrent get-or-create converged on one experiment
    runs = _runs(client, experiment)
    assert len(runs) == n
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert sorted(r.info.run_name for r in runs) == [f"worker-{i}" for i in range(n)]
    assert [r.info.status for r in runs] == ["FINISHED"] * n
    points = 0
    for run in runs:
        worker = int(run.data.params["worker"])
        assert run.data.params["model.n_layer"] == "2"
        expected = {
            "train/loss": lambda s, w=worker: w + s / 1000,
            "train/lr": lambda s: s * 1e-4,
            "acc__none": lambda s, w=worker: float(w * 1000 + s),
        }
        for key, fn in expected.items():
            hist = _history(client, run.info.run_id, key)
            assert len(hist) == steps, (run.info.run_name, key, len(hist))
            assert sorted(hist) == list(range(steps))
            assert all(hist[s] == pytest.approx(fn(s)) for s in range(steps))
            points += len(hist)
    assert points == n * 3 * steps


def test_four_concurrent_jobs_on_one_sqlite_db(tmp_path: Path) -> None:
    """The issue's must-show: init once on a fresh DB, then 4 processes log 200 steps x 3 metrics at the same time.

    The DB is initialised through the command line (``python -m training.tracking init``) while the workers import
    MLflow; they are released together once both are done.
    """
    n, steps, flush_every = 4, 200, 10
    db = tmp_path / "fresh" / "mlflow.db"
    uri = f"sqlite:///{db}"
    experiment = "concurrency"
    t0 = time.monotonic()
    procs = _spawn_workers(uri, experiment, n, steps, flush_every, tmp_path)
    out_json = tmp_path / "results" / "experiment.json"
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.tracking",
            "init",
            "--uri",
            uri,
            "--experiment",
            experiment,
            "--out",
            out_json,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert init.returncode == 0, init.stderr[-3000:]
    info = json.loads(out_json.read_text())
    assert info["tracking_uri"] == uri and list(info["experiments"]) == [experiment]
    assert init.stdout.strip().endswith(f"{experiment}\t{info['experiments'][experiment]}")
    run_ids = _release_and_collect(procs, n, tmp_path)
    _check_concurrent_runs(uri, experiment, run_ids, n, steps)
    print(f"\nconcurrency test: {time.monotonic() - t0:.1f} s")


@pytest.mark.slow
def test_four_concurrent_jobs_without_init(tmp_path: Path) -> None:
    """Without init: 4 processes hit a fresh DB at once, race on its migration and on creating the experiment, and
    all still succeed through the retries (init_store is the recommended path; this is the safety net)."""
    n, steps = 4, 50
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = _spawn_workers(uri, "racy", n, steps, 10, tmp_path)
    run_ids = _release_and_collect(procs, n, tmp_path)
    _check_concurrent_runs(uri, "racy", run_ids, n, steps)


# ------------------------------------------------------------------------------------------------------------------
# 4. parent / child, 5. resume


def test_eval_run_is_child_of_training_run(store: str, client) -> None:
    train = Tracker(store, "nesting", "train", {}, {"stage": "train"})
    train.finish("completed")
    evaluation = Tracker(store, "nesting", "eval-gsm8k", {}, {"stage": "eval"}, parent_run_id=train.run_id)
    evaluation.log_metrics({"gsm8k/exact_match,strict-match": 0.25}, 0)
    evaluation.finish("completed")
    run = client.get_run(evaluation.run_id)
    assert run.data.tags["mlflow.parentRunId"] == train.run_id
    assert run.data.tags["stage"] == "eval"
    assert "mlflow.parentRunId" not in client.get_run(train.run_id).data.tags
    assert _history(client, evaluation.run_id, "gsm8k/exact_match__strict-match") == {0: 0.25}
    with pytest.raises(ValueError, match="parent_run_id 'nope' is not a run"):
        Tracker(store, "nesting", "orphan", {}, {}, parent_run_id="nope")


def test_resume_continues_the_same_run(store: str, client) -> None:
    params = {"model": {"n_layer": 2}}
    first = Tracker(store, "resume", "job", params, {"arch": "mhc"})
    for step in range(5):
        first.log_metrics({"loss": float(step)}, step)
    first.finish("failed")  # the job crashed; Snakemake retries it
    assert client.get_run(first.run_id).info.status == "FAILED"

    second = Tracker(store, "resume", "job", {**params, "resumed_from": 5}, {"arch": "mhc"}, resume_run_id=first.run_id)
    assert second.run_id == first.run_id
    assert client.get_run(second.run_id).info.status == "RUNNING"
    for step in range(5, 10):
        second.log_metrics({"loss": float(step)}, step)
    second.finish("completed")

    runs = _runs(client, "resume")
    assert len(runs) == 1
    run = client.get_run(first.run_id)
    assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "completed")
    assert run.data.params == {"model.n_layer": "2", "resumed_from": "5"}
    assert _history(client, first.run_id, "loss") == {s: float(s) for s in range(10)}

    with pytest.warns(UserWarning, match=r"params \['model.n_layer'\] differ"):
        third = Tracker(store, "resume", "job", {"model": {"n_layer": 3}}, {}, resume_run_id=first.run_id)
    third.finish("completed")
    assert client.get_run(first.run_id).data.params["model.n_layer"] == "2"
    with pytest.raises(ValueError, match="resume_run_id 'missing' is not a run"):
        Tracker(store, "resume", "job", {}, {}, resume_run_id="missing")
    with pytest.raises(ValueError, match="belongs to experiment"):
        Tracker(store, "another_experiment", "job", {}, {}, resume_run_id=first.run_id)


# ------------------------------------------------------------------------------------------------------------------
# init_store, CLI, NullTracker


def test_init_store_is_idempotent(store: str, client) -> None:
    first = init_store(store, "idempotent")
    assert init_store(store, "idempotent") == first
    assert [e.name for e in client.search_experiments() if e.experiment_id == first] == ["idempotent"]
    client.delete_experiment(first)
    assert init_store(store, "idempotent") == first  # a deleted experiment is restored, not shadowed
    assert client.get_experiment(first).lifecycle_stage == "active"
    assert client.get_experiment(first).artifact_location == tracking.default_artifact_location(store)


def test_cli_bad_uri_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tracking.main(["init", "--uri", "nosuchscheme://x", "--experiment", "e", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not initialise MLflow store 'nosuchscheme://x'")
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_null_tracker_and_make_tracker(store: str, tmp_path: Path) -> None:
    null = make_tracker(False, tracking_uri="unused://", experiment="x", run_name="r", params={}, tags={})
    assert isinstance(null, NullTracker)
    assert null.run_id is None
    null.log_metrics({"loss": 1.0, "acc,none": float("nan")}, 0)
    null.flush()
    null.set_tags({"a": 1})
    null.log_artifact(tmp_path / "whatever")
    null.finish("diverged")
    with pytest.raises(ValueError, match="unknown run status"):
        null.finish("done")
    real = make_tracker(True, tracking_uri=store, experiment="made", run_name="r", params={}, tags={})
    assert isinstance(real, Tracker) and real.run_id
    real.finish("completed")
