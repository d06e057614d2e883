"""`python -m analysis.figures --index results/analysis/runs.json --out results/figures`.

The paper's result figures (2, 3, 5, 6, 7, 8) redrawn from our runs, each as PNG and PDF, and two checks of our own:
`fig_mechanism` (does each connection's mechanism operate: stream spread, how far H_res moved, the gradient reaching
H_res, H_post's spread) and `fig_lr_sweep` (the stability stress test: final loss, gradient norms and divergences at
larger learning rates). Every figure names the tier and scale it shows and carries a "paper: ..." note with the
paper's number where the paper gives one, so a reader never mistakes our tiny-scale curve for the paper's. A figure
whose runs are not in this tier's config is still written, as a figure that says "not run in this tier", so the
report's links never break.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullLocator, ScalarFormatter  # noqa: E402

from . import beyond, paper, results  # noqa: E402
from .artifacts import FIGURE_NAMES  # noqa: E402
from .plan import lr_variant  # noqa: E402
from .stability import WARMUP_FRACTION, lr_sweep_runs, planned_steps  # noqa: E402
from .stats import is_number, mean_ci  # noqa: E402

NOT_RUN = "not run in this tier"
COLORS = {"baseline": "#4d4d4d", "hc": "#d62728", "mhc": "#1f77b4", "mhc-id": "#17becf"}
LABELS = {"baseline": "Baseline", "hc": "HC", "mhc": "mHC", "mhc-id": "mHC-id"}
# the first five are what the other figures have always used; the rest keep ~9 variants (fig_mechanism) apart
EXTRA_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#ff7f0e", "#393b79", "#8c6d31", "#7b4173"]


def color_of(variant: str, order: Sequence[str] = ()) -> str:
    """The paper's three variants have fixed colours; other variants of a tier (ablations, init variants) get the
    next free ones in their config order."""
    if variant in COLORS:
        return COLORS[variant]
    extras = [v for v in order if v not in COLORS]
    return EXTRA_COLORS[extras.index(variant) % len(EXTRA_COLORS)] if variant in extras else "#7f7f7f"


def label_of(variant: str) -> str:
    return LABELS.get(variant, variant)


FIGURES: tuple[str, ...] = FIGURE_NAMES
"""The figures this module draws (analysis/artifacts.py)."""


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
    rows = results.train_rows(results.read_jsonl((run or {}).get("metrics")))
    frame = pd.DataFrame(rows, columns=["step", "loss", "grad_norm"]) if rows else pd.DataFrame()
    if frame.empty:
        return pd.DataFrame(columns=["step", "loss", "grad_norm"])
    frame = frame[["step", "loss", "grad_norm"]].astype(float)
    return frame.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def _runs_with_metrics(index: dict[str, Any], scale: str | None, variant: str, seeds: Sequence[int]) -> dict:
    """seed -> (run, training frame) for the runs of a variant that logged any training step."""
    out = {}
    for run in results.find_runs(index, scale=scale, variant=variant, seeds=seeds):
        frame = _train_frame(run)
        if not frame.empty:
            out[int(run["seed"])] = (run, frame)
    return out


def why_missing(index: dict[str, Any], variant: str, what: str = "training metrics") -> str:
    """Why a variant's main-scale curves are absent: not in this tier's config, or planned but without output."""
    main = index.get("main") or {}
    if variant not in (main.get("variants") or []):
        return f"{LABELS.get(variant, variant)} is not in this tier's main comparison."
    runs = results.find_runs(index, scale=main.get("scale"), variant=variant, seeds=results.section_seeds(main))
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


def _main_comparison(index: dict[str, Any], what: str) -> tuple[dict[str, Any], str | None, list[int], str]:
    """The main comparison's index section, scale and seeds, and the title of a figure `what` drawn from it."""
    main = index.get("main") or {}
    scale, seeds = main.get("scale"), results.section_seeds(main)
    return main, scale, seeds, _title(index, what, scale, f"seeds {seeds}")


def _finish_gradient_panel(fig: Figure, ax_b: plt.Axes, title: str, note: str) -> None:
    """Labels panel (b) of Fig. 2 and Fig. 5 (gradient norms) and lays out the figure with its title and note."""
    ax_b.set(xlabel="training step", ylabel="gradient norm (global L2, before clipping)")
    ax_b.set_title("(b) gradient norm", fontsize=9)
    ax_b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.04, 1, 1))


