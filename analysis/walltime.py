"""`python -m analysis.walltime --tier cpu`: wall time per rule from Snakemake's `benchmark:` files, as markdown.

Every rule of the workflow writes `results/<tier>/benchmarks/<rule>/...tsv` (prepare_data, shared by tiers, writes
`results/benchmarks/prepare_data/`). The table gives per rule the number of jobs, their summed and longest wall
time, and the summed CPU time; the README's tier table is built from it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def rule_times(root: Path, per_file: bool = False) -> dict[str, list[dict[str, float]]]:
    """rule -> one {"s", "cpu_time"} per job, from every benchmark file below `root` (`per_file`: one entry per
    file, named "rule (file)", for the data preparation that tiers share)."""
    out: dict[str, list[dict[str, float]]] = {}
    for path in sorted(root.rglob("*.tsv")):
        rule = path.relative_to(root).parts[0].removesuffix(".tsv")
        if per_file:
            rule = f"{rule} ({path.stem})"
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows:
            cpu = rows[-1].get("cpu_time", "0")
            out.setdefault(rule, []).append({"s": float(rows[-1]["s"]), "cpu_time": float(cpu or 0)})
    return out


def markdown(times: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| rule | jobs | total wall (min) | longest job (min) | total CPU (min) |", "|---|---|---|---|---|"]
    for rule, jobs in sorted(times.items(), key=lambda kv: -sum(j["s"] for j in kv[1])):
        total, longest, cpu = sum(j["s"] for j in jobs), max(j["s"] for j in jobs), sum(j["cpu_time"] for j in jobs)
        lines.append(f"| {rule} | {len(jobs)} | {total / 60:.1f} | {longest / 60:.1f} | {cpu / 60:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.walltime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", required=True)
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    times = rule_times(Path(args.results) / args.tier / "benchmarks")
    shared = Path(args.results) / "benchmarks"
    if shared.is_dir():
        times.update(rule_times(shared, per_file=True))
    if not times:
        print(f"error: no benchmark files under {args.results}/{args.tier}/benchmarks", file=sys.stderr)
        return 2
    print(markdown(times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
