"""The paper's eight-benchmark suite (Table 4) through lm-eval's own tasks, from the hub or from local files.

`eval/tasks/mhc_paper_suite.yaml` is a group over lm-eval 0.4.13's built-in tasks with the paper's shot counts set
per member (`PAPER_SHOTS`); the prompts, filters and metrics are lm-eval's. It runs in two modes:

- hub mode: lm-eval loads each dataset from the Hugging Face hub (or its cache), as usual;
- local-data mode: inside `local_datasets(root)`, the `datasets.load_dataset` that lm-eval calls is replaced by
  a reader of the benchmark copies under `<data root>/benchmarks` (one folder per dataset, as this module's
  readers expect), which returns each `(dataset_path, dataset_name)` as a `DatasetDict` in the schema the built-in
  task expects, with the hub switched off. The suite YAML is the same in both modes, so the same prompts and
  metrics run.

Where a local copy lacks a split the built-in task needs, a documented, deterministic substitute is served; the
`SUBSTITUTIONS` of the benchmarks a run used are written into its results (`run_suite` -> `mhc_substitutions`).
Anything else that is not available locally raises `LocalDataError` naming the dataset or the missing file.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from corpus import DataError, resolve_data_root

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

PAPER_SUITE = "mhc_paper_suite"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"

PAPER_SHOTS: dict[str, int] = {
    "bbh_cot_fewshot": 3,
    "drop": 3,
    "gsm8k_cot": 8,
    "hellaswag": 10,
    "minerva_math": 4,
    "mmlu": 5,
    "piqa": 0,
    "triviaqa": 5,
}
"""Paper Table 4 shot counts per suite member (task or group); groups apply theirs to every subtask."""

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "bbh_cot_fewshot": ("exact_match,get-answer",),
    "drop": ("f1,none", "em,none"),
    "gsm8k_cot": ("exact_match,strict-match", "exact_match,flexible-extract"),
    "hellaswag": ("acc,none", "acc_norm,none"),
    "minerva_math": ("exact_match,none", "math_verify,none"),
    "mmlu": ("acc,none",),
    "piqa": ("acc,none", "acc_norm,none"),
    "triviaqa": ("exact_match,remove_whitespace",),
}
"""The result keys lm-eval reports for each suite member (`results[member][key]`)."""

HOLDOUT_STRIDE = 100
"""Few-shot pools carved out of a validation split take every HOLDOUT_STRIDE-th row (row index % stride == 0)."""

SUBSTITUTIONS: dict[str, str] = {
    "drop": (
        "EleutherAI/drop validation is read from OpenAI simple-evals' drop_v0_dev.jsonl.gz (the same 9,536 "
        "questions): passage and question are parsed out of its `context` ('Passage: ...\\nQuestion: ...\\n"
        "Answer:', so passages are whitespace-stripped), query_id is synthesised (drop_v0_dev:<line>), and the "
        "accepted answers come from `ref_text` split on '|', each as one answer (numbers as `number`, the rest as "
        "a single span): multi-span answers, which simple-evals joins with ' and ', are scored as one span. The "
        "train split is missing, so the 3 shots are drawn (lm-eval's random sampler) from OLMES's 5 fixed DROP "
        "train exemplars (drop/olmes_bpb_5shot). Known lm-eval defect, kept as in the hub mode: the built-in "
        "task's doc_to_target renders every few-shot answer as its dict keys (lm-eval #2137), so DROP 3-shot "
        "scores are unreliable in both modes."
    ),
    "hellaswag": (
        "Rowan/hellaswag train (the few-shot pool) is missing: the 10 shots are drawn (lm-eval's random sampler) "
        f"from a held-out pool of every {HOLDOUT_STRIDE}th validation row (row index % {HOLDOUT_STRIDE} == 0; 101 "
        "rows), which are excluded from evaluation (9,941 of 10,042 validation rows scored)."
    ),
    "piqa": (
        "baber/piqa train is missing; the paper's setting is 0-shot, so no few-shot example is used and train is "
        "served empty (num_fewshot > 0 fails). Validation (1,838) is exact."
    ),
    "triviaqa": (
        "mandarjoshi/trivia_qa rc.nocontext validation (17,944) is not available locally: its Wikipedia part, "
        "rc.wikipedia.nocontext validation (7,993 questions, same schema), stands in; the web part (9,951) is "
        "missing. The train split is missing too, so the 5 shots are drawn (lm-eval's random sampler) from a "
        f"held-out pool of every {HOLDOUT_STRIDE}th row of that subset (80 rows), excluded from evaluation "
        "(7,913 scored)."
    ),
}
"""Every deviation of local-data mode from what lm-eval would load from the hub, per suite member."""


class LocalDataError(DataError):
    """A dataset lm-eval asked for is not available under the local data root; the message names what is missing."""


# --------------------------------------------------------------------------------------------------------------------
# lm-eval entry points


@functools.cache
def task_manager() -> TaskManager:
    """lm-eval's TaskManager with `eval/tasks` (the suite group) on the include path.

    Cached: indexing lm-eval's ~10k task YAMLs takes seconds, and the index does not change within a process.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def run_suite(
    lm: Any,
    tasks: str | Sequence[str] = (PAPER_SUITE,),
    limit: int | float | None = None,
    local_data_root: str | os.PathLike[str] | bool | None = None,
    **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Run lm-eval's `simple_evaluate` on `tasks` (default: the paper suite) with our task manager.

    `local_data_root` selects local-data mode: a data root (or its `benchmarks/` folder), or True for the default
    root (`corpus.resolve_data_root(None)`); None runs in hub mode. The results gain `mhc_substitutions`
    (suite member -> description, for the substitutes the run actually used; empty in hub mode) and
    `mhc_data_source` ("hub" or the benchmarks folder). Other keyword arguments go to `simple_evaluate`.
    """
    import lm_eval

    task_list = [tasks] if isinstance(tasks, str) else list(tasks)
    if PAPER_SUITE in task_list and simple_evaluate_kwargs.get("num_fewshot") is not None:
        raise ValueError(
            f"{PAPER_SUITE} sets the paper's shots per task; a global num_fewshot would override them "
            "(PIQA included). Drop num_fewshot or run the tasks on their own."
        )
    simple_evaluate_kwargs.setdefault("task_manager", task_manager())

    def evaluate() -> dict[str, Any] | None:
        return lm_eval.simple_evaluate(model=lm, tasks=task_list, limit=limit, **simple_evaluate_kwargs)

    if local_data_root is None or local_data_root is False:
        results, substitutions, source = evaluate(), {}, "hub"
    else:
        with local_datasets(None if local_data_root is True else local_data_root) as local:
            results = evaluate()
        substitutions, source = local.substitutions, str(local.benchmarks)
    if results is not None:  # None on non-zero ranks of a distributed run
        results["mhc_substitutions"] = substitutions
        results["mhc_data_source"] = source
    return results


class LocalData:
    """What `local_datasets` yields: the benchmarks folder and the datasets served so far."""

    def __init__(self, benchmarks: Path) -> None:
        self.benchmarks = benchmarks
        self.served: list[tuple[str, str | None]] = []
        self.members: set[str] = set()

    @property
    def substitutions(self) -> dict[str, str]:
        """SUBSTITUTIONS entries of the suite members whose data was served (sorted by member)."""
        return {m: SUBSTITUTIONS[m] for m in sorted(self.members) if m in SUBSTITUTIONS}


@contextlib.contextmanager
def local_datasets(data_root: str | os.PathLike[str] | None = None) -> Iterator[LocalData]:
    """Serve lm-eval's `datasets.load_dataset` calls from the local benchmark copies, with the hub switched off.

    `data_root` is the data root (default: `corpus.resolve_data_root(None)`) or its `benchmarks/`
    folder. Inside the block, each hub dataset of the paper suite (`SaylorTwift/bbh`, `EleutherAI/drop`,
    `openai/gsm8k`, `Rowan/hellaswag`, `EleutherAI/hendrycks_math`, `cais/mmlu`, `baber/piqa`,
    `mandarjoshi/trivia_qa` rc.nocontext, and a few older aliases) is built from local files; packaged builders
    given local `data_files` (`json`, `csv`, ...) and local paths pass through; anything else raises
    `LocalDataError`. HF_HUB_OFFLINE=1 holds for the block. Yields a `LocalData` recording what was served.
    """
    root = Path(data_root).expanduser() if data_root is not None else resolve_data_root(None)
    benchmarks = root / "benchmarks" if (root / "benchmarks").is_dir() else root
    if not benchmarks.is_dir():
        raise LocalDataError(f"local benchmark folder {str(benchmarks)!r} is not a directory")
    local = LocalData(benchmarks.resolve())
    real_load_dataset = datasets.load_dataset

    def load_dataset(path: str, name: str | None = None, *args: Any, **kwargs: Any) -> Any:
        path_str = os.fspath(path)
        if path_str in _SOURCES:
            member, builder = _SOURCES[path_str]
            dataset = builder(local.benchmarks, name)
            local.served.append((path_str, name))
            local.members.add(member)
            split = kwargs.get("split")
            return dataset[split] if split is not None else dataset
        if (path_str in _PACKAGED_BUILDERS and kwargs.get("data_files")) or Path(path_str).exists():
            return real_load_dataset(path, name, *args, **kwargs)
        raise LocalDataError(
            f"dataset {path_str!r} (name {name!r}) is not available locally: local-data mode serves "
            f"{', '.join(sorted(_SOURCES))} from {local.benchmarks}; run in hub mode for other tasks"
        )

    with _hub_offline():
        datasets.load_dataset = load_dataset
        try:
            yield local
        finally:
            datasets.load_dataset = real_load_dataset


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the block, also in huggingface_hub and datasets, which read it at import time."""
    import huggingface_hub.constants as hub_constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in _offline_flags(hub_constants) if hasattr(mod, attr)]
    os.environ.update({k: "1" for k in saved_env})
    for mod, attr, _ in saved:
        setattr(mod, attr, True)
    try:
        yield
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _offline_flags(hub_constants: Any) -> list[tuple[Any, str]]:
    return [
        (hub_constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Readers: one per benchmark, each returning the DatasetDict lm-eval's built-in task expects


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise LocalDataError(f"missing local benchmark data {str(path)!r} ({what})")
    return path


def _from_disk(path: Path, what: str) -> datasets.Dataset:
    """A `save_to_disk` folder, held in memory so that lm-eval's `.map` never writes cache files beside the data."""
    _require(path, what)
    try:
        return datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as err:  # noqa: BLE001 - any unreadable folder is a data error naming the folder
        raise LocalDataError(f"cannot read local benchmark data {str(path)!r} ({what}): {err}") from err


def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    _require(path, what)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _holdout(dataset: datasets.Dataset, eval_split: str) -> datasets.DatasetDict:
    """Rows with index % HOLDOUT_STRIDE == 0 become the `train` (few-shot) pool; the rest are evaluated."""
    pool = range(0, len(dataset), HOLDOUT_STRIDE)
    rest = [i for i in range(len(dataset)) if i % HOLDOUT_STRIDE]
    return datasets.DatasetDict({"train": dataset.select(pool), eval_split: dataset.select(rest)})


def _bbh(bench: Path, name: str | None) -> datasets.DatasetDict:
    path = _require(bench / "bbh" / "bbh" / f"{name}.json", f"BBH subtask {name!r}")
    examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    rows = [{"input": ex["input"], "target": ex["target"]} for ex in examples]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _gsm8k(bench: Path, name: str | None) -> datasets.DatasetDict:
    _check_name("gsm8k", name, ("main", None))
    splits = {s: _read_jsonl(bench / "gsm8k" / f"{s}.jsonl", f"GSM8K {s}") for s in ("train", "test")}
    return datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in splits.items()})