def fig2_hc_instability(index: dict[str, Any]) -> tuple[Figure, str]:
    """(a) training-loss gap HC − mHC vs step (raw faint, EMA bold); (b) gradient norm of HC and mHC."""
    _, scale, seeds, title = _main_comparison(index, "Fig. 2: HC training instability")
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
    _finish_gradient_panel(fig, ax_b, title, note)
    return fig, "ok"


def fig5_mhc_stability(index: dict[str, Any]) -> tuple[Figure, str]:
    """(a) training-loss gap of HC and mHC to the baseline (EMA per seed, mean and range over seeds); (b) grad norms."""
    main, scale, seeds, title = _main_comparison(index, "Fig. 5: mHC training stability")
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
        final = results.paired_gaps(index, scale, variant, "baseline", seeds)
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
    _finish_gradient_panel(fig, ax_b, title, note)
    return fig, "ok" if not missing else f"partial: {', '.join(missing)} {NOT_RUN}"


# --------------------------------------------------------------------------------------------------------------------
# Fig. 3 and Fig. 7: Amax gain magnitude


def _positive(values: Sequence[float]) -> np.ndarray:
    """Values for a log axis: non-positive or non-finite ones become NaN (gaps in the line)."""
    arr = np.asarray([v if is_number(v) else np.nan for v in values], dtype=float)
    return np.where(arr > 0, arr, np.nan)


def _amax_figure(index: dict[str, Any], variant: str, reference: float, note: str) -> tuple[Figure, str]:
    scale = (index.get("main") or {}).get("scale")
    run = results.amax_run(index, variant)
    what = f"Fig. {3 if variant == 'hc' else 7}: {LABELS[variant]} propagation, Amax gain magnitude"
    record = results.last_diagnostics(run)
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


def _ratio_twin(ax: plt.Axes, x: Any, percent: Any) -> plt.Axes:
    """A twin y axis on `ax` with the loss ratio mHC / baseline (in %) against `x` (Fig. 6's dashed squares)."""
    twin = ax.twinx()
    twin.plot(x, percent, "s--", color="#9467bd", ms=4, label="relative loss ratio mHC / baseline")
    twin.set_ylabel("relative loss ratio (%)")
    twin.grid(False)
    return twin


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
    points = results.compute_scaling_points(index)
    tokens, source = results.token_scaling_points(index)
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
        twin = _ratio_twin(ax_a, x, [100 * p["ratio"].mean for p in points])
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
        twin = _ratio_twin(ax_b, grouped["tokens"], 100 * grouped["ratio"])
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
    data = {v: results.load_json((results.find_run(index, scale, v, seed) or {}).get("mappings")) for v in order}
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
# Mechanism check: does each connection's mechanism operate?

MECHANISM_ARCHS = ("hc", "mhc", "gain")
MARKERS = ("o", "s", "^", "D", "P", "X", "*", "h", "<", ">", "p", "d")  # no "v": ▼ marks exact zeros
_SUBLAYER_KEYS = ("stream_spread", "hres_learned", "hres_from_uniform", "post_spread")


