"""mHC-lite: H_res = sum_k softmax(a)_k P_k over the n! permutation matrices, H_pre/H_post as mHC."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.config import (
    ConfigError,
    ConnectionConfig,
    ModelConfig,
    apply_overrides,
    connection_config,
    from_dict,
    validate_model_config,
)
from models.connections import ManifoldHyperConnection, ManifoldHyperConnectionLite
from models.connections.mhc_lite import lite_coefficients, permutation_matrices, permutation_mixture
from models.diagnostics import capture_mappings
from models.registry import model_config
from models.summary import summarize
from models.transformer import Transformer
from tests.helpers import tiny_config

ALL_FIXED = {"learn_res": False, "learn_pre": False, "learn_post": False}


def _lite(n: int = 4, dim: int = 8, index: int = 0, **fields) -> ManifoldHyperConnectionLite:
    return ManifoldHyperConnectionLite(connection_config("mhc-lite", n=n, **fields), dim=dim, index=index)


def _randomise(conn: ManifoldHyperConnectionLite, scale: float = 1.0) -> None:
    """Input-dependent, far-from-identity mappings: logits of order `scale` from phi and from b."""
    with torch.no_grad():
        conn.alpha.fill_(1.0)
        conn.phi.normal_(std=scale / math.sqrt(conn.phi.shape[0]))
        conn.bias.normal_(std=scale)


def test_permutation_matrices_are_all_permutations_identity_first():
    P = permutation_matrices(3)
    assert P.shape == (6, 3, 3)
    torch.testing.assert_close(P[0], torch.eye(3))
    assert len({tuple(p.flatten().tolist()) for p in P}) == 6  # distinct
    for p in P:  # each a permutation matrix: 0/1 entries, one 1 per row and per column
        assert set(p.unique().tolist()) == {0.0, 1.0}
        assert (p.sum(0) == 1).all() and (p.sum(1) == 1).all()
    # P_k[i, sigma_k(i)] = 1 (output stream i reads input stream sigma_k(i)), for itertools' fourth permutation,
    # the cycle (1, 2, 0) (not symmetric, so the orientation shows)
    torch.testing.assert_close(P[3], torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]))


def test_n2_by_hand():
    """n = 2: the permutations are I and the swap, so H_res = [[p, 1-p], [1-p, p]] with p = softmax weight of I."""
    n = 2
    hh = torch.tensor([[0.5, -1.0, 2.0, 1.0, 0.1, -0.3]])  # [pre(2) | post(2) | res(2 permutations)]
    inv = torch.tensor([2.0])
    alpha = torch.tensor([0.5, 0.25, 1.0])
    bias = torch.tensor([0.0, 1.0, -1.0, 0.0, 0.1, -0.1])
    H_pre, H_post, H_res = lite_coefficients(hh, inv, alpha, bias, permutation_matrices(n))
    # pre logits 0.5*2*[0.5, -1] + [0, 1] = [0.5, 0.0]; post logits 0.25*2*[2, 1] + [-1, 0] = [0.0, 0.5]
    torch.testing.assert_close(H_pre, torch.tensor([[0.6224593312018546, 0.5]]))
    torch.testing.assert_close(H_post, torch.tensor([[1.0, 1.2449186624037092]]))
    # res logits 1*2*[0.1, -0.3] + [0.1, -0.1] = [0.3, -0.7]: p = e^0.3 / (e^0.3 + e^-0.7) = sigmoid(1) = 0.7310586
    p, q = 0.7310585786300049, 0.2689414213699951
    torch.testing.assert_close(H_res, torch.tensor([[[p, q], [q, p]]]))

    # the same numbers through the connection (phi = 0: the logits are b): out_i = sum_j H_res[i, j] x_j + H_post_i y
    conn = _lite(n=2, dim=2, bias_init="zero")
    with torch.no_grad():
        conn.phi.zero_()
        conn.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.3, -0.7]))
    x = torch.tensor([[1.0, 2.0], [10.0, 20.0]])  # 2 streams, C = 2
    out = conn(x, lambda u: u)  # F = identity: y = u = H_pre x = 0.5 x_0 + 0.5 x_1 = [5.5, 11]
    y = torch.tensor([5.5, 11.0])  # H_post = 2 sigmoid(0) = 1
    expected = torch.stack([p * x[0] + q * x[1] + y, q * x[0] + p * x[1] + y])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("n", [3, 4])
def test_h_res_is_exactly_doubly_stochastic(n):
    torch.manual_seed(n)
    conn = _lite(n=n, dim=16)
    _randomise(conn, scale=3.0)
    x = torch.randn(4, 9, n, 16)
    _, _, H_res = conn.mappings(x)
    assert H_res.dtype == torch.float32 and H_res.shape == (4, 9, n, n)
    assert (H_res >= 0).all()
    ones = torch.ones(4, 9, n)
    torch.testing.assert_close(H_res.sum(-1), ones, atol=1e-6, rtol=0)
    torch.testing.assert_close(H_res.sum(-2), ones, atol=1e-6, rtol=0)
    # far from the identity and input-dependent, so the sums above are not trivially those of I
    assert (H_res - torch.eye(n)).abs().amax() > 0.3
    assert (H_res[0, 0] - H_res[0, 1]).abs().amax() > 1e-2


@pytest.mark.parametrize("n", [2, 4])
def test_init_spread_is_near_identity_and_zero_is_uniform(n):
    L = 4.0
    spread = _lite(n=n, index=1, bias_init="spread", identity_logit=L)
    res_bias = spread.bias[2 * n :]
    assert res_bias.shape == (math.factorial(n),) and res_bias[0] == L and (res_bias[1:] == -L).all()
    with torch.no_grad():
        spread.phi.zero_()
    H_pre, H_post, H_res = spread.mappings(torch.randn(3, n, 8))
    # weight of I: p = e^L / (e^L + (n! - 1) e^-L); the (n-1)! - 1 other permutations fixing stream i share the rest
    m = math.factorial(n)
    p = math.exp(L) / (math.exp(L) + (m - 1) * math.exp(-L))
    diag = p + (1 - p) * (math.factorial(n - 1) - 1) / (m - 1)
    expected = torch.full((n, n), (1 - diag) / (n - 1))
    expected.fill_diagonal_(diag)
    torch.testing.assert_close(H_res, expected.expand(3, n, n))
    assert (torch.diagonal(H_res, dim1=-2, dim2=-1) > 0.99).all()
    assert H_pre[0].argmax() == 1 % n  # H_pre and H_post as mHC's spread init
    assert H_post[0].argmax() == 1 % n

    zero = _lite(n=n, bias_init="zero")
    with torch.no_grad():
        zero.phi.zero_()
    H_pre, H_post, H_res = zero.mappings(torch.randn(3, n, 8))
    torch.testing.assert_close(H_res, torch.full((3, n, n), 1.0 / n), atol=1e-7, rtol=0)
    torch.testing.assert_close(H_pre, torch.full((3, n), 0.5))
    torch.testing.assert_close(H_post, torch.ones(3, n))


def test_all_fixed_lite_is_the_residual_network_like_hc_and_mhc():
    """learn_res/pre/post all false: H_res = I, H_pre = 1/n, H_post = 1 and no parameters, the same model as HC and
    mHC with the same switches and as the residual baseline (the same core weights at one seed)."""
    tokens = torch.randint(0, 256, (2, 16))
    outputs = {}
    for arch in ("mhc-lite", "mhc", "hc"):
        torch.manual_seed(0)
        model = Transformer(tiny_config(arch, **ALL_FIXED)).eval()
        assert sum(p.numel() for c in model.connections() for p in c.parameters()) == 0
        with torch.no_grad():
            outputs[arch] = model(tokens)
    torch.manual_seed(0)
    with torch.no_grad():
        outputs["baseline"] = Transformer(tiny_config("baseline")).eval()(tokens)
    torch.testing.assert_close(outputs["mhc-lite"], outputs["mhc"], atol=0, rtol=0)
    torch.testing.assert_close(outputs["mhc-lite"], outputs["hc"], atol=0, rtol=0)
    torch.testing.assert_close(outputs["mhc-lite"], outputs["baseline"], atol=1e-5, rtol=1e-5)
    conn = _lite(n=4, **ALL_FIXED)
    H_pre, H_post, H_res = conn.mappings(torch.randn(2, 4, 8))
    torch.testing.assert_close(H_pre, torch.full((2, 4), 0.25))
    torch.testing.assert_close(H_post, torch.ones(2, 4))
    torch.testing.assert_close(H_res, torch.eye(4).expand(2, 4, 4))


def test_fixed_res_is_mhc_with_fixed_res_and_res_only_matches_the_full_module():
    """learn_res = false: H_res = I and H_pre/H_post are mHC's (same parameters, same layout). learn_res alone: the
    res columns of phi/b give the same H_res as in the full module (the [pre | post | res] layout)."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8)
    lite = _lite(n=4, learn_res=False, index=2)
    _randomise(lite)
    mhc = ManifoldHyperConnection(connection_config("mhc", n=4, learn_res=False), dim=8, index=2)
    mhc.load_state_dict(lite.state_dict())
    assert lite.phi.shape == (32, 8)
    for got, ref in zip(lite.mappings(x), mhc.mappings(x), strict=True):
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
    torch.testing.assert_close(lite.mappings(x)[2], torch.eye(4).expand(3, 4, 4))

    full = _lite(n=4, index=2)
    _randomise(full)
    res_only = _lite(n=4, index=2, learn_pre=False, learn_post=False)
    assert res_only.phi.shape == (32, 24) and res_only.alpha.shape == (1,)
    with torch.no_grad():
        res_only.phi.copy_(full.phi[:, 8:])
        res_only.bias.copy_(full.bias[8:])
        res_only.alpha.copy_(full.alpha[2:])
    H_pre, H_post, H_res = res_only.mappings(x)
    torch.testing.assert_close(H_res, full.mappings(x)[2], atol=1e-6, rtol=1e-6)
    assert (H_res - torch.eye(4)).abs().amax() > 0.1
    torch.testing.assert_close(H_pre, torch.full((3, 4), 0.25))
    torch.testing.assert_close(H_post, torch.ones(3, 4))


