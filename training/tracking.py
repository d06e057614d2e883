"""MLflow tracking for training and evaluation jobs: a browsable copy of ``RUN_DIR/metrics.jsonl``, which stays the
source of truth. So tracking never stops a job: :func:`make_tracker` and every logging call warn and go on.

MLflow does the rest itself, and this module adds only what it does not do:

* ``python -m training.tracking init`` (the workflow's ``mlflow_init`` localrule) creates the SQLite store and the
  experiment once, before the jobs: 4 processes opening a fresh store at once race on its migration (3 or 4 of
  them crashed, in each of 3 trials). The experiment gets an absolute artifact location beside the DB (MLflow would
  freeze ``./mlruns`` of the creating process's cwd) and the tag ``mlflow.experimentKind`` =
  ``custom_model_development`` (a training, not a GenAI, experiment). MLflow 3.17's UI itself picks the page from its
  sidebar switch (remembered by the browser; GenAI at first): open ``/#/experiments/<id>?workflowType=machine_learning``
  once and it lands on the runs, with each evaluation nested under its training run.
* Valid names (lm-eval's ``acc,none`` is not one), nested configs as dotted params, finite values only, our run
  statuses mapped to MLflow's, an evaluation as a child run (``mlflow.parentRunId``), a restarted job's run resumed.

The mechanism is plain synchronous :class:`mlflow.MlflowClient` calls on the shared store, chosen by measurement:
N processes logging 8 metrics per step to a pre-initialised SQLite store (MLflow 3.17, 2 shared cores, no retry code)
lost no value and saw no error in any mode: 4 x 300 steps, one ``log_batch`` per step 12.0 s, per 10 steps 5.7 s,
one ``log_metric`` per value 37 s; 8 x 200 per step 12.3 s; 12 x 300 per 10 steps 11.6 s. MLflow's own SQLite busy
timeout (20 s, set on every session) serialises the writers, which left file locks and retries nothing to do.
Rejected: async logging (``synchronous=False``, 8.2 s for 4 x 300 per step) gains little, and its
``mlflow.flush_async_logging()`` opens the *default* store, a fresh ``./mlflow.db`` in the cwd, where 3 of 4 jobs
crashed on the migration; ``mlflow server`` over loopback HTTP (18.5 s per step, 4.3 s per 10 steps) is one more
long-lived process to run for no gain; an ingest step after each run would not show a run while it trains.
Metrics are buffered and written with one ``log_batch`` at least every :data:`FLUSH_EVERY_S` seconds and at each
:meth:`Tracker.flush` (the trainer's checkpoints), so the UI follows a training run live.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common.dotted import flatten
from common.files import atomic_write_text

EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
STATUS_TO_MLFLOW = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}  # diverged: a result
STATUS_TAG = "status"
FLUSH_EVERY_S = 10.0
MAX_BUFFERED = 100_000  # metric values kept while the store is unusable; past that they are dropped (JSONL has them)
_DISALLOWED = re.compile(r"[^A-Za-z0-9_\-. /]")


def sanitize_metric_name(name: str) -> str:
    """A valid MLflow metric/param/tag name, deterministically: ``,`` -> ``__`` (lm-eval's ``acc,none`` ->
    ``acc__none``), other characters outside ``[A-Za-z0-9_-. /]`` -> ``_``, empty path segments dropped, all-dot
    segments and leading ``..`` -> ``_``, names over 250 characters cut with 8 hex digits of their hash. Idempotent."""
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a str, got {type(name).__name__}: {name!r}")
    parts = [p for p in _DISALLOWED.sub("_", name.replace(",", "__")).split("/") if p]
    s = "/".join("_" * len(p) if set(p) == {"."} else p for p in parts)
    if s.startswith(".."):
        s = re.sub(r"^\.+", lambda m: "_" * len(m.group()), s)
    if not s:
        raise ValueError(f"metric name {name!r} is empty once made a valid MLflow name")
    return s if len(s) <= 250 else f"{s[:241]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested mappings -> dotted keys (``params.model.n_layer``), values as strings cut to MLflow's 6000 characters;
    an empty mapping stays one parameter ("{}")."""
    return {
        sanitize_metric_name(key): ("{}" if value == {} else str(value))[:6000]
        for key, value in flatten("", dict(params), keep_empty=True)
    }


