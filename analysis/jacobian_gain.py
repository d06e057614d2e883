"""`python -m analysis.jacobian_gain --run DIR --out FILE`: the Jacobian gains of a run's model, trained and at init.

For the run's final model and for the same model at initialisation (rebuilt from the run's config and seed as the
trainer builds it: `torch.manual_seed(seed)`, then `Transformer(model_config)`), measures the single-sub-layer and
composite forward (JVP) and backward (VJP) gains of the residual state (models/jacobian_gain.py, where they are
defined) in float32 on the first validation windows of the run's data (`--batch` sequences of `--seq` tokens;
a seeded batch of random token ids when the run's shards are gone, recorded as `"tokens": "random"`). Writes one
JSON: {"run", "variant", "arch", "sublayers", "settings", "tokens", "init": {...}, "final": {...}}; "init" and "final"
also say how far the residual path alone is from the identity (models/diagnostics.py `residual_path_deviation`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common.files import atomic_write_text
from common.gpu_slots import GpuSlotError, resolve_device
from models.config import model_config_from_record
from models.diagnostics import residual_path_deviation
from models.jacobian_gain import jacobian_gains
from models.transformer import Transformer
from training.checkpoint import CheckpointError


def initial_model(sidecar: dict, device: str = "cpu") -> Transformer:
    """The run's model at initialisation, as `training.trainer.Trainer` builds it (in eval mode)."""
    torch.manual_seed(int(sidecar["config"]["seed"]))
    model = Transformer(model_config_from_record(sidecar["model_config"]))
    return model.to(device).eval()


def measurement_tokens(sidecar: dict, batch: int, seq: int, seed: int) -> tuple[torch.Tensor, str]:
    """([batch, seq] token ids, "validation" | "random"): the first validation windows of the run's shards, or seeded
    random ids when the shards cannot be read (a validation set shorter than `batch` windows gives fewer rows)."""
    from corpus import load_shard, val_batches

    try:
        tokens = load_shard(Path(sidecar["data"]["shards"]), "val")
        return val_batches(tokens, batch, seq, 1)[0][:, :seq], "validation"
    except Exception:  # noqa: BLE001 - any unreadable or missing shard: fall back, and say so in the output
        vocab = int(sidecar["model_config"]["vocab_size"])
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab, (batch, seq), generator=generator), "random"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.jacobian_gain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="training run directory (its final model is used)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=4, help="sequences (default 4)")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sequence (default 64)")
    parser.add_argument("--probes", type=int, default=4, help="random directions per gain (default 4)")
    parser.add_argument("--power-iters", type=int, default=0, help="power iterations for sigma_max (default 0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random directions (default 0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    for name in ("batch", "seq", "probes"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.power_iters < 0:
        print(f"error: --power-iters must be >= 0, got {args.power_iters}", file=sys.stderr)
        return 2
    run = Path(args.run)
    if not run.is_dir():
        print(f"error: run directory {run} does not exist", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except GpuSlotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from training.checkpoint import load_for_eval

    status_file = run / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    if status.get("status") == "diverged":  # no final model; say so instead of failing the workflow (as mappings)
        skipped = {"run": str(run), "variant": run.parent.name, "skipped": status.get("reason", "diverged")}
        atomic_write_text(Path(args.out), json.dumps(skipped, indent=1) + "\n")
        return 0
    try:
        final, _, sidecar = load_for_eval(run, device)
    except (CheckpointError, OSError, KeyError, ValueError) as err:
        print(f"error: {run}: no usable final model: {err}", file=sys.stderr)
        return 2
    max_len = final.cfg.max_seq_len
    if args.seq > max_len:
        print(f"error: --seq {args.seq} exceeds the model's max_seq_len {max_len}", file=sys.stderr)
        return 2
    tokens, source = measurement_tokens(sidecar, args.batch, args.seq, args.seed)
    tokens = tokens.to(device)
    result: dict = {
        "run": str(run),
        "variant": run.parent.name,
        "arch": sidecar["config"]["arch"],
        "sublayers": 2 * final.cfg.n_layers,
        "settings": {
            "batch": int(tokens.shape[0]),
            "seq": int(tokens.shape[1]),
            "probes": args.probes,
            "power_iters": args.power_iters,
            "seed": args.seed,
            "dtype": "float32",
            "device": str(device),
            "mode": "eager (reference connection kernels, unrolled Sinkhorn, padded MoE experts, math SDPA)",
        },
        "tokens": source,
    }
    for name, build in (("init", lambda: initial_model(sidecar, device)), ("final", lambda: final)):
        model = build().float()
        start = time.perf_counter()
        try:
            gains = jacobian_gains(model, tokens, probes=args.probes, seed=args.seed, power_iters=args.power_iters)
        except FloatingPointError as err:
            # a trained model whose states overflow has no finite gain to report: say so, keep the rest
            print(f"warning: {name} model: {err}; its gains are recorded as not finite", file=sys.stderr)
            gains = {"not_finite": str(err)}
        # is the residual path alone (every sub-layer's output zeroed) the identity?
        identity = residual_path_deviation(model.eval(), tokens)
        result[name] = {**gains, "identity_path": identity, "seconds": round(time.perf_counter() - start, 3)}
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
