"""`python -m analysis.tables --index runs.json --measurements measurements.json --out results/tables`.

The paper's Tables 1-5 and its 6.7% overhead figure, each rebuilt from our runs with the paper's values in
columns (or, for Table 4, rows) beside ours, never instead of them. Every table is written as `NAME.csv` (the
numbers, unrounded) and `NAME.md` (a header line saying what was measured at which tier and scale, the table,
and notes on choices made).

This module is also the analysis' data layer: reading the index and the files a run leaves (metrics.jsonl,
diagnostics.jsonl, eval.json, checkpoint_losses.json, mappings.json), the paired per-seed loss gaps and the
Student-t confidence interval. The figures and the report import them from here so that "the final gap of mHC"
has one definition.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import paper

# --------------------------------------------------------------------------------------------------------------------
# Reading the index and run outputs


def load_json(path: str | Path | None) -> Any | None:
    """A JSON file's content, or None when the path is None, missing or unreadable (inputs may not exist yet)."""
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def load_index(path: str | Path) -> dict[str, Any]:
    """The run index written by analysis.index; a missing index is an error (nothing can be built without it)."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise FileNotFoundError(f"run index {path} is missing or not a JSON object")
    return data


def read_jsonl(path: str | Path | None) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file; blank or truncated lines (a run killed mid-write) are skipped."""
    if not path or not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def train_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training-step rows of metrics.jsonl (the ones that carry a training loss)."""
    return [r for r in records if "loss" in r and "step" in r]


def val_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl with a validation loss (step 0 and every eval interval)."""
    return [r for r in records if "val_loss" in r and "step" in r]


def amax_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Amax summary rows of metrics.jsonl (HC/mHC only)."""
    return [r for r in records if "amax_composite_fwd" in r]


def all_runs(index: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run of the index, with its key under "key"."""
    return [{"key": key, **run} for key, run in (index.get("runs") or {}).items()]


def find_runs(
    index: dict[str, Any],
    *,
    scale: str | None = None,
    variant: str | None = None,
    seeds: Iterable[int] | None = None,
) -> list[dict[str, Any]]:
    """Runs matching (scale, variant, seed set), sorted by seed; looked up by fields, not by key spelling."""
    wanted = None if seeds is None else {int(s) for s in seeds}
    runs = [
        r
        for r in all_runs(index)
        if (scale is None or r.get("scale") == scale)
        and (variant is None or r.get("variant") == variant)
        and (wanted is None or int(r.get("seed", -1)) in wanted)
    ]
    return sorted(runs, key=lambda r: int(r.get("seed", 0)))


def find_run(index: dict[str, Any], scale: str | None, variant: str, seed: int | None = None) -> dict[str, Any] | None:
    """One run: the given seed, or (seed None) the lowest seed that has any output; None when there is none."""
    runs = find_runs(index, scale=scale, variant=variant, seeds=None if seed is None else [seed])
    if seed is None:
        runs = [r for r in runs if r.get("status") != "missing"] or runs
    return runs[0] if runs else None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def final_val_loss(run: dict[str, Any] | None) -> float | None:
    """A run's final validation loss when it completed (diverged or failed runs have no comparable final loss)."""
    if not run or run.get("status") != "completed":
        return None
    value = run.get("final_val_loss")
    return float(value) if is_number(value) else None


def section_seeds(section: dict[str, Any]) -> list[int]:
    """Seeds of an index section, which spells them "seeds" (a list) or "seed" (one)."""
    if section.get("seeds") is not None:
        return [int(s) for s in section["seeds"]]
    if section.get("seed") is not None:
        return [int(section["seed"])]
    return []


def paired_gaps(
    index: dict[str, Any], scale: str | None, variant: str, reference: str, seeds: Iterable[int]
) -> dict[int, float]:
    """Final val loss of `variant` minus that of `reference`, per seed where both completed.

    Paired by seed (same data order and initialisation stream), which removes the seed-to-seed variation the two
    runs share; the CI of the mean gap is then taken over these per-seed differences."""
    gaps: dict[int, float] = {}
    for seed in seeds:
        a = final_val_loss(find_run(index, scale, variant, int(seed)))
        b = final_val_loss(find_run(index, scale, reference, int(seed)))
        if a is not None and b is not None:
            gaps[int(seed)] = a - b
    return gaps