def mechanism_variants(index: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(variant, scale) of every hc/mhc/gain variant of the main comparison, then of the init ablation (a variant of
    both counts once, at the main scale; one only in the init ablation is looked up at that section's scale)."""
    main = index.get("main") or {}
    init = index.get("init_ablation") or {}
    out: dict[str, str | None] = {}
    for section in (main, init):
        for variant in section.get("variants") or []:
            if variant not in out and results.variant_arch(index, variant) in MECHANISM_ARCHS:
                out[variant] = section.get("scale") or main.get("scale")
    return list(out.items())


def mechanism_records(run: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The records of a run's diagnostics.jsonl that carry the mechanism curves, one per step (the last one written
    for a step, as after a resume), in step order. Records of older runs (Amax curves only) do not count."""
    keys = (*_SUBLAYER_KEYS, "grad_res")
    by_step = {}
    for record in results.read_jsonl((run or {}).get("diagnostics")):
        if is_number(record.get("step")) and any(key in record for key in keys):
            by_step[int(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]


def _floats(values: Any) -> np.ndarray:
    """A per-sub-layer list as floats; None and non-finite entries become NaN."""
    return np.asarray([v if is_number(v) else np.nan for v in values or []], dtype=float)


def _max_or_nan(values: Any) -> float:
    arr = _floats(values)
    return float(np.nanmax(arr)) if np.isfinite(arr).any() else math.nan


@dataclass(frozen=True)
class MechanismSeries:
    """What fig_mechanism draws for one variant: per-sub-layer curves of the last diagnostics record of one run, and
    the largest H_res gradient norm over sub-layers at every diagnostics record of that run."""

    variant: str
    arch: str
    scale: str | None
    run: str
    seed: int
    step: int
    sublayer: dict[str, np.ndarray] = field(default_factory=dict)  # key -> value per sub-layer (NaN: not recorded)
    initial_from_uniform: float = math.nan  # max over sub-layers of hres_from_uniform in the first record
    grad_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grad_res_max: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NaN where no sub-layer has a gradient


def mechanism_run(index: dict[str, Any], scale: str | None, variant: str) -> dict[str, Any] | None:
    """The run whose curves fig_mechanism shows: seed 0 when it has mechanism diagnostics, else the lowest seed that
    has them (any seed of the index at that scale); None when no run has them."""
    run = results.find_run(index, scale, variant, 0)
    if mechanism_records(run):
        return run
    return next((r for r in results.find_runs(index, scale=scale, variant=variant) if mechanism_records(r)), None)


def mechanism_series(index: dict[str, Any]) -> dict[str, MechanismSeries]:
    """variant -> MechanismSeries for every variant of `mechanism_variants` with a run that logged mechanism
    diagnostics, in the sections' order (variants without any are left out: the figure lists them as not run)."""
    out = {}
    for variant, scale in mechanism_variants(index):
        run = mechanism_run(index, scale, variant)
        records = mechanism_records(run)
        if not run or not records:
            continue
        last = records[-1]
        out[variant] = MechanismSeries(
            variant=variant,
            arch=results.variant_arch(index, variant) or "?",
            scale=scale,
            run=str(run.get("key", "")),
            seed=int(run.get("seed", 0)),
            step=int(last["step"]),
            sublayer={key: _floats(last.get(key)) for key in _SUBLAYER_KEYS},
            initial_from_uniform=_max_or_nan(records[0].get("hres_from_uniform")),
            grad_steps=np.asarray([r["step"] for r in records], dtype=float),
            grad_res_max=np.asarray([_max_or_nan(r.get("grad_res")) for r in records], dtype=float),
        )
    return out


def _log_curve(
    ax: plt.Axes, x: np.ndarray, y: np.ndarray, color: str, marker: str, **style: Any
) -> tuple[int, float, float]:
    """One curve on a log y axis: positive values as a line with markers, exact zeros as ▼ on the bottom edge (a log
    axis cannot show them, and "did not move at all" must not vanish). Returns (zeros, min, max) of the positives."""
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)[: y.size]
    zero = np.isfinite(y) & (y <= 0)
    positive = np.where(np.isfinite(y) & (y > 0), y, np.nan)
    ax.plot(x, positive, color=color, marker=marker, ms=3.5, **{"lw": 1.3, **style})
    if zero.any():
        ax.plot(
            x[zero],
            np.zeros(int(zero.sum())),
            ls="",
            marker="v",
            ms=5,
            color=color,
            alpha=style.get("alpha", 1.0),
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )
    finite = positive[np.isfinite(positive)]
    return (
        int(zero.sum()),
        float(finite.min()) if finite.size else math.nan,
        float(finite.max()) if finite.size else math.nan,
    )


def _threshold(ax: plt.Axes, value: float) -> None:
    ax.axhline(value, color="k", ls="--", lw=1.0, zorder=1)
    ax.text(
        0.995,
        value,
        f"median sub-layer operates above {value:g}",
        transform=ax.get_yaxis_transform(),
        ha="right",
        va="bottom",
        fontsize=7.5,
        color="k",
        bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 0.5},
    )


def _sublayer_axis(ax: plt.Axes, ylabel: str, title: str) -> None:
    ax.set_yscale("log")
    ax.set(xlabel="sub-layer index l (attention = odd, FFN = even)", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9)


def _panel_empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, transform=ax.transAxes, wrap=True)


