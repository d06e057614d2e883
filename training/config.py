"""The configuration of one training run: which model and schedule (from the scale registry, with overrides), which
data, how the run is carried out, and where it is tracked.

A run config is read from a YAML file plus `key=value` overrides, through the model core's one parser
(models/config.py: YAML 1.2 numbers, unknown keys named, bounds checked). `scale` names a registry entry
(models/registry.py) whose model and train configs the `model:` and `train:` sections override; `arch` picks the
connection variant. The result is fully typed: `RunConfig.model` is a `ModelConfig`, `RunConfig.train` a
`TrainConfig`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from corpus.prepare import DataConfig
from models.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    apply_overrides_to_dict,
    at_least,
    from_dict,
    load_yaml,
    merge_overrides,
    to_dict,
    validate_model_config,
    validate_train_config,
)
from models.registry import get_scale


@dataclass
class RunOptions:
    """How the run is carried out; none of it changes the model or the schedule."""

    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast for F; connections stay float32
    grad_clip: float = at_least(1.0, 0)  # max global gradient norm; 0 = no clipping
    micro_batch: int = at_least(0, 0)  # sequences per forward/backward (gradient accumulation); 0 = the whole batch
    eval_interval: int = at_least(50, 0)  # 0 = only at the start and the end
    eval_batches: int = at_least(4, 1)
    log_interval: int = at_least(1, 1)
    diag_interval: int = at_least(50, 0)  # Amax diagnostics (HC/mHC); 0 = only at the start and the end
    ckpt_interval: int = at_least(100, 0)  # 0 = only at the end
    keep_checkpoints: int = at_least(2, 1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = at_least(0, 0)  # torch CPU threads; 0 = torch's default
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
    arch: str = "baseline"
    seed: int = at_least(0, 0)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunOptions = field(default_factory=RunOptions)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def build_run_config(data: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from its plain form: the scale's model/train configs with the overrides merged in."""
    data = dict(data)
    scale = data.get("scale", RunConfig.scale)
    if not isinstance(scale, str):
        raise ConfigError(f"scale: expected a scale name, got {scale!r}")
    base = get_scale(scale)
    for section in ("model", "train"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{section}: expected a mapping, got {data[section]!r}")
    model = merge_overrides(to_dict(base.model), data.get("model") or {})
    arch = data.get("arch", model.get("connection", {}).get("arch", RunConfig.arch))
    model["connection"] = {**model.get("connection", {}), "arch": arch}
    data.update(model=model, train=merge_overrides(to_dict(base.train), data.get("train") or {}), arch=arch)
    cfg = from_dict(RunConfig, data)
    validate_model_config(cfg.model)
    validate_train_config(cfg.train)
    if cfg.train.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"train.seq_len ({cfg.train.seq_len}) exceeds model.max_seq_len ({cfg.model.max_seq_len})")
    return cfg


def load_run_config(path: str | None, overrides: list[str]) -> RunConfig:
    """The run config of a YAML file (optional) with `key=value` overrides applied."""
    data: Any = {}
    if path:
        try:
            data = load_yaml(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} cannot be read: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
    return build_run_config(apply_overrides_to_dict(data, overrides))


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything that determines the numbers (not logging, progress or tracking settings)."""
    data = to_dict(cfg)
    for key in ("progress", "log_interval", "threads"):
        data["run"].pop(key, None)
    data.pop("tracking", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
