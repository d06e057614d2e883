"""The section beyond the paper (analysis/beyond.py, its table, figures, report section and claim 10, and its plan) on
synthetic run folders with hand-computed values.

Two depths (4 and 8 sub-layers), four variants (baseline, HC, mHC, RMT), seeds 0 and 1, and a stress test at 10x on the
deeper scale; every run has metrics.jsonl and a jacobian_gain.json in the formats the training and the gain job write.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis import beyond, figures, report, tables
from analysis.plan import build_plan

DEPTHS = {"s4": 4, "s8": 8}
VARIANTS = {"baseline": "baseline", "hc": "hc", "mhc": "mhc", "rmt": "rmt"}
FINAL = {"baseline": 5.0, "hc": 4.8, "mhc": 4.9, "rmt": 5.2}  # + 0.01 x seed, + 0.1 at the deeper scale
IDENTITY = {"baseline": 0.0, "hc": 0.0, "mhc": 1e-6, "rmt": 0.8}
STEPS = 20


def metrics(final: float, diverge: bool) -> list[dict[str, Any]]:
    rows = [{"step": s, "loss": final + 2 * math.exp(-s / 4), "grad_norm": 1.0} for s in range(1, STEPS + 1)]
    if diverge:
        rows = rows[:12]
        rows[-1].update(loss=float("nan"), grad_norm=float("inf"))
    return rows


def gain_file(folder: Path, variant: str, sublayers: int, seed: int) -> str:
    """Composite forward gains per depth (from the input), backward gains per depth (the first is through the whole
    depth), single-sub-layer gains; HC's grow by 2x per sub-layer after training."""
    growth = 2.0 if variant == "hc" else 1.0
    record = {
        "composite_fwd": [growth ** (k + 1) for k in range(sublayers)],
        "composite_bwd": [growth ** (sublayers - k) for k in range(sublayers)],
        "single_fwd": [growth] * sublayers,
        "single_bwd": [growth + seed] * sublayers,
    }
    init = {**record, "composite_fwd": [1.0] * sublayers, "composite_bwd": [1.0] * sublayers}
    init["identity_path"] = {"max": IDENTITY[variant]}
    record["identity_path"] = {"max": 2 * IDENTITY[variant] + 0.1}
    path = folder / "jacobian_gain.json"
    path.write_text(json.dumps({"init": init, "final": record}))
    return str(path)


def make_run(root: Path, scale: str, variant: str, seed: int, multiplier: float = 1, diverge: bool = False) -> tuple:
    name = variant if multiplier == 1 else f"{variant}-lr{multiplier:g}x"
    folder = root / scale / name / f"seed{seed}"
    folder.mkdir(parents=True)
    final = FINAL[variant] + 0.01 * seed + (0.1 if scale == "s8" else 0.0) + 0.05 * (multiplier != 1)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics(final, diverge)))
    run = {
        "scale": scale,
        "variant": name,
        "arch": VARIANTS[variant],
        "seed": seed,
        "dir": str(folder),
        "status": "diverged" if diverge else "completed",
        "final_val_loss": None if diverge else final,
        "metrics": str(folder / "metrics.jsonl"),
        "jacobian_gain": gain_file(folder, variant, DEPTHS[scale], seed),
    }
    return f"{scale}/{name}/seed{seed}", run


def make_index(root: Path, rmt_diverges: set[tuple[str, float, int]] = frozenset()) -> dict[str, Any]:
    """`rmt_diverges`: the (scale, multiplier, seed) cells where RMT diverged."""
    runs = {}
    for scale in DEPTHS:
        for variant in VARIANTS:
            for seed in (0, 1):
                diverge = variant == "rmt" and (scale, 1.0, seed) in rmt_diverges
                key, run = make_run(root, scale, variant, seed, diverge=diverge)
                runs[key] = run
    for variant in VARIANTS:
        for seed in (0, 1):
            diverge = variant == "rmt" and ("s8", 10.0, seed) in rmt_diverges
            key, run = make_run(root, "s8", variant, seed, multiplier=10, diverge=diverge)
            runs[key] = run
    return {
        "tier": "test",
        "scales": {s: {"steps": STEPS} for s in DEPTHS},
        "beyond_paper": {
            "variants": list(VARIANTS),
            "archs": dict(VARIANTS),
            "seeds": [0, 1],
            "depths": [{"scale": s, "sublayers": d, "dim": 64, "tokens": 1000} for s, d in DEPTHS.items()],
            "stress": {"scale": "s8", "multipliers": [10], "seeds": [0, 1]},
            "gain": {},
        },
        "runs": runs,
    }