def test_causality_of_a_tiny_mhc_lite_model():
    torch.manual_seed(0)
    model = Transformer(tiny_config("mhc-lite", moe=True)).eval()
    tokens = torch.randint(0, 256, (2, 20))
    t = 9
    changed = tokens.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 17) % 256
    with torch.no_grad(), capture_mappings(model) as rec_a:
        logits_a = model(tokens)
    with torch.no_grad(), capture_mappings(model) as rec_b:
        logits_b = model(changed)
    assert len(rec_a) == 2 * model.cfg.n_layers
    torch.testing.assert_close(logits_a[:, : t + 1], logits_b[:, : t + 1], atol=1e-6, rtol=1e-6)
    for ra, rb in zip(rec_a, rec_b, strict=True):
        torch.testing.assert_close(ra["H_res"][:, : t + 1], rb["H_res"][:, : t + 1], atol=1e-6, rtol=1e-6)
    assert (logits_a[:, t + 1 :] - logits_b[:, t + 1 :]).abs().max() > 1e-3  # the change is visible after t
    assert (rec_a[-1]["H_res"][:, t + 1 :] - rec_b[-1]["H_res"][:, t + 1 :]).abs().max() > 0


def test_gradcheck_of_the_coefficients_in_float64():
    torch.manual_seed(0)
    n = 3
    m = 2 * n + math.factorial(n)
    hh = torch.randn(5, m, dtype=torch.float64, requires_grad=True)
    inv = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    alpha = torch.tensor([0.7, -0.4, 1.3], dtype=torch.float64, requires_grad=True)
    bias = torch.randn(m, dtype=torch.float64, requires_grad=True)
    perms = permutation_matrices(n).double()
    out = lite_coefficients(hh, inv, alpha, bias, perms)
    assert all(o.dtype == torch.float64 for o in out)
    assert torch.autograd.gradcheck(lambda *a: lite_coefficients(*a, perms), (hh, inv, alpha, bias))
    logits = torch.randn(4, math.factorial(4), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: permutation_mixture(a, permutation_matrices(4).double()), (logits,))


