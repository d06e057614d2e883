"""analysis/benchmarks.py on synthetic eval.json files with known per-item log-likelihoods.

Three seeds × (baseline, hc, mhc) at the main scale, each with PIQA (2 choices) and HellaSwag (4 choices) items in
the `mhc_items` format of `python -m eval.run --per-item`. The gold log-likelihood of a variant is a per-document
base plus a per-seed shift (and, for mHC, a per-item shift), so every paired Δ and CI is known by hand. mHC's
seed 1 lacks doc 2 and has an extra doc 99 (the doc_id join), and HC's seed 2 diverged (a skipped results file).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from analysis import benchmarks, tables
from analysis.benchmarks import evaluated_files, item_scores, paired_items, tasks_with_items
from analysis.tables import benchmark_table

SCALE = "cpu-dense-d8"
SEEDS = (0, 1, 2)
T2, T1 = 4.302652729911275, 12.706204736174705  # two-sided 95% Student-t quantiles, 2 and 1 dof

# PIQA: doc -> base gold log-likelihood, the wrong choice's log-likelihood (same in every run), gold index
BASE = {0: -5.0, 1: -6.0, 2: -7.0, 3: -8.0, 99: -4.0}
OTHER = {0: -5.25, 1: -5.6, 2: -7.5, 3: -8.1, 99: -4.5}
GOLD = {0: 0, 1: 1, 2: 0, 3: 1, 99: 0}
SEED_SHIFT = {"baseline": {0: 0.0, 1: 0.0, 2: 0.0}, "hc": {0: 0.2, 1: 0.2, 2: 0.2}, "mhc": {0: 0.5, 1: 0.3, 2: 0.1}}
ITEM_SHIFT = {"mhc": {0: -0.3, 2: 5.0, 3: 0.3}}  # doc 2's +5 would show if a seed's non-common item were counted
COMMON = [0, 1, 3]  # docs every mhc and baseline run has


def doc_ids(variant: str, seed: int) -> list[int]:
    return [0, 1, 3, 99] if (variant, seed) == ("mhc", 1) else [0, 1, 2, 3]


def gold_ll(variant: str, seed: int, doc: int) -> float:
    return BASE[doc] + SEED_SHIFT[variant][seed] + ITEM_SHIFT.get(variant, {}).get(doc, 0.0)


def piqa_item(variant: str, seed: int, doc: int) -> dict[str, Any]:
    ll = [OTHER[doc], OTHER[doc]]
    ll[GOLD[doc]] = gold_ll(variant, seed, doc)
    return {"doc_id": doc, "gold": GOLD[doc], "ll": ll, "chars": [10, 10]}


def hellaswag_items(variant: str, seed: int) -> list[dict[str, Any]]:
    """Doc 0 is wrong by acc (−10 beats the gold's ≈ −12) but right by acc_norm (−12/10 beats −10/5)."""
    shift = SEED_SHIFT[variant][seed]
    return [
        {"doc_id": 0, "gold": 1, "ll": [-10.0, -12.0 + shift, -20.0, -30.0], "chars": [5, 10, 10, 10]},
        {"doc_id": 1, "gold": 0, "ll": [-3.0 + shift, -4.0, -9.0, -9.0], "chars": [10, 10, 10, 10]},
    ]


def eval_file(variant: str, seed: int) -> dict[str, Any]:
    piqa = [piqa_item(variant, seed, d) for d in doc_ids(variant, seed)]
    return {
        "results": {"piqa": {"acc,none": 0.5}, "hellaswag": {"acc_norm,none": 0.25}},
        # hellaswag first: the table follows the evaluation section's task order, not the file's
        "mhc_items": {"hellaswag": hellaswag_items(variant, seed), "piqa": piqa, "gsm8k": []},
    }


def write(path: Path, data: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def make_index(tmp_path: Path, variants: tuple[str, ...] = ("baseline", "hc", "mhc")) -> dict[str, Any]:
    """Seeds 0-2 evaluated (HC seed 2 diverged), seed 3 listed but missing, plus an off-scale run never to be read."""
    runs: dict[str, dict[str, Any]] = {}
    for variant in variants:
        for seed in (*SEEDS, 3):
            key = f"{SCALE}/{variant}/seed{seed}"
            run = {"scale": SCALE, "variant": variant, "arch": variant, "seed": seed}
            if seed == 3:
                runs[key] = {**run, "status": "missing", "eval": None}
            elif (variant, seed) == ("hc", 2):
                skipped = {"results": {}, "mhc_skipped": "training run diverged: loss is nan"}
                runs[key] = {**run, "status": "diverged", "eval": write(tmp_path / key / "eval.json", skipped)}
            else:
                runs[key] = {
                    **run,
                    "status": "completed",
                    "eval": write(tmp_path / key / "eval.json", eval_file(variant, seed)),
                }
    off_scale = eval_file("mhc", 0)
    off_scale["mhc_items"]["piqa"] = [{"doc_id": d, "gold": 0, "ll": [100.0, 0.0], "chars": [1, 1]} for d in BASE]
    off_run = {"scale": "cpu-dense-d4", "variant": "mhc", "arch": "mhc", "seed": 0, "status": "completed"}
    runs["cpu-dense-d4/mhc/seed0"] = {**off_run, "eval": write(tmp_path / "d4.json", off_scale)}
    return {
        "tier": "cpu",
        "main": {"scale": SCALE, "variants": list(variants), "seeds": [0, 1, 2, 3]},
        "eval": {"variants": list(variants), "seeds": [0, 1, 2, 3], "limit": 4, "tasks": ["piqa", "hellaswag"],
                 "per_item": True},
        "runs": runs,
    }  # fmt: skip


@pytest.fixture
def index(tmp_path: Path) -> dict[str, Any]:
    return make_index(tmp_path)


def choice_logprob(variant: str, seed: int, doc: int) -> float:
    """log P(gold) over PIQA's two choices, by hand: g − log(e^g + e^other)."""
    g = gold_ll(variant, seed, doc)
    return g - math.log(math.exp(g) + math.exp(OTHER[doc]))


# --------------------------------------------------------------------------------------------------------------------
# One run's items


def test_item_scores_are_hand_computed_and_sorted_by_doc_id():
    data = {
        "mhc_items": {
            "piqa": [
                {"doc_id": 7, "gold": 0, "ll": [-2.0, -3.0], "chars": [4, 4]},
                # acc and acc_norm disagree: −10 beats −12, but −12/10 = −1.2 beats −10/5 = −2
                {"doc_id": 3, "gold": 1, "ll": [-10.0, -12.0], "chars": [5, 10]},
                # summed log-likelihoods this negative underflow a naive exp
                {"doc_id": 5, "gold": 0, "ll": [-1000.0, -1001.0, -1002.0, -1003.0], "chars": [1, 1, 1, 1]},
            ]
        }
    }
    frame = item_scores(data, "piqa")
    assert list(frame.columns) == ["doc_id", "gold_ll", "choice_logprob", "correct", "correct_norm"]
    assert frame["doc_id"].tolist() == [3, 5, 7]
    assert frame["gold_ll"].tolist() == [-12.0, -1000.0, -2.0]
    expected = [-2.0 - math.log(1 + math.exp(-2)), -math.log(1 + math.exp(-1) + math.exp(-2) + math.exp(-3)),
                -math.log(1 + math.exp(-1))]  # fmt: skip
    assert frame["choice_logprob"].tolist() == pytest.approx(expected, rel=1e-12)
    assert frame["correct"].tolist() == [0, 1, 1]
    assert frame["correct_norm"].tolist() == [1, 1, 1]


@pytest.mark.parametrize(
    "data",
    [None, {"results": {"piqa": {}}}, {"results": {}, "mhc_skipped": "diverged"}, {"mhc_items": {"piqa": []}}],
)
def test_item_scores_empty_without_items(data):
    frame = item_scores(data, "piqa")
    assert frame.empty and list(frame.columns) == list(benchmarks.ITEM_COLUMNS)


# --------------------------------------------------------------------------------------------------------------------
# Pairing


def test_paired_gold_ll_delta_per_seed_and_its_cis(index):
    pair = paired_items(index, "mhc", "baseline", "piqa")
    assert (pair.a, pair.b, pair.task) == ("mhc", "baseline", "piqa")
    assert pair.seeds == [0, 1, 2] and pair.n_seeds == 3
    assert pair.n_items == 3 and pair.items["doc_id"].tolist() == COMMON
    # per seed: the seed shift (the item shifts −0.3, 0, +0.3 of the common docs cancel)
    assert pair.seed_deltas == pytest.approx({0: 0.5, 1: 0.3, 2: 0.1})
    assert pair.seed_ci.mean == pytest.approx(0.3)
    assert pair.seed_ci.half_width == pytest.approx(T2 * 0.2 / math.sqrt(3))
    assert pair.seed_ci.n == 3
    # per item, averaged over seeds: 0.3 + (−0.3, 0, 0.3); n = items
    assert pair.items["gold_ll_delta"].tolist() == pytest.approx([0.0, 0.3, 0.6])
    assert pair.item_ci.mean == pytest.approx(0.3)
    assert pair.item_ci.half_width == pytest.approx(T2 * 0.3 / math.sqrt(3))
    assert pair.item_ci.n == 3


def test_pairing_joins_on_doc_id_not_position(index):
    pair = paired_items(index, "mhc", "baseline", "piqa")
    files = {v: evaluated_files(index, v)[1] for v in ("mhc", "baseline")}
    a, b = item_scores(files["mhc"], "piqa"), item_scores(files["baseline"], "piqa")
    assert a["doc_id"].tolist() == [0, 1, 3, 99] and b["doc_id"].tolist() == [0, 1, 2, 3]
    by_position = float((a["gold_ll"] - b["gold_ll"]).mean())
    # pairing by position would pair mhc's doc 3 with baseline's doc 2 and doc 99 with doc 3
    assert by_position != pytest.approx(0.3, abs=0.05)
    assert pair.seed_deltas[1] == pytest.approx(0.3)
    # seed 0 has doc 2 on both sides, but seed 1 lacks it: counting it in seed 0 would give (−0.3+0+5+0.3)/4 + 0.5
    assert pair.seed_deltas[0] == pytest.approx(0.5)


def test_paired_choice_logprob_delta(index):
    pair = paired_items(index, "mhc", "baseline", "piqa")
    expected = {
        s: sum(choice_logprob("mhc", s, d) - choice_logprob("baseline", s, d) for d in COMMON) / len(COMMON)
        for s in SEEDS
    }
    assert pair.choice_seed_deltas == pytest.approx(expected)
    values = list(expected.values())
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert pair.choice_seed_ci.mean == pytest.approx(mean)
    assert pair.choice_seed_ci.half_width == pytest.approx(T2 * sd / math.sqrt(3))
    per_item = [sum(choice_logprob("mhc", s, d) - choice_logprob("baseline", s, d) for s in SEEDS) / 3 for d in COMMON]
    assert pair.items["choice_logprob_delta"].tolist() == pytest.approx(per_item)
    assert pair.choice_item_ci.mean == pytest.approx(sum(per_item) / 3)
    assert 0 < pair.choice_seed_ci.mean < pair.seed_ci.mean  # the wrong choice's probability absorbs part of Δ


def test_paired_accuracies(index):
    piqa = paired_items(index, "mhc", "baseline", "piqa")
    # baseline: docs 0 and 3 right, doc 1 wrong (−6.0 < −5.6) in every seed; mhc gets doc 1 right in seed 0 only
    assert piqa.acc_b == pytest.approx(2 / 3)
    assert piqa.acc_a == pytest.approx((3 / 3 + 2 / 3 + 2 / 3) / 3)
    assert piqa.acc_norm_a == pytest.approx(piqa.acc_a)  # equal lengths: acc_norm = acc
    hellaswag = paired_items(index, "mhc", "baseline", "hellaswag")
    assert (hellaswag.acc_b, hellaswag.acc_norm_b) == (0.5, 1.0)
    assert hellaswag.seed_deltas == pytest.approx({0: 0.5, 1: 0.3, 2: 0.1})
    assert hellaswag.item_ci.half_width == pytest.approx(0.0)  # every item's seed-averaged Δ is 0.3


def test_diverged_and_missing_runs_are_left_out(index):
    assert sorted(evaluated_files(index, "hc")) == [0, 1]
    assert sorted(evaluated_files(index, "mhc")) == [0, 1, 2]  # seed 3 missing; the cpu-dense-d4 run is not read
    pair = paired_items(index, "mhc", "hc", "piqa")
    assert pair.seeds == [0, 1]
    assert pair.seed_deltas == pytest.approx({0: 0.3, 1: 0.1})
    assert pair.seed_ci.mean == pytest.approx(0.2)
    assert pair.seed_ci.half_width == pytest.approx(T1 * math.sqrt(0.02) / math.sqrt(2))
    assert pair.n_items == 3


def test_no_common_seed_gives_an_empty_comparison(index):
    pair = paired_items(index, "mhc", "baseline", "arc_easy")
    assert pair.seeds == [] and pair.n_items == 0 and pair.seed_ci.n == 0 and pair.acc_a is None


def test_tasks_with_items_follow_the_evaluation_order(index):
    assert tasks_with_items(index) == ["piqa", "hellaswag"]  # gsm8k has no items


# --------------------------------------------------------------------------------------------------------------------
# The table


def test_benchmark_table_rows_and_columns(index):
    table = benchmark_table(index)
    assert table.name == "benchmarks_items"
    frame = table.frame
    assert list(frame.columns) == list(tables.ITEM_TABLE_COLUMNS)
    assert list(zip(frame["task"], frame["comparison"], strict=True)) == [
        (task, comparison)
        for task in ("piqa", "hellaswag")
        for comparison in ("mhc - baseline", "mhc - hc", "hc - baseline")
    ]
    row = frame.set_index(["task", "comparison"])
    main = row.loc[("piqa", "mhc - baseline")]
    assert (main["items"], main["seeds"]) == (3, 3)
    assert main["gold_ll_delta"] == pytest.approx(0.3)
    assert main["gold_ll_ci95"] == pytest.approx(T2 * 0.2 / math.sqrt(3))
    assert main["gold_ll_ci95_items"] == pytest.approx(T2 * 0.3 / math.sqrt(3))
    assert main["choice_logprob_delta"] == pytest.approx(
        paired_items(index, "mhc", "baseline", "piqa").choice_seed_ci.mean
    )
    assert (main["acc_metric"], main["acc_b"]) == ("acc", pytest.approx(100 * 2 / 3))
    assert row.loc[("piqa", "mhc - hc"), "seeds"] == 2
    assert row.loc[("hellaswag", "hc - baseline"), "gold_ll_delta"] == pytest.approx(0.2)
    # HellaSwag is reported with acc_norm (Table 4's metric), under which doc 0 is right
    hs = row.loc[("hellaswag", "mhc - baseline")]
    assert (hs["acc_metric"], hs["acc_a"], hs["acc_b"]) == ("acc_norm", 100.0, 100.0)
    assert hs["gold_ll_ci95_items"] == pytest.approx(0.0)
    paper = {key: row.loc[key, "paper_delta_points"] for key in row.index}
    assert paper == pytest.approx({("piqa", "mhc - baseline"): 2.0, ("piqa", "mhc - hc"): 0.6,
                                   ("piqa", "hc - baseline"): 1.4, ("hellaswag", "mhc - baseline"): 1.0,
                                   ("hellaswag", "mhc - hc"): 0.4, ("hellaswag", "hc - baseline"): 0.6})  # fmt: skip
    for text in (SCALE, "`cpu`", "[0, 1, 2, 3]", "at most 4 examples", "Positive Δ"):
        assert text in table.header
    notes = " ".join(table.notes)
    assert "unit of replication" in notes and "chance" in notes and "supplementary" in notes


def test_benchmark_table_only_compares_evaluated_variants(tmp_path):
    frame = benchmark_table(make_index(tmp_path, variants=("baseline", "mhc"))).frame
    assert frame["comparison"].tolist() == ["mhc - baseline", "mhc - baseline"]
    assert frame["paper_delta_points"].tolist() == pytest.approx([2.0, 1.0])


def test_benchmark_table_without_items_is_empty_with_a_note(tmp_path):
    index = make_index(tmp_path)
    for run in index["runs"].values():
        if run.get("eval"):
            write(Path(run["eval"]), {"results": {"piqa": {"acc,none": 0.5}}})
    table = benchmark_table(index)
    assert table.frame.empty and list(table.frame.columns) == list(tables.ITEM_TABLE_COLUMNS)
    assert any("--per-item" in note for note in table.notes)
    assert tasks_with_items(index) == []
