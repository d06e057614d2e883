"""The analysis layer (analysis/results.py, stats.py, tables.py, figures.py, report.py) on synthetic run directories.

Every run is built in tmp_path in the formats models.train and the analysis commands write, with known final
losses, so the tables, the CI and the verdicts can be checked against hand-computed values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis import artifacts, paper, report, results, stability, stats, tables
from analysis.figures import FIGURES, build_figures
from analysis.results import Benchmark, benchmark_score
from analysis.stats import mean_ci, t_quantile

# --------------------------------------------------------------------------------------------------------------------
# Synthetic runs

BASE_LOSS = {0: 5.00, 1: 5.01, 2: 5.02}
OFFSET = {"baseline": 0.0, "hc": -0.02, "mhc": -0.03, "hc-res": -0.015, "hc-res-pre": -0.018}
EVAL = {  # variant -> benchmark score in [0, 1] (MMLU only as subtasks, TriviaQA missing)
    "baseline": {
        "bbh": 0.10,
        "drop": 0.05,
        "gsm": 0.01,
        "hs_norm": 0.26,
        "hs": 0.25,
        "math": 0.0,
        "mmlu": (0.2, 0.3),
        "piqa": 0.55,
    },
    "hc": {
        "bbh": 0.12,
        "drop": 0.06,
        "gsm": 0.02,
        "hs_norm": 0.27,
        "hs": 0.26,
        "math": 0.0,
        "mmlu": (0.25, 0.3),
        "piqa": 0.56,
    },
    "mhc": {
        "bbh": 0.14,
        "drop": 0.07,
        "gsm": 0.03,
        "hs_norm": 0.28,
        "hs": 0.27,
        "math": 0.01,
        "mmlu": (0.3, 0.3),
        "piqa": 0.57,
    },
}
STEPS = 60


def final_loss(variant: str, seed: int) -> float:
    return BASE_LOSS[seed] + OFFSET[variant] - (0.001 * seed if variant == "mhc" else 0.0)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def eval_json(variant: str) -> dict[str, Any]:
    s = EVAL[variant]
    return {
        "results": {
            "bbh_cot_fewshot": {
                "exact_match,get-answer": s["bbh"],
                "exact_match,flexible-extract": 0.99,
                "exact_match_stderr,get-answer": 0.01,
                "alias": "bbh",
            },
            "drop": {"em,none": 0.0, "f1,none": s["drop"]},
            "gsm8k_cot": {"exact_match,strict-match": s["gsm"], "exact_match,flexible-extract": 0.5},
            "hellaswag": {"acc,none": s["hs"], "acc_norm,none": s["hs_norm"]},
            "minerva_math": {"exact_match,none": s["math"], "math_verify,none": 0.9},
            "mmlu_stem": {"acc,none": 0.77},  # a category group: must not be averaged in
            "mmlu_abstract_algebra": {"acc,none": s["mmlu"][0]},
            "mmlu_anatomy": {"acc,none": s["mmlu"][1]},
            "piqa": {"acc,none": s["piqa"], "acc_norm,none": 0.9},
        },
        "group_subtasks": {"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_abstract_algebra", "mmlu_anatomy"]},
        "n-samples": {"mmlu_abstract_algebra": {"effective": 10}, "mmlu_anatomy": {"effective": 30}},
        "mhc_substitutions": {"piqa": "baber/piqa train is missing; served empty"},
        "mhc_data_source": "/data/benchmarks",
    }


def diagnostics(variant: str, sublayers: int = 8) -> dict[str, Any]:
    if variant == "hc":
        composite = [1.5 ** (sublayers - i) for i in range(sublayers)]  # up to ~25
        return {
            "step": STEPS,
            "single_forward": [1.2] * sublayers,
            "single_backward": [1.4] * sublayers,
            "single_min_col": [0.8] * sublayers,
            "composite_forward": [c / 2 for c in composite],
            "composite_backward": composite,
            "composite_min_col": [-0.5] * sublayers,
        }
    return {
        "step": STEPS,
        "single_forward": [1.0 + 1e-7] * sublayers,
        "single_backward": [1.02] * sublayers,
        "single_min_col": [0.98] * sublayers,
        "composite_forward": [1.0] * sublayers,
        "composite_backward": [1.3] * sublayers,
        "composite_min_col": [0.7] * sublayers,
        # the mechanism operates: the streams differ and H_res moved (models.diagnostics.MECHANISM_THRESHOLDS)
        "stream_spread": [0.0] + [0.3] * (sublayers - 1),
        "hres_learned": [0.1] * sublayers,
        "hres_from_init": [0.1] * sublayers,
        "hres_from_uniform": [0.6] * sublayers,
        "hres_token_dev": [0.05] * sublayers,
        "pre_spread": [0.9] * sublayers,
        "post_spread": [0.9] * sublayers,
        "grad_res": [1e-3] * sublayers,
    }


def make_run(root: Path, scale: str, variant: str, seed: int, roles: list[str]) -> dict[str, Any]:
    folder = root / "runs" / scale / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    arch = "baseline" if variant == "baseline" else ("mhc" if variant == "mhc" else "hc")
    final = final_loss(variant, seed)
    rows: list[dict[str, Any]] = [{"step": 0, "tokens": 0, "val_loss": 8.3}]
    for step in range(1, STEPS + 1):
        loss = final + 3.0 * math.exp(-step / 10) + 0.01 * ((step * (seed + 3)) % 7 - 3) / 3
        grad = 1.0 + 2.0 * math.exp(-step / 5) + (0.2 if arch == "hc" else 0.0)
        row = {
            "step": step,
            "tokens": step * 2048,
            "loss": loss,
            "lr": 3e-3,
            "grad_norm": grad,
            "step_time_s": 0.1,
            "tokens_per_s": 20480.0,
            "epoch": 0,
        }
        if step % 20 == 0:
            row["val_loss"] = final + 3.0 * math.exp(-step / 10)
        rows.append(row)
        if arch != "baseline" and step % 20 == 0:
            rows.append(
                {
                    "step": step,
                    "amax_single_fwd": 1.0,
                    "amax_single_bwd": 1.1,
                    "amax_composite_fwd": 1.0,
                    "amax_composite_bwd": 1.3,
                    "amax_composite_min_col": 0.7,
                }
            )
    run = {
        "scale": scale,
        "variant": variant,
        "arch": arch,
        "seed": seed,
        "dir": str(folder),
        "roles": roles,
        "status": "completed",
        "reason": "",
        "final_val_loss": final,
        "final_train_loss": final + 0.05,
        "steps_done": STEPS,
        "metrics": write_jsonl(folder / "metrics.jsonl", rows),
        "diagnostics": None,
        "eval": None,
        "checkpoint_losses": None,
        "mappings": None,
    }
    if arch != "baseline":
        run["diagnostics"] = write_jsonl(
            folder / "diagnostics.jsonl", [{**diagnostics(arch), "step": 20}, diagnostics(arch)]
        )
    if "evaluation" in roles:
        (folder / "eval.json").write_text(json.dumps(eval_json(variant)))
        run["eval"] = str(folder / "eval.json")
    if "token_scaling" in roles:
        points = [{"step": s, "tokens": s * 2048, "val_loss": final + 3.0 * math.exp(-s / 10)} for s in (20, 40, 60)]
        (folder / "checkpoint_losses.json").write_text(
            json.dumps({"run": str(folder), "val_batches": 4, "points": points})
        )
        run["checkpoint_losses"] = str(folder / "checkpoint_losses.json")
    if "mappings" in roles:
        n, L = 4, 8
        mats = [[[0.25 + (0.5 if (i == j and arch == "hc") else 0.0) for j in range(n)] for i in range(n)]] * L
        if arch == "hc":
            mats = [[[v - 0.3 if i == 0 else v for v in row] for i, row in enumerate(m)] for m in mats]
        data = {
            "variant": variant,
            "arch": arch,
            "n": n,
            "sublayers": L,
            "H_res": mats,
            "composite": {"5-8": mats[0], "1-4": mats[1]},
            "H_pre": [[0.5] * n] * L,
            "H_post": [[1.0] * n] * L,
        }
        (folder / "mappings.json").write_text(json.dumps(data))
        run["mappings"] = str(folder / "mappings.json")
    return run


def make_index(root: Path, variants: tuple[str, ...] = ("baseline", "hc", "mhc")) -> dict[str, Any]:
    """Main comparison at s2 (3 seeds), ablation at s2 (seed 0), compute scaling s1..s3 (2 seeds), token scaling."""
    roles: dict[tuple[str, str, int], list[str]] = {}

    def add(scale: str, variant: str, seed: int, role: str) -> None:
        roles.setdefault((scale, variant, seed), []).append(role)

    for v in variants:
        for s in (0, 1, 2):
            add("s2", v, s, "main")
        add("s2", v, 0, "evaluation")
    ablation = [v for v in ("baseline", "hc-res", "hc-res-pre", "hc") if v in variants or v.startswith("hc-")]
    if "hc" not in variants:
        ablation = ["baseline"]
    for v in ablation:
        add("s2", v, 0, "ablation")
    for scale in ("s1", "s2", "s3"):
        for v in ("baseline", "mhc"):
            for s in (0, 1):
                add(scale, v, s, "compute_scaling")
    for v in ("baseline", "mhc"):
        add("s2", v, 0, "token_scaling")
    for v in ("hc", "mhc"):
        if v in variants:
            add("s2", v, 0, "mappings")
    runs = {f"{sc}/{v}/seed{s}": make_run(root, sc, v, s, r) for (sc, v, s), r in roles.items()}
    flags = {
        "baseline": (False, False, False),
        "hc-res": (True, False, False),
        "hc-res-pre": (True, True, False),
        "hc": (True, True, True),
    }
    scales = {
        name: {
            "layers": layers,
            "sublayers": 2 * layers,
            "dim": 64,
            "heads": 4,
            "ffn": "moe",
            "routed": 8,
            "active": 2,
            "shared": 2,
            "expert_dim": 48,
            "vocab": 4096,
            "seq_len": 128,
            "batch_size": 16,
            "steps": STEPS,
            "lr": 0.003,
            "tokens": 16 * 128 * STEPS,
            "params_total": 1_000_000 * layers,
            "params_active": 500_000 * layers,
            "flops": 6.0 * 500_000 * layers * 16 * 128 * STEPS,
        }
        for name, layers in (("s1", 2), ("s2", 4), ("s3", 6))
    }
    return {
        "tier": "cpu",
        "created": "2026-11-29T18:00:00Z",
        "git_sha": "abc123",
        "main": {"scale": "s2", "variants": list(variants), "seeds": [0, 1, 2]},
        "ablation": {
            "scale": "s2",
            "seeds": [0],
            "rows": [{"variant": v, **dict(zip(("res", "pre", "post"), flags[v], strict=True))} for v in ablation],
        },  # noqa: E501
        "compute_scaling": {"scales": ["s1", "s2", "s3"], "variants": ["baseline", "mhc"], "seeds": [0, 1]},
        "token_scaling": {"scale": "s2", "variants": ["baseline", "mhc"], "seed": 0},
        "eval": {"variants": list(variants), "seeds": [0], "limit": 50, "tasks": "paper"},
        "mappings": {"scale": "s2", "variants": [v for v in ("hc", "mhc") if v in variants], "seed": 0},
        "scales": scales,
        "runs": runs,
    }


MEASUREMENTS = {
    "machine": "test cpu",
    "date": "2026-11-29",
    "device": "cpu",
    "overhead": [
        {
            "scale": "s2",
            "arch": a,
            "step_ms": ms,
            "baseline_ms": 10.0,
            "ratio": ms / 10.0,
            "kernels": "reference",
            "device": "cpu",
        }
        for a, ms in (("baseline", 10.0), ("hc", 15.0), ("mhc", 16.0))
    ],
    "memory": [
        {
            "scale": "s2",
            "n": 4,
            "C": 64,
            "L": 8,
            "L_r": 2,
            "bytes_per_element": 4,
            "measured_without": 12800,
            "formula_without": 10240,
            "measured_with": 8000,
            "formula_with": 8192,
        }
    ],
    "traffic": [
        {
            "scale": "s2",
            "arch": "baseline",
            "n": 1,
            "C": 64,
            "op": "merge",
            "read_bytes": 512,
            "write_bytes": 256,
            "bytes_per_element": 4,
        },
        {
            "scale": "s2",
            "arch": "mhc",
            "n": 4,
            "C": 64,
            "op": "coefficients",
            "read_bytes": 1100,
            "write_bytes": 96,
            "bytes_per_element": 4,
        },
        {
            "scale": "s2",
            "arch": "mhc",
            "n": 4,
            "C": 64,
            "op": "H_post+H_res+merge",
            "read_bytes": 4000,
            "write_bytes": 3000,
            "bytes_per_element": 4,
        },
    ],
}


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_index(tmp_path_factory.mktemp("runs"))


# --------------------------------------------------------------------------------------------------------------------
# Statistics


def test_mean_ci_matches_student_t() -> None:
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == pytest.approx(2.0)
    assert ci.half_width == pytest.approx(2.484, abs=1e-3)  # t(0.975, 2) = 4.303, sd = 1, / sqrt(3)
    assert (ci.low, ci.high, ci.n) == pytest.approx((2.0 - 2.484, 2.0 + 2.484, 3), abs=1e-3)
    one = mean_ci([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.half_width)
    assert mean_ci([]).n == 0
    assert mean_ci([1.0, float("nan"), 3.0]).n == 2  # non-finite values are left out, not propagated


def test_t_quantile_matches_printed_t_tables() -> None:
    # two-sided 95% quantiles t_{0.975, dof} as printed in statistics textbooks
    for dof, value in {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 30: 2.042}.items():
        assert t_quantile(dof) == pytest.approx(value, abs=1e-3)
    assert t_quantile(4, 0.99) == pytest.approx(4.604, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile(0)


# --------------------------------------------------------------------------------------------------------------------
# Verdict rules

R, C, I, BC = report.REPRODUCED, report.CONTRADICTED, report.INCONCLUSIVE, report.BY_CONSTRUCTION
PAPER_GAP = -0.021


@pytest.mark.parametrize(
    ("gaps", "expected"),
    [
        ([-0.03, -0.031, -0.032], R),
        ([0.03, 0.031, 0.032], C),  # significantly worse
        ([-0.1, 0.1, 0.0], I),  # CI contains 0 and the paper's -0.021
        ([0.001, -0.001, 0.0, 0.002, -0.002], C),  # contains 0, excludes -0.021: an effect that large is ruled out
        ([-0.03], I),  # one seed: no CI
        ([], I),
    ],
)
def test_verdict_negative_gap(gaps: list[float], expected: str) -> None:
    assert report.verdict_negative_gap(gaps, PAPER_GAP)[0] == expected


def test_verdict_negative_gap_needs_the_mechanism() -> None:
    verdict, why = report.verdict_negative_gap([-0.03, -0.031, -0.032], PAPER_GAP, mechanism=False)
    assert verdict == I and "not shown to operate" in why


def test_verdict_instability_sign_test_over_cells() -> None:
    # (HC unstable, mHC unstable) per (LR, seed) cell
    assert report.verdict_instability([(True, False)] * 6, True)[0] == R  # p = 1/64
    assert report.verdict_instability([(True, False)] * 3 + [(False, False)] * 3, True)[0] == I  # p = 1/8
    assert report.verdict_instability([(True, True)] * 2 + [(False, False)] * 4, True)[0] == C  # mHC as unstable
    assert report.verdict_instability([(False, True)] * 2 + [(False, False)] * 4, True)[0] == I  # reverse p = 1/4
    assert report.verdict_instability([(False, True)] * 6, True)[0] == C  # reverse p = 1/64
    assert report.verdict_instability([(True, False), (False, True)], True)[0] == I  # a tie
    assert report.verdict_instability([(False, False)] * 6, False)[0] == I  # the stress test did not bite
    assert report.verdict_instability([], False)[0] == I


def test_verdict_amax_and_forward_gain() -> None:
    assert report.verdict_amax(3000.0, 1.6, mechanism=True)[0] == R
    assert report.verdict_amax(3000.0, 1.0, mechanism=False)[0] == BC  # H_res never moved: trivially bounded
    assert report.verdict_amax(5.0, 1.6, mechanism=True)[0] == C  # HC not 10x above mHC
    assert report.verdict_amax(300.0, 3.0, mechanism=True)[0] == C  # mHC not bounded
    assert report.verdict_amax(None, 1.6, mechanism=True)[0] == I
    assert report.verdict_forward_gain(1e-7)[0] == BC
    assert report.verdict_forward_gain(0.05)[0] == C
    assert report.verdict_forward_gain(None)[0] == I


def test_verdict_ablation() -> None:
    assert report.verdict_ablation([-0.022, -0.021], [-0.027, -0.026])[0] == R
    assert report.verdict_ablation([-0.002, -0.001], [-0.027, -0.026])[0] == C  # H_res gives too little
    assert report.verdict_ablation([0.01, 0.02], [0.03, 0.031])[0] == C  # HC worse than baseline
    assert report.verdict_ablation([0.01, 0.02], [-0.03, 0.031])[0] == I  # no HC gain to divide up
    assert report.verdict_ablation([-0.02], [-0.027])[0] == I  # one seed
    assert report.verdict_ablation([-0.03, 0.005], [-0.027, -0.026])[0] == I  # H_res row's CI straddles 50%


def test_verdict_benchmarks_per_task_cis() -> None:
    assert stats.sign_test_p(8, 8) == pytest.approx(1 / 256)
    assert stats.sign_test_p(6, 8) == pytest.approx(37 / 256)
    up, down, flat = mean_ci([0.02, 0.021, 0.022]), mean_ci([-0.02, -0.021, -0.022]), mean_ci([-0.1, 0.1, 0.0])
    assert report.verdict_benchmarks({"piqa": up, "hellaswag": flat})[0] == R
    assert report.verdict_benchmarks({"piqa": down, "hellaswag": flat})[0] == C
    assert report.verdict_benchmarks({"piqa": up, "hellaswag": down})[0] == I
    assert report.verdict_benchmarks({"piqa": flat})[0] == I
    assert report.verdict_benchmarks({"piqa": mean_ci([0.02])})[0] == I  # one seed
    assert report.verdict_benchmarks({"piqa": up}, mechanism=False)[0] == I


def test_verdict_scaling_and_overhead() -> None:
    good = [mean_ci([-0.02, -0.021]), mean_ci([-0.018, -0.019])]
    assert report.verdict_compute_scaling(good)[0] == R
    assert report.verdict_compute_scaling(good, mechanism=False)[0] == I
    assert report.verdict_compute_scaling([mean_ci([-0.02])] * 3)[0] == I
    assert report.verdict_compute_scaling([*good, mean_ci([0.02, 0.021])])[0] == C
    assert report.verdict_token_scaling({10: [-0.01, -0.02], 20: [-0.02, -0.021], 30: [-0.03, -0.031]})[0] == R
    assert report.verdict_token_scaling({10: [-0.01], 20: [-0.02]})[0] == I
    assert report.verdict_token_scaling({})[0] == I
    cpu = [{"arch": "mhc", "ratio": 1.5, "kernels": "reference", "device": "cpu"}]
    assert report.verdict_overhead(cpu)[0] == I
    assert report.verdict_overhead([{"arch": "mhc", "ratio": 1.05, "kernels": "triton", "device": "cuda"}])[0] == R
    assert report.verdict_overhead([{"arch": "mhc", "ratio": 1.5, "kernels": "triton", "device": "cuda"}])[0] == C
    assert report.verdict_overhead([])[0] == I


def test_run_stability_flags_divergence_and_surges(tmp_path: Path) -> None:
    def run(losses: list[float], status: str = "completed") -> dict[str, Any]:
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.jsonl"
        rows = [{"step": i + 1, "loss": v, "grad_norm": 1.0 + (5.0 if i == 30 else 0.0)} for i, v in enumerate(losses)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"metrics": str(path), "status": status, "final_val_loss": losses[-1]}

    smooth = [6.0 - 0.01 * i for i in range(100)]
    surge = smooth[:60] + [smooth[59] + 0.5] * 40  # the loss jumps by 0.5 nats and stays
    assert not stability.run_stability(run(smooth))["unstable"]
    assert stability.run_stability(run(surge))["unstable"]
    assert stability.run_stability(run(smooth, "diverged"))["unstable"]
    assert stability.run_stability(run(smooth))["spike"] == pytest.approx(6.0)


def test_diverged_run_is_in_the_runs_table(index: dict[str, Any]) -> None:
    diverged = json.loads(json.dumps(index))
    diverged["runs"]["s2/hc/seed1"].update(status="diverged", reason="non-finite loss at step 40", final_val_loss=None)
    assert results.paired_gaps(diverged, "s2", "hc", "baseline", [0, 1, 2]) == pytest.approx({0: -0.02, 2: -0.02})
    assert any(
        line.startswith("| s2/hc/seed1 | main | diverged | non-finite loss at step 40 |")
        for line in report.runs_section(diverged)
    )


# --------------------------------------------------------------------------------------------------------------------
# Benchmark scores


def test_benchmark_score_picks_documented_keys() -> None:
    data = eval_json("mhc")
    by_name = {b.name: b for b in results.BENCHMARKS}
    assert benchmark_score(data, by_name["BBH"]) == (0.14, "bbh_cot_fewshot/exact_match,get-answer")
    assert benchmark_score(data, by_name["GSM8K"])[0] == 0.03  # strict-match, not flexible-extract
    assert benchmark_score(data, by_name["HellaSwag"])[0] == 0.28  # acc_norm
    assert benchmark_score(data, by_name["DROP"])[0] == 0.07  # f1, not em
    assert benchmark_score(data, by_name["TriviaQA"]) == (None, "")  # missing: empty, not a crash
    # MMLU only as subtasks: the leaves under the nested groups, weighted by sample counts (10 x 0.3 + 30 x 0.3)
    data["results"]["mmlu_abstract_algebra"]["acc,none"] = 0.1
    assert benchmark_score(data, by_name["MMLU"])[0] == pytest.approx((10 * 0.1 + 30 * 0.3) / 40)
    # without group_subtasks, subtasks are found by prefix; groups and unweighted tasks handled
    bare = {"results": {"bbh_x": {"exact_match,flexible-extract": 0.2}, "bbh_y": {"exact_match,none": 0.4}}}
    assert benchmark_score(bare, Benchmark("BBH", ("bbh",), "exact_match", ("get-answer",), ("bbh_",)))[0] == (
        pytest.approx(0.3)
    )


# --------------------------------------------------------------------------------------------------------------------
# Tables


def test_table1_puts_paper_gap_beside_ours(index: dict[str, Any]) -> None:
    frame = tables.table1_ablation(index).frame
    assert list(frame["variant"]) == ["baseline", "hc-res", "hc-res-pre", "hc"]
    assert list(frame["paper_gap"]) == [row.loss_gap for row in paper.TABLE1]
    assert frame["ours_gap"].tolist() == pytest.approx([0.0, -0.015, -0.018, -0.02])
    assert frame["ours_seeds"].tolist() == [1, 1, 1, 1]
    assert frame["ours_ci95"].isna().all()  # one ablation seed: no CI
    assert list(frame["H_res"]) == ["", "✓", "✓", "✓"] and list(frame["H_post"]) == ["", "", "", "✓"]


def test_tables_written_with_headers(index: dict[str, Any], tmp_path: Path) -> None:
    built = tables.build_tables(index, MEASUREMENTS)
    for table in built:
        tables.write_table(table, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert [t.name for t in built] == list(artifacts.TABLE_NAMES)
    for stem in artifacts.PAPER_TABLES:
        assert {f"{stem}.csv", f"{stem}.md"} <= names
        text = (tmp_path / f"{stem}.md").read_text()
        assert "Tier `cpu`" in text and "paper" in text.lower()
        assert pd.read_csv(tmp_path / f"{stem}.csv").shape[0] > 0

    t2 = {t.name: t for t in built}["table2_memory_access"].frame
    merged = t2[t2["op"] == "H_post + H_res + Residual merge"].iloc[0]
    assert merged["paper_read"] == (64 + 4) + (4 * 64 + 16) + 2 * 4 * 64  # C+n, nC+n², 2nC
    assert merged["ours_read"] == 1000 and merged["ours_read_bytes"] == 4000
    base = t2[t2["arch"] == "baseline"].iloc[0]
    assert (base["paper_read"], base["paper_write"], base["ours_read"]) == (128, 64, 128)

    t3 = {t.name: t for t in built}["table3_recompute"].frame.iloc[0]
    assert (t3["derived_without"], t3["ours_without"], t3["derived_with"], t3["ours_with"]) == (2560, 3200, 2048, 2000)
    assert t3["paper_stored_with"] == t3["n"] * t3["C"] * math.ceil(t3["L"] / t3["L_r"]) + t3["L"] * t3["C"]
    assert t3["paper_resident"] == 4 * 64 * 4 and t3["paper_transient_peak"] == 6 * 64 * 2

    over = {t.name: t for t in built}["overhead"].frame.set_index("arch")
    assert over.loc["mhc", "ours_overhead_pct"] == pytest.approx(60.0)
    assert over.loc["mhc", "paper_overhead_pct"] == pytest.approx(6.7)
    assert pd.isna(over.loc["hc", "paper_overhead_pct"])

    t5 = {t.name: t for t in built}["table5_configs"].frame.set_index("attribute")
    assert t5.loc["Layers", "paper_27B"] == "30" and t5.loc["Layers", "ours_s2"] == 4
    assert {"ours_s1", "ours_s2", "ours_s3", "paper_3B", "paper_3B-1T"} <= set(t5.columns)


def test_table4_reference_rows_and_missing_task(index: dict[str, Any]) -> None:
    frame = tables.table4_benchmarks(index).frame
    paper_rows = frame[frame["source"] == "paper"].set_index("row")
    assert paper_rows.loc["27B w/ mHC", "BBH"] == 51.0 and paper_rows.loc["27B Baseline", "PIQA"] == 78.5
    ours = frame[frame["source"] == "ours"].set_index("row")
    assert ours.loc["s2 mhc", "BBH"] == pytest.approx(14.0)
    assert ours.loc["s2 baseline", "MMLU"] == pytest.approx(100 * (10 * 0.2 + 30 * 0.3) / 40)
    assert ours["TriviaQA"].isna().all()  # not evaluated: an empty cell
    assert len(frame) == 6


def test_tables_cli_without_measurements(index: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(index))
    assert (
        tables.main(["--index", str(path), "--measurements", str(tmp_path / "none.json"), "--out", str(tmp_path / "t")])
        == 0
    )
    t2 = pd.read_csv(tmp_path / "t" / "table2_memory_access.csv")
    assert t2["paper_read"].notna().all() and t2["ours_read"].isna().all()  # paper formulas only, ours empty


# --------------------------------------------------------------------------------------------------------------------
# Figures and report


def test_every_registered_artifact_has_a_builder_and_a_caption() -> None:
    from analysis import figures

    assert tuple(tables.BUILDERS) == artifacts.TABLE_NAMES
    assert tuple(figures.BUILDERS) == artifacts.FIGURE_NAMES == tuple(FIGURES)
    assert all(f.caption for f in artifacts.FIGURES)
    # Snakemake's report captions: one workflow/report/NAME.rst per figure, and none for a figure that is not drawn
    captions = Path(__file__).resolve().parents[1] / "workflow" / "report"
    figure_captions = {p.stem for p in captions.glob("fig*.rst")}
    assert figure_captions == set(artifacts.FIGURE_NAMES)


def _assert_written(out: Path) -> None:
    for name in FIGURES:
        for ext in ("png", "pdf"):
            path = out / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path


def test_figures_and_report(index: dict[str, Any], tmp_path: Path) -> None:
    statuses = build_figures(index, tmp_path / "figures", dpi=40)
    paper_figures = [name for name in FIGURES if name.startswith("fig") and name[3].isdigit()]
    assert {name: statuses[name] for name in paper_figures} == dict.fromkeys(paper_figures, "ok")
    assert statuses["fig_mechanism"].startswith(("ok (curves from", "partial"))
    assert statuses["fig_lr_sweep"].startswith("not run in this tier")  # this index has no LR sweep
    _assert_written(tmp_path / "figures")

    for table in tables.build_tables(index, MEASUREMENTS):
        tables.write_table(table, tmp_path / "tables")
    text, summary = report.build_report(index, tmp_path / "tables", tmp_path / "figures", tmp_path, MEASUREMENTS)
    claims = {c.claim.split(".")[0]: c for c in report.claims(index, MEASUREMENTS)}
    assert claims["1"].verdict == R  # gaps -0.03, -0.031, -0.032, and the mechanism operated
    assert claims["2"].verdict == I  # no LR sweep in this index
    assert claims["3"].verdict == R  # HC composite 1.5^8 = 25.6 >= 10 x mHC's 1.3, mHC <= 2, H_res moved
    assert claims["4"].verdict == BC
    assert claims["5"].verdict == I  # one ablation seed
    assert claims["6a"].verdict == I and claims["6b"].verdict == I  # no per-item scores
    assert claims["7"].verdict == R
    assert claims["8"].verdict == I  # one token-scaling seed
    assert claims["9"].verdict == I  # CPU reference path
    assert "![Fig. 2: training loss gap HC − mHC and gradient norms](figures/fig2_hc_instability.png)" in text
    assert "baber/piqa train is missing" in text and "## Deviations" in text
    assert "## Mechanism" in text and "| mhc | mhc | 3 of 3 |" in text
    assert "| s2/hc/seed0 |" in text and "completed" in text
    assert "abc123" in text and "2026-11-29T18:00:00Z" in text
    assert summary.strip() and summary.strip() in text  # the README block is the report's own summary


def test_mhc_claims_are_inconclusive_when_its_mechanism_did_not_operate(index: dict[str, Any]) -> None:
    frozen = json.loads(json.dumps(index))
    for run in frozen["runs"].values():
        if run["arch"] == "mhc" and run.get("diagnostics"):
            records = results.read_jsonl(run["diagnostics"])
            for record in records:
                record["stream_spread"] = [0.0] * len(record["stream_spread"])  # streams stay copies
            path = Path(run["diagnostics"]).with_name("frozen.jsonl")
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
            run["diagnostics"] = str(path)
    claims = {c.claim.split(".")[0]: c for c in report.claims(frozen, MEASUREMENTS)}
    assert claims["1"].verdict == I and "not shown to operate" in claims["1"].why
    assert claims["3"].verdict == BC
    assert claims["7"].verdict == I


def test_each_claim_is_built_alone_by_its_registered_function(index: dict[str, Any]) -> None:
    inputs = report.ClaimInputs(index, MEASUREMENTS)
    alone = [claim(inputs) for claim in report.CLAIMS]
    assert alone == report.claims(index, MEASUREMENTS)
    numbers = [c.claim.split(".")[0] for c in alone]
    assert numbers == ["1", "2", "3", "4", "5", "6a", "6b", "7", "8", "9", "10a", "10b"]
    assert report.claim_overhead(report.ClaimInputs(index, None)).ours == "not measured"


def test_figures_without_hc_say_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = make_index(tmp_path / "runs", variants=("baseline", "mhc"))
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(index))
    from analysis import figures

    assert figures.main(["--index", str(path), "--out", str(tmp_path / "figures"), "--dpi", "40"]) == 0
    _assert_written(tmp_path / "figures")
    lines = capsys.readouterr().err.splitlines()
    statuses = {Path(line.split(".png")[0]).name: line.split(": ", 1)[1] for line in lines if ".png/.pdf: " in line}
    assert statuses["fig2_hc_instability"].startswith("not run in this tier")
    assert statuses["fig3_hc_amax"].startswith("not run in this tier")
    assert statuses["fig8_mappings"].startswith("partial") and statuses["fig7_mhc_amax"] == "ok"
    claims = {c.claim.split(".")[0]: c for c in report.claims(index, None)}
    assert claims["2"].verdict == I and claims["3"].verdict == I and claims["6b"].verdict == I
    assert (
        report.main(["--index", str(path), "--tables", str(tmp_path / "t"), "--out", str(tmp_path / "report.md")]) == 0
    )
    text = (tmp_path / "report.md").read_text()
    assert "| 2. HC becomes unstable in training, mHC does not |" in text
    assert next(line for line in text.splitlines() if line.startswith("| 2. HC becomes")).endswith(
        f"| **{I}**: {claims['2'].why} |"
    )
    assert (tmp_path / "summary.md").is_file()
