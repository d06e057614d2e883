"""Access to a tier's run results: the run index (analysis/index.py writes it), the files each run leaves
(metrics.jsonl, diagnostics.jsonl, eval.json, checkpoint_losses.json, mappings.json) and the rows derived from them
(paired per-seed loss gaps, scaling points, benchmark scores read from lm-eval's results JSON).

The tables, the figures and the report read runs only through this module (and analysis/stats.py for the
statistics), so that "the final gap of mHC" has one definition. Nothing here builds a table, a figure or text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .stats import is_number, mean_ci

# --------------------------------------------------------------------------------------------------------------------
# Reading the index and run outputs


def load_json(path: str | Path | None) -> Any | None:
    """A JSON file's content, or None when the path is None, missing or unreadable (inputs may not exist yet)."""
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def load_index(path: str | Path) -> dict[str, Any]:
    """The run index written by analysis.index; a missing index is an error (nothing can be built without it)."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise FileNotFoundError(f"run index {path} is missing or not a JSON object")
    return data


def parse_args_and_index(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, dict[str, Any] | None]:
    """For a command that reads the run index: adds `--index` to its parser, parses `argv` and reads the index
    (None after printing why it cannot be read; the command then exits with status 2)."""
    parser.add_argument("--index", required=True, help="results/analysis/runs.json")
    args = parser.parse_args(argv)
    try:
        return args, load_index(args.index)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return args, None


def read_jsonl(path: str | Path | None) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file; blank or truncated lines (a run killed mid-write) are skipped."""
    if not path or not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def train_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training-step rows of metrics.jsonl (the ones that carry a training loss)."""
    return [r for r in records if "loss" in r and "step" in r]


def val_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl with a validation loss (step 0 and every eval interval)."""
    return [r for r in records if "val_loss" in r and "step" in r]


def amax_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Amax summary rows of metrics.jsonl (HC/mHC only)."""
    return [r for r in records if "amax_composite_fwd" in r]


def all_runs(index: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run of the index, with its key under "key"."""
    return [{"key": key, **run} for key, run in (index.get("runs") or {}).items()]


def find_runs(
    index: dict[str, Any],
    *,
    scale: str | None = None,
    variant: str | None = None,
    seeds: Iterable[int] | None = None,
) -> list[dict[str, Any]]:
    """Runs matching (scale, variant, seed set), sorted by seed; looked up by fields, not by key spelling."""
    wanted = None if seeds is None else {int(s) for s in seeds}
    runs = [
        r
        for r in all_runs(index)
        if (scale is None or r.get("scale") == scale)
        and (variant is None or r.get("variant") == variant)
        and (wanted is None or int(r.get("seed", -1)) in wanted)
    ]
    return sorted(runs, key=lambda r: int(r.get("seed", 0)))


def find_run(index: dict[str, Any], scale: str | None, variant: str, seed: int | None = None) -> dict[str, Any] | None:
    """One run: the given seed, or (seed None) the lowest seed that has any output; None when there is none."""
    runs = find_runs(index, scale=scale, variant=variant, seeds=None if seed is None else [seed])
    if seed is None:
        runs = [r for r in runs if r.get("status") != "missing"] or runs
    return runs[0] if runs else None


def final_val_loss(run: dict[str, Any] | None) -> float | None:
    """A run's final validation loss when it completed (diverged or failed runs have no comparable final loss)."""
    if not run or run.get("status") != "completed":
        return None
    value = run.get("final_val_loss")
    return float(value) if is_number(value) else None


def section_seeds(section: dict[str, Any]) -> list[int]:
    """Seeds of an index section, which spells them "seeds" (a list) or "seed" (one)."""
    if section.get("seeds") is not None:
        return [int(s) for s in section["seeds"]]
    if section.get("seed") is not None:
        return [int(section["seed"])]
    return []


