"""Parameter summary of a named scale and connection arch, computed on the meta device (no weights
are allocated).

    python -m models.summary --scale paper-3b --arch mhc [--set connection.n=2 ...]

prints one JSON object with total, active, embedding and connection parameter counts, the number of
connection parameters the mHC/HC/RMT/MUDD equations imply, and, for the paper's scales, Table 5's numbers and
our relative difference to them.

"Active" parameters follow Table 5's convention: everything a token touches except the input
embedding (the output head counts), with only n_active of the routed experts of each MoE layer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from .config import ConfigError, ModelConfig, apply_overrides, archs
from .registry import SCALES, get_scale, model_config
from .transformer import Transformer


def expected_connection_params(cfg: ModelConfig) -> int:
    """Connection parameters implied by the equations, for the whole model (2 sub-layers per block)."""
    conn, C = cfg.connection, cfg.dim
    n = conn.n
    if conn.arch == "baseline":
        per = 0
    elif conn.arch == "gain":
        per = 2  # a_l, b_l
    elif conn.arch == "rmt":
        # read and write keys [D_k, R] per sub-layer, plus the entry and exit keys of `connection_ends`
        keys = conn.rmt_key_dim * conn.rmt_rank
        return 2 * cfg.n_layers * 2 * keys + 2 * keys
    elif conn.arch == "mudd":
        # sub-layer l >= 1 reads W ways (4 attention, 2 FFN) of E = l + 1 entries: W1 [h, C], W2 [W E, h], B [W, E];
        # the exit: W = 1 over E = 2L + 1 entries. h = W E (x 4 at the exit), rounded up as the reference's round64
        def da(ways: int, entries: int, hidden: int) -> int:
            if conn.mudd_round64:
                hidden = (hidden // 64 + 1) * 64
            return C * hidden + hidden * ways * entries + ways * entries

        sublayers = 2 * cfg.n_layers
        total = sum(da(4 if l % 2 == 0 else 2, l + 1, (4 if l % 2 == 0 else 2) * (l + 1)) for l in range(1, sublayers))
        last = sublayers + 1
        return total + da(1, last, last * (4 if conn.mudd_expand_last else 1))
    elif conn.arch in ("mhc", "mhc-lite"):
        # phi [nC, width], b [width], one alpha per learned mapping (mHC Eq. 7); width = n^2 + 2n when all learned
        # (mHC-lite: one H_res logit per permutation, n! instead of n^2)
        res = n * n if conn.arch == "mhc" else math.factorial(n)
        learned = [(conn.learn_pre, n), (conn.learn_post, n), (conn.learn_res, res)]
        width = sum(w for on, w in learned if on)
        per = n * C * width + width + sum(on for on, _ in learned)
    else:
        # HC paper Eq. 25 with all mappings learnable: |theta_norm| + C(n+2) + n(n+2) + 2
        if not (conn.learn_pre and conn.learn_res and conn.learn_post and conn.hc_dynamic):
            return -1  # ablated HC: no closed form printed
        per = C + C * (n + 2) + n * (n + 2) + 2
    return 2 * cfg.n_layers * per


def count_parameters(model: Transformer) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel()
    inactive = 0
    for moe in model.moe_layers():
        per_expert = sum(p.numel() for p in moe.experts[0].parameters())
        inactive += (moe.cfg.n_routed - moe.cfg.n_active) * per_expert
    connection = sum(p.numel() for c in model.connection_modules() for p in c.parameters())
    return {
        "total_params": total,
        "active_params": total - embedding - inactive,
        "embedding_params": embedding,
        "head_params": model.head.weight.numel(),
        "connection_params": connection,
    }


def summarize(cfg: ModelConfig, paper: dict | None = None) -> dict:
    with torch.device("meta"):
        model = Transformer(cfg)
    out: dict = {
        "arch": cfg.connection.arch,
        "n_streams": cfg.connection.streams(),
        "layers": cfg.n_layers,
        "sublayers": 2 * cfg.n_layers,
        "dim": cfg.dim,
        "moe_layers": len(model.moe_layers()),
    }
    out.update(count_parameters(model))
    out["expected_connection_params"] = expected_connection_params(cfg)
    if paper:
        out["paper"] = paper
        out["rel_diff_total"] = round(out["total_params"] / paper["total_params"] - 1, 5)
        out["rel_diff_active"] = round(out["active_params"] / paper["active_params"] - 1, 5)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", required=True, help=f"one of: {', '.join(SCALES)}")
    parser.add_argument("--arch", default="baseline", help=" | ".join(archs()))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model-config override, e.g. connection.n=2 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        scale = get_scale(args.scale)
        cfg = apply_overrides(model_config(args.scale, "baseline"), [f"connection.arch={args.arch}", *args.overrides])
        # Table 5 describes the baseline; connection parameters come on top of it.
        result = summarize(cfg, scale.paper if args.arch == "baseline" else None)
        if scale.paper and args.arch != "baseline":
            result["paper"] = scale.paper
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
