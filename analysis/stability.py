"""Training stability of a run and of the LR sweep (the stress test for the paper's stability claim).

One definition, read by the report's verdict (analysis/report.py) and by the LR-sweep figure (analysis/figures.py):
a run is *unstable* when it diverged (a non-finite loss or gradient ended it) or when its EMA-smoothed training loss
rose at least LOSS_SURGE_NATS above its running minimum after warm-up. Warm-up is the first WARMUP_FRACTION of the
planned steps (every variant has large early gradients and a noisy early loss). Gradient-norm spikes (steps at
GRAD_SPIKE_RATIO times the run's median norm or more) are counted beside it: single spikes without a surge occur in
stable runs too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .plan import lr_variant
from .results import final_val_loss, find_runs, read_jsonl, section_seeds, train_rows
from .stats import is_number

WARMUP_FRACTION = 0.1
LOSS_SURGE_NATS = 0.1
GRAD_SPIKE_RATIO = 10.0
SWEEP_COLUMNS = [
    "variant", "multiplier", "seed", "run", "status", "diverged", "surge", "spike", "spikes", "max_grad_norm",
    "unstable", "final_val_loss", "last_step",
]  # fmt: skip


def planned_steps(index: dict[str, Any], scale: str | None) -> float | None:
    """The planned number of training steps of a scale (None when the index does not say)."""
    steps = ((index.get("scales") or {}).get(scale) or {}).get("steps")
    return float(steps) if is_number(steps) and steps > 0 else None


def loss_surge(loss: np.ndarray) -> float:
    """Largest rise of the EMA-smoothed loss above its running minimum (NaN with fewer than 2 points)."""
    if loss.size < 2:
        return math.nan
    smooth = pd.Series(loss).ewm(span=max(3, loss.size // 10), adjust=False).mean().to_numpy()
    return float(np.nanmax(smooth - np.fmin.accumulate(smooth)))


def run_stability(run: dict[str, Any] | None, planned: float | None = None) -> dict[str, Any]:
    """One run's evidence: status, diverged, the largest loss surge (nats) and gradient spike (x the median) after
    warm-up, the number of spike steps, the largest gradient norm after warm-up, `unstable`, the final validation
    loss (completed runs) and the last logged step. Warm-up is WARMUP_FRACTION of `planned` steps (of the last
    logged step without it); a run that stopped before that counts all its steps."""
    status = (run or {}).get("status", "missing")
    rows = train_rows(read_jsonl((run or {}).get("metrics")))
    steps = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([r.get("loss", np.nan) for r in rows], dtype=float)
    grad = np.array([r.get("grad_norm", np.nan) for r in rows], dtype=float)
    total = planned or (float(steps.max()) if steps.size else 0.0)
    after = steps > WARMUP_FRACTION * total
    if not after.any():
        after = np.ones_like(steps, dtype=bool)
    surge = loss_surge(loss[after])
    finite = grad[after][np.isfinite(grad[after])]
    median = float(np.median(finite)) if finite.size else math.nan
    diverged = status == "diverged"
    return {
        "status": status,
        "diverged": diverged,
        "surge": surge,
        "spike": float(finite.max() / median) if finite.size and median > 0 else math.nan,
        "spikes": int((finite >= GRAD_SPIKE_RATIO * median).sum()) if finite.size and median > 0 else 0,
        "max_grad_norm": float(finite.max()) if finite.size else math.nan,
        "unstable": diverged or (is_number(surge) and surge >= LOSS_SURGE_NATS),
        "final_val_loss": final_val_loss(run),
        "last_step": float(steps.max()) if steps.size else math.nan,
    }


def lr_sweep_runs(index: dict[str, Any]) -> pd.DataFrame:
    """Every planned run of the LR sweep (status "missing" when it left nothing): its base variant, multiplier, seed,
    key and `run_stability`. Empty (with SWEEP_COLUMNS) when the tier has no sweep."""
    sweep = index.get("lr_sweep") or {}
    scale, seeds = sweep.get("scale"), section_seeds(sweep)
    planned = planned_steps(index, scale)
    rows = []
    for variant in sweep.get("variants") or []:
        for multiplier in sweep.get("multipliers") or []:
            for run in find_runs(index, scale=scale, variant=lr_variant(variant, multiplier), seeds=seeds or None):
                rows.append(
                    {
                        "variant": variant,
                        "multiplier": float(multiplier),
                        "seed": int(run.get("seed", 0)),
                        "run": str(run.get("key", "")),
                        **run_stability(run, planned),
                    }
                )
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def instability_cells(frame: pd.DataFrame, a: str = "hc", b: str = "mhc") -> list[tuple[bool, bool]]:
    """(a unstable, b unstable) for every (multiplier, seed) of the sweep where both variants ran."""
    frame = frame[frame["status"] != "missing"] if not frame.empty else frame
    if frame.empty:
        return []
    left = frame[frame["variant"] == a].set_index(["multiplier", "seed"])["unstable"]
    right = frame[frame["variant"] == b].set_index(["multiplier", "seed"])["unstable"]
    common = left.index.intersection(right.index)
    return [(bool(left[k]), bool(right[k])) for k in sorted(common)]
