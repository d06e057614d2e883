"""The statistics of the analysis: means with Student-t confidence intervals over a few seeds, the sign test of the
LR sweep, and the power of a paired comparison. Pure functions of numbers (no files); the distributions are
scipy.stats'.

Power of a paired comparison: for one seed every variant starts from the same shared weights and sees the same
batches, so the quantity that matters is the per-seed gap d_s = loss(variant, s) - loss(baseline, s) and its standard
deviation across seeds, sd(d). With n seeds, a two-sided paired t-test at level alpha detects a true gap delta with
probability `power` when

    |delta| >= (t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd(d) / sqrt(n)          (the minimum detectable effect)

(the usual approximation that ignores the non-central t's skew).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what counts as a measured value."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def t_quantile(dof: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile for a `level` interval with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    return float(stats.t.ppf(0.5 + level / 2, dof))


@dataclass(frozen=True)
class CI:
    """Mean of n values with the half-width of its two-sided Student-t interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def text(self, digits: int = 3) -> str:
        """The mean with its sign, ± the half-width, and n, e.g. "+0.012 ± 0.004 (n=3)" ("n/a" without values)."""
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (n=1)"
        return f"{self.mean:+.{digits}f} ± {self.half_width:.{digits}f} (n={self.n})"


def mean_ci(values: Sequence[float], level: float = 0.95) -> CI:
    """Mean and Student-t CI half-width (n−1 dof, sample standard deviation) of a few seeds' values."""
    xs = [float(v) for v in values if is_number(v)]
    n = len(xs)
    if n == 0:
        return CI(math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return CI(mean, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return CI(mean, t_quantile(n - 1, level) * sd / math.sqrt(n), n)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are numbers, None when there are none."""
    xs = [float(v) for v in values if is_number(v)]
    return sum(xs) / len(xs) if xs else None


def sign_test_p(wins: int, trials: int) -> float:
    """One-sided sign-test p-value: P(X ≥ wins) for X ~ Binomial(trials, 1/2)."""
    return float(stats.binom.sf(wins - 1, trials, 0.5))


# --------------------------------------------------------------------------------------------------------------------
# Power of a paired comparison


def paired_sd(gaps: Sequence[float]) -> float:
    """Sample standard deviation (n - 1) of the per-seed gaps; NaN with fewer than 2."""
    xs = [float(g) for g in gaps]
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


def detectable_gap(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest |gap| a paired two-sided t-test over n seeds detects with probability `power` (NaN for n < 2)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    # two-sided quantiles of `t_quantile`: level 1 - alpha gives t_{1-alpha/2}; level 2 power - 1 gives t_power
    return (t_quantile(n - 1, 1 - alpha) + t_quantile(n - 1, 2 * power - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, target: float, alpha: float = 0.05, power: float = 0.8, most: int = 200) -> int | None:
    """The fewest seeds (>= 2) whose detectable gap is at most `target`; None if more than `most` would be needed."""
    for n in range(2, most + 1):
        if detectable_gap(sd, n, alpha, power) <= target:
            return n
    return None