def test_fused_cpu_path_matches_the_reference_ops():
    """`kernels: auto` on a float32 CPU state runs the fused stream_pre node (where a C++ compiler is) with the lite
    coefficients inside; outputs and every gradient equal the eager reference path."""
    from models.kernels import cpu_compiler_available

    results = {}
    for kernels in ("reference", "auto"):
        torch.manual_seed(0)
        conn = _lite(n=4, dim=16, index=1, kernels=kernels)
        _randomise(conn)
        x = torch.randn(3, 5, 4, 16, requires_grad=True)
        w = torch.randn(16)
        out = conn(x, lambda u, w=w: torch.tanh(u * w))
        out.pow(2).sum().backward()
        results[kernels] = [out, x.grad, conn.phi.grad, conn.bias.grad, conn.alpha.grad]
    for got, ref in zip(results["auto"], results["reference"], strict=True):
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=2e-5)
    assert all(g.abs().sum() > 0 for g in results["auto"][2:])
    if cpu_compiler_available():
        from models.kernels import cpu_ops, get_ops

        assert get_ops("auto", torch.device("cpu"), torch.float32) is cpu_ops


def test_tiny_model_trains_and_h_res_moves():
    torch.manual_seed(0)
    model = Transformer(tiny_config("mhc-lite"))
    tokens = torch.randint(0, 256, (4, 17))
    probe = tokens[:1, :-1]

    def h_res() -> torch.Tensor:
        with torch.no_grad(), capture_mappings(model) as rec:
            model(probe)
        return torch.stack([r["H_res"] for r in rec])

    before = h_res()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(6):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for conn in model.connections():
                for p in (conn.phi, conn.bias, conn.alpha):
                    assert p.grad is not None and p.grad.abs().sum() > 0
                assert conn.mapping_grad_norms()["res"] > 0
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    after = h_res()
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(after.sum(-1), torch.ones(after.shape[:-1]), atol=1e-6, rtol=0)


