"""MLflow experiment tracking for training and evaluation jobs.

``RUN_DIR/metrics.jsonl`` stays the source of truth; MLflow is a browsable *copy* of it, so everything here is built
to never take a training job down by accident and to survive many jobs writing one SQLite file at once:

* :func:`init_store` creates the database and the experiment once, before jobs start. MLflow 3.x runs its Alembic
  migrations the first time a process opens a fresh SQLite file, and several processes doing that together crash
  each other ("table experiments already exists", "duplicate column name", "Online migration expected to match one
  row"). A Snakemake ``localrule`` (or ``python -m training.tracking init``) therefore runs it first.
* :class:`Tracker` still survives being started without that step: for SQLite, the migrating first open happens
  under an exclusive file lock beside the DB (``mlflow.db.lock``), and opening the store and get-or-create of the
  experiment are retried with backoff, so the process that loses a race simply uses what the winner made.
* Every write goes through :meth:`MlflowClient <mlflow.tracking.MlflowClient>` with an explicit URI and run id (never
  the fluent ``mlflow.start_run`` globals), so several trackers in one process do not interfere, and every write is
  retried on SQLite's "database is locked" for about a minute before a :class:`TrackingError` says so clearly.
* Metrics are buffered and written with ``log_batch`` (one transaction per flush instead of one per value), which is
  what keeps lock contention low when many jobs log at once.

``mlflow`` is imported lazily: importing this module is cheap, and :class:`NullTracker` and
:func:`sanitize_metric_name` work where MLflow is not installed.

Command line (creates the DB and experiments; prints ``NAME<TAB>ID`` per experiment)::

    python -m training.tracking init --uri sqlite:///results/mlflow.db --experiment mhc [--out experiment.json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import numbers
import os
import posixpath
import random
import re
import sqlite3
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "NullTracker",
    "Tracker",
    "TrackingError",
    "init_store",
    "make_tracker",
    "sanitize_metric_name",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# MLflow's limits (mlflow.utils.validation); copied so that this module imports without MLflow. A test checks they
# still match the installed MLflow.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100

DEFAULT_RETRY_TIMEOUT_S = 60.0

# Our run statuses (status.json) -> MLflow's terminal run status. A diverged run is a *result*, not a crash, so it
# ends FINISHED and is told apart by the ``status`` tag, which every run carries.
STATUS_TO_MLFLOW = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}
STATUS_TAG = "status"

_DISALLOWED = re.compile(r"[^A-Za-z0-9_\-. /]")
_LEADING_DOTS = re.compile(r"^\.+")


class TrackingError(RuntimeError):
    """The tracking store stayed unusable (locked, unreachable) for longer than the retry window."""


# --------------------------------------------------------------------------------------------------------------------
# names and values


def sanitize_metric_name(name: str) -> str:
    """Map any key to a valid, portable MLflow metric/param/tag name, deterministically.

    MLflow rejects names with characters outside ``[A-Za-z0-9_-. /]`` (``:`` only off Windows) and names that a
    POSIX path normalisation would change; lm-eval's keys look like ``"acc,none"`` or ``"exact_match,strict-match"``.
    The rule, applied in order:

    1. ``,`` becomes ``__`` (lm-eval's ``metric,filter`` -> ``metric__filter``; a double underscore rarely occurs
       in real names, so distinct lm-eval keys stay distinct);
    2. every other character outside ASCII letters, digits, ``_ - . /`` and space becomes ``_`` (so ``:`` and
       non-ASCII letters too: the name is then valid on every platform MLflow runs on);
    3. empty path segments are dropped (leading, trailing and doubled ``/``); a segment made only of dots becomes
       as many ``_``; leading dots of a name that starts with ``..`` become ``_``;
    4. a name over MLflow's 250-character limit is cut to 241 characters plus ``-`` and 8 hex digits of the
       original name's SHA-256, so long names stay distinct.

    Valid names come back unchanged, and the function is idempotent. A name with nothing left (``""``, ``"/"``) is a
    caller bug and raises :class:`ValueError`.
    """
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a str, got {type(name).__name__}: {name!r}")
    s = _DISALLOWED.sub("_", name.replace(",", "__"))
    parts = ["_" * len(p) if set(p) == {"."} else p for p in s.split("/") if p]
    s = "/".join(parts)
    if s.startswith(".."):
        s = _LEADING_DOTS.sub(lambda m: "_" * len(m.group()), s)
    if not s:
        raise ValueError(f"metric name {name!r} is empty once made a valid MLflow name")
    if len(s) > MAX_KEY_LENGTH:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
        s = f"{s[: MAX_KEY_LENGTH - 9]}-{digest}"
    assert posixpath.normpath(s) == s, s  # guaranteed by steps 3-4
    return s


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings to dotted keys with string values cut to MLflow's param length limit.

    A training config is nested (``model: {n_layer: ...}``) while MLflow params are flat strings; dotted keys keep
    the config's structure searchable as ``params.model.n_layer``. An empty nested mapping is kept as ``"{}"`` so
    the key does not silently vanish. Keys go through :func:`sanitize_metric_name`.
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, full))
        else:
            text = "{}" if isinstance(value, Mapping) else str(value)
            out[sanitize_metric_name(full)] = text[:MAX_PARAM_VALUE_LENGTH]
    return out


def _clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Stringify tag values and cut them to MLflow's tag length limit, so a long value (a path, a command) is kept
    in part instead of failing the whole run creation."""
    return {sanitize_metric_name(str(k)): str(v)[:MAX_TAG_VALUE_LENGTH] for k, v in tags.items()}


