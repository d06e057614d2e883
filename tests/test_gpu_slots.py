"""GPUs of one machine shared by concurrent jobs (common/gpu_slots.py), on a simulated 8-GPU workstation.

No GPU is needed: `MHC_GPU_COUNT` makes the allocator believe the machine has that many, and the jobs are small
Python processes that record which GPUs they were given (CUDA_VISIBLE_DEVICES) and when they held them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import gpu_slots
from tests.conftest import needs_corpus

REPO = Path(__file__).resolve().parent.parent

# A job: note its visible GPUs and the time it held them, hold them a random short while.
JOB = """
import json, os, random, sys, time
start = time.time()
time.sleep(random.uniform(0.05, 0.3))
record = {"pid": os.getpid(), "want": int(sys.argv[2]), "gpus": os.environ["CUDA_VISIBLE_DEVICES"],
          "start": start, "end": time.time()}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(record) + "\\n")
"""


def machine(tmp_path: Path, gpus: int = 8, **extra: str) -> dict[str, str]:
    env = dict(os.environ, MHC_GPU_COUNT=str(gpus), MHC_GPU_LOCK_DIR=str(tmp_path / "locks"), **extra)
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", gpu_slots.HELD_ENV, gpu_slots.SWITCH_ENV):
        if key not in extra:
            env.pop(key, None)
    return env


def slots(gpus: int, *command: str, timeout: float | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "common.gpu_slots", "--gpus", str(gpus)]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    return cmd + ["--", *command]


def overlapping(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_twenty_concurrent_jobs_never_share_a_gpu(tmp_path):
    env, log = machine(tmp_path), tmp_path / "jobs.jsonl"
    wants = [1, 2, 3, 4] * 5
    procs = [
        subprocess.Popen(slots(want, sys.executable, "-c", JOB, str(log), str(want)), cwd=REPO, env=env)
        for want in wants
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(wants)
    jobs = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(j["want"] for j in jobs) == sorted(wants)
    for job in jobs:
        gpus = job["gpus"].split(",")
        assert len(set(gpus)) == len(gpus) == job["want"] and set(gpus) <= {str(i) for i in range(8)}
    clashes = [
        (a["pid"], b["pid"], sorted(set(a["gpus"].split(",")) & set(b["gpus"].split(","))))
        for i, a in enumerate(jobs)
        for b in jobs[i + 1 :]
        if overlapping(a, b) and set(a["gpus"].split(",")) & set(b["gpus"].split(","))
    ]
    assert not clashes, f"GPUs held by two jobs at once: {clashes}"
    # the jobs did run concurrently (otherwise the check above proves nothing)
    assert any(overlapping(a, b) for i, a in enumerate(jobs) for b in jobs[i + 1 :])


def test_the_check_above_can_fail_without_the_locks(tmp_path):
    """With the allocator switched off every job sees the same GPUs: the overlap check would catch it."""
    env, log = machine(tmp_path, MHC_GPU_SLOTS="off", CUDA_VISIBLE_DEVICES="0,1"), tmp_path / "jobs.jsonl"
    procs = [subprocess.Popen(slots(2, sys.executable, "-c", JOB, str(log), "2"), cwd=REPO, env=env) for _ in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    jobs = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(j["gpus"] == "0,1" for j in jobs)


def test_a_killed_holder_gives_its_gpus_back(tmp_path):
    env = machine(tmp_path)
    holder = subprocess.Popen(slots(8, sys.executable, "-c", "import time; time.sleep(60)"), cwd=REPO, env=env)
    folder = gpu_slots.lock_dir(env)
    deadline = time.monotonic() + 30
    while "pid" not in gpu_slots.holder(folder / "gpu7.lock"):  # the holder has claimed all 8
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.05)
    assert gpu_slots.try_claim(1, gpu_slots.machine_gpus(env), folder) is None
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    claim = gpu_slots.acquire(8, gpu_slots.machine_gpus(env), folder, timeout_s=10, poll_s=0.05)
    assert claim.gpus == [str(i) for i in range(8)]
    claim.release()


def test_more_gpus_than_the_machine_has_fails_at_once(tmp_path):
    start = time.monotonic()
    proc = subprocess.run(slots(9, "true"), cwd=REPO, env=machine(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 2 and time.monotonic() - start < 10
    assert "needs 9 GPU(s) but this machine has 8" in proc.stderr and "Traceback" not in proc.stderr


def test_a_job_waits_for_busy_gpus_and_times_out_when_asked(tmp_path):
    env = machine(tmp_path, gpus=2)
    folder = gpu_slots.lock_dir(env)
    held = gpu_slots.acquire(2, gpu_slots.machine_gpus(env), folder)
    proc = subprocess.run(slots(1, "true", timeout=1), cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "no 1 free GPU(s) within 1 s" in proc.stderr
    waiting = subprocess.Popen(
        slots(2, sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])", timeout=30),
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    assert waiting.poll() is None  # still waiting
    held.release()
    out, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 0 and out.strip() == "0,1"


def test_no_gpu_job_sees_no_gpu_and_a_scheduler_allocation_is_left_alone(tmp_path):
    show = [sys.executable, "-c", "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"]
    env = machine(tmp_path)
    assert subprocess.run(slots(0, *show), cwd=REPO, env=env, capture_output=True, text=True).stdout.strip() == "''"
    # under SLURM with exactly the GPUs asked for, nothing is claimed (even with every local lock held)
    held = gpu_slots.acquire(8, gpu_slots.machine_gpus(env), gpu_slots.lock_dir(env))
    slurm = machine(tmp_path, SLURM_JOB_ID="42", CUDA_VISIBLE_DEVICES="5,6")
    proc = subprocess.run(slots(2, *show, timeout=1), cwd=REPO, env=slurm, capture_output=True, text=True)
    held.release()
    assert proc.returncode == 0 and proc.stdout.strip() == "'5,6'"


def test_single_process_jobs_claim_one_gpu_each(tmp_path):
    """resolve_device (what training, evaluation and the analyses call first) gives concurrent processes
    different GPUs, each as device "cuda" (index 0 of what it sees), and leaves CPU / explicit choices alone."""
    script = (
        "import os, sys, time; from common.gpu_slots import resolve_device; "
        "d = resolve_device(sys.argv[1]); print(d, os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True); "
        "time.sleep(float(sys.argv[2]))"
    )
    env = machine(tmp_path, gpus=2)
    first = subprocess.Popen(
        [sys.executable, "-c", script, "auto", "3"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    assert first.stdout.readline().split() == ["cuda", "0"]
    second = subprocess.run(
        [sys.executable, "-c", script, "cuda", "0"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert second.stdout.split() == ["cuda", "1"]
    explicit = subprocess.run(
        [sys.executable, "-c", script, "cuda:1", "0"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert explicit.stdout.split() == ["cuda:1", "None"]
    cpu = subprocess.run([sys.executable, "-c", script, "cpu", "0"], cwd=REPO, env=env, capture_output=True, text=True)
    assert cpu.stdout.split() == ["cpu", "None"]
    first.wait(timeout=30)


ENTRY_POINTS = {
    "train": ["-m", "models.train", "--set", "scale=tiny", "--set", "train.steps=2"],
    "evaluate": ["-m", "eval.run", "--checkpoint", "RUN", "--tasks", "piqa", "--out", "OUT"],
    "checkpoint_losses": ["-m", "analysis.checkpoint_losses", "--run", "RUN", "--out", "OUT"],
    "mappings": ["-m", "analysis.mappings", "--run", "RUN", "--out", "OUT"],
    "measure": ["-m", "analysis.measure", "--scales", "tiny", "--out", "OUT"],
}


@needs_corpus
@pytest.mark.parametrize("rule", list(ENTRY_POINTS))
def test_every_gpu_job_of_the_workflow_claims_its_gpu(tmp_path, shards, rule):
    """Each entry point of a GPU rule asks for a free GPU before anything else: with the machine's only
    (simulated) GPU held, it waits, gives up after MHC_GPU_WAIT_S and says so, with nothing written."""
    env = machine(tmp_path, gpus=1, MHC_GPU_WAIT_S="1")
    held = gpu_slots.acquire(1, ["0"], gpu_slots.lock_dir(env))
    args = [
        a.replace("RUN", str(tmp_path / "run")).replace("OUT", str(tmp_path / "out.json")) for a in ENTRY_POINTS[rule]
    ]
    if rule == "train":
        args += ["--set", f"data.shards_dir={shards}", "--out", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    held.release()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no 1 free GPU(s) within 1 s" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.json").exists()


def test_every_gpu_rule_declares_its_gpus():
    """Snakemake's `gpu` resource caps how many GPUs the running jobs ask for in total; every rule that runs a
    model on the GPU tier declares its GPUs, and a multi-GPU training job is claimed before torchrun starts."""
    proc = subprocess.run(
        ["snakemake", "-n", "-p", "--configfile", "config/paper.yaml", "--resources", "gpu=8"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs = proc.stdout.split("\nrule ")
    for rule, gpus in (("train", 8), ("evaluate", 1), ("measure", 1), ("checkpoint_losses", 1), ("mappings", 1)):
        blocks = [b for b in jobs if b.startswith(f"{rule}:")]
        assert blocks, rule
        assert all(f" gpu={gpus}," in b for b in blocks), rule
    train = [b for b in jobs if b.startswith("train:")]
    assert all("python -m common.gpu_slots --gpus 8 -- torchrun --standalone" in b for b in train)


RANKS = """
import os, sys
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
value = torch.ones(1)
dist.all_reduce(value)
with open(sys.argv[1], "a") as f:
    f.write(f"{os.environ['CUDA_VISIBLE_DEVICES']} {dist.get_rank()} {int(value.item())}\\n")
dist.destroy_process_group()
"""


def test_two_concurrent_multi_gpu_runs_get_their_own_gpus_and_rendezvous(tmp_path):
    """The training launcher of a multi-GPU scale: claim, then torchrun --standalone. Two such 2-GPU jobs at once
    on a simulated 4-GPU machine: both rendezvous (on ports the OS picked), and their ranks see disjoint GPUs."""
    env = machine(tmp_path, gpus=4, OMP_NUM_THREADS="1")
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    logs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    procs = [
        subprocess.Popen(slots(2, *torchrun, str(script), str(log)), cwd=REPO, env=env, stderr=subprocess.PIPE)
        for log in logs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    seen = []
    for log in logs:
        lines = sorted(line.split() for line in log.read_text().splitlines())
        assert [rank for _, rank, _ in lines] == ["0", "1"] and all(total == "2" for *_, total in lines)
        assert len({gpus for gpus, _, _ in lines}) == 1  # both ranks of a run see the same GPUs
        seen.append(set(lines[0][0].split(",")))
    assert len(seen[0]) == len(seen[1]) == 2 and not seen[0] & seen[1]
