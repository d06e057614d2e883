"""`python -m eval.run --checkpoint DIR --suite paper [--limit N] --out FILE`: the workflow's evaluation step.

Runs the paper's eight-benchmark suite (or `--tasks a,b`) on one checkpoint through lm-eval, reading the
benchmark splits from the local data root (`--data-root`, else $MHC_DATA_ROOT, else ../shared/data) with the
hub switched off, unless `--hub` is given. Writes lm-eval's results JSON (with `configs`, `versions`, `n-shot`
and our `mhc_substitutions`: every deviation forced by a missing local split) atomically to FILE, and logs the
scores to MLflow as a child run of the checkpoint's training run when that run was tracked.

`--per-item` also keeps, for every item of a multiple-choice task, the log-likelihood of each choice, the gold
index and the choices' lengths in characters (`mhc_items`: task -> list of {"doc_id", "gold", "ll", "chars"}), so
that two models can be compared item by item (analysis/benchmarks.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.files import atomic_write_text
from common.gpu_slots import GpuSlotError, resolve_device
from corpus import DataError, resolve_data_root
from training.checkpoint import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="training run, model or checkpoint directory")
    parser.add_argument("--suite", default="paper", choices=["paper"], help="the paper's eight benchmarks")
    parser.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks instead of the suite")
    parser.add_argument("--limit", type=float, default=None, help="examples per task (smoke runs only)")
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--hub", action="store_true", help="load the benchmarks from the Hugging Face hub")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument(
        "--per-item", action="store_true", help="keep every multiple-choice item's log-likelihoods (mhc_items)"
    )
    parser.add_argument(
        "--skip-unfinished",
        action="store_true",
        help="for a training run that diverged, write a results file saying so (exit 0) instead of failing",
    )
    args = parser.parse_args(argv)

    status_file = Path(args.checkpoint) / "status.json"
    if args.skip_unfinished and status_file.is_file():
        status = json.loads(status_file.read_text())
        if status.get("status") == "diverged":
            skipped = {"results": {}, "mhc_skipped": f"training run diverged: {status.get('reason', '')}"}
            atomic_write_text(Path(args.out), json.dumps(skipped, indent=1) + "\n")
            print(f"{args.checkpoint}: {skipped['mhc_skipped']}; no evaluation", file=sys.stderr)
            return 0

    from lm_eval.utils import handle_non_serializable

    from .lm import MhcLM
    from .suite import PAPER_SUITE, run_suite

    try:
        args.device = resolve_device(args.device)
        lm = MhcLM(checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size)
        root = None if args.hub else resolve_data_root(args.data_root)
    except (CheckpointError, DataError, GpuSlotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tasks = args.tasks.split(",") if args.tasks else [PAPER_SUITE]
    limit = int(args.limit) if args.limit and args.limit >= 1 else args.limit
    results = run_suite(lm, tasks=tasks, limit=limit, local_data_root=root, log_samples=args.per_item)
    samples = results.pop("samples", None) or {}
    if args.per_item:
        results["mhc_items"] = {task: items for task, rows in samples.items() if (items := choice_items(rows))}
    results["mhc_checkpoint"] = str(Path(args.checkpoint).resolve())
    text = json.dumps(results, indent=1, default=handle_non_serializable, sort_keys=True)
    atomic_write_text(Path(args.out), text + "\n")
    if not args.no_mlflow:
        log_to_mlflow(Path(args.checkpoint), results, Path(args.out))
    return 0


def choice_items(samples: list[dict]) -> list[dict]:
    """Per-item records of a multiple-choice task's lm-eval samples (empty for a generative task): the summed
    log-likelihood of each choice's continuation, the gold choice and each continuation's length in characters."""
    items = []
    for sample in samples:
        responses, target = sample.get("filtered_resps"), sample.get("target")
        if not isinstance(target, int) or not responses or not all(isinstance(r, (list, tuple)) for r in responses):
            return []
        items.append(
            {
                "doc_id": sample["doc_id"],
                "gold": target,
                "ll": [float(r[0]) for r in responses],
                # lm-eval's acc_norm divides by the choice's length without the target delimiter (a space by default)
                "chars": [len(arg[1]) - arg[1].startswith(" ") for arg in sample["arguments"]],
            }
        )
    return sorted(items, key=lambda item: item["doc_id"])


def log_to_mlflow(checkpoint: Path, results: dict, out: Path) -> None:
    """A child run of the training run (found through RUN_DIR/mlflow_run_id and the run's tracking config)."""
    # the run directory: the checkpoint itself, its model/ folder's parent, or checkpoints/step_X's grandparent
    run_dir = next((d for d in (checkpoint, *checkpoint.parents) if (d / "config.json").is_file()), None)
    if run_dir is None:
        return
    id_file, config_file = run_dir / "mlflow_run_id", run_dir / "config.json"
    parent_run_id = id_file.read_text().strip() if id_file.is_file() else ""
    tracking = json.loads(config_file.read_text())["config"]["tracking"]
    if not parent_run_id or not tracking.get("enabled"):  # untracked run, or its tracking failed at the start
        return
    from training.run_folder import display_name
    from training.tracking import make_tracker

    tracker = make_tracker(  # like training: an MLflow failure warns, the results file stands
        True,
        tracking_uri=tracking["tracking_uri"],
        experiment=tracking["experiment"],
        run_name=f"eval {display_name(run_dir)}",
        params={"tasks": ",".join(sorted(results.get("results", {})))},
        tags={"kind": "evaluation", "checkpoint": str(checkpoint.resolve())},
        parent_run_id=parent_run_id,
    )
    scores = {
        f"{task}/{metric}": value
        for task, metrics in results.get("results", {}).items()
        for metric, value in metrics.items()
        if isinstance(value, (int, float)) and "stderr" not in metric
    }
    tracker.log_metrics(scores, step=0)
    tracker.log_artifact(out)
    tracker.finish("completed")


if __name__ == "__main__":
    sys.exit(main())
