"""One fake training job for the tracking concurrency tests (tests/test_tracking.py).

Run as ``python tests/_tracking_worker.py URI EXPERIMENT RUN_NAME STEPS FLUSH_EVERY READY_FILE GO_FILE``. It imports
MLflow (seconds), touches READY_FILE, then waits for GO_FILE so that all workers start their run in the same instant
instead of staggered by import time; then logs STEPS steps of three metrics, flushing every FLUSH_EVERY steps, and
prints its run id (an empty line when the tracker fell back to tracking nothing, as a training job would).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: make `training` importable

import mlflow  # noqa: E402,F401  (imported before the barrier: the slow part should not skew the start)

from training.tracking import make_tracker  # noqa: E402


def main(argv: list[str]) -> int:
    """Log a deterministic curve (values depend on run name and step) so the test can check every point."""
    uri, experiment, run_name, steps, flush_every, ready, go = argv
    Path(ready).touch()
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        if time.monotonic() > deadline:
            print("worker: timed out waiting for the go file", file=sys.stderr)
            return 2
        time.sleep(0.01)
    worker = int(run_name.rsplit("-", 1)[-1])
    params = {"worker": worker, "model": {"n_layer": 2}}
    tracker = make_tracker(True, tracking_uri=uri, experiment=experiment, run_name=run_name, params=params, tags={})
    for step in range(int(steps)):
        tracker.log_metrics(
            {"train/loss": worker + step / 1000, "train/lr": step * 1e-4, "acc,none": worker * 1000 + step}, step
        )
        if (step + 1) % int(flush_every) == 0:
            tracker.flush()
    tracker.finish("completed")
    print(tracker.run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
