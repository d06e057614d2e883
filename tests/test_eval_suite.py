"""The paper suite (eval/suite.py, eval/tasks/mhc_paper_suite.yaml) in local-data mode, offline, with lm-eval's
dummy model: shot counts, metric keys, recorded substitutions, the substitutes' data, and clear data errors."""

from __future__ import annotations

import gzip
import json
import os

import pytest
import yaml

from corpus import DataError, resolve_data_root

try:
    BENCHMARKS = resolve_data_root(None) / "benchmarks"
except DataError:
    BENCHMARKS = None
if BENCHMARKS is None or not BENCHMARKS.is_dir():
    pytest.skip("no local benchmarks (../shared/data/benchmarks or $MHC_DATA_ROOT)", allow_module_level=True)

datasets = pytest.importorskip("datasets")
pytest.importorskip("lm_eval")

from lm_eval.models.dummy import DummyLM  # noqa: E402

from eval.suite import (  # noqa: E402
    HOLDOUT_STRIDE,
    METRIC_KEYS,
    PAPER_SHOTS,
    PAPER_SUITE,
    SUBSTITUTIONS,
    TASKS_DIR,
    LocalDataError,
    local_datasets,
    run_suite,
)

LEAF_TASKS = {"bbh_cot_fewshot": 27, "minerva_math": 7, "mmlu": 57}  # suite groups -> number of leaf tasks
PAPER_TABLE4_SHOTS = {  # paper Table 4, written out independently of PAPER_SHOTS
    "bbh_cot_fewshot": 3,
    "drop": 3,
    "gsm8k_cot": 8,
    "hellaswag": 10,
    "minerva_math": 4,
    "mmlu": 5,
    "piqa": 0,
    "triviaqa": 5,
}


def test_suite_yaml_sets_the_papers_shots_per_member():
    suite = yaml.safe_load((TASKS_DIR / f"{PAPER_SUITE}.yaml").read_text())
    assert suite["group"] == PAPER_SUITE
    shots = {entry.get("task", entry.get("group")): entry["num_fewshot"] for entry in suite["task"]}
    assert shots == PAPER_SHOTS == PAPER_TABLE4_SHOTS
    assert set(METRIC_KEYS) == set(PAPER_SHOTS)


@pytest.mark.slow
def test_full_suite_runs_offline_on_local_data_with_paper_shots_and_metrics():
    results = run_suite(DummyLM(), limit=2, local_data_root=BENCHMARKS.parent, bootstrap_iters=0, log_samples=False)

    def leaves(name: str) -> list[str]:
        children = results["group_subtasks"].get(name, [])
        return [leaf for child in children for leaf in leaves(child)] if children else [name]

    assert sorted(results["group_subtasks"][PAPER_SUITE]) == sorted(PAPER_TABLE4_SHOTS)
    for member, shots in PAPER_TABLE4_SHOTS.items():
        tasks = leaves(member)
        assert len(tasks) == LEAF_TASKS.get(member, 1), member
        assert {results["n-shot"][task] for task in tasks} == {shots}, member
        for key in METRIC_KEYS[member]:
            assert isinstance(results["results"][member][key], float), (member, key)
    assert results["n-samples"]["hellaswag"] == {"original": 10042 - 101, "effective": 2}
    assert results["n-samples"]["triviaqa"] == {"original": 7993 - 80, "effective": 2}
    assert results["mhc_substitutions"] == {m: SUBSTITUTIONS[m] for m in ("drop", "hellaswag", "piqa", "triviaqa")}
    assert results["mhc_data_source"] == str(BENCHMARKS.resolve())
    assert "configs" in results and "versions" in results


def test_subset_records_only_the_substitutes_it_used_and_keeps_builtin_shots():
    results = run_suite(DummyLM(), tasks=["gsm8k_cot", "piqa"], limit=1, local_data_root=True, bootstrap_iters=0)
    assert results["n-shot"] == {"gsm8k_cot": 8, "piqa": 0}
    assert results["n-samples"]["gsm8k_cot"]["original"] == 1319
    assert results["n-samples"]["piqa"]["original"] == 1838
    assert results["mhc_substitutions"] == {"piqa": SUBSTITUTIONS["piqa"]}


def test_missing_local_file_is_a_clear_error_naming_it(tmp_path):
    root = tmp_path / "data" / "benchmarks"
    (root / "gsm8k").mkdir(parents=True)
    for child in BENCHMARKS.iterdir():
        if child.name != "gsm8k":
            (root / child.name).symlink_to(child)
    (root / "gsm8k" / "train.jsonl").symlink_to(BENCHMARKS / "gsm8k" / "train.jsonl")
    missing = root / "gsm8k" / "test.jsonl"
    with pytest.raises(LocalDataError, match=str(missing)):
        run_suite(DummyLM(), tasks=["gsm8k_cot"], limit=1, local_data_root=tmp_path / "data")