def paired_gaps(
    index: dict[str, Any], scale: str | None, variant: str, reference: str, seeds: Iterable[int]
) -> dict[int, float]:
    """Final val loss of `variant` minus that of `reference`, per seed where both completed.

    Paired by seed (same data order and initialisation stream), which removes the seed-to-seed variation the two
    runs share; the CI of the mean gap is then taken over these per-seed differences."""
    gaps: dict[int, float] = {}
    for seed in seeds:
        a = final_val_loss(find_run(index, scale, variant, int(seed)))
        b = final_val_loss(find_run(index, scale, reference, int(seed)))
        if a is not None and b is not None:
            gaps[int(seed)] = a - b
    return gaps


def last_diagnostics(run: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last record of a run's diagnostics.jsonl (the end-of-training Amax curves), or None."""
    if not run:
        return None
    records = [r for r in read_jsonl(run.get("diagnostics")) if "composite_forward" in r]
    return records[-1] if records else None


def checkpoint_points(run: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Token-scaling points of a run: checkpoint_losses.json, else the val_loss rows of metrics.jsonl.

    The fallback keeps Fig. 6b drawable before the checkpoint evaluation has run; the report says which was used
    through `points_source`."""
    if not run:
        return []
    data = load_json(run.get("checkpoint_losses"))
    if isinstance(data, dict) and data.get("points"):
        return [p for p in data["points"] if is_number(p.get("val_loss"))]
    return [
        {"step": r["step"], "tokens": r.get("tokens"), "val_loss": r["val_loss"]}
        for r in val_rows(read_jsonl(run.get("metrics")))
        if is_number(r.get("val_loss")) and r.get("step", 0) > 0
    ]


def points_source(run: dict[str, Any] | None) -> str:
    data = load_json((run or {}).get("checkpoint_losses"))
    return "checkpoint_losses.json" if isinstance(data, dict) and data.get("points") else "metrics.jsonl val_loss"


def amax_run(index: dict[str, Any], variant: str) -> dict[str, Any] | None:
    """The main-scale run whose last diagnostics record Fig. 3/7 show: seed 0, else the lowest seed with one."""
    main = index.get("main") or {}
    scale = main.get("scale")
    run = find_run(index, scale, variant, 0)
    if last_diagnostics(run) is not None:
        return run
    for candidate in find_runs(index, scale=scale, variant=variant):
        if last_diagnostics(candidate) is not None:
            return candidate
    return None


def compute_scaling_points(index: dict[str, Any]) -> list[dict[str, Any]]:
    """Per compute-scaling scale: FLOPs, the paired mHC − baseline final val-loss gap (CI) and the loss ratio."""
    section = index.get("compute_scaling") or {}
    scales = index.get("scales") or {}
    points = []
    for scale in section.get("scales") or []:
        # every seed run at this scale counts (the main scale has the main comparison's seeds)
        seeds = sorted({int(r["seed"]) for r in (index.get("runs") or {}).values() if r.get("scale") == scale})
        spec = scales.get(scale) or {}
        flops = spec.get("flops")
        if not is_number(flops) and is_number(spec.get("params_active")) and is_number(spec.get("tokens")):
            flops = 6.0 * spec["params_active"] * spec["tokens"]
        gaps = paired_gaps(index, scale, "mhc", "baseline", seeds)
        ratios = [
            final_val_loss(find_run(index, scale, "mhc", s)) / final_val_loss(find_run(index, scale, "baseline", s))
            for s in gaps
        ]
        if gaps and is_number(flops):
            points.append(
                {"scale": scale, "flops": float(flops), "gap": mean_ci(list(gaps.values())), "ratio": mean_ci(ratios)}
            )
    return points


def token_scaling_points(index: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """tokens, gap (mHC − baseline) and ratio at the token-scaling checkpoints both runs evaluated."""
    section = index.get("token_scaling") or {}
    scale, seeds = section.get("scale"), section_seeds(section)
    frames, sources = [], set()
    for seed in seeds:
        runs = {v: find_run(index, scale, v, seed) for v in ("baseline", "mhc")}
        pts = {v: pd.DataFrame(checkpoint_points(r), columns=["step", "tokens", "val_loss"]) for v, r in runs.items()}
        if any(p.empty for p in pts.values()):
            continue
        sources |= {points_source(r) for r in runs.values()}
        merged = pts["mhc"].merge(pts["baseline"], on="step", suffixes=("_mhc", "_base"))
        frames.append(
            pd.DataFrame(
                {
                    "seed": seed,
                    "step": merged["step"],
                    "tokens": merged["tokens_mhc"],
                    "gap": merged["val_loss_mhc"] - merged["val_loss_base"],
                    "ratio": merged["val_loss_mhc"] / merged["val_loss_base"],
                }
            )
        )
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["seed", "step", "tokens", "gap", "ratio"])
    )
    return frame, ", ".join(sorted(sources))


def main_scale(index: dict[str, Any]) -> str | None:
    """The scale of the main comparison."""
    return (index.get("main") or {}).get("scale")


def scales_run(index: dict[str, Any]) -> list[str]:
    """Scales with at least one run that left output (status other than missing), in the index's scale order."""
    used = {r.get("scale") for r in all_runs(index) if r.get("status") not in (None, "missing")}
    return [s for s in (index.get("scales") or {}) if s in used]


# --------------------------------------------------------------------------------------------------------------------
# lm-eval results of the Table 4 benchmarks


@dataclass(frozen=True)
class Benchmark:
    """Where one Table 4 benchmark's score lives in lm-eval's results JSON.

    `tasks`: group or task names tried in order (the suite's name first); `metric`: the metric name before the
    comma of lm-eval's "metric,filter" keys; `filters`: preferred filters in order (any other filter of that metric
    is the last resort); `prefixes`: names of the subtasks to average when no group-level score was written."""

    name: str
    tasks: tuple[str, ...]
    metric: str
    filters: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "BBH",
        ("bbh_cot_fewshot", "bbh"),
        "exact_match",
        ("get-answer", "flexible-extract", "strict-match", "none"),
        ("bbh_cot_fewshot_", "bbh_"),
    ),
    Benchmark("DROP", ("drop",), "f1", ("none",)),
    Benchmark("GSM8K", ("gsm8k_cot", "gsm8k"), "exact_match", ("strict-match", "flexible-extract")),
    Benchmark("HellaSwag", ("hellaswag",), "acc_norm", ("none",)),
    Benchmark("MATH", ("minerva_math",), "exact_match", ("none",), ("minerva_math_",), ("minerva_math500",)),
    Benchmark("MMLU", ("mmlu",), "acc", ("none",), ("mmlu_",)),
    Benchmark("PIQA", ("piqa",), "acc", ("none",)),
    Benchmark("TriviaQA", ("triviaqa",), "exact_match", ("remove_whitespace", "none")),
)
"""Table 4's benchmarks in the paper's order, as eval/tasks/mhc_paper_suite.yaml runs them (lm-eval 0.4.13)."""

