"""`python -m analysis.report --index results/analysis/runs.json --tables results/tables --out results/report.md`.

Optional: `--figures DIR` (default: the report's folder/figures, linked relative to the report) and
`--measurements FILE` (default: measurements.json beside the index; claim 9 reads it).

The replication report: for each of the paper's claims, the paper's number, ours at the tier that ran, and a
verdict decided by an explicit rule in this module (never by eye), in four classes:

- reproduced: the rule's evidence for the claim holds (e.g. the 95% CI of the loss gap lies below 0);
- contradicted: the evidence goes against the claim (e.g. the CI lies above 0, or excludes the paper's value);
- inconclusive: the data cannot decide (a CI containing 0 and the paper's value, too few seeds, a mechanism that was
  not shown to operate, or a measurement unlike the paper's);
- holds by construction: an algebraic identity of the method (mHC's row sums), true whatever was learned.

It also says whether each compared mechanism operated (models/diagnostics.py), what the two mechanism controls
allow us to write, what the tier's seeds can detect (analysis/stats.py), the initialisation ablation and the LR
sweep. `--readme README.md` rewrites the README's generated results block with the report's summary.

Loss gaps are paired by seed and given as mean ± 95% Student-t CI (n−1 dof). The report also lists every run with
its status, links the figures, embeds the tables and lists every deviation from the paper's setup (including the
benchmark data substitutions recorded in the evaluation JSONs).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write_text

from . import beyond, paper
from .artifacts import FIGURES, TABLE_NAMES
from .results import (
    all_runs,
    amax_run,
    compute_scaling_points,
    eval_runs,
    eval_substitutions,
    final_val_loss,
    find_run,
    find_runs,
    last_diagnostics,
    load_json,
    paired_gaps,
    parse_args_and_index,
    read_jsonl,
    section_seeds,
    token_scaling_points,
    variant_arch,
)
from .stability import GRAD_SPIKE_RATIO, LOSS_SURGE_NATS, WARMUP_FRACTION, instability_cells, lr_sweep_runs
from .stats import (
    CI,
    detectable_gap,
    is_number,
    mean_ci,
    mean_or_none,
    paired_sd,
    seeds_needed,
    sign_test_p,
    t_quantile,
)

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
BY_CONSTRUCTION = "holds by construction"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, BY_CONSTRUCTION)

MIN_SEEDS = 2
"""Fewest seeds for which a CI (and so a verdict on a loss gap) is computed."""
AMAX_MHC_BOUND = 2.0
"""mHC's composite Amax gain counts as bounded (paper ≈ 1.6) when at most this."""
AMAX_SEPARATION = 10.0
"""HC's composite Amax gain counts as exploding when at least this many times mHC's (paper: ≈3000 vs ≈1.6)."""
FORWARD_GAIN_TOL = 1e-3
"""mHC's single-layer forward gain counts as 1 when every sub-layer's |gain − 1| is at most this (float32 Sinkhorn)."""
ABLATION_RES_SHARE = 0.5
"""Table 1: H_res alone must give at least this share of the full HC gain (paper: 0.022 / 0.027 = 81%)."""
SIGN_TEST_ALPHA = 0.05
OVERHEAD_TOLERANCE = 2.0
"""Overhead: a fused GPU measurement reproduces the 6.7% when it is at most this many times 6.7%."""
CONTROL_RECOVERS = 0.8
"""Control (a): a residual gain 'recovers' HC's advantage when it gets at least this share of it."""


@dataclass
class Claim:
    """One row of the claims table."""

    claim: str
    paper: str
    ours: str
    verdict: str
    why: str


# --------------------------------------------------------------------------------------------------------------------
# Verdict rules (pure functions of the numbers, so that the tests can check them on synthetic inputs)


def verdict_negative_gap(gaps: Sequence[float], paper_value: float, mechanism: bool = True) -> tuple[str, str]:
    """A loss gap claimed to be negative (e.g. mHC − baseline = `paper_value` < 0), decided by the 95% CI of the
    per-seed paired gaps: reproduced when the CI lies below 0; contradicted when it lies above 0, or when it contains
    0 but excludes the paper's value (an effect as large as the paper's is ruled out); inconclusive when it contains
    both, with too few seeds, or when the compared mechanism did not operate (then the gap is not about it)."""
    ci = mean_ci(gaps)
    if ci.n < MIN_SEEDS:
        return INCONCLUSIVE, f"{ci.n} seed(s) with a completed pair; a CI needs ≥ {MIN_SEEDS}"
    if not mechanism:
        return (
            INCONCLUSIVE,
            "the compared mechanism was not shown to operate (see Mechanism): the gap is not evidence about it",
        )
    if ci.high < 0:
        return REPRODUCED, "95% CI below 0"
    if ci.low > 0:
        return CONTRADICTED, "95% CI above 0: significantly worse than the reference"
    if ci.low > paper_value:
        return (
            CONTRADICTED,
            f"95% CI contains 0 but excludes the paper's {paper_value:+g}: an effect that large is ruled out",
        )
    return INCONCLUSIVE, f"95% CI contains both 0 and the paper's {paper_value:+g}"


def verdict_instability(
    cells: Sequence[tuple[bool, bool]], any_unstable: bool, a: str = "HC", b: str = "mHC"
) -> tuple[str, str]:
    """`a` unstable, `b` not (HC and mHC by default): `cells` holds (a unstable, b unstable) per (learning rate, seed)
    cell of a stress test; `any_unstable` says whether the stress made any run of any variant unstable. Decided by a
    one-sided sign test on the discordant cells."""
    if not cells:
        return INCONCLUSIVE, f"no stress-test cell with both an {a} and an {b} run"
    if not any_unstable:
        return INCONCLUSIVE, "the sweep provoked no instability in any variant: the stress test did not bite"
    a_only = sum(x and not y for x, y in cells)
    b_only = sum(y and not x for x, y in cells)
    if a_only + b_only == 0:
        if any(x and y for x, y in cells):
            return CONTRADICTED, f"{b} was unstable in every cell where {a} was"
        return INCONCLUSIVE, f"neither {a} nor {b} became unstable in any cell (only other variants did)"
    # One sign test in the direction the cells lean: reproduced when `a` alone is unstable significantly more often,
    # contradicted when `b` alone is; a tie or a few cells are no evidence either way.
    a_leads = a_only > b_only
    p = sign_test_p(max(a_only, b_only), a_only + b_only)
    counts = f"{a} alone unstable in {a_only} of {len(cells)} cells, {b} alone in {b_only}"
    if p < SIGN_TEST_ALPHA:
        return (REPRODUCED if a_leads else CONTRADICTED), f"{counts}; sign test p = {p:.3f}"
    return INCONCLUSIVE, f"{counts}; sign test p = {p:.3f} ≥ {SIGN_TEST_ALPHA:g}"


def verdict_amax(hc_max: float | None, mhc_max: float | None, mechanism: bool) -> tuple[str, str]:
    """Composite Amax: mHC bounded (≤ AMAX_MHC_BOUND) and HC at least AMAX_SEPARATION times larger. mHC's composite
    forward gain is 1 for any H_res (products of row-stochastic matrices) and every gain is 1 while H_res sits at
    J/n, so the mHC half is only evidence when its H_res moved."""
    if not is_number(hc_max) or not is_number(mhc_max):
        return INCONCLUSIVE, "HC or mHC diagnostics missing"
    if mhc_max > AMAX_MHC_BOUND:
        return CONTRADICTED, f"mHC composite gain {mhc_max:.3g} > {AMAX_MHC_BOUND:g}"
    if hc_max < AMAX_SEPARATION * mhc_max:
        return CONTRADICTED, f"HC composite gain is {hc_max / mhc_max:.3g}× mHC's (< {AMAX_SEPARATION:g}×)"
    if not mechanism:
        return BY_CONSTRUCTION, "HC explodes, but mHC's H_res did not move: its gains are 1 by construction"
    return REPRODUCED, f"mHC ≤ {AMAX_MHC_BOUND:g} with its H_res moving, and HC ≥ {AMAX_SEPARATION:g}× mHC"


def verdict_forward_gain(deviation: float | None) -> tuple[str, str]:
    """mHC single-layer forward gain = 1: Sinkhorn's row normalisation runs last, so every row of H_res sums to 1
    for any logits. An algebraic identity: the measurement checks the implementation, it is not evidence."""
    if not is_number(deviation):
        return INCONCLUSIVE, "mHC diagnostics missing"
    if deviation <= FORWARD_GAIN_TOL:
        return BY_CONSTRUCTION, f"rows normalised last: max |gain − 1| ≤ {FORWARD_GAIN_TOL:g} for any H_res"
    return CONTRADICTED, f"max |gain − 1| = {deviation:.3g} > {FORWARD_GAIN_TOL:g} (an implementation error)"