def _as_finite_float(value: Any) -> float | None:
    """Return ``value`` as a finite float, or None when it is not a real number (str, bool, None, tensor with more
    than one element) or is NaN/inf. A diverged step logs NaN losses; those belong in metrics.jsonl, not in MLflow,
    where they break the plots and were never meant to raise in the training loop."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d torch tensor / numpy array
        value = value.item()
    if isinstance(value, bool):
        return None
    try:
        if not isinstance(value, numbers.Real):
            return None
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


# --------------------------------------------------------------------------------------------------------------------
# retries


def _is_transient(exc: BaseException) -> bool:
    """True for errors that go away by waiting: SQLite locks and MLflow's wrapping of SQLAlchemy OperationalError
    (``TEMPORARILY_UNAVAILABLE``)."""
    try:
        import sqlalchemy.exc

        if isinstance(exc, sqlalchemy.exc.OperationalError):
            return True
    except ImportError:  # pragma: no cover - sqlalchemy comes with mlflow
        pass
    if isinstance(exc, sqlite3.OperationalError):
        return True
    code = getattr(exc, "error_code", None)
    if code == "TEMPORARILY_UNAVAILABLE":
        return True
    text = str(exc).lower()
    return "database is locked" in text or "operationalerror" in text


def _is_transient_on_open(exc: BaseException) -> bool:
    """Opening a fresh SQLite DB races on Alembic migrations; a loser sees OperationalError ("already exists",
    "duplicate column") or alembic's CommandError and succeeds once the winner is done."""
    if _is_transient(exc):
        return True
    return type(exc).__name__ == "CommandError" and type(exc).__module__.startswith("alembic")


def _retry(
    fn: Callable[[], _T],
    what: str,
    timeout_s: float,
    transient: Callable[[BaseException], bool] = _is_transient,
) -> _T:
    """Call ``fn`` until it succeeds, sleeping with jittered exponential backoff on transient errors.

    Jitter keeps processes that collided once from colliding again in lockstep. After ``timeout_s`` the last error
    is raised as a :class:`TrackingError` naming the operation, so the job log says what was stuck.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise TrackingError(
                    f"MLflow tracking: {what} still failing after {attempt} attempts over {timeout_s:.0f} s "
                    f"(the SQLite DB may be locked by another process or on a network file system): {exc}"
                ) from exc
            _log.debug("%s: transient error (attempt %d), retrying in %.2f s: %s", what, attempt, delay, exc)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2.0, 2.0)


# --------------------------------------------------------------------------------------------------------------------
# store


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (relative to the cwd) or ``sqlite:////abs/path``, else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def default_artifact_location(tracking_uri: str) -> str | None:
    """Absolute artifact root beside a SQLite DB (``results/mlflow.db`` -> ``results/mlflow-artifacts``).

    Left to MLflow, artifacts go to ``./mlruns`` relative to the cwd of whichever process created the experiment,
    and that location is frozen into the experiment; jobs run from other directories would scatter them. For a
    server URI, None lets the server decide.
    """
    db = _sqlite_path(tracking_uri)
    if db is None:
        return None
    db = db.resolve()
    return (db.parent / f"{db.stem}-artifacts").as_uri()


@contextlib.contextmanager
def _exclusive_file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); a no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: fall back to the retries alone
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _sqlite_schema_ready(db: Path) -> bool:
    """True once MLflow's migrations have stamped the DB (``alembic_version`` holds a row)."""
    if not db.is_file() or db.stat().st_size == 0:
        return False
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