def _hellaswag(bench: Path, name: str | None) -> datasets.DatasetDict:
    _check_name("hellaswag", name, (None,))
    return _holdout(_from_disk(bench / "hellaswag" / "validation", "HellaSwag validation"), "validation")


def _piqa(bench: Path, name: str | None) -> datasets.DatasetDict:
    _check_name("piqa", name, (None, "plain_text"))
    validation = _from_disk(bench / "piqa" / "validation", "PIQA validation")
    return datasets.DatasetDict({"train": validation.select([]), "validation": validation})


def _triviaqa(bench: Path, name: str | None) -> datasets.DatasetDict:
    _check_name("trivia_qa", name, ("rc.nocontext",))
    path = bench / "triviaqa" / "rc.wikipedia.nocontext" / "validation"
    return _holdout(_from_disk(path, "TriviaQA rc.wikipedia.nocontext validation"), "validation")


def _mmlu(bench: Path, name: str | None) -> datasets.DatasetDict:
    folder = bench / "mmlu" / "mmlu_no_train" / str(name)
    return datasets.DatasetDict(
        {s: _from_disk(folder / s, f"MMLU {name!r} {s}") for s in ("test", "validation", "dev")}
    )


MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def _math(bench: Path, name: str | None) -> datasets.DatasetDict:
    _check_name("hendrycks_math", name, MATH_SUBJECTS)
    path = _require(bench / "math" / "MATH.tar.gz", "MATH train/test problems")
    stat = path.stat()
    problems = _read_math_tar(str(path), stat.st_size, stat.st_mtime_ns)
    return datasets.DatasetDict(
        {s: datasets.Dataset.from_list(problems[(s, name)]) for s in ("train", "test")}  # type: ignore[index]
    )


