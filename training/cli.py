"""Training: `python -m models.train --config FILE [--set key=value ...] --out RUN_DIR` (also `mhc-train`).

One command trains one (scale, arch, seed) run and is safe to rerun: it resumes exactly from the last
checkpoint. What it writes in RUN_DIR:

- `metrics.jsonl`: the source of truth, one JSON line per logged step: step, tokens, loss, lr, grad_norm,
  step_time_s, tokens_per_s, epoch; val_loss at evaluation steps; for HC/mHC the Amax gain summaries
  (max over sub-layers of the single-layer and composite forward/backward gains, min column sum) at
  `run.diag_interval`. Full per-sub-layer Amax curves go to `diagnostics.jsonl`.
- `status.json`: running | completed | diverged | failed, with the reason.
- `checkpoints/` (see training/checkpoint.py) and, at the end, `model/model.safetensors` + `model/model.json`.

A non-finite loss or gradient norm ends the run as `diverged` with exit code 0 (a result, not a crash). Bad input
(an unknown config key, a zero or negative size, a shard whose sha256 does not match its manifest, a corrupted
checkpoint) is an error naming the problem, exit code 2, before anything is written to RUN_DIR.

Multi-process: run under `torchrun --nproc-per-node N`; every rank draws its slice of each global batch, DDP
averages the gradients, rank 0 writes the files. The global batch (`train.batch_size`) stays the same.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch.distributed as dist

from common.allocator import keep_freed_memory
from common.gpu_slots import GpuSlotError
from corpus import DataError
from models.config import ConfigError, to_dict

from .checkpoint import CheckpointError
from .config import RunConfig, config_hash, load_run_config
from .run_folder import display_name, move_stale_run, shard_checksums


def read_tracking_file(path: Path) -> tuple[str, str]:
    """(tracking URI, experiment) from `training.tracking init --out`'s file; ("", "") when it says tracking is off."""
    try:
        data = json.loads(path.read_text())
        if data.get("enabled") is False:
            return "", ""
        (experiment,) = data["experiments"]
        return data["tracking_uri"], experiment
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"tracking file {path} is unreadable or not one experiment ({err})") from None


def make_run_tracker(trainer):
    """The MLflow run of a training run (a do-nothing tracker when tracking is off or on ranks other than 0)."""
    from .tracking import make_tracker

    cfg = trainer.cfg
    tracker = make_tracker(
        cfg.tracking.enabled and trainer.ranks.main,
        tracking_uri=cfg.tracking.tracking_uri,
        experiment=cfg.tracking.experiment,
        run_name=display_name(trainer.folder.path),
        params={"config": to_dict(cfg), "model": to_dict(cfg.model), "train": to_dict(cfg.train)},
        tags=trainer.tracking_tags(),
        resume_run_id=trainer.folder.read_text("mlflow_run_id"),
    )
    if trainer.ranks.main and cfg.tracking.enabled and tracker.run_id:  # "" when the store failed at the start
        trainer.folder.write_text("mlflow_run_id", tracker.run_id + "\n")
    return tracker


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML run config (scale, arch, seed, model/train overrides, data, run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    parser.add_argument(
        "--summary",
        default=None,
        help="write a JSON summary here once the run has ended (completed or diverged); never on a crash",
    )
    parser.add_argument(
        "--replace-stale",
        action="store_true",
        help="if RUN_DIR holds a run of a different configuration, move it aside to RUN_DIR.stale-<hash> and start "
        "afresh (the workflow uses this when a run's settings were edited); without it that is an error",
    )
    # Tracking settings as flags of their own, so a workflow can pass them without making them part of the
    # run's identity (editing the tracking URI must not retrain anything). An empty value leaves the config's.
    parser.add_argument("--tracking-uri", default="", help="enable MLflow tracking to this URI")
    parser.add_argument("--experiment", default="", help="MLflow experiment name")
    parser.add_argument(
        "--tracking-file",
        default="",
        help="enable tracking with the URI and (single) experiment of this JSON, as `training.tracking init --out` "
        "writes it",
    )
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> RunConfig:
    cfg = load_run_config(args.config, args.overrides)
    if args.tracking_file:
        args.tracking_uri, args.experiment = read_tracking_file(Path(args.tracking_file))
    if args.tracking_uri:
        cfg.tracking.enabled, cfg.tracking.tracking_uri = True, args.tracking_uri
    if args.experiment:
        cfg.tracking.experiment = args.experiment
    if args.replace_stale:
        shards = Path(cfg.data.shards_dir) / "manifest.json" if cfg.data.shards_dir else None
        data = shard_checksums(json.loads(shards.read_text())) if shards and shards.is_file() else None
        move_stale_run(Path(args.out), config_hash(cfg), data, int(os.environ.get("RANK", "0")))
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # no page faults on every step's fresh activations (common/allocator.py)
    # A SIGTERM (preemption, torchrun tearing down, a timeout) becomes an exception, so status.json says failed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"terminated by signal {signum}"))
    from .trainer import Trainer

    try:
        trainer = Trainer(configure(args), Path(args.out))
    except (ConfigError, DataError, CheckpointError, GpuSlotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        trainer.run(make_run_tracker)
        if args.summary and trainer.ranks.main:
            trainer.folder.write_summary(Path(args.summary), trainer.cfg, trainer.step, trainer.hash)
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
