"""`python -m analysis.tables --index runs.json --measurements measurements.json --out results/tables`.

The paper's Tables 1-5 and its 6.7% overhead figure, each rebuilt from our runs with the paper's values in
columns (or, for Table 4, rows) beside ours, never instead of them, and the per-item comparison of the
multiple-choice benchmarks. Every table is written as `NAME.csv` (the numbers, unrounded) and `NAME.md` (a header
line saying what was measured at which tier and scale, the table, and notes on choices made). The names are
analysis/artifacts.py's; the runs are read through analysis/results.py and analysis/benchmarks.py.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import beyond, paper
from .artifacts import TABLE_NAMES
from .benchmarks import COMPARISONS, PairedItems, evaluated_files, pair_files, tasks_in
from .results import (
    BENCHMARKS,
    HELLASWAG_ACC,
    benchmark_means,
    benchmark_of_task,
    eval_runs,
    final_val_loss,
    find_run,
    load_json,
    main_scale,
    paired_gaps,
    parse_args_and_index,
    scales_run,
    section_seeds,
)
from .stats import is_number, mean_ci, mean_or_none

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
    """Paper read/write elements and their expressions for one op; "a+b" ops sum their parts (none for the variants
    beyond the paper, which Table 2 does not cover)."""
    if arch not in ("baseline", "hc", "mhc"):
        return None, None, "", ""
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
        C = int(((index.get("scales") or {}).get(main_scale(index)) or {}).get("dim", 0)) or None
        traffic = [
            {"scale": main_scale(index), "arch": arch, "n": 1 if arch == "baseline" else paper.EXPANSION_RATE,
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
        "Variants beyond the paper (mHC-lite, RMT, MUDDFormer) have no paper formula: their rows split each "
        "connection call at the sub-layer (read: before F; write: after F) and average over all sub-layers, since "
        "a dense connection's traffic grows with its depth.",
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


# ---- Per-item benchmarks (the multiple-choice tasks scored item by item) ------------------------------------------


ITEM_TABLE_COLUMNS: tuple[str, ...] = (
    "task",
    "comparison",
    "items",
    "seeds",
    "gold_ll_delta",
    "gold_ll_ci95",
    "gold_ll_ci95_items",
    "choice_logprob_delta",
    "choice_logprob_ci95",
    "acc_metric",
    "acc_a",
    "acc_b",
    "paper_delta_points",
)
"""Columns of `benchmark_table`'s frame."""


def comparison_label(a: str, b: str) -> str:
    return f"{a} - {b}"


def paper_delta_points(a: str, b: str, task: str) -> float | None:
    """The paper's 27B accuracy difference a − b in points for the task's benchmark, when Table 4 has it."""
    bench = benchmark_of_task(task)
    if bench is None or a not in paper.TABLE4 or b not in paper.TABLE4:
        return None
    return round(paper.TABLE4[a][bench] - paper.TABLE4[b][bench], 1)  # the table prints one decimal


def accuracy_metric(task: str) -> str:
    """The metric Table 4's reproduction reports for the task (acc_norm for HellaSwag, acc otherwise)."""
    bench = next((b for b in BENCHMARKS if b.name == benchmark_of_task(task)), None)
    return "acc_norm" if bench is not None and bench.metric == "acc_norm" else "acc"


