"""Manifold-Constrained Hyper-Connections (DeepSeek, arXiv 2512.24880), paper Eq. 7-9 and 14-19.

Per token, in float32 whatever the activation dtype:
    x_vec   = vec(x_l)                                 [..., nC]   (all streams, flattened)
    r       = ||x_vec||_2 / sqrt(nC)                   (Eq. 15; RMSNorm division after the matmul)
    h       = (x_vec @ phi) / r                        (Eq. 14; = RMSNorm(x_vec) @ phi, weight folded into phi)
    H~      = [alpha_pre h_pre, alpha_post h_post, alpha_res h_res] + b   (Eq. 16)
    H_pre   = sigmoid(H~_pre)          [..., n]        (Eq. 17; + pre_eps, 0 by default)
    H_post  = 2 sigmoid(H~_post)       [..., n]        (Eq. 18)
    H_res   = Sinkhorn-Knopp(mat(H~_res)), t_max = 20  (Eq. 19; rows exact, columns ~ 1)
phi is [nC, n^2 + 2n] ordered [pre | post | res]; mat() fills H_res row-major, so H_res[i, j] (output
stream i <- input stream j) is column 2n + i*n + j of phi.

Parameters per sub-layer: nC (n^2 + 2n) + (n^2 + 2n) + 3. The RMS uses `norm_eps` inside the square
root (the model's RMSNorm epsilon, 1e-20 for the paper's scales).

The mHC paper's Table 1 switches (`learn_res/pre/post = false`) replace a mapping by its fixed form
(H_res -> I, H_pre -> 1/n, H_post -> 1); phi, b and alpha then only hold the learned ones, in the same
[pre | post | res] order. With every mapping learned the ops run through the kernel dispatch (fused on CUDA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import ConfigError, above, at_least
from ..kernels.sinkhorn import sinkhorn_fast
from ..kernels.torch_ops import proj_rms
from .base import StreamConfig, StreamConnection, grad_norm


@dataclass
class MHCConfig(StreamConfig):
    """mHC (paper Eq. 7-9). Defaults follow the paper (n = 4, alpha init 0.01, t_max = 20); what it leaves open
    (phi/b initialisation, epsilons) is an explicit field."""

    arch: str = "mhc"
    sinkhorn_iters: int = at_least(20, 1)
    # Static bias b (the paper does not give it; see README "Initialisation"):
    # - "zero": b = 0 (Megatron / HF DeepSeek-V4): H_pre ~ 1/2, H_post ~ 1, H_res ~ J/n. The streams start as
    #   copies and J/n re-averages them every sub-layer, so H_res gets almost no gradient.
    # - "identity": H_res ~ I and H_pre ~ one-hot of stream (l mod n) (logits +-identity_logit), H_post = 1, as
    #   HC's Eq. 14. Streams that differ stay different, but nothing makes them differ in the forward pass.
    # - "spread": "identity" plus H_post = 2 sigmoid(+-1) = 1.46 on stream (l mod n) and 0.54 on the others, so
    #   every sub-layer writes a different amount into each stream and the streams differ from the first
    #   sub-layer on (the forward symmetry is broken).
    bias_init: Literal["zero", "identity", "spread"] = "spread"
    identity_logit: float = 4.0  # the +- logit of "identity" / "spread": Sinkhorn(exp(4 I)) has diagonal 0.95
    # phi init: "normal" draws N(0, phi_init_std); "unit" draws N(0, 1 / (alpha_init sqrt(nC))), so that the
    # input-dependent logits alpha * RMSNorm(x) phi start with unit standard deviation instead of ~0.003.
    phi_init: Literal["normal", "unit"] = "unit"
    phi_init_std: float = above(0.02, 0)
    # Epsilons the paper does not show (DeepSeek-V4 code uses 1e-6 for both); 0 = paper.
    pre_eps: float = at_least(0.0, 0)  # added to sigma(.) of H_pre
    sinkhorn_eps: float = at_least(0.0, 0)  # added to every Sinkhorn denominator

    def validate(self) -> None:
        check_gate_fields(self, "mHC")


def check_gate_fields(cfg: StreamConfig, variant: str) -> None:
    """The cross-field checks of the mHC-style configs (`MHCConfig` and mHC-lite's), a ConfigError naming the key."""
    if cfg.phi_init == "unit" and cfg.alpha_init <= 0:
        raise ConfigError(
            f"connection.phi_init='unit' scales phi by 1/alpha_init, which must be > 0 (got {cfg.alpha_init})"
        )
    if cfg.kernels == "triton" and not (cfg.learn_res and cfg.learn_pre and cfg.learn_post):
        raise ConfigError(
            f"connection.kernels='triton' needs every {variant} mapping learned (learn_res/pre/post = true)"
        )


class ManifoldHyperConnection(StreamConnection):
    cfg: MHCConfig

    def __init__(self, cfg: MHCConfig, dim: int, index: int, norm_eps: float = 1e-20):
        super().__init__(cfg, dim, index, norm_eps)
        n = cfg.n
        # the learned mappings in [pre | post | res] order, with their widths in phi / b
        self.learned = [m for m, on in (("pre", cfg.learn_pre), ("post", cfg.learn_post), ("res", cfg.learn_res)) if on]
        self.widths = [self.res_width() if m == "res" else n for m in self.learned]
        self.phi = nn.Parameter(torch.empty(n * dim, sum(self.widths)))
        self.bias = nn.Parameter(torch.empty(sum(self.widths)))
        self.alpha = nn.Parameter(torch.empty(len(self.learned)))  # alpha of each learned mapping
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        cfg, n = self.cfg, self.cfg.n
        std = cfg.phi_init_std if cfg.phi_init == "normal" else 1.0 / (cfg.alpha_init * math.sqrt(n * self.dim))
        self.phi.normal_(0.0, std, generator=generator)
        self.alpha.fill_(cfg.alpha_init)
        bias = {"pre": torch.zeros(n), "post": torch.zeros(n), "res": torch.zeros(self.res_width())}
        if cfg.bias_init in ("identity", "spread"):
            # H_pre ~ one-hot of stream (index mod n), H_res ~ I (Sinkhorn of exp(I) alone is far from I, hence a
            # large diagonal logit); "spread" also gives every stream a different H_post.
            own = self.index % n
            L = cfg.identity_logit
            bias["pre"] = torch.full((n,), -L)
            bias["pre"][own] = L
            bias["res"] = self.identity_res_bias(L)
            if cfg.bias_init == "spread":
                bias["post"] = torch.full((n,), -1.0)
                bias["post"][own] = 1.0
        if self.learned:  # (torch.cat refuses an empty list: every mapping fixed leaves b empty)
            self.bias.copy_(torch.cat([bias[m].flatten() for m in self.learned]))

    def res_width(self) -> int:
        """Columns of phi / entries of b behind H_res: mat(H~_res) is n x n."""
        return self.cfg.n**2

    def identity_res_bias(self, logit: float) -> torch.Tensor:
        """b_res of the "identity"/"spread" inits: `logit` on the diagonal of mat(b_res), 0 elsewhere."""
        return logit * torch.eye(self.cfg.n)

    def res_map(self, logits: torch.Tensor) -> torch.Tensor:
        """H_res [..., n, n] from its logits [..., res_width] (Eq. 19: Sinkhorn-Knopp of mat(logits))."""
        cfg = self.cfg
        return sinkhorn_fast(logits.unflatten(-1, (cfg.n, cfg.n)), cfg.sinkhorn_iters, cfg.sinkhorn_eps)

    def projection(self) -> tuple[torch.Tensor, bool] | None:
        return (self.phi, False) if len(self.learned) == 3 else None  # (a) Eq. 14-15: all streams flattened

    def coefficients_from(self, hh: torch.Tensor, inv_rms: torch.Tensor, ops):
        cfg = self.cfg
        return ops.coefficients(  # (b)+(c) Eq. 16-19
            hh, inv_rms, self.alpha, self.bias, cfg.n, cfg.sinkhorn_iters, cfg.pre_eps, cfg.sinkhorn_eps
        )

    def coefficient_params(self) -> list[torch.Tensor]:
        return [self.alpha, self.bias]

    def mappings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, n = self.cfg, self.cfg.n
        if len(self.learned) == 3:
            return super().mappings(x)
        # Some mappings fixed (Table 1 switches): the same equations on the learned ones, in PyTorch.
        hh, inv_rms = proj_rms(x.flatten(-2), self.phi, self.norm_eps)
        h = hh * inv_rms.unsqueeze(-1)
        logits = {
            m: self.alpha[k].float() * part + b
            for k, (m, part, b) in enumerate(
                zip(self.learned, h.split(self.widths, -1), self.bias.float().split(self.widths), strict=True)
            )
        }
        batch = x.shape[:-2]
        H_pre = (
            torch.sigmoid(logits["pre"]) + cfg.pre_eps
            if "pre" in logits
            else x.new_full((*batch, n), 1.0 / n, dtype=torch.float32)
        )
        H_post = (
            2.0 * torch.sigmoid(logits["post"]) if "post" in logits else x.new_ones((*batch, n), dtype=torch.float32)
        )
        if "res" in logits:
            H_res = self.res_map(logits["res"])
        else:
            H_res = torch.eye(n, device=x.device).expand(*batch, n, n)
        return H_pre, H_post, H_res

    def mapping_grad_norms(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {"res": None, "pre": None, "post": None}
        start = 0
        for k, (name, width) in enumerate(zip(self.learned, self.widths, strict=True)):
            cols = slice(start, start + width)
            start += width
            out[name] = grad_norm(
                None if self.phi.grad is None else self.phi.grad[:, cols],
                None if self.bias.grad is None else self.bias.grad[cols],
                None if self.alpha.grad is None else self.alpha.grad[k : k + 1],
            )
        return out
