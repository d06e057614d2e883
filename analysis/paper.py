"""The mHC paper's reference numbers (arXiv 2512.24880 v2), as printed in the paper.

Everything the tables, figures and the report print as "paper" comes from here, so that a number is typed once
and checked once. Values are the paper's exactly; where the digest marks an item as derived ([D]) or secondhand
([S]) the constant's docstring says so. Table 2 and Table 3 are formulas in n (expansion rate) and C (hidden
dimension), so they are functions evaluated at our measured n and C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------------------------------
# Table 1: ablation of the HC components ("preliminary experiments"; the model scale is not stated)


@dataclass(frozen=True)
class AblationRow:
    """One row of Table 1: which mappings are learnable, and the absolute final-loss gap to the first row."""

    res: bool
    pre: bool
    post: bool
    loss_gap: float


TABLE1: tuple[AblationRow, ...] = (
    AblationRow(res=False, pre=False, post=False, loss_gap=0.0),
    AblationRow(res=True, pre=False, post=False, loss_gap=-0.022),
    AblationRow(res=True, pre=True, post=False, loss_gap=-0.025),
    AblationRow(res=True, pre=True, post=True, loss_gap=-0.027),
)
"""Disabled mappings are fixed: H_pre -> uniform 1/n, H_post -> all ones, H_res -> identity."""

TABLE1_SCALE = "not stated (preliminary experiments)"


def table1_gap(res: bool, pre: bool, post: bool) -> float | None:
    """The paper's loss gap for a combination of learnable mappings, or None when Table 1 has no such row."""
    for row in TABLE1:
        if (row.res, row.pre, row.post) == (res, pre, post):
            return row.loss_gap
    return None


# --------------------------------------------------------------------------------------------------------------------
# Table 2: memory access per token, one residual layer, forward pass (residual-stream maintenance only)

TABLE2_OPS: tuple[str, ...] = ("coefficients", "H_pre", "H_post", "H_res", "merge", "total")
"""Our names for Table 2's operations, in the paper's order ("coefficients" = Calculate H_pre, H_post, H_res)."""

TABLE2_OP_LABELS: dict[str, str] = {
    "coefficients": "Calculate H_pre, H_post, H_res",
    "H_pre": "H_pre",
    "H_post": "H_post",
    "H_res": "H_res",
    "merge": "Residual merge",
    "total": "Total I/O",
}

TABLE2_HC_EXPR: dict[str, tuple[str, str]] = {
    "coefficients": ("nC", "n²+2n"),
    "H_pre": ("nC+n", "C"),
    "H_post": ("C+n", "nC"),
    "H_res": ("nC+n²", "nC"),
    "merge": ("2nC", "nC"),
    "total": ("(5n+1)C+n²+2n", "(3n+1)C+n²+2n"),
}
"""Table 2's HC (and mHC: same unfused data movement) rows as printed: (read, write) in elements."""

TABLE2_RESIDUAL_EXPR: dict[str, tuple[str, str]] = {"merge": ("2C", "C"), "total": ("2C", "C")}


def table2_hc(n: int, C: int) -> dict[str, tuple[int, int]]:
    """Table 2's HC rows evaluated at (n, C): op -> (read elements, write elements) per token."""
    return {
        "coefficients": (n * C, n * n + 2 * n),
        "H_pre": (n * C + n, C),
        "H_post": (C + n, n * C),
        "H_res": (n * C + n * n, n * C),
        "merge": (2 * n * C, n * C),
        "total": ((5 * n + 1) * C + n * n + 2 * n, (3 * n + 1) * C + n * n + 2 * n),
    }


def table2_residual(C: int) -> dict[str, tuple[int, int]]:
    """Table 2's plain-residual rows at C: op -> (read, write) elements per token."""
    return {"merge": (2 * C, C), "total": (2 * C, C)}


def fused_post_res_io(n: int, C: int) -> dict[str, tuple[int, int]]:
    """§4.3.1: fusing post, res and the merge cuts that kernel's reads (3n+1)C -> (n+1)C and writes 3nC -> nC."""
    return {"unfused": ((3 * n + 1) * C, 3 * n * C), "fused": ((n + 1) * C, n * C)}


# --------------------------------------------------------------------------------------------------------------------
# Table 3: stored and recomputed activations per token, for a block of L_r consecutive layers (§4.3.2)

