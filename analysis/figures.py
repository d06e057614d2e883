"""`python -m analysis.figures --index results/analysis/runs.json --out results/figures`.

The paper's result figures (2, 3, 5, 6, 7, 8) redrawn from our runs, each as PNG and PDF. Every figure names the
tier and scale it shows and carries a "paper: ..." note with the paper's number where the paper gives one, so a
reader never mistakes our tiny-scale curve for the paper's. A figure whose runs are not in this tier's config is
still written, as a figure that says "not run in this tier", so the report's links never break.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402

from . import paper  # noqa: E402
from .tables import (  # noqa: E402
    amax_run,
    compute_scaling_points,
    find_run,
    find_runs,
    is_number,
    last_diagnostics,
    load_index,
    load_json,
    mean_ci,
    paired_gaps,
    read_jsonl,
    section_seeds,
    token_scaling_points,
    train_rows,
)

NOT_RUN = "not run in this tier"
COLORS = {"baseline": "#4d4d4d", "hc": "#d62728", "mhc": "#1f77b4", "mhc-id": "#17becf"}
LABELS = {"baseline": "Baseline", "hc": "HC", "mhc": "mHC", "mhc-id": "mHC-id"}
EXTRA_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"]


def color_of(variant: str, order: Sequence[str] = ()) -> str:
    """The paper's three variants have fixed colours; other variants of a tier (ablations, init variants) get the
    next free ones in their config order."""
    if variant in COLORS:
        return COLORS[variant]
    extras = [v for v in order if v not in COLORS]
    return EXTRA_COLORS[extras.index(variant) % len(EXTRA_COLORS)] if variant in extras else "#7f7f7f"


def label_of(variant: str) -> str:
    return LABELS.get(variant, variant)


FIGURES: tuple[str, ...] = (
    "fig2_hc_instability",
    "fig3_hc_amax",
    "fig5_mhc_stability",
    "fig6_scaling",
    "fig7_mhc_amax",
    "fig8_mappings",
)


# --------------------------------------------------------------------------------------------------------------------
# Helpers


def ema(values: Sequence[float], span: int | None = None) -> np.ndarray:
    """Exponential moving average over the logged points (span = max(3, N/10) points unless given).

    Training losses at tiny batch sizes are noisy; the smoothed line shows the trend while the raw one stays
    visible as a faint line beside it."""
    series = pd.Series(np.asarray(values, dtype=float))
    span = span or max(3, len(series) // 10)
    return series.ewm(span=span, adjust=False, ignore_na=True).mean().to_numpy()


def _style() -> None:
    try:
        import seaborn as sns

        sns.set_theme(style="whitegrid", context="paper")
    except ImportError:  # pragma: no cover - seaborn is optional
        plt.style.use("default")


def _title(index: dict[str, Any], what: str, scale: str | None, extra: str = "") -> str:
    tail = f", {extra}" if extra else ""
    return f"{what} — tier {index.get('tier', '?')}, scale {scale or '?'}{tail}"


def _note(fig: Figure, text: str) -> None:
    """The "paper: ..." footnote every figure carries."""
    fig.text(0.01, 0.005, text, fontsize=7.5, ha="left", va="bottom", wrap=True, color="#333333")


def _panel_not_run(ax: plt.Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}:\n{NOT_RUN}", ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def not_run_figure(title: str, message: str, note: str = "") -> Figure:
    """A placeholder figure that says plainly that its experiment was not run in this tier."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.axis("off")
    ax.text(0.5, 0.6, NOT_RUN.upper(), ha="center", va="center", fontsize=18, weight="bold", transform=ax.transAxes)
    ax.text(0.5, 0.35, message, ha="center", va="center", fontsize=10, wrap=True, transform=ax.transAxes)
    fig.suptitle(title, fontsize=10)
    if note:
        _note(fig, note)
    return fig


