"""The evidence of the beyond-the-paper section (config `beyond_paper`): the rival designs the paper dismisses (RMT,
MUDDFormer) and mHC-lite beside baseline / HC / mHC, in a depth sweep and an LR stress test, each run with its
Jacobian gains (analysis/jacobian_gain.py) at initialisation and after training.

One row per run, read by the table, the figures and the report alike, so that "the composite gain of HC at 32
sub-layers" or "RMT diverged" has one definition. Nothing here builds a table, a figure or text.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .plan import lr_variant
from .results import amax_rows, final_val_loss, find_run, find_runs, load_json, read_jsonl
from .stability import planned_steps, run_stability
from .stats import is_number, mean_ci

# Below this, a residual path's deviation from the identity (models/diagnostics.py `residual_path_deviation`, a
# distance between unit vectors, 0..2) is rounding: float32 sums of a few hundred terms.
IDENTITY_TOLERANCE = 1e-4

# Runs that ended: what the table, the figures and the verdicts count (a running or missing run is not evidence).
ENDED = ("completed", "diverged", "failed")

# The designs the paper dismisses for giving up the identity mapping (claim 10 of the report).
RIVAL_ARCHS = ("rmt", "mudd")

GAIN_FIELDS = ("composite_fwd", "composite_bwd", "single_fwd_max", "single_bwd_max")
DEPTH_COLUMNS = [
    "variant", "arch", "scale", "sublayers", "seed", "run", "status", "diverged", "unstable", "final_val_loss",
    "gap", "amax_composite", "identity_deviation", "trained_identity_deviation",
    *(f"{phase}_{name}" for phase in ("init", "final") for name in GAIN_FIELDS),
]  # fmt: skip
STRESS_COLUMNS = [
    "variant", "arch", "multiplier", "seed", "run", "status", "diverged", "unstable", "surge", "max_grad_norm",
    "final_val_loss",
]  # fmt: skip


def _last(values: Any) -> float:
    if isinstance(values, list) and values and is_number(values[-1]):
        return float(values[-1])
    return math.nan


def gain_summary(run: dict[str, Any] | None) -> dict[str, float]:
    """A run's Jacobian gains (its jacobian_gain.json; NaN where missing): per phase ("init", "final") the composite
    forward and backward gain through the whole depth and the largest single-sub-layer gains (inf where the model's
    states overflow, recorded by the gain job as "not_finite"); and the residual path's
    largest deviation from the identity at initialisation ("identity_deviation") and after training."""
    data = load_json((run or {}).get("jacobian_gain")) or {}
    out: dict[str, float] = {}
    for phase in ("init", "final"):
        record = data.get(phase) or {}
        if record.get("not_finite"):  # the model's states overflow (a collapsed run): no finite gain, counted as inf
            out.update({f"{phase}_{name}": math.inf for name in GAIN_FIELDS})
            continue
        out[f"{phase}_composite_fwd"] = _last(record.get("composite_fwd"))
        out[f"{phase}_composite_bwd"] = _first(record.get("composite_bwd"))
        out[f"{phase}_single_fwd_max"] = _nanmax(record.get("single_fwd") or [])
        out[f"{phase}_single_bwd_max"] = _nanmax(record.get("single_bwd") or [])
    for phase, key in (("init", "identity_deviation"), ("final", "trained_identity_deviation")):
        identity = ((data.get(phase) or {}).get("identity_path") or {}).get("max")
        out[key] = float(identity) if is_number(identity) else math.nan
    return out


def _first(values: Any) -> float:
    """The backward composite gain through the whole depth: pulled back from the last sub-layer to the first, the
    first entry of a per-depth list ordered from the input (see analysis/jacobian_gain.py)."""
    if isinstance(values, list) and values and is_number(values[0]):
        return float(values[0])
    return math.nan


def amax_composite(run: dict[str, Any] | None) -> float:
    """The largest composite Amax gain (forward or backward) of the run's last diagnostics row (stream variants)."""
    rows = amax_rows(read_jsonl((run or {}).get("metrics")))
    if not rows:
        return math.nan
    last = rows[-1]
    values = [last.get(k) for k in ("amax_composite_fwd", "amax_composite_bwd")]
    finite = [float(v) for v in values if is_number(v)]
    return max(finite) if finite else math.nan