def _points(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _table_row(pair: PairedItems) -> dict[str, Any]:
    metric = accuracy_metric(pair.task)
    acc_a, acc_b = (pair.acc_norm_a, pair.acc_norm_b) if metric == "acc_norm" else (pair.acc_a, pair.acc_b)
    return {
        "task": pair.task,
        "comparison": comparison_label(pair.a, pair.b),
        "items": pair.n_items,
        "seeds": pair.n_seeds,
        "gold_ll_delta": pair.seed_ci.mean if pair.seed_ci.n else None,
        "gold_ll_ci95": pair.seed_ci.half_width if pair.seed_ci.n >= 2 else None,
        "gold_ll_ci95_items": pair.item_ci.half_width if pair.item_ci.n >= 2 else None,
        "choice_logprob_delta": pair.choice_seed_ci.mean if pair.choice_seed_ci.n else None,
        "choice_logprob_ci95": pair.choice_seed_ci.half_width if pair.choice_seed_ci.n >= 2 else None,
        "acc_metric": metric,
        "acc_a": _points(acc_a),
        "acc_b": _points(acc_b),
        "paper_delta_points": paper_delta_points(pair.a, pair.b, pair.task),
    }


def _items_header(index: dict[str, Any]) -> str:
    scale, _, seeds = eval_runs(index)
    limit = (index.get("eval") or {}).get("limit")
    return (
        "Measured: per item of each multiple-choice benchmark, the summed log-likelihood of the gold answer's "
        "continuation (lm-eval's loglikelihood requests, `python -m eval.run --per-item`), variant a minus "
        "variant b, matched on doc_id within each seed and averaged over items, then over seeds. "
        f"Tier `{index.get('tier', '?')}`, scale `{scale or '?'}`, evaluation seeds {list(seeds)}"
        + (f", at most {limit} examples per task" if limit else "")
        + ". Positive Δ: the first variant assigns more probability to the gold answer. "
        "Accuracies ×100 on the compared items, mean over seeds. "
        "Paper: Table 4's 27B accuracy difference (points) for the same pair and benchmark."
    )


ITEM_TABLE_NOTES: tuple[str, ...] = (
    "gold_ll_ci95 is the 95% Student-t half-width over the per-seed mean Δ (n − 1 dof with n = seeds): each seed "
    "is one separately trained pair of models (shared initial weights and batches), so seeds are the unit of "
    "replication and this interval is the verdict. gold_ll_ci95_items is the half-width over items of Δ averaged "
    "over seeds: conditional on these trained models, it says how precisely the items pin down their difference "
    "but ignores training variance, so it is supplementary (with thousands of items, usually the narrower).",
    "choice_logprob = gold_ll − logsumexp(ll over the choices): the log-probability of the gold choice under the "
    "model's distribution renormalised over the choices; its Δ discounts a variant that only makes every "
    "continuation more likely.",
    "Tiny models score near chance (PIQA 50%, HellaSwag 25%), where accuracy differences are mostly item noise; "
    "this is why the tier scores log-likelihoods. acc_a / acc_b are shown for completeness, and the paper's 27B "
    "difference only for its sign.",
    "acc_a / acc_b are recomputed from the item records (acc: argmax of ll; acc_norm: argmax of ll / characters, "
    "Table 4's HellaSwag metric). The recorded length is the choice's without lm-eval's leading target delimiter, "
    "as lm-eval's own acc_norm counts it.",
    "Only items present in every compared run are used (inner join on doc_id), and only seeds where both variants "
    "were evaluated with items: a diverged run (results file with mhc_skipped) leaves its seed out.",
)


def benchmark_table(index: dict[str, Any]) -> Table:
    """One row per (task with items, comparison of evaluated variants): the paired Δ of gold log-likelihood."""
    _, variants, _ = eval_runs(index)
    pairs = [(a, b) for a, b in COMPARISONS if a in variants and b in variants]
    files = {v: evaluated_files(index, v) for v in {v for pair in pairs for v in pair}}
    tasks = tasks_in(index, (data for per_seed in files.values() for data in per_seed.values()))
    rows = [_table_row(pair_files(files[a], files[b], a, b, task)) for task in tasks for a, b in pairs]
    notes = list(ITEM_TABLE_NOTES)
    if not rows:
        notes.append(
            "No per-item records were found: the evaluation ran without --per-item (evaluation.per_item), no "
            "multiple-choice task was evaluated, or fewer than two of baseline/hc/mhc were evaluated."
        )
    frame = pd.DataFrame(rows, columns=list(ITEM_TABLE_COLUMNS))
    return Table("benchmarks_items", "Multiple-choice benchmarks item by item", _items_header(index), frame, notes)


# --------------------------------------------------------------------------------------------------------------------


# ---- beyond the paper -------------------------------------------------------------------------------------------


def beyond_paper(index: dict[str, Any]) -> Table:
    """The depth sweep of the section beyond the paper: per variant and depth, the loss gap to the baseline, how many
    runs diverged, and the gains (composite Amax of the stream variants; Jacobian gains of every variant, at
    initialisation and after training)."""
    section = index.get("beyond_paper") or {}
    frame = beyond.depth_table(beyond.depth_runs(index))
    depths = ", ".join(f"{p['scale']} ({p['sublayers']})" for p in section.get("depths") or [])
    header = (
        f"Measured: tier `{index.get('tier', '?')}`, depth sweep at {depths or 'no depths'} (scale (sub-layers)), "
        f"seeds {section.get('seeds')}; gap = final validation loss minus the baseline's at the same depth and seed "
        "(mean, 95% CI half-width over seeds). Paper: no counterpart (one depth per scale; RMT and MUDDFormer are "
        "dismissed without an experiment)."
    )
    notes = [
        "amax_composite: the largest composite Amax gain (forward or backward) of the last diagnostics row, the "
        "paper's Fig. 3/7 measure; it exists only for variants with an H_res (HC, mHC, mHC-lite).",
        "init_/final_composite_fwd: the Jacobian gain ||J v|| / ||v|| of a random perturbation v of the residual state "
        "entering the first sub-layer, through every sub-layer to the last (forward-mode AD); composite_bwd: the same "
        "for a random cotangent pulled back from the last sub-layer to the first; single_*_max: the largest "
        "single-sub-layer gain. Medians over seeds, measured in the run's own state space (n streams, RMT's matrix, "
        "MUDDFormer's list of earlier outputs, measured on its newest entry): analysis/jacobian_gain.py. inf: the "
        "trained model's states overflow, so its Jacobian is not finite.",
        f"identity_deviation: with every sub-layer's output zeroed, the largest distance (between unit vectors, 0..2) "
        f"of a sub-layer's input from the token's embedding at initialisation; ≤ {beyond.IDENTITY_TOLERANCE:g} means "
        "the residual path is the identity (models/diagnostics.py `residual_path_deviation`).",
        "diverged: non-finite loss or gradient ended the run; unstable: diverged, or a loss surge after warm-up "
        "(analysis/stability.py).",
    ]
    if frame.empty:
        notes.append("No run of the depth sweep has output yet (or this tier has no `beyond_paper` section).")
    return Table("beyond_paper", "Beyond the paper: depth sweep", header, frame, notes)


BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, Any] | None], Table]] = {
    "table1_ablation": lambda index, _: table1_ablation(index),
    "benchmarks_items": lambda index, _: benchmark_table(index),
    "table2_memory_access": table2_memory_access,
    "table3_recompute": table3_recompute,
    "table4_benchmarks": lambda index, _: table4_benchmarks(index),
    "table5_configs": lambda index, _: table5_configs(index),
    "overhead": overhead,
    "beyond_paper": lambda index, _: beyond_paper(index),
}
"""Table name (analysis/artifacts.py) -> its builder, called with the index and the measurements."""


def build_tables(index: dict[str, Any], measurements: dict[str, Any] | None) -> list[Table]:
    """Every table of analysis/artifacts.py, in its order."""
    return [BUILDERS[name](index, measurements) for name in TABLE_NAMES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--measurements", default=None, help="results/analysis/measurements.json (optional)")
    parser.add_argument("--out", required=True, help="output folder")
    args, index = parse_args_and_index(parser, argv)
    if index is None:
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