def save(fig: Figure, out: Path, name: str, dpi: int = 150) -> list[Path]:
    """Writes NAME.png (at `dpi`) and NAME.pdf and closes the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _train_frame(run: dict[str, Any] | None) -> pd.DataFrame:
    """step, loss, grad_norm of a run's training rows (empty frame when the run left no metrics)."""
    rows = train_rows(read_jsonl((run or {}).get("metrics")))
    frame = pd.DataFrame(rows, columns=["step", "loss", "grad_norm"]) if rows else pd.DataFrame()
    if frame.empty:
        return pd.DataFrame(columns=["step", "loss", "grad_norm"])
    frame = frame[["step", "loss", "grad_norm"]].astype(float)
    return frame.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def _runs_with_metrics(index: dict[str, Any], scale: str | None, variant: str, seeds: Sequence[int]) -> dict:
    """seed -> (run, training frame) for the runs of a variant that logged any training step."""
    out = {}
    for run in find_runs(index, scale=scale, variant=variant, seeds=seeds):
        frame = _train_frame(run)
        if not frame.empty:
            out[int(run["seed"])] = (run, frame)
    return out


def why_missing(index: dict[str, Any], variant: str, what: str = "training metrics") -> str:
    """Why a variant's main-scale curves are absent: not in this tier's config, or planned but without output."""
    main = index.get("main") or {}
    if variant not in (main.get("variants") or []):
        return f"{LABELS.get(variant, variant)} is not in this tier's main comparison."
    runs = find_runs(index, scale=main.get("scale"), variant=variant, seeds=section_seeds(main))
    statuses = sorted({str(r.get("status", "missing")) for r in runs}) or ["not in the index"]
    return f"{LABELS.get(variant, variant)}: planned, but no run left {what} (status: {', '.join(statuses)})."


def _gap_frames(a: dict, b: dict) -> dict[int, pd.DataFrame]:
    """Per seed present in both: step and loss(a) − loss(b) over the steps both logged."""
    out = {}
    for seed in sorted(set(a) & set(b)):
        merged = a[seed][1].merge(b[seed][1], on="step", suffixes=("_a", "_b"))
        if not merged.empty:
            out[seed] = pd.DataFrame({"step": merged["step"], "gap": merged["loss_a"] - merged["loss_b"]})
    return out


def _mean_by_step(frames: Sequence[pd.DataFrame], column: str) -> pd.DataFrame:
    """Mean, min and max of `column` across seeds at each step (seeds that stopped early drop out)."""
    stacked = pd.concat([f[["step", column]] for f in frames], ignore_index=True)
    grouped = stacked.groupby("step")[column]
    return pd.DataFrame({"mean": grouped.mean(), "min": grouped.min(), "max": grouped.max()}).reset_index()


def _mark_diverged(ax: plt.Axes, runs: dict, variant: str) -> None:
    for seed, (run, frame) in runs.items():
        if run.get("status") == "diverged" and not frame.empty:
            step = frame["step"].iloc[-1]
            ax.axvline(step, color=COLORS.get(variant, "k"), ls=":", lw=1)
            ax.annotate(
                f"{LABELS.get(variant, variant)} seed {seed} diverged",
                (step, 0.95),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                ha="right",
                va="top",
                color=COLORS.get(variant, "k"),
            )


def _maybe_log(ax: plt.Axes, values: np.ndarray) -> None:
    finite = values[np.isfinite(values) & (values > 0)]
    if finite.size and finite.max() / max(finite.min(), 1e-30) > 50:
        ax.set_yscale("log")


# --------------------------------------------------------------------------------------------------------------------
# Fig. 2 and Fig. 5: training curves