HELLASWAG_ACC = Benchmark("HellaSwag acc", ("hellaswag",), "acc", ("none",))


def benchmark_of_task(task: str) -> str | None:
    """The Table 4 benchmark an lm-eval task belongs to (piqa -> PIQA, mmlu_anatomy -> MMLU), else None."""
    for bench in BENCHMARKS:
        if task in bench.tasks or (any(task.startswith(p) for p in bench.prefixes) and task not in bench.exclude):
            return bench.name
    return None


def variant_arch(index: dict[str, Any], variant: str) -> str | None:
    """A variant's arch: from the index's `variants` table, else from any of its runs (old indexes lack the table)."""
    spec = (index.get("variants") or {}).get(variant) or {}
    if spec.get("arch"):
        return str(spec["arch"])
    run = next((r for r in find_runs(index, variant=variant) if r.get("arch")), None)
    return str(run["arch"]) if run else None


def pick_metric_key(scores: dict[str, Any], metric: str, filters: Sequence[str]) -> str | None:
    """The "metric,filter" key to report: the first preferred filter present, else any other filter of `metric`."""
    keys = [k for k, v in scores.items() if k.split(",")[0] == metric and is_number(v)]
    for f in filters:
        if f"{metric},{f}" in keys:
            return f"{metric},{f}"
    return sorted(keys)[0] if keys else None


