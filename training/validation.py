"""Measurements taken during training that are not the step itself: the validation loss, and the curves of the
residual mappings (Amax gains, whether the mechanism operates, the gradient reaching each mapping's parameters)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from models.diagnostics import amax_gain, capture_mappings, mechanism_curves, residual_maps_with
from models.transformer import Transformer


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module, batches: list[torch.Tensor], autocast: contextlib.AbstractContextManager | None = None
) -> float:
    """Mean next-token cross-entropy (nats per token) over fixed batches of token windows [B, T + 1]."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        with autocast or contextlib.nullcontext():
            total += model(batch[:, :-1], targets=batch[:, 1:], reduction="sum").item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count


class MappingProbe:
    """The residual mappings of a model on one fixed validation sequence, compared with the model as built.

    Created from the freshly built model (which a resumed run also builds before loading its checkpoint): its
    step-0 mappings and parameters are what "moved" and "learned" are measured against later."""

    SUMMARY = {  # metrics.jsonl field -> (curve, reduction over sub-layers)
        "amax_single_fwd": ("single_forward", max),
        "amax_single_bwd": ("single_backward", max),
        "amax_composite_fwd": ("composite_forward", max),
        "amax_composite_bwd": ("composite_backward", max),
        "amax_composite_min_col": ("composite_min_col", min),
        "stream_spread_max": ("stream_spread", max),
        "hres_learned_max": ("hres_learned", max),
        "hres_from_init_max": ("hres_from_init", max),
        "hres_from_uniform_max": ("hres_from_uniform", max),
        "grad_res_max": ("grad_res", max),
    }

    @torch.no_grad()
    def __init__(self, model: Transformer, batch: torch.Tensor, autocast: contextlib.AbstractContextManager):
        self.model, self.batch, self.autocast = model, batch, autocast
        self.init_params = [{k: v.detach().clone() for k, v in c.named_parameters()} for c in model.connections()]
        with self._eval(), capture_mappings(model) as records:
            model(self.sequence())
        self.init_res = [r["H_res"][0].double().mean(0).tolist() for r in records]

    def sequence(self) -> torch.Tensor:
        return self.batch[:1, :-1].to(next(self.model.parameters()).device)

    @contextlib.contextmanager
    def _eval(self):
        self.model.eval()  # no MoE load counting; no other layer behaves differently
        try:
            with self.autocast:
                yield
        finally:
            self.model.train()

    def curves(self, with_gradients: bool) -> dict[str, Any]:
        """Per-sub-layer curves: the Amax gains on the sequence (models.diagnostics.amax_gain), whether the mechanism
        operates there (models.diagnostics.mechanism_curves) and, when asked, the gradient norm reaching each
        mapping's parameters (None per sub-layer otherwise)."""
        with torch.no_grad(), self._eval(), capture_mappings(self.model) as records:
            self.model(self.sequence())
            # the step-0 parameters (full tensors, taken before any wrapping) on today's inputs
            learned_from = residual_maps_with(self.model, records, self.init_params)
        curves = amax_gain([r["H_res"][0] for r in records])
        curves.update(mechanism_curves(records, self.init_res, learned_from))
        curves.update(self.mapping_gradients() if with_gradients else self._no_gradients())
        return curves

    def _no_gradients(self) -> dict[str, list[None]]:
        return {f"grad_{key}": [None] * len(self.model.connections()) for key in ("res", "pre", "post")}

    def mapping_gradients(self) -> dict[str, list[float | None]]:
        """Gradient norm reaching the parameters of H_res, H_pre and H_post of every sub-layer, from one forward and
        backward pass on the whole batch (the same batch every time, so the curves are comparable over training).
        The caller's gradients are cleared before and after: the optimizer's of the last step are not needed."""
        self.model.zero_grad(set_to_none=True)
        batch = self.batch.to(next(self.model.parameters()).device)
        with self._eval():
            loss = self.model(batch[:, :-1], targets=batch[:, 1:])
        loss.backward()
        norms = [c.mapping_grad_norms() for c in self.model.connections()]
        self.model.zero_grad(set_to_none=True)
        return {f"grad_{key}": [g[key] for g in norms] for key in ("res", "pre", "post")}

    @classmethod
    def summarize(cls, curves: dict[str, Any]) -> dict[str, float]:
        """The extremes over sub-layers that go into metrics.jsonl (curves without a value are left out)."""
        out = {}
        for name, (key, pick) in cls.SUMMARY.items():
            values = [v for v in curves.get(key) or [] if v is not None]
            if values:
                out[name] = pick(values)
        return out
