"""Next-token cross-entropy fused with the output head, computed in chunks of tokens.

The plain path materialises the logits of every token ([tokens, vocab] in float32: 32 MB for 2048 tokens of a
4096-word vocabulary), then walks over them for the log-softmax, the loss, and again in the backward. On the
CPU those walks are memory-bound and, at the small widths of the CPU scales, cost as much as the rest of the
step. Here each chunk's logits are made, turned into the loss and into the gradient of the logits
(softmax - one-hot) while still in cache, and multiplied straight into the gradients of the hidden states and of
the head's weight; the backward only scales those. The same loss and gradients as
`F.cross_entropy(hidden @ weight.T, targets)` to float32 rounding (tests/test_loss.py).
"""

from __future__ import annotations

import torch

CHUNK_TOKENS = 256  # logits of a chunk: 256 x vocab floats (4 MB at vocab 4096), cache-sized


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str):
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = hidden.new_zeros((), dtype=torch.float32)
        d_hidden = torch.empty_like(hidden) if grads else None
        d_weight = torch.zeros_like(weight) if grads else None
        for start in range(0, hidden.shape[0], CHUNK_TOKENS):
            h = hidden[start : start + CHUNK_TOKENS]
            t = targets[start : start + CHUNK_TOKENS]
            logits = h @ weight.t()
            target_logit = logits.gather(1, t.unsqueeze(1)).squeeze(1)
            # log-sum-exp in place: one exp pass over the chunk, whose result is reused as the softmax
            peak = logits.amax(dim=-1, keepdim=True)
            e = logits.sub_(peak).exp_()
            sums = e.sum(dim=-1)
            total += (peak.squeeze(1) + sums.log() - target_logit).sum()
            if grads:
                d_logits = e.mul_(sums.reciprocal().unsqueeze(1))  # softmax
                d_logits[torch.arange(len(t), device=t.device), t] -= 1.0
                d_hidden[start : start + CHUNK_TOKENS] = d_logits @ weight
                d_weight.addmm_(d_logits.t(), h)
        scale = 1.0 / hidden.shape[0] if reduction == "mean" else 1.0
        ctx.save_for_backward(d_hidden, d_weight)
        ctx.scale = scale
        return total * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        d_hidden, d_weight = ctx.saved_tensors
        factor = grad * ctx.scale
        return (
            d_hidden * factor if ctx.needs_input_grad[0] else None,
            d_weight * factor if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T, targets, reduction=...) for hidden [N, D], weight [V, D] (float32),
    targets [N], without the [N, V] logits; reduction "mean" or "sum"."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return _LinearCrossEntropy.apply(hidden.contiguous(), weight, targets.contiguous(), reduction)
