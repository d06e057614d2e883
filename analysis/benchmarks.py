"""Multiple-choice benchmarks (PIQA, HellaSwag) scored item by item, paired by seed.

Tiny CPU-tier models answer these benchmarks at chance, so their accuracies say nothing about mHC. The summed
log-likelihood a model gives the gold answer's continuation still moves continuously with model quality, so two
variants trained with the same seed (same shared initial weights, same batches) are compared on it item by item:
Δ_i = gold_ll_a − gold_ll_b on the same item (matched on lm-eval's doc_id), averaged over items per seed. The seed
(one training run per variant) is the unit of replication: the verdict CI is taken over the per-seed means. An
item-level CI over the seed-averaged Δ_i is given as well; it is conditional on these trained models (it ignores
how much a retrained pair would differ) and is supplementary.

The per-item records are `eval.json`'s `mhc_items`, written by `python -m eval.run --per-item` (eval/run.py,
`choice_items`): task -> [{"doc_id", "gold", "ll": [per choice], "chars": [per choice]}].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .results import eval_runs, find_runs, load_json
from .stats import CI, mean_ci

ITEM_COLUMNS: tuple[str, ...] = ("doc_id", "gold_ll", "choice_logprob", "correct", "correct_norm")
"""Columns of `item_scores`."""

COMPARISONS: tuple[tuple[str, str], ...] = (("mhc", "baseline"), ("mhc", "hc"), ("hc", "baseline"))
"""(a, b) pairs the table compares as a − b, in the paper's order of interest."""


# --------------------------------------------------------------------------------------------------------------------
# One run's items


def _logsumexp(values: np.ndarray) -> float:
    """log Σ exp(values), shifted by the maximum: summed log-likelihoods of long continuations underflow exp."""
    top = float(values.max())
    return top + math.log(float(np.exp(values - top).sum()))


def _item_row(item: Mapping[str, Any]) -> dict[str, Any]:
    """The scores of one item record: what the paired comparison and the accuracies need."""
    ll = np.asarray(item["ll"], dtype=float)
    # lm-eval's acc_norm divides by the length in characters; a zero length (never seen in PIQA/HellaSwag) is
    # clamped to 1 so that the ranking stays defined
    chars = np.maximum(np.asarray(item["chars"], dtype=float), 1.0)
    gold = int(item["gold"])
    return {
        "doc_id": int(item["doc_id"]),
        "gold_ll": float(ll[gold]),
        "choice_logprob": float(ll[gold]) - _logsumexp(ll),
        "correct": int(np.argmax(ll) == gold),
        "correct_norm": int(np.argmax(ll / chars) == gold),
    }


def item_scores(eval_json: Mapping[str, Any] | None, task: str) -> pd.DataFrame:
    """One row per item of `task` in an eval.json: doc_id, gold_ll, choice_logprob, correct, correct_norm.

    gold_ll is the summed log-likelihood of the gold continuation; choice_logprob = gold_ll − logsumexp(ll) is the
    log-probability of the gold choice under the model's distribution renormalised over the choices (immune to how
    likely the continuations are overall); correct / correct_norm are lm-eval's acc / acc_norm for the item (argmax
    of ll, of ll / chars), as 0/1 and with np.argmax's first-index tie-break, as lm-eval does. Empty (with these
    columns) when the file has no items for the task: not run with --per-item, a generative task, or a diverged run.
    """
    items = ((eval_json or {}).get("mhc_items") or {}).get(task) or []
    frame = pd.DataFrame([_item_row(item) for item in items], columns=list(ITEM_COLUMNS))
    return frame.sort_values("doc_id", ignore_index=True)


def evaluated_files(index: dict[str, Any], variant: str) -> dict[int, dict[str, Any]]:
    """seed -> eval.json of `variant`'s evaluation runs (main scale, evaluation seeds) that were evaluated.

    A results file that says the run diverged (`mhc_skipped`) or cannot be read is not an evaluated seed."""
    scale, _, seeds = eval_runs(index)
    files = {}
    for run in find_runs(index, scale=scale, variant=variant, seeds=seeds):
        data = load_json(run.get("eval"))
        if isinstance(data, dict) and not data.get("mhc_skipped"):
            files[int(run["seed"])] = data
    return files


def _task_order(index: dict[str, Any], found: set[str]) -> list[str]:
    """The evaluation section's task order (when it lists tasks), then any other task found, alphabetically."""
    listed = (index.get("eval") or {}).get("tasks")
    listed = [t for t in listed if t in found] if isinstance(listed, list) else []
    return listed + sorted(found - set(listed))


def tasks_in(index: dict[str, Any], files: Iterable[Mapping[str, Any]]) -> list[str]:
    found = {task for data in files for task, items in (data.get("mhc_items") or {}).items() if items}
    return _task_order(index, found)


def tasks_with_items(index: dict[str, Any]) -> list[str]:
    """Tasks that have per-item records in any evaluated run (any evaluated variant and seed)."""
    _, variants, _ = eval_runs(index)
    return tasks_in(index, (data for v in variants for data in evaluated_files(index, v).values()))


