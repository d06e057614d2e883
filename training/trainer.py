"""Training: `python -m models.train --config FILE [--set key=value ...] --out RUN_DIR`.

One command trains one (scale, arch, seed) run and is safe to rerun: it resumes exactly from the last
checkpoint (same batches, same optimizer state, same RNG), and on the CPU the resumed loss curve is bit for
bit the uninterrupted one. What it writes in RUN_DIR:

- `metrics.jsonl`: the source of truth, one JSON line per logged step: step, tokens, loss, lr, grad_norm,
  step_time_s, tokens_per_s, epoch; val_loss at evaluation steps; for HC/mHC the Amax gain summaries
  (max over sub-layers of the single-layer and composite forward/backward gains, min column sum) at
  `run.diag_interval`. Full per-sub-layer Amax curves go to `diagnostics.jsonl`.
- `status.json`: running | completed | diverged | failed, with the reason.
- `checkpoints/` (see models/checkpoint.py) and, at the end, `model/model.safetensors` + `model/model.json`.

A non-finite loss or gradient norm ends the run as `diverged` with exit code 0 (a result, not a crash); the
metrics of the last finite step are kept. Bad input (an unknown config key, a shard whose sha256 does not
match its manifest, a corrupted checkpoint) is an error naming the problem, exit code 2, before anything is
written to RUN_DIR.

Multi-process: run under `torchrun --nproc-per-node N`; every rank draws its slice of each global batch, DDP
averages the gradients, rank 0 writes the files. The global batch (`train.batch_size`) stays the same.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from common.allocator import keep_freed_memory
from common.gpu_slots import GpuSlotError, resolve_device
from corpus import (
    HF_PREFIX,
    DataError,
    build_shards,
    load_shard,
    read_manifest,
    resolve_data_root,
    train_tokenizer,
    val_batches,
)
from corpus import TokenLoader as _TokenLoader
from models.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    from_dict,
    merge_overrides,
    to_dict,
    validate_model_config,
)
from models.connections import StreamConnection
from models.diagnostics import amax_gain, capture_mappings, mechanism_curves, residual_maps_with
from models.kernels import get_ops
from models.registry import get_scale
from models.transformer import Transformer
from training.checkpoint import (
    CheckpointError,
    atomic_write_text,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
    save_model,
    split_state,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DataConfig:
    root: str | None = None  # data root; None: $MHC_DATA_ROOT, else ../shared/data
    shards_dir: str | None = None  # tokenizer + shards cache; None: results/data/bpe<vocab>[-docs<max_docs>]
    max_docs: int | None = None  # use only the first documents of the corpus (smoke runs)
    # Stream a Hugging Face dataset instead of the local corpus (needs hub access and `datasets`), e.g.
    # "HuggingFaceFW/fineweb-edu:sample-10BT"; set max_docs to bound it.
    hf_dataset: str | None = None
    val_fraction: float = 0.01


@dataclass
class RunOptions:
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast for F; connections stay float32
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    micro_batch: int = 0  # sequences per forward/backward (gradient accumulation); 0 = the whole batch
    eval_interval: int = 50
    eval_batches: int = 4
    log_interval: int = 1
    diag_interval: int = 50  # Amax diagnostics (HC/mHC); 0 = off
    ckpt_interval: int = 100
    keep_checkpoints: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 = torch's default
    progress: bool = True
    parallel: Literal["ddp", "fsdp"] = "ddp"  # with several ranks (torchrun): DDP or FSDP2 (fully_shard)


@dataclass
class TrackingConfig:
    enabled: bool = False
    tracking_uri: str = "sqlite:///results/mlflow.db"
    experiment: str = "mhc-replication"


@dataclass
class RunConfig:
    scale: str = "tiny"
    arch: Literal["baseline", "gain", "hc", "mhc"] = "baseline"
    seed: int = 0
    model: dict = field(default_factory=dict)  # overrides of the scale's model config
    train: dict = field(default_factory=dict)  # overrides of the scale's optimiser/schedule config
    data: DataConfig = field(default_factory=DataConfig)
    run: RunOptions = field(default_factory=RunOptions)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def resolve(cfg: RunConfig) -> tuple[ModelConfig, TrainConfig]:
    """The scale's model and train configs with this run's overrides and arch, validated."""
    scale = get_scale(cfg.scale)
    model_dict = merge_overrides(to_dict(scale.model), cfg.model)
    model_dict["connection"] = dict(model_dict.get("connection", {}), arch=cfg.arch)
    model = from_dict(ModelConfig, model_dict, _path="model")
    validate_model_config(model)
    train = from_dict(TrainConfig, merge_overrides(to_dict(scale.train), cfg.train), _path="train")
    if train.seq_len > model.max_seq_len:
        raise ConfigError(f"train.seq_len ({train.seq_len}) exceeds model.max_seq_len ({model.max_seq_len})")
    return model, train


def set_nested(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise ConfigError(f"cannot set '{dotted}': '{part}' is not a mapping")
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def parse_value(raw: str) -> Any:
    """A `--set` value: JSON first (so 1e-20 is a number, which YAML 1.1 would read as a string), else YAML."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return yaml.safe_load(raw)


