"""The mHC ops in eager PyTorch, in the paper's orientation: the production path wherever no fused kernel
applies (any device; `connection.kernels: reference` forces it), and what the fused Triton (`triton_ops.py`) and
CPU (`cpu_ops.py`) kernels are tested against. The five ops follow the paper's kernel split (section 4.3.1):

(a) `proj_rms`      hh = vec(x) @ phi, inv_rms = 1 / sqrt(mean(vec(x)^2) + eps)          (Eq. 14-15)
(b)+(c) `coefficients`  H_pre = sigma(a_pre hh_pre inv + b_pre) + pre_eps,
                    H_post = 2 sigma(a_post hh_post inv + b_post),
                    H_res = Sinkhorn(a_res mat(hh_res) inv + b_res)                          (Eq. 16-19)
(d) `pre_mix`       F_pre      = H_pre x            u[c] = sum_j H_pre[j] x[j, c]
(e) `post_res_mix`  F_post,res = H_res x + H_post^T y   out[i, c] = sum_j H_res[i, j] x[j, c] + H_post[i] y[c]
"""

from __future__ import annotations

import torch

from .sinkhorn import sinkhorn_fast

BACKEND = "reference"  # the connection.kernels value that selects this module (an existing config value)


def proj_rms(x_flat: torch.Tensor, phi: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x_flat [..., nC] (any float dtype), phi [nC, M] -> (hh [..., M], inv_rms [...]) in float32."""
    xf = x_flat.float()
    hh = xf @ phi.float()
    inv = torch.rsqrt(xf.pow(2).mean(-1) + eps)
    return hh, inv


def coefficients(
    hh: torch.Tensor,
    inv: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    n: int,
    iters: int,
    pre_eps: float = 0.0,
    sinkhorn_eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hh [..., n^2 + 2n], inv [...] -> float32 (H_pre [..., n], H_post [..., n], H_res [..., n, n])."""
    h = hh.float() * inv.float().unsqueeze(-1)
    a = alpha.float()
    b = bias.float()
    h_pre, h_post, h_res = h.split([n, n, n * n], dim=-1)
    H_pre = torch.sigmoid(a[0] * h_pre + b[:n]) + pre_eps
    H_post = 2.0 * torch.sigmoid(a[1] * h_post + b[n : 2 * n])
    logits = (a[2] * h_res + b[2 * n :]).unflatten(-1, (n, n))
    return H_pre, H_post, sinkhorn_fast(logits, iters, sinkhorn_eps)


# The mixes accumulate in float32 and round once to the activation dtype, like the fused kernels: with bf16
# activations, rounding H_res to bf16 first would break its exact row sums (~3e-3 per layer).


def pre_mix(x: torch.Tensor, H_pre: torch.Tensor) -> torch.Tensor:
    """x [..., n, C], H_pre [..., n] -> [..., C] in x's dtype."""
    return torch.einsum("...j,...jc->...c", H_pre.float(), x.float()).to(x.dtype)


def post_res_mix(x: torch.Tensor, H_res: torch.Tensor, H_post: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x [..., n, C], H_res [..., n, n], H_post [..., n], y [..., C] -> [..., n, C] in x's dtype."""
    out = torch.einsum("...ij,...jc->...ic", H_res.float(), x.float())
    return (out + H_post.float().unsqueeze(-1) * y.float().unsqueeze(-2)).to(x.dtype)
