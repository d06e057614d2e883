"""Reference (pure PyTorch) stream-mixing ops of HC/mHC, in the paper's orientation.

`pre_mix`      F_pre      = H_pre x          : u[c]    = sum_j H_pre[j] x[j, c]
`post_res_mix` F_post,res = H_res x + H_post^T y : out[i, c] = sum_j H_res[i, j] x[j, c] + H_post[i] y[c]

Row i of H_res says how much of each input stream goes into output stream i, so row sums are the
forward gains and column sums the backward gains (paper Eq. 3). Fused kernels (issue 3) are tested
against these functions.
"""

from __future__ import annotations

import torch


def pre_mix(x: torch.Tensor, H_pre: torch.Tensor) -> torch.Tensor:
    """x [..., n, C], H_pre [..., n] -> [..., C]."""
    return torch.einsum("...j,...jc->...c", H_pre, x)


def post_res_mix(x: torch.Tensor, H_res: torch.Tensor, H_post: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x [..., n, C], H_res [..., n, n], H_post [..., n], y [..., C] -> [..., n, C]."""
    return torch.einsum("...ij,...jc->...ic", H_res, x) + H_post.unsqueeze(-1) * y.unsqueeze(-2)