def fig2_hc_instability(index: dict[str, Any]) -> tuple[Figure, str]:
    """(a) training-loss gap HC − mHC vs step (raw faint, EMA bold); (b) gradient norm of HC and mHC."""
    main = index.get("main") or {}
    scale, seeds = main.get("scale"), section_seeds(main)
    title = _title(index, "Fig. 2: HC training instability", scale, f"seeds {seeds}")
    note = (
        f"paper (27B): HC shows an unexpected loss surge around step {paper.FIG2_HC_SURGE_STEP // 1000}k, "
        "tightly correlated with a gradient-norm spike."
    )
    hc = _runs_with_metrics(index, scale, "hc", seeds)
    mhc = _runs_with_metrics(index, scale, "mhc", seeds)
    missing = [v for v, runs in (("hc", hc), ("mhc", mhc)) if not runs]
    if missing:
        message = " ".join(why_missing(index, v) for v in missing)
        return not_run_figure(title, message, note), f"{NOT_RUN}: {', '.join(LABELS[v] for v in missing)} missing"
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.2))
    gaps = _gap_frames(hc, mhc)
    if gaps:
        mean = _mean_by_step(list(gaps.values()), "gap")
        ax_a.plot(mean["step"], mean["mean"], color=COLORS["hc"], alpha=0.25, lw=0.8, label="HC − mHC (raw)")
        ax_a.plot(mean["step"], ema(mean["mean"]), color=COLORS["hc"], lw=1.8, label="HC − mHC (EMA)")
    ax_a.axhline(0, color="k", lw=0.6)
    _mark_diverged(ax_a, hc, "hc")
    ax_a.set(xlabel="training step", ylabel="training loss gap HC − mHC (nats/token)")
    ax_a.set_title(f"(a) absolute training loss gap, mean over {len(gaps)} seed(s)", fontsize=9)
    ax_a.legend(fontsize=8)
    for variant, runs in (("hc", hc), ("mhc", mhc)):
        mean = _mean_by_step([f for _, f in runs.values()], "grad_norm")
        ax_b.plot(
            mean["step"], mean["mean"], color=COLORS[variant], lw=1.0, label=f"{LABELS[variant]} (mean over seeds)"
        )
    _maybe_log(ax_b, np.concatenate([f["grad_norm"].to_numpy() for runs in (hc, mhc) for _, f in runs.values()]))
    _mark_diverged(ax_b, hc, "hc")
    ax_b.set(xlabel="training step", ylabel="gradient norm (global L2, before clipping)")
    ax_b.set_title("(b) gradient norm", fontsize=9)
    ax_b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig, "ok"