def test_depth_rows_and_table_hand_computed(tmp_path: Path) -> None:
    index = make_index(tmp_path)
    rows = beyond.depth_runs(index)
    assert len(rows) == 2 * 4 * 2
    row = rows.set_index(["variant", "sublayers", "seed"]).loc[("hc", 8, 1)]
    assert row["gap"] == pytest.approx(4.8 - 5.0)  # same depth and seed: the seed and depth offsets cancel
    assert row["final_composite_fwd"] == pytest.approx(2.0**8)  # the last entry: through the whole depth
    assert row["final_composite_bwd"] == pytest.approx(2.0**8)  # the first entry: pulled back to the input
    assert row["init_composite_fwd"] == pytest.approx(1.0)
    assert row["final_single_bwd_max"] == pytest.approx(3.0)
    table = beyond.depth_table(rows).set_index(["variant", "sublayers"])
    assert table.loc[("rmt", 4), "gap"] == pytest.approx(0.2)
    assert table.loc[("rmt", 4), "gap_ci"] == pytest.approx(0.0, abs=1e-12)  # equal gaps in both seeds
    assert table.loc[("hc", 4), "final_composite_fwd"] == pytest.approx(16.0)
    assert table.loc[("rmt", 8), "identity_deviation"] == pytest.approx(0.8)


