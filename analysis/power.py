"""How many seeds a paired comparison needs, and what the seeds a tier ran can detect.

The main comparison is paired: for one seed every variant starts from the same shared weights and sees the same
batches, so the quantity that matters is the per-seed gap d_s = loss(variant, s) - loss(baseline, s) and its standard
deviation across seeds, sd(d). With n seeds, a two-sided paired t-test at level alpha detects a true gap delta with
probability `power` when

    |delta| >= (t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd(d) / sqrt(n)          (the minimum detectable effect)

(the usual approximation that ignores the non-central t's skew). `python -m analysis.power --runs DIR...` reads the
final validation losses of pilot runs laid out as <run>/<variant>/seed<N>/metrics.jsonl and prints sd(d), the
detectable gap at each number of seeds and the seeds needed for `--target`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from .tables import load_json, read_jsonl, t_quantile, val_rows


def paired_sd(gaps: Sequence[float]) -> float:
    """Sample standard deviation (n - 1) of the per-seed gaps; NaN with fewer than 2."""
    xs = [float(g) for g in gaps]
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


def detectable_gap(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest |gap| a paired two-sided t-test over n seeds detects with probability `power` (NaN for n < 2)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    # two-sided quantiles of `tables.t_quantile`: level 1 - alpha gives t_{1-alpha/2}; level 2 power - 1 gives t_power
    return (t_quantile(n - 1, 1 - alpha) + t_quantile(n - 1, 2 * power - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, target: float, alpha: float = 0.05, power: float = 0.8, most: int = 200) -> int | None:
    """The fewest seeds (>= 2) whose detectable gap is at most `target`; None if more than `most` would be needed."""
    for n in range(2, most + 1):
        if detectable_gap(sd, n, alpha, power) <= target:
            return n
    return None


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
