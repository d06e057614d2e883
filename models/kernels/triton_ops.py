"""Fused Triton kernels for mHC (paper section 4.3.1), each with a custom autograd Function.

(a) `proj_rms`      one pass over vec(x): the matmul with phi and the squared-norm reduction together
                    (RMS division moved after the matmul, Eq. 14-15); the backward computes dx and
                    dphi in one pass over x (dphi accumulated with float32 atomics).
(b)+(c) `coefficients`  Eq. 16-19 in one kernel: alpha scaling, bias, sigma, 2 sigma and the whole
                    Sinkhorn iteration in registers; the backward recomputes the iterations on-chip
                    (O(t_max^2) replays, no stored iterates) and walks back through all of them.
(d) `pre_mix`       u = H_pre x.
(e) `post_res_mix`  H_res x + H_post^T y and the residual merge in one pass: reads (n+1)C, writes nC.

Each op matches `torch_ops.py` (tests run them under TRITON_INTERPRET=1 on the CPU). Coefficients are
float32 throughout; activations are read in their dtype, accumulated in float32, written in their
dtype. n is a compile-time constant (any n >= 1; padded to a power of two inside the kernels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BACKEND = "triton"  # the connection.kernels value that selects this module


def _p2(v: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(v))


# --------------------------------------------------------------------------------------------------
# (a) projection + RMS
# --------------------------------------------------------------------------------------------------


@triton.jit
def _proj_rms_fwd(x_ptr, phi_ptr, hh_ptr, inv_ptr, N, K, M, eps, BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    cols = tl.arange(0, BM)
    rmask = rows < N
    acc = tl.zeros((BN, BM), tl.float32)
    sq = tl.zeros((BN,), tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        x = x.to(tl.float32)
        p = tl.load(phi_ptr + ks[:, None] * M + cols[None, :], mask=kmask[:, None] & (cols[None, :] < M), other=0.0)
        acc += tl.dot(x, p, input_precision="ieee")
        sq += tl.sum(x * x, axis=1)
    inv = 1.0 / tl.sqrt(sq / K + eps)
    tl.store(hh_ptr + rows[:, None] * M + cols[None, :], acc, mask=rmask[:, None] & (cols[None, :] < M))
    tl.store(inv_ptr + rows, inv, mask=rmask)


@triton.jit
def _proj_rms_bwd(
    x_ptr, phi_ptr, inv_ptr, dhh_ptr, dinv_ptr, dx_ptr, dphi_ptr, N, K, M,
    BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    cols = tl.arange(0, BM)
    rmask = rows < N
    cmask = cols < M
    dhh = tl.load(dhh_ptr + rows[:, None] * M + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    inv = tl.load(inv_ptr + rows, mask=rmask, other=0.0)
    dinv = tl.load(dinv_ptr + rows, mask=rmask, other=0.0)
    coef = -dinv * inv * inv * inv / K  # d inv / dx = -inv^3 x / K
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        xmask = rmask[:, None] & kmask[None, :]
        x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=xmask, other=0.0).to(tl.float32)
        p = tl.load(phi_ptr + ks[:, None] * M + cols[None, :], mask=kmask[:, None] & cmask[None, :], other=0.0)
        dx = tl.dot(dhh, tl.trans(p), input_precision="ieee") + coef[:, None] * x
        tl.store(dx_ptr + rows[:, None] * K + ks[None, :], dx.to(dx_ptr.dtype.element_ty), mask=xmask)
        dp = tl.dot(tl.trans(x), dhh, input_precision="ieee")
        tl.atomic_add(dphi_ptr + ks[:, None] * M + cols[None, :], dp, mask=kmask[:, None] & cmask[None, :])


class ProjRms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_flat: torch.Tensor, phi: torch.Tensor, eps: float):
        shape = x_flat.shape
        x = x_flat.reshape(-1, shape[-1]).contiguous()
        phi32 = phi.float().contiguous()
        N, K = x.shape
        M = phi32.shape[1]
        hh = torch.empty(N, M, device=x.device, dtype=torch.float32)
        inv = torch.empty(N, device=x.device, dtype=torch.float32)
        BN, BK, BM = 16, 64, _p2(M, 16)
        _proj_rms_fwd[(triton.cdiv(N, BN),)](x, phi32, hh, inv, N, K, M, eps, BN=BN, BK=BK, BM=BM)
        ctx.save_for_backward(x, phi32, inv)
        ctx.shape, ctx.phi_dtype = shape, phi.dtype
        return hh.view(*shape[:-1], M), inv.view(shape[:-1])

    @staticmethod
    def backward(ctx, dhh: torch.Tensor, dinv: torch.Tensor):
        x, phi32, inv = ctx.saved_tensors
        N, K = x.shape
        M = phi32.shape[1]
        dhh = torch.zeros(N, M, device=x.device) if dhh is None else dhh.reshape(N, M).float().contiguous()
        dinv = torch.zeros(N, device=x.device) if dinv is None else dinv.reshape(N).float().contiguous()
        dx = torch.empty_like(x)
        dphi = torch.zeros(K, M, device=x.device, dtype=torch.float32)
        BN, BK, BM = 16, 64, _p2(M, 16)
        _proj_rms_bwd[(triton.cdiv(N, BN),)](x, phi32, inv, dhh, dinv, dx, dphi, N, K, M, BN=BN, BK=BK, BM=BM)
        return dx.view(ctx.shape), dphi.to(ctx.phi_dtype), None


# --------------------------------------------------------------------------------------------------
# (b) + (c) coefficients and Sinkhorn
# --------------------------------------------------------------------------------------------------


@triton.jit
def _normalize(m, axis: tl.constexpr, eps, tiny):
    if axis == 1:  # T_c: divide every column by its sum (sum over rows i)
        s = tl.maximum(tl.sum(m, axis=1) + eps, tiny)
        return m / s[:, None, :], s
    else:  # T_r: divide every row by its sum
        s = tl.maximum(tl.sum(m, axis=2) + eps, tiny)
        return m / s[:, :, None], s


@triton.jit
def _load_logits(hh_ptr, inv, a_res, bias_ptr, t, tmask, N: tl.constexpr, NP: tl.constexpr, M):
    i = tl.arange(0, NP)
    emask = (i[:, None] < N) & (i[None, :] < N)  # [NP, NP]
    col = 2 * N + i[:, None] * N + i[None, :]  # column of hh holding H_res[i, j]
    full = tmask[:, None, None] & emask[None, :, :]
    hr = tl.load(hh_ptr + t[:, None, None] * M + col[None, :, :], mask=full, other=0.0)
    br = tl.load(bias_ptr + col, mask=emask, other=0.0)
    logits = a_res * hr * inv[:, None, None] + br[None, :, :]
    logits = tl.where(full, logits, -float("inf"))
    mx = tl.max(tl.max(logits, axis=2), axis=1)
    m0 = tl.where(full, tl.exp(logits - mx[:, None, None]), 0.0)
    is_max = full & (logits == mx[:, None, None])
    return m0, hr, col, full, is_max


@triton.jit
def _gates(hh_ptr, inv_ptr, alpha_ptr, bias_ptr, t, tmask, M, N: tl.constexpr, NP: tl.constexpr):
    """Shared by forward and backward: RMS factors, alphas, the pre/post projections and their sigmoids."""
    i = tl.arange(0, NP)
    vmask = tmask[:, None] & (i[None, :] < N)
    inv = tl.load(inv_ptr + t, mask=tmask, other=0.0)
    a_pre = tl.load(alpha_ptr)
    a_post = tl.load(alpha_ptr + 1)
    a_res = tl.load(alpha_ptr + 2)
    hp = tl.load(hh_ptr + t[:, None] * M + i[None, :], mask=vmask, other=0.0)
    bp = tl.load(bias_ptr + i, mask=i < N, other=0.0)
    sp = tl.sigmoid(a_pre * hp * inv[:, None] + bp[None, :])
    hq = tl.load(hh_ptr + t[:, None] * M + N + i[None, :], mask=vmask, other=0.0)
    bq = tl.load(bias_ptr + N + i, mask=i < N, other=0.0)
    sq = tl.sigmoid(a_post * hq * inv[:, None] + bq[None, :])
    return vmask, inv, a_pre, a_post, a_res, hp, hq, sp, sq


@triton.jit
def _coeff_fwd(
    hh_ptr, inv_ptr, alpha_ptr, bias_ptr, pre_ptr, post_ptr, res_ptr, T, M, iters, pre_eps, sk_eps, tiny,
    N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tmask = t < T
    i = tl.arange(0, NP)
    vmask, inv, a_pre, a_post, a_res, hp, hq, sp, sq = _gates(hh_ptr, inv_ptr, alpha_ptr, bias_ptr, t, tmask, M, N, NP)
    H_pre = sp + pre_eps
    H_post = 2.0 * sq
    tl.store(pre_ptr + t[:, None] * N + i[None, :], H_pre, mask=vmask)
    tl.store(post_ptr + t[:, None] * N + i[None, :], H_post, mask=vmask)

    m, hr, col, full, is_max = _load_logits(hh_ptr, inv, a_res, bias_ptr, t, tmask, N, NP, M)
    for _ in range(iters):
        m, s = _normalize(m, 1, sk_eps, tiny)
        m, s = _normalize(m, 2, sk_eps, tiny)
    off = t[:, None, None] * N * N + i[None, :, None] * N + i[None, None, :]
    tl.store(res_ptr + off, m, mask=full)


@triton.jit
def _coeff_bwd(
    hh_ptr, inv_ptr, alpha_ptr, bias_ptr, gpre_ptr, gpost_ptr, gres_ptr, dhh_ptr, dinv_ptr, dalpha_ptr, dbias_ptr,
    T, M, iters, sk_eps, tiny, N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tmask = t < T
    i = tl.arange(0, NP)
    vmask, inv, a_pre, a_post, a_res, hp, hq, sp, sq = _gates(hh_ptr, inv_ptr, alpha_ptr, bias_ptr, t, tmask, M, N, NP)

    # H_pre = sigma(z) + eps ; H_post = 2 sigma(z)
    dz_pre = tl.load(gpre_ptr + t[:, None] * N + i[None, :], mask=vmask, other=0.0) * sp * (1.0 - sp)
    dz_post = tl.load(gpost_ptr + t[:, None] * N + i[None, :], mask=vmask, other=0.0) * 2.0 * sq * (1.0 - sq)

    # Sinkhorn backward: for each of the 2*iters normalisations, last first, replay the forward up to it
    # (nothing was stored), then apply d(m / s) = (g - sum(g * out)) / s along the normalised axis.
    m0, hr, col, full, is_max = _load_logits(hh_ptr, inv, a_res, bias_ptr, t, tmask, N, NP, M)
    off = t[:, None, None] * N * N + i[None, :, None] * N + i[None, None, :]
    g = tl.load(gres_ptr + off, mask=full, other=0.0)
    for k in range(2 * iters):
        step = 2 * iters - 1 - k
        m = m0
        for q in range(step):
            if q % 2 == 0:
                m, s = _normalize(m, 1, sk_eps, tiny)
            else:
                m, s = _normalize(m, 2, sk_eps, tiny)
        if step % 2 == 0:
            out, s = _normalize(m, 1, sk_eps, tiny)
            g = (g - tl.sum(g * out, axis=1)[:, None, :]) / s[:, None, :]
        else:
            out, s = _normalize(m, 2, sk_eps, tiny)
            g = (g - tl.sum(g * out, axis=2)[:, :, None]) / s[:, :, None]
    dz_res = tl.where(full, g * m0, 0.0)  # through exp(logits - max)
    # ...and through the max itself: with eps > 0 Sinkhorn is not exactly scale-invariant, so the shift has a
    # small gradient, -sum(dz), shared by the maximal entries (as autograd's amax does).
    n_max = tl.sum(tl.sum(is_max.to(tl.float32), axis=2), axis=1)
    shift = tl.sum(tl.sum(dz_res, axis=2), axis=1) / tl.maximum(n_max, 1.0)
    dz_res = dz_res - tl.where(is_max, shift[:, None, None], 0.0)

    # z = a * hh * inv + b
    dinv = tl.sum(dz_pre * a_pre * hp, axis=1) + tl.sum(dz_post * a_post * hq, axis=1)
    dinv += tl.sum(tl.sum(dz_res * a_res * hr, axis=2), axis=1)
    tl.store(dinv_ptr + t, dinv, mask=tmask)
    tl.store(dhh_ptr + t[:, None] * M + i[None, :], dz_pre * a_pre * inv[:, None], mask=vmask)
    tl.store(dhh_ptr + t[:, None] * M + N + i[None, :], dz_post * a_post * inv[:, None], mask=vmask)
    tl.store(dhh_ptr + t[:, None, None] * M + col[None, :, :], dz_res * a_res * inv[:, None, None], mask=full)
    tl.atomic_add(dalpha_ptr, tl.sum(tl.sum(dz_pre * hp, axis=1) * inv, axis=0))
    tl.atomic_add(dalpha_ptr + 1, tl.sum(tl.sum(dz_post * hq, axis=1) * inv, axis=0))
    tl.atomic_add(dalpha_ptr + 2, tl.sum(tl.sum(tl.sum(dz_res * hr, axis=2), axis=1) * inv, axis=0))
    tl.atomic_add(dbias_ptr + i, tl.sum(dz_pre, axis=0), mask=i < N)
    tl.atomic_add(dbias_ptr + N + i, tl.sum(dz_post, axis=0), mask=i < N)
    emask = (i[:, None] < N) & (i[None, :] < N)
    tl.atomic_add(dbias_ptr + col, tl.sum(dz_res, axis=0), mask=emask)


class Coefficients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hh, inv, alpha, bias, n: int, iters: int, pre_eps: float, sinkhorn_eps: float):
        lead = hh.shape[:-1]
        M = hh.shape[-1]
        hh2 = hh.reshape(-1, M).float().contiguous()
        inv2 = inv.reshape(-1).float().contiguous()
        a32, b32 = alpha.float().contiguous(), bias.float().contiguous()
        T = hh2.shape[0]
        dev = hh.device
        H_pre = torch.empty(T, n, device=dev)
        H_post = torch.empty(T, n, device=dev)
        H_res = torch.empty(T, n, n, device=dev)
        BT = 16
        tiny = torch.finfo(torch.float32).tiny
        _coeff_fwd[(triton.cdiv(T, BT),)](
            hh2, inv2, a32, b32, H_pre, H_post, H_res, T, M, iters, pre_eps, sinkhorn_eps, tiny,
            N=n, NP=_p2(n), BT=BT,
        )  # fmt: skip
        ctx.save_for_backward(hh2, inv2, a32, b32)
        ctx.meta = (lead, n, iters, sinkhorn_eps, alpha.dtype, bias.dtype)
        return H_pre.view(*lead, n), H_post.view(*lead, n), H_res.view(*lead, n, n)

    @staticmethod
    def backward(ctx, g_pre, g_post, g_res):
        hh2, inv2, a32, b32 = ctx.saved_tensors
        lead, n, iters, sk_eps, a_dtype, b_dtype = ctx.meta
        T, M = hh2.shape
        dev = hh2.device

        def grad(g, *shape):
            return torch.zeros(T, *shape, device=dev) if g is None else g.reshape(T, *shape).float().contiguous()

        g_pre, g_post, g_res = grad(g_pre, n), grad(g_post, n), grad(g_res, n, n)
        dhh = torch.empty(T, M, device=dev)
        dinv = torch.empty(T, device=dev)
        dalpha = torch.zeros(3, device=dev)
        dbias = torch.zeros(M, device=dev)
        BT = 16
        tiny = torch.finfo(torch.float32).tiny
        _coeff_bwd[(triton.cdiv(T, BT),)](
            hh2, inv2, a32, b32, g_pre, g_post, g_res, dhh, dinv, dalpha, dbias, T, M, iters, sk_eps, tiny,
            N=n, NP=_p2(n), BT=BT,
        )  # fmt: skip
        return dhh.view(*lead, M), dinv.view(lead), dalpha.to(a_dtype), dbias.to(b_dtype), None, None, None, None


# --------------------------------------------------------------------------------------------------
# (d) pre-mix and (e) post + res + merge
# --------------------------------------------------------------------------------------------------


@triton.jit
def _pre_mix_fwd(x_ptr, h_ptr, u_ptr, T, C, N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    j = tl.arange(0, NP)
    tmask, cmask, jmask = t < T, c < C, j < N
    h = tl.load(h_ptr + t[:, None] * N + j[None, :], mask=tmask[:, None] & jmask[None, :], other=0.0)
    xmask = tmask[:, None, None] & jmask[None, :, None] & cmask[None, None, :]
    x = tl.load(x_ptr + t[:, None, None] * N * C + j[None, :, None] * C + c[None, None, :], mask=xmask, other=0.0)
    u = tl.sum(h[:, :, None] * x.to(tl.float32), axis=1)
    tl.store(u_ptr + t[:, None] * C + c[None, :], u.to(u_ptr.dtype.element_ty), mask=tmask[:, None] & cmask[None, :])


@triton.jit
def _pre_mix_bwd(
    x_ptr, h_ptr, du_ptr, dx_ptr, dh_ptr, T, C, N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr
):
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    j = tl.arange(0, NP)
    tmask, jmask = t < T, j < N
    h = tl.load(h_ptr + t[:, None] * N + j[None, :], mask=tmask[:, None] & jmask[None, :], other=0.0)
    dh = tl.zeros((BT, NP), tl.float32)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        du = tl.load(du_ptr + t[:, None] * C + c[None, :], mask=tmask[:, None] & cmask[None, :], other=0.0)
        du = du.to(tl.float32)
        xmask = tmask[:, None, None] & jmask[None, :, None] & cmask[None, None, :]
        xoff = t[:, None, None] * N * C + j[None, :, None] * C + c[None, None, :]
        x = tl.load(x_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
        dh += tl.sum(x * du[:, None, :], axis=2)
        tl.store(dx_ptr + xoff, (h[:, :, None] * du[:, None, :]).to(dx_ptr.dtype.element_ty), mask=xmask)
    tl.store(dh_ptr + t[:, None] * N + j[None, :], dh, mask=tmask[:, None] & jmask[None, :])


@triton.jit
def _post_res_fwd(
    x_ptr, hres_ptr, hpost_ptr, y_ptr, out_ptr, T, C,
    N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    i = tl.arange(0, NP)
    tmask, cmask, imask = t < T, c < C, i < N
    ti = tmask[:, None] & imask[None, :]
    tc = tmask[:, None] & cmask[None, :]
    hp = tl.load(hpost_ptr + t[:, None] * N + i[None, :], mask=ti, other=0.0)
    y = tl.load(y_ptr + t[:, None] * C + c[None, :], mask=tc, other=0.0).to(tl.float32)
    acc = hp[:, :, None] * y[:, None, :]
    for j in tl.static_range(N):  # each input stream is read once
        hj = tl.load(hres_ptr + t[:, None] * N * N + i[None, :] * N + j, mask=ti, other=0.0)  # H_res[:, j]
        xj = tl.load(x_ptr + t[:, None] * N * C + j * C + c[None, :], mask=tc, other=0.0).to(tl.float32)
        acc += hj[:, :, None] * xj[:, None, :]
    omask = tmask[:, None, None] & imask[None, :, None] & cmask[None, None, :]
    ooff = t[:, None, None] * N * C + i[None, :, None] * C + c[None, None, :]
    tl.store(out_ptr + ooff, acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _post_res_bwd(
    x_ptr, hres_ptr, hpost_ptr, y_ptr, dout_ptr, dx_ptr, dy_ptr, dhres_ptr, dhpost_ptr, T, C,
    N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    i = tl.arange(0, NP)
    tmask, imask = t < T, i < N
    ti = tmask[:, None] & imask[None, :]
    hp = tl.load(hpost_ptr + t[:, None] * N + i[None, :], mask=ti, other=0.0)
    dhp = tl.zeros((BT, NP), tl.float32)
    dhr = tl.zeros((BT, NP, NP), tl.float32)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        tc = tmask[:, None] & cmask[None, :]
        omask = tmask[:, None, None] & imask[None, :, None] & cmask[None, None, :]
        ooff = t[:, None, None] * N * C + i[None, :, None] * C + c[None, None, :]
        dout = tl.load(dout_ptr + ooff, mask=omask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + t[:, None] * C + c[None, :], mask=tc, other=0.0).to(tl.float32)
        dy = tl.sum(hp[:, :, None] * dout, axis=1)
        tl.store(dy_ptr + t[:, None] * C + c[None, :], dy.to(dy_ptr.dtype.element_ty), mask=tc)
        dhp += tl.sum(dout * y[:, None, :], axis=2)
        for j in tl.static_range(N):
            hj = tl.load(hres_ptr + t[:, None] * N * N + i[None, :] * N + j, mask=ti, other=0.0)  # H_res[:, j]
            xoff = t[:, None] * N * C + j * C + c[None, :]
            xj = tl.load(x_ptr + xoff, mask=tc, other=0.0).to(tl.float32)
            tl.store(dx_ptr + xoff, tl.sum(hj[:, :, None] * dout, axis=1).to(dx_ptr.dtype.element_ty), mask=tc)
            col = tl.sum(dout * xj[:, None, :], axis=2)  # dH_res[:, :, j]
            dhr += tl.where(i[None, None, :] == j, col[:, :, None], 0.0)
    tl.store(dhpost_ptr + t[:, None] * N + i[None, :], dhp, mask=ti)
    rmask = tmask[:, None, None] & imask[None, :, None] & imask[None, None, :]
    tl.store(dhres_ptr + t[:, None, None] * N * N + i[None, :, None] * N + i[None, None, :], dhr, mask=rmask)


def _flat(x: torch.Tensor, *tail: int) -> torch.Tensor:
    return x.reshape(-1, *tail).contiguous()


class PreMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, H_pre: torch.Tensor):
        n, C = x.shape[-2:]
        x2, h2 = _flat(x, n, C), _flat(H_pre.float(), n)
        T = x2.shape[0]
        u = torch.empty(T, C, device=x.device, dtype=x.dtype)
        BT, BC = 16, 64
        _pre_mix_fwd[(triton.cdiv(T, BT), triton.cdiv(C, BC))](x2, h2, u, T, C, N=n, NP=_p2(n), BT=BT, BC=BC)
        ctx.save_for_backward(x2, h2)
        ctx.shapes = (x.shape, H_pre.shape, H_pre.dtype)
        return u.view(*x.shape[:-2], C)

    @staticmethod
    def backward(ctx, du: torch.Tensor):
        x2, h2 = ctx.saved_tensors
        x_shape, h_shape, h_dtype = ctx.shapes
        T, n, C = x2.shape
        dx = torch.empty_like(x2)
        dh = torch.empty(T, n, device=x2.device)
        BT, BC = 16, 64
        _pre_mix_bwd[(triton.cdiv(T, BT),)](x2, h2, _flat(du, C), dx, dh, T, C, N=n, NP=_p2(n), BT=BT, BC=BC)
        return dx.view(x_shape), dh.view(h_shape).to(h_dtype)


class PostResMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, H_res: torch.Tensor, H_post: torch.Tensor, y: torch.Tensor):
        n, C = x.shape[-2:]
        x2, y2 = _flat(x, n, C), _flat(y.to(x.dtype), C)
        r2, p2 = _flat(H_res.float(), n, n), _flat(H_post.float(), n)
        T = x2.shape[0]
        out = torch.empty_like(x2)
        BT, BC = 16, 64
        grid = (triton.cdiv(T, BT), triton.cdiv(C, BC))
        _post_res_fwd[grid](x2, r2, p2, y2, out, T, C, N=n, NP=_p2(n), BT=BT, BC=BC)
        ctx.save_for_backward(x2, r2, p2, y2)
        ctx.meta = (x.shape, H_res.shape, H_res.dtype, H_post.shape, H_post.dtype, y.shape, y.dtype)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        x2, r2, p2, y2 = ctx.saved_tensors
        x_shape, r_shape, r_dtype, p_shape, p_dtype, y_shape, y_dtype = ctx.meta
        T, n, C = x2.shape
        dx = torch.empty_like(x2)
        dy = torch.empty_like(y2)
        dr = torch.empty(T, n, n, device=x2.device)
        dp = torch.empty(T, n, device=x2.device)
        BT, BC = 16, 64
        _post_res_bwd[(triton.cdiv(T, BT),)](
            x2, r2, p2, y2, _flat(dout, n, C), dx, dy, dr, dp, T, C, N=n, NP=_p2(n), BT=BT, BC=BC
        )
        return (
            dx.view(x_shape),
            dr.view(r_shape).to(r_dtype),
            dp.view(p_shape).to(p_dtype),
            dy.view(y_shape).to(y_dtype),
        )


def proj_rms(x_flat: torch.Tensor, phi: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return ProjRms.apply(x_flat, phi, eps)


def coefficients(hh, inv, alpha, bias, n: int, iters: int, pre_eps: float = 0.0, sinkhorn_eps: float = 0.0):
    return Coefficients.apply(hh, inv, alpha, bias, n, iters, pre_eps, sinkhorn_eps)


def pre_mix(x: torch.Tensor, H_pre: torch.Tensor) -> torch.Tensor:
    return PreMix.apply(x, H_pre)


def post_res_mix(x: torch.Tensor, H_res: torch.Tensor, H_post: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return PostResMix.apply(x, H_res, H_post, y)