def _leaf_tasks(data: dict[str, Any], group: str) -> list[str]:
    """The leaf tasks under a group, from lm-eval's "group_subtasks" (recursively: MMLU nests its categories)."""
    tree = data.get("group_subtasks") or {}
    if group not in tree:
        return []
    leaves: list[str] = []
    for child in tree[group]:
        leaves += _leaf_tasks(data, child) if child in tree else [child]
    return leaves


def benchmark_score(data: dict[str, Any], bench: Benchmark) -> tuple[float | None, str]:
    """(score in [0, 1], "task/metric,filter" it came from) of one benchmark in an lm-eval results JSON.

    Group-level scores are used when present (lm-eval writes them for groups with an aggregate_metric_list, weighted
    by size). Otherwise the subtasks are averaged, weighted by their effective sample counts when known."""
    results = data.get("results") or {}
    for task in bench.tasks:
        scores = results.get(task)
        if isinstance(scores, dict):
            key = pick_metric_key(scores, bench.metric, bench.filters)
            if key:
                return float(scores[key]), f"{task}/{key}"
    groups = set((data.get("group_subtasks") or {}).keys())
    leaves: list[str] = []
    for task in bench.tasks:
        leaves = _leaf_tasks(data, task)
        if leaves:
            break
    if not leaves and bench.prefixes:
        counted = set((data.get("n-samples") or {}).keys())
        leaves = sorted(
            t
            for t in results
            if t.startswith(bench.prefixes)
            and not t.startswith(bench.exclude)
            and t not in groups
            and (not counted or t in counted)
        )
    total = weight = 0.0
    used_key = None
    for task in leaves:
        scores = results.get(task)
        if not isinstance(scores, dict):
            continue
        key = pick_metric_key(scores, bench.metric, bench.filters)
        if not key:
            continue
        n = ((data.get("n-samples") or {}).get(task) or {}).get("effective") or 1
        total += float(scores[key]) * n
        weight += n
        used_key = key
    if weight:
        return total / weight, f"mean of {len(leaves)} subtasks/{used_key}"
    return None, ""


def eval_substitutions(data: dict[str, Any] | None) -> list[str]:
    """The local-data substitutions an evaluation used, as text (dict, list of strings or list of dicts)."""
    subs = (data or {}).get("mhc_substitutions")
    if not subs:
        return []
    if isinstance(subs, dict):
        return [f"{k}: {v}" for k, v in subs.items()]
    out = []
    for item in subs if isinstance(subs, list) else [subs]:
        if isinstance(item, dict):
            out.append("; ".join(f"{k}: {v}" for k, v in item.items()))
        else:
            out.append(str(item))
    return out


def eval_runs(index: dict[str, Any]) -> tuple[str | None, list[str], list[int]]:
    """(scale, variants, seeds) of the evaluation: the eval section names no scale, so the main scale is used."""
    section = index.get("eval") or {}
    scale = section.get("scale") or main_scale(index)
    return scale, list(section.get("variants") or []), section_seeds(section)


def benchmark_means(index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """variant -> {"scores": {benchmark: mean ×100 or None}, "seeds": n, "keys": {benchmark: source}}."""
    scale, variants, seeds = eval_runs(index)
    out: dict[str, dict[str, Any]] = {}
    for variant in variants:
        files = [load_json(r.get("eval")) for r in find_runs(index, scale=scale, variant=variant, seeds=seeds)]
        # a results file that says the run diverged (no scores) is not a seed that was evaluated
        files = [f for f in files if isinstance(f, dict) and not f.get("mhc_skipped")]
        scores, keys = {}, {}
        for b in (*BENCHMARKS, HELLASWAG_ACC):
            found = [benchmark_score(f, b) for f in files]
            values = [v for v, _ in found if v is not None]
            scores[b.name] = 100.0 * sum(values) / len(values) if values else None
            keys[b.name] = sorted({k for v, k in found if v is not None})
        out[variant] = {"scores": scores, "seeds": len(files), "keys": keys}
    return out
