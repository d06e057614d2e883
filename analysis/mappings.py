"""`python -m analysis.mappings --run DIR --out FILE`: the learned residual mappings of a trained HC/mHC model (Fig. 8).

Runs the final model on the first validation sequence, captures H_pre, H_post and H_res of every sub-layer
(attention and FFN counted separately), averages each over the sequence's tokens (as the paper's Fig. 8 does) and
writes them with two composites, over the first and the second half of the sub-layers (later layers on the left:
P = H_{b} ... H_{a}), plus the Amax gain curves of that sequence.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common.files import atomic_write_text
from common.gpu_slots import GpuSlotError, resolve_device
from models.diagnostics import amax_gain, capture_mappings, composite_products
from training.checkpoint import CheckpointError


@torch.no_grad()
def learned_mappings(model: torch.nn.Module, sequence: torch.Tensor) -> dict:
    """The token-averaged H_res, H_pre and H_post of every sub-layer on `sequence` ([1, T]), the composites over the
    two halves of the sub-layers and the Amax gain curves: the content of mappings.json."""
    with capture_mappings(model) as records:
        model(sequence)
    if not records:
        raise ValueError("the model has no residual mappings (residual baseline)")
    H_res = [r["H_res"][0].double() for r in records]  # [T, n, n] per sub-layer
    averaged = [h.mean(0) for h in H_res]
    L, half = len(averaged), len(averaged) // 2
    ranges = [(0, half - 1), (half, L - 1)] if L >= 2 else [(0, L - 1)]
    return {
        "n": averaged[0].shape[-1],
        "sublayers": L,
        "H_res": [m.tolist() for m in averaged],
        # H_b @ ... @ H_a: the first of the composite products of sub-layers a..b (models/diagnostics.py)
        "composite": {f"{a + 1}-{b + 1}": composite_products(averaged[a : b + 1])[0].tolist() for a, b in ranges},
        "H_pre": [r["H_pre"][0].double().mean(0).tolist() for r in records],
        "H_post": [r["H_post"][0].double().mean(0).tolist() for r in records],
        "amax": amax_gain([h for h in H_res]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.mappings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="training run directory (its final model is used)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)  # a free GPU of this machine for this process, when it has one
    except GpuSlotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from corpus import load_shard, val_batches
    from training.checkpoint import load_for_eval

    status_file = Path(args.run) / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    if status.get("status") == "diverged":  # no final model; say so instead of failing the workflow
        skipped = {"run": args.run, "variant": Path(args.run).parent.name, "skipped": status.get("reason", "diverged")}
        atomic_write_text(Path(args.out), json.dumps(skipped, indent=1) + "\n")
        return 0
    try:
        model, _, sidecar = load_for_eval(args.run, device)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train = sidecar["train_config"]
    tokens = load_shard(Path(sidecar["data"]["shards"]), "val")
    sequence = val_batches(tokens, 1, train["seq_len"], 1)[0][:, :-1].to(device)
    try:
        result = learned_mappings(model, sequence)
    except ValueError as err:
        print(f"error: {args.run}: {err}", file=sys.stderr)
        return 2
    result = {"run": args.run, "variant": Path(args.run).parent.name, "arch": sidecar["config"]["arch"], **result}
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