def fig_mechanism(index: dict[str, Any]) -> tuple[Figure, str]:
    """(a) stream spread, (b) H_res change due to learning, (d) H_post spread per sub-layer at the last diagnostics
    record; (c) the largest H_res gradient norm against step. One curve per hc/mhc/gain variant of the main
    comparison and the init ablation, from its seed-0 run (else the lowest seed with diagnostics)."""
    from models.diagnostics import MECHANISM_THRESHOLDS

    main = index.get("main") or {}
    scale = main.get("scale")
    title = _title(index, "Mechanism check: do the connections' mappings operate?", scale, "seed 0 (else lowest seed)")
    note = (
        "paper: no counterpart (the paper reports no such diagnostics); thresholds: models.diagnostics."
        f"MECHANISM_THRESHOLDS {MECHANISM_THRESHOLDS}. Curves from one validation sequence; ▼ on the bottom edge: "
        "exactly 0 (off a log axis)."
    )
    wanted = mechanism_variants(index)
    series = mechanism_series(index)
    if not series:
        names = ", ".join(label_of(v) for v, _ in wanted) or "none"
        message = (
            f"No run of an hc / mhc / gain variant (this tier's: {names}) left mechanism diagnostics "
            "(diagnostics.jsonl with stream_spread, hres_learned, grad_res)."
        )
        return not_run_figure(title, message, note), f"{NOT_RUN}: no mechanism diagnostics"
    order = [v for v, _ in wanted]
    style = {v: (color_of(v, order), MARKERS[i % len(MARKERS)]) for i, v in enumerate(order)}
    missing = [label_of(v) for v in order if v not in series]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.2))
    ax_a, ax_b, ax_c, ax_d = axes.ravel()

    # (a) stream spread: a gain variant has one stream (spread 0 by definition), so it is left out
    streams = [s for s in series.values() if s.arch != "gain"]
    for s in streams:
        values = s.sublayer["stream_spread"]
        _log_curve(ax_a, np.arange(1, values.size + 1), values, *style[s.variant])
    _threshold(ax_a, MECHANISM_THRESHOLDS["stream_spread"])
    _sublayer_axis(ax_a, "stream spread ‖x_i − x̄‖ / ‖x̄‖ (log)", "(a) spread of the streams entering each sub-layer")
    if not streams:
        _panel_empty(ax_a, "no stream variant (hc / mhc) has diagnostics")

    # (b) how much learning changed H_res (current against step-0 parameters on the same input); the distance from
    # uniform J/n (dotted) only where H_res did not start at J/n and came near it (< 0.1): the collapse towards
    # stream averaging that the learned change alone would not show
    uniform_drawn = []
    for s in series.values():
        values = s.sublayer["hres_learned"]
        _log_curve(ax_b, np.arange(1, values.size + 1), values, *style[s.variant])
        uniform = s.sublayer["hres_from_uniform"]
        started_uniform = (
            is_number(s.initial_from_uniform) and s.initial_from_uniform <= MECHANISM_THRESHOLDS["hres_learned"]
        )
        if not started_uniform and np.isfinite(uniform).any() and np.nanmin(uniform) < 0.1:
            color, marker = style[s.variant]
            _log_curve(ax_b, np.arange(1, uniform.size + 1), uniform, color, marker, ls=":", lw=1.0, alpha=0.6)
            uniform_drawn.append(label_of(s.variant))
    _threshold(ax_b, MECHANISM_THRESHOLDS["hres_learned"])
    _sublayer_axis(
        ax_b,
        "max |H_res(θ) − H_res(θ₀)|, same input (log)",
        "(b) how much learning changed H_res"
        + (f"; dotted: distance from J/n ({', '.join(uniform_drawn)})" if uniform_drawn else ""),
    )

    # (c) gradient norm reaching H_res (largest over sub-layers) at every diagnostics record
    no_grad = []
    for s in series.values():
        if not np.isfinite(s.grad_res_max).any():
            no_grad.append(label_of(s.variant))
            continue
        _log_curve(ax_c, s.grad_steps, s.grad_res_max, *style[s.variant])
    ax_c.set_yscale("log")
    ax_c.set(xlabel="training step", ylabel="max over sub-layers of ‖∂L/∂θ_res‖ (log)")
    ax_c.set_title(
        "(c) gradient norm reaching H_res's parameters"
        + (f" (none for {', '.join(no_grad)}: H_res not learned)" if no_grad else ""),
        fontsize=9,
    )

    # (d) H_post spread across streams (one stream for gain: left out)
    post = [s for s in streams if np.isfinite(s.sublayer["post_spread"]).any()]
    for s in post:
        values = s.sublayer["post_spread"]
        _log_curve(ax_d, np.arange(1, values.size + 1), values, *style[s.variant])
    _sublayer_axis(ax_d, "max − min over streams of H_post (log)", "(d) spread of H_post across the streams")
    if not post:
        _panel_empty(ax_d, "no stream variant (hc / mhc) has H_post diagnostics")

    handles = [
        Line2D(
            [],
            [],
            color=style[s.variant][0],
            marker=style[s.variant][1],
            ms=4,
            lw=1.3,
            label=f"{label_of(s.variant)} [{s.arch}] seed {s.seed}, step {s.step}",
        )
        for s in series.values()
    ]
    handles.append(Line2D([], [], color="k", ls="--", lw=1, label="threshold: the median sub-layer must lie above"))
    handles.append(Line2D([], [], color="grey", ls="", marker="v", ms=5, label="exactly 0 (bottom edge)"))
    if uniform_drawn:
        handles.append(Line2D([], [], color="grey", ls=":", lw=1, label="(b) dotted: max |H_res − J/n|"))
    ncol = 3
    rows = math.ceil(len(handles) / ncol)
    bottom = 0.045 + 0.024 * rows
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, bbox_to_anchor=(0.5, 0.03), frameon=False)
    if missing:
        note += f" No mechanism diagnostics ({NOT_RUN}): {', '.join(missing)}."
    fig.suptitle(title, fontsize=10)
    _note(fig, note)
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    sources = "; ".join(f"{s.variant}: {s.run or s.seed} step {s.step}" for s in series.values())
    status = "ok" if not missing else f"partial: {', '.join(missing)} {NOT_RUN}"
    return fig, f"{status} (curves from {sources})"


