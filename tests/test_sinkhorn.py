"""Sinkhorn-Knopp (paper Eq. 9): marginals, non-negativity, and a gradient that is really tested."""

from __future__ import annotations

import pytest
import torch

from models.connections import sinkhorn


def _logits(*shape, scale=2.0, dtype=torch.float32):
    return scale * torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_rows_exact_columns_within_truncation(n):
    logits = _logits(64, n, n, scale=3.0)
    m = sinkhorn(logits, iters=20)
    assert (m >= 0).all()
    # T_r runs last: row sums are exact up to float32 rounding.
    assert (m.sum(-1) - 1).abs().max() < 1e-6
    # Columns carry the truncation error: it must shrink with more iterations.
    col_err_20 = (m.sum(-2) - 1).abs().max()
    col_err_200 = (sinkhorn(logits.double(), iters=200).sum(-2) - 1).abs().max()
    assert col_err_20 < 5e-2
    assert col_err_200 <= col_err_20 + 1e-12


def test_order_is_column_then_row():
    """One iteration by hand: exp, normalise columns, then rows."""
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.5, -1.0, 0.0], [3.0, 0.0, -2.0]], dtype=torch.float64)
    m = torch.exp(logits)
    m = m / m.sum(0, keepdim=True)
    m = m / m.sum(1, keepdim=True)
    torch.testing.assert_close(sinkhorn(logits, iters=1), m)
    # The other order gives a different matrix: the test can tell them apart.
    other = torch.exp(logits)
    other = other / other.sum(1, keepdim=True)
    other = other / other.sum(0, keepdim=True)
    assert not torch.allclose(sinkhorn(logits, iters=1), other)


def test_invariant_to_logit_shift_and_safe_for_large_logits():
    logits = _logits(8, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(sinkhorn(logits), sinkhorn(logits + 50.0))
    big = sinkhorn(logits.float() * 1000.0)  # exp overflows without the max subtraction; columns underflow
    assert torch.isfinite(big).all() and (big >= 0).all()
    assert (big.sum(-1) <= 1 + 1e-6).all()


def test_gradcheck_float64():
    logits = _logits(3, 4, 4, scale=1.0, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, iters=20), (logits,))
    assert torch.autograd.gradgradcheck(lambda x: sinkhorn(x, iters=5), (logits,))


def test_gradient_with_random_upstream_matches_finite_differences():
    """A sum of a doubly stochastic matrix is constant (= n), so `out.sum().backward()` tests nothing;
    use a random upstream gradient and compare with central differences of <g, S(x)>."""
    torch.manual_seed(1)
    x = _logits(4, 4, scale=1.0, dtype=torch.float64).requires_grad_()
    g = torch.randn(4, 4, dtype=torch.float64)
    (sinkhorn(x) * g).sum().backward()
    fd = torch.zeros_like(x)
    h = 1e-6
    for idx in torch.cartesian_prod(torch.arange(4), torch.arange(4)):
        i, j = idx.tolist()
        e = torch.zeros_like(x)
        e[i, j] = h
        fd[i, j] = ((sinkhorn(x.detach() + e) * g).sum() - (sinkhorn(x.detach() - e) * g).sum()) / (2 * h)
    torch.testing.assert_close(x.grad, fd, atol=1e-7, rtol=1e-6)
    assert x.grad.abs().max() > 1e-3  # not the vacuous ~0 gradient of the ones-upstream test
    # and the vacuous test is indeed vacuous:
    y = x.detach().clone().requires_grad_()
    sinkhorn(y).sum().backward()
    assert y.grad.abs().max() < 1e-2 * x.grad.abs().max()


def test_n1_is_exactly_one():
    assert torch.equal(sinkhorn(_logits(5, 1, 1)), torch.ones(5, 1, 1))


# ---- the hand-written backward used by the PyTorch path (models.kernels.sinkhorn.sinkhorn_fast) ----


@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_fast_sinkhorn_equals_unrolled_autograd(n, eps):
    """Same values and, for a random upstream gradient, the same gradient as autograd through the unrolled loop."""
    from models.kernels.sinkhorn import sinkhorn_fast

    logits = _logits(3, 5, n, n, scale=3.0, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(3, 5, n, n, dtype=torch.float64)
    ref = sinkhorn(logits, 20, eps)
    out = sinkhorn_fast(logits, 20, eps)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), logits)
    (g_out,) = torch.autograd.grad((out * upstream).sum(), logits)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-10, atol=1e-12)
    if n > 1:  # (n = 1: the map is the constant 1)
        assert g_ref.abs().max() > 1e-3  # the upstream gradient is not one the projection annihilates


def test_fast_sinkhorn_gradcheck_float64():
    from models.kernels.sinkhorn import sinkhorn_fast

    logits = _logits(2, 4, 4, scale=2.0, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: sinkhorn_fast(z, 7, 0.0), (logits,))
    assert torch.autograd.gradcheck(lambda z: sinkhorn_fast(z, 7, 1e-3), (logits,))


@pytest.mark.parametrize("fn", ["sinkhorn", "sinkhorn_fast"])
@pytest.mark.parametrize("scale", [40.0, 200.0])
def test_extreme_logits_stay_exact_and_finite(fn, scale):
    """Logit spreads of hundreds (the LR stress test reaches them): exp(logits - max) underflows whole rows in
    float32, which in the probability domain gives rows summing to 0 and NaN gradients. The log domain keeps every
    row sum at 1, agrees with the float64 map, and its gradient is finite."""
    from models.kernels import sinkhorn as module

    f = getattr(module, fn)
    torch.manual_seed(0)
    logits = (scale * torch.randn(64, 4, 4)).requires_grad_()
    out = f(logits, 20)
    out.backward(torch.randn_like(out))
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    assert (out.sum(-1) - 1).abs().max() < 1e-5
    torch.testing.assert_close(out.double(), module.sinkhorn(logits.detach().double(), 20), atol=1e-5, rtol=0)


def test_probability_domain_fails_where_the_log_domain_does_not():
    """The check above can fail: the eps > 0 (probability-domain) form loses whole rows at the same logits."""
    torch.manual_seed(0)
    logits = 200.0 * torch.randn(64, 4, 4)
    assert (sinkhorn(logits, 20, eps=1e-30).sum(-1) - 1).abs().max() > 0.5