def load_run_config(path: str | None, overrides: list[str]) -> RunConfig:
    data: dict = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        set_nested(data, key, parse_value(raw))
    return from_dict(RunConfig, data)


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate of update `step` (0-based): linear warm-up, then Table 5's step decay."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    frac = step / max(1, train.steps)
    scale = 1.0
    for at, rate in zip(train.decay_at, train.decay_rates, strict=True):
        if frac >= at:
            scale = rate
    return train.lr * scale


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases, gating scalars, MoE biases or HC's static maps
    (the HC paper decays only the dynamic parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "static_" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything that determines the numbers (not logging, progress or tracking settings)."""
    data = to_dict(cfg)
    for key in ("progress", "log_interval", "threads"):
        data["run"].pop(key, None)
    data.pop("tracking", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """The ranks and this process's device. A single process claims a free GPU of the machine for itself
    (common.gpu_slots); the ranks of a multi-GPU run use the GPUs their launcher claimed, one per local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), torch.device(resolve_device(device_pref))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref.startswith("cuda"):
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), world, local), device


def prepare_data(cfg: RunConfig, vocab_size: int, show: bool) -> tuple[Path, dict]:
    """Tokenizer and shards for this vocabulary, built once and then reused (sha256-checked on load)."""
    d = cfg.data
    source = "-" + d.hf_dataset.replace("/", "_").replace(":", "_") if d.hf_dataset else ""
    shards = Path(d.shards_dir) if d.shards_dir else REPO_ROOT / "results" / "data" / (
        f"bpe{vocab_size}{source}" + (f"-docs{d.max_docs}" if d.max_docs else "")
    )  # fmt: skip
    if not (shards / "manifest.json").is_file():
        corpus = f"{HF_PREFIX}{d.hf_dataset}" if d.hf_dataset else resolve_data_root(d.root) / "corpus"
        if not d.hf_dataset and not corpus.is_dir():
            raise DataError(f"corpus directory {corpus} does not exist")
        shards.mkdir(parents=True, exist_ok=True)
        lock = shards / ".build.lock"
        import fcntl

        with open(lock, "w") as fh:  # concurrent jobs: one builds, the others wait and reuse
            fcntl.flock(fh, fcntl.LOCK_EX)
            if not (shards / "manifest.json").is_file():
                tok_path = shards / "tokenizer.json"
                tokenizer = train_tokenizer(corpus, vocab_size, tok_path, max_docs=d.max_docs)
                build_shards(corpus, tokenizer, shards, val_fraction=d.val_fraction, max_docs=d.max_docs)
    manifest = read_manifest(shards)
    if manifest.get("vocab_size", 0) > vocab_size:
        raise DataError(f"tokenizer in {shards} has {manifest['vocab_size']} tokens; the model only {vocab_size}")
    return shards, manifest