def verdict_ablation(res_gaps: Sequence[float], full_gaps: Sequence[float]) -> tuple[str, str]:
    """Table 1: full HC beats the baseline (CI < 0) and H_res alone gives ≥ ABLATION_RES_SHARE of that gain."""
    full, res = mean_ci(full_gaps), mean_ci(res_gaps)
    if full.n < MIN_SEEDS or res.n < 1:
        return INCONCLUSIVE, f"{full.n} seed(s) of the full-HC row; a CI needs ≥ {MIN_SEEDS}"
    if full.low > 0:
        return CONTRADICTED, "full HC is worse than the baseline (CI lower bound > 0)"
    if full.high >= 0:
        return INCONCLUSIVE, "the full-HC gap's 95% CI contains 0: no gain to divide up"
    # Decided on the H_res-only row's CI against the share of the full row's mean gap, not on the means alone.
    share, bar = res.mean / full.mean, ABLATION_RES_SHARE * full.mean
    said = f"H_res alone gives {share:.0%} of the full gain"
    if res.n >= MIN_SEEDS and res.high <= bar:
        return REPRODUCED, f"{said} (its 95% CI beyond {ABLATION_RES_SHARE:.0%})"
    if res.n >= MIN_SEEDS and res.low > bar:
        return CONTRADICTED, f"{said} (its 95% CI short of {ABLATION_RES_SHARE:.0%})"
    return INCONCLUSIVE, f"{said}; its 95% CI straddles {ABLATION_RES_SHARE:.0%}"


def verdict_benchmarks(cis: dict[str, CI], mechanism: bool = True) -> tuple[str, str]:
    """Benchmarks, scored per item: `cis` maps each task to the seed-level 95% CI of the paired gold-answer
    log-likelihood difference (positive: the claimed-better variant assigns the gold answer more probability)."""
    usable = {task: ci for task, ci in cis.items() if ci.n >= MIN_SEEDS}
    if not usable:
        return INCONCLUSIVE, f"no task with ≥ {MIN_SEEDS} paired seeds"
    if not mechanism:
        return INCONCLUSIVE, "the compared mechanism did not operate (see Mechanism)"
    better = [t for t, ci in usable.items() if ci.low > 0]
    worse = [t for t, ci in usable.items() if ci.high < 0]
    if better and not worse:
        return REPRODUCED, f"better on {', '.join(better)} (CI > 0), worse on none"
    if worse and not better:
        return CONTRADICTED, f"worse on {', '.join(worse)} (CI < 0), better on none"
    if better and worse:
        return INCONCLUSIVE, f"better on {', '.join(better)}, worse on {', '.join(worse)}"
    return INCONCLUSIVE, "every task's 95% CI contains 0"


def verdict_compute_scaling(gaps: Sequence[CI], mechanism: bool = True) -> tuple[str, str]:
    """Compute scaling: the mHC − baseline gap stays negative (CI < 0) at every scale of the ladder."""
    if len(gaps) < 2:
        return INCONCLUSIVE, f"{len(gaps)} scale(s) with a completed pair; a trend needs ≥ 2"
    if any(ci.n < MIN_SEEDS for ci in gaps):
        return INCONCLUSIVE, f"fewer than {MIN_SEEDS} seeds at some scale"
    if not mechanism:
        return INCONCLUSIVE, "mHC's mechanism did not operate (see Mechanism)"
    if any(ci.low > 0 for ci in gaps):
        return CONTRADICTED, "mHC worse than the baseline (CI > 0) at some scale"
    if all(ci.high < 0 for ci in gaps):
        return REPRODUCED, "95% CI < 0 at every scale"
    return INCONCLUSIVE, "the 95% CI contains 0 at some scale"