def fig5_mhc_stability(index: dict[str, Any]) -> tuple[Figure, str]:
    """(a) training-loss gap of HC and mHC to the baseline (EMA per seed, mean and range over seeds); (b) grad norms."""
    main = index.get("main") or {}
    scale, seeds = main.get("scale"), section_seeds(main)
    title = _title(index, "Fig. 5: mHC training stability", scale, f"seeds {seeds}")
    note = (
        f"paper (27B): mHC's final loss reduction vs the baseline is {abs(paper.FIG5_MHC_FINAL_LOSS_GAP)} "
        "(dashed line); its gradient norm is stable and comparable to the baseline's."
    )
    # the paper's three variants, then any other variant of the tier's main comparison (e.g. an init variant)
    order = ["baseline", "hc", "mhc"] + [v for v in main.get("variants") or [] if v not in ("baseline", "hc", "mhc")]
    runs = {v: _runs_with_metrics(index, scale, v, seeds) for v in order}
    if not runs["baseline"] or not (runs["hc"] or runs["mhc"]):
        message = " ".join(why_missing(index, v) for v in ("baseline", "hc", "mhc") if not runs[v])
        return not_run_figure(title, message, note), NOT_RUN
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.2))
    missing = []
    for variant in order[1:]:
        gaps = _gap_frames(runs[variant], runs["baseline"])
        if not gaps:
            missing.append(label_of(variant))
            continue
        smoothed = [pd.DataFrame({"step": g["step"], "gap": ema(g["gap"])}) for g in gaps.values()]
        stats = _mean_by_step(smoothed, "gap")
        color = color_of(variant, order)
        ax_a.plot(stats["step"], stats["mean"], color=color, lw=1.6, label=f"{label_of(variant)} − baseline (EMA)")
        if len(gaps) > 1:
            ax_a.fill_between(
                stats["step"],
                stats["min"],
                stats["max"],
                color=color,
                alpha=0.18,
                label=f"{label_of(variant)}: range over {len(gaps)} seeds",
            )
        final = paired_gaps(index, scale, variant, "baseline", seeds)
        if final:
            ci = mean_ci(list(final.values()))
            last = stats["step"].iloc[-1]
            err = None if math.isnan(ci.half_width) else ci.half_width
            ax_a.errorbar(
                [last],
                [ci.mean],
                yerr=err,
                fmt="o",
                color=color,
                ms=5,
                capsize=3,
                label=f"{label_of(variant)} final val gap {ci.mean:+.3f}",
            )
        _mark_diverged(ax_a, runs[variant], variant)
    ax_a.axhline(0, color="k", lw=0.6)
    ax_a.axhline(
        paper.FIG5_MHC_FINAL_LOSS_GAP,
        color=COLORS["mhc"],
        ls="--",
        lw=1,
        label=f"paper mHC final gap {paper.FIG5_MHC_FINAL_LOSS_GAP} (27B)",
    )
    ax_a.set(xlabel="training step", ylabel="training loss gap to baseline (nats/token)")
    ax_a.set_title(
        "(a) absolute training loss gap vs baseline" + (f" ({', '.join(missing)}: {NOT_RUN})" if missing else ""),
        fontsize=9,
    )
    ax_a.legend(fontsize=7)
    values = []
    for variant in order:
        if not runs[variant]:
            continue
        mean = _mean_by_step([f for _, f in runs[variant].values()], "grad_norm")
        values.append(mean["mean"].to_numpy())
        ax_b.plot(
            mean["step"],
            mean["mean"],
            color=color_of(variant, order),
            lw=1.0,
            label=f"{label_of(variant)} (mean over seeds)",
        )
    _maybe_log(ax_b, np.concatenate(values))
    ax_b.set(xlabel="training step", ylabel="gradient norm (global L2, before clipping)")
    ax_b.set_title("(b) gradient norm", fontsize=9)
    ax_b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig, "ok" if not missing else f"partial: {', '.join(missing)} {NOT_RUN}"


# --------------------------------------------------------------------------------------------------------------------
# Fig. 3 and Fig. 7: Amax gain magnitude


def _positive(values: Sequence[float]) -> np.ndarray:
    """Values for a log axis: non-positive or non-finite ones become NaN (gaps in the line)."""
    arr = np.asarray([v if is_number(v) else np.nan for v in values], dtype=float)
    return np.where(arr > 0, arr, np.nan)