def _finite(value: Any) -> float | None:
    """``value`` (also a 0-d tensor) as a float; None for NaN/inf (a diverged step) and for str and bool."""
    try:
        number = math.nan if isinstance(value, (str, bool)) else float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def default_artifact_location(tracking_uri: str) -> str | None:
    """``sqlite:///results/mlflow.db`` -> absolute ``file://.../results/mlflow-artifacts``; None for other stores."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0]).resolve()
    return (db.parent / f"{db.stem}-artifacts").as_uri()


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    """Get or create (or restore) the experiment, with the experiment-kind tag; two jobs creating it converge."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as exc:
            if (exp := client.get_experiment_by_name(name)) is None:
                raise exc from None
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # created elsewhere: MLflow would guess GenAI
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def init_store(tracking_uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Create the store (with its directory) and the experiment once, before concurrent jobs; return the id."""
    from mlflow import MlflowClient  # which makes a SQLite DB's directories

    location = artifact_location or default_artifact_location(tracking_uri)
    return _experiment_id(MlflowClient(tracking_uri), experiment, location)


class Tracker:
    """One MLflow run: params and tags at start, buffered metrics, artifacts, a final status. ``parent_run_id`` makes
    it a child (an evaluation of a training run); ``resume_run_id`` reopens a restarted job's run (a new run if it is
    gone). The constructor raises when the store is unusable; after that, failures warn and are otherwise ignored."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        resume_run_id: str | None = None,
    ) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        self._client = MlflowClient(tracking_uri)
        self.experiment_id = _experiment_id(self._client, experiment, default_artifact_location(tracking_uri))
        self._buffer: list[Any] = []
        self._last_flush, self._finished, self.skipped = time.monotonic(), False, 0
        run_tags = {sanitize_metric_name(str(k)): str(v)[:8000] for k, v in (tags or {}).items()}
        run_tags.update({STATUS_TAG: "running", **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})})
        flat, run = flatten_params(params or {}), None
        if resume_run_id:
            try:
                run = self._client.get_run(resume_run_id)
                self._client.update_run(resume_run_id, status="RUNNING")
                flat = {k: v for k, v in flat.items() if k not in run.data.params}  # params are immutable
            except Exception as exc:
                warnings.warn(f"MLflow: cannot resume run {resume_run_id} ({exc}); starting a new run", stacklevel=2)
                run, flat = None, flatten_params(params or {})
        if run is None:  # the parent link is written with the run, atomically
            run = self._client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        self.run_id: str = run.info.run_id
        batch = {"params": [Param(k, v) for k, v in flat.items()], "tags": [RunTag(STATUS_TAG, "running")]}
        self._safe("logging params", lambda: self._client.log_batch(self.run_id, **batch))

    def _safe(self, what: str, fn: Callable[[], Any]) -> bool:
        try:
            fn()
            return True
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc)[:500]}"
            warnings.warn(f"MLflow: {what} failed for run {self.run_id} ({why}); going on without it", stacklevel=3)
            return False

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Buffer finite numeric values (others are counted in ``skipped``); write every FLUSH_EVERY_S seconds."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if (number := _finite(value)) is None:
                self.skipped += 1
            else:
                self._buffer.append(Metric(sanitize_metric_name(key), number, now, int(step)))
        if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write the buffer in one ``log_batch``; on failure keep it (up to MAX_BUFFERED values) for the next flush."""
        batch, self._buffer, self._last_flush = self._buffer, [], time.monotonic()
        if batch and not self._safe("logging metrics", lambda: self._client.log_batch(self.run_id, metrics=batch)):
            self._buffer = batch[-MAX_BUFFERED:]

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a small file or directory into the run's artifacts (checkpoints stay files, recorded by path)."""
        method = "log_artifacts" if Path(path).is_dir() else "log_artifact"
        self._safe(f"logging {path}", lambda: getattr(self._client, method)(self.run_id, str(path), artifact_path))

    def finish(self, status: str = "completed") -> None:
        """Flush, tag ``status`` and end the run (completed/diverged -> FINISHED, failed -> FAILED); once only."""
        if status not in STATUS_TO_MLFLOW:
            raise ValueError(f"unknown run status {status!r}; expected one of {sorted(STATUS_TO_MLFLOW)}")
        if self._finished:
            return
        self._finished = True
        self.flush()
        self._safe("tagging the status", lambda: self._client.set_tag(self.run_id, STATUS_TAG, status))
        self._safe("ending the run", lambda: self._client.set_terminated(self.run_id, STATUS_TO_MLFLOW[status]))


class NullTracker(Tracker):
    """Tracks nothing, without importing MLflow: tracking disabled (``run_id`` None) or the store unusable at the
    start (``run_id`` ""). Every MLflow call of :class:`Tracker` goes through ``_safe``, which here skips it."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id, self.skipped, self._buffer, self._finished = run_id, 0, [], False  # type: ignore[assignment]

    def _safe(self, what: str, fn: Callable[[], Any]) -> bool:
        return True

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        pass


def make_tracker(enabled: bool, **kwargs: Any) -> Tracker:
    """A :class:`Tracker` when ``enabled`` and the store works; else a :class:`NullTracker` (with a warning when
    the store failed: the job goes on, its ``metrics.jsonl`` has everything)."""
    if not enabled:
        return NullTracker()
    try:
        return Tracker(**kwargs)
    except Exception as exc:
        why = f"{type(exc).__name__}: {str(exc)[:500]}"
        warnings.warn(f"MLflow tracking disabled for this job, the store failed ({why})", stacklevel=2)
        return NullTracker(run_id="")


def main(argv: list[str] | None = None) -> int:
    """``init``: create the store and experiments; print ``NAME<TAB>ID`` each; ``--out`` records them as JSON."""
    parser = argparse.ArgumentParser(prog="python -m training.tracking", description=__doc__.split("\n\n")[0])
    init = parser.add_subparsers(dest="command", required=True).add_parser("init", help="create store and experiment")
    init.add_argument("--uri", required=True, help="tracking URI, e.g. sqlite:///results/mlflow.db")
    init.add_argument("--experiment", required=True, action="append", help="experiment name (repeatable)")
    init.add_argument("--artifact-location", default=None, help="artifact root for new experiments")
    init.add_argument("--out", default=None, help="write {enabled, tracking_uri, experiments: {name: id}} here")
    init.add_argument("--disabled", action="store_true", help="tracking is off: create nothing, say so in --out")
    args = parser.parse_args(argv)
    ids: dict[str, str] = {}
    if not args.disabled:
        try:
            ids = {name: init_store(args.uri, name, args.artifact_location) for name in args.experiment}
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            print(f"error: could not initialise MLflow store {args.uri!r}: {why}", file=sys.stderr)
            return 1
    for name, exp_id in ids.items():
        print(f"{name}\t{exp_id}")
    if args.out:  # atomic: a job never reads half a file
        record = {"enabled": not args.disabled, "tracking_uri": args.uri, "experiments": ids}
        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