@functools.lru_cache(maxsize=2)
def _read_math_tar(path: str, size: int, mtime_ns: int) -> dict[tuple[str, str], list[dict[str, str]]]:
    """{(split, subject): rows} from MATH/{split}/{subject}/{id}.json, rows in numeric id order.

    Keyed on size and mtime so that a replaced file is re-read; the seven subject tasks share one read.
    """
    found: dict[tuple[str, str], list[tuple[int, dict[str, str]]]] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or not parts[3].endswith(".json"):
                continue
            _, split, subject, filename = parts
            record = json.load(tar.extractfile(member))  # type: ignore[arg-type]
            row = {k: record[k] for k in ("problem", "level", "type", "solution")}
            found.setdefault((split, subject), []).append((int(filename.removesuffix(".json")), row))
    return {key: [row for _, row in sorted(rows, key=lambda r: r[0])] for key, rows in found.items()}


_DATE = {"day": datasets.Value("string"), "month": datasets.Value("string"), "year": datasets.Value("string")}
_DROP_FEATURES = datasets.Features(
    {
        "section_id": datasets.Value("string"),
        "query_id": datasets.Value("string"),
        "passage": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answer": {
            "number": datasets.Value("string"),
            "date": dict(_DATE),
            "spans": datasets.List(datasets.Value("string")),
        },
        "validated_answers": {
            "number": datasets.List(datasets.Value("string")),
            "date": datasets.List(dict(_DATE)),
            "spans": datasets.List(datasets.List(datasets.Value("string"))),
        },
    }
)
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_EMPTY_DATE = {"day": "", "month": "", "year": ""}


