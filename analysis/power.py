"""How many seeds a paired comparison needs, and what the seeds a tier ran can detect (the formula and its
functions are in analysis/stats.py; they stay importable from here). `python -m analysis.power --runs DIR...` reads the
final validation losses of pilot runs laid out as <run>/<variant>/seed<N>/metrics.jsonl and prints sd(d), the
detectable gap at each number of seeds and the seeds needed for `--target`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .results import load_json, read_jsonl, val_rows
from .stats import detectable_gap, paired_sd, seeds_needed


def final_val_loss(run: Path) -> float | None:
    """The last validation loss of a completed run folder (None while it runs, or when it diverged)."""
    status = load_json(run / "status.json")
    if not isinstance(status, dict) or status.get("status") != "completed":
        return None
    rows = val_rows(read_jsonl(run / "metrics.jsonl"))
    return rows[-1]["val_loss"] if rows else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.power", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="folder with <variant>/seed<N>/metrics.jsonl")
    parser.add_argument("--variant", default="mhc")
    parser.add_argument("--reference", default="baseline")
    parser.add_argument("--target", type=float, default=0.021, help="gap to detect, nats (paper: 0.021)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8)
    args = parser.parse_args(argv)
    root = Path(args.runs)
    gaps = {}
    for seed_dir in sorted((root / args.variant).glob("seed*")):
        other = root / args.reference / seed_dir.name
        if (seed_dir / "metrics.jsonl").is_file() and (other / "metrics.jsonl").is_file():
            a, b = final_val_loss(seed_dir), final_val_loss(other)
            if a is not None and b is not None:
                gaps[seed_dir.name] = a - b
    if len(gaps) < 2:
        print(f"error: fewer than 2 paired seeds under {root}", file=sys.stderr)
        return 2
    sd = paired_sd(list(gaps.values()))
    mean = sum(gaps.values()) / len(gaps)
    print(f"gaps {args.variant} - {args.reference}: " + ", ".join(f"{k} {v:+.4f}" for k, v in gaps.items()))
    print(f"mean {mean:+.4f}, paired sd {sd:.4f} ({len(gaps)} seeds)")
    for n in (2, 3, 4, 5, 6, 8, 10, 12):
        print(f"  {n:2d} seeds: detectable gap {detectable_gap(sd, n, args.alpha, args.power):.4f}")
    need = seeds_needed(sd, args.target, args.alpha, args.power)
    print(f"seeds needed for |gap| >= {args.target}: {need if need else '> 200'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
