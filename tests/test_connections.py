"""The connection variants against the papers' equations."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.config import connection_config
from models.connections import HyperConnection, ManifoldHyperConnection, sinkhorn
from models.diagnostics import capture_mappings
from models.kernels.torch_ops import post_res_mix, pre_mix
from models.transformer import Transformer
from tests.helpers import tiny_config


def _tokens(B=2, T=16, vocab=256):
    return torch.randint(0, vocab, (B, T))


def _transplant(src: Transformer, dst: Transformer) -> None:
    """Copy every shared weight from src into dst; dst's own connection parameters stay."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected
    assert all("connection" in k for k in missing), missing


def test_mixing_orientation_by_hand():
    """out_i = sum_j H_res[i, j] x_j + H_post[i] y ; u = sum_j H_pre[j] x_j, with a non-symmetric H_res."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 100.0]])  # 3 streams, C = 2
    H_res = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    H_post = torch.tensor([1.0, 2.0, 3.0])
    H_pre = torch.tensor([1.0, 0.0, 0.5])
    y = torch.tensor([7.0, -1.0])
    out = post_res_mix(x, H_res, H_post, y)
    expected = torch.stack([x[1] + 1 * y, x[2] + 2 * y, 0.5 * x[0] + 0.5 * x[1] + 3 * y])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(pre_mix(x, H_pre), x[0] + 0.5 * x[2])


def _mhc_reference(x, phi, bias, alpha, n, iters, eps):
    """mHC Eq. 7-9 written the paper's way: RMSNorm(vec x) first, then phi; mat() row-major."""
    xv = x.flatten(-2).double()
    xn = xv / torch.sqrt(xv.pow(2).mean(-1, keepdim=True) + eps)
    h = xn @ phi.double()
    pre = torch.sigmoid(alpha[0] * h[..., :n] + bias[:n])
    post = 2 * torch.sigmoid(alpha[1] * h[..., n : 2 * n] + bias[n : 2 * n])
    res_logits = (alpha[2] * h[..., 2 * n :] + bias[2 * n :]).reshape(*h.shape[:-1], n, n)
    m = torch.exp(res_logits)
    for _ in range(iters):
        m = m / m.sum(-2, keepdim=True)
        m = m / m.sum(-1, keepdim=True)
    return pre, post, m


@pytest.mark.parametrize("n", [1, 2, 4])
def test_mhc_mappings_match_paper_equations(n):
    cfg = connection_config(arch="mhc", n=n)
    conn = ManifoldHyperConnection(cfg, dim=8, index=3, norm_eps=1e-6)
    with torch.no_grad():
        conn.alpha.copy_(torch.tensor([0.7, -0.4, 1.3]))  # distinct alphas: a swapped split would show
        conn.bias.normal_()
        conn.phi.normal_(std=0.3)
    x = torch.randn(5, n, 8)
    got = conn.mappings(x)
    ref = _mhc_reference(x, conn.phi.detach(), conn.bias.detach().double(), conn.alpha.detach().double(), n, 20, 1e-6)
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-5)


def test_mhc_coefficients_are_float32_for_bf16_activations():
    conn = ManifoldHyperConnection(connection_config(arch="mhc", n=4), dim=16, index=0)
    x = torch.randn(3, 7, 4, 16, dtype=torch.bfloat16)
    H_pre, H_post, H_res = conn.mappings(x)
    assert H_pre.dtype == H_post.dtype == H_res.dtype == torch.float32
    assert (H_res.sum(-1) - 1).abs().max() < 1e-6
    out = conn(x, lambda u: u * 2)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_forward_applies_the_computed_H_res(monkeypatch):
    """If H_res is a permutation and H_post = 0, the output must be exactly the permuted streams."""
    conn = ManifoldHyperConnection(connection_config(arch="mhc", n=3), dim=4, index=0)
    perm = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    x = torch.randn(2, 3, 4)
    # coefficients_from is what every kernel path (fused or not) turns the projection into the mappings with
    monkeypatch.setattr(
        conn,
        "coefficients_from",
        lambda hh, inv, ops: (torch.ones(2, 3), torch.zeros(2, 3), perm.expand(2, 3, 3)),
    )
    out = conn(x, lambda u: torch.full_like(u, 1e3))
    torch.testing.assert_close(out, x[:, [2, 0, 1]])


