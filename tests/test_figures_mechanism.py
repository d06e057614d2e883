"""fig_mechanism and fig_lr_sweep (analysis/figures.py) on synthetic run folders with hand-computed values.

The runs are written in the formats models.train writes (metrics.jsonl, diagnostics.jsonl with the per-sub-layer
mechanism keys, 4 sub-layers) and listed in an index as analysis.index builds it, with a main comparison, an init
ablation and an LR sweep that holds one diverged and one never-run (missing) run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis import figures
from analysis.figures import NOT_RUN, fig_lr_sweep, fig_mechanism, lr_sweep_points, mechanism_series, save

STEPS = 20  # planned training steps: the max grad norm leaves out steps <= 2 (10%)
SCALE = "s2"
ARCH = {"baseline": "baseline", "hc": "hc", "mhc": "mhc", "gain": "gain", "mhc-fixed": "mhc", "mhc-zero": "mhc"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def mechanism_record(step: int, scale: float, arch: str, learn_res: bool = True) -> dict[str, Any]:
    """One diagnostics.jsonl line: 4 sub-layers, values = scale x a fixed pattern (so the last one is known)."""
    pattern = [0.0, 1.0, 2.0, 4.0]  # stream spread of sub-layer 1 is 0: the streams enter it as copies
    streams = arch != "gain"
    return {
        "step": step,
        "single_forward": [1.0] * 4,
        "composite_forward": [1.0] * 4,
        "H_res_mean": [[[0.25] * 4] * 4] * 4 if streams else [[[1.0]]] * 4,
        "stream_spread": [scale * p for p in pattern] if streams else [0.0] * 4,
        "hres_learned": [scale * 0.1 * (i + 1) for i in range(4)] if learn_res else [0.0] * 4,
        "hres_from_uniform": [0.7] * 4,
        "hres_from_identity": [0.05] * 4,
        "hres_token_dev": [0.01] * 4,
        "pre_spread": [0.5] * 4 if streams else [0.0] * 4,
        "post_spread": [scale * 0.2] * 4 if streams else [0.0] * 4,
        "grad_res": [scale * 1e-3 * (i + 1) for i in range(4)] if learn_res else [None] * 4,
        "grad_pre": [1e-3] * 4 if streams else [None] * 4,
        "grad_post": [1e-3] * 4,
    }


# (record steps, scale per record) of each variant's diagnostics; the last record is what panels (a), (b), (d) show
DIAG = {"hc": (0.5, 1.0, 2.0), "mhc": (0.1, 0.2, 0.3), "gain": (0.01, 0.02, 0.04), "mhc-fixed": (0.1, 0.1, 0.1)}
DIAG_STEPS = (0, 10, 20)


def metrics_rows(
    final: float, stop: int = STEPS, grad_peak: tuple[int, float] | None = None, nan_at_end: bool = False
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"step": 0, "tokens": 0, "val_loss": 8.0}]
    for step in range(1, stop + 1):
        grad = 100.0 if step <= 2 else 1.0 + 0.01 * step  # the warm-up spike that must be left out
        if grad_peak and step == grad_peak[0]:
            grad = grad_peak[1]
        loss = final + 2.0 * math.exp(-step / 4)
        rows.append({"step": step, "tokens": step * 512, "loss": loss, "lr": 1e-3, "grad_norm": grad})
    if nan_at_end:
        rows[-1]["loss"] = float("nan")
        rows[-1]["grad_norm"] = float("inf")
    rows.append({"step": stop, "val_loss": final})
    return rows


def make_run(
    root: Path,
    variant: str,
    seed: int,
    *,
    arch: str,
    status: str = "completed",
    final: float | None = 5.0,
    metrics: list[dict[str, Any]] | None = None,
    diagnostics: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    folder = root / SCALE / variant / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "scale": SCALE,
        "variant": variant,
        "arch": arch,
        "seed": seed,
        "dir": str(folder),
        "status": status,
        "final_val_loss": final if status == "completed" else None,
        "metrics": None if metrics is None else write_jsonl(folder / "metrics.jsonl", metrics),
        "diagnostics": None if diagnostics is None else write_jsonl(folder / "diagnostics.jsonl", diagnostics),
    }


FINAL = {  # (variant, multiplier, seed) -> final val loss of completed sweep runs
    ("baseline", 1, 0): 5.00,
    ("baseline", 1, 1): 5.02,
    ("baseline", 3, 0): 5.10,
    ("baseline", 3, 1): 5.12,
    ("baseline", 10, 0): 5.30,
    ("baseline", 10, 1): 5.34,
    ("hc", 1, 0): 4.98,
    ("hc", 1, 1): 4.99,
    ("hc", 3, 0): 5.20,
    ("hc", 3, 1): 5.22,
    ("hc", 10, 1): 5.60,  # seed 0 diverged at step 12
    ("mhc", 1, 0): 4.97,
    ("mhc", 1, 1): 4.96,
    ("mhc", 3, 0): 5.05,
    ("mhc", 3, 1): 5.07,
    ("mhc", 10, 0): 5.15,  # seed 1 never ran (status missing, no files)
}
DIVERGED_STEP, DIVERGED_PEAK = 12, 50.0


def make_index(root: Path, lr_sweep: bool = True, diagnostics: bool = True) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}

    def add(run: dict[str, Any]) -> None:
        runs[f"{SCALE}/{run['variant']}/seed{run['seed']}"] = run

    for variant in ("baseline", "hc", "mhc", "gain", "mhc-fixed"):
        for seed in (0, 1):
            diag = None
            if diagnostics and variant in DIAG and seed == 0:
                scales = DIAG[variant]
                learn = variant != "mhc-fixed"
                diag = [mechanism_record(s, k, ARCH[variant], learn) for s, k in zip(DIAG_STEPS, scales, strict=True)]
            final = FINAL.get((variant, 1, seed), 5.0)
            add(make_run(root, variant, seed, arch=ARCH[variant], final=final, metrics=metrics_rows(final),
                         diagnostics=diag))  # fmt: skip
    # mhc-zero (init ablation only): seed 0 is an old run with Amax-only diagnostics, seed 1 has the mechanism keys
    old = [{"step": 20, "single_forward": [1.0] * 4, "composite_forward": [1.0] * 4}]
    add(make_run(root, "mhc-zero", 0, arch="mhc", metrics=metrics_rows(5.0), diagnostics=old if diagnostics else None))
    zero = [mechanism_record(s, 1e-3, "mhc") for s in (0, 10)] + [{**mechanism_record(10, 2e-3, "mhc")}]
    add(make_run(root, "mhc-zero", 1, arch="mhc", metrics=metrics_rows(5.0), diagnostics=zero if diagnostics else None))
    if lr_sweep:
        for variant in ("baseline", "hc", "mhc"):
            for multiplier in (3, 10):
                name = f"{variant}-lr{multiplier}x"
                for seed in (0, 1):
                    if (variant, multiplier, seed) == ("hc", 10, 0):
                        rows = metrics_rows(6.0, stop=DIVERGED_STEP, grad_peak=(11, DIVERGED_PEAK), nan_at_end=True)
                        add(make_run(root, name, seed, arch="hc", status="diverged", metrics=rows))
                    elif (variant, multiplier, seed) == ("mhc", 10, 1):
                        add(make_run(root, name, seed, arch="mhc", status="missing"))
                    else:
                        final = FINAL[(variant, multiplier, seed)]
                        rows = metrics_rows(final, grad_peak=(15, 2.0 * multiplier))
                        add(make_run(root, name, seed, arch=ARCH[variant], final=final, metrics=rows))
    return {
        "tier": "test",
        "main": {"scale": SCALE, "variants": ["baseline", "hc", "mhc", "gain", "mhc-fixed"], "seeds": [0, 1]},
        "init_ablation": {"scale": SCALE, "variants": ["mhc", "mhc-zero"], "seeds": [0, 1]},
        "lr_sweep": (
            {"scale": SCALE, "variants": ["baseline", "hc", "mhc"], "multipliers": [1, 3, 10], "seeds": [0, 1]}
            if lr_sweep
            else None
        ),
        "variants": {name: {"arch": arch, "description": name} for name, arch in ARCH.items()},
        "scales": {SCALE: {"steps": STEPS}},
        "runs": runs,
    }


@pytest.fixture
def index(tmp_path: Path) -> dict[str, Any]:
    return make_index(tmp_path / "runs")


def _png(tmp_path: Path, fig, name: str) -> Path:
    save(fig, tmp_path / "figs", name, dpi=40)
    path = tmp_path / "figs" / f"{name}.png"
    assert path.stat().st_size > 1000 and (tmp_path / "figs" / f"{name}.pdf").stat().st_size > 1000
    return path


# --------------------------------------------------------------------------------------------------------------------
# Data selection


def test_mechanism_series_picks_variants_runs_and_records(index: dict[str, Any]) -> None:
    series = mechanism_series(index)
    # hc/mhc/gain variants of main then of the init ablation, each once; the baseline has no mechanism
    assert list(series) == ["hc", "mhc", "gain", "mhc-fixed", "mhc-zero"]
    hc = series["hc"]
    assert (hc.arch, hc.seed, hc.step, hc.run) == ("hc", 0, 20, "s2/hc/seed0")
    np.testing.assert_allclose(hc.sublayer["stream_spread"], [0.0, 2.0, 4.0, 8.0])  # last record: scale 2.0
    np.testing.assert_allclose(hc.sublayer["hres_learned"], [0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(hc.sublayer["post_spread"], [0.4] * 4)
    np.testing.assert_allclose(hc.grad_steps, [0, 10, 20])
    np.testing.assert_allclose(hc.grad_res_max, [0.5 * 4e-3, 1.0 * 4e-3, 2.0 * 4e-3])  # max over sub-layers
    assert hc.initial_from_uniform == pytest.approx(0.7)
    assert series["gain"].arch == "gain"
    # H_res not learned: no gradient anywhere (NaN, not 0) and H_res never moved (exact zeros kept)
    assert np.isnan(series["mhc-fixed"].grad_res_max).all()
    np.testing.assert_array_equal(series["mhc-fixed"].sublayer["hres_learned"], [0.0] * 4)
    # seed 0 of mhc-zero has only Amax records (an older run): the lowest seed with mechanism records is used, and
    # of its two step-10 records the later one counts
    zero = series["mhc-zero"]
    assert (zero.seed, zero.step) == (1, 10)
    np.testing.assert_allclose(zero.grad_steps, [0, 10])
    np.testing.assert_allclose(zero.grad_res_max, [4e-6, 8e-6])
    np.testing.assert_allclose(zero.sublayer["stream_spread"], [0.0, 2e-3, 4e-3, 8e-3])


def test_lr_sweep_points_hand_computed(index: dict[str, Any]) -> None:
    points = lr_sweep_points(index)
    assert {"variant", "multiplier", "seed", "status", "final_val_loss", "max_grad_norm", "unstable"} <= set(points)
    assert len(points) == 3 * 3 * 2  # every planned run, the missing one included
    row = points.set_index(["variant", "multiplier", "seed"])
    diverged = row.loc[("hc", 10.0, 0)]
    assert diverged["status"] == "diverged" and np.isnan(diverged["final_val_loss"])
    # the step-1/2 spike (100) is warm-up and the last step's inf is not a number: the peak at step 11 remains
    assert diverged["max_grad_norm"] == pytest.approx(DIVERGED_PEAK)
    assert diverged["last_step"] == DIVERGED_STEP and diverged["run"] == "s2/hc-lr10x/seed0"
    missing = row.loc[("mhc", 10.0, 1)]
    assert missing["status"] == "missing" and np.isnan(missing["final_val_loss"]) and np.isnan(missing["max_grad_norm"])
    for (variant, multiplier, seed), final in FINAL.items():
        assert row.loc[(variant, float(multiplier), seed), "final_val_loss"] == pytest.approx(final)
    assert row.loc[("mhc", 3.0, 0), "max_grad_norm"] == pytest.approx(6.0)  # grad_peak (15, 2 x 3)
    # the 1x runs are the plain variants (shared with the main comparison): max over steps 3..20 = 1 + 0.01 x 20
    assert row.loc[("hc", 1.0, 1), "max_grad_norm"] == pytest.approx(1.2)
    assert row.loc[("baseline", 1.0, 0), "run"] == "s2/baseline/seed0"
    assert (points["status"] == "completed").sum() == len(FINAL)


def test_max_grad_norm_of_a_run_that_stopped_during_warm_up(tmp_path) -> None:
    from analysis.stability import run_stability

    def run(rows: list[tuple[float, float]]) -> dict[str, Any]:
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.jsonl"
        path.write_text("".join(json.dumps({"step": s, "loss": 5.0, "grad_norm": g}) + "\n" for s, g in rows))
        return {"metrics": str(path), "status": "completed"}

    short = run([(1.0, 3.0), (2.0, float("nan"))])
    assert run_stability(short, 100)["max_grad_norm"] == 3.0  # nothing after step 10: the whole run counts
    longer = run([(1.0, 30.0), (20.0, 2.0), (30.0, 4.0)])
    assert run_stability(longer, 100)["max_grad_norm"] == 4.0
    assert run_stability(longer, None)["max_grad_norm"] == 4.0  # 10% of the last logged step (30): step 1 left out


# --------------------------------------------------------------------------------------------------------------------
# Figures


def test_fig_mechanism_builds_and_says_where_curves_come_from(index: dict[str, Any], tmp_path: Path) -> None:
    fig, status = fig_mechanism(index)
    assert status.startswith("ok") and "s2/mhc-zero/seed1 step 10" in status and "s2/hc/seed0 step 20" in status
    ax_a, ax_b, ax_c, ax_d = fig.axes[:4]
    assert all(ax.get_yscale() == "log" for ax in (ax_a, ax_b, ax_c))
    # (a) and (d): gain has one stream, so 4 stream variants; every curve line carries 4 sub-layers
    curves_a = [line for line in ax_a.get_lines() if len(line.get_xdata()) == 4]
    assert len(curves_a) == 4
    # the threshold of (a) and (b) is a dashed line at MECHANISM_THRESHOLDS
    from models.diagnostics import MECHANISM_THRESHOLDS

    dashed = {
        ax: [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] for ax in (ax_a, ax_b)
    }
    assert dashed[ax_a] == [MECHANISM_THRESHOLDS["stream_spread"]]
    assert dashed[ax_b] == [MECHANISM_THRESHOLDS["hres_learned"]]
    assert any("operates above" in t.get_text() for t in ax_a.texts)
    # (c): no H_res gradient for mhc-fixed, so 4 of the 5 variants draw a curve, and the title says why
    assert len([line for line in ax_c.get_lines() if line.get_linestyle() == "-"]) == 4
    assert "mhc-fixed" in ax_c.get_title()
    _png(tmp_path, fig, "fig_mechanism")


def test_fig_mechanism_partial_and_not_run(tmp_path: Path) -> None:
    index = make_index(tmp_path / "a", lr_sweep=False)
    index["runs"] = {k: r for k, r in index["runs"].items() if r["variant"] != "gain"}
    fig, status = fig_mechanism(index)
    assert status.startswith("partial: gain " + NOT_RUN)
    _png(tmp_path, fig, "partial")

    index = make_index(tmp_path / "b", diagnostics=False)
    fig, status = fig_mechanism(index)
    assert status.startswith(NOT_RUN)
    _png(tmp_path, fig, "none")


def test_fig_lr_sweep_draws_the_diverged_run(index: dict[str, Any], tmp_path: Path) -> None:
    fig, status = fig_lr_sweep(index)
    assert status == "ok"
    ax_a, ax_b, ax_c = fig.axes[:3]
    assert ax_a.get_xscale() == "log" and [t.get_text() for t in ax_a.get_xticklabels()] == ["1×", "3×", "10×"]
    # exactly one group of diverged runs (HC at 10x, one run), drawn as an x with its count
    crosses = [line for line in ax_a.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_color() == figures.color_of("hc")
    assert [t.get_text() for t in ax_a.texts] == ["1"]
    assert ax_b.get_yscale() == "log"
    # (c): one curve pair (raw + EMA) per variant at 10x, HC's ending at the diverged step, marked there
    assert "10×" in ax_c.get_title()
    ends = [line.get_xdata()[-1] for line in ax_c.get_lines() if line.get_marker() == "X"]
    assert ends == [DIVERGED_STEP]
    _png(tmp_path, fig, "fig_lr_sweep")


def test_fig_lr_sweep_not_run_without_sweep(tmp_path: Path) -> None:
    index = make_index(tmp_path / "runs", lr_sweep=False)
    assert lr_sweep_points(index).empty
    fig, status = fig_lr_sweep(index)
    assert status.startswith(NOT_RUN) and "no LR sweep" in status
    _png(tmp_path, fig, "no_sweep")
    # a sweep whose runs all left nothing behind is "not run" too
    index = make_index(tmp_path / "runs2")
    for run in index["runs"].values():
        if "-lr" in run["variant"] or run["variant"] in ("baseline", "hc", "mhc"):
            run.update(status="missing", metrics=None, diagnostics=None)
    fig, status = fig_lr_sweep(index)
    assert status.startswith(NOT_RUN)


def test_cli_writes_both_new_figures(index: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(index))
    assert figures.main(["--index", str(path), "--out", str(tmp_path / "out"), "--dpi", "40"]) == 0
    for name in figures.FIGURES:
        for ext in ("png", "pdf"):
            assert (tmp_path / "out" / f"{name}.{ext}").stat().st_size > 1000, name
    err = capsys.readouterr().err
    assert "fig_mechanism.png/.pdf: ok" in err and "fig_lr_sweep.png/.pdf: ok" in err
    assert {"fig_mechanism", "fig_lr_sweep"} <= set(figures.BUILDERS)
