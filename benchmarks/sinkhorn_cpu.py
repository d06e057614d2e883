"""Sinkhorn on the CPU: the unrolled-autograd definition against the hand-written backward the PyTorch path uses.

    python -m benchmarks.sinkhorn_cpu [--tokens 2048] [--n 4] [--scale cpu-dense-d8] [--steps 10] [--threads 1]

Times forward + backward of `models.kernels.sinkhorn.sinkhorn` (autograd through 20 unrolled iterations, the
reference definition) and `sinkhorn_fast` (token-last layout, backward written out) on random logits with a random
upstream gradient, then the training step of the whole mHC model of `--scale` with each of them in the connections
(the residual baseline in the same run as the reference for the ratios). Prints a markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable

import torch

from analysis.measure import machine
from benchmarks.step_time import step
from common.timing import median_seconds
from models.kernels import sinkhorn, torch_ops
from models.registry import get_scale, model_config
from models.transformer import Transformer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--scale", default="cpu-dense-d8")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    logits = (3 * torch.randn(args.tokens, args.n, args.n)).requires_grad_()
    upstream = torch.randn(args.tokens, args.n, args.n)
    ops = {"autograd": sinkhorn.sinkhorn, "fast": sinkhorn.sinkhorn_fast}
    op_ms = {}
    for name, fn in ops.items():

        def run(fn: Callable = fn) -> None:
            fn(logits, 20).backward(upstream)
            logits.grad = None

        op_ms[name] = 1e3 * median_seconds(run, 50)

    train = get_scale(args.scale).train
    tokens = torch.randint(0, 4096, (train.batch_size, train.seq_len + 1))
    models = {}
    for arch in ("baseline", "mhc"):
        torch.manual_seed(0)
        models[arch] = Transformer(model_config(args.scale, arch))
    step_ms = {"baseline": 1e3 * median_seconds(lambda: step(models["baseline"], tokens), args.steps)}
    for name, fn in ops.items():
        torch_ops.sinkhorn_fast = fn  # the PyTorch path's Sinkhorn, swapped for this measurement only
        step_ms[f"mhc ({name})"] = 1e3 * median_seconds(lambda: step(models["mhc"], tokens), args.steps)
    torch_ops.sinkhorn_fast = ops["fast"]

    print(f"{machine()}, {args.threads} thread(s); Sinkhorn: {args.tokens} tokens x {args.n}x{args.n}, 20 iterations")
    for name, ms in op_ms.items():
        print(f"  sinkhorn {name:9s} fwd+bwd {ms:7.2f} ms")
    print(f"  speed-up {op_ms['autograd'] / op_ms['fast']:.2f}x")
    print(f"training step, {args.scale}, batch {train.batch_size} x {train.seq_len}:")
    for name, ms in step_ms.items():
        print(f"  {name:16s} {ms:8.1f} ms   / baseline {ms / step_ms['baseline']:.2f}")
    print("markdown row:")
    print(
        f"| {datetime.date.today().isoformat()} | {machine()} | {args.threads} | {args.tokens}x{args.n}x{args.n} | "
        f"{op_ms['autograd']:.2f} | {op_ms['fast']:.2f} | {op_ms['autograd'] / op_ms['fast']:.2f} | {args.scale} | "
        f"{step_ms['mhc (autograd)'] / step_ms['baseline']:.2f} | {step_ms['mhc (fast)'] / step_ms['baseline']:.2f} |"
    )


if __name__ == "__main__":
    main()
