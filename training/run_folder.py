"""The run folder RUN_DIR of one training run: what it holds and how it is written.

- `status.json`: running | completed | diverged | failed, with the reason (and which connection kernels ran);
- `metrics.jsonl` / `diagnostics.jsonl`: one JSON line per logged step, the source of truth of every number;
- `config.json`: the provenance of the run (config, config hash, data checksums, git sha, torch version);
- `checkpoints/` and `model/` (training/checkpoint.py); a run summary where the caller asks for one.

Only rank 0 writes. On resume the logs are trimmed to the checkpoint, so an interrupted run's extra lines never
appear twice. A folder holding a run of another configuration is moved aside, never deleted.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common.files import atomic_write_text
from models.config import to_dict

from .config import RunConfig


@functools.cache
def git_sha() -> str:
    """The commit of the code that ran ("unknown" outside a git checkout); asked once per process, since the code a
    process runs is the code it loaded, whatever is committed later (every checkpoint records it)."""
    try:
        repo = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def shard_checksums(manifest: dict) -> dict[str, str]:
    return {k: v["sha256"] for k, v in manifest["shards"].items()}


def display_name(run_dir: Path) -> str:
    """A readable run name: the path below the nearest `runs/` folder (the workflow's
    results/<tier>/runs/<scale>/<variant>/seed<N> -> "<scale>/<variant>/seed<N>"), else the folder name."""
    parts = run_dir.resolve().parts
    if "runs" in parts[:-1]:
        below = parts[len(parts) - 1 - parts[::-1].index("runs") + 1 :]
        return "/".join(below)
    return run_dir.name


class RunFolder:
    def __init__(self, path: Path, writer: bool = True):
        self.path, self.writer = path, writer

    def create(self) -> None:
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)

    def write_status(self, status: str, reason: str = "", step: int = 0, **extra: Any) -> None:
        if self.writer:
            payload = {"status": status, "reason": reason, "step": step, "updated": time.time(), **extra}
            atomic_write_text(self.path / "status.json", json.dumps(payload, indent=1) + "\n")

    def append(self, name: str, record: dict) -> None:
        if self.writer:
            with open(self.path / name, "a") as f:
                f.write(json.dumps(record) + "\n")

    def trim_logs(self, step: int, names: tuple[str, ...] = ("metrics.jsonl", "diagnostics.jsonl")) -> None:
        """Drop records past the resumed checkpoint `step` (written after it by an interrupted run), all records when
        there is no checkpoint (step 0 is logged again), and a line torn by a crash mid-append."""
        if not self.writer:
            return
        for name in names:
            path = self.path / name
            if not path.is_file():
                continue
            keep = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if step > 0 and record["step"] <= step:
                    keep.append(line)
            atomic_write_text(path, "".join(line + "\n" for line in keep))

    def write_provenance(self, provenance: dict[str, Any]) -> None:
        if self.writer:
            atomic_write_text(self.path / "config.json", json.dumps(provenance, indent=1, sort_keys=True))

    def write_text(self, name: str, text: str) -> None:
        if self.writer:
            atomic_write_text(self.path / name, text)

    def read_text(self, name: str) -> str | None:
        path = self.path / name
        return path.read_text().strip() if path.is_file() else None

    def write_summary(self, out: Path, cfg: RunConfig, steps_done: int, config_hash: str) -> None:
        """The run's outcome in one small JSON (the workflow's output of a training job)."""
        status = json.loads((self.path / "status.json").read_text())
        rows = [json.loads(line) for line in (self.path / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last_val = next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None)
        last_loss = next((r["loss"] for r in reversed(rows) if "loss" in r), None)
        model = self.path / "model" / "model.safetensors"
        summary = {
            "run_dir": str(self.path),
            "status": status["status"],
            "reason": status.get("reason", ""),
            "steps": cfg.train.steps,
            "steps_done": steps_done,
            "tokens": steps_done * cfg.train.batch_size * cfg.train.seq_len,
            "final_train_loss": last_loss,
            "final_val_loss": last_val if status["status"] == "completed" else None,
            "model": str(model) if model.is_file() else None,
            "config_hash": config_hash,
        }
        atomic_write_text(out, json.dumps(summary, indent=1) + "\n")


def provenance(cfg: RunConfig, config_hash: str, shards: Path, manifest: dict, loader_state: dict) -> dict[str, Any]:
    """What a checkpoint and config.json record about where a run's numbers came from."""
    return {
        "config": to_dict(cfg),
        "model_config": to_dict(cfg.model),
        "train_config": to_dict(cfg.train),
        "config_hash": config_hash,
        "loader": loader_state,
        "git_sha": git_sha(),
        "data": {
            "shards": str(shards),
            "sha256": shard_checksums(manifest),
            "tokenizer_sha256": manifest.get("tokenizer_sha256"),
        },
        "torch": torch.__version__,
    }


def is_stale(out: Path, current_hash: str, data_sha256: dict[str, str] | None) -> str | None:
    """The recorded config hash of RUN_DIR when it holds a run of another configuration or of other data."""
    sidecar = out / "config.json"
    if not sidecar.is_file():
        return None
    recorded = json.loads(sidecar.read_text())
    old = recorded.get("config_hash")
    other_data = data_sha256 is not None and recorded.get("data", {}).get("sha256") != data_sha256
    return old if old and (old != current_hash or other_data) else None


def move_stale_run(out: Path, current_hash: str, data_sha256: dict[str, str] | None, rank: int) -> None:
    """Move a run folder written under another configuration (or on other data) out of the way, never delete it.
    Under torchrun only rank 0 moves it; the other ranks wait until it is gone."""
    if rank != 0:
        deadline = time.monotonic() + 300
        while is_stale(out, current_hash, data_sha256) and time.monotonic() < deadline:
            time.sleep(1)
        return
    old = is_stale(out, current_hash, data_sha256)
    if old is None:
        return
    target = out.with_name(f"{out.name}.stale-{old}")
    if target.exists():
        target = out.with_name(f"{out.name}.stale-{old}-{int(time.time())}")
    os.replace(out, target)
    print(f"{out} held a run of another configuration or other data ({old}); moved it to {target}", file=sys.stderr)