def test_meta_build_then_materialise_rebuilds_the_permutations():
    cfg = tiny_config("mhc-lite")
    eager = Transformer(cfg).eval()
    with torch.device("meta"):
        lazy = Transformer(cfg)
    lazy.to_empty(device="cpu")
    lazy.init_weights()
    assert all("perms" not in k for k in eager.state_dict())  # derived, not stored
    lazy.load_state_dict(eager.state_dict())
    for conn in lazy.connections():
        torch.testing.assert_close(conn.perms, permutation_matrices(4))
    tokens = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(lazy.eval()(tokens), eager(tokens))


def test_config_refuses_sinkhorn_fields_and_large_n():
    for key, value in (("sinkhorn_iters", 20), ("sinkhorn_eps", 1e-6)):
        with pytest.raises(ConfigError, match=f"connection.{key} applies to arch 'mhc' only .arch is 'mhc-lite'"):
            from_dict(ModelConfig, {"connection": {"arch": "mhc-lite", key: value}})
    cfg = from_dict(ConnectionConfig, {"arch": "mhc-lite", "bias_init": "zero", "pre_eps": 1e-6, "n": 6})
    assert type(cfg).__name__ == "MHCLiteConfig" and cfg.bias_init == "zero"
    validate_model_config(apply_overrides(model_config("tiny"), ["connection.arch=mhc-lite", "connection.n=6"]))
    with pytest.raises(ConfigError, match="connection.n = 7 is too large for arch 'mhc-lite'.*5040"):
        validate_model_config(apply_overrides(model_config("tiny"), ["connection.arch=mhc-lite", "connection.n=7"]))
    with pytest.raises(ConfigError, match="needs every mHC-lite mapping learned"):
        validate_model_config(
            apply_overrides(
                model_config("tiny"),
                ["connection.arch=mhc-lite", "connection.kernels=triton", "connection.learn_pre=false"],
            )
        )


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("learned", [(True, True, True), (False, True, True), (True, False, False), (False,) * 3])
def test_parameter_count_is_the_formula(n, learned):
    pre, post, res = learned
    cfg = tiny_config("mhc-lite", n=n, learn_pre=pre, learn_post=post, learn_res=res)
    s = summarize(cfg)
    width = n * pre + n * post + math.factorial(n) * res
    per = n * cfg.dim * width + width + sum(learned)
    assert s["connection_params"] == s["expected_connection_params"] == 2 * cfg.n_layers * per
    if all(learned):  # n C (2n + n!) + (2n + n!) + 3 per sub-layer
        assert per == n * cfg.dim * (2 * n + math.factorial(n)) + 2 * n + math.factorial(n) + 3


def test_coefficients_are_float32_for_bf16_activations():
    conn = _lite(n=3, dim=16)
    _randomise(conn)
    x = torch.randn(2, 7, 3, 16, dtype=torch.bfloat16)
    H_pre, H_post, H_res = conn.mappings(x)
    assert H_pre.dtype == H_post.dtype == H_res.dtype == torch.float32
    torch.testing.assert_close(H_res.sum(-1), torch.ones(2, 7, 3), atol=1e-6, rtol=0)
    out = conn(x, lambda u: u * 2)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