# --------------------------------------------------------------------------------------------------------------------
# Two variants, paired by seed


@dataclass(frozen=True)
class PairedItems:
    """Variant a against variant b on one task, over the seeds where both were evaluated with items.

    Only the items common to every compared run are used (an inner join on doc_id over all runs), so each seed
    contributes the same items and the seed-level and item-level means coincide. Δ = a − b: positive when a gives
    the gold answer more probability. Accuracies are fractions in [0, 1] on those common items, averaged over seeds.
    """

    a: str
    b: str
    task: str
    seeds: list[int]
    n_items: int
    seed_deltas: dict[int, float]
    """Per seed: mean over items of gold_ll_a − gold_ll_b."""
    seed_ci: CI
    """Mean and 95% Student-t CI over the per-seed means (seeds are the unit): the verdict statistic."""
    item_ci: CI
    """Mean and 95% Student-t CI over items of Δ_i averaged over seeds (conditional on these models)."""
    choice_seed_deltas: dict[int, float]
    choice_seed_ci: CI
    choice_item_ci: CI
    acc_a: float | None
    acc_b: float | None
    acc_norm_a: float | None
    acc_norm_b: float | None
    items: pd.DataFrame = field(compare=False, repr=False)
    """Per common item: doc_id, gold_ll_delta and choice_logprob_delta averaged over seeds."""

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


def _joined(scores_a: pd.DataFrame, scores_b: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One seed's items of a and b side by side, matched on doc_id (never on position: runs may differ in items)."""
    merged = scores_a.merge(scores_b, on="doc_id", how="inner", suffixes=("_a", "_b"))
    merged["seed"] = seed
    merged["gold_ll_delta"] = merged["gold_ll_a"] - merged["gold_ll_b"]
    merged["choice_logprob_delta"] = merged["choice_logprob_a"] - merged["choice_logprob_b"]
    return merged


def _common_items(per_seed: list[pd.DataFrame]) -> pd.DataFrame:
    """The seeds' joined frames stacked, restricted to the doc_ids every seed has."""
    if not per_seed:
        return pd.DataFrame(columns=["seed", "doc_id", "gold_ll_delta", "choice_logprob_delta"])
    common = set.intersection(*(set(frame["doc_id"]) for frame in per_seed))
    stacked = pd.concat(per_seed, ignore_index=True)
    return stacked[stacked["doc_id"].isin(common)].sort_values(["seed", "doc_id"], ignore_index=True)


def _seed_means(stacked: pd.DataFrame, column: str) -> dict[int, float]:
    """seed -> mean of `column` over that seed's items (empty when no seed was compared)."""
    if stacked.empty:
        return {}
    return {int(seed): float(value) for seed, value in stacked.groupby("seed")[column].mean().items()}


def _mean_over_seeds(stacked: pd.DataFrame, column: str) -> float | None:
    """A 0/1 column's mean per seed, then over seeds (each seed weighs the same, as in the seed-level CI)."""
    means = list(_seed_means(stacked, column).values())
    return sum(means) / len(means) if means else None


def pair_files(
    files_a: Mapping[int, Mapping[str, Any]], files_b: Mapping[int, Mapping[str, Any]], a: str, b: str, task: str
) -> PairedItems:
    """`paired_items` on already loaded eval.json files (seed -> file), so that a table loads each file once."""
    per_seed = []
    for seed in sorted(set(files_a) & set(files_b)):
        joined = _joined(item_scores(files_a[seed], task), item_scores(files_b[seed], task), seed)
        if not joined.empty:  # a seed without items for this task (or none in common) is not compared
            per_seed.append(joined)
    stacked = _common_items(per_seed)
    seeds = sorted({int(s) for s in stacked["seed"]})
    items = (
        stacked.groupby("doc_id", as_index=False)[["gold_ll_delta", "choice_logprob_delta"]].mean()
        if seeds
        else pd.DataFrame(columns=["doc_id", "gold_ll_delta", "choice_logprob_delta"])
    )
    gold, choice = _seed_means(stacked, "gold_ll_delta"), _seed_means(stacked, "choice_logprob_delta")
    return PairedItems(
        a=a,
        b=b,
        task=task,
        seeds=seeds,
        n_items=len(items),
        seed_deltas=gold,
        seed_ci=mean_ci(list(gold.values())),
        item_ci=mean_ci(items["gold_ll_delta"].tolist()),
        choice_seed_deltas=choice,
        choice_seed_ci=mean_ci(list(choice.values())),
        choice_item_ci=mean_ci(items["choice_logprob_delta"].tolist()),
        acc_a=_mean_over_seeds(stacked, "correct_a"),
        acc_b=_mean_over_seeds(stacked, "correct_b"),
        acc_norm_a=_mean_over_seeds(stacked, "correct_norm_a"),
        acc_norm_b=_mean_over_seeds(stacked, "correct_norm_b"),
        items=items,
    )


def paired_items(index: dict[str, Any], a: str, b: str, task: str) -> PairedItems:
    """Variant a against variant b on `task`, item by item, over the evaluation seeds where both runs have items."""
    return pair_files(evaluated_files(index, a), evaluated_files(index, b), a, b, task)
