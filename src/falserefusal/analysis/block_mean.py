"""Mean of per-request-block paired differences: a self-normalised score test against a margin and its interval.

The non-inferiority gates compare two models on the same requests. The answers of one request block (the same
request under the baseline and every persona) are correlated, so the block, not the answer, is the independent
unit: each block b gives one number X_b (e.g. the candidate's refusal share minus the reference model's over the
block's conditions, or a difference of differences for one persona), and the gate tests the mean μ = E[X].

For H0: μ <= δ against H1: μ > δ the statistic is the self-normalised sum

    T(δ) = Σ (X_b - δ) / sqrt(Σ (X_b - δ)²)  =  √B (x̄ - δ) / sqrt(s² + (x̄ - δ)²),

with s² the (biased) sample variance of the X_b and B the number of blocks: a score statistic whose variance is
estimated under H0 (around δ, not around x̄), asymptotically N(0, 1) at μ = δ (de la Peña, Lai & Shao,
"Self-Normalized Processes", Springer 2009, ch. 1). Unlike a Wald t-statistic it stays finite when every X_b is
equal (|T| <= √B), which matters for rare refusals. Inverting |T(δ)| = z gives the closed-form interval
x̄ ± z s / sqrt(B - z²) (unbounded, i.e. the whole range, when B <= z²).

Blocks of one dataset item are correlated too: with `design_effect` d (the item clusters' variance of the mean
over the blocks' own, see `falserefusal.gating.statistics.design_effect`) B is replaced by the effective count
B / d; d < 1
stands for the finite population correction of blocks drawn without replacement (d = 1 - B / N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy.stats import norm

from falserefusal.types import FalseRefusalError


@dataclass(frozen=True)
class BlockMean:
    """Sufficient statistics of the per-block differences: count, mean and biased variance."""

    n: int
    mean: float
    variance: float
    low: float = -1.0  # the range X can take (for clipping intervals)
    high: float = 1.0
    design_effect: float = 1.0  # the test and bounds use n / design_effect blocks

    @property
    def effective_n(self) -> float:
        return self.n / self.design_effect if self.design_effect > 0 else math.inf

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, low: float = -1.0, high: float = 1.0) -> "BlockMean":
        x = np.asarray(values, dtype=float)
        if x.size == 0:
            return cls(0, 0.0, 0.0, low, high)
        return cls(int(x.size), float(x.mean()), float(x.var()), low, high)

    def with_variance_floor(self) -> "BlockMean":
        """The same statistics with the variance at least 1/n, that of one discordant block (X = 1) among n: blocks
        that all agree (e.g. no refusal under any condition) would otherwise PASS a margin with a zero-width interval,
        as a Wald test does when 0 of n events are seen; the smallest detectable effect assumes the same floor."""
        if self.n == 0:
            return self
        return replace(self, variance=max(self.variance, 1.0 / self.n))

    def statistic(self, margin: float) -> float:
        """T(margin); NaN when every block sits exactly on the margin (no evidence either way)."""
        gap = self.mean - margin
        spread = self.variance + gap * gap
        if self.n == 0 or spread <= 1e-300:
            return math.nan
        return math.sqrt(self.effective_n) * gap / math.sqrt(spread)

    def pvalue(self, margin: float, alternative: str = "greater") -> float:
        """One-sided p for H0: μ <= margin against μ > margin ("greater"), or H0: μ >= margin against μ < margin
        ("less"); 1.0 without data or with T = 0/0."""
        statistic = self.statistic(margin)
        if math.isnan(statistic):
            return 1.0
        return float(norm.sf(statistic) if alternative == "greater" else norm.cdf(statistic))

    def bound(self, level: float, side: str) -> float:
        """One-sided (1 - level) confidence bound: side "lower" or "upper"."""
        if not 0.0 < level < 1.0:
            raise FalseRefusalError(f"BlockMean.bound: level must lie in (0, 1), got {level}")
        z = float(norm.isf(level))
        n = self.effective_n
        if self.n == 0 or n <= z * z:
            return self.low if side == "lower" else self.high
        half = z * math.sqrt(self.variance / (n - z * z)) if math.isfinite(n) else 0.0
        return max(self.low, self.mean - half) if side == "lower" else min(self.high, self.mean + half)

    def interval(self, alpha: float = 0.05) -> tuple[float, float]:
        """Two-sided (1 - alpha) interval."""
        return self.bound(alpha / 2, "lower"), self.bound(alpha / 2, "upper")