# --------------------------------------------------------------------------------------------------------------------
# LR sweep: stability under larger learning rates


def lr_sweep_points(index: dict[str, Any]) -> pd.DataFrame:
    """One row per run of the LR sweep (analysis/stability.py: the report's verdict reads the same rows)."""
    return lr_sweep_runs(index)


def _multiplier_axis(ax: plt.Axes, multipliers: Sequence[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(multipliers), [f"{m:g}×" for m in multipliers])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(multipliers) / 1.6, max(multipliers) * 1.6)
    ax.set_xlabel("learning-rate multiplier (× the tier's learning rate, log)")


def fig_lr_sweep(index: dict[str, Any]) -> tuple[Figure, str]:
    """(a) final val loss vs LR multiplier (points per seed, line = mean; diverged runs as x at the top edge with
    their count); (b) max gradient norm after warm-up per run; (c) training loss at the largest multiplier."""
    sweep = index.get("lr_sweep") or {}
    scale, seeds = sweep.get("scale"), results.section_seeds(sweep)
    title = _title(index, "LR sweep: stability under larger learning rates", scale, f"seeds {seeds}" if seeds else "")
    note = (
        "paper: no counterpart (the paper shows HC's loss surge and gradient spike at 27B at one learning rate, "
        "Fig. 2; mHC stays stable, Fig. 5). Here the instability is provoked by raising the learning rate."
    )
    points = lr_sweep_points(index)
    present = points[points["status"] != "missing"] if not points.empty else points
    if not sweep or not sweep.get("variants") or not sweep.get("multipliers"):
        return not_run_figure(title, "This tier's config has no LR sweep (no `lr_sweep` section).", note), (
            f"{NOT_RUN}: no LR sweep"
        )
    if present.empty:
        message = "The LR sweep is planned, but none of its runs has left any output yet."
        return not_run_figure(title, message, note), f"{NOT_RUN}: no LR-sweep run has output"
    return draw_stress_test(index, present, list(sweep["variants"]), list(sweep["multipliers"]), scale, title, note)