def depth_runs(index: dict[str, Any]) -> pd.DataFrame:
    """Every planned run of the depth sweep with its stability, final loss, paired gap to the baseline (same depth and
    seed), the composite Amax gain and the Jacobian gains; empty (DEPTH_COLUMNS) without the section."""
    section = index.get("beyond_paper") or {}
    archs = section.get("archs") or {}
    rows = []
    for point in section.get("depths") or []:
        scale = point["scale"]
        planned = planned_steps(index, scale)
        for variant in section.get("variants") or []:
            for run in find_runs(index, scale=scale, variant=variant, seeds=section.get("seeds")):
                seed = int(run.get("seed", 0))
                loss = final_val_loss(run)
                base = final_val_loss(find_run(index, scale, "baseline", seed))
                stability = run_stability(run, planned)
                rows.append(
                    {
                        "variant": variant,
                        "arch": archs.get(variant, run.get("arch")),
                        "scale": scale,
                        "sublayers": int(point["sublayers"]),
                        "seed": seed,
                        "run": str(run.get("key", "")),
                        "status": stability["status"],
                        "diverged": stability["diverged"],
                        "unstable": stability["unstable"],
                        "final_val_loss": loss if loss is not None else math.nan,
                        "gap": loss - base if loss is not None and base is not None else math.nan,
                        "amax_composite": amax_composite(run),
                        **gain_summary(run),
                    }
                )
    return pd.DataFrame(rows, columns=DEPTH_COLUMNS)