def _open_client(tracking_uri: str, timeout_s: float) -> MlflowClient:
    """An MlflowClient bound to ``tracking_uri``; constructing it opens the store, hence the retry.

    The first open of a fresh SQLite file runs MLflow's Alembic migrations, and concurrent migrations do not just
    fail, they can leave the file broken for good (a stray ``_alembic_tmp_params`` table was seen). So for SQLite
    the creating open happens under an exclusive file lock beside the DB (``mlflow.db.lock``): one process
    migrates, the others wait, find the schema stamped, and open normally (in parallel).
    """
    if not tracking_uri:
        raise ValueError("tracking_uri is empty; give e.g. sqlite:///results/mlflow.db or http://host:5000")
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise ImportError(
            "MLflow tracking is enabled but mlflow is not importable; `pip install 'mlflow>=3.7'` or disable tracking"
        ) from exc

    def open_() -> MlflowClient:
        return _retry(
            lambda: MlflowClient(tracking_uri=tracking_uri),
            f"opening the tracking store {tracking_uri}",
            timeout_s,
            _is_transient_on_open,
        )

    db = _sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        # Checked under the lock only: mid-migration the version row already exists, so an unlocked "ready" could
        # be a half-migrated schema. The check takes milliseconds; only the migrating process holds the lock long.
        with _exclusive_file_lock(db.with_name(db.name + ".lock")):
            if not _sqlite_schema_ready(db):
                return open_()
    return open_()