def draw_stress_test(
    index: dict[str, Any],
    present: pd.DataFrame,
    variants: list[str],
    multipliers: Sequence[float],
    scale: str | None,
    title: str,
    note: str,
) -> tuple[Figure, str]:
    """The three panels of a learning-rate stress test from its runs with output (`present`: one row per run with
    variant, multiplier, seed, status, final_val_loss, max_grad_norm), for the LR sweep and the section beyond the
    paper alike."""
    multipliers = sorted(float(m) for m in multipliers)
    colors = {v: color_of(v, variants) for v in variants}
    jitter = {v: 1.07 ** (k - (len(variants) - 1) / 2) for k, v in enumerate(variants)}  # keeps the seeds apart
    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(16, 5.0))

    # (a) final validation loss of completed runs; diverged runs as x on the top edge with their count
    done = present[(present["status"] == "completed") & np.isfinite(present["final_val_loss"])]
    for variant in variants:
        mine = done[done["variant"] == variant]
        x = mine["multiplier"] * jitter[variant]
        ax_a.scatter(x, mine["final_val_loss"], color=colors[variant], s=18, alpha=0.75, zorder=3)
        if not mine.empty:
            mean = mine.groupby("multiplier")["final_val_loss"].mean()
            ax_a.plot(mean.index * jitter[variant], mean.to_numpy(), color=colors[variant], lw=1.6, zorder=2)
        diverged = present[(present["variant"] == variant) & (present["status"] == "diverged")]
        top_y = 0.965 - 0.06 * variants.index(variant)  # one row per variant: counts never hide each other
        for multiplier, count in diverged.groupby("multiplier").size().items():
            xm = multiplier * jitter[variant]
            ax_a.plot(xm, top_y, "x", ms=9, mew=2.2, color=colors[variant], transform=ax_a.get_xaxis_transform())
            ax_a.annotate(
                str(count),
                (xm, top_y),
                xycoords=ax_a.get_xaxis_transform(),
                xytext=(5, -2),
                textcoords="offset points",
                fontsize=8,
                color=colors[variant],
                va="center",
                weight="bold",
            )
    if not done.empty:
        low, high = float(done["final_val_loss"].min()), float(done["final_val_loss"].max())
        pad = max(high - low, 0.02) * 0.1
        room = (0.06 * len(variants) + 0.05) / (1 - 0.06 * len(variants) - 0.05)  # the x rows' share of the axis
        ax_a.set_ylim(low - pad, high + pad + room * (high - low + 2 * pad))  # the x markers stay clear of the points
    else:
        _panel_empty(ax_a, "no run of the sweep completed")
        ax_a.set_yticks([])
    _multiplier_axis(ax_a, multipliers)
    ax_a.set_ylabel("final validation loss (nats/token)")
    ax_a.set_title("(a) final val loss (points: seeds, line: mean; x at top: diverged, with count)", fontsize=9)

    # (b) largest gradient norm after warm-up, per run
    planned = planned_steps(index, scale)
    grads = present[np.isfinite(present["max_grad_norm"])]
    for variant in variants:
        mine = grads[grads["variant"] == variant]
        for status, marker in (("completed", "o"), ("diverged", "x")):
            sel = mine[mine["status"] == status] if status == "completed" else mine[mine["status"] != "completed"]
            ax_b.scatter(
                sel["multiplier"] * jitter[variant],
                sel["max_grad_norm"],
                color=colors[variant],
                marker=marker,
                s=22 if marker == "o" else 40,
                alpha=0.8,
                zorder=3,
            )
        if not mine.empty:
            geo = mine.groupby("multiplier")["max_grad_norm"].apply(lambda g: float(np.exp(np.log(g).mean())))
            ax_b.plot(geo.index * jitter[variant], geo.to_numpy(), color=colors[variant], lw=1.2, zorder=2)
    ax_b.set_yscale("log")
    _multiplier_axis(ax_b, multipliers)
    skip = f"step {WARMUP_FRACTION * planned:g}" if planned else f"the first {WARMUP_FRACTION:.0%} of steps"
    ax_b.set_ylabel("max gradient norm (global L2, before clipping, log)")
    ax_b.set_title(f"(b) largest gradient norm after {skip} (line: geometric mean)", fontsize=9)
    if grads.empty:
        _panel_empty(ax_b, "no run logged a gradient norm")

    # (c) training loss at the largest multiplier, lowest seed with metrics per variant
    top = multipliers[-1]
    drawn, losses = [], []
    for variant in variants:
        candidates = present[(present["variant"] == variant) & (present["multiplier"] == top)].sort_values("seed")
        for _, row in candidates.iterrows():
            run = results.find_run(index, scale, lr_variant(variant, top), int(row["seed"]))
            frame = _train_frame(run)
            if frame.empty:
                continue
            color = colors[variant]
            smooth = ema(frame["loss"])
            ax_c.plot(frame["step"], frame["loss"], color=color, alpha=0.2, lw=0.7)
            ax_c.plot(frame["step"], smooth, color=color, lw=1.6, label=f"{label_of(variant)} seed {int(row['seed'])}")
            losses.append(frame["loss"].to_numpy(dtype=float))
            if row["status"] == "diverged":
                last = float(frame["step"].iloc[-1])
                finite = smooth[np.isfinite(smooth)]
                y = float(finite[-1]) if finite.size else math.nan
                ax_c.axvline(last, color=color, ls=":", lw=1)
                ax_c.plot([last], [y], "X", ms=10, color=color, mec="k", zorder=4)
                ax_c.annotate(
                    f"{label_of(variant)} diverged at step {last:g}",
                    (last, 0.97),
                    xycoords=("data", "axes fraction"),
                    xytext=(3, 0),
                    textcoords="offset points",
                    fontsize=7,
                    rotation=90,
                    ha="left",
                    va="top",
                    color=color,
                )
            drawn.append(variant)
            break
    if losses:
        _maybe_log(ax_c, np.concatenate(losses))
        ax_c.legend(fontsize=7, loc="upper right")
    else:
        _panel_empty(ax_c, f"no run at {top:g}× logged training steps")
    ax_c.set(xlabel="training step", ylabel="training loss (nats/token; faint raw, bold EMA)")
    ax_c.set_title(f"(c) training loss at the largest multiplier, {top:g}×", fontsize=9)

    handles = [Line2D([], [], color=colors[v], marker="o", ms=4, lw=1.6, label=label_of(v)) for v in variants]
    handles += [
        Line2D([], [], color="grey", marker="o", ls="", ms=4, label="completed run"),
        Line2D([], [], color="grey", marker="x", ls="", ms=7, mew=2, label="diverged (or failed) run"),
        Line2D([], [], color="grey", marker="X", mec="k", ls="", ms=8, label="(c) last step of a diverged run"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, 0.04))
    counts = present["status"].value_counts().to_dict()
    missing = [label_of(v) for v in variants if present[present["variant"] == v].empty]
    note += " Runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + "."
    if missing:
        note += f" No run with output: {', '.join(missing)}."
    fig.suptitle(title, fontsize=10)
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.11, 1, 0.96))
    return fig, "ok" if not missing else f"partial: {', '.join(missing)} {NOT_RUN}"


