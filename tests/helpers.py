"""Shared test helpers."""

from __future__ import annotations

import dataclasses

from models.config import ModelConfig, MoEConfig
from models.registry import model_config


def tiny_config(arch: str = "baseline", moe: bool = False, **connection) -> ModelConfig:
    """The `tiny` scale (2 blocks, dim 64), optionally with a small MoE in the second block."""
    cfg = model_config("tiny", arch, **connection)
    if moe:
        ffn = dataclasses.replace(
            cfg.ffn, kind="moe", n_dense_layers=1, moe=MoEConfig(n_routed=4, n_active=2, n_shared=1, expert_dim=32)
        )
        cfg = dataclasses.replace(cfg, ffn=ffn)
    return cfg


def tiny_run_overrides(arch: str, shards, steps: int) -> list[str]:
    """The `key=value` list of a few-step training run of the tiny scale (the variants' trainer smoke tests)."""
    return [
        "scale=tiny",
        f"arch={arch}",
        "seed=0",
        f"data.shards_dir={shards}",
        f"train.steps={steps}",
        "train.batch_size=4",
        "train.seq_len=32",
        "train.warmup_steps=2",
        "run.diag_interval=3",
        f"run.eval_interval={steps}",
        "run.eval_batches=1",
        "run.ckpt_interval=1000",
        "run.progress=false",
    ]
