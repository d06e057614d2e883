"""Fused Triton kernels against their PyTorch references, forward and backward (TRITON_INTERPRET=1 on CPU).

Tolerances: float32 inputs agree to 1e-5 (relative, with 1e-5 absolute floor: only summation order
differs); bf16 activations agree to one bf16 rounding of the output (2^-8 relative) since both sides
accumulate in float32 and round once. Coefficients (H_pre, H_post, H_res) are float32 on both sides.
"""

from __future__ import annotations

import pytest
import torch

from models.kernels import get_ops, reference

triton_ops = pytest.importorskip("models.kernels.triton_ops")

T, C = 37, 72  # neither a multiple of the kernels' token block (16) nor of the channel block (64)
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _grads(fn, inputs, upstream):
    """Outputs and input-gradients of fn for random upstream gradients."""
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, upstream)
    return [o.detach() for o in outs], [x.grad for x in inputs if x.requires_grad]


def _compare(ref, fused, inputs, dtype, out_dtypes=None):
    torch.manual_seed(1)
    with torch.no_grad():
        probe = ref(*inputs)
    probe = probe if isinstance(probe, tuple) else (probe,)
    upstream = [torch.randn_like(o) for o in probe]
    ref_out, ref_grad = _grads(ref, inputs, upstream)
    fused_out, fused_grad = _grads(fused, inputs, upstream)
    for r, f in zip(ref_out, fused_out, strict=True):
        assert f.dtype == r.dtype
        torch.testing.assert_close(f.float(), r.float(), **TOL[dtype])
    for r, f in zip(ref_grad, fused_grad, strict=True):
        assert f.dtype == r.dtype and f.shape == r.shape
        torch.testing.assert_close(f.float(), r.float(), **TOL[dtype])
        assert f.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_proj_rms(n, dtype):
    x = torch.randn(T, n * C).to(dtype)
    phi = 0.1 * torch.randn(n * C, n * n + 2 * n)
    # phi's gradient sums over all tokens: compare in float32 terms even for bf16 x
    _compare(lambda a, b: reference.proj_rms(a, b, 1e-6), lambda a, b: triton_ops.proj_rms(a, b, 1e-6), [x, phi], dtype)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_coefficients_and_sinkhorn(n):
    M = n * n + 2 * n
    hh = 3.0 * torch.randn(T, M)
    inv = torch.rand(T) + 0.5
    alpha = torch.tensor([0.7, -0.4, 1.3])
    bias = torch.randn(M)
    args = (n, 20, 1e-6, 1e-6)
    _compare(
        lambda *a: reference.coefficients(*a, *args),
        lambda *a: triton_ops.coefficients(*a, *args),
        [hh, inv, alpha, bias],
        torch.float32,
    )


def test_coefficients_without_eps_and_few_iterations():
    n, M = 4, 24
    inputs = [torch.randn(T, M), torch.rand(T) + 0.5, torch.tensor([1.0, 1.0, 2.0]), torch.randn(M)]
    for iters in (1, 3):
        _compare(
            lambda *a, k=iters: reference.coefficients(*a, n, k),
            lambda *a, k=iters: triton_ops.coefficients(*a, n, k),
            inputs,
            torch.float32,
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_pre_mix(n, dtype):
    x = torch.randn(2, T // 2 + 1, n, C).to(dtype)
    H_pre = torch.rand(2, T // 2 + 1, n)
    _compare(reference.pre_mix, triton_ops.pre_mix, [x, H_pre], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_post_res_mix(n, dtype):
    x = torch.randn(T, n, C).to(dtype)
    H_res = torch.softmax(torch.randn(T, n, n), -1)
    H_post = 2 * torch.rand(T, n)
    y = torch.randn(T, C).to(dtype)
    _compare(reference.post_res_mix, triton_ops.post_res_mix, [x, H_res, H_post, y], dtype)


def test_dispatch_rules(monkeypatch):
    cpu = torch.device("cpu")
    assert get_ops("auto", cpu) is reference
    assert get_ops("reference", cpu) is reference
    assert get_ops("triton", cpu) is triton_ops  # TRITON_INTERPRET=1 in the test session
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs TRITON_INTERPRET=1"):
        get_ops("triton", cpu)
    with pytest.raises(ValueError, match="not one of"):
        get_ops("fast", cpu)


@pytest.mark.slow
def test_tiny_model_trains_the_same_with_fused_and_reference_ops():
    """5 AdamW steps of a tiny mHC model: losses agree within 1e-4 between the two backends."""
    import torch.nn.functional as F

    from models.transformer import Transformer
    from tests.helpers import tiny_config

    tokens = torch.randint(0, 256, (1, 13))  # 12 positions: one kernel program per op (the interpreter is slow)
    losses = {}
    for backend in ("reference", "triton"):
        torch.manual_seed(0)
        model = Transformer(tiny_config("mhc", kernels=backend))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        run = []
        for _ in range(5):
            loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses[backend] = run
    assert losses["reference"][-1] < losses["reference"][0]
    assert losses["triton"] == pytest.approx(losses["reference"], abs=1e-4)