def test_unknown_dataset_or_config_is_refused_offline_and_everything_is_restored():
    before_env, before_load = os.environ.get("HF_HUB_OFFLINE"), datasets.load_dataset
    import huggingface_hub.constants as hub

    before_flag = hub.HF_HUB_OFFLINE
    with local_datasets(BENCHMARKS.parent) as local:
        assert os.environ["HF_HUB_OFFLINE"] == "1" and hub.HF_HUB_OFFLINE is True
        with pytest.raises(LocalDataError, match="'allenai/ai2_arc'.*not available locally"):
            datasets.load_dataset("allenai/ai2_arc", "ARC-Easy")
        with pytest.raises(LocalDataError, match="'rc.web.nocontext' is not available locally"):
            datasets.load_dataset(path="mandarjoshi/trivia_qa", name="rc.web.nocontext")
        with pytest.raises(LocalDataError, match="no_such_subtask.json"):
            datasets.load_dataset(path="SaylorTwift/bbh", name="no_such_subtask")
        assert local.substitutions == {}
    assert os.environ.get("HF_HUB_OFFLINE") == before_env
    assert datasets.load_dataset is before_load and hub.HF_HUB_OFFLINE == before_flag
    with pytest.raises(DataError, match="not a directory"):
        with local_datasets(BENCHMARKS / "no_such_folder"):
            pass


def test_suite_refuses_a_global_num_fewshot():
    with pytest.raises(ValueError, match="per task"):
        run_suite(DummyLM(), num_fewshot=5, local_data_root=True)


def test_substitute_splits_are_deterministic_and_disjoint_from_evaluation():
    with local_datasets(BENCHMARKS) as local:
        hellaswag = datasets.load_dataset(path="Rowan/hellaswag")
        trivia = datasets.load_dataset(path="mandarjoshi/trivia_qa", name="rc.nocontext")
        piqa = datasets.load_dataset(path="baber/piqa")
        drop = datasets.load_dataset(path="EleutherAI/drop")
        mmlu = datasets.load_dataset(path="cais/mmlu", name="anatomy")
        math = datasets.load_dataset(path="EleutherAI/hendrycks_math", name="precalculus")
    full = datasets.load_from_disk(str(BENCHMARKS / "hellaswag" / "validation"))
    assert hellaswag["train"]["ind"] == full["ind"][::HOLDOUT_STRIDE]
    assert len(hellaswag["train"]) + len(hellaswag["validation"]) == len(full) == 10042
    key = ("source_id", "ind")  # unique per HellaSwag row
    pool, scored = (set(zip(*(hellaswag[s][k] for k in key), strict=True)) for s in ("train", "validation"))
    assert len(pool) == 101 and len(scored) == 10042 - 101 and not pool & scored
    assert len(trivia["train"]) == 80 and len(trivia["validation"]) == 7993 - 80
    assert not set(trivia["train"]["question_id"]) & set(trivia["validation"]["question_id"])
    assert len(piqa["train"]) == 0 and len(piqa["validation"]) == 1838
    assert {len(mmlu[s]) for s in ("dev", "validation", "test")} == {5, 14, 135}
    assert (len(math["train"]), len(math["test"])) == (746, 546)
    assert local.substitutions == {m: SUBSTITUTIONS[m] for m in ("drop", "hellaswag", "piqa", "triviaqa")}

    # DROP: 9,536 questions parsed from simple-evals contexts; where OLMES kept the original fields, the parsed
    # passage (up to surrounding whitespace) and question agree with them.
    assert len(drop["validation"]) == 9536 and len(set(drop["validation"]["query_id"])) == 9536
    assert [d["answer"]["number"] or d["answer"]["spans"][0] for d in drop["train"]] == [
        "2",
        "Nate Kaeding",
        "June 1344",
        "escaped captivity",
        "158203",
    ]
    parsed = {(d["passage"], d["question"]) for d in drop["validation"]}
    with gzip.open(BENCHMARKS / "drop" / "olmes_bpb_5shot" / "requests.jsonl.gz", "rt") as f:
        originals = [json.loads(line)["doc"] for line in f]
    assert sum((o["passage"].strip(), o["question"]) in parsed for o in originals) == len(originals)
    from lm_eval.tasks.drop.utils import get_answers

    first = drop["validation"][0]
    assert get_answers(first) == [("under the age of 18 and 25 to 44 and 45 to 64",)]