def _get_or_create_experiment(
    client: MlflowClient, experiment: str, artifact_location: str | None, timeout_s: float
) -> str:
    """Id of the experiment named ``experiment``, created if missing (restored if deleted).

    Two processes may both see it missing and both create it; the loser's create fails with
    RESOURCE_ALREADY_EXISTS and it then reads the winner's id, so concurrent starts converge on one experiment.
    """
    from mlflow.exceptions import MlflowException

    if not experiment:
        raise ValueError("experiment name is empty")

    def attempt() -> str:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return client.create_experiment(experiment, artifact_location=artifact_location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(exc).lower():
                raise
            exp = client.get_experiment_by_name(experiment)
            if exp is None:  # pragma: no cover - would need a create+delete race
                raise
            return exp.experiment_id

    return _retry(attempt, f"get-or-create experiment {experiment!r}", timeout_s)


def init_store(
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None = None,
    timeout_s: float = DEFAULT_RETRY_TIMEOUT_S,
) -> str:
    """Create the tracking DB (with parent directories for ``sqlite:///path``) and the experiment; return its id.

    Run once before parallel jobs start (see the module docstring for why). Idempotent: on an existing DB and
    experiment it only looks the id up. ``artifact_location`` defaults to :func:`default_artifact_location`; it
    only applies when the experiment is created.
    """
    client = _open_client(tracking_uri, timeout_s)
    if artifact_location is None:
        artifact_location = default_artifact_location(tracking_uri)
    return _get_or_create_experiment(client, experiment, artifact_location, timeout_s)


# --------------------------------------------------------------------------------------------------------------------
# trackers


class Tracker:
    """One MLflow run per job: params and tags at start, buffered metrics, artifacts, and a final status.

    ``parent_run_id`` makes this an evaluation (child) run of a training run: it carries the ``mlflow.parentRunId``
    tag, which is how the MLflow UI nests runs. ``resume_run_id`` reopens that run (a training job restarted from
    its checkpoint after a crash or a Snakemake ``--retries``) so one job keeps one curve instead of two half runs.

    Usable as a context manager: leaving the block by an exception finishes the run ``failed``, otherwise
    ``completed`` unless :meth:`finish` was already called.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        resume_run_id: str | None = None,
        *,
        artifact_location: str | None = None,
        retry_timeout_s: float = DEFAULT_RETRY_TIMEOUT_S,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.retry_timeout_s = retry_timeout_s
        self._buffer: list[Any] = []  # mlflow.entities.Metric
        self._names: dict[str, str] = {}  # raw key -> sanitized key
        self._finished: str | None = None
        self.skipped = 0  # values dropped by log_metrics (non-numeric / non-finite)

        self._client = _open_client(tracking_uri, retry_timeout_s)
        from mlflow.entities import Param, RunTag

        if artifact_location is None:
            artifact_location = default_artifact_location(tracking_uri)
        self.experiment_id = _get_or_create_experiment(self._client, experiment, artifact_location, retry_timeout_s)

        flat = flatten_params(params or {})
        run_tags: dict[str, str] = {STATUS_TAG: "running"}
        if parent_run_id is not None:
            self._get_run(parent_run_id, "parent_run_id")
            run_tags["mlflow.parentRunId"] = parent_run_id
        for key, value in _clean_tags(tags or {}).items():  # ours first (in the atomic create batch), not overridden
            run_tags.setdefault(key, value)

        if resume_run_id is not None:
            run = self._get_run(resume_run_id, "resume_run_id")
            if run.info.experiment_id != self.experiment_id:
                raise ValueError(
                    f"resume_run_id {resume_run_id} belongs to experiment {run.info.experiment_id}, "
                    f"not to {experiment!r} ({self.experiment_id})"
                )
            if run.info.lifecycle_stage != "active":
                raise ValueError(f"resume_run_id {resume_run_id} was deleted; restore it or start a new run")
            self._run_id = resume_run_id
            self._retry(lambda: self._client.update_run(resume_run_id, status="RUNNING"), "reopening the run")
            existing = run.data.params
            changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
            if changed:
                warnings.warn(
                    f"resumed MLflow run {resume_run_id}: params {changed} differ from the original run; "
                    "MLflow params are immutable, the original values are kept",
                    stacklevel=2,
                )
            flat = {k: v for k, v in flat.items() if k not in existing}
        else:
            # The first tags (the parent link among them) are written atomically with the run; the rest follow.
            items = list(run_tags.items())
            create_tags = dict(items[:MAX_PARAMS_TAGS_PER_BATCH])
            run_tags = dict(items[MAX_PARAMS_TAGS_PER_BATCH:])
            run = self._retry(
                lambda: self._client.create_run(self.experiment_id, run_name=run_name, tags=create_tags),
                f"creating run {run_name!r}",
            )
            self._run_id = run.info.run_id

        tag_entities = [RunTag(k, v) for k, v in run_tags.items()]
        param_entities = [Param(k, v) for k, v in flat.items()]
        for i in range(0, max(len(tag_entities), len(param_entities)), MAX_PARAMS_TAGS_PER_BATCH):
            chunk_tags = tag_entities[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            chunk_params = param_entities[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            self._retry(
                lambda p=chunk_params, t=chunk_tags: self._client.log_batch(self._run_id, params=p, tags=t),
                "logging params and tags",
            )

    # -- helpers -------------------------------------------------------------------------------------------------

    def _retry(self, fn: Callable[[], _T], what: str) -> _T:
        return _retry(fn, f"{what} (run {getattr(self, '_run_id', '?')})", self.retry_timeout_s)

    def _get_run(self, run_id: str, arg: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self._retry(lambda: self._client.get_run(run_id), f"looking up {arg}")
        except MlflowException as exc:
            raise ValueError(f"{arg} {run_id!r} is not a run in {self.tracking_uri}: {exc.message}") from exc

    def _check_open(self) -> None:
        if self._finished is not None:
            raise RuntimeError(f"MLflow run {self._run_id} was already finished as {self._finished!r}")

    # -- public API ----------------------------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The MLflow run id; a training job writes it to its run directory so eval jobs can be its children and a
        restarted job can resume it."""
        return self._run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Buffer ``metrics`` at ``step``; keys are sanitized, non-numeric and non-finite values skipped.

        Nothing touches the DB here (one transaction per :meth:`flush` keeps SQLite contention low), except that a
        full batch (1000 values) is flushed at once to bound memory.
        """
        from mlflow.entities import Metric

        self._check_open()
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            number = _as_finite_float(value)
            if number is None:
                self.skipped += 1
                _log.debug("MLflow: skipping %s=%r at step %d (not a finite number)", key, value, step)
                continue
            name = self._names.get(key)
            if name is None:
                name = self._names[key] = sanitize_metric_name(key)
            self._buffer.append(Metric(name, number, timestamp, int(step)))
        if len(self._buffer) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics with ``log_batch``, retrying while the DB is locked.

        Raises :class:`TrackingError` after ``retry_timeout_s``; the unwritten metrics stay buffered so a later
        flush can still deliver them (re-sending a batch that did land is harmless: MLflow drops exact duplicates).
        """
        while self._buffer:
            chunk = self._buffer[:MAX_METRICS_PER_BATCH]
            self._retry(lambda c=chunk: self._client.log_batch(self._run_id, metrics=c), "logging metrics")
            del self._buffer[: len(chunk)]

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Add or overwrite tags (e.g. the checkpoint path once it exists)."""
        from mlflow.entities import RunTag

        entities = [RunTag(k, v) for k, v in _clean_tags(tags).items()]
        for i in range(0, len(entities), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = entities[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            self._retry(lambda c=chunk: self._client.log_batch(self._run_id, tags=c), "setting tags")

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a file or a directory into the run's artifacts (under ``artifact_path`` if given).

        Meant for small files (config, metrics.jsonl, status.json, figures); checkpoints stay files and are recorded
        by path as a tag (large weights stay files; copying them into the artifact store would double the disk use).
        """
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"artifact {p} does not exist")
        if p.is_dir():
            self._retry(lambda: self._client.log_artifacts(self._run_id, str(p), artifact_path), f"logging {p}")
        else:
            self._retry(lambda: self._client.log_artifact(self._run_id, str(p), artifact_path), f"logging {p}")

    def finish(self, status: str = "completed") -> None:
        """Flush, tag ``status`` and end the run: completed/diverged -> FINISHED, failed -> FAILED.

        A diverged run is a result, not a crash, so MLflow sees it FINISHED and the ``status`` tag says diverged.
        Calling it again with the same status is a no-op; with another status it raises.
        """
        if status not in STATUS_TO_MLFLOW:
            raise ValueError(f"unknown run status {status!r}; expected one of {sorted(STATUS_TO_MLFLOW)}")
        if self._finished is not None:
            if self._finished != status:
                raise RuntimeError(f"MLflow run {self._run_id} already finished as {self._finished!r}")
            return
        self.flush()
        self.set_tags({STATUS_TAG: status})
        mlflow_status = STATUS_TO_MLFLOW[status]
        self._retry(lambda: self._client.set_terminated(self._run_id, status=mlflow_status), "ending the run")
        self._finished = status

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._finished is None:
            self.finish("failed" if exc_type is not None else "completed")


