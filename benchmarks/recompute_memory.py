"""Bytes saved for backward by the connection modules, with and without block recomputation, against the
paper's Table 3 accounting.

    python -m benchmarks.recompute_memory [--scales tiny gpu-s] [--arch mhc] [--tokens 256]

Counts every tensor autograd saves while a connection runs its own ops (coefficients, Sinkhorn, the
stream mixes), with `torch.autograd.graph.saved_tensors_hooks`, for one forward pass on the CPU. Table 3's
model of the same quantity, per token and in elements (L sub-layers, blocks of L_r):
    without recompute:  L (nC + C)                      x_l and F's output, every sub-layer
    with recompute:     nC ceil(L / L_r) + L (C + n^2 + n)   x_{l0} per block; F's output and the tiny
                                                        coefficients H_res, H_post per sub-layer
The measured "without" number is larger than its formula: autograd also keeps the coefficient path's
intermediates (RMS, projections, sigmoid outputs, and 2 t_max Sinkhorn iterates of n^2 + n values).
"""

from __future__ import annotations

import argparse
import datetime
import math

import torch

from models.config import ModelConfig
from models.diagnostics import saved_activation_bytes
from models.registry import model_config
from models.transformer import Transformer

from .step_time import machine


def measure(cfg: ModelConfig, tokens: int) -> int:
    torch.manual_seed(0)
    model = Transformer(cfg)
    seq = min(tokens, cfg.max_seq_len)
    batch = torch.randint(0, cfg.vocab_size, (tokens // seq, seq))
    with saved_activation_bytes(model) as counts:
        model(batch)
    return counts["connection"]


def table3(n: int, C: int, L: int, block: int) -> tuple[int, int]:
    """Table 3's elements per token without and with recompute."""
    return L * (n * C + C), n * C * math.ceil(L / block) + L * (C + n * n + n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", default=["tiny", "gpu-s"])
    parser.add_argument("--arch", default="mhc")
    parser.add_argument("--tokens", type=int, default=256, help="a multiple of the scale's max_seq_len if larger")
    args = parser.parse_args(argv)

    print(f"{datetime.date.today().isoformat()} on {machine()}, arch={args.arch}, {args.tokens} tokens, fp32")
    print("| scale | n | C | L | L_r | measured without (B/token) | Table 3 without | measured with | Table 3 with "
          "| saved |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.scales:
        base = model_config(name, args.arch, kernels="reference")
        with torch.device("meta"):
            block = Transformer(model_config(name, args.arch, recompute_layers=-1)).recompute_block_size()
        on = model_config(name, args.arch, kernels="reference", recompute_layers=block)
        n, C, L = base.connection.n, base.dim, 2 * base.n_layers
        without, with_rc = measure(base, args.tokens) / args.tokens, measure(on, args.tokens) / args.tokens
        f_without, f_with = (4 * e for e in table3(n, C, L, block))
        print(
            f"| {name} | {n} | {C} | {L} | {block} | {without:,.0f} | {f_without:,} | {with_rc:,.0f} | {f_with:,} "
            f"| {1 - with_rc / without:.1%} |"
        )


if __name__ == "__main__":
    main()
