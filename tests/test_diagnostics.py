"""Amax Gain Magnitude (mHC paper Fig. 3/7) on hand-built matrices, and mapping capture."""

from __future__ import annotations

import pytest
import torch

from models.diagnostics import amax_gain, capture_mappings, composite_products, gains, residual_path_deviation
from models.transformer import Transformer
from tests.helpers import tiny_config


def test_gains_known_answers_with_negative_entries():
    # HC matrices can be negative: forward = max_i |row sum|, backward = max_j |col sum|.
    P = torch.tensor([[1.0, -3.0], [0.5, 0.25]])
    g = gains(P)
    assert g["forward"].item() == pytest.approx(2.0)  # rows: -2, 0.75 -> |.| max 2
    assert g["backward"].item() == pytest.approx(2.75)  # cols: 1.5, -2.75 -> |.| max 2.75
    assert g["min_col"].item() == pytest.approx(-2.75)
    # |sum| is not sum |.|: the induced infinity-norm of P would be 4 here.
    assert g["forward"].item() != pytest.approx(P.abs().sum(-1).max().item())


def test_doubly_stochastic_has_unit_gains():
    P = torch.tensor([[0.2, 0.8], [0.8, 0.2]])
    g = gains(P)
    assert g["forward"].item() == pytest.approx(1.0)
    assert g["backward"].item() == pytest.approx(1.0)


def test_composite_order():
    """P_l = H_{L-1} ... H_{l+1} H_l (later layers on the left); a non-commuting pair tells the order."""
    A = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # layer 0
    B = torch.tensor([[1.0, 0.0], [3.0, 1.0]])  # layer 1
    P = composite_products([A, B])
    torch.testing.assert_close(P[1], B.double())
    torch.testing.assert_close(P[0], (B @ A).double())
    assert not torch.allclose(B @ A, A @ B)
    curves = amax_gain([A[None], B[None]])
    # B @ A = [[1, 2], [3, 7]]: rows 3, 10; columns 4, 9
    assert curves["composite_forward"] == pytest.approx([10.0, 4.0])  # B alone: rows 1, 4
    assert curves["composite_backward"] == pytest.approx([9.0, 4.0])  # B alone: cols 4, 1
    assert curves["single_forward"] == pytest.approx([3.0, 4.0])
    assert curves["single_min_col"] == pytest.approx([1.0, 1.0])


def test_token_averaging_versus_matrix_averaging():
    # two tokens whose gains differ: per-token gains averaged vs gains of the averaged matrix
    H = torch.stack([torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])])
    assert amax_gain([H], reduce="token")["single_forward"] == pytest.approx([2.0])
    assert amax_gain([H], reduce="matrix")["single_forward"] == pytest.approx([1.5])
    with pytest.raises(ValueError):
        amax_gain([H], reduce="max")


def test_capture_records_every_sublayer_in_order():
    model = Transformer(tiny_config("mhc")).eval()
    tokens = torch.randint(0, 256, (2, 8))
    with capture_mappings(model) as records:
        model(tokens)
    assert [r["sublayer"] for r in records] == list(range(2 * model.cfg.n_layers))
    n = model.cfg.connection.n
    r = records[0]
    assert r["H_pre"].shape == (2, 8, n) and r["H_post"].shape == (2, 8, n) and r["H_res"].shape == (2, 8, n, n)
    assert all(rec["H_res"].dtype == torch.float32 for rec in records)
    curves = amax_gain([rec["H_res"][0] for rec in records])
    assert len(curves["composite_backward"]) == len(records)
    assert max(curves["single_forward"]) == pytest.approx(1.0, abs=1e-5)  # rows exact for mHC
    # capture is off again afterwards
    model(tokens)
    assert all(c.record is None and not c.capture for c in model.connections())


def test_baseline_has_no_mappings():
    model = Transformer(tiny_config("baseline")).eval()
    with capture_mappings(model) as records:
        model(torch.randint(0, 256, (1, 4)))
    assert records == []


@pytest.mark.parametrize("arch", ["baseline", "hc", "mhc", "mhc-lite"])
def test_residual_path_is_the_identity_at_init_for_identity_preserving_variants(arch):
    """With every sub-layer's output zeroed, each sub-layer (and the final norm) reads the embedding itself."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(arch)).eval()
    result = residual_path_deviation(model, torch.randint(0, 256, (2, 8)))
    assert len(result["sublayers"]) == 2 * model.cfg.n_layers
    assert result["max"] < 1e-5


def test_residual_path_deviation_sees_a_broken_identity():
    """RMT's independent random keys read back a different vector than the entry stored; with every key the same
    orthonormal matrix (RMT's reduction to the residual network) the path is the identity again."""
    torch.manual_seed(0)
    rmt = Transformer(tiny_config("rmt")).eval()
    assert residual_path_deviation(rmt, torch.randint(0, 256, (2, 8)))["max"] > 0.3
    # the deviation is restored to 0 when every key is the same orthonormal matrix (RMT's reduction)
    with torch.no_grad():
        for module in rmt.connection_modules():
            for p in module.parameters():
                p.copy_(torch.eye(*p.shape))
    assert residual_path_deviation(rmt, torch.randint(0, 256, (2, 8)))["max"] < 1e-5
