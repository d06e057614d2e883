# Configuration, validation and the experiment plan (no rules here).
import json
import os
import re
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from analysis.plan import build_plan, results_root, train_overrides

try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as err:
    # jsonschema's own message is long; lead with the offending key so a typo is found at a glance
    match = re.search(r"Additional properties are not allowed \((.*?) (?:was|were) unexpected\)", str(err))
    where = re.search(r"On instance(\[.*?\])?:", str(err))
    if match:
        path = where.group(1) if where and where.group(1) else "the top level"
        raise WorkflowError(f"config: unknown key {match.group(1)} in {path} (see workflow/schemas/config.schema.yaml)")
    raise

try:
    PLAN = build_plan(config)
except ValueError as err:
    raise WorkflowError(str(err))

RESULTS = results_root(config)  # results/<tier>: tiers never overwrite each other
RUNS = PLAN["runs"]
RUN = f"{RESULTS}/runs/{{scale}}/{{variant}}/seed{{seed}}"
RUN_LOG = f"{{scale}}/{{variant}}/seed{{seed}}"


wildcard_constraints:
    scale="|".join(map(re.escape, config["scales"])),
    variant="|".join(map(re.escape, sorted(PLAN["variants"], key=len, reverse=True))),
    seed=r"\d+",
    dataset="|".join(map(re.escape, config["datasets"])),


def run_files(name, role=None):
    """The file `name` of every planned run (with the given role)."""
    return [f"{run['dir']}/{name}" for run in RUNS.values() if role is None or role in run["roles"]]


def dataset_of(wildcards):
    return config["scales"][wildcards.scale]["dataset"]


def run_of(wildcards):
    key = f"{wildcards.scale}/{wildcards.variant}/seed{wildcards.seed}"
    if key not in RUNS:
        raise WorkflowError(f"run {key} is not part of the experiment plan of tier {config['tier']}")
    return RUNS[key]


def run_folder(wildcards, input=None, output=None):
    """The run folder: the directory of the job's final.json (input or output)."""
    files = output if output is not None and "summary" in output.keys() else input
    return os.path.dirname(files.summary)


def train_args(wildcards):
    """`--set key=value ...` defining one run: its identity (a change here retrains that run, and only that run).
    A function of the wildcards only: Snakemake leaves params functions that take `input` or `output` out of its
    params rerun trigger, and this one must be in it."""
    shards = f"results/data/{dataset_of(wildcards)}"
    return " ".join(f"--set {shlex.quote(item)}" for item in train_overrides(config, run_of(wildcards), shards))


def train_launcher(wildcards):
    """How a training job starts. One process (CPU or one GPU) claims a free GPU itself when it picks its device
    (common/gpu_slots.py). A multi-GPU run is claimed before torchrun starts its ranks, so that all ranks share the
    N GPUs no other job holds; `--standalone` binds the rendezvous to port 0, a free port chosen by the OS."""
    gpus = int(config["scales"][wildcards.scale].get("gpus", 0))
    if gpus > 1:
        return (
            f"python -m common.gpu_slots --gpus {gpus} -- "
            f"torchrun --standalone --nproc-per-node {gpus} -m models.train"
        )
    return "python -m models.train"


def one_gpu(wildcards):
    """The GPUs of a single-GPU job on a run's final model (evaluation, analyses): 1 when the scale trains on GPUs."""
    return min(1, int(config["scales"][wildcards.scale].get("gpus", 0)))


def tracking_input(wildcards):
    # The tracking settings reach the jobs through this file (written by mlflow_init, also when tracking is off),
    # not through params: editing the URI or switching tracking on or off must not retrain any run. ancient(): a
    # re-initialised store (new mtime) does not retrain finished runs either.
    return ancient(f"{RESULTS}/mlflow_experiment.json")
