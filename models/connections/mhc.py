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
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConnectionConfig
from ..kernels import get_ops
from .base import StreamConnection


class ManifoldHyperConnection(StreamConnection):
    def __init__(self, cfg: ConnectionConfig, dim: int, index: int, norm_eps: float = 1e-20):
        super().__init__(cfg, dim, index, norm_eps)
        n = cfg.n
        self.phi = nn.Parameter(torch.empty(n * dim, n * n + 2 * n))
        self.bias = nn.Parameter(torch.empty(n * n + 2 * n))
        self.alpha = nn.Parameter(torch.empty(3))  # alpha_pre, alpha_post, alpha_res
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg, n = self.cfg, self.cfg.n
        nn.init.normal_(self.phi, std=cfg.phi_init_std)
        self.alpha.fill_(cfg.alpha_init)
        self.bias.zero_()
        if cfg.bias_init == "identity":
            # H_pre ~ one-hot of stream (index mod n), H_post = 1, H_res ~ I (Sinkhorn of exp(I) alone is
            # far from I, hence a large diagonal logit).
            pre = torch.full((n,), -cfg.identity_logit)
            pre[self.index % n] = cfg.identity_logit
            self.bias[:n] = pre
            self.bias[2 * n :] = (cfg.identity_logit * torch.eye(n)).flatten()

    def mappings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        ops = get_ops(cfg.kernels, x.device)
        hh, inv_rms = ops.proj_rms(x.flatten(-2), self.phi, self.norm_eps)  # (a) Eq. 14-15
        return ops.coefficients(  # (b)+(c) Eq. 16-19
            hh, inv_rms, self.alpha, self.bias, cfg.n, cfg.sinkhorn_iters, cfg.pre_eps, cfg.sinkhorn_eps
        )
