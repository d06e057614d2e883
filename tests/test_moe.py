"""DeepSeekMoE routing and loss-free balancing."""

from __future__ import annotations

import pytest
import torch

import models.moe
from models.config import MoEConfig
from models.moe import MoE


def _moe(**kw) -> MoE:
    cfg = MoEConfig(**{"n_routed": 6, "n_active": 2, "n_shared": 1, "expert_dim": 8, **kw})
    return MoE(dim=12, cfg=cfg)


def test_routing_selects_top_k_of_biased_scores_and_weights_by_raw_scores():
    moe = _moe()
    x = torch.randn(50, 12)
    with torch.no_grad():
        moe.balance_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 10.0]))  # forces expert 5 in
    ids, w = moe.route(x)
    scores = torch.sigmoid(moe.gate(x))
    assert ids.shape == (50, 2)
    assert (ids == 5).any(-1).all()
    # the other chosen expert is the best raw score among 0..4
    other = torch.where(ids[:, 0] == 5, ids[:, 1], ids[:, 0])
    torch.testing.assert_close(other, scores[:, :5].argmax(-1))
    # weights come from the unbiased scores, normalised over the chosen k
    raw = scores.gather(-1, ids)
    torch.testing.assert_close(w, raw / raw.sum(-1, keepdim=True))


def test_forward_equals_explicit_sum_of_chosen_experts_plus_shared():
    moe = _moe().eval()
    x = torch.randn(7, 12)
    ids, w = moe.route(x)
    expected = torch.stack(
        [sum(w[t, k] * moe.experts[ids[t, k]](x[t]) for k in range(2)) + moe.shared(x[t]) for t in range(7)]
    )
    torch.testing.assert_close(moe(x), expected, atol=1e-6, rtol=1e-5)


def test_shared_experts_always_active():
    moe = _moe().eval()
    x = torch.randn(9, 12)
    with torch.no_grad():
        for e in moe.experts:
            e.w2.weight.zero_()  # routed experts contribute nothing
    torch.testing.assert_close(moe(x), moe.shared(x))


def test_balancing_bias_moves_toward_underloaded_experts():
    moe = _moe(bias_update_rate=0.01).train()
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[0] = 1.0  # expert 0 is loved by tokens with positive features
        moe.gate.weight[1] = 1.0
    x = torch.rand(100, 12)  # positive features: experts 0 and 1 get every token
    moe(x)
    assert moe.load[0] == 100 and moe.load[1] == 100 and moe.load[2:].sum() == 0
    moe.update_balance_bias()
    bias = moe.balance_bias
    assert (bias[:2] < 0).all() and (bias[2:] > 0).all()
    torch.testing.assert_close(bias, torch.tensor([-0.01, -0.01, 0.01, 0.01, 0.01, 0.01]))
    assert moe.load.sum() == 0  # counter reset
    # repeated updates eventually route tokens to other experts
    for _ in range(1000):
        moe(x)
        moe.update_balance_bias()
    ids, _ = moe.route(x)
    assert torch.bincount(ids.flatten(), minlength=6)[2:].sum() > 0


def test_no_load_counting_in_eval():
    moe = _moe().eval()
    moe(torch.randn(10, 12))
    assert moe.load.sum() == 0


