"""Forward+backward step time of the connection variants relative to the residual baseline, same model otherwise.

    python -m benchmarks.step_time [--scale tiny] [--batch 8] [--seq 128] [--steps 20] [--device cpu]
                                   [--archs hc,mhc,mhc-lite]

Runs the archs interleaved (round-robin, so drift in machine load hits all alike), reports the median step time
of each and its ratio to the baseline, and prints a markdown row for BENCHMARKS.md with the date and machine
(columns: baseline ms, each arch's ms, each arch's ratio). The connections run on the pure-PyTorch reference
path (eager PyTorch on the CPU; the fused kernels in models/kernels/triton_ops.py need a GPU).
"""

from __future__ import annotations

import argparse
import datetime
from functools import partial

import torch
import torch.nn.functional as F

from analysis.measure import machine  # noqa: F401 - re-exported for the other benchmark scripts
from common.allocator import keep_freed_memory
from common.devices import auto_device
from common.timing import round_robin
from models.config import archs
from models.registry import model_config
from models.transformer import Transformer

ARCHS = ("hc", "mhc")  # compared with the baseline by default


def step(model: torch.nn.Module, tokens: torch.Tensor, logits_fn=None) -> None:
    """One forward + backward training step (next-token cross-entropy) the way each model trains: this suite's
    `Transformer` with `targets=` (the fused head and loss models.train uses), any other model as logits, upcast to
    float32, then F.cross_entropy (what Hugging Face's causal-LM loss does); `logits_fn(model, inputs)` for
    models whose forward is not `model(inputs) -> logits`."""
    if isinstance(model, Transformer):
        loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    else:
        logits = model(tokens[:, :-1]) if logits_fn is None else logits_fn(model, tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU), cpu, cuda, cuda:N")
    parser.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, of {', '.join(archs())}")
    args = parser.parse_args(argv)
    compared = [a for a in args.archs.split(",") if a and a != "baseline"]
    unknown = sorted(set(compared) - set(archs()))
    if unknown:
        parser.error(f"--archs: unknown {', '.join(unknown)} (known: {', '.join(archs())})")
    names = ["baseline", *compared]
    keep_freed_memory()  # the allocator setting training runs with (common/allocator.py)

    device = torch.device(auto_device(args.device))
    models = {}
    for arch in names:
        torch.manual_seed(0)
        cfg = model_config(args.scale, arch)
        models[arch] = Transformer(cfg).to(device)
    vocab = models["baseline"].cfg.vocab_size
    tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), device=device)

    steps = {arch: partial(step, models[arch], tokens) for arch in names}
    med = round_robin(steps, args.steps, args.warmup, device)
    print(f"scale={args.scale} batch={args.batch} seq={args.seq} steps={args.steps} device={device} ({machine()})")
    for arch in names:
        ratio = med[arch] / med["baseline"]
        print(f"  {arch:8s} median {med[arch] * 1e3:8.2f} ms/step   ratio vs baseline {ratio:.3f}")
    date = datetime.date.today().isoformat()
    times = " | ".join(f"{med[a] * 1e3:.1f}" for a in names)
    ratios = " | ".join(f"{med[a] / med['baseline']:.2f}" for a in compared)
    print(f"markdown row ({', '.join(names)} ms; {', '.join(compared)} / baseline):")
    print(f"| {date} | {machine()} | {args.scale} | {args.batch}x{args.seq} | {times} | {ratios} |")


if __name__ == "__main__":
    main()
