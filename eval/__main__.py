"""`python -m eval ...`: lm-eval's own command line, with our `mhc` model registered and our task folder
(`eval/tasks`, the paper suite) on the include path.

    python -m eval run --model mhc --model_args checkpoint=RUN_DIR --tasks hellaswag --limit 5

Every lm-eval option works (an `--include_path` of yours replaces ours). `run` may be omitted, as with
`lm-eval`. By default the benchmark datasets are read from the local data root ($MHC_DATA_ROOT, else
../shared/data) with the hub switched off (HF_HUB_OFFLINE=1); `--hub` (ours, removed before lm-eval sees the
arguments) loads them from the Hugging Face hub instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

TASKS = Path(__file__).resolve().parent / "tasks"


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    import eval.lm  # noqa: F401  (registers the "mhc" model)

    argv = list(sys.argv[1:] if argv is None else argv)
    hub = "--hub" in argv
    argv = [a for a in argv if a != "--hub"]
    if TASKS.is_dir() and not any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", str(TASKS)]
    sys.argv = ["lm-eval", *argv]
    if hub or any(a in ("-h", "--help", "ls", "validate") for a in argv):
        cli_evaluate()
        return
    from corpus import resolve_data_root

    from .suite import local_datasets

    with local_datasets(resolve_data_root(None) / "benchmarks") as used:
        cli_evaluate()
    if used.substitutions:  # the results file is lm-eval's own; say what the local data changed
        print("local-data substitutions used (eval.run records them in its results):", file=sys.stderr)
        for task, what in used.substitutions.items():
            print(f"  {task}: {what}", file=sys.stderr)


if __name__ == "__main__":
    main()