def _loop_forward(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The MoE forward as it was written before the experts ran as grouped matmuls: one Python iteration per
    expert that received tokens. The reference the grouped forward must reproduce."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    ids, weights = moe.route(x)
    counts = torch.bincount(ids.flatten(), minlength=moe.cfg.n_routed)
    if moe.training:
        moe.load += counts.to(moe.load.dtype)
    out = torch.zeros_like(x)
    for e, n_tokens in enumerate(counts.tolist()):
        if n_tokens == 0:
            continue
        token, slot = torch.where(ids == e)
        y = moe.experts[e](x[token]) * weights[token, slot, None].to(x.dtype)
        out.index_add_(0, token, y)
    if moe.shared is not None:
        out = out + moe.shared(x)
    return out.view(shape)


def _forward_backward(moe: MoE, forward, x: torch.Tensor, upstream: torch.Tensor, autocast: bool = False):
    """Output, input gradient, every parameter's gradient (None where untouched) and the load counter."""
    moe.zero_grad(set_to_none=True)
    moe.load.zero_()
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = forward(moe, x)
    out.backward(upstream)
    grads = {name: p.grad for name, p in moe.named_parameters()}
    return out.detach(), x.grad, grads, moe.load.clone()


def _assert_same(ref, new, atol: float, rtol: float) -> None:
    (out_r, dx_r, grads_r, load_r), (out_n, dx_n, grads_n, load_n) = ref, new
    torch.testing.assert_close(out_n, out_r, atol=atol, rtol=rtol)
    torch.testing.assert_close(dx_n, dx_r, atol=atol, rtol=rtol)
    # an expert that got no token has no gradient at all in both (AdamW skips it; DDP sees it unused)
    assert [n for n, g in grads_n.items() if g is None] == [n for n, g in grads_r.items() if g is None]
    for name, g in grads_r.items():
        if g is not None:
            torch.testing.assert_close(grads_n[name], g, atol=atol, rtol=rtol, msg=name)
    torch.testing.assert_close(load_n, load_r)


@pytest.fixture(params=["grouped_mm", "padded_bmm"])
def expert_path(request, monkeypatch) -> list[tuple[torch.dtype, ...]]:
    """Run a test on each way of computing the experts: grouped_mm (where torch has it) and padded bmm. Yields
    the dtypes (rows, w13, w2) of every call of the chosen path, and fails the test if that path never ran."""
    name = "_grouped_swiglu" if request.param == "grouped_mm" else "_padded_swiglu"
    if request.param == "grouped_mm" and models.moe._grouped_mm is None:
        pytest.skip("torch.nn.functional.grouped_mm needs torch >= 2.10")
    if request.param == "padded_bmm":
        monkeypatch.setattr(models.moe, "_can_group", lambda *args: False)
    calls = []
    swiglu = getattr(models.moe, name)

    def recording(rows, w13, w2, counts):
        calls.append((rows.dtype, w13.dtype, w2.dtype))
        return swiglu(rows, w13, w2, counts)

    monkeypatch.setattr(models.moe, name, recording)
    yield calls
    assert calls, f"the test's shapes did not take the {request.param} path"


@pytest.mark.parametrize(
    "shape, n_active, idle",
    [((64, 12), 2, ()), ((3, 20, 12), 2, (1, 4)), ((2, 16, 12), 3, (0,))],
    ids=["tokens-x-dim", "batch-x-time-x-dim-two-idle-experts", "top-3-one-idle-expert"],
)
def test_grouped_experts_equal_the_per_expert_loop(expert_path, shape, n_active, idle):
    torch.manual_seed(0)
    moe = _moe(n_active=n_active).train()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(std=0.3)  # larger than the init, so every term matters at float32 precision
        moe.balance_bias[list(idle)] = -100.0  # these experts are never selected
    x, upstream = torch.randn(shape), torch.randn(shape)
    ref = _forward_backward(moe, _loop_forward, x, upstream)
    new = _forward_backward(moe, MoE.forward, x, upstream)
    assert ref[3][list(idle)].sum() == 0 and (ref[3] > 0).sum() == 6 - len(idle)
    _assert_same(ref, new, atol=1e-5, rtol=1e-5)


def test_grouped_experts_under_bf16_autocast(expert_path):
    """Under autocast the experts' matmuls run in bfloat16, as the loop's nn.Linear calls do (grouped_mm is not on
    autocast's lists, so the forward casts by hand), and the results agree with the loop's to bfloat16 rounding.
    Not to float32 rounding: the input gradient of the w1 and w3 paths is summed inside one bfloat16 matmul
    rather than in float32 after two."""
    torch.manual_seed(0)
    moe = MoE(dim=16, cfg=MoEConfig(n_routed=6, n_active=2, n_shared=1, expert_dim=8)).train()
    x, upstream = torch.randn(2, 24, 16), torch.randn(2, 24, 16)
    ref = _forward_backward(moe, _loop_forward, x, upstream, autocast=True)
    new = _forward_backward(moe, MoE.forward, x, upstream, autocast=True)
    assert new[0].dtype == ref[0].dtype
    assert expert_path and all(d == torch.bfloat16 for call in expert_path for d in call)
    _assert_same(ref, new, atol=1e-2, rtol=2e-2)