def verdict_token_scaling(gaps_by_step: dict[int, list[float]], mechanism: bool = True) -> tuple[str, str]:
    """Token scaling: the gap is negative at every checkpoint of the second half (mean over seeds) and its CI at
    the last checkpoint is below 0. `gaps_by_step`: checkpoint step -> per-seed gaps mHC − baseline."""
    if not gaps_by_step:
        return INCONCLUSIVE, "token-scaling runs missing"
    steps = sorted(gaps_by_step)
    last = mean_ci(gaps_by_step[steps[-1]])
    if last.n < MIN_SEEDS:
        return INCONCLUSIVE, f"{last.n} seed(s); a CI needs ≥ {MIN_SEEDS}"
    if not mechanism:
        return INCONCLUSIVE, "mHC's mechanism did not operate (see Mechanism)"
    if last.low > 0:
        return CONTRADICTED, "mHC worse at the last checkpoint (CI > 0)"
    second_half = steps[len(steps) // 2 :]
    if last.high < 0 and all(np.mean(gaps_by_step[s]) < 0 for s in second_half):
        return REPRODUCED, "gap < 0 at every checkpoint of the second half, CI < 0 at the last"
    if last.high < 0:
        return INCONCLUSIVE, "CI < 0 at the last checkpoint, but the mean gap is not < 0 all through the second half"
    return INCONCLUSIVE, "the gap's CI at the last checkpoint contains 0"


def verdict_overhead(records: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """6.7% overhead: only a fused-kernel GPU measurement of mHC is comparable; then ≤ OVERHEAD_TOLERANCE × 6.7%."""
    mhc = [r for r in records if r.get("arch") == "mhc" and is_number(r.get("ratio"))]
    if not mhc:
        return INCONCLUSIVE, "mHC step time not measured"
    fused = [r for r in mhc if r.get("kernels") not in (None, "reference") and r.get("device") not in (None, "cpu")]
    if not fused:
        return INCONCLUSIVE, "only the unfused CPU path was measured; the paper's 6.7% is fused GPU kernels"
    worst = max(100 * (r["ratio"] - 1) for r in fused)
    limit = OVERHEAD_TOLERANCE * 100 * paper.OVERHEAD_N4
    if worst <= limit:
        return REPRODUCED, f"fused GPU overhead {worst:.1f}% ≤ {limit:.1f}%"
    return CONTRADICTED, f"fused GPU overhead {worst:.1f}% > {limit:.1f}%"


# --------------------------------------------------------------------------------------------------------------------
# Evidence from the runs


def _composite_max(record: dict[str, Any] | None, keys: Sequence[str]) -> float | None:
    values = [v for k in keys for v in (record or {}).get(k) or []]
    values = [abs(v) for v in values if is_number(v)]
    return max(values) if values else None


def amax_evidence(index: dict[str, Any]) -> dict[str, Any]:
    """Largest composite gain of HC (forward or backward) and of mHC (backward: its forward gain is 1 for any H_res)
    over the main seeds' last diagnostics records, and mHC's largest single-layer |forward gain − 1| and
    |backward gain − 1|."""
    scale = (index.get("main") or {}).get("scale")
    out: dict[str, Any] = {}
    for variant, keys in (("hc", ("composite_forward", "composite_backward")), ("mhc", ("composite_backward",))):
        records = [last_diagnostics(r) for r in find_runs(index, scale=scale, variant=variant)]
        records = [r for r in records if r]
        if not records and amax_run(index, variant):
            records = [last_diagnostics(amax_run(index, variant))]
        maxima = [m for m in (_composite_max(r, keys) for r in records) if m is not None]
        out[f"{variant}_max"] = max(maxima) if maxima else None
        out[f"{variant}_records"] = records
    fwd = [abs(v - 1) for r in out["mhc_records"] for v in r.get("single_forward") or [] if is_number(v)]
    bwd = [abs(v - 1) for r in out["mhc_records"] for v in r.get("single_backward") or [] if is_number(v)]
    out["mhc_forward_dev"] = max(fwd) if fwd else None
    out["mhc_backward_dev"] = max(bwd) if bwd else None
    return out


def mechanism_rows(index: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stream variant (and `gain`) of the main comparison and the init ablation: whether its mechanism operated
    in every seed (models.diagnostics.mechanism_operated on the last record) and the numbers behind it."""
    from models.diagnostics import mechanism_operated

    main = index.get("main") or {}
    init = index.get("init_ablation") or {}
    names = [v for v in list(main.get("variants") or []) + list(init.get("variants") or []) if v != "baseline"]
    rows = []
    for variant in dict.fromkeys(names):
        scale = main.get("scale") if variant in (main.get("variants") or []) else init.get("scale")
        section = main if variant in (main.get("variants") or []) else init
        records = []
        for run in find_runs(index, scale=scale, variant=variant, seeds=section_seeds(section)):
            diag = [r for r in read_jsonl(run.get("diagnostics")) if "stream_spread" in r]
            if diag:
                records.append((diag[0], diag[-1]))
        if not records:
            continue

        def top(record: dict[str, Any], key: str) -> float | None:
            values = [v for v in record.get(key) or [] if is_number(v)]
            return max(values) if values else None

        def middle(record: dict[str, Any], key: str) -> float | None:
            values = [v for v in record.get(key) or [] if is_number(v)]
            return float(np.median(values)) if values else None

        arch = variant_arch(index, variant) or "?"
        fixed_res = ((index.get("variants") or {}).get(variant) or {}).get("connection", {}).get("learn_res") is False
        keys = ("hres_learned",) if arch == "gain" else ("stream_spread",) if fixed_res else None
        verdicts = [mechanism_operated(last, *([keys] if keys else [])) for _, last in records]
        rows.append(
            {
                "variant": variant,
                "arch": arch,
                "seeds": len(records),
                "operated": sum(ok for ok, _ in verdicts),
                "stream_spread": mean_or_none([middle(last, "stream_spread") for _, last in records]),
                "stream_spread_max": mean_or_none([top(last, "stream_spread") for _, last in records]),
                "hres_learned": mean_or_none([middle(last, "hres_learned") for _, last in records]),
                "hres_learned_max": mean_or_none([top(last, "hres_learned") for _, last in records]),
                "hres_from_init": mean_or_none([top(last, "hres_from_init") for _, last in records]),
                "hres_from_uniform": mean_or_none([top(last, "hres_from_uniform") for _, last in records]),
                "hres_token_dev": mean_or_none([top(last, "hres_token_dev") for _, last in records]),
                "grad_res_init": mean_or_none([top(first, "grad_res") for first, _ in records]),
                "grad_res_end": mean_or_none([top(last, "grad_res") for _, last in records]),
                "post_spread": mean_or_none([top(last, "post_spread") for _, last in records]),
                "why": next((why for ok, why in verdicts if not ok), verdicts[0][1]),
            }
        )
    return rows


def mhc_mechanism(index: dict[str, Any], variant: str = "mhc") -> bool:
    """Whether `variant`'s mechanism operated in every main seed that has diagnostics (False without any)."""
    row = next((r for r in mechanism_rows(index) if r["variant"] == variant), None)
    return bool(row) and row["operated"] == row["seeds"]


def benchmark_evidence(index: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    """Seed-level CIs of the paired per-item gold log-likelihood difference a − b for every task with items."""
    from .benchmarks import paired_items, tasks_with_items

    out = {}
    for task in tasks_with_items(index):
        paired = paired_items(index, a, b, task)
        if paired.n_seeds:
            out[task] = paired
    return out


def power_evidence(index: dict[str, Any], variant: str = "mhc", reference: str = "baseline") -> dict[str, Any]:
    """What the main comparison's seeds can detect: the paired SD of the per-seed gaps, the detectable gap at this
    number of seeds (two-sided paired t-test, the config's alpha and power) and the seeds the target gap needs."""
    main = index.get("main") or {}
    spec = index.get("power") or {}
    alpha, power = float(spec.get("alpha", 0.05)), float(spec.get("power", 0.8))
    target = float(spec.get("target_gap", abs(paper.FIG5_MHC_FINAL_LOSS_GAP)))
    gaps = list(paired_gaps(index, main.get("scale"), variant, reference, section_seeds(main)).values())
    sd = paired_sd(gaps)
    return {
        "n": len(gaps),
        "sd": sd,
        "alpha": alpha,
        "power": power,
        "target": target,
        "detectable": detectable_gap(sd, len(gaps), alpha, power),
        "needed": seeds_needed(sd, target, alpha, power) if math.isfinite(sd) else None,
        "planned_sd": float(spec["planned_sd"]) if is_number(spec.get("planned_sd")) else None,
        "planned_from": spec.get("planned_from") or "",
    }


# --------------------------------------------------------------------------------------------------------------------
# Claims


@dataclass
class ClaimInputs:
    """What every claim reads: the index, the measurements, and the evidence several claims share (computed once)."""

    index: dict[str, Any]
    measurements: dict[str, Any] | None

    @functools.cached_property
    def mechanism(self) -> bool:
        """Whether mHC's mechanism operated in every main seed (claims about mHC are inconclusive otherwise)."""
        return mhc_mechanism(self.index)

    @functools.cached_property
    def amax(self) -> dict[str, Any]:
        return amax_evidence(self.index)

    @functools.cached_property
    def beyond_runs(self) -> beyond.SectionRuns:
        """The runs of the section beyond the paper (claims 10a and 10b read them)."""
        return beyond.section_runs(self.index)


def _num(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def claim_final_loss(c: ClaimInputs) -> Claim:
    """Claim 1: mHC's final loss is below the baseline's (Fig. 5)."""
    main = c.index.get("main") or {}
    scale = main.get("scale")
    gaps = list(paired_gaps(c.index, scale, "mhc", "baseline", section_seeds(main)).values())
    verdict, why = verdict_negative_gap(gaps, paper.FIG5_MHC_FINAL_LOSS_GAP, c.mechanism)
    return Claim(
        "1. mHC's final loss is below the baseline's",
        f"{paper.FIG5_MHC_FINAL_LOSS_GAP} (27B, Fig. 5)",
        f"val-loss gap mHC − baseline {mean_ci(gaps).text()} at {scale}",
        verdict,
        why,
    )


def claim_instability(c: ClaimInputs) -> Claim:
    """Claim 2: HC becomes unstable in training, mHC does not (Fig. 2), tested by the LR sweep."""
    sweep = lr_sweep_runs(c.index)
    sweep = sweep[sweep["status"] != "missing"]
    verdict, why = verdict_instability(
        instability_cells(sweep), bool(sweep["unstable"].any()) if not sweep.empty else False
    )
    counts = "; ".join(
        f"{v}: {int(g['unstable'].sum())} of {len(g)} unstable ({int(g['diverged'].sum())} diverged)"
        for v, g in sweep.groupby("variant", sort=False)
    )
    multipliers = ", ".join(f"{m:g}×" for m in (c.index.get("lr_sweep") or {}).get("multipliers") or [])
    return Claim(
        "2. HC becomes unstable in training, mHC does not",
        f"HC loss surge with a grad-norm spike around step {paper.FIG2_HC_SURGE_STEP // 1000}k (27B, Fig. 2)",
        f"LR sweep ({multipliers or 'not run'}): {counts or 'no runs'}",
        verdict,
        why,
    )


def claim_composite_amax(c: ClaimInputs) -> Claim:
    """Claim 3: the composite Amax gain of HC explodes, mHC's stays bounded (Fig. 3 and 7)."""
    amax = c.amax
    verdict, why = verdict_amax(amax["hc_max"], amax["mhc_max"], c.mechanism)
    return Claim(
        "3. Composite Amax gain: HC explodes, mHC stays bounded",
        f"HC ≈ {paper.FIG3_HC_COMPOSITE_AMAX_PEAK:g} vs mHC ≈ {paper.FIG7_MHC_COMPOSITE_AMAX_MAX:g} "
        f"(27B, {paper.PAPER_SUBLAYERS_27B} sub-layers)",
        f"max composite gain (last diagnostics): HC {_num(amax['hc_max'])} (fwd/bwd), mHC {_num(amax['mhc_max'])} "
        "(bwd; its fwd is 1 by construction)",
        verdict,
        why,
    )


def claim_forward_gain(c: ClaimInputs) -> Claim:
    """Claim 4: mHC's single-layer forward gain is 1 (Fig. 7a)."""
    amax = c.amax
    verdict, why = verdict_forward_gain(amax["mhc_forward_dev"])
    return Claim(
        "4. mHC single-layer forward gain = 1",
        "exactly 1 (Sinkhorn's row step last); backward deviates slightly (Fig. 7a)",
        f"max |fwd gain − 1| = {_num(amax['mhc_forward_dev'])}; max |bwd gain − 1| = {_num(amax['mhc_backward_dev'])}",
        verdict,
        why,
    )


def claim_ablation(c: ClaimInputs) -> Claim:
    """Claim 5: H_res gives most of HC's gain (Table 1)."""
    return ablation_claim(c.index)


def claim_benchmarks(other: str, letter: str) -> Callable[[ClaimInputs], Claim]:
    """Claim 6a/6b: mHC beats `other` on the benchmarks (Table 4), scored item by item."""

    def claim(c: ClaimInputs) -> Claim:
        escale, _, eseeds = eval_runs(c.index)
        evidence = benchmark_evidence(c.index, "mhc", other)
        verdict, why = verdict_benchmarks({t: e.seed_ci for t, e in evidence.items()}, c.mechanism)
        ours = "; ".join(f"{t}: Δ gold log-lik {e.seed_ci.text(3)} nats/item" for t, e in evidence.items())
        return Claim(
            f"6{letter}. mHC beats {'the baseline' if other == 'baseline' else 'HC'} on the benchmarks",
            f"{paper.table4_wins('mhc', other)} of 8 (27B, Table 4)",
            f"{ours or 'no per-item scores'} ({escale}, seeds {eseeds})",
            verdict,
            why,
        )

    claim.__name__ = claim.__qualname__ = f"claim_benchmarks_{other}"
    return claim


def claim_compute_scaling(c: ClaimInputs) -> Claim:
    """Claim 7: the mHC advantage is maintained across the scale ladder (Fig. 6a)."""
    points = compute_scaling_points(c.index)
    verdict, why = verdict_compute_scaling([p["gap"] for p in points], c.mechanism)
    planned = len((c.index.get("compute_scaling") or {}).get("scales") or [])
    return Claim(
        "7. Compute scaling: the mHC advantage is maintained across scales",
        "maintained, marginal attenuation (3B/9B/27B, Fig. 6a; no numbers in the text)",
        "; ".join(f"{p['scale']}: {p['gap'].text()}" for p in points)
        + f" ({len(points)} of {planned} planned scales with a completed pair)",
        verdict,
        why,
    )


def claim_token_scaling(c: ClaimInputs) -> Claim:
    """Claim 8: the advantage holds along training (Fig. 6b), at the token-scaling checkpoints."""
    frame, source = token_scaling_points(c.index)
    by_step = {int(s): g["gap"].tolist() for s, g in frame.groupby("step")} if not frame.empty else {}
    verdict, why = verdict_token_scaling(by_step, c.mechanism)
    ours = "token-scaling runs missing"
    if by_step:
        steps = sorted(by_step)
        negative = sum(np.mean(by_step[s]) < 0 for s in steps)
        ours = (
            f"gap at the last checkpoint (step {steps[-1]}) {mean_ci(by_step[steps[-1]]).text()}; "
            f"negative at {negative} of {len(steps)} checkpoints ({source})"
        )
    return Claim(
        "8. Token scaling: the advantage holds along training", "maintained over 1T tokens (3B, Fig. 6b)", ours,
        verdict, why,
    )  # fmt: skip


def claim_overhead(c: ClaimInputs) -> Claim:
    """Claim 9: mHC with n = 4 costs 6.7% extra training time (§4.3)."""
    records = list((c.measurements or {}).get("overhead") or [])
    verdict, why = verdict_overhead(records)
    ours = "; ".join(
        f"{r.get('scale')}: {100 * (r['ratio'] - 1):+.1f}% ({r.get('kernels', '?')} kernels, {r.get('device', '?')})"
        for r in records
        if r.get("arch") == "mhc" and is_number(r.get("ratio"))
    )
    return Claim(
        "9. mHC (n = 4) costs 6.7% extra training time",
        f"{100 * paper.OVERHEAD_N4:.1f}% (fused kernels, GPUs, §4.3)",
        ours or "not measured",
        verdict,
        why,
    )


RIVAL_MIN_RUNS = 4
"""A rival that stayed stable in at least this many runs, while the stress made other variants unstable, contradicts
"it trains unstably" at this scale."""


def verdict_rival(
    cells: Sequence[tuple[bool, bool]], unstable_others: Sequence[str], runs: int, unstable: int, name: str
) -> tuple[str, str]:
    """Whether `name` trains unstably, against mHC, cell by cell as claim 2 (a sign test on the discordant cells);
    and, when that decides nothing, contradicted if the stress made other variants (`unstable_others`) unstable but
    not this one in any of its `runs` (at least RIVAL_MIN_RUNS)."""
    verdict, why = verdict_instability(cells, bool(unstable_others) or unstable > 0, name, "mHC")
    if verdict == INCONCLUSIVE and unstable == 0 and unstable_others and runs >= RIVAL_MIN_RUNS:
        return CONTRADICTED, (
            f"the stress made {', '.join(unstable_others)} unstable but {name} in none of its {runs} runs (as mHC)"
        )
    return verdict, why


def claim_rival(arch: str, letter: str, name: str) -> Callable[[ClaimInputs], Claim]:
    """Claim 10a/10b: RMT / MUDDFormer give up the identity mapping of the residual connection and therefore train
    unstably (the paper's argument for dismissing them, made without an experiment). Tested on the section beyond the
    paper: the identity of the residual path measured at initialisation and after training, the instability cell by
    cell against mHC over the depth sweep and the stress test (`verdict_rival`)."""

    def claim(c: ClaimInputs) -> Claim:
        verdicts = beyond.variant_verdicts(c.index, c.beyond_runs)
        archs = (c.index.get("beyond_paper") or {}).get("archs") or {}
        mine = [v for v in verdicts if archs.get(v["variant"]) == arch and v["runs"]]
        title = f"10{letter}. {name} loses the identity mapping and trains unstably"
        paper_text = "stated without an experiment (§1-2)"
        if not mine:
            return Claim(title, paper_text, "not run", INCONCLUSIVE, f"no run of {name} (config `beyond_paper`)")
        v = mine[0]
        others = [o["variant"] for o in verdicts if o["unstable"] and archs.get(o["variant"]) != arch]
        cells = beyond.instability_cells(c.index, v["variant"], "mhc", c.beyond_runs)
        verdict, why = verdict_rival(cells, others, v["runs"], v["unstable"], name)
        identity = v["identity_at_init"]
        kept = "not measured" if identity is None else ("kept" if identity else "lost")
        ours = (
            f"identity at init {kept} (deviation {_num(v['identity_deviation'])}; after training "
            f"{_num(v['trained_identity_deviation'])}); {v['unstable']} of {v['runs']} runs unstable "
            f"({v['diverged']} diverged)"
        )
        return Claim(title, paper_text, ours, verdict, why)

    claim.__name__ = f"claim_rival_{arch}"
    return claim


CLAIMS: tuple[Callable[[ClaimInputs], Claim], ...] = (
    claim_final_loss,
    claim_instability,
    claim_composite_amax,
    claim_forward_gain,
    claim_ablation,
    claim_benchmarks("baseline", "a"),
    claim_benchmarks("hc", "b"),
    claim_compute_scaling,
    claim_token_scaling,
    claim_overhead,
    claim_rival("rmt", "a", "RMT"),
    claim_rival("mudd", "b", "MUDDFormer"),
)
"""The paper's claims in the report's order: each function gives one row (the paper's number, ours, the verdict)."""


def claims(index: dict[str, Any], measurements: dict[str, Any] | None) -> list[Claim]:
    """The paper's claims with the paper's number, ours and the verdict of each rule."""
    inputs = ClaimInputs(index, measurements)
    return [claim(inputs) for claim in CLAIMS]


def ablation_claim(index: dict[str, Any]) -> Claim:
    """Claim 5: H_res gives most of HC's gain (Table 1)."""
    section = index.get("ablation") or {}
    scale, seeds = section.get("scale"), section_seeds(section)
    rows = section.get("rows") or []

    def row(res: bool, pre: bool, post: bool) -> str | None:
        return next(
            (r["variant"] for r in rows if (r.get("res"), r.get("pre"), r.get("post")) == (res, pre, post)), None
        )

    reference = rows[0]["variant"] if rows else None
    res_only, full = row(True, False, False), row(True, True, True)
    res_gaps = list(paired_gaps(index, scale, res_only, reference, seeds).values()) if res_only and reference else []
    full_gaps = list(paired_gaps(index, scale, full, reference, seeds).values()) if full and reference else []
    verdict, why = verdict_ablation(res_gaps, full_gaps)
    share = paper.TABLE1[1].loss_gap / paper.TABLE1[3].loss_gap
    return Claim(
        "5. H_res gives most of HC's gain (ablation)",
        f"H_res only {paper.TABLE1[1].loss_gap}, all three {paper.TABLE1[3].loss_gap} ({share:.0%}; Table 1)",
        f"H_res only {mean_ci(res_gaps).text()}, all three {mean_ci(full_gaps).text()} at {scale}",
        verdict,
        why,
    )


# --------------------------------------------------------------------------------------------------------------------
# Report sections


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_section(items: Sequence[Claim], tier: str) -> list[str]:
    lines = [
        "## Claims",
        "",
        f"| claim | paper | ours (tier `{tier}`) | verdict |",
        "|---|---|---|---|",
    ]
    for c in items:
        lines.append(f"| {_cell(c.claim)} | {_cell(c.paper)} | {_cell(c.ours)} | **{c.verdict}**: {_cell(c.why)} |")
    counts = {v: sum(c.verdict == v for c in items) for v in VERDICTS}
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "."]
    return lines


def loss_section(index: dict[str, Any]) -> list[str]:
    """Final validation losses per variant and the paired gaps, mean ± 95% CI over seeds."""
    main = index.get("main") or {}
    scale, seeds, variants = main.get("scale"), section_seeds(main), list(main.get("variants") or [])
    lines = [
        "## Final validation loss",
        "",
        f"Main comparison at scale `{scale}`, seeds {seeds}; only completed runs count. Mean ± 95% Student-t CI "
        "(n − 1 dof) over seeds; gaps are paired by seed.",
        "",
        "| quantity | mean ± 95% CI | per seed |",
        "|---|---|---|",
    ]
    for variant in variants:
        losses = {s: final_val_loss(find_run(index, scale, variant, s)) for s in seeds}
        values = [v for v in losses.values() if v is not None]
        per_seed = ", ".join(f"{s}: {v:.4f}" for s, v in losses.items() if v is not None) or "none"
        lines.append(f"| final val loss, {variant} | {_ci_abs(mean_ci(values))} | {per_seed} |")
    pairs = [(v, "baseline") for v in variants if v != "baseline"] + [("mhc", "hc")]
    for a, b in pairs:
        if a in variants and b in variants:
            gaps = paired_gaps(index, scale, a, b, seeds)
            per_seed = ", ".join(f"{s}: {g:+.4f}" for s, g in gaps.items()) or "none"
            lines.append(f"| gap {a} − {b} | {mean_ci(list(gaps.values())).text(4)} | {per_seed} |")
    if "mhc" in variants and "baseline" in variants:
        lines += ["", f"Paper (27B, Fig. 5): mHC − baseline = {paper.FIG5_MHC_FINAL_LOSS_GAP}."]
    return lines


def _ci_abs(ci: CI) -> str:
    if ci.n == 0:
        return "n/a"
    if ci.n < 2:
        return f"{ci.mean:.4f} (n=1)"
    return f"{ci.mean:.4f} ± {ci.half_width:.4f} (n={ci.n})"


def _gap_ci(index: dict[str, Any], a: str, b: str, section: str = "main") -> CI:
    sec = index.get(section) or {}
    return mean_ci(list(paired_gaps(index, sec.get("scale"), a, b, section_seeds(sec)).values()))


def _controls(index: dict[str, Any]) -> dict[str, str | None]:
    """The mechanism controls of the main comparison, found by what they are (not by name): the `gain` arch, and
    mHC with H_res fixed (learn_res false)."""
    variants = index.get("variants") or {}
    main = list((index.get("main") or {}).get("variants") or [])
    gain = next((v for v in main if (variants.get(v) or {}).get("arch") == "gain"), None)
    fixed = next(
        (
            v
            for v in main
            if (variants.get(v) or {}).get("arch") == "mhc"
            and (variants.get(v) or {}).get("connection", {}).get("learn_res") is False
        ),
        None,
    )
    return {"gain": gain, "fixed_res": fixed}


def control_sentences(index: dict[str, Any]) -> list[str]:
    """What each mechanism control lets us say, decided from the paired CIs (never typed by hand)."""
    controls, out = _controls(index), []
    power = power_evidence(index)
    gain = controls["gain"]
    if gain:
        hc, g, hc_g = _gap_ci(index, "hc", "baseline"), _gap_ci(index, gain, "baseline"), _gap_ci(index, "hc", gain)
        numbers = f"HC − baseline {hc.text()}, {gain} − baseline {g.text()}, HC − {gain} {hc_g.text()}"
        if hc.n < MIN_SEEDS or g.n < MIN_SEEDS:
            text = f"Not enough paired seeds for control (a) ({numbers})."
        elif not hc.high < 0:
            text = (
                "HC has no significant advantage over the baseline here, so there is nothing for the gain control to "
                f"recover ({numbers})."
            )
        else:
            share = g.mean / hc.mean
            if hc_g.low > 0:
                text = (
                    f"The single stream with learnable gains beats HC (it gets {share:.0%} of HC's advantage over the "
                    f"baseline): whatever HC's streams add, a residual gain does more here ({numbers})."
                )
            elif share >= CONTROL_RECOVERS and g.high < 0 and hc_g.high >= 0:
                text = (
                    f"A learnable residual and branch gain per sub-layer recovers {share:.0%} of HC's advantage, and "
                    f"HC is not significantly better than it: at this tier HC's advantage is a residual gain, not "
                    f"stream mixing ({numbers})."
                )
            elif hc_g.high < 0 and g.high < 0:
                text = (
                    f"The gain control recovers {share:.0%} of HC's advantage and HC is still significantly better "
                    f"than it: part of HC's advantage is residual gain, the rest needs its n streams ({numbers})."
                )
            elif hc_g.high < 0 and g.low > 0:
                text = (
                    f"A learnable residual gain is worse than the baseline ({share:.0%} of HC's advantage) and HC "
                    f"beats it: HC's advantage needs its n streams ({numbers})."
                )
            elif hc_g.high < 0:
                text = (
                    f"A learnable residual gain does not recover HC's advantage (it gets {share:.0%} of it, not "
                    f"significantly different from the baseline): HC's advantage needs its n streams ({numbers})."
                )
            else:
                text = f"Control (a) is not decisive at these seeds: it gets {share:.0%} of HC's advantage ({numbers})."
        out.append(f"**(a) Residual gain (`{gain}`).** {text}")
    fixed = controls["fixed_res"]
    if fixed:
        d = _gap_ci(index, "mhc", fixed)
        numbers = f"mHC − {fixed} {d.text(4)}; {fixed} − baseline {_gap_ci(index, fixed, 'baseline').text(4)}"
        if d.n < MIN_SEEDS:
            text = f"Not enough paired seeds for control (b) ({numbers})."
        elif d.high < 0:
            text = (
                "Learning H_res helps: mHC beats the same model with H_res fixed to I, so its mixing matters here "
                f"({numbers})."
            )
        elif d.low > 0:
            text = (
                f"Learning H_res hurts: the model with H_res fixed to I ('identity HC') is better than mHC ({numbers})."
            )
        else:
            text = (
                f"Learning H_res makes no detectable difference: whatever mHC gains here comes from H_pre/H_post, not "
                f"from mixing the streams ({numbers}; with this paired SD the main comparison detects gaps ≥ "
                f"{power['detectable']:.3f} at {power['power']:.0%} power)."
            )
        out.append(f"**(b) Identity HC (`{fixed}`, mHC with H_res = I).** {text}")
    return out


def mechanism_section(index: dict[str, Any]) -> list[str]:
    from models.diagnostics import MECHANISM_THRESHOLDS

    rows = mechanism_rows(index)
    lines = [
        "## Mechanism: did what is compared actually operate?",
        "",
        "From each run's diagnostics (`diagnostics.jsonl`, last record; means over seeds): the spread of the n streams "
        "entering a sub-layer (‖x_i − x̄‖/‖x̄‖; median and max over sub-layers); how much the learned parameters "
        "changed H_res (the token-averaged H_res on the same input with the current parameters against the step-0 "
        "ones, largest entry change, median and max over sub-layers: an input drift alone does not count); the rest "
        "max over sub-layers: how far the token-averaged H_res moved from step 0 "
        "(learning and input drift together) and from J/n; how much it varies across tokens; the gradient norm "
        "reaching the H_res parameters at step 0 and at the end; and the spread of H_post across "
        "streams. A learned H_res operates when, in the median sub-layer, its learned change exceeds "
        f"{MECHANISM_THRESHOLDS['hres_learned']:g} and the streams differ by more than "
        f"{MECHANISM_THRESHOLDS['stream_spread']:g} (the median: one sub-layer that separates the streams while the "
        "others re-average them is not a network that uses n streams; models/diagnostics.py; "
        "tests/test_mechanism.py shows the shipped "
        "mHC passing and b = 0 with AdamW ε = 1e-8 failing). Claims about mHC are inconclusive when `mhc` did not "
        "operate in every main seed.",
        "",
    ]
    if not rows:
        return lines + ["No diagnostics with stream statistics in this tier."]
    lines += [
        "| variant | arch | operated (seeds) | stream spread (median / max) | H_res learned (median / max) | "
        "H_res moved | H_res − J/n | "
        "H_res token dev | grad H_res step 0 | grad H_res end | H_post spread |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: Any, spec: str = ".3g") -> str:
        return format(v, spec) if is_number(v) else "n/a"

    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['arch']} | {r['operated']} of {r['seeds']} | "
            f"{f(r['stream_spread'])} / {f(r['stream_spread_max'])} | "
            f"{f(r['hres_learned'])} / {f(r['hres_learned_max'])} | {f(r['hres_from_init'])} | "
            f"{f(r['hres_from_uniform'])} | "
            f"{f(r['hres_token_dev'])} | "
            f"{f(r['grad_res_init'], '.2e')} | {f(r['grad_res_end'], '.2e')} | {f(r['post_spread'])} |"
        )
    return lines + [
        "",
        "What 'operated' requires depends on the variant: a learned H_res over n streams must change through learning "
        "and the streams must differ; `gain` has one stream (spread 0 by definition) and its 'H_res' is the 1×1 "
        "residual gain, which must be learned away from 1; with H_res fixed to I only the streams must differ (which "
        "the shipped init guarantees from step 0: that control's row says what it is, not that it learned).",
    ]


def controls_section(index: dict[str, Any]) -> list[str]:
    sentences = control_sentences(index)
    lines = ["## Controls that name the mechanism", ""]
    if not sentences:
        return lines + ["This tier has no control variants."]
    lines += [
        "Paired by seed with the main comparison. (a) asks whether a single stream with a learnable per-sub-layer "
        "residual and branch gain recovers HC's advantage; (b) asks whether mHC's learned stream mixing matters.",
        "",
    ]
    return lines + [item for sentence in sentences for item in (f"- {sentence}",)]


def init_ablation_section(index: dict[str, Any]) -> list[str]:
    """The initialisation x AdamW eps ablation: each variant's loss gap to the shipped `mhc` and its mechanism."""
    section = index.get("init_ablation") or {}
    variants = list(section.get("variants") or [])
    lines = ["## Initialisation × AdamW ε", ""]
    if not variants:
        return lines + ["This tier has no initialisation ablation."]
    scale, seeds = section.get("scale"), section_seeds(section)
    mech = {r["variant"]: r for r in mechanism_rows(index)}
    specs = index.get("variants") or {}
    lines += [
        f"At `{scale}`, seeds {seeds}, paired by seed with the shipped default `mhc`. With {len(seeds)} seeds the 95% "
        "CI is wide; the per-seed gaps show whether the sign is consistent.",
        "",
        "| variant | what | operated | final val loss | gap to mhc (95% CI) | per seed |",
        "|---|---|---|---|---|---|",
    ]
    better = []
    for variant in variants:
        losses = [final_val_loss(find_run(index, scale, variant, s)) for s in seeds]
        losses = [v for v in losses if v is not None]
        gaps = paired_gaps(index, scale, variant, "mhc", seeds) if variant != "mhc" else {}
        ci = mean_ci(list(gaps.values()))
        row = mech.get(variant)
        operated = f"{row['operated']} of {row['seeds']}" if row else "n/a"
        what = _cell((specs.get(variant) or {}).get("description", ""))
        per_seed = ", ".join(f"{s}: {g:+.4f}" for s, g in gaps.items())
        loss = f"{np.mean(losses):.4f}" if losses else "n/a"
        lines.append(f"| {variant} | {what} | {operated} | {loss} | {ci.text(4) if gaps else '—'} | {per_seed} |")
        if gaps and len(gaps) >= MIN_SEEDS and all(g < 0 for g in gaps.values()):
            better.append(variant)
    lines.append("")
    if better:
        lines.append(
            "Evidence on the shipped default: " + ", ".join(f"`{v}`" for v in better) + " had a lower loss than `mhc` "
            "in every seed; the default is not clearly supported by this ablation (see the CIs)."
        )
    else:
        lines.append(
            "Evidence on the shipped default: no alternative had a lower loss than `mhc` in every seed of this "
            "ablation; the default is consistent with the evidence here."
        )
    operating = [v for v in variants if v in mech and mech[v]["operated"] == mech[v]["seeds"]]
    idle = [v for v in variants if v in mech and mech[v]["operated"] == 0]
    if operating or idle:
        lines.append(
            "Which settings let mHC's mechanism operate (see Mechanism): "
            + (f"in every seed {', '.join(f'`{v}`' for v in operating)}" if operating else "none in every seed")
            + (f"; in no seed {', '.join(f'`{v}`' for v in idle)}" if idle else "")
            + ". A loss gap of a setting whose streams stay copies compares a branch-gain network, not mHC."
        )
    return lines


def lr_sweep_section(index: dict[str, Any]) -> list[str]:
    frame = lr_sweep_runs(index)
    frame = frame[frame["status"] != "missing"]
    lines = ["## Stability under a learning-rate stress test", ""]
    sweep = index.get("lr_sweep") or {}
    if frame.empty:
        return lines + ["This tier has no LR sweep."]
    lines += [
        f"Each variant at {', '.join(f'{m:g}×' for m in sweep.get('multipliers') or [])} the tier's learning rate, "
        f"seeds {sweep.get('seeds')}, at `{sweep.get('scale')}`. A run is unstable when it diverged (non-finite loss "
        f"or gradient) or its EMA-smoothed training loss rose ≥ {LOSS_SURGE_NATS:g} nats above its running minimum "
        f"after the first {WARMUP_FRACTION:.0%} of steps. Gradient spikes (steps ≥ {GRAD_SPIKE_RATIO:g}× the run's "
        "median norm) are counted beside it.",
        "",
        "| variant | LR | runs | unstable | diverged | largest surge (nats) | spike steps | "
        "final val loss (completed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (variant, multiplier), g in frame.groupby(["variant", "multiplier"], sort=False):
        done = [v for v in g["final_val_loss"] if is_number(v)]
        surges = [v for v in g["surge"] if is_number(v)]
        surge = f"{max(surges):.3f}" if surges else "n/a"
        loss = f"{np.mean(done):.4f}" if done else "n/a"
        lines.append(
            f"| {variant} | {multiplier:g}× | {len(g)} | {int(g['unstable'].sum())} | {int(g['diverged'].sum())} | "
            f"{surge} | {int(g['spikes'].sum())} | {loss} |"
        )
    return lines


EXPLODING_GAIN = 10.0
"""A composite gain counts as exploding from this value on (the depth sweep's "where does HC's gain explode")."""


def beyond_section(index: dict[str, Any]) -> list[str]:
    """Per variant of the section beyond the paper: identity at init, divergence, the gains at the deepest point, the
    loss gap per depth; and the depth at which each variant's composite gain first explodes."""
    lines = ["## Beyond the paper: RMT, MUDDFormer, mHC-lite and depth", ""]
    section = index.get("beyond_paper") or {}
    if not section:
        return lines + ["This tier has no `beyond_paper` section."]
    runs = beyond.section_runs(index)
    table = beyond.depth_table(runs[0])
    depths = [int(p["sublayers"]) for p in section.get("depths") or []]
    seeds = list(section.get("seeds") or [])
    stress = section.get("stress") or {}
    lines += [
        f"Every variant on the shared core and recipe at {', '.join(map(str, depths))} sub-layers (seeds "
        f"{section.get('seeds')})"
        + (
            f" and at {', '.join(f'{m:g}×' for m in stress.get('multipliers') or [])} the learning rate at "
            f"`{stress.get('scale')}` (seeds {stress.get('seeds')})"
            if stress
            else ""
        )
        + ". Identity at init: with every sub-layer's output zeroed, does each sub-layer read the token's embedding "
        f"(largest deviation ≤ {beyond.IDENTITY_TOLERANCE:g}; after training, the median over runs)? Composite gain: "
        "the Jacobian forward gain of a random "
        "perturbation of the residual state through the whole depth (models/jacobian_gain.py), at the deepest point. "
        "Gap: final validation loss minus the baseline's at the same depth and seed, mean ± 95% CI over the seeds "
        "(* where the CI excludes 0)"
        + (
            f"; with {len(seeds)} seeds the CI reaches {t_quantile(len(seeds) - 1):.3g} × the paired SD / "
            f"√{len(seeds)} on each side, so only large gaps are detected: the depth sweep shows trends, its "
            "divergences and gains are the evidence"
            if len(seeds) >= 2
            else ""
        )
        + ".",
        "",
        "| variant | identity at init (deviation) | deviation after training | runs | unstable | diverged | "
        "composite gain at init | trained | " + " | ".join(f"gap @ {d}" for d in depths) + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(depths),
    ]
    for v in beyond.variant_verdicts(index, runs):
        identity = v["identity_at_init"]
        kept = "n/a" if identity is None else ("yes" if identity else "**no**")
        gaps = []
        for d in depths:
            row = table[(table["variant"] == v["variant"]) & (table["sublayers"] == d)] if not table.empty else table
            if v["variant"] == "baseline" or row.empty or not is_number(row["gap"].iloc[0]):
                gaps.append("")
                continue
            gap, ci = row["gap"].iloc[0], row["gap_ci"].iloc[0]
            detected = is_number(ci) and abs(gap) > ci  # the 95% CI excludes 0
            gaps.append(f"{gap:+.3f}" + (f" ± {ci:.3f}" if is_number(ci) else "") + (" *" if detected else ""))
        lines.append(
            f"| {v['variant']} | {kept} ({_num(v['identity_deviation'])}) | {_num(v['trained_identity_deviation'])} | "
            f"{v['runs']} | {v['unstable']} | "
            f"{v['diverged']} | {_num(v['init_composite_fwd'])} | {_num(v['final_composite_fwd'])} | "
            + " | ".join(gaps)
            + " |"
        )
    lines.append("")
    for measure, label in (("amax_composite", "composite Amax gain"), ("final_composite_fwd", "Jacobian gain")):
        explode = []
        for variant in section.get("variants") or []:
            mine = table[table["variant"] == variant].sort_values("sublayers") if not table.empty else table
            values = [(int(r["sublayers"]), r[measure]) for _, r in mine.iterrows() if is_number(r[measure])]
            values = [(d, g) for d, g in values if np.isfinite(g)]
            if not values:
                continue
            first = next((d for d, g in values if g >= EXPLODING_GAIN), None)
            curve = ", ".join(f"{d}: {g:.3g}" for d, g in values)
            where = f"≥ {EXPLODING_GAIN:g} from {first} sub-layers" if first else f"< {EXPLODING_GAIN:g} at every depth"
            explode.append(f"{variant} {where} ({curve})")
        if explode:
            lines.append(f"- **Where the {label} explodes** (trained, median over seeds): " + "; ".join(explode) + ".")
    return lines


def power_section(index: dict[str, Any]) -> list[str]:
    ev = power_evidence(index)
    lines = ["## What this tier can detect (power)", ""]
    if ev["n"] < 2 or not math.isfinite(ev["sd"]):
        return lines + [f"{ev['n']} paired seed(s) of mHC and the baseline: no estimate of the paired spread."]
    needed = ev["needed"]
    lines.append(
        f"The {ev['n']} paired seeds of the main comparison have a standard deviation of the per-seed gap "
        "mHC − baseline "
        f"of {ev['sd']:.4f} nats. A two-sided paired t-test at α = {ev['alpha']:g} then detects a true gap of "
        f"{ev['detectable']:.4f} nats or more with {ev['power']:.0%} power (analysis/power.py). The target, "
        f"{ev['target']:g} nats ("
        + (
            "the paper's 27B gap"
            if math.isclose(ev["target"], abs(paper.FIG5_MHC_FINAL_LOSS_GAP))
            else f"the configured `power.target_gap`; the paper's 27B gap is {abs(paper.FIG5_MHC_FINAL_LOSS_GAP):g}"
        )
        + "), "
        + (
            f"is within reach ({needed} seeds would suffice at this spread)."
            if needed is not None and needed <= ev["n"]
            else f"needs {needed if needed else 'more than 200'} seeds at this spread."
        )
    )
    planned = ev["planned_sd"]
    if planned is not None:
        planned_gap = detectable_gap(planned, ev["n"], ev["alpha"], ev["power"])
        source = f" ({ev['planned_from']})" if ev["planned_from"] else ""
        comparison = (
            "the tier's own spread is larger, so it detects less than it was sized for"
            if ev["sd"] > planned
            else "the tier's own spread is no larger, so it detects what it was sized for"
        )
        lines += [
            "",
            f"The tier was sized with a paired SD of {planned:.4f} nats{source}, which at {ev['n']} seeds gives a "
            f"detectable gap of {planned_gap:.4f}; {comparison} (config `power`, and the calculation in the "
            "config's comments).",
        ]
    return lines


def runs_section(index: dict[str, Any]) -> list[str]:
    lines = [
        "## Runs",
        "",
        "| run | roles | status | reason | steps done | final val loss | final train loss |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = sorted(all_runs(index), key=lambda r: (str(r.get("scale")), str(r.get("variant")), int(r.get("seed", 0))))
    for r in runs:
        fv, ft = r.get("final_val_loss"), r.get("final_train_loss")
        lines.append(
            f"| {r['key']} | {', '.join(r.get('roles') or [])} | {r.get('status', 'missing')} | "
            f"{_cell(r.get('reason') or '')} | {r.get('steps_done', '')} | "
            f"{f'{fv:.4f}' if is_number(fv) else ''} | {f'{ft:.4f}' if is_number(ft) else ''} |"
        )
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.get("status", "missing")] = counts.get(r.get("status", "missing"), 0) + 1
    lines += ["", "Status counts: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no runs") + "."]
    return lines


def figures_section(figures: Path, report_dir: Path) -> list[str]:
    lines = ["## Figures", ""]
    for name, caption in ((f.name, f.caption) for f in FIGURES):
        rel = Path(os.path.relpath(figures, report_dir))
        png, pdf = (rel / f"{name}.png").as_posix(), (rel / f"{name}.pdf").as_posix()
        exists = (figures / f"{name}.png").is_file()
        lines += [f"### {caption}", "", f"![{caption}]({png})" + ("" if exists else " (not generated yet)"), ""]
        lines += [f"[PDF]({pdf})", ""]
    return lines


def tables_section(tables: Path) -> list[str]:
    lines = ["## Tables", ""]
    for name in TABLE_NAMES:
        path = tables / f"{name}.md"
        if path.is_file():
            text = path.read_text().strip()
            lines += ["\n".join("#" + line if line.startswith("## ") else line for line in text.splitlines()), ""]
        else:
            lines += [f"### {name}", "", f"Not built (`{path}` is missing; run `python -m analysis.tables`).", ""]
    return lines


def deviations_section(index: dict[str, Any], measurements: dict[str, Any] | None) -> list[str]:
    """Everything that differs from the paper's setup: generated from the runs' effective configs
    (analysis/deviations.py), then what the evaluation files and measurements record."""
    from .deviations import deviations

    tier = str(index.get("tier", "?"))
    lines = [
        "## Deviations",
        "",
        f"Generated from the effective configs of this tier's (`{tier}`) runs; absolute numbers are not comparable "
        "with the paper's, only the direction of an effect is, and the verdicts say when even that is not decided.",
        "",
        *([f"- {text}" for text in deviations(index)] or ["- (this index records no effective configs to compare)"]),
    ]
    scale, variants, seeds = eval_runs(index)
    substitutions: dict[str, list[str]] = {}
    sources: set[str] = set()
    for variant in variants:
        for run in find_runs(index, scale=scale, variant=variant, seeds=seeds):
            data = load_json(run.get("eval"))
            if not isinstance(data, dict):
                continue
            if data.get("mhc_data_source"):
                sources.add(str(data["mhc_data_source"]))
            for text in eval_substitutions(data):
                substitutions.setdefault(text, []).append(run["key"])
    if sources:
        lines.append("- Benchmark data source: " + ", ".join(f"`{s}`" for s in sorted(sources)) + ".")
    if substitutions:
        lines.append("- Benchmark data substitutions recorded in the evaluation JSONs (`mhc_substitutions`):")
        for text, runs in substitutions.items():
            lines.append(f"  - {_cell(text)} (runs: {', '.join(sorted(set(runs)))})")
    overhead = list((measurements or {}).get("overhead") or [])
    if overhead and all(r.get("kernels") in (None, "reference") for r in overhead):
        lines.append(
            "- Overhead: measured on the unfused PyTorch path "
            f"({(measurements or {}).get('machine', 'CPU')}), not with the paper's fused kernels on GPUs."
        )
    lines.append(
        "- Table 1's scale is not stated in the paper; ours runs at the ablation scale of this tier. Fig. 6 and "
        "Fig. 8 have no numbers in the paper's text; the figure notes mark the third-party read-offs."
    )
    return lines


def rules_section() -> list[str]:
    return [
        "## Verdict rules",
        "",
        "Four classes: **reproduced** (the evidence for the claim holds), **contradicted** (the evidence goes against "
        "it), **inconclusive** (the data cannot decide: a CI containing both 0 and the paper's value, too few seeds, "
        "a mechanism that did not operate, or a measurement unlike the paper's) and **holds by construction** (an "
        "algebraic identity of the method, true whatever was learned).",
        "",
        f"- Loss gaps (claims 1, 7, 8): per-seed paired gaps, 95% Student-t CI (n − 1 dof); reproduced when the CI "
        f"lies below 0; contradicted when it lies above 0, or (claim 1) contains 0 but excludes the paper's value; "
        f"inconclusive when it contains both, with fewer than {MIN_SEEDS} seeds, or when mHC's mechanism did not "
        "operate in every seed (see Mechanism).",
        f"- Claim 2 (LR sweep): a run is unstable when it diverged or its EMA-smoothed loss rose ≥ {LOSS_SURGE_NATS:g} "
        f"nats above its running minimum after the first {WARMUP_FRACTION:.0%} of the planned steps. Over the (LR, "
        f"seed) cells with both an HC and an mHC run: reproduced when HC alone is unstable in more cells than mHC "
        f"alone and a one-sided sign test on those cells gives p < {SIGN_TEST_ALPHA:g}; contradicted when the same "
        "test says the reverse (mHC alone unstable in significantly more cells), or mHC is unstable wherever HC is; "
        "inconclusive when neither is unstable anywhere, or neither direction is significant.",
        f"- Claim 3: mHC's largest composite backward gain ≤ {AMAX_MHC_BOUND:g} and HC's largest composite gain ≥ "
        f"{AMAX_SEPARATION:g}× it; reproduced when mHC's mechanism operated, holds by construction when its H_res did "
        "not move (then every gain is 1); contradicted when either bound fails.",
        f"- Claim 4: holds by construction when max |single-layer forward gain − 1| ≤ {FORWARD_GAIN_TOL:g} (rows are "
        "normalised last); a larger deviation would be an implementation error (contradicted).",
        f"- Claim 5: the full-HC row's gap CI must lie below 0 (else inconclusive, or contradicted above 0) and the "
        f"H_res-only row must give ≥ {ABLATION_RES_SHARE:.0%} of its gain: reproduced when the H_res-only row's 95% "
        f"CI lies beyond {ABLATION_RES_SHARE:.0%} of the full row's mean gap, contradicted when it lies short of it, "
        "inconclusive when it straddles it or has fewer than "
        f"{MIN_SEEDS} seeds.",
        "- Claim 6: per task, the seed-level 95% CI of the paired per-item difference in the gold answer's "
        "log-likelihood; reproduced when it lies above 0 for some task and below 0 for none, contradicted in the "
        "opposite case, inconclusive otherwise or when mHC's mechanism did not operate.",
        "- Claim 8: additionally the mean gap must be < 0 at every checkpoint of the second half.",
        f"- Claim 9: only a fused-kernel GPU measurement is comparable (else inconclusive); reproduced when its "
        f"overhead is ≤ {OVERHEAD_TOLERANCE:g} × {100 * paper.OVERHEAD_N4:.1f}%.",
    ]


README_START = "<!-- results:{tier}:start (generated by python -m analysis.report; do not edit) -->"
README_END = "<!-- results:{tier}:end -->"


def summary_lines(index: dict[str, Any], items: Sequence[Claim]) -> list[str]:
    """The README's results paragraph: what this tier decided, in plain words, from the same numbers as the report."""
    main = index.get("main") or {}
    scale, seeds = main.get("scale"), section_seeds(main)
    counts = {v: sum(c.verdict == v for c in items) for v in VERDICTS}
    power = power_evidence(index)
    lines = [
        f"Main comparison at `{scale}`, {len(seeds)} seeds paired by initialisation and data order; final validation "
        "loss, mean ± 95% CI of the per-seed gap to the baseline:",
        "",
        "| variant | gap to baseline (nats) |",
        "|---|---|",
    ]
    for variant in main.get("variants") or []:
        if variant != "baseline":
            lines.append(f"| {variant} | {_gap_ci(index, variant, 'baseline').text(4)} |")
    lines += ["", f"Paper (27B): mHC − baseline = {paper.FIG5_MHC_FINAL_LOSS_GAP}.", ""]
    if power["n"] >= 2 and math.isfinite(power["sd"]):
        lines.append(
            f"- **What this tier can detect:** gaps of {power['detectable']:.3f} nats or more between mHC and the "
            f"baseline ({power['power']:.0%} power, paired SD {power['sd']:.4f} over {power['n']} seeds)."
        )
    rows = mechanism_rows(index)
    mhc = next((r for r in rows if r["variant"] == "mhc"), None)
    if mhc:
        measured = ", ".join(
            f"{label} {mhc[key]:.3f}"
            for key, label in (
                ("hres_learned", "in the median sub-layer learning changed H_res by"),
                ("stream_spread", "stream spread"),
            )
            if is_number(mhc.get(key))
        )
        lines.append(
            f"- **Mechanism:** mHC's residual mixing operated in {mhc['operated']} of {mhc['seeds']} seeds"
            + (f" ({measured})." if measured else " (not recorded).")
        )
    lines += [f"- {sentence}" for sentence in control_sentences(index)]
    lines.append("- **Verdicts:** " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ".")
    decided = [c for c in items if c.verdict in (REPRODUCED, CONTRADICTED)]
    lines.append(
        "- **What this tier decides:** "
        + ("; ".join(f"{_short(c.claim)}: **{c.verdict}** ({c.why})" for c in decided) or "none of the claims")
        + "."
    )
    lines.append(
        "- **What it cannot decide, and why:** "
        + "; ".join(f"{_short(c.claim)}: {c.why}" for c in items if c.verdict == INCONCLUSIVE)
        + "."
    )
    constructed = [c for c in items if c.verdict == BY_CONSTRUCTION]
    if constructed:
        lines.append(
            "- **Holds by construction (not evidence):** "
            + "; ".join(f"{_short(c.claim)}: {c.why}" for c in constructed)
            + "."
        )
    return lines


def _short(claim: str) -> str:
    """'1. mHC's final loss is below the baseline's' -> 'claim 1 (mHC's final loss is below the baseline's)'."""
    number, _, text = claim.partition(". ")
    return f"claim {number} ({text})" if text else claim


def build_report(
    index: dict[str, Any], tables: Path, figures: Path, report_dir: Path, measurements: dict[str, Any] | None
) -> tuple[str, str]:
    """The whole report and the README summary, as markdown."""
    tier = str(index.get("tier", "?"))
    items = claims(index, measurements)
    header = [
        "# mHC replication report",
        "",
        f"- Tier: `{tier}`",
        f"- Index created: {index.get('created', 'unknown')}",
        f"- Git commit: `{index.get('git_sha')}`" if index.get("git_sha") else "- Git commit: not recorded",
        f"- Measurements: {(measurements or {}).get('machine', 'none')}"
        + (f", {measurements.get('date')}" if measurements and measurements.get("date") else ""),
        "",
        "Paper: mHC, Manifold-Constrained Hyper-Connections (DeepSeek, arXiv 2512.24880). Paper numbers come from "
        "`analysis/paper.py`; ours from the runs listed below. Absolute numbers are not comparable across scales.",
    ]
    summary = summary_lines(index, items)
    sections = [
        header,
        ["## Summary", "", *summary],
        claims_section(items, tier),
        mechanism_section(index),
        controls_section(index),
        power_section(index),
        loss_section(index),
        init_ablation_section(index),
        lr_sweep_section(index),
        beyond_section(index),
        runs_section(index),
        figures_section(figures, report_dir),
        tables_section(tables),
        deviations_section(index, measurements),
        rules_section(),
    ]
    report = "\n".join(line for section in sections for line in [*section, ""]).rstrip() + "\n"
    return report, "\n".join(summary) + "\n"


def update_readme(readme: Path, tier: str, summary: str) -> bool:
    """Replace the README's generated results block of `tier` with `summary`; False when the markers are missing."""
    start, end = README_START.format(tier=tier), README_END.format(tier=tier)
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{summary}{end}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", required=True, help="folder written by analysis.tables")
    parser.add_argument("--out", required=True, help="report markdown file")
    parser.add_argument(
        "--figures", default=None, help="folder written by analysis.figures (default: OUT's folder/figures)"
    )
    parser.add_argument(
        "--measurements", default=None, help="measurements.json (default: measurements.json beside the index)"
    )
    parser.add_argument("--readme", default=None, help="also rewrite this README's generated results block")
    args, index = parse_args_and_index(parser, argv)
    if index is None:
        return 2
    out = Path(args.out)
    figures = Path(args.figures) if args.figures else out.parent / "figures"
    measurements = load_json(args.measurements or Path(args.index).parent / "measurements.json")
    text, summary = build_report(index, Path(args.tables), figures, out.parent, measurements)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    atomic_write_text(out.parent / "summary.md", summary)
    print(f"{out}: report written (and {out.parent / 'summary.md'})", file=sys.stderr)
    if args.readme:
        if not update_readme(Path(args.readme), str(index.get("tier", "?")), summary):
            print(f"error: {args.readme} has no results block for tier {index.get('tier')}", file=sys.stderr)
            return 2
        print(f"{args.readme}: results block updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