# --------------------------------------------------------------------------------------------------------------------
# Beyond the paper: rival designs and mHC-lite, depth sweep and stress test

BEYOND_NOTE = (
    "paper: no counterpart. The paper dismisses RMT and MUDDFormer (no identity mapping, so unstable) without an "
    "experiment and shows one depth per scale."
)


def fig_beyond_stress(index: dict[str, Any]) -> tuple[Figure, str]:
    """The LR stress test of every variant of the section beyond the paper (the LR sweep's panels)."""
    section = index.get("beyond_paper") or {}
    stress = section.get("stress") or {}
    scale = stress.get("scale")
    title = _title(index, "Beyond the paper: LR stress test", scale, f"seeds {stress.get('seeds')}" if stress else "")
    if not stress:
        message = "This tier has no stress test beyond the paper (no `beyond_paper.stress` section)."
        return not_run_figure(title, message, BEYOND_NOTE), f"{NOT_RUN}: no beyond_paper.stress"
    points = beyond.stress_runs(index)
    present = points[points["status"].isin(beyond.ENDED)]
    if present.empty:
        message = "The stress test is planned, but none of its runs has left any output yet."
        return not_run_figure(title, message, BEYOND_NOTE), f"{NOT_RUN}: no stress-test run has output"
    multipliers = sorted({1.0, *(float(m) for m in stress["multipliers"])})
    return draw_stress_test(index, present, list(section["variants"]), multipliers, scale, title, BEYOND_NOTE)