def test_a_gain_that_is_not_finite_counts_as_infinite(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "jacobian_gain.json"
    path.write_text(json.dumps({"init": {"composite_fwd": [1.0, 2.0]}, "final": {"not_finite": "nan tangent"}}))
    gains = beyond.gain_summary({"jacobian_gain": str(path)})
    assert gains["init_composite_fwd"] == 2.0 and gains["final_composite_fwd"] == math.inf
    assert math.isnan(gains["identity_deviation"])


def test_identity_and_divergence_per_variant(tmp_path: Path) -> None:
    index = make_index(tmp_path, rmt_diverges={("s8", 10.0, 0)})
    verdicts = {v["variant"]: v for v in beyond.variant_verdicts(index)}
    assert verdicts["rmt"]["identity_at_init"] is False and verdicts["mhc"]["identity_at_init"] is True
    assert verdicts["rmt"]["runs"] == 6 and verdicts["rmt"]["diverged"] == 1  # 4 depth-sweep runs + 2 stress runs
    assert verdicts["hc"]["diverged"] == 0
    assert verdicts["hc"]["deepest"] == 8 and verdicts["hc"]["final_composite_fwd"] == pytest.approx(256.0)
    # a diverged run has no gap and no final loss
    stress = beyond.stress_runs(index).set_index(["variant", "multiplier", "seed"])
    assert stress.loc[("rmt", 10.0, 0), "diverged"] and math.isnan(stress.loc[("rmt", 10.0, 0), "final_val_loss"])
    assert len(stress) == 4 * 2 * 2  # the 1x runs are the depth sweep's at the stress scale


def test_claim_10_needs_the_rival_unstable_where_mhc_is_not(tmp_path: Path) -> None:
    rmt = report.claim_rival("rmt", "a", "RMT")
    cells = {("s4", 1.0, 0), ("s4", 1.0, 1), ("s8", 1.0, 0), ("s8", 1.0, 1), ("s8", 10.0, 0)}
    unstable = make_index(tmp_path / "a", rmt_diverges=cells)
    assert len(beyond.instability_cells(unstable, "rmt", "mhc")) == 6
    claim = rmt(report.ClaimInputs(unstable, None))
    assert claim.verdict == report.REPRODUCED, claim.why  # 5 of 6 cells, mHC never: sign test p = 1/32
    assert "identity at init lost (deviation 0.8; after training 1.7)" in claim.ours
    stable = make_index(tmp_path / "b")
    claim = rmt(report.ClaimInputs(stable, None))
    assert claim.verdict == report.INCONCLUSIVE and "did not bite" in claim.why
    few = make_index(tmp_path / "c", rmt_diverges={("s8", 10.0, 0)})
    assert rmt(report.ClaimInputs(few, None)).verdict == report.INCONCLUSIVE  # 1 cell: p = 0.5
    assert rmt(report.ClaimInputs({"runs": {}}, None)).verdict == report.INCONCLUSIVE
    # MUDDFormer has no run here: not run, whatever RMT did
    assert report.claim_rival("mudd", "b", "MUDDFormer")(report.ClaimInputs(unstable, None)).ours == "not run"


def test_a_rival_stable_where_the_stress_bit_others_contradicts_the_claim() -> None:
    assert report.verdict_rival([(False, False)] * 6, ["mudd"], 6, 0, "RMT")[0] == report.CONTRADICTED
    assert report.verdict_rival([(False, False)] * 6, [], 6, 0, "RMT")[0] == report.INCONCLUSIVE  # did not bite
    assert report.verdict_rival([(False, False)] * 2, ["mudd"], 2, 0, "RMT")[0] == report.INCONCLUSIVE  # too few
    assert report.verdict_rival([(True, False)] * 5, [], 5, 5, "RMT")[0] == report.REPRODUCED


def test_table_figures_and_report_section(tmp_path: Path) -> None:
    index = make_index(tmp_path / "runs", rmt_diverges={("s8", 10.0, 1)})
    table = tables.beyond_paper(index)
    assert not table.frame.empty and set(table.frame["variant"]) == set(VARIANTS)
    lines = "\n".join(report.beyond_section(index))
    assert "| rmt | **no** (0.8) | 1.7 | 6 | 1 | 1 |" in lines
    assert "hc ≥ 10 from 4 sub-layers (4: 16, 8: 256)" in lines  # Jacobian gain: 2^4 already explodes
    figures._style()
    for name in ("fig_beyond_depth", "fig_beyond_stress"):
        fig, status = figures.BUILDERS[name](index)
        assert status == "ok", status
        figures.save(fig, tmp_path, name)
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    empty = {"tier": "test", "runs": {}}
    assert figures.fig_beyond_depth(empty)[1].startswith(figures.NOT_RUN)
    assert "no `beyond_paper` section" in "\n".join(report.beyond_section(empty))


@pytest.fixture(scope="module")
def tier() -> dict[str, Any]:
    return yaml.safe_load(Path("config/config.yaml").read_text())


def test_plan_of_the_section(tier: dict[str, Any]) -> None:
    plan = build_plan(tier)
    section = plan["beyond_paper"]
    assert [p["sublayers"] for p in section["depths"]] == [4, 8, 16, 32]
    runs = plan["runs"]
    assert "depth_sweep" in runs["cpu-dense-d16/rmt/seed1"]["roles"]
    # the stress test's HC run at 10x is the LR sweep's: one run, both roles
    assert runs["cpu-dense-d8/hc-lr10x/seed0"]["roles"] == ["lr_sweep", "stress"]
    assert runs["cpu-dense-d8/rmt-lr10x/seed1"]["roles"] == ["stress"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["beyond_paper"].update(depth_scales=["cpu-dense-d4", "cpu-dense-d8"]), "differ only in depth"),
        (lambda c: c["beyond_paper"].update(depth_scales=["cpu-dense-d8", "cpu-dense-d8"]), "same depth"),
        (lambda c: c["beyond_paper"].update(variants=["baseline", "nope"]), "'nope' is not defined"),
    ],
)
def test_plan_refuses_a_section_that_cannot_decide(tier: dict[str, Any], edit, message: str) -> None:
    config = copy.deepcopy(tier)
    config["scales"]["cpu-dense-d4"] = {"dataset": "bpe4096"}
    edit(config)
    with pytest.raises(ValueError, match=message):
        build_plan(config)


def test_plan_refuses_two_sweeps_that_give_one_run_name_two_rates(tier: dict[str, Any]) -> None:
    """hc-lr10x of the LR sweep (at cpu-dense-d8's rate) and of the stress test at another scale's rate would be two
    different runs under one name."""
    config = copy.deepcopy(tier)
    config["scales"]["cpu-dense-d16"]["train"] = {"lr": 1e-3}
    config["beyond_paper"]["stress"]["scale"] = "cpu-dense-d16"
    with pytest.raises(ValueError, match="another LR sweep"):
        build_plan(config)
