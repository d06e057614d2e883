"""`python -m analysis.checkpoint_losses --run DIR [--batches N] --out FILE`: Fig. 6b's token-scaling points.

Evaluates every intermediate checkpoint a training run kept (`RUN_DIR/checkpoints/step_*`) on the same fixed
validation batches and writes {"run", "val_batches", "points": [{"step", "tokens", "val_loss"}, ...]}. The paper
draws its token-scaling curve from the intermediate checkpoints of the 3B, 1T-token run in the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from common.files import atomic_write_text
from common.gpu_slots import GpuSlotError, resolve_device
from training.checkpoint import CheckpointError
from training.validation import validation_loss


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.checkpoint_losses", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="training run directory")
    parser.add_argument("--batches", type=int, default=16, help="validation batches per checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)  # a free GPU of this machine for this process, when it has one
    except GpuSlotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from corpus import load_shard, val_batches
    from training.checkpoint import load_for_eval

    run = Path(args.run)
    steps = sorted(p for p in (run / "checkpoints").glob("step_*") if p.is_dir())
    if not steps:
        print(f"error: {run}/checkpoints holds no step_* checkpoint", file=sys.stderr)
        return 2
    points, batches = [], None
    try:
        for path in tqdm(steps, desc=f"checkpoint losses {run}", unit="ckpt"):
            model, _, sidecar = load_for_eval(path, device)
            train = sidecar["train_config"]
            if batches is None:
                tokens = load_shard(Path(sidecar["data"]["shards"]), "val")
                fixed = val_batches(tokens, train["batch_size"], train["seq_len"], args.batches)
                batches = [b.to(device) for b in fixed]
            step = int(sidecar["step"])
            tokens_seen = step * train["batch_size"] * train["seq_len"]
            points.append({"step": step, "tokens": tokens_seen, "val_loss": validation_loss(model, batches)})
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = {"run": str(run), "val_batches": len(batches or []), "points": points}
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