@pytest.mark.parametrize("arch", ["hc", "mhc"])
def test_changing_H_res_changes_the_output(arch):
    torch.manual_seed(0)
    # Make the streams differ first (at HC's init they are identical copies, so any H_res with unit row
    # sums acts like the identity on them): perturb the first connection's H_post. For mHC use the identity
    # bias init and a non-uniform next H_pre: with column sums of 1, H_res never changes the *sum* of the
    # streams, and at the zero-bias init H_res ~ J/n re-averages the streams and H_pre ~ 1/2 reads only
    # their sum, so a change of one H_res is nearly invisible downstream (~1e-5 here).
    model = Transformer(tiny_config(arch, **({"bias_init": "identity"} if arch == "mhc" else {}))).eval()
    tokens = _tokens()
    first, target, after_target = model.connections()[0], model.connections()[2], model.connections()[3]
    with torch.no_grad():
        if arch == "hc":
            first.static_post.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
        else:
            first.bias[4:8] = torch.tensor([-1.0, 0.0, 1.0, 2.0])
            after_target.bias[:4] = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    before = model(tokens)
    with torch.no_grad():
        if arch == "hc":
            target.static_res.copy_(torch.eye(4)[[1, 2, 3, 0]])  # a row-stochastic permutation
        else:
            target.bias[8:] = 5 * torch.eye(4)[[1, 2, 3, 0]].flatten()
    after = model(tokens)
    assert (after - before).abs().max() > 1e-3