TABLE3_ACTIVATIONS: tuple[tuple[str, str, str], ...] = (
    ("x_{l0}", "nC", "every L_r layers"),
    ("F(H_pre x_l, W_l)", "C", "every layer"),
    ("x_l", "nC", "transient inside the L_r layers"),
    ("H_pre x_l", "C", "transient"),
    ("RMSNorm(H_pre x_l)", "C", "transient"),
)
"""(activation, size in elements, when it is stored) as in Table 3."""


def table3_sizes(n: int, C: int) -> dict[str, int]:
    """Table 3's sizes evaluated at (n, C), in elements per token."""
    size = {"nC": n * C, "C": C}
    return {name: size[expr] for name, expr, _ in TABLE3_ACTIVATIONS}


def resident_elements(n: int, C: int, L: int, L_r: int) -> int:
    """§4.3.2 resident memory per token with recomputation: nC * ceil(L / L_r) (x_{l0} of every block)."""
    return n * C * math.ceil(L / L_r)


def transient_elements(n: int, C: int, L_r: int) -> int:
    """§4.3.2 transient peak per token while one block is recomputed: (n + 2) C L_r."""
    return (n + 2) * C * L_r


def optimal_recompute_block(n: int, L: int) -> float:
    """Eq. 20's approximation L_r* ≈ sqrt(n L / (n + 2)) (L counts sub-layers)."""
    return math.sqrt(n * L / (n + 2))


# --------------------------------------------------------------------------------------------------------------------
# Table 4: 27B system-level benchmarks

TABLE4_BENCHMARKS: tuple[str, ...] = ("BBH", "DROP", "GSM8K", "HellaSwag", "MATH", "MMLU", "PIQA", "TriviaQA")
TABLE4_METRICS: dict[str, str] = {
    "BBH": "EM",
    "DROP": "F1",
    "GSM8K": "EM",
    "HellaSwag": "Acc.",
    "MATH": "EM",
    "MMLU": "Acc.",
    "PIQA": "Acc.",
    "TriviaQA": "EM",
}
TABLE4_SHOTS: dict[str, int] = {
    "BBH": 3,
    "DROP": 3,
    "GSM8K": 8,
    "HellaSwag": 10,
    "MATH": 4,
    "MMLU": 5,
    "PIQA": 0,
    "TriviaQA": 5,
}
TABLE4: dict[str, dict[str, float]] = {
    "baseline": dict(zip(TABLE4_BENCHMARKS, (43.8, 47.0, 46.7, 73.7, 22.0, 59.0, 78.5, 54.3), strict=True)),
    "hc": dict(zip(TABLE4_BENCHMARKS, (48.9, 51.6, 53.2, 74.3, 26.4, 63.0, 79.9, 56.3), strict=True)),
    "mhc": dict(zip(TABLE4_BENCHMARKS, (51.0, 53.9, 53.8, 74.7, 26.0, 63.4, 80.5, 57.6), strict=True)),
}
"""Scores in points (×100) of the 27B baseline, 27B w/ HC and 27B w/ mHC."""

TABLE4_ROW_LABELS: dict[str, str] = {"baseline": "27B Baseline", "hc": "27B w/ HC", "mhc": "27B w/ mHC"}


def table4_wins(a: str, b: str) -> int:
    """How many of the 8 benchmarks variant `a` beats variant `b` on in the paper (mHC: 8 vs baseline, 7 vs HC)."""
    return sum(TABLE4[a][k] > TABLE4[b][k] for k in TABLE4_BENCHMARKS)


# --------------------------------------------------------------------------------------------------------------------
# Table 5: model specs and hyper-parameters (Appendix A.1); strings exactly as printed

