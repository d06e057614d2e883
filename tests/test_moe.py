"""DeepSeekMoE routing and loss-free balancing."""

from __future__ import annotations

import torch

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
