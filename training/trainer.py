"""The training loop: one (scale, arch, seed) run, resumable exactly from its last checkpoint.

`Trainer` owns the model, the optimizer and the loop; the run folder (training/run_folder.py), the ranks' wrapping
(training/parallel.py), checkpoints (training/checkpoint.py), the measurements (training/validation.py) and
tracking (training/tracking.py) are pieces it uses. On the CPU a resumed loss curve is bit for bit the
uninterrupted one: the same batches (the loader's cursor), the same optimizer state and the same RNG.

A non-finite loss or gradient norm ends the run as `diverged` (a result, not a crash); the metrics of the last
finite step are kept. Everything that can fail on bad input (config, data, a checkpoint of another run) fails in
`__init__`, before anything is written to the run folder.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from corpus import TokenLoader, load_shard, val_batches
from corpus.prepare import prepare_data
from models.config import ConfigError
from models.connections import StreamConnection
from models.kernels import get_ops
from models.transformer import Transformer

from .checkpoint import CheckpointError, latest_checkpoint, read_checkpoint, save_checkpoint, save_model, split_state
from .config import RunConfig, config_hash
from .optim import lr_at, make_optimizer
from .parallel import Parallel, init_distributed
from .run_folder import RunFolder, git_sha, provenance, shard_checksums
from .tracking import NullTracker
from .validation import MappingProbe, validation_loss

DIAGNOSTICS_BATCH = 8  # sequences of the fixed validation batches (and the diagnostics' gradient batch)


class Trainer:
    def __init__(self, cfg: RunConfig, out: Path):
        self.cfg, t = cfg, cfg.train
        self.ranks, self.device = init_distributed(cfg.run.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.local_batch, self.micro = self._batch_split()
        self.folder = RunFolder(out, writer=self.ranks.main)

        self.shards, self.manifest = prepare_data(cfg.data, cfg.model.vocab_size)
        train_tokens, val_tokens = load_shard(self.shards, "train"), load_shard(self.shards, "val")
        # The same validation batches on every rank and for any number of ranks (comparable val_loss).
        self.val = val_batches(val_tokens, min(t.batch_size, DIAGNOSTICS_BATCH), t.seq_len, cfg.run.eval_batches)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if cfg.run.precision == "bf16"
            else contextlib.nullcontext()
        )
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = Transformer(cfg.model).to(self.device)
        self.probe = None if cfg.arch == "baseline" else MappingProbe(self.model, self.val[0], self.autocast)
        self.parallel = Parallel(self.model, self.ranks, cfg.run.parallel)
        self.optimizer = make_optimizer(self.model, t)
        rank, world = self.ranks.rank, self.ranks.world
        self.loader = TokenLoader(train_tokens, self.local_batch, t.seq_len, cfg.seed, rank, world)
        self.step = 0
        self.hash = config_hash(cfg)
        self._resume()
        self.kernel_info: dict[str, Any] = {}

    def _batch_split(self) -> tuple[int, int]:
        """(sequences per rank, sequences per forward/backward)."""
        batch, world = self.cfg.train.batch_size, self.ranks.world
        if batch % world:
            raise ConfigError(f"train.batch_size ({batch}) must be divisible by the {world} ranks")
        local = batch // world
        micro = self.cfg.run.micro_batch or local
        if local % micro:
            raise ConfigError(f"run.micro_batch ({micro}) must divide the per-rank batch ({local})")
        return local, micro

    def _resume(self) -> None:
        root = self.folder.path / "checkpoints"
        ckpt = latest_checkpoint(root) if root.is_dir() else None
        if ckpt is None:
            return
        sidecar, tensors = read_checkpoint(ckpt)
        if sidecar.get("config_hash") != self.hash:
            raise CheckpointError(
                f"{ckpt} was written by a different configuration (config hash {sidecar.get('config_hash')}, "
                f"this run {self.hash}); use another --out"
            )
        if sidecar.get("data", {}).get("sha256") != shard_checksums(self.manifest):
            raise CheckpointError(
                f"{ckpt} was trained on other data than {self.shards} now holds (shard sha256 differ); "
                "use another --out"
            )
        self.parallel.load_states(self.optimizer, *split_state(sidecar, tensors))
        self.loader.load_state_dict(sidecar["loader"])
        self.step = sidecar["step"]
        if self.ranks.main:
            print(f"resuming {self.folder.path} from checkpoint step {self.step}", file=sys.stderr, flush=True)

    # ---- the run ------------------------------------------------------------------------------------
    def run(self, tracker_factory=None) -> str:
        """Train to the end (or divergence); returns the final status. `tracker_factory(trainer)` makes the tracker."""
        self.folder.create()
        self._load_kernels()
        self.write_status("running", resumed_from=self.step or None)
        tracker = None
        try:
            self.folder.trim_logs(self.step)
            self.folder.write_provenance(self.provenance())
            tracker = tracker_factory(self) if tracker_factory else NullTracker()
            status, reason = self._loop(tracker)
            if status == "completed":
                model_state, _ = self.parallel.full_states(self.optimizer)
                if self.ranks.main:
                    save_model(self.folder.path / "model", model_state, self.provenance())
        except BaseException as err:
            self.write_status("failed", f"{type(err).__name__}: {err}")
            if tracker is not None:
                tracker.finish("failed")
            raise
        self.write_status(status, reason)
        if self.ranks.main:
            for name in ("metrics.jsonl", "diagnostics.jsonl", "status.json", "config.json"):
                if (self.folder.path / name).is_file():
                    tracker.log_artifact(self.folder.path / name)
        tracker.finish(status)
        return status

    def _loop(self, tracker) -> tuple[str, str]:
        """Train until `train.steps` or divergence; returns (status, reason)."""
        cfg, t = self.cfg, self.cfg.train
        tokens_per_step = t.batch_size * t.seq_len
        if self.step == 0:
            self.log({"step": 0, "tokens": 0, "val_loss": self.val_loss()}, tracker)
            self.log_diagnostics(tracker)
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            desc=f"{cfg.arch}/{cfg.scale}",
            disable=not (cfg.run.progress and self.ranks.main),
            unit="step",
        )
        with bar:
            while self.step < t.steps:
                lr = lr_at(self.step, t)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                start = time.perf_counter()
                loss, grad_norm = self.train_step()
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    what = "loss" if not math.isfinite(loss) else "gradient norm"
                    return "diverged", f"non-finite {what} at step {self.step + 1} (loss={loss}, grad_norm={grad_norm})"
                self.optimizer.step()
                self.model.update_balance_biases()
                self.step += 1
                elapsed = time.perf_counter() - start
                record: dict[str, Any] = {
                    "step": self.step,
                    "tokens": self.step * tokens_per_step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "step_time_s": elapsed,
                    "tokens_per_s": tokens_per_step / elapsed,
                    "epoch": self.loader.epoch,
                }
                last = self.step == t.steps
                if last or _every(self.step, cfg.run.eval_interval):
                    record["val_loss"] = self.val_loss()
                if last or _every(self.step, cfg.run.log_interval) or "val_loss" in record:
                    self.log(record, tracker)
                if last or _every(self.step, cfg.run.diag_interval):
                    self.log_diagnostics(tracker)
                if last or _every(self.step, cfg.run.ckpt_interval):
                    self.checkpoint()
                    tracker.flush()  # the tracker lags the JSONL by at most one checkpoint interval
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        return "completed", ""

    def train_step(self) -> tuple[float, float]:
        """One optimiser step over the global batch; returns (mean loss, grad norm before clipping)."""
        batch = self.loader.next_batch().to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        n_micro = self.local_batch // self.micro
        loss_sum = torch.zeros((), device=self.device)
        for i in range(n_micro):
            part = batch[i * self.micro : (i + 1) * self.micro]
            with self.parallel.grad_sync(last_micro_batch=i == n_micro - 1):
                with self.autocast:
                    loss = self.parallel.forward(part[:, :-1], targets=part[:, 1:]) / n_micro
                loss.backward()
            loss_sum += loss.detach()
        self.parallel.average(loss_sum)
        params = [p for p in self.model.parameters() if p.requires_grad]  # the same list on every rank
        clip = self.cfg.run.grad_clip if self.cfg.run.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        return loss_sum.item(), grad_norm.item()

    # ---- what the loop records ----------------------------------------------------------------------
    def val_loss(self) -> float:
        return validation_loss(self.model, self.val, self.autocast)

    def log(self, record: dict[str, Any], tracker) -> None:
        self.folder.append("metrics.jsonl", record)
        tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def diagnostics(self) -> dict[str, Any] | None:
        """Per-sub-layer curves of the residual mappings (None for the residual baseline, which has none). The
        mapping gradients are left out (None) with several ranks, where a backward outside the DDP/FSDP wrapper
        would break their collectives."""
        return None if self.probe is None else self.probe.curves(with_gradients=self.ranks.world == 1)

    def log_diagnostics(self, tracker) -> None:
        curves = self.diagnostics()
        if curves is None:
            return
        summary = {"step": self.step, **MappingProbe.summarize(curves)}
        self.folder.append("diagnostics.jsonl", {"step": self.step, **curves})
        self.folder.append("metrics.jsonl", summary)
        tracker.log_metrics({k: v for k, v in summary.items() if k != "step"}, step=self.step)

    def write_status(self, status: str, reason: str = "", **extra: Any) -> None:
        self.folder.write_status(status, reason, self.step, **self.kernel_info, **extra)

    def provenance(self) -> dict[str, Any]:
        return provenance(self.cfg, self.hash, self.shards, self.manifest, self.loader.state_dict())

    def checkpoint(self) -> None:
        model_state, optim_state = self.parallel.full_states(self.optimizer)
        if self.ranks.main:
            root, keep = self.folder.path / "checkpoints", self.cfg.run.keep_checkpoints
            save_checkpoint(root, self.step, model_state, optim_state, self.provenance(), keep=keep)

    def _load_kernels(self) -> None:
        """Record which connection ops this run uses, and load the fused CPU kernels now: their first build (a
        C++ compile, then cached) is timed here instead of inside the first step's step_time_s."""
        if not issubclass(self.model.connection_cls, StreamConnection):
            return
        ops = get_ops(self.cfg.model.connection.kernels, self.device)
        self.kernel_info = {"kernels": ops.BACKEND}
        if hasattr(ops, "extension"):
            start = time.perf_counter()
            ops.extension()
            self.kernel_info["kernel_load_s"] = round(time.perf_counter() - start, 2)

    def tracking_tags(self) -> dict[str, str]:
        cfg = self.cfg
        return {
            "arch": cfg.arch,
            "scale": cfg.scale,
            "seed": str(cfg.seed),
            "git_sha": git_sha(),
            "config_hash": self.hash,
            "run_dir": str(self.folder.path.resolve()),
        }


def _every(step: int, interval: int) -> bool:
    return bool(interval) and step % interval == 0
