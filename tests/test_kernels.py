"""Fused kernels against their PyTorch references, forward and backward: Triton (TRITON_INTERPRET=1 on the CPU)
and the C++ CPU kernels (float32 only).

Tolerances: float32 inputs agree to 1e-5 (relative, with 1e-5 absolute floor: only summation order
differs); bf16 activations agree to one bf16 rounding of the output (2^-8 relative) since both sides
accumulate in float32 and round once. Coefficients (H_pre, H_post, H_res) are float32 on both sides.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from models.config import connection_config
from models.connections import build_connection
from models.kernels import cpu_compiler_available, get_ops, torch_ops

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
needs_compiler = pytest.mark.skipif(not cpu_compiler_available(), reason="no C++ compiler for the CPU kernels")


def _fused(name: str):
    if name == "triton":
        from models.kernels import triton_ops

        return triton_ops
    from models.kernels import cpu_ops

    return cpu_ops


# (backend, dtype) pairs each parity test runs: the CPU kernels take float32 only
BACKENDS = [pytest.param("triton", marks=needs_triton), pytest.param("cpu", marks=needs_compiler)]
BACKEND_DTYPES = [
    pytest.param("triton", torch.float32, marks=needs_triton),
    pytest.param("triton", torch.bfloat16, marks=needs_triton),
    pytest.param("cpu", torch.float32, marks=needs_compiler),
]

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


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_proj_rms(n, backend, dtype):
    fused = _fused(backend)
    x = torch.randn(T, n * C).to(dtype)
    phi = 0.1 * torch.randn(n * C, n * n + 2 * n)
    # phi's gradient sums over all tokens: compare in float32 terms even for bf16 x
    _compare(lambda a, b: torch_ops.proj_rms(a, b, 1e-6), lambda a, b: fused.proj_rms(a, b, 1e-6), [x, phi], dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_coefficients_and_sinkhorn(n, backend):
    fused = _fused(backend)
    M = n * n + 2 * n
    hh = 3.0 * torch.randn(T, M)
    inv = torch.rand(T) + 0.5
    alpha = torch.tensor([0.7, -0.4, 1.3])
    bias = torch.randn(M)
    # pre_eps, then sinkhorn_eps: the CPU kernel is the paper's eps = 0 iteration (it hands eps > 0 to the reference)
    args = (n, 20, 1e-6, 1e-6 if backend == "triton" else 0.0)
    _compare(
        lambda *a: torch_ops.coefficients(*a, *args),
        lambda *a: fused.coefficients(*a, *args),
        [hh, inv, alpha, bias],
        torch.float32,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_coefficients_without_eps_and_few_iterations(backend):
    fused = _fused(backend)
    n, M = 4, 24
    inputs = [torch.randn(T, M), torch.rand(T) + 0.5, torch.tensor([1.0, 1.0, 2.0]), torch.randn(M)]
    for iters in (1, 3):
        _compare(
            lambda *a, k=iters: torch_ops.coefficients(*a, n, k),
            lambda *a, k=iters: fused.coefficients(*a, n, k),
            inputs,
            torch.float32,
        )


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_pre_mix(n, backend, dtype):
    x = torch.randn(2, T // 2 + 1, n, C).to(dtype)
    H_pre = torch.rand(2, T // 2 + 1, n)
    _compare(torch_ops.pre_mix, _fused(backend).pre_mix, [x, H_pre], dtype)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_post_res_mix(n, backend, dtype):
    x = torch.randn(T, n, C).to(dtype)
    H_res = torch.softmax(torch.randn(T, n, n), -1)
    H_post = 2 * torch.rand(T, n)
    y = torch.randn(T, C).to(dtype)
    _compare(torch_ops.post_res_mix, _fused(backend).post_res_mix, [x, H_res, H_post, y], dtype)


@needs_triton
@needs_compiler
def test_dispatch_rules(monkeypatch):
    from models.kernels import cpu_ops, triton_ops

    cpu = torch.device("cpu")
    assert get_ops("auto", cpu) is cpu_ops  # float32 on the CPU with a compiler: the fused CPU kernels
    assert get_ops("auto", cpu, torch.bfloat16) is torch_ops
    assert get_ops("cpu", cpu) is cpu_ops
    assert get_ops("reference", cpu) is torch_ops
    assert get_ops("triton", cpu) is triton_ops  # TRITON_INTERPRET=1 in the test session
    with pytest.raises(RuntimeError, match="kernels='cpu' on a cuda tensor"):
        get_ops("cpu", torch.device("cuda"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs TRITON_INTERPRET=1"):
        get_ops("triton", cpu)
    with pytest.raises(ValueError, match="not one of"):
        get_ops("fast", cpu)
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert get_ops("auto", cpu) is torch_ops  # nothing to build the CPU kernels with


@needs_compiler
def test_cpu_ops_reject_other_dtypes():
    from models.kernels import cpu_ops

    x = torch.randn(3, 2, 8, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="take float32 tensors"):
        cpu_ops.pre_mix(x, torch.rand(3, 2))


def _connection_grads(arch: str, n: int, backend: str, **overrides):
    """Output and gradients (state and every parameter) of one connection around a small nonlinear sub-layer."""
    torch.manual_seed(3)
    cfg = connection_config(arch=arch, n=n, kernels=backend, **overrides)
    conn = build_connection(cfg, C, 1, 1e-6)
    with torch.no_grad():  # away from the init, where HC's dynamic weights are zero and streams identical
        for p in conn.parameters():
            p.add_(0.3 * torch.randn_like(p))
    w = torch.randn(C)
    x = torch.randn(2, T // 2, n, C, requires_grad=True)
    out = conn(x, lambda u: torch.tanh(u * w))
    out.backward(torch.randn_like(out))
    return out.detach(), {"x": x.grad, **{name: p.grad for name, p in conn.named_parameters()}}


@needs_compiler
@pytest.mark.parametrize("arch", ["hc", "mhc"])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_fused_cpu_connection_step_matches_reference(arch, n):
    """The whole connection (the fused pre-sub-layer node, the coefficients, both mixes) on the CPU kernels gives
    the reference's output and gradients, the parameters' included."""
    ref_out, ref_grads = _connection_grads(arch, n, "reference")
    out, grads = _connection_grads(arch, n, "cpu")
    torch.testing.assert_close(out, ref_out, atol=1e-5 * ref_out.abs().max().item(), rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        # float32 rounding of sums over the projection's terms: relative to the gradient's own scale
        scale = ref_grads[name].abs().max().item()
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5 * scale, rtol=1e-5, msg=name)
        assert g.abs().max() > 0, name


@needs_compiler
@pytest.mark.parametrize("spread", [30.0, 40.0])
def test_cpu_coefficients_survive_extreme_logits(spread):
    """Logits of +-spread (a learning-rate stress test reaches them): no non-finite value or gradient, and the
    reference's log-domain result. 30 runs the kernel's probability-domain branch, 40 (spread 80) the log domain."""
    from models.kernels import cpu_ops

    n, M = 4, 24
    torch.manual_seed(0)
    signs = torch.randint(0, 2, (T, n * n)).float() * 2 - 1
    hh = torch.cat([torch.randn(T, 2 * n), spread * signs], dim=-1)  # inv = 1, alpha = 1: logits = hh + b
    inputs = [hh, torch.ones(T), torch.ones(3), torch.zeros(M)]
    upstream = [torch.randn(T, n), torch.randn(T, n), torch.randn(T, n, n)]
    ref_out, ref_grad = _grads(lambda *a: torch_ops.coefficients(*a, n, 20), inputs, upstream)
    out, grad = _grads(lambda *a: cpu_ops.coefficients(*a, n, 20), inputs, upstream)
    for t in (*out, *grad):
        assert torch.isfinite(t).all()
    for r, f in zip(ref_out, out, strict=True):
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)
    for r, f in zip(ref_grad, grad, strict=True):
        # alpha's gradient sums T terms of size ~spread that nearly cancel: rounding scales with the terms
        torch.testing.assert_close(f, r, atol=1e-6 * spread * T, rtol=1e-5)


@needs_compiler
def test_cpu_mhc_connection_gradients_stay_finite_at_extreme_logits():
    """A whole mHC connection whose H_res logits are +-40 (bias) trains without a non-finite gradient."""
    cfg = connection_config(arch="mhc", n=4, kernels="cpu")
    conn = build_connection(cfg, C, 0, 1e-6)
    with torch.no_grad():
        conn.bias[8:] = 40.0 * (torch.randint(0, 2, (16,)).float() * 2 - 1)
    x = torch.randn(T, 4, C, requires_grad=True)
    out = conn(x, torch.tanh)
    out.backward(torch.randn_like(out))
    for name, p in [("x", x), *conn.named_parameters()]:
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(
    "fused", [pytest.param("triton", marks=[needs_triton, pytest.mark.slow]), pytest.param("cpu", marks=needs_compiler)]
)
@pytest.mark.parametrize("arch", ["hc", "mhc"])
def test_tiny_model_trains_the_same_with_fused_and_reference_ops(fused, arch):
    """5 AdamW steps of a tiny model: losses agree within 1e-4 between the fused and the reference backend."""
    import torch.nn.functional as F

    from models.transformer import Transformer
    from tests.helpers import tiny_config

    tokens = torch.randint(0, 256, (1, 13))  # 12 positions: one kernel program per op (the interpreter is slow)
    losses = {}
    for backend in ("reference", fused):
        torch.manual_seed(0)
        model = Transformer(tiny_config(arch, kernels=backend))
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
    assert losses[fused] == pytest.approx(losses["reference"], abs=1e-4)


@needs_compiler
def test_cpu_kernel_cache_is_per_torch_capability_and_source(monkeypatch, tmp_path):
    from models.kernels import cpu_ops

    monkeypatch.setenv("MHC_KERNEL_CACHE", str(tmp_path))
    folder = cpu_ops.cache_dir()
    assert folder.parent == tmp_path
    assert torch.__version__ in folder.name and torch.backends.cpu.get_cpu_capability().lower() in folder.name
    monkeypatch.setattr(cpu_ops, "SOURCE", tmp_path / "other.cpp")
    (tmp_path / "other.cpp").write_text("// other kernels\n")
    assert cpu_ops.cache_dir() != folder  # another source builds beside, not over, this one
