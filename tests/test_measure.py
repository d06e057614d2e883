"""The workflow's measurements (analysis/measure.py) against the paper's Table 2 and Table 3 formulas."""

from __future__ import annotations

import pytest

from analysis.measure import connection_traffic, saved_bytes_per_token, scale_config, table3_elements, traffic


def by_op(rows):
    return {r["op"]: (r["read_bytes"] / 4, r["write_bytes"] / 4) for r in rows}


def test_residual_traffic_is_tables_2c_read_c_write():
    cfg = scale_config("tiny", "baseline", {})
    C = cfg.dim
    assert by_op(traffic(cfg, tokens=32))["merge"] == (2 * C, C)


@pytest.mark.parametrize("arch", ["hc", "mhc"])
def test_stream_mixes_move_exactly_table_2s_elements(arch):
    """H_pre reads nC + n and writes C; H_post + H_res + merge together read (C + n) + (nC + n²) + 2nC and write
    nC + nC + nC, as Table 2 lists them for the unfused implementation."""
    cfg = scale_config("tiny", arch, {})
    n, C = cfg.connection.n, cfg.dim
    ops = by_op(traffic(cfg, tokens=32))
    assert ops["H_pre"] == (n * C + n, C)
    assert ops["H_post+H_res+merge"] == ((C + n) + (n * C + n * n) + 2 * n * C, 3 * n * C)


def test_recompute_saves_exactly_the_table_3_accounting():
    cfg = scale_config("tiny", "mhc", {}, kernels="reference", recompute_layers=2)
    n, C, L = cfg.connection.n, cfg.dim, 2 * cfg.n_layers
    _, with_recompute = table3_elements(n, C, L, 2)
    assert saved_bytes_per_token(cfg, seq=64) == 4 * with_recompute


def test_connection_traffic_splits_at_the_sublayer_and_agrees_with_table_2s_count():
    """The generic count (variants beyond the paper) gives the residual's 2C read / C write after F and nothing before,
    and for HC the same total as the Table 2 split (both count the same ops, split differently)."""
    cfg = scale_config("tiny", "baseline", {})
    C = cfg.dim
    ops = by_op(connection_traffic(cfg, tokens=32))
    assert ops["read"] == (0, 0) and ops["write"] == (2 * C, C)
    hc = scale_config("tiny", "hc", {})
    assert by_op(connection_traffic(hc, tokens=32))["total"] == pytest.approx(by_op(traffic(hc, tokens=32))["total"])


@pytest.mark.parametrize("arch", ["mhc-lite", "rmt"])
def test_connection_traffic_counts_the_variants_beyond_the_paper(arch):
    """Their state is bigger than the residual's, so both phases move more than the residual's 3C in total."""
    cfg = scale_config("tiny", arch, {})
    ops = by_op(connection_traffic(cfg, tokens=32))
    assert ops["read"][0] > 0 and ops["write"][0] > 2 * cfg.dim
    assert sum(ops["total"]) > 3 * cfg.dim
