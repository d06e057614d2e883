"""GPUs of one machine shared by concurrent jobs: each job gets GPUs no other running job holds.

On a workstation with several GPUs Snakemake starts several GPU jobs at once (`--resources gpu=N` caps how many
GPUs they ask for in total) but tells none of them which GPUs are theirs; without this module every job would open
`cuda` (device 0). Here a job claims GPUs when it starts and keeps them until it ends or dies:

- one lock file per GPU index in a machine-wide folder (`$MHC_GPU_LOCK_DIR`, default `/tmp/mhc-gpu-locks`: GPUs
  belong to the machine, not to a checkout or a results folder, so two workflows on one machine see each other's
  claims; /tmp is node-local on clusters, as GPUs are). A claim is an exclusive `flock` on the file, which the
  kernel releases when the holding process exits for any reason (a crash or `kill -9` included): no claim outlives
  its job and there is nothing to clean up. The file also says who holds it (pid, command) for `cat`.
- a job needing N GPUs takes N free ones at once or none (never holding some while waiting for the rest, which
  could deadlock two multi-GPU jobs), retries until they are free, and fails at once with a clear error when the
  machine has fewer than N GPUs.
- the job then sees only its GPUs (`CUDA_VISIBLE_DEVICES`), so the code inside stays `cuda:0`-relative.

Two ways in. A single-process job (training on one GPU, evaluation, the analyses) claims one GPU for itself when
it resolves its device (`resolve_device`); this must happen before CUDA is initialised in the process, which is
why the entry points call it first. A multi-GPU run is started through the command line, which claims N GPUs and
then replaces itself with the command (`exec`), so the claim belongs to the launched process (torchrun) and the
ranks it starts inherit the visible devices:

    python -m common.gpu_slots --gpus 4 -- torchrun --standalone --nproc-per-node 4 -m models.train ...

(`torchrun --standalone` binds its rendezvous to port 0, so concurrent runs get distinct free ports from the OS.)

Stays out of the way: under a scheduler that assigned the GPUs (SLURM: `SLURM_JOB_ID` with `CUDA_VISIBLE_DEVICES`
listing exactly the GPUs asked for), on a machine without GPUs, in processes a claiming launcher started
(`MHC_GPUS_HELD`), for an explicit device index (`cuda:1`: the user chose), and with `MHC_GPU_SLOTS=off`.
`MHC_GPU_COUNT=8` makes this module believe the machine has 8 GPUs (the tests simulate a workstation with it);
`MHC_GPU_WAIT_S=600` makes a single-process job give up after 10 minutes of waiting for a free GPU.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .devices import auto_device

LOCK_DIR_ENV = "MHC_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/mhc-gpu-locks"
COUNT_ENV = "MHC_GPU_COUNT"
HELD_ENV = "MHC_GPUS_HELD"
SWITCH_ENV = "MHC_GPU_SLOTS"
WAIT_ENV = "MHC_GPU_WAIT_S"
WAIT_NOTICE_S = 60.0


class GpuSlotError(RuntimeError):
    """A GPU claim that cannot be satisfied (more GPUs than the machine has, or a timeout)."""


@dataclass
class Claim:
    """GPUs held by this process: the ids (as CUDA_VISIBLE_DEVICES lists them) and the open, locked files."""

    gpus: list[str]
    files: list[int] = field(default_factory=list)

    def release(self) -> None:
        for fd in self.files:
            os.close(fd)  # closing the last descriptor drops the flock
        self.files = []


# The claim of this process (resolve_device): kept referenced for the life of the process.
_PROCESS_CLAIM: Claim | None = None


def machine_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPU ids jobs on this machine may claim: `MHC_GPU_COUNT` (simulated), else those CUDA_VISIBLE_DEVICES
    lists (a restriction set by the user or a scheduler), else every GPU `nvidia-smi -L` shows. Empty without GPUs.
    Never initialises CUDA (it must not be, before the claim sets CUDA_VISIBLE_DEVICES)."""
    env = os.environ if env is None else env
    if env.get(COUNT_ENV, "").strip():
        try:
            count = int(env[COUNT_ENV])
        except ValueError:
            raise GpuSlotError(f"{COUNT_ENV}={env[COUNT_ENV]!r} is not a whole number") from None
        if count < 0:
            raise GpuSlotError(f"{COUNT_ENV}={count}: a GPU count cannot be negative")
        return [str(i) for i in range(count)]
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def scheduler_assigned(n: int, env: dict[str, str] | None = None) -> bool:
    """True inside a SLURM job whose visible GPUs are exactly the n it asked for: the scheduler did the job."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env or env.get("CUDA_VISIBLE_DEVICES") is None:
        return False
    return len(machine_gpus({"CUDA_VISIBLE_DEVICES": env["CUDA_VISIBLE_DEVICES"]})) == n


def lock_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    path = Path(env.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    path.mkdir(parents=True, exist_ok=True)
    try:
        path.chmod(0o1777)  # other users' jobs on this machine claim here too (sticky, like /tmp)
    except PermissionError:
        pass
    return path


def _try_lock(path: Path) -> int | None:
    """An exclusive, non-blocking flock on `path` (created if missing): the descriptor, or None when held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file (umask): a read-only descriptor locks as well
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def holder(path: Path) -> str:
    """Who holds a GPU's lock file, as its holder wrote it ("" when unknown)."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def try_claim(n: int, pool: list[str], folder: Path) -> Claim | None:
    """n GPUs of `pool` at once, or None (holding nothing) when fewer than n are free."""
    claim = Claim([])
    for gpu in pool:
        fd = _try_lock(folder / f"gpu{gpu}.lock")
        if fd is None:
            continue
        claim.gpus.append(gpu)
        claim.files.append(fd)
        if len(claim.gpus) == n:
            note = f"pid {os.getpid()}: {' '.join(sys.argv)[:500]}\n".encode()
            for descriptor in claim.files:
                try:
                    os.ftruncate(descriptor, 0)
                    os.pwrite(descriptor, note, 0)
                except OSError:  # read-only descriptor: the claim holds, only the note is missing
                    pass
            return claim
    claim.release()
    return None


def acquire(
    n: int,
    pool: list[str] | None = None,
    folder: Path | None = None,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    notify: Callable[[str], None] | None = None,
) -> Claim:
    """Wait until n GPUs of `pool` (default: machine_gpus()) are free and claim them. Raises GpuSlotError at once
    when the pool has fewer than n GPUs, and after `timeout_s` (None: wait as long as it takes; Snakemake's `gpu`
    resource normally keeps the wait short)."""
    pool = machine_gpus() if pool is None else pool
    folder = lock_dir() if folder is None else folder
    if n < 1:
        raise GpuSlotError(f"a claim needs at least 1 GPU, got {n}")
    if n > len(pool):
        raise GpuSlotError(
            f"this job needs {n} GPU(s) but this machine has {len(pool)}"
            + (f" ({', '.join(pool)})" if pool else "")
            + ": lower the scale's `gpus` or run it on a larger machine"
        )
    notify = notify or (lambda message: print(message, file=sys.stderr, flush=True))
    start = last_notice = time.monotonic()
    while True:
        claim = try_claim(n, pool, folder)
        if claim is not None:
            return claim
        now = time.monotonic()
        if timeout_s is not None and now - start >= timeout_s:
            raise GpuSlotError(f"no {n} free GPU(s) within {timeout_s:g} s; held: {_held(pool, folder)}")
        if now - last_notice >= WAIT_NOTICE_S:
            notify(f"[gpu_slots] waiting for {n} free GPU(s); held: {_held(pool, folder)}")
            last_notice = now
        time.sleep(poll_s * (0.5 + random.random()))  # jitter: waiting jobs do not retry in lockstep


def _held(pool: list[str], folder: Path) -> str:
    return "; ".join(f"GPU {g} by {holder(folder / f'gpu{g}.lock') or '?'}" for g in pool) or "none"


def _stays_out(env: dict[str, str]) -> bool:
    return env.get(SWITCH_ENV, "").lower() in ("off", "0", "false") or bool(env.get(HELD_ENV))


def resolve_device(preference: str = "auto", timeout_s: float | None = None) -> str:
    """The torch device string for a single-process job: "auto" is CUDA when this machine has a GPU, else the CPU.
    For "auto" / "cuda" on a machine with GPUs, first claims one free GPU for this process (held until it exits)
    and makes it the only visible one, so the result is "cuda" (device 0 of the claim). An explicit index
    ("cuda:1") is used as given. Call before anything initialises CUDA in this process."""
    global _PROCESS_CLAIM
    if preference not in ("auto", "cuda"):
        return preference
    env = dict(os.environ)
    if _PROCESS_CLAIM is not None or _stays_out(env) or scheduler_assigned(1, env):
        return auto_device(preference)
    pool = machine_gpus(env)
    if not pool:
        # no GPU this module can see (or no nvidia-smi): let torch decide, without a claim
        return auto_device(preference)
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        raise GpuSlotError("CUDA was initialised before the GPU claim: resolve the device first")
    if timeout_s is None and env.get(WAIT_ENV, "").strip():
        try:
            timeout_s = float(env[WAIT_ENV])
        except ValueError:
            raise GpuSlotError(f"{WAIT_ENV}={env[WAIT_ENV]!r} is not a number of seconds") from None
    _PROCESS_CLAIM = acquire(1, pool, timeout_s=timeout_s)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(_PROCESS_CLAIM.gpus)
    os.environ[HELD_ENV] = ",".join(_PROCESS_CLAIM.gpus)
    return "cuda"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.gpu_slots",
        description="Claim GPUs no other job holds, then run COMMAND on them (it replaces this process).",
        usage="python -m common.gpu_slots --gpus N [--timeout S] -- COMMAND [ARGS ...]",
    )
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the command needs (0: hide every GPU)")
    parser.add_argument("--timeout", type=float, default=None, help="give up after S seconds of waiting")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given (put it after --)")
    if args.gpus < 0:
        parser.error(f"--gpus must be 0 or more, got {args.gpus}")
    env = os.environ
    if args.gpus == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a job that asked for no GPU gets none
    elif not (_stays_out(env) or scheduler_assigned(args.gpus, env)):
        try:
            pool = machine_gpus()
            if pool:
                claim = acquire(args.gpus, pool, timeout_s=args.timeout)
                for fd in claim.files:
                    os.set_inheritable(fd, True)  # the claim passes to the command with exec
                env["CUDA_VISIBLE_DEVICES"] = ",".join(claim.gpus)
                env[HELD_ENV] = ",".join(claim.gpus)
        except GpuSlotError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"error: cannot run {command[0]!r}: {err}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