TABLE5_COLUMNS: tuple[str, ...] = ("3B", "9B", "27B", "3B-1T")
TABLE5: dict[str, dict[str, str]] = {
    "Vocab params": dict(zip(TABLE5_COLUMNS, ("331M", "496M", "662M", "331M"), strict=True)),
    "Active params": dict(zip(TABLE5_COLUMNS, ("612M", "1.66B", "4.14B", "612M"), strict=True)),
    "Total params": dict(zip(TABLE5_COLUMNS, ("2.97B", "9.18B", "27.0B", "2.97B"), strict=True)),
    "Layers": dict(zip(TABLE5_COLUMNS, ("12", "18", "30", "12"), strict=True)),
    "Leading dense layers": dict(zip(TABLE5_COLUMNS, ("1", "1", "1", "1"), strict=True)),
    "Routed experts": dict(zip(TABLE5_COLUMNS, ("64", "64", "72", "64"), strict=True)),
    "Active experts": dict(zip(TABLE5_COLUMNS, ("6", "6", "6", "6"), strict=True)),
    "Shared experts": dict(zip(TABLE5_COLUMNS, ("2", "2", "2", "2"), strict=True)),
    "Dimension": dict(zip(TABLE5_COLUMNS, ("1280", "1920", "2560", "1280"), strict=True)),
    "FFN dimension": dict(zip(TABLE5_COLUMNS, ("896", "1280", "1536", "896"), strict=True)),
    "Attention heads": dict(zip(TABLE5_COLUMNS, ("16", "24", "32", "16"), strict=True)),
    "Attention dimension": dict(zip(TABLE5_COLUMNS, ("128", "128", "128", "128"), strict=True)),
    "mHC/HC expansion rate n": dict(zip(TABLE5_COLUMNS, ("4", "4", "4", "4"), strict=True)),
    "mHC/HC gating factor init α": dict(zip(TABLE5_COLUMNS, ("0.01", "0.01", "0.01", "0.01"), strict=True)),
    "mHC Sinkhorn-Knopp t_max": dict(zip(TABLE5_COLUMNS, ("20", "20", "20", "20"), strict=True)),
    "Sequence length": dict(zip(TABLE5_COLUMNS, ("4096", "4096", "4096", "4096"), strict=True)),
    "Vocab size": dict(zip(TABLE5_COLUMNS, ("129280", "129280", "129280", "129280"), strict=True)),
    "Batch size (sequences)": dict(zip(TABLE5_COLUMNS, ("320", "512", "1280", "2560"), strict=True)),
    "Training steps": dict(zip(TABLE5_COLUMNS, ("30000", "50000", "50000", "100000"), strict=True)),
    "Training tokens": dict(zip(TABLE5_COLUMNS, ("39.3B", "105B", "262B", "1.05T"), strict=True)),
    "Warmup steps": dict(zip(TABLE5_COLUMNS, ("2000", "2000", "2000", "2000"), strict=True)),
    "Base learning rate": dict(zip(TABLE5_COLUMNS, ("8.6e-4", "5.9e-4", "4.0e-4", "9.0e-4"), strict=True)),
    "Weight decay": dict(zip(TABLE5_COLUMNS, ("0.1", "0.1", "0.1", "0.1"), strict=True)),
}

TABLE5_NUMERIC: dict[str, dict[str, float]] = {
    "3B": {"active_params": 612e6, "total_params": 2.97e9, "tokens": 39.3e9},
    "9B": {"active_params": 1.66e9, "total_params": 9.18e9, "tokens": 105e9},
    "27B": {"active_params": 4.14e9, "total_params": 27.0e9, "tokens": 262e9},
    "3B-1T": {"active_params": 612e6, "total_params": 2.97e9, "tokens": 1.05e12},
}
"""The same Table 5 cells as numbers (for derived quantities such as 6·N_active·D training FLOPs [D])."""


def paper_flops(column: str) -> float:
    """Training FLOPs ≈ 6 · active params · tokens for a Table 5 column [D: the paper gives no FLOPs]."""
    spec = TABLE5_NUMERIC[column]
    return 6.0 * spec["active_params"] * spec["tokens"]


# --------------------------------------------------------------------------------------------------------------------
# Figures and text

FIG2_HC_SURGE_STEP = 12_000
"""Fig. 2 (27B): HC has an unexpected loss surge around step 12k, with a gradient-norm spike."""

FIG3_HC_COMPOSITE_AMAX_PEAK = 3000.0
"""Fig. 3b (27B): the composite Amax gain of HC peaks at 3000 ("nearly 3000" in §5.4)."""

FIG5_MHC_FINAL_LOSS_GAP = -0.021
"""Fig. 5a (27B): mHC's final loss reduction versus the baseline is 0.021 (gap mHC − baseline = −0.021)."""

FIG7_MHC_COMPOSITE_AMAX_MAX = 1.6
"""Fig. 7b (27B): the composite Amax gain of mHC stays bounded, maximum ≈ 1.6."""

AMAX_IDEAL = 1.0
"""The ideal Amax gain: a mapping that neither amplifies nor attenuates."""

OVERHEAD_N4 = 0.067
"""§4.3: mHC with n = 4 adds 6.7% training time (fused kernels, in-house large-scale GPU training)."""

EXPANSION_RATE = 4
PAPER_SUBLAYERS_27B = 60
"""27B: 30 blocks, each unrolled into attention and FFN sub-layers [D]."""