class Trainer:
    def __init__(self, cfg: RunConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.model_cfg, self.train_cfg = resolve(cfg)
        self.dist, self.device = init_distributed(cfg.run.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        t = self.train_cfg
        if t.batch_size % self.dist.world:
            raise ConfigError(f"train.batch_size ({t.batch_size}) must be divisible by the {self.dist.world} ranks")
        if cfg.run.keep_checkpoints < 1:
            raise ConfigError(f"run.keep_checkpoints must be >= 1, got {cfg.run.keep_checkpoints}")
        self.local_batch = t.batch_size // self.dist.world
        self.micro = cfg.run.micro_batch or self.local_batch
        if self.local_batch % self.micro:
            raise ConfigError(f"run.micro_batch ({self.micro}) must divide the per-rank batch ({self.local_batch})")

        # Everything that can fail on bad input happens before RUN_DIR is touched.
        self.shards, self.manifest = prepare_data(cfg, self.model_cfg.vocab_size, self.dist.main)
        self.train_tokens = load_shard(self.shards, "train")
        self.val_tokens = load_shard(self.shards, "val")
        # The same validation batches on every rank and for any number of ranks (comparable val_loss).
        self.val = val_batches(self.val_tokens, min(t.batch_size, 8), t.seq_len, cfg.run.eval_batches)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if cfg.run.precision == "bf16"
            else contextlib.nullcontext()
        )
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = Transformer(self.model_cfg).to(self.device)
        # The step-0 state of the residual mappings, taken from the freshly built model (which a resumed run also
        # builds before loading its checkpoint): what the diagnostics measure "moved" and "learned" against.
        self.init_res, self.init_connection_params = self._initial_mappings()
        self.fsdp = self.dist.world > 1 and cfg.run.parallel == "fsdp"
        if self.fsdp:  # FSDP2: shard every block, then the root (embedding, head); params become DTensors
            from torch.distributed.fsdp import fully_shard

            for block in self.model.blocks:
                fully_shard(block)
            fully_shard(self.model)
            if self.model_cfg.ffn.kind == "moe":
                # experts a rank routed no token to still take part in the reduce-scatter (else: deadlock)
                self.model.set_reduce_scatter_unused_params(True)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, t.weight_decay), lr=t.lr, betas=t.betas, eps=t.eps, fused=False
        )
        self.loader = _TokenLoader(
            self.train_tokens, self.local_batch, t.seq_len, cfg.seed, self.dist.rank, self.dist.world
        )
        self.step = 0
        self.hash = config_hash(cfg)
        ckpt = latest_checkpoint(out / "checkpoints") if (out / "checkpoints").is_dir() else None
        if ckpt is not None:
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
            self.load_states(*split_state(sidecar, tensors))
            self.loader.load_state_dict(sidecar["loader"])
            self.step = sidecar["step"]
            if self.dist.main:
                print(f"resuming {out} from checkpoint step {self.step}", file=sys.stderr, flush=True)
        self.ddp = self.model
        if self.dist.world > 1 and not self.fsdp:
            moe = self.model_cfg.ffn.kind == "moe"
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=moe)

    # ---- state (plain, DDP or FSDP2) ----------------------------------------------------------------
    def full_states(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Unsharded model and optimizer state dicts (a collective under FSDP: every rank must call it)."""
        if not self.fsdp:
            return self.model.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=opts)
        return model_state, get_optimizer_state_dict(self.model, self.optimizer, options=opts)

    def load_states(self, model_state: dict[str, torch.Tensor], optim_state: dict) -> None:
        try:
            if not self.fsdp:
                self.model.load_state_dict(model_state, strict=True)
                self.optimizer.load_state_dict(optim_state)
                return
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, model_state, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, optim_state, options=opts)
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"checkpoint does not fit this model/optimizer: {err}") from None

    # ---- files -------------------------------------------------------------------------------------
    def write_status(self, status: str, reason: str = "", **extra: Any) -> None:
        if self.dist.main:
            payload = {"status": status, "reason": reason, "step": self.step, "updated": time.time()}
            payload.update(self.kernel_info, **extra)
            atomic_write_text(self.out / "status.json", json.dumps(payload, indent=1) + "\n")

    def _trim_log(self, name: str) -> None:
        """Drop records past the resumed checkpoint (written after it by an interrupted run), all records when
        there is no checkpoint (step 0 is logged again), and a line torn by a crash mid-append."""
        path = self.out / name
        if not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if self.step > 0 and record["step"] <= self.step:
                keep.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in keep))

    def append(self, name: str, record: dict) -> None:
        if self.dist.main:
            with open(self.out / name, "a") as f:
                f.write(json.dumps(record) + "\n")

    def sidecar(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "model_config": to_dict(self.model_cfg),
            "train_config": to_dict(self.train_cfg),
            "config_hash": self.hash,
            "loader": self.loader.state_dict(),
            "git_sha": git_sha(),
            "data": {
                "shards": str(self.shards),
                "sha256": shard_checksums(self.manifest),
                "tokenizer_sha256": self.manifest.get("tokenizer_sha256"),
            },
            "torch": torch.__version__,
        }

    def checkpoint(self) -> None:
        model_state, optim_state = self.full_states()
        if self.dist.main:
            save_checkpoint(
                self.out / "checkpoints",
                self.step,
                model_state,
                optim_state,
                self.sidecar(),
                keep=self.cfg.run.keep_checkpoints,
            )

    # ---- measurements ------------------------------------------------------------------------------
    @torch.no_grad()
    def val_loss(self) -> float:
        self.model.eval()
        total, count = 0.0, 0
        for batch in self.val:
            batch = batch.to(self.device)
            with self.autocast:
                total += self.model(batch[:, :-1], targets=batch[:, 1:], reduction="sum").item()
            count += batch[:, 1:].numel()
        self.model.train()
        return total / count

    @torch.no_grad()
    def _initial_mappings(self) -> tuple[list | None, list[dict[str, torch.Tensor]] | None]:
        """(token-averaged H_res per sub-layer on the diagnostics sequence, a copy of every connection's parameters)
        of the model as built, before any training; (None, None) for the residual baseline."""
        if self.model_cfg.connection.arch == "baseline":
            return None, None
        params = [{k: v.detach().clone() for k, v in c.named_parameters()} for c in self.model.connections()]
        self.model.eval()
        with capture_mappings(self.model) as records, self.autocast:
            self.model(self.val[0][:1, :-1].to(self.device))
        self.model.train()
        return [r["H_res"][0].double().mean(0).tolist() for r in records], params

    def diagnostics(self) -> dict[str, Any] | None:
        """Per-sub-layer curves of the residual mappings (None for the residual baseline, which has none): the Amax
        gains on the first validation sequence (models.diagnostics.amax_gain), whether the mechanism operates there
        (models.diagnostics.mechanism_curves: stream spread, how far H_res moved and how much of that its learned
        parameters did, H_pre/H_post spread across streams) and the gradient norm reaching each mapping's parameters
        (`mapping_gradients`)."""
        if self.model_cfg.connection.arch == "baseline":
            return None
        self.model.eval()
        seq = self.val[0][:1, :-1].to(self.device)
        with torch.no_grad(), capture_mappings(self.model) as records, self.autocast:
            self.model(seq)
            # the step-0 parameters (full tensors, taken before any wrapping) on today's inputs
            learned_from = residual_maps_with(self.model, records, self.init_connection_params)
        self.model.train()
        curves = amax_gain([r["H_res"][0] for r in records])
        curves.update(mechanism_curves(records, self.init_res, learned_from))
        curves.update(self.mapping_gradients())
        return curves

    def mapping_gradients(self) -> dict[str, list[float | None]]:
        """Gradient norm reaching the parameters of H_res, H_pre and H_post of every sub-layer, from one forward and
        backward pass on the first validation batch (the same batch every time, so the curves are comparable over
        training; the optimizer's gradients of the last step are gone by then and not needed again). Left out
        (None) with several ranks, where a backward outside the DDP/FSDP wrapper would break their collectives."""
        names = ("grad_res", "grad_pre", "grad_post")
        connections = self.model.connections()
        if self.dist.world > 1:
            return {name: [None] * len(connections) for name in names}
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()  # no MoE load counting; no other layer behaves differently
        batch = self.val[0].to(self.device)
        with self.autocast:
            loss = self.model(batch[:, :-1], targets=batch[:, 1:])
        loss.backward()
        norms = [c.mapping_grad_norms() for c in connections]
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        return {f"grad_{key}": [g[key] for g in norms] for key in ("res", "pre", "post")}

    # ---- the loop ----------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        """One optimiser step over the global batch; returns (mean loss, grad norm before clipping)."""
        batch = self.loader.next_batch().to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        n_micro = self.local_batch // self.micro
        loss_sum = torch.zeros((), device=self.device)
        for i in range(n_micro):
            part = batch[i * self.micro : (i + 1) * self.micro]
            sync = contextlib.nullcontext()
            if self.fsdp:
                self.model.set_requires_gradient_sync(i == n_micro - 1)
            elif self.dist.world > 1 and i < n_micro - 1:
                sync = self.ddp.no_sync()
            with sync:
                with self.autocast:
                    loss = self.ddp(part[:, :-1], targets=part[:, 1:]) / n_micro
                loss.backward()
            loss_sum += loss.detach()
        if self.dist.world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            for moe in self.model.moe_layers():
                dist.all_reduce(moe.load)  # balance on the global load
        params = [p for p in self.model.parameters() if p.requires_grad]  # the same list on every rank
        clip = self.cfg.run.grad_clip if self.cfg.run.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        return loss_sum.item(), grad_norm.item()

    kernel_info: dict[str, Any] = {}

    def _load_kernels(self) -> None:
        """Record which connection ops this run uses, and load the fused CPU kernels now: their first build (a
        C++ compile, then cached) is timed here instead of inside the first step's step_time_s."""
        if not issubclass(self.model.connection_cls, StreamConnection):
            return
        ops = get_ops(self.model_cfg.connection.kernels, self.device)
        self.kernel_info = {"kernels": ops.BACKEND}
        if hasattr(ops, "extension"):
            start = time.perf_counter()
            ops.extension()
            self.kernel_info["kernel_load_s"] = round(time.perf_counter() - start, 2)

    def run(self) -> int:
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._load_kernels()
        self.write_status("running", resumed_from=self.step or None)
        tracker = None
        try:
            if self.dist.main:
                self._trim_log("metrics.jsonl")
                self._trim_log("diagnostics.jsonl")
                atomic_write_text(self.out / "config.json", json.dumps(self.sidecar(), indent=1, sort_keys=True))
            tracker = self._make_tracker()
            status, reason = self._loop(tracker)
            if status == "completed":
                model_state, _ = self.full_states()
                if self.dist.main:
                    save_model(self.out / "model", model_state, self.sidecar())
        except BaseException as err:
            self.write_status("failed", f"{type(err).__name__}: {err}")
            if tracker is not None:
                tracker.finish("failed")
            raise
        self.write_status(status, reason)
        if self.dist.main:
            for name in ("metrics.jsonl", "diagnostics.jsonl", "status.json", "config.json"):
                if (self.out / name).is_file():
                    tracker.log_artifact(self.out / name)
        tracker.finish(status)
        return 0

    def write_summary(self, path: Path) -> None:
        """The run's outcome in one small JSON (the workflow's output of a training job)."""
        status = json.loads((self.out / "status.json").read_text())
        rows = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last_val = next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None)
        last_loss = next((r["loss"] for r in reversed(rows) if "loss" in r), None)
        model = self.out / "model" / "model.safetensors"
        summary = {
            "run_dir": str(self.out),
            "status": status["status"],
            "reason": status.get("reason", ""),
            "steps": self.train_cfg.steps,
            "steps_done": self.step,
            "tokens": self.step * self.train_cfg.batch_size * self.train_cfg.seq_len,
            "final_train_loss": last_loss,
            "final_val_loss": last_val if status["status"] == "completed" else None,
            "model": str(model) if model.is_file() else None,
            "config_hash": self.hash,
        }
        atomic_write_text(path, json.dumps(summary, indent=1) + "\n")

    def _make_tracker(self):
        from training.tracking import make_tracker

        cfg, t = self.cfg, self.train_cfg
        tracker = make_tracker(
            cfg.tracking.enabled and self.dist.main,
            tracking_uri=cfg.tracking.tracking_uri,
            experiment=cfg.tracking.experiment,
            run_name=display_name(self.out),
            params={"config": to_dict(cfg), "model": to_dict(self.model_cfg), "train": to_dict(t)},
            tags={
                "arch": cfg.arch,
                "scale": cfg.scale,
                "seed": str(cfg.seed),
                "git_sha": git_sha(),
                "config_hash": self.hash,
                "run_dir": str(self.out.resolve()),
            },
            resume_run_id=self._tracking_run_id(),
        )
        if self.dist.main and cfg.tracking.enabled:
            atomic_write_text(self.out / "mlflow_run_id", tracker.run_id + "\n")
        return tracker

    def _loop(self, tracker) -> tuple[str, str]:
        """Train until `train.steps` or divergence; returns (status, reason)."""
        cfg, t = self.cfg, self.train_cfg
        tokens_per_step = t.batch_size * t.seq_len
        if self.step == 0:
            self.log({"step": 0, "tokens": 0, "val_loss": self.val_loss()}, tracker)
            self._diagnostics(tracker)
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            desc=f"{cfg.arch}/{cfg.scale}",
            disable=not (cfg.run.progress and self.dist.main),
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
                if last or (cfg.run.eval_interval and self.step % cfg.run.eval_interval == 0):
                    record["val_loss"] = self.val_loss()
                if last or self.step % max(1, cfg.run.log_interval) == 0 or "val_loss" in record:
                    self.log(record, tracker)
                if last or (cfg.run.diag_interval and self.step % cfg.run.diag_interval == 0):
                    self._diagnostics(tracker)
                if last or (cfg.run.ckpt_interval and self.step % cfg.run.ckpt_interval == 0):
                    self.checkpoint()
                    tracker.flush()  # MLflow lags the JSONL by at most one checkpoint interval
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        return "completed", ""

    def _tracking_run_id(self) -> str | None:
        path = self.out / "mlflow_run_id"
        return path.read_text().strip() if path.is_file() else None

    def log(self, record: dict[str, Any], tracker) -> None:
        self.append("metrics.jsonl", record)
        tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def _diagnostics(self, tracker) -> None:
        curves = self.diagnostics()
        if curves is None:
            return

        def extreme(key: str, pick=max) -> float | None:
            values = [v for v in curves.get(key) or [] if v is not None]
            return pick(values) if values else None

        summary = {
            "step": self.step,
            "amax_single_fwd": extreme("single_forward"),
            "amax_single_bwd": extreme("single_backward"),
            "amax_composite_fwd": extreme("composite_forward"),
            "amax_composite_bwd": extreme("composite_backward"),
            "amax_composite_min_col": extreme("composite_min_col", min),
            "stream_spread_max": extreme("stream_spread"),
            "hres_learned_max": extreme("hres_learned"),
            "hres_from_init_max": extreme("hres_from_init"),
            "hres_from_uniform_max": extreme("hres_from_uniform"),
            "grad_res_max": extreme("grad_res"),
        }
        summary = {k: v for k, v in summary.items() if v is not None}
        self.append("diagnostics.jsonl", {"step": self.step, **curves})
        self.append("metrics.jsonl", summary)
        tracker.log_metrics({k: v for k, v in summary.items() if k != "step"}, step=self.step)


def display_name(run_dir: Path) -> str:
    """A readable MLflow run name: the path below the nearest `runs/` folder (the workflow's
    results/<tier>/runs/<scale>/<variant>/seed<N> -> "<scale>/<variant>/seed<N>"), else the folder name."""
    parts = run_dir.resolve().parts
    if "runs" in parts[:-1]:
        below = parts[len(parts) - 1 - parts[::-1].index("runs") + 1 :]
        return "/".join(below)
    return run_dir.name


def read_tracking_file(path: Path) -> tuple[str, str]:
    """(tracking URI, experiment) from `training.tracking init --out`'s file; ("", "") when it says tracking is off."""
    try:
        data = json.loads(path.read_text())
        if data.get("enabled") is False:
            return "", ""
        (experiment,) = data["experiments"]
        return data["tracking_uri"], experiment
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"tracking file {path} is unreadable or not one experiment ({err})") from None


def shard_checksums(manifest: dict) -> dict[str, str]:
    return {k: v["sha256"] for k, v in manifest["shards"].items()}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML run config (scale, arch, seed, model/train overrides, data, run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    parser.add_argument(
        "--summary",
        default=None,
        help="write a JSON summary here once the run has ended (completed or diverged); never on a crash",
    )
    parser.add_argument(
        "--replace-stale",
        action="store_true",
        help="if RUN_DIR holds a run of a different configuration, move it aside to RUN_DIR.stale-<hash> and start "
        "afresh (the workflow uses this when a run's settings were edited); without it that is an error",
    )
    # Tracking settings as flags of their own, so a workflow can pass them without making them part of the
    # run's identity (editing the tracking URI must not retrain anything). An empty value leaves the config's.
    parser.add_argument("--tracking-uri", default="", help="enable MLflow tracking to this URI")
    parser.add_argument("--experiment", default="", help="MLflow experiment name")
    parser.add_argument(
        "--tracking-file",
        default="",
        help="enable tracking with the URI and (single) experiment of this JSON, as `training.tracking init --out` "
        "writes it",
    )
    args = parser.parse_args(argv)
    keep_freed_memory()  # no page faults on every step's fresh activations (models/allocator.py)
    # A SIGTERM (preemption, torchrun tearing down, a timeout) becomes an exception, so status.json says failed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"terminated by signal {signum}"))
    try:
        cfg = load_run_config(args.config, args.overrides)
        if args.tracking_file:
            args.tracking_uri, args.experiment = read_tracking_file(Path(args.tracking_file))
        if args.tracking_uri:
            cfg.tracking.enabled, cfg.tracking.tracking_uri = True, args.tracking_uri
        if args.experiment:
            cfg.tracking.experiment = args.experiment
        if args.replace_stale:
            shards = Path(cfg.data.shards_dir) / "manifest.json" if cfg.data.shards_dir else None
            data = shard_checksums(json.loads(shards.read_text())) if shards and shards.is_file() else None
            move_stale_run(Path(args.out), config_hash(cfg), data, int(os.environ.get("RANK", "0")))
        trainer = Trainer(cfg, Path(args.out))
    except (ConfigError, DataError, CheckpointError, GpuSlotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        code = trainer.run()
        if args.summary and trainer.dist.main:
            trainer.write_summary(Path(args.summary))
        return code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