def depth_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, depth): runs, diverged, mean final loss, the paired gap to the baseline (mean and 95% CI over
    seeds), and the medians over seeds of the composite Amax gain and the Jacobian gains."""
    out = []
    present = frame[frame["status"].isin(ENDED)] if not frame.empty else frame
    for (variant, sublayers), g in present.groupby(["variant", "sublayers"], sort=False):
        gaps = [float(v) for v in g["gap"] if is_number(v) and np.isfinite(v)]
        ci = mean_ci(gaps) if gaps else None
        row = {
            "variant": variant,
            "arch": g["arch"].iloc[0],
            "sublayers": int(sublayers),
            "runs": len(g),
            "diverged": int(g["diverged"].sum()),
            "unstable": int(g["unstable"].sum()),
            "final_val_loss": _nanmean(g["final_val_loss"]),
            "gap": ci.mean if ci else math.nan,
            "gap_ci": ci.half_width if ci else math.nan,
            "gap_n": len(gaps),
            "amax_composite": _nanmedian(g["amax_composite"]),
            "identity_deviation": _nanmax(g["identity_deviation"]),
            "trained_identity_deviation": _nanmedian(g["trained_identity_deviation"]),
        }
        for phase in ("init", "final"):
            for name in GAIN_FIELDS:
                row[f"{phase}_{name}"] = _nanmedian(g[f"{phase}_{name}"])
        out.append(row)
    return pd.DataFrame(out)


def _finite(values: Any) -> np.ndarray:
    array = np.asarray([float(v) for v in values if is_number(v)], dtype=float)
    return array[np.isfinite(array)]


def _nanmean(values: Any) -> float:
    finite = _finite(values)
    return float(finite.mean()) if finite.size else math.nan


def _nanmedian(values: Any) -> float:
    finite = _finite(values)
    return float(np.median(finite)) if finite.size else math.nan


def _nanmax(values: Any) -> float:
    finite = _finite(values)
    return float(finite.max()) if finite.size else math.nan


def stress_runs(index: dict[str, Any]) -> pd.DataFrame:
    """Every run of the section's stress test, the 1x runs (the depth sweep's at the stress scale) included."""
    section = index.get("beyond_paper") or {}
    stress = section.get("stress") or {}
    if not stress:
        return pd.DataFrame(columns=STRESS_COLUMNS)
    scale, seeds = stress["scale"], stress["seeds"]
    planned = planned_steps(index, scale)
    multipliers = sorted({1.0, *(float(m) for m in stress["multipliers"])})
    rows = []
    for variant in section.get("variants") or []:
        for multiplier in multipliers:
            for run in find_runs(index, scale=scale, variant=lr_variant(variant, multiplier), seeds=seeds):
                stability = run_stability(run, planned)
                rows.append(
                    {
                        "variant": variant,
                        "arch": (section.get("archs") or {}).get(variant, run.get("arch")),
                        "multiplier": multiplier,
                        "seed": int(run.get("seed", 0)),
                        "run": str(run.get("key", "")),
                        **{k: stability[k] for k in STRESS_COLUMNS if k in stability},
                    }
                )
    return pd.DataFrame(rows, columns=STRESS_COLUMNS)


SectionRuns = tuple[pd.DataFrame, pd.DataFrame]
"""(depth_runs, stress_runs) of an index: read once, passed to every function that needs both."""


def section_runs(index: dict[str, Any]) -> SectionRuns:
    return depth_runs(index), stress_runs(index)


def variant_verdicts(index: dict[str, Any], runs: SectionRuns | None = None) -> list[dict[str, Any]]:
    """Per variant of the section: does its residual path preserve the identity at initialisation (the largest
    deviation over its runs, None when no run was measured), how many of its runs diverged or were unstable (depth
    sweep and stress test together), and its composite forward gains at the deepest point reached."""
    depth, stress = runs if runs is not None else section_runs(index)
    out = []
    for variant in (index.get("beyond_paper") or {}).get("variants") or []:
        mine = depth[(depth["variant"] == variant) & (depth["status"] != "missing")] if not depth.empty else depth
        pushed = (
            stress[(stress["variant"] == variant) & (stress["status"] != "missing")] if not stress.empty else stress
        )
        runs = pd.concat([mine[["run", "diverged", "unstable"]], pushed[["run", "diverged", "unstable"]]])
        runs = runs.drop_duplicates("run")
        deviation = _nanmax(mine["identity_deviation"]) if not mine.empty else math.nan
        deepest = mine[mine["sublayers"] == mine["sublayers"].max()] if not mine.empty else mine
        out.append(
            {
                "variant": variant,
                "identity_at_init": None if not np.isfinite(deviation) else bool(deviation <= IDENTITY_TOLERANCE),
                "identity_deviation": deviation,
                "trained_identity_deviation": _nanmedian(mine["trained_identity_deviation"])
                if not mine.empty
                else math.nan,
                "runs": len(runs),
                "diverged": int(runs["diverged"].sum()) if len(runs) else 0,
                "unstable": int(runs["unstable"].sum()) if len(runs) else 0,
                "deepest": int(deepest["sublayers"].iloc[0]) if not deepest.empty else None,
                "init_composite_fwd": _nanmedian(deepest["init_composite_fwd"]) if not deepest.empty else math.nan,
                "final_composite_fwd": _nanmedian(deepest["final_composite_fwd"]) if not deepest.empty else math.nan,
            }
        )
    return out


def instability_cells(
    index: dict[str, Any], a: str, b: str, runs: SectionRuns | None = None
) -> list[tuple[bool, bool]]:
    """(a unstable, b unstable) for every cell of the section where both ran: each (depth, seed) of the depth sweep and
    each (multiplier, seed) of the stress test beyond 1x."""
    cells = []
    depth, stress = runs if runs is not None else section_runs(index)
    if not depth.empty:
        depth = depth[depth["status"].isin(ENDED)]
        left = depth[depth["variant"] == a].set_index(["sublayers", "seed"])["unstable"]
        right = depth[depth["variant"] == b].set_index(["sublayers", "seed"])["unstable"]
        cells += [(bool(left[k]), bool(right[k])) for k in sorted(left.index.intersection(right.index))]
    if not stress.empty:
        stress = stress[stress["status"].isin(ENDED) & (stress["multiplier"] != 1.0)]
        left = stress[stress["variant"] == a].set_index(["multiplier", "seed"])["unstable"]
        right = stress[stress["variant"] == b].set_index(["multiplier", "seed"])["unstable"]
        cells += [(bool(left[k]), bool(right[k])) for k in sorted(left.index.intersection(right.index))]
    return cells