def last_diagnostics(run: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last record of a run's diagnostics.jsonl (the end-of-training Amax curves), or None."""
    if not run:
        return None
    records = [r for r in read_jsonl(run.get("diagnostics")) if "composite_forward" in r]
    return records[-1] if records else None


def checkpoint_points(run: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Token-scaling points of a run: checkpoint_losses.json, else the val_loss rows of metrics.jsonl.

    The fallback keeps Fig. 6b drawable before the checkpoint evaluation has run; the report says which was used
    through `points_source`."""
    if not run:
        return []
    data = load_json(run.get("checkpoint_losses"))
    if isinstance(data, dict) and data.get("points"):
        return [p for p in data["points"] if is_number(p.get("val_loss"))]
    return [
        {"step": r["step"], "tokens": r.get("tokens"), "val_loss": r["val_loss"]}
        for r in val_rows(read_jsonl(run.get("metrics")))
        if is_number(r.get("val_loss")) and r.get("step", 0) > 0
    ]


def points_source(run: dict[str, Any] | None) -> str:
    data = load_json((run or {}).get("checkpoint_losses"))
    return "checkpoint_losses.json" if isinstance(data, dict) and data.get("points") else "metrics.jsonl val_loss"


def amax_run(index: dict[str, Any], variant: str) -> dict[str, Any] | None:
    """The main-scale run whose last diagnostics record Fig. 3/7 show: seed 0, else the lowest seed with one."""
    main = index.get("main") or {}
    scale = main.get("scale")
    run = find_run(index, scale, variant, 0)
    if last_diagnostics(run) is not None:
        return run
    for candidate in find_runs(index, scale=scale, variant=variant):
        if last_diagnostics(candidate) is not None:
            return candidate
    return None


def compute_scaling_points(index: dict[str, Any]) -> list[dict[str, Any]]:
    """Per compute-scaling scale: FLOPs, the paired mHC − baseline final val-loss gap (CI) and the loss ratio."""
    section = index.get("compute_scaling") or {}
    scales = index.get("scales") or {}
    points = []
    for scale in section.get("scales") or []:
        # every seed run at this scale counts (the main scale has the main comparison's seeds)
        seeds = sorted({int(r["seed"]) for r in (index.get("runs") or {}).values() if r.get("scale") == scale})
        spec = scales.get(scale) or {}
        flops = spec.get("flops")
        if not is_number(flops) and is_number(spec.get("params_active")) and is_number(spec.get("tokens")):
            flops = 6.0 * spec["params_active"] * spec["tokens"]
        gaps = paired_gaps(index, scale, "mhc", "baseline", seeds)
        ratios = [
            final_val_loss(find_run(index, scale, "mhc", s)) / final_val_loss(find_run(index, scale, "baseline", s))
            for s in gaps
        ]
        if gaps and is_number(flops):
            points.append(
                {"scale": scale, "flops": float(flops), "gap": mean_ci(list(gaps.values())), "ratio": mean_ci(ratios)}
            )
    return points


def token_scaling_points(index: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """tokens, gap (mHC − baseline) and ratio at the token-scaling checkpoints both runs evaluated."""
    section = index.get("token_scaling") or {}
    scale, seeds = section.get("scale"), section_seeds(section)
    frames, sources = [], set()
    for seed in seeds:
        runs = {v: find_run(index, scale, v, seed) for v in ("baseline", "mhc")}
        pts = {v: pd.DataFrame(checkpoint_points(r), columns=["step", "tokens", "val_loss"]) for v, r in runs.items()}
        if any(p.empty for p in pts.values()):
            continue
        sources |= {points_source(r) for r in runs.values()}
        merged = pts["mhc"].merge(pts["baseline"], on="step", suffixes=("_mhc", "_base"))
        frames.append(
            pd.DataFrame(
                {
                    "seed": seed,
                    "step": merged["step"],
                    "tokens": merged["tokens_mhc"],
                    "gap": merged["val_loss_mhc"] - merged["val_loss_base"],
                    "ratio": merged["val_loss_mhc"] / merged["val_loss_base"],
                }
            )
        )
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["seed", "step", "tokens", "gap", "ratio"])
    )
    return frame, ", ".join(sorted(sources))


# --------------------------------------------------------------------------------------------------------------------
# Statistics

T95: dict[int, float] = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}  # fmt: skip
"""Two-sided 95% Student-t quantiles t_{0.975, dof}, used when scipy is not installed."""


def t_quantile(dof: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile for a `level` interval with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    try:
        from scipy import stats
    except ImportError:
        if abs(level - 0.95) > 1e-12:
            raise ValueError("without scipy only the 95% level is tabulated") from None
        return T95.get(dof, 1.96)
    return float(stats.t.ppf(0.5 + level / 2, dof))


@dataclass(frozen=True)
class CI:
    """Mean of n values with the half-width of its two-sided Student-t interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (n=1)"
        return f"{self.mean:+.{digits}f} ± {self.half_width:.{digits}f} (n={self.n})"


def mean_ci(values: Sequence[float], level: float = 0.95) -> CI:
    """Mean and Student-t CI half-width (n−1 dof, sample standard deviation) of a few seeds' values."""
    xs = [float(v) for v in values if is_number(v)]
    n = len(xs)
    if n == 0:
        return CI(math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return CI(mean, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return CI(mean, t_quantile(n - 1, level) * sd / math.sqrt(n), n)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    xs = [float(v) for v in values if is_number(v)]
    return sum(xs) / len(xs) if xs else None


# --------------------------------------------------------------------------------------------------------------------
# Tables and their files


@dataclass
class Table:
    """A built table: file stem, the frame, a header line saying what was measured where, and notes."""

    name: str
    title: str
    header: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def fmt(value: Any) -> str:
    """A cell for markdown: integers plainly, floats with 4 significant digits, missing as empty."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "✓" if value else ""
    if isinstance(value, (int, float)) and abs(value) >= 1e6:
        return f"{value:.3g}"  # parameter, token and FLOP counts (the CSV keeps every digit)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs `tabulate`, which the suite does not depend on)."""
    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def table_markdown(table: Table) -> str:
    parts = [f"## {table.title}", "", table.header, "", to_markdown(table.frame)]
    if table.notes:
        parts += ["", *[f"- {note}" for note in table.notes]]
    return "\n".join(parts) + "\n"


def write_table(table: Table, out: Path) -> list[Path]:
    """Writes NAME.csv and NAME.md; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{table.name}.csv", out / f"{table.name}.md"
    table.frame.to_csv(csv_path, index=False)
    md_path.write_text(table_markdown(table))
    return [csv_path, md_path]


def _where(index: dict[str, Any], scale: str | None, seeds: Sequence[int] | None = None) -> str:
    text = f"Tier `{index.get('tier', '?')}`, scale `{scale or '?'}`"
    if seeds is not None:
        text += f", seeds {list(seeds)}"
    return text


def _main_scale(index: dict[str, Any]) -> str | None:
    return (index.get("main") or {}).get("scale")


# ---- Table 1 -------------------------------------------------------------------------------------------------------


def table1_ablation(index: dict[str, Any]) -> Table:
    """Final val-loss gap of each ablation row to the first (baseline) row, paired by seed, beside Table 1."""
    section = index.get("ablation") or {}
    scale, seeds = section.get("scale"), section_seeds(section)
    rows = section.get("rows") or [{"variant": None, "res": r.res, "pre": r.pre, "post": r.post} for r in paper.TABLE1]
    reference = rows[0].get("variant")
    out = []
    for row in rows:
        variant = row.get("variant")
        gaps = paired_gaps(index, scale, variant, reference, seeds) if variant and reference else {}
        ci = mean_ci(list(gaps.values()))
        losses = [final_val_loss(find_run(index, scale, variant, s)) for s in seeds] if variant else []
        out.append(
            {
                "H_res": "✓" if row.get("res") else "",
                "H_pre": "✓" if row.get("pre") else "",
                "H_post": "✓" if row.get("post") else "",
                "variant": variant or "",
                "paper_gap": paper.table1_gap(bool(row.get("res")), bool(row.get("pre")), bool(row.get("post"))),
                "ours_gap": None if ci.n == 0 else ci.mean,
                "ours_ci95": None if ci.n < 2 else ci.half_width,
                "ours_seeds": ci.n,
                "ours_final_val_loss": mean_or_none(losses),
            }
        )
    frame = pd.DataFrame(out)
    header = (
        "Measured: final validation loss of each row minus that of the first (residual baseline) row, paired by "
        f"seed, mean over seeds (± 95% Student-t CI when ≥ 2 seeds). {_where(index, scale, seeds)}. "
        f"Paper: Table 1, scale {paper.TABLE1_SCALE}."
    )
    notes = [
        "A disabled mapping is fixed as in the paper: H_pre = uniform 1/n, H_post = ones, H_res = identity.",
        "Only completed runs count; a diverged or missing run leaves its seed out of the gap.",
    ]
    return Table("table1_ablation", "Table 1: ablation of the HC mappings", header, frame, notes)


# ---- Table 2 -------------------------------------------------------------------------------------------------------


def _paper_io(arch: str, n: int, C: int, op: str) -> tuple[int | None, int | None, str, str]:
    """Paper read/write elements and their expressions for one op; "a+b" ops sum their parts."""
    formula = paper.table2_residual(C) if arch == "baseline" else paper.table2_hc(n, C)
    exprs = paper.TABLE2_RESIDUAL_EXPR if arch == "baseline" else paper.TABLE2_HC_EXPR
    parts = op.split("+")
    if not all(p in formula for p in parts):
        return None, None, "", ""
    read = sum(formula[p][0] for p in parts)
    write = sum(formula[p][1] for p in parts)
    return read, write, " + ".join(exprs[p][0] for p in parts), " + ".join(exprs[p][1] for p in parts)


def table2_memory_access(index: dict[str, Any], measurements: dict[str, Any] | None) -> Table:
    """Per-op residual-stream reads/writes per token: Table 2's formula at our (n, C) beside the counted bytes."""
    traffic = list((measurements or {}).get("traffic") or [])
    if not traffic:  # paper-only rows at the main scale's width
        C = int(((index.get("scales") or {}).get(_main_scale(index)) or {}).get("dim", 0)) or None
        traffic = [
            {"scale": _main_scale(index), "arch": arch, "n": 1 if arch == "baseline" else paper.EXPANSION_RATE,
             "C": C, "op": op}
            for arch, ops in (("baseline", ("merge", "total")), ("mhc", paper.TABLE2_OPS))
            for op in ops
        ]  # fmt: skip
    out = []
    for rec in traffic:
        arch, n, C, op = rec.get("arch"), rec.get("n"), rec.get("C"), str(rec.get("op"))
        bpe = rec.get("bytes_per_element") or 4
        if C:
            read, write, read_expr, write_expr = _paper_io(str(arch), int(n or 1), int(C), op)
        else:
            read = write = None
            read_expr = write_expr = ""
        label = " + ".join(paper.TABLE2_OP_LABELS.get(p, p) for p in op.split("+"))
        rb, wb = rec.get("read_bytes"), rec.get("write_bytes")
        out.append(
            {
                "scale": rec.get("scale"),
                "arch": arch,
                "n": n,
                "C": C,
                "op": label,
                "paper_read_expr": read_expr,
                "paper_write_expr": write_expr,
                "paper_read": read,
                "paper_write": write,
                "ours_read": rb / bpe if is_number(rb) else None,
                "ours_write": wb / bpe if is_number(wb) else None,
                "ours_read_bytes": rb,
                "ours_write_bytes": wb,
            }
        )
    frame = pd.DataFrame(out)
    scales = sorted({str(r.get("scale")) for r in traffic})
    header = (
        "Measured: elements read and written per token by one sub-layer's residual-stream maintenance in the "
        "forward pass, counted op by op on the unfused reference path (bytes / bytes per element). "
        f"Tier `{index.get('tier', '?')}`, scales {scales}. Paper: Table 2's formulas evaluated at our n and C."
    )
    notes = [
        "HC and mHC share Table 2's unfused data movement; the baseline row is the plain residual (2C read, C write).",
        "Ops counted together (e.g. H_post + H_res + merge, one call of our reference path) are compared with "
        "the sum of the paper's rows.",
        "The fused post/res/merge kernel of §4.3.1 reads (n+1)C and writes nC instead of (3n+1)C and 3nC.",
    ]
    if not (measurements or {}).get("traffic"):
        notes.append("No traffic measurement was found: only the paper's formulas are shown.")
    return Table("table2_memory_access", "Table 2: memory access per token", header, frame, notes)


# ---- Table 3 -------------------------------------------------------------------------------------------------------


def table3_recompute(index: dict[str, Any], measurements: dict[str, Any] | None) -> Table:
    """Activations the connections store per token, without and with block recomputation, formula beside measured."""
    memory = list((measurements or {}).get("memory") or [])
    out = []
    for rec in memory:
        n, C, L, L_r = (int(rec.get(k) or 0) for k in ("n", "C", "L", "L_r"))
        bpe = rec.get("bytes_per_element") or 4

        def elements(key: str, _rec: dict = rec, _bpe: float = bpe) -> float | None:
            value = _rec.get(key)
            return value / _bpe if is_number(value) else None

        ours_without, ours_with = elements("measured_without"), elements("measured_with")
        formula_without, formula_with = elements("formula_without"), elements("formula_with")
        out.append(
            {
                "scale": rec.get("scale"),
                "n": n,
                "C": C,
                "L": L,
                "L_r": L_r,
                "paper_L_r_opt": paper.optimal_recompute_block(n, L) if n and L else None,
                "paper_resident": paper.resident_elements(n, C, L, L_r) if L_r else None,
                "paper_transient_peak": paper.transient_elements(n, C, L_r) if L_r else None,
                # Table 3's "stored" row as printed: x_l0 every L_r layers, F's output every layer
                "paper_stored_with": n * C * math.ceil(L / L_r) + L * C if L_r else None,
                "derived_without": formula_without,
                "ours_without": ours_without,
                "derived_with": formula_with,
                "ours_with": ours_with,
                "ours_over_derived_without": ours_without / formula_without
                if ours_without is not None and formula_without
                else None,
                "ours_over_derived_with": ours_with / formula_with if ours_with is not None and formula_with else None,
            }
        )
    columns = ["scale", "n", "C", "L", "L_r", "paper_L_r_opt", "paper_resident", "paper_transient_peak",
               "paper_stored_with", "derived_without", "ours_without", "derived_with", "ours_with",
               "ours_over_derived_without", "ours_over_derived_with"]  # fmt: skip
    frame = pd.DataFrame(out, columns=columns)
    header = (
        "Measured: elements per token that autograd saves for backward inside the connections (all sub-layers), "
        "without and with block recomputation at L_r (bytes / bytes per element). "
        f"Tier `{index.get('tier', '?')}`, scales {sorted({str(r.get('scale')) for r in memory})}. "
        "Paper: Table 3 sizes and §4.3.2's formulas."
    )
    notes = [
        "paper_stored_with = nC·⌈L/L_r⌉ + L·C is Table 3's 'stored' row as printed (x_l0 every L_r layers, F's "
        "output every layer). derived_without / derived_with are our derivation from Table 3's sizes, not numbers "
        "the paper prints: without = L·(nC + C) (x_l and F's output per layer); with = paper_stored_with + "
        "L·(n² + n) (the small H_res and H_post per layer, which a recomputing backward also needs).",
        "paper_resident = nC·⌈L/L_r⌉ (x_l0 of every block) and paper_transient_peak = (n+2)C·L_r are §4.3.2's "
        "terms; paper_L_r_opt = sqrt(nL/(n+2)) (Eq. 20).",
    ]
    for rec in memory[:1]:
        n, C = int(rec.get("n") or 0), int(rec.get("C") or 0)
        sizes = paper.table3_sizes(n, C)
        notes.append(
            f"Table 3 sizes at n={n}, C={C}: "
            + "; ".join(f"{name} = {sizes[name]} ({stored})" for name, _, stored in paper.TABLE3_ACTIVATIONS)
        )
    if not memory:
        notes.append("No memory measurement was found.")
    return Table("table3_recompute", "Table 3: stored and recomputed activations", header, frame, notes)


# ---- Table 4 -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """Where one Table 4 benchmark's score lives in lm-eval's results JSON.

    `tasks`: group or task names tried in order (the suite's name first); `metric`: the metric name before the
    comma of lm-eval's "metric,filter" keys; `filters`: preferred filters in order (any other filter of that metric
    is the last resort); `prefixes`: names of the subtasks to average when no group-level score was written."""

    name: str
    tasks: tuple[str, ...]
    metric: str
    filters: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "BBH",
        ("bbh_cot_fewshot", "bbh"),
        "exact_match",
        ("get-answer", "flexible-extract", "strict-match", "none"),
        ("bbh_cot_fewshot_", "bbh_"),
    ),
    Benchmark("DROP", ("drop",), "f1", ("none",)),
    Benchmark("GSM8K", ("gsm8k_cot", "gsm8k"), "exact_match", ("strict-match", "flexible-extract")),
    Benchmark("HellaSwag", ("hellaswag",), "acc_norm", ("none",)),
    Benchmark("MATH", ("minerva_math",), "exact_match", ("none",), ("minerva_math_",), ("minerva_math500",)),
    Benchmark("MMLU", ("mmlu",), "acc", ("none",), ("mmlu_",)),
    Benchmark("PIQA", ("piqa",), "acc", ("none",)),
    Benchmark("TriviaQA", ("triviaqa",), "exact_match", ("remove_whitespace", "none")),
)
"""Table 4's benchmarks in the paper's order, as eval/tasks/mhc_paper_suite.yaml runs them (lm-eval 0.4.13)."""

HELLASWAG_ACC = Benchmark("HellaSwag acc", ("hellaswag",), "acc", ("none",))


def benchmark_of_task(task: str) -> str | None:
    """The Table 4 benchmark an lm-eval task belongs to (piqa -> PIQA, mmlu_anatomy -> MMLU), else None."""
    for bench in BENCHMARKS:
        if task in bench.tasks or (any(task.startswith(p) for p in bench.prefixes) and task not in bench.exclude):
            return bench.name
    return None


def variant_arch(index: dict[str, Any], variant: str) -> str | None:
    """A variant's arch: from the index's `variants` table, else from any of its runs (old indexes lack the table)."""
    spec = (index.get("variants") or {}).get(variant) or {}
    if spec.get("arch"):
        return str(spec["arch"])
    run = next((r for r in find_runs(index, variant=variant) if r.get("arch")), None)
    return str(run["arch"]) if run else None


def pick_metric_key(scores: dict[str, Any], metric: str, filters: Sequence[str]) -> str | None:
    """The "metric,filter" key to report: the first preferred filter present, else any other filter of `metric`."""
    keys = [k for k, v in scores.items() if k.split(",")[0] == metric and is_number(v)]
    for f in filters:
        if f"{metric},{f}" in keys:
            return f"{metric},{f}"
    return sorted(keys)[0] if keys else None


def _leaf_tasks(data: dict[str, Any], group: str) -> list[str]:
    """The leaf tasks under a group, from lm-eval's "group_subtasks" (recursively: MMLU nests its categories)."""
    tree = data.get("group_subtasks") or {}
    if group not in tree:
        return []
    leaves: list[str] = []
    for child in tree[group]:
        leaves += _leaf_tasks(data, child) if child in tree else [child]
    return leaves


def benchmark_score(data: dict[str, Any], bench: Benchmark) -> tuple[float | None, str]:
    """(score in [0, 1], "task/metric,filter" it came from) of one benchmark in an lm-eval results JSON.

    Group-level scores are used when present (lm-eval writes them for groups with an aggregate_metric_list, weighted
    by size). Otherwise the subtasks are averaged, weighted by their effective sample counts when known."""
    results = data.get("results") or {}
    for task in bench.tasks:
        scores = results.get(task)
        if isinstance(scores, dict):
            key = pick_metric_key(scores, bench.metric, bench.filters)
            if key:
                return float(scores[key]), f"{task}/{key}"
    groups = set((data.get("group_subtasks") or {}).keys())
    leaves: list[str] = []
    for task in bench.tasks:
        leaves = _leaf_tasks(data, task)
        if leaves:
            break
    if not leaves and bench.prefixes:
        counted = set((data.get("n-samples") or {}).keys())
        leaves = sorted(
            t
            for t in results
            if t.startswith(bench.prefixes)
            and not t.startswith(bench.exclude)
            and t not in groups
            and (not counted or t in counted)
        )
    total = weight = 0.0
    used_key = None
    for task in leaves:
        scores = results.get(task)
        if not isinstance(scores, dict):
            continue
        key = pick_metric_key(scores, bench.metric, bench.filters)
        if not key:
            continue
        n = ((data.get("n-samples") or {}).get(task) or {}).get("effective") or 1
        total += float(scores[key]) * n
        weight += n
        used_key = key
    if weight:
        return total / weight, f"mean of {len(leaves)} subtasks/{used_key}"
    return None, ""


def eval_substitutions(data: dict[str, Any] | None) -> list[str]:
    """The local-data substitutions an evaluation used, as text (dict, list of strings or list of dicts)."""
    subs = (data or {}).get("mhc_substitutions")
    if not subs:
        return []
    if isinstance(subs, dict):
        return [f"{k}: {v}" for k, v in subs.items()]
    out = []
    for item in subs if isinstance(subs, list) else [subs]:
        if isinstance(item, dict):
            out.append("; ".join(f"{k}: {v}" for k, v in item.items()))
        else:
            out.append(str(item))
    return out


def eval_runs(index: dict[str, Any]) -> tuple[str | None, list[str], list[int]]:
    """(scale, variants, seeds) of the evaluation: the eval section names no scale, so the main scale is used."""
    section = index.get("eval") or {}
    scale = section.get("scale") or _main_scale(index)
    return scale, list(section.get("variants") or []), section_seeds(section)


def benchmark_means(index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """variant -> {"scores": {benchmark: mean ×100 or None}, "seeds": n, "keys": {benchmark: source}}."""
    scale, variants, seeds = eval_runs(index)
    out: dict[str, dict[str, Any]] = {}
    for variant in variants:
        files = [load_json(r.get("eval")) for r in find_runs(index, scale=scale, variant=variant, seeds=seeds)]
        # a results file that says the run diverged (no scores) is not a seed that was evaluated
        files = [f for f in files if isinstance(f, dict) and not f.get("mhc_skipped")]
        scores, keys = {}, {}
        for b in (*BENCHMARKS, HELLASWAG_ACC):
            found = [benchmark_score(f, b) for f in files]
            values = [v for v, _ in found if v is not None]
            scores[b.name] = 100.0 * sum(values) / len(values) if values else None
            keys[b.name] = sorted({k for v, k in found if v is not None})
        out[variant] = {"scores": scores, "seeds": len(files), "keys": keys}
    return out


def table4_benchmarks(index: dict[str, Any]) -> Table:
    """Our per-variant benchmark means (×100) as rows below the paper's three 27B reference rows."""
    scale, variants, seeds = eval_runs(index)
    means = benchmark_means(index)
    names = [b.name for b in BENCHMARKS]
    rows = []
    for variant, label in paper.TABLE4_ROW_LABELS.items():
        rows.append({"source": "paper", "row": label, "seeds": None, **paper.TABLE4[variant]})
    for variant in variants:
        m = means[variant]
        scores = {k: m["scores"][k] for k in names}
        rows.append({"source": "ours", "row": f"{scale} {variant}", "seeds": m["seeds"], **scores})
    frame = pd.DataFrame(rows, columns=["source", "row", "seeds", *names])
    limit = (index.get("eval") or {}).get("limit")
    header = (
        "Measured: lm-eval 0.4.13 scores ×100 of the paper's suite (eval/tasks/mhc_paper_suite.yaml), mean over "
        f"the evaluated seeds. {_where(index, scale, seeds)}"
        + (f", at most {limit} examples per task" if limit else "")
        + ". Paper: Table 4's 27B rows (reference rows, not our scale)."
    )
    shots = ", ".join(f"{k} {paper.TABLE4_SHOTS[k]}-shot ({paper.TABLE4_METRICS[k]})" for k in names)
    notes = [
        f"Paper shots and metrics: {shots}.",
        "Our metric per benchmark (lm-eval key, preferred filter first): BBH exact_match of the CoT few-shot group "
        "with the get-answer filter (else flexible-extract, strict-match, none); DROP f1; GSM8K (gsm8k_cot) "
        "exact_match strict-match; HellaSwag acc_norm; MATH (minerva_math) exact_match; MMLU acc; PIQA acc; "
        "TriviaQA exact_match remove_whitespace. Group scores are lm-eval's size-weighted aggregates; without one "
        "the subtasks are averaged weighted by their sample counts.",
        'HellaSwag: the paper says "Acc."; we show acc_norm (length-normalised, the usual HellaSwag number). '
        "acc (unnormalised): "
        + (", ".join(f"{v} {fmt(means[v]['scores'][HELLASWAG_ACC.name])}" for v in variants) or "not evaluated")
        + ".",
        "An empty cell means the benchmark was not in the evaluated results.",
    ]
    used = {b.name: sorted({k for v in variants for k in means[v]["keys"][b.name]}) for b in BENCHMARKS}
    if any(used.values()):
        notes.append("Result keys read: " + "; ".join(f"{b} ← {', '.join(k)}" for b, k in used.items() if k) + ".")
    return Table("table4_benchmarks", "Table 4: downstream benchmarks", header, frame, notes)


# ---- Table 5 -------------------------------------------------------------------------------------------------------

TABLE5_OURS: dict[str, tuple[str, ...]] = {
    "Active params": ("params_active",),
    "Total params": ("params_total",),
    "Layers": ("layers",),
    "Routed experts": ("routed",),
    "Active experts": ("active",),
    "Shared experts": ("shared",),
    "Dimension": ("dim",),
    "FFN dimension": ("expert_dim",),
    "Attention heads": ("heads",),
    "Sequence length": ("seq_len",),
    "Vocab size": ("vocab",),
    "Batch size (sequences)": ("batch_size",),
    "Training steps": ("steps",),
    "Training tokens": ("tokens",),
    "Warmup steps": ("warmup_steps",),
    "Base learning rate": ("lr",),
}
"""Table 5 attribute -> the index's `scales` key(s) holding our value."""


def scales_run(index: dict[str, Any]) -> list[str]:
    """Scales with at least one run that left output (status other than missing), in the index's scale order."""
    used = {r.get("scale") for r in all_runs(index) if r.get("status") not in (None, "missing")}
    return [s for s in (index.get("scales") or {}) if s in used]


def table5_configs(index: dict[str, Any]) -> Table:
    """Our scales' shapes and schedules as columns beside the paper's 3B/9B/27B/3B-1T columns."""
    scales = index.get("scales") or {}
    ours = scales_run(index)
    attributes = list(paper.TABLE5) + ["Training FLOPs (6·N_active·D)"]
    rows = []
    for attr in attributes:
        row: dict[str, Any] = {"attribute": attr}
        for col in paper.TABLE5_COLUMNS:
            if attr in paper.TABLE5:
                row[f"paper_{col}"] = paper.TABLE5[attr][col]
            else:
                row[f"paper_{col}"] = f"{paper.paper_flops(col):.3g} [derived]"
        for name in ours:
            spec = scales.get(name) or {}
            keys = ("flops",) if attr.startswith("Training FLOPs") else TABLE5_OURS.get(attr, ())
            value = next((spec[k] for k in keys if k in spec), None)
            row[f"ours_{name}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    header = (
        f"Our model and training settings from the index's `scales`. Tier `{index.get('tier', '?')}`, scales that "
        f"ran: {ours or 'none'}. Paper: Table 5 (Appendix A.1), values as printed."
    )
    notes = [
        "Our parameter counts and FLOPs are the index's (6·N_active·D with N the active non-embedding parameters); "
        "the paper's FLOPs row is derived as 6 × active params × tokens, the paper gives none.",
        "Our rows without a value are settings the index does not record per scale (they follow the scale's "
        "registry entry in models/registry.py).",
    ]
    return Table("table5_configs", "Table 5: model specs and hyper-parameters", header, frame, notes)


# ---- Overhead ------------------------------------------------------------------------------------------------------


def overhead(index: dict[str, Any], measurements: dict[str, Any] | None) -> Table:
    """Step time of each arch relative to the baseline of the same scale, beside the paper's 6.7% for mHC."""
    records = list((measurements or {}).get("overhead") or [])
    rows = []
    for rec in records:
        ratio = rec.get("ratio")
        if not is_number(ratio) and is_number(rec.get("step_ms")) and rec.get("baseline_ms"):
            ratio = rec["step_ms"] / rec["baseline_ms"]
        arch = rec.get("arch")
        rows.append(
            {
                "scale": rec.get("scale"),
                "arch": arch,
                "device": rec.get("device") or (measurements or {}).get("device"),
                "kernels": rec.get("kernels"),
                "baseline_ms": rec.get("baseline_ms"),
                "step_ms": rec.get("step_ms"),
                "ours_ratio": ratio,
                "ours_overhead_pct": 100.0 * (ratio - 1.0) if is_number(ratio) else None,
                "paper_overhead_pct": 100.0 * paper.OVERHEAD_N4 if arch == "mhc" else None,
            }
        )
    columns = ["scale", "arch", "device", "kernels", "baseline_ms", "step_ms", "ours_ratio", "ours_overhead_pct",
               "paper_overhead_pct"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    machine = (measurements or {}).get("machine", "?")
    header = (
        "Measured: median forward+backward step time of each arch over the residual baseline of the same model "
        f"(same batch). Tier `{index.get('tier', '?')}`, machine: {machine}. "
        "Paper: mHC with n = 4 adds 6.7% training time (§4.3; fused kernels, in-house GPU cluster, DualPipe)."
    )
    notes = [
        "kernels = reference is the unfused PyTorch path (CPU); triton is the fused kernels. The paper's 6.7% "
        "is end-to-end training time with fused TileLang kernels and communication overlap, so only a fused GPU "
        "measurement is comparable.",
        "The paper gives no overhead figure for HC.",
    ]
    if not records:
        notes.append("No overhead measurement was found.")
    return Table("overhead", "Training-time overhead", header, frame, notes)


# --------------------------------------------------------------------------------------------------------------------


def build_tables(index: dict[str, Any], measurements: dict[str, Any] | None) -> list[Table]:
    """Every table, in the paper's order, then the per-item benchmark comparison."""
    from .benchmarks import benchmark_table  # (it reads runs through this module)

    return [
        table1_ablation(index),
        table2_memory_access(index, measurements),
        table3_recompute(index, measurements),
        table4_benchmarks(index),
        table5_configs(index),
        overhead(index, measurements),
        benchmark_table(index),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="results/analysis/runs.json")
    parser.add_argument("--measurements", default=None, help="results/analysis/measurements.json (optional)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    try:
        index = load_index(args.index)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    measurements = load_json(args.measurements)
    if args.measurements and measurements is None:
        print(f"warning: {args.measurements} is missing; Tables 2, 3 and overhead show the paper only", file=sys.stderr)
    out = Path(args.out)
    tables = build_tables(index, measurements)
    for table in tables:
        write_table(table, out)
    print(f"{out}: {', '.join(t.name for t in tables)} (.csv, .md)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
