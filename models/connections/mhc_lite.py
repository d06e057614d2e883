"""mHC-lite: mHC with H_res an exact convex combination of the n! permutation matrices.

Per token, in float32 whatever the activation dtype (H_pre and H_post exactly as mHC, `mhc.py`):
    x_vec   = vec(x_l)                                  [..., nC]
    h       = (x_vec @ phi) / r,  r = RMS(x_vec)        (as mHC; phi [nC, 2n + n!] ordered [pre | post | res])
    H~      = [alpha_pre h_pre, alpha_post h_post, alpha_res h_res] + b
    H_pre   = sigmoid(H~_pre) (+ pre_eps)    [..., n]
    H_post  = 2 sigmoid(H~_post)             [..., n]
    w       = softmax(H~_res)                [..., n!]  (one logit per permutation)
    H_res   = sum_k w_k P_k                  [..., n, n]
P_k is the permutation matrix of the k-th permutation sigma_k of (0, ..., n-1) in `itertools.permutations` order
(the identity first), with P_k[i, sigma_k(i)] = 1: output stream i reads input stream sigma_k(i). By Birkhoff-von
Neumann every doubly stochastic matrix is such a mixture, and every such mixture is doubly stochastic: the rows and
columns of H_res sum to sum_k w_k = 1 and its entries are >= 0, exactly and without Sinkhorn iterations (in floating
point to the rounding of the softmax and of one matmul).

Parameters per sub-layer: nC (2n + n!) + (2n + n!) + 3. n! grows fast (24 at n = 4, 720 at n = 6); n > 6 is refused.

Initialisation as mHC's (`MHCConfig.bias_init`), with b_res one logit per permutation: "identity"/"spread" put
+identity_logit on the identity and -identity_logit on every other permutation, so that H_res ~ I (at n = 4 and
logit 4 the identity's weight is e^4 / (e^4 + 23 e^-4) = 0.992); "zero" gives every permutation the same weight and
H_res = J/n. The Table 1 switches fix a mapping as in mHC (H_res -> I, H_pre -> 1/n, H_post -> 1).

Kernels: the coefficients are always the PyTorch function `lite_coefficients` (no fused kernel computes the
permutation mixture). The projection and the stream mixes go through the kernel dispatch like mHC's: on a float32
CPU state with `kernels: auto` the fused `stream_pre` node runs `lite_coefficients` inside it, on CUDA the Triton
projection and mixes run around it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..config import ConfigError, above, at_least
from .base import StreamConfig
from .mhc import ManifoldHyperConnection, check_gate_fields

MAX_STREAMS = 6  # 720 permutations; n = 7 would be 5040 logits per token and sub-layer


@dataclass
class MHCLiteConfig(StreamConfig):
    """mHC-lite: the mHC fields that apply to it (no Sinkhorn fields: H_res needs no iteration)."""

    arch: str = "mhc-lite"
    # as MHCConfig.bias_init; "identity"/"spread": logit +identity_logit on the identity permutation, -identity_logit
    # on the others; "zero": all permutations alike (H_res = J/n)
    bias_init: Literal["zero", "identity", "spread"] = "spread"
    identity_logit: float = 4.0
    phi_init: Literal["normal", "unit"] = "unit"  # as MHCConfig.phi_init
    phi_init_std: float = above(0.02, 0)
    pre_eps: float = at_least(0.0, 0)  # added to sigma(.) of H_pre

    def validate(self) -> None:
        super().validate()
        if self.n > MAX_STREAMS:
            raise ConfigError(
                f"connection.n = {self.n} is too large for arch 'mhc-lite': H_res mixes all n! permutation matrices "
                f"({math.factorial(self.n)} logits per token and sub-layer); use n <= {MAX_STREAMS}"
            )
        check_gate_fields(self, "mHC-lite")


def permutation_matrices(n: int) -> torch.Tensor:
    """[n!, n, n] float32: P_k[i, sigma_k(i)] = 1 for the k-th permutation of `itertools.permutations(range(n))`
    (the identity first)."""
    index = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
    return torch.eye(n)[index]


def lite_coefficients(
    hh: torch.Tensor,
    inv: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    perms: torch.Tensor,
    pre_eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hh [..., 2n + n!], inv [...] -> (H_pre [..., n], H_post [..., n], H_res [..., n, n]), with every mapping
    learned; alpha = [alpha_pre, alpha_post, alpha_res], bias [2n + n!], perms [n!, n, n].

    Float32 for float32 or lower-precision inputs, float64 for float64 ones (what gradcheck needs)."""
    n = perms.shape[-1]
    dtype = torch.promote_types(hh.dtype, torch.float32)
    h = hh.to(dtype) * inv.to(dtype).unsqueeze(-1)
    a, b = alpha.to(dtype), bias.to(dtype)
    h_pre, h_post, h_res = h.split([n, n, perms.shape[0]], dim=-1)
    H_pre = torch.sigmoid(a[0] * h_pre + b[:n]) + pre_eps
    H_post = 2.0 * torch.sigmoid(a[1] * h_post + b[n : 2 * n])
    return H_pre, H_post, permutation_mixture(a[2] * h_res + b[2 * n :], perms)


def permutation_mixture(logits: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """sum_k softmax(logits)_k P_k: logits [..., n!], perms [n!, n, n] -> [..., n, n] in the logits' dtype."""
    weights = torch.softmax(logits, dim=-1)
    return (weights @ perms.flatten(1).to(weights.dtype)).unflatten(-1, perms.shape[1:])


class ManifoldHyperConnectionLite(ManifoldHyperConnection):
    """mHC with the Sinkhorn projection replaced by the permutation mixture: phi, b and alpha are laid out as mHC's
    ([pre | post | res], the learned mappings only) with n! res columns instead of n^2."""

    cfg: MHCLiteConfig

    def __init__(self, cfg: MHCLiteConfig, dim: int, index: int, norm_eps: float = 1e-20):
        super().__init__(cfg, dim, index, norm_eps)
        # derived, not learned: left out of the state dict and rebuilt by reset_parameters (a meta-built model)
        self.register_buffer("perms", permutation_matrices(cfg.n), persistent=False)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        if "perms" in self._buffers:  # not yet registered while the base class's __init__ runs
            self.perms.copy_(permutation_matrices(self.cfg.n))

    def res_width(self) -> int:
        return math.factorial(self.cfg.n)

    def identity_res_bias(self, logit: float) -> torch.Tensor:
        bias = torch.full((self.res_width(),), -logit)
        bias[0] = logit  # the identity permutation comes first
        return bias

    def res_map(self, logits: torch.Tensor) -> torch.Tensor:
        return permutation_mixture(logits, self.perms)

    def coefficients_from(self, hh: torch.Tensor, inv_rms: torch.Tensor, ops):
        # PyTorch whatever the backend: no kernel computes the permutation mixture
        return lite_coefficients(hh, inv_rms, self.alpha, self.bias, self.perms, self.cfg.pre_eps)