def fig_beyond_depth(index: dict[str, Any]) -> tuple[Figure, str]:
    """Against depth (sub-layers, log2): (a) the paired loss gap to the baseline (mean, 95% CI over seeds; diverged
    runs as x); (b) the composite Jacobian forward gain and (c) backward gain through the whole depth, after training
    (solid) and at initialisation (dashed); (d) the composite Amax gain of the variants with an H_res (the paper's
    Fig. 3/7 measure), beside them."""
    section = index.get("beyond_paper") or {}
    scales = " / ".join(p["scale"] for p in section.get("depths") or []) or None
    title = _title(index, "Beyond the paper: depth sweep", scales, f"seeds {section.get('seeds')}" if section else "")
    if not section:
        message = "This tier has no `beyond_paper` section."
        return not_run_figure(title, message, BEYOND_NOTE), f"{NOT_RUN}: no beyond_paper section"
    runs = beyond.depth_runs(index)
    table = beyond.depth_table(runs)
    if table.empty:
        message = "The depth sweep is planned, but none of its runs has left any output yet."
        return not_run_figure(title, message, BEYOND_NOTE), f"{NOT_RUN}: no depth-sweep run has output"
    variants = list(section["variants"])
    colors = {v: color_of(v, variants) for v in variants}
    depths = sorted(int(p["sublayers"]) for p in section.get("depths") or [])
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8))
    ax_gap, ax_fwd, ax_bwd, ax_amax = axes
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(min(depths) / 1.4, max(depths) * 1.4)
        ax.set_xlabel("depth (sub-layers, log2)")
    for variant in variants:
        mine = table[table["variant"] == variant].sort_values("sublayers")
        if mine.empty:
            continue
        color = colors[variant]
        if variant != "baseline":
            ok = mine[np.isfinite(mine["gap"].astype(float))]
            ax_gap.errorbar(ok["sublayers"], ok["gap"], yerr=ok["gap_ci"].fillna(0), color=color, marker="o", ms=4,
                            lw=1.5, capsize=3, label=label_of(variant))  # fmt: skip
        for _, row in mine[mine["diverged"] > 0].iterrows():
            ax_gap.plot(row["sublayers"], 0.96, "x", ms=9, mew=2, color=color, transform=ax_gap.get_xaxis_transform())
        for ax, name in ((ax_fwd, "composite_fwd"), (ax_bwd, "composite_bwd")):
            for phase, style in (("final", "-"), ("init", "--")):
                values = mine[f"{phase}_{name}"].astype(float)
                ok = np.isfinite(values)
                if ok.any():
                    ax.plot(mine["sublayers"][ok], values[ok], style, color=color, marker="o", ms=3.5, lw=1.4,
                            label=label_of(variant) if phase == "final" else None)  # fmt: skip
        amax = mine["amax_composite"].astype(float)
        if np.isfinite(amax).any():
            ok = np.isfinite(amax)
            ax_amax.plot(
                mine["sublayers"][ok], amax[ok], color=color, marker="o", ms=4, lw=1.5, label=label_of(variant)
            )
    ax_gap.axhline(0, color="k", lw=0.8)
    ax_gap.set_ylabel("final val loss − baseline (nats/token)")
    ax_gap.set_title("(a) loss gap to the baseline (mean, 95% CI; x: a run diverged)", fontsize=9)
    for ax, what in ((ax_fwd, "forward ||J v|| / ||v||"), (ax_bwd, "backward ||u^T J|| / ||u||")):
        ax.set_yscale("log")
        ax.axhline(1, color="k", lw=0.8, ls=":")
        ax.set_ylabel(f"composite Jacobian gain, {what} (log)")
    ax_fwd.set_title("(b) Jacobian forward gain, whole depth (solid: trained, dashed: init)", fontsize=9)
    ax_bwd.set_title("(c) Jacobian backward gain, whole depth (solid: trained, dashed: init)", fontsize=9)
    ax_amax.set_yscale("log")
    ax_amax.axhline(1, color="k", lw=0.8, ls=":")
    ax_amax.set_ylabel("composite Amax gain, max of fwd/bwd (log)")
    ax_amax.set_title("(d) composite Amax gain of H_res (the paper's measure; trained)", fontsize=9)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            _panel_empty(ax, "nothing measured yet")
    missing = [label_of(v) for v in variants if table[table["variant"] == v].empty]
    counts = runs["status"].value_counts().to_dict()
    note = BEYOND_NOTE + " Runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + "."
    fig.suptitle(title, fontsize=10)
    _note(fig, note)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return fig, "ok" if not missing else f"partial: {', '.join(missing)} {NOT_RUN}"


# --------------------------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[dict[str, Any]], tuple[Figure, str]]] = {
    "fig_mechanism": fig_mechanism,
    "fig_lr_sweep": fig_lr_sweep,
    "fig2_hc_instability": fig2_hc_instability,
    "fig3_hc_amax": fig3_hc_amax,
    "fig5_mhc_stability": fig5_mhc_stability,
    "fig6_scaling": fig6_scaling,
    "fig7_mhc_amax": fig7_mhc_amax,
    "fig8_mappings": fig8_mappings,
    "fig_beyond_depth": fig_beyond_depth,
    "fig_beyond_stress": fig_beyond_stress,
}
"""Figure name (analysis/artifacts.py, in its order) -> the function that draws it."""


def build_figures(index: dict[str, Any], out: Path, dpi: int = 150) -> dict[str, str]:
    """Writes every figure as PNG and PDF; returns name -> "ok", "partial: ..." or "not run in this tier: ..."
    (some statuses append the runs they drew from)."""
    _style()
    statuses = {}
    for name in FIGURES:
        fig, status = BUILDERS[name](index)
        save(fig, out, name, dpi)
        statuses[name] = status
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dpi", type=int, default=150, help="PNG resolution")
    args, index = results.parse_args_and_index(parser, argv)
    if index is None:
        return 2
    for name, status in build_figures(index, Path(args.out), args.dpi).items():
        print(f"{args.out}/{name}.png/.pdf: {status}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