class NullTracker:
    """The :class:`Tracker` interface doing nothing, for runs with tracking disabled (and machines without MLflow),
    so training code calls the same methods either way."""

    run_id: str | None = None
    skipped = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Do nothing."""

    def flush(self) -> None:
        """Do nothing."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Do nothing."""

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Do nothing."""

    def finish(self, status: str = "completed") -> None:
        """Check ``status`` like :meth:`Tracker.finish` (a typo should fail with tracking off too); nothing else."""
        if status not in STATUS_TO_MLFLOW:
            raise ValueError(f"unknown run status {status!r}; expected one of {sorted(STATUS_TO_MLFLOW)}")

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        pass


def make_tracker(enabled: bool, **kwargs: Any) -> Tracker | NullTracker:
    """A :class:`Tracker` built from ``kwargs`` when ``enabled``, else a :class:`NullTracker` (``kwargs`` ignored),
    so the config switch lives in one place."""
    return Tracker(**kwargs) if enabled else NullTracker()


# --------------------------------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    """``init``: create the DB and experiments before jobs start; optionally write their ids to a JSON file that
    tracking jobs take as input (so the DAG orders them after it)."""
    parser = argparse.ArgumentParser(prog="python -m training.tracking", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the tracking DB and experiment(s) (idempotent)")
    init.add_argument("--uri", required=True, help="tracking URI, e.g. sqlite:///results/mlflow.db")
    init.add_argument("--experiment", required=True, action="append", help="experiment name (repeatable)")
    init.add_argument("--artifact-location", default=None, help="artifact root for new experiments")
    init.add_argument("--out", default=None, help="write {tracking_uri, experiments: {name: id}} as JSON here")
    init.add_argument(
        "--disabled",
        action="store_true",
        help="tracking is off: create nothing, write {enabled: false} to --out (jobs then track nothing)",
    )
    args = parser.parse_args(argv)

    if args.disabled:
        ids: dict[str, str] = {}
    else:
        try:
            ids = {name: init_store(args.uri, name, args.artifact_location) for name in args.experiment}
        except Exception as exc:  # a clear one-line error and a non-zero exit, not a traceback
            why = f"{type(exc).__name__}: {exc}"
            print(f"error: could not initialise MLflow store {args.uri!r}: {why}", file=sys.stderr)
            return 1
    for name, exp_id in ids.items():
        print(f"{name}\t{exp_id}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        record = {"enabled": not args.disabled, "tracking_uri": args.uri, "experiments": ids}
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(out)  # atomic: a reader never sees half a file
    return 0


if __name__ == "__main__":
    sys.exit(main())