def _drop_answer(text: str) -> dict[str, Any]:
    if _NUMBER.fullmatch(text):
        return {"number": text, "date": dict(_EMPTY_DATE), "spans": []}
    return {"number": "", "date": dict(_EMPTY_DATE), "spans": [text]}


def _drop_doc(query_id: str, passage: str, question: str, answers: list[str]) -> dict[str, Any]:
    parsed = [_drop_answer(a) for a in answers]
    return {
        "section_id": "",
        "query_id": query_id,
        "passage": passage,
        "question": question,
        "answer": parsed[0],
        "validated_answers": {k: [p[k] for p in parsed[1:]] for k in ("number", "date", "spans")},
    }


def _drop(bench: Path, name: str | None) -> datasets.DatasetDict:
    _check_name("drop", name, (None,))
    dev_path = bench / "drop" / "drop_v0_dev.jsonl.gz"
    validation = []
    for i, row in enumerate(_read_jsonl(dev_path, "DROP validation, simple-evals format")):
        context = row["context"]
        body = context.removeprefix("Passage: ").removesuffix("\nAnswer:")
        if body == context or body.count("\nQuestion: ") != 1:
            raise LocalDataError(f"{dev_path} line {i + 1}: `context` is not 'Passage: ...\\nQuestion: ...\\nAnswer:'")
        passage, question = body.split("\nQuestion: ")
        answers = [a.strip() for a in row["ref_text"].split("|") if a.strip()]
        if not answers:
            raise LocalDataError(f"{dev_path} line {i + 1}: empty `ref_text`")
        validation.append(_drop_doc(f"drop_v0_dev:{i}", passage, question, answers))
    train = [_drop_doc(f"olmes_drop_fewshot:{i}", *example) for i, example in enumerate(_drop_olmes_exemplars(bench))]
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(train, features=_DROP_FEATURES),
            "validation": datasets.Dataset.from_list(validation, features=_DROP_FEATURES),
        }
    )