def _amax_figure(index: dict[str, Any], variant: str, reference: float, note: str) -> tuple[Figure, str]:
    scale = (index.get("main") or {}).get("scale")
    run = amax_run(index, variant)
    what = f"Fig. {3 if variant == 'hc' else 7}: {LABELS[variant]} propagation, Amax gain magnitude"
    record = last_diagnostics(run)
    if record is None:
        title = _title(index, what, scale)
        return not_run_figure(title, why_missing(index, variant, "diagnostics.jsonl"), note), NOT_RUN
    title = _title(index, what, scale, f"seed {run.get('seed')}, step {record.get('step')}")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=False)
    for ax, kind, label in (
        (axes[0], "single", "(a) single-layer H_res"),
        (axes[1], "composite", "(b) composite ∏ H_res"),
    ):
        fwd, bwd = record.get(f"{kind}_forward") or [], record.get(f"{kind}_backward") or []
        x = np.arange(1, max(len(fwd), len(bwd)) + 1)
        ax.plot(
            x[: len(fwd)], _positive(fwd), "o-", ms=3, lw=1.2, color="#1f77b4", label="forward gain (max |row sum|)"
        )
        ax.plot(
            x[: len(bwd)], _positive(bwd), "s-", ms=3, lw=1.2, color="#ff7f0e", label="backward gain (max |column sum|)"
        )
        min_col = record.get(f"{kind}_min_col") or []
        if min_col:
            ax.plot(
                x[: len(min_col)], _positive(min_col), ":", lw=1, color="#2ca02c", label="min column sum (attenuation)"
            )
        ax.axhline(paper.AMAX_IDEAL, color="grey", ls=":", lw=0.8, label="ideal gain 1")
        if kind == "composite":
            ax.axhline(reference, color="k", ls="--", lw=1, label=f"paper (27B, 60 sub-layers): ≈{reference:g}")
        values = np.array([v for v in (*fwd, *bwd, *min_col) if is_number(v) and v > 0], dtype=float)
        if kind == "single" and values.size and values.max() / values.min() < 1.1:
            # all gains within 10% of each other (mHC: 1 up to Sinkhorn's ~1e-8): a log axis would label every tick
            # "10^0"; a linear axis with an offset shows the deviations from 1 readably
            ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=1.0))
            scale = "linear, offset 1"
        else:
            ax.set_yscale("log")
            scale = "log"
        ax.set(xlabel="sub-layer index l (attention = odd, FFN = even)", ylabel=f"Amax gain magnitude (×, {scale})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig, "ok"


def fig3_hc_amax(index: dict[str, Any]) -> tuple[Figure, str]:
    """HC's single-layer and composite Amax gains per sub-layer, with the paper's composite peak of ~3000."""
    note = (
        f"paper (27B, Fig. 3b): HC's composite gain peaks at {paper.FIG3_HC_COMPOSITE_AMAX_PEAK:g} "
        '("nearly 3000"). Gains per token averaged over one validation sequence; composite = map from l to the output.'
    )
    return _amax_figure(index, "hc", paper.FIG3_HC_COMPOSITE_AMAX_PEAK, note)


def fig7_mhc_amax(index: dict[str, Any]) -> tuple[Figure, str]:
    """mHC's single-layer and composite Amax gains per sub-layer, with the paper's composite maximum of ~1.6."""
    note = (
        f"paper (27B, Fig. 7): single-layer backward gain deviates only slightly from 1; composite max ≈ "
        f"{paper.FIG7_MHC_COMPOSITE_AMAX_MAX:g}. Forward gain is 1 by construction (Sinkhorn's row step runs last)."
    )
    return _amax_figure(index, "mhc", paper.FIG7_MHC_COMPOSITE_AMAX_MAX, note)


# --------------------------------------------------------------------------------------------------------------------
# Fig. 6: scaling


def _legend_twin(ax: plt.Axes, twin: plt.Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, fontsize=7, loc="best")


def fig6_scaling(index: dict[str, Any]) -> tuple[Figure, str]:
    """(a) final val-loss gap mHC − baseline vs training FLOPs; (b) the gap along training (token scaling)."""
    cs = index.get("compute_scaling") or {}
    ts = index.get("token_scaling") or {}
    title = _title(
        index,
        "Fig. 6: scaling of mHC vs baseline",
        ", ".join(cs.get("scales") or []) or None,
        f"token scaling at {ts.get('scale', '?')}",
    )
    note = (
        'paper (Fig. 6, 3B/9B/27B compute-optimal and 3B at 1T tokens): the advantage is "robustly maintained" '
        'with "only marginal attenuation" at higher compute; the text gives no numbers.'
    )
    points = compute_scaling_points(index)
    tokens, source = token_scaling_points(index)
    if not points and tokens.empty:
        return not_run_figure(
            title, "Neither the compute-scaling nor the token-scaling runs are in this tier's output.", note
        ), NOT_RUN
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.4))
    status = []
    if points:
        x = np.array([p["flops"] for p in points])
        y = np.array([p["gap"].mean for p in points])
        err = np.array([0.0 if math.isnan(p["gap"].half_width) else p["gap"].half_width for p in points])
        ax_a.errorbar(x, y, yerr=err, fmt="o-", color=COLORS["mhc"], capsize=3, label="gap mHC − baseline (± 95% CI)")
        for p in points:
            ax_a.annotate(
                f"{p['scale']} (n={p['gap'].n})",
                (p["flops"], p["gap"].mean),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        ax_a.axhline(0, color="k", lw=0.6)
        twin = ax_a.twinx()
        twin.plot(
            x,
            [100 * p["ratio"].mean for p in points],
            "s--",
            color="#9467bd",
            ms=4,
            label="relative loss ratio mHC / baseline",
        )
        twin.set_ylabel("relative loss ratio (%)")
        twin.grid(False)
        ax_a.set_xscale("log")
        ax_a.set(xlabel="training compute (FLOPs, 6·N_active·D, log)", ylabel="final val loss gap (nats/token)")
        _legend_twin(ax_a, twin)
    else:
        _panel_not_run(ax_a, "compute scaling")
        status.append("compute scaling")
    ax_a.set_title("(a) compute scaling", fontsize=9)
    if not tokens.empty:
        grouped = tokens.groupby("tokens").agg(gap=("gap", "mean"), ratio=("ratio", "mean")).reset_index()
        ax_b.plot(grouped["tokens"], grouped["gap"], "o-", color=COLORS["mhc"], ms=4, label="gap mHC − baseline")
        ax_b.axhline(0, color="k", lw=0.6)
        twin = ax_b.twinx()
        twin.plot(
            grouped["tokens"],
            100 * grouped["ratio"],
            "s--",
            color="#9467bd",
            ms=4,
            label="relative loss ratio mHC / baseline",
        )
        twin.set_ylabel("relative loss ratio (%)")
        twin.grid(False)
        ax_b.set(xlabel="training tokens", ylabel="val loss gap (nats/token)")
        ax_b.set_title(
            f"(b) token scaling at {ts.get('scale')}, seeds {sorted(tokens['seed'].unique().tolist())} ({source})",
            fontsize=9,
        )
        _legend_twin(ax_b, twin)
    else:
        _panel_not_run(ax_b, "token scaling")
        ax_b.set_title("(b) token scaling", fontsize=9)
        status.append("token scaling")
    fig.suptitle(title, fontsize=10)
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig, "ok" if not status else f"partial: {', '.join(status)} {NOT_RUN}"


# --------------------------------------------------------------------------------------------------------------------
# Fig. 8: learned mappings


def mapping_panels(data: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """(label, matrix) for the first, middle and last single-layer H_res and the composites, in sub-layer order."""
    mats = [np.asarray(m, dtype=float) for m in data.get("H_res") or []]
    panels = []
    if mats:
        L = len(mats)
        for i in dict.fromkeys((0, max(0, L // 2 - 1), L - 1)):
            panels.append((f"H_res, sub-layer {i + 1}", mats[i]))
    composite = data.get("composite") or {}

    def start(key: str) -> int:
        try:
            return int(str(key).split("-")[0])
        except ValueError:
            return 0

    for key in sorted(composite, key=start):
        panels.append((f"composite, sub-layers {key}", np.asarray(composite[key], dtype=float)))
    return panels


def _heatmap(ax: plt.Axes, matrix: np.ndarray, label: str, limit: float, signed: bool) -> Any:
    """One matrix with its values in the cells, row sums as y tick labels and column sums as x tick labels."""
    if signed:
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
    else:
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=limit)  # limit >= 1: doubly stochastic entries
    for (i, j), value in np.ndenumerate(matrix):
        dark = abs(value) > 0.6 * limit
        ax.text(j, i, _cell(value), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_yticks(range(matrix.shape[0]), [_cell(v) for v in matrix.sum(1)])
    ax.set_xticks(range(matrix.shape[1]), [_cell(v) for v in matrix.sum(0)], rotation=45)
    ax.set_title(label, fontsize=8)
    ax.grid(False)
    return image


def _cell(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"


def fig8_mappings(index: dict[str, Any]) -> tuple[Figure, str]:
    """Rows HC / mHC: token-averaged H_res of a few sub-layers and two composites, sums on the tick labels."""
    section = index.get("mappings") or {}
    scale, seed = section.get("scale") or (index.get("main") or {}).get("scale"), section.get("seed", 0)
    title = _title(
        index,
        "Fig. 8: learned residual mappings H_res (token-averaged, one validation sequence)",
        scale,
        f"seed {seed}",
    )
    note = (
        "paper (27B, Fig. 8; values read off the figure by third parties [S6/S7]): HC entries reach hundreds "
        "(e.g. −251.4, +509.1); mHC composite of layers 31–60 has column sums 0.41, 1.50, 1.50, 0.60. "
        "y tick labels: row sums (forward gain); x tick labels: column sums (backward gain)."
    )
    # rows: HC and mHC as in the paper, then any other variant of the tier's `mappings` section
    order = ["hc", "mhc"] + [v for v in section.get("variants") or [] if v not in ("hc", "mhc")]
    data = {v: load_json((find_run(index, scale, v, seed) or {}).get("mappings")) for v in order}
    data = {v: d for v, d in data.items() if isinstance(d, dict) and d.get("H_res")}
    if not data:
        return not_run_figure(title, "No mappings.json of an HC or mHC run in this tier's output.", note), NOT_RUN
    columns = max(len(mapping_panels(d)) for d in data.values())
    fig, axes = plt.subplots(len(order), columns, figsize=(3.6 * columns, 3.7 * len(order)), squeeze=False)
    fig.subplots_adjust(wspace=0.45, hspace=0.45)
    missing = []
    for row, variant in enumerate(order):
        if variant not in data:
            missing.append(label_of(variant))
            for ax in axes[row]:
                ax.axis("off")
            axes[row][columns // 2].text(
                0.5,
                0.5,
                f"{label_of(variant)}: {NOT_RUN}",
                ha="center",
                va="center",
                fontsize=12,
                transform=axes[row][columns // 2].transAxes,
            )
            continue
        panels = mapping_panels(data[variant])
        # one colour scale per row, so that the colour bar is true for every panel of the row
        limit = max(float(np.nanmax(np.abs(m))) for _, m in panels) or 1.0
        signed = any(bool((m < 0).any()) for _, m in panels)
        limit = limit if signed else max(limit, 1.0)
        image = None
        for col, ax in enumerate(axes[row]):
            if col >= len(panels):
                ax.axis("off")
                continue
            label, matrix = panels[col]
            image = _heatmap(ax, matrix, f"{label_of(variant)}: {label}", limit, signed)
            if col == 0:
                ax.set_ylabel("row sum (forward gain)")
            ax.set_xlabel("column sum (backward gain)", fontsize=7)
        if image is not None:
            fig.colorbar(image, ax=list(axes[row]), shrink=0.8, label=f"{label_of(variant)} H_res entry")
    fig.suptitle(title, fontsize=10)
    _note(fig, note)
    return fig, "ok" if not missing else f"partial: {', '.join(missing)} {NOT_RUN}"


# --------------------------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[dict[str, Any]], tuple[Figure, str]]] = {
    "fig2_hc_instability": fig2_hc_instability,
    "fig3_hc_amax": fig3_hc_amax,
    "fig5_mhc_stability": fig5_mhc_stability,
    "fig6_scaling": fig6_scaling,
    "fig7_mhc_amax": fig7_mhc_amax,
    "fig8_mappings": fig8_mappings,
}


def build_figures(index: dict[str, Any], out: Path, dpi: int = 150) -> dict[str, str]:
    """Writes every figure as PNG and PDF; returns name -> "ok", "partial: ..." or "not run in this tier: ..."."""
    _style()
    statuses = {}
    for name, builder in BUILDERS.items():
        fig, status = builder(index)
        save(fig, out, name, dpi)
        statuses[name] = status
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="results/analysis/runs.json")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dpi", type=int, default=150, help="PNG resolution")
    args = parser.parse_args(argv)
    try:
        index = load_index(args.index)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, status in build_figures(index, Path(args.out), args.dpi).items():
        print(f"{args.out}/{name}.png/.pdf: {status}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
