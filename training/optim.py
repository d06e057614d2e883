"""The optimiser's parameter groups and the learning-rate schedule (Table 5: AdamW, linear warm-up, step decay)."""

from __future__ import annotations

import torch

from models.config import TrainConfig


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


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay), lr=train.lr, betas=train.betas, eps=train.eps, fused=False
    )