def _drop_olmes_exemplars(bench: Path) -> list[tuple[str, str, list[str]]]:
    """OLMES's 5 fixed DROP train exemplars, parsed out of the few-shot block of its first request."""
    path = _require(bench / "drop" / "olmes_bpb_5shot" / "requests.jsonl.gz", "DROP few-shot exemplars (OLMES)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    context, query = first["request"]["context"], first["doc"]["query"]
    if not context.endswith(query) or "Passage: " not in context:
        raise LocalDataError(f"{path}: first request has no few-shot block before its query")
    block = context[context.index("Passage: ") : len(context) - len(query)]
    exemplars = []
    for chunk in block.strip().removeprefix("Passage: ").split("\n\nPassage: "):
        match = re.fullmatch(r"(.*)\nQuestion: (.*)\nAnswer: (.*)", chunk, flags=re.DOTALL)
        if match is None:
            raise LocalDataError(f"{path}: cannot parse few-shot exemplar {chunk[:80]!r}")
        exemplars.append((match[1], match[2], [match[3].strip()]))
    return exemplars


def _check_name(dataset: str, name: str | None, allowed: Sequence[str | None]) -> None:
    if name not in allowed:
        raise LocalDataError(
            f"dataset {dataset!r} config {name!r} is not available locally (local configs: {list(allowed)})"
        )


_SOURCES: dict[str, tuple[str, Callable[[Path, str | None], datasets.DatasetDict]]] = {
    "SaylorTwift/bbh": ("bbh_cot_fewshot", _bbh),
    "lukaemon/bbh": ("bbh_cot_fewshot", _bbh),
    "EleutherAI/drop": ("drop", _drop),
    "openai/gsm8k": ("gsm8k_cot", _gsm8k),
    "gsm8k": ("gsm8k_cot", _gsm8k),
    "Rowan/hellaswag": ("hellaswag", _hellaswag),
    "hellaswag": ("hellaswag", _hellaswag),
    "EleutherAI/hendrycks_math": ("minerva_math", _math),
    "cais/mmlu": ("mmlu", _mmlu),
    "hails/mmlu_no_train": ("mmlu", _mmlu),
    "baber/piqa": ("piqa", _piqa),
    "piqa": ("piqa", _piqa),
    "ybisk/piqa": ("piqa", _piqa),
    "mandarjoshi/trivia_qa": ("triviaqa", _triviaqa),
    "trivia_qa": ("triviaqa", _triviaqa),
}
"""hub dataset_path -> (suite member, reader). Older lm-eval releases used the unprefixed names."""

_PACKAGED_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow", "pandas"})