def test_mhc_n1_is_the_residual_model():
    torch.manual_seed(0)
    base = Transformer(tiny_config("baseline")).eval()
    mhc = Transformer(tiny_config("mhc", n=1, bias_init="zero")).eval()
    _transplant(base, mhc)
    tokens = _tokens()
    with capture_mappings(mhc) as records:
        mhc(tokens)
    # H_res is the scalar 1 whatever phi is (the doubly stochastic 1x1 matrix).
    assert all(torch.equal(r["H_res"], torch.ones_like(r["H_res"])) for r in records)
    # With phi = 0 and b = 0: H_pre = 1/2 (invisible through F's pre-norm) and H_post = 1, so the
    # network is exactly x + F(x).
    for conn in mhc.connections():
        with torch.no_grad():
            conn.phi.zero_()
    torch.testing.assert_close(mhc(tokens), base(tokens), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("moe", [False, True])
def test_hc_at_init_is_the_prenorm_residual_model(moe):
    torch.manual_seed(0)
    base = Transformer(tiny_config("baseline", moe=moe)).eval()
    hc = Transformer(tiny_config("hc", moe=moe)).eval()
    _transplant(base, hc)
    tokens = _tokens()
    torch.testing.assert_close(hc(tokens), base(tokens), atol=1e-5, rtol=1e-5)
    # ...and stops being it once a dynamic weight moves (the check can fail).
    with torch.no_grad():
        hc.connections()[1].dynamic_res.normal_()
    assert (hc(tokens) - base(tokens)).abs().max() > 1e-4


def test_hc_init_follows_eq14():
    n = 4
    for index in range(6):
        conn = HyperConnection(connection_config(arch="hc", n=n), dim=8, index=index)
        torch.testing.assert_close(conn.static_pre, torch.eye(n)[index % n])
        torch.testing.assert_close(conn.static_res, torch.eye(n))
        torch.testing.assert_close(conn.static_post, torch.ones(n))
        assert conn.dynamic_pre.abs().sum() == 0 and conn.dynamic_res.abs().sum() == 0
        assert conn.dynamic_alpha_scale.item() == pytest.approx(0.01)
        assert conn.dynamic_beta_scale.item() == pytest.approx(0.01)


def test_hc_dynamic_rows_come_from_their_own_stream():
    """H_res[i, j] = A_r[j, i] with row j of alpha computed from stream j (Algorithm 2)."""
    conn = HyperConnection(connection_config(arch="hc", n=3, hc_tanh=False), dim=5, index=0, norm_eps=1e-6)
    with torch.no_grad():
        conn.dynamic_res.normal_()
        conn.dynamic_alpha_scale.fill_(1.0)
        conn.norm.weight.normal_()
    x = torch.randn(3, 5)
    _, _, H_res = conn.mappings(x)
    normed = conn.norm(x)
    a_r = torch.eye(3) + normed @ conn.dynamic_res  # row j from stream j
    torch.testing.assert_close(H_res, a_r.T)


def test_table1_fixed_mappings():
    cfg = connection_config(arch="hc", n=4, learn_res=False, learn_pre=False, learn_post=False)
    conn = HyperConnection(cfg, dim=8, index=0)
    assert sum(p.numel() for p in conn.parameters()) == 0
    H_pre, H_post, H_res = conn.mappings(torch.randn(2, 4, 8))
    torch.testing.assert_close(H_pre, torch.full((2, 4), 0.25))
    torch.testing.assert_close(H_post, torch.ones(2, 4))
    torch.testing.assert_close(H_res, torch.eye(4).expand(2, 4, 4))
    # H_res alone learnable (Table 1 row 2): only the res parameters and the per-stream norm exist.
    only_res = HyperConnection(dataclasses.replace(cfg, learn_res=True), dim=8, index=0)
    names = {name for name, _ in only_res.named_parameters()}
    assert names == {"static_res", "dynamic_res", "dynamic_alpha_scale", "norm.weight"}


def test_all_fixed_hc_equals_residual_after_any_weights():
    torch.manual_seed(0)
    base = Transformer(tiny_config("baseline")).eval()
    fixed = Transformer(tiny_config("hc", learn_res=False, learn_pre=False, learn_post=False)).eval()
    _transplant(base, fixed)
    tokens = _tokens()
    torch.testing.assert_close(fixed(tokens), base(tokens), atol=1e-5, rtol=1e-5)


def test_mhc_identity_bias_init():
    cfg = connection_config(arch="mhc", n=4, bias_init="identity", identity_logit=6.0)
    conn = ManifoldHyperConnection(cfg, dim=8, index=5)
    with torch.no_grad():
        conn.phi.zero_()
    H_pre, H_post, H_res = conn.mappings(torch.randn(1, 4, 8))
    assert H_pre[0].argmax() == 5 % 4 and H_pre[0, 1] > 0.99
    torch.testing.assert_close(H_post, torch.ones(1, 4))
    assert (torch.diagonal(H_res[0]) > 0.9).all()
    torch.testing.assert_close(H_res, sinkhorn(6.0 * torch.eye(4)).expand(1, 4, 4))


def test_mhc_spread_init_gives_every_stream_its_own_h_post():
    """The shipped init: H_res ~ I, H_pre ~ one-hot of stream (l mod n), H_post 2 sigmoid(+-1) with the large value
    on stream (l mod n): the forward symmetry of replicated streams is broken from the first sub-layer."""
    cfg = connection_config(arch="mhc", n=4, bias_init="spread", identity_logit=4.0)
    conn = ManifoldHyperConnection(cfg, dim=8, index=6)
    with torch.no_grad():
        conn.phi.zero_()
    H_pre, H_post, H_res = conn.mappings(torch.randn(1, 4, 8))
    own = 6 % 4
    expected_post = torch.full((4,), 2 * torch.sigmoid(torch.tensor(-1.0)).item())
    expected_post[own] = 2 * torch.sigmoid(torch.tensor(1.0)).item()
    torch.testing.assert_close(H_post[0], expected_post)
    assert H_pre[0].argmax() == own
    torch.testing.assert_close(H_res, sinkhorn(4.0 * torch.eye(4)).expand(1, 4, 4))


@pytest.mark.parametrize("n, dim", [(4, 64), (2, 48)])
def test_mhc_unit_phi_gives_unit_input_dependent_logits(n, dim):
    """phi_init = unit: alpha * RMSNorm(vec x) phi has standard deviation ~1 (normal: ~0.02 sqrt(nC) alpha)."""
    torch.manual_seed(0)
    for init, expected in (("unit", 1.0), ("normal", 0.02 * (n * dim) ** 0.5 * 0.01)):
        conn = ManifoldHyperConnection(connection_config(arch="mhc", n=n, phi_init=init), dim=dim, index=0)
        x = torch.randn(4096, n * dim)
        x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
        logits = conn.alpha[0].item() * (x @ conn.phi)
        assert logits.std().item() == pytest.approx(expected, rel=0.1)


def test_mhc_fixed_res_is_identity_hc():
    """learn_res = false: H_res = I exactly, no H_res parameters; H_pre and H_post still learned."""
    cfg = connection_config(arch="mhc", n=4, learn_res=False)
    conn = ManifoldHyperConnection(cfg, dim=8, index=1)
    assert conn.phi.shape == (32, 8) and conn.bias.shape == (8,) and conn.alpha.shape == (2,)
    x = torch.randn(3, 4, 8)
    H_pre, H_post, H_res = conn.mappings(x)
    torch.testing.assert_close(H_res, torch.eye(4).expand(3, 4, 4))
    full = ManifoldHyperConnection(connection_config(arch="mhc", n=4), dim=8, index=1)
    with torch.no_grad():  # the same pre/post parameters give the same H_pre, H_post as the full module
        full.phi[:, :8] = conn.phi
        full.bias[:8] = conn.bias
        full.alpha[:2] = conn.alpha
    ref_pre, ref_post, _ = full.mappings(x)
    torch.testing.assert_close(H_pre, ref_pre)
    torch.testing.assert_close(H_post, ref_post)


def test_gain_control_starts_as_the_residual_model_and_its_gains_act():
    from models.connections import ResidualGain

    torch.manual_seed(0)
    base = Transformer(tiny_config("baseline")).eval()
    torch.manual_seed(0)
    gain = Transformer(tiny_config("gain")).eval()
    assert isinstance(gain.connections()[0], ResidualGain)
    tokens = _tokens()
    torch.testing.assert_close(gain(tokens), base(tokens))  # same seed: same shared weights, gains 1
    conn = gain.connections()[2]
    x, f = torch.randn(2, 3, 64), torch.nn.Linear(64, 64)
    with torch.no_grad():
        conn.residual_gain.fill_(1.5)
        conn.branch_gain.fill_(0.25)
        torch.testing.assert_close(conn(x, f), 1.5 * x + 0.25 * f(x))
    assert (gain(tokens) - base(tokens)).abs().max() > 1e-4
