"""Hyper-Connections (Zhu et al., ICLR 2025), HC paper Eq. 8-14 / Algorithm 2, in mHC notation.

Algorithm 2 keeps alpha = [A_m | A_r] (n x (n+1)) and beta = B (n), each = static + dynamic:
    norm_h  = RMSNorm(h) per stream
    alpha   = static_alpha + s_alpha * tanh(norm_h @ W_alpha)      ([..., n, n+1], row j from stream j)
    beta    = static_beta  + s_beta  * tanh(norm_h @ W_beta)       ([..., n])
    out_i   = sum_j A_r[j, i] h_j + beta_i * F(sum_j A_m[j] h_j)
so H_pre = A_m^T, H_post = B and H_res = A_r^T (H_res[i, j] = alpha[j, 1 + i]). The combined alpha is
stored as its two column blocks (pre: A_m, res: A_r), which is the same parametrisation and lets the
mHC paper's Table 1 ablation fix each mapping separately (H_pre -> 1/n, H_post -> 1, H_res -> I).

Initialisation (Eq. 14): W = 0, B = 1, A_m = e_{k mod n} (k = sub-layer index), A_r = I, scales 0.01,
so HC equals the pre-norm residual network at init (all streams identical, each receives F).
The per-stream norm is an RMSNorm with a weight (|theta_norm| = C, as in the mHC paper's Eq. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import RMSNorm
from .base import StreamConfig, StreamConnection, grad_norm


@dataclass
class HCConfig(StreamConfig):
    """Hyper-Connections (HC paper Eq. 8-14, Algorithm 2)."""

    arch: str = "hc"
    hc_dynamic: bool = True  # False = static HC (SHC)
    hc_tanh: bool = True  # False = "DHC w/o tanh"


class HyperConnection(StreamConnection):
    cfg: HCConfig

    def __init__(self, cfg: HCConfig, dim: int, index: int, norm_eps: float = 1e-6):
        super().__init__(cfg, dim, index, norm_eps)
        n = cfg.n
        self.dynamic = cfg.hc_dynamic and (cfg.learn_pre or cfg.learn_res or cfg.learn_post)
        if self.dynamic:
            self.norm = RMSNorm(dim, eps=norm_eps)
        if cfg.learn_pre:
            self.static_pre = nn.Parameter(torch.zeros(n))  # A_m
        if cfg.learn_res:
            self.static_res = nn.Parameter(torch.zeros(n, n))  # A_r (stored as in Algorithm 2, = H_res^T)
        if cfg.learn_post:
            self.static_post = nn.Parameter(torch.zeros(n))  # B
        if self.dynamic and (cfg.learn_pre or cfg.learn_res):
            self.dynamic_alpha_scale = nn.Parameter(torch.zeros(()))
            if cfg.learn_pre:
                self.dynamic_pre = nn.Parameter(torch.zeros(dim, 1))
            if cfg.learn_res:
                self.dynamic_res = nn.Parameter(torch.zeros(dim, n))
        if self.dynamic and cfg.learn_post:
            self.dynamic_beta_scale = nn.Parameter(torch.zeros(()))
            self.dynamic_post = nn.Parameter(torch.zeros(dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Deterministic (Eq. 14); `generator` is accepted for the common interface."""
        n = self.cfg.n
        for name, param in self.named_parameters(recurse=False):
            if name.startswith("dynamic_") and not name.endswith("_scale"):
                param.zero_()
        if self.cfg.learn_pre:
            self.static_pre.zero_()
            self.static_pre[self.index % n] = 1.0
        if self.cfg.learn_res:
            self.static_res.copy_(torch.eye(n))
        if self.cfg.learn_post:
            self.static_post.fill_(1.0)
        for name in ("dynamic_alpha_scale", "dynamic_beta_scale"):
            if hasattr(self, name):
                getattr(self, name).fill_(self.cfg.alpha_init)
        if self.dynamic:
            self.norm.weight.fill_(1.0)

    def projection(self) -> tuple[torch.Tensor, bool] | None:
        """The dynamic weights of every learned mapping as one projection of each stream: RMSNorm(x_j) @ W =
        (x_j @ (w * W)) / rms(x_j) with the norm weight w folded into W, so the state is read by one matmul and one
        norm reduction instead of being normalised into a copy first. None for static HC."""
        if not self.dynamic:
            return None
        parts = [getattr(self, f"dynamic_{m}").float() for m in self._learned()]  # [C, 1], [C, n], [C]
        weight = torch.cat([p if p.dim() == 2 else p.unsqueeze(-1) for p in parts], dim=-1)
        return weight * self.norm.weight.float().unsqueeze(-1), True

    def _learned(self) -> list[str]:
        cfg = self.cfg
        return [m for m, on in (("pre", cfg.learn_pre), ("res", cfg.learn_res), ("post", cfg.learn_post)) if on]

    def coefficients_from(self, hh: torch.Tensor, inv_rms: torch.Tensor, ops=None):
        z = hh * inv_rms.unsqueeze(-1)  # [..., n, M]: row j from stream j
        if self.cfg.hc_tanh:
            z = torch.tanh(z)
        names = self._learned()
        terms = dict(zip(names, z.split([self.cfg.n if m == "res" else 1 for m in names], dim=-1), strict=True))
        return self._assemble(hh.shape[:-2], hh.device, terms)

    def coefficient_params(self) -> list[torch.Tensor]:
        names = ("static_pre", "static_res", "static_post", "dynamic_alpha_scale", "dynamic_beta_scale")
        return [getattr(self, name) for name in names if hasattr(self, name)]

    def mappings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.dynamic:
            return super().mappings(x)
        return self._assemble(x.shape[:-2], x.device, {})

    def _assemble(
        self, batch: torch.Size, device: torch.device, dynamic: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """H = static + scale * dynamic term for each learned mapping, the fixed form for the others; `dynamic` has
        the unscaled terms ("pre", "post": [..., n, 1]; "res": [..., n, n], row j from stream j, as A_r)."""
        cfg, n = self.cfg, self.cfg.n
        if cfg.learn_pre:
            H_pre = self.static_pre.float().expand(*batch, n)
            if dynamic:
                H_pre = H_pre + self.dynamic_alpha_scale.float() * dynamic["pre"].squeeze(-1)
        else:
            H_pre = torch.full((*batch, n), 1.0 / n, device=device)

        if cfg.learn_res:
            a_r = self.static_res.float().expand(*batch, n, n)
            if dynamic:
                a_r = a_r + self.dynamic_alpha_scale.float() * dynamic["res"]
            H_res = a_r.transpose(-1, -2)
        else:
            H_res = torch.eye(n, device=device).expand(*batch, n, n)

        if cfg.learn_post:
            H_post = self.static_post.float().expand(*batch, n)
            if dynamic:
                H_post = H_post + self.dynamic_beta_scale.float() * dynamic["post"].squeeze(-1)
        else:
            H_post = torch.ones((*batch, n), device=device)
        return H_pre, H_post, H_res

    def mapping_grad_norms(self) -> dict[str, float | None]:
        def grads(*names: str) -> float | None:
            return grad_norm(*(getattr(self, n).grad for n in names if hasattr(self, n)))

        # the shared dynamic_alpha_scale (pre and res) is left out of both
        return {
            "res": grads("static_res", "dynamic_res"),
            "pre": grads("static_pre", "dynamic_pre"),
            "post": grads("static_post", "dynamic_post", "dynamic_beta_scale"),
        }
