"""The fused head + cross-entropy (models/loss.py) against the plain logits -> F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.loss import CHUNK_TOKENS, linear_cross_entropy
from models.transformer import Transformer
from tests.helpers import tiny_config


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("tokens", [7, CHUNK_TOKENS, 2 * CHUNK_TOKENS + 37])  # one partial, one exact, a remainder
def test_fused_loss_and_gradients_equal_the_plain_ones(tokens, reduction):
    torch.manual_seed(0)
    hidden = torch.randn(tokens, 24, requires_grad=True)
    weight = (0.3 * torch.randn(50, 24)).requires_grad_()
    targets = torch.randint(0, 50, (tokens,))
    upstream = torch.tensor(1.7)
    plain = F.cross_entropy(hidden @ weight.t(), targets, reduction=reduction)
    plain_grads = torch.autograd.grad(plain, [hidden, weight], upstream)
    fused = linear_cross_entropy(hidden, weight, targets, reduction)
    fused_grads = torch.autograd.grad(fused, [hidden, weight], upstream)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-6)
    for f, p in zip(fused_grads, plain_grads, strict=True):
        # the weight's gradient sums over the tokens (in another order): rounding relative to its scale
        torch.testing.assert_close(f, p, atol=1e-6 * p.abs().max().item(), rtol=1e-5)


def test_fused_loss_without_grad_and_bad_reduction():
    hidden, weight, targets = torch.randn(9, 8), torch.randn(5, 8), torch.randint(0, 5, (9,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, "sum")
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.t(), targets, reduction="sum"))
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, targets, "none")


@pytest.mark.parametrize("autocast", [False, True])
def test_model_with_targets_returns_the_cross_entropy_of_its_logits(autocast):
    torch.manual_seed(0)
    model = Transformer(tiny_config("mhc"))
    tokens = torch.randint(0, 256, (2, 13))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(tokens[:, :-1])
        loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    plain = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    torch.testing.assert_close(loss, plain, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(loss, [model.head.weight, model.embed.weight])
    plain_grads = torch.autograd.grad(plain, [model.head.weight, model.embed.weight])
    for f, p in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(f, p, atol=1e-5, rtol=1e-4)
