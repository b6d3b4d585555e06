"""The compounding test: does an intersection's disparity exceed the sum of its markers' disparities?

On the same request blocks b (the paired design: every block asks the baseline 0, each marker m and the
intersection I), with y_bc the 0/1 refusal of block b under condition c and d_c = mean_b(y_bc - y_b0):

    additive excess     E = d_I - Σ_m d_m = mean_b X_b,   X_b = (y_bI - y_b0) - Σ_m (y_bm - y_b0)

X_b is one number per block, so E is a block mean and its variance is estimated from the blocks themselves (which
carries the correlation between the conditions of one request), inflated by the dataset items' design effect (blocks
of one item are correlated): the self-normalised block-mean test of `falserefusal.analysis.block_mean`, one-sided
against the tolerance (H0: E <= tolerance), the same test the non-inferiority gates use. E = 0 is exact additivity on
the risk-difference scale; E > 0 is super-additive (compounding).

    log-odds excess     L = logit p_I - logit p_0 - Σ_m (logit p_m - logit p_0)

is reported with a delta-method interval over the same blocks (influence of block b: Σ_c w_c (y_bc - p_c) /
(p_c (1 - p_c)), w_I = 1, w_m = -1, w_0 = k - 1), with p_c = (x_c + 1/2) / (B + 1) (Haldane-Anscombe) so that a
condition with no refusals has a finite logit. Rare refusals make L noisy; the gate tests E.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from falserefusal.analysis.block_mean import BlockMean
from falserefusal.types import BASELINE_ID


@dataclass(frozen=True)
class Compounding:
    """One intersection's compounding statistics on one (model, task)'s complete blocks."""

    intersection: str
    markers: tuple[str, ...]
    blocks: int
    rates: dict[str, float]  # condition -> refusal rate (baseline, markers, intersection)
    disparity: float  # d_I
    marker_sum: float  # Σ_m d_m
    excess: BlockMean  # the additive excess E as a block mean (design effect set by the caller)
    log_odds_excess: float
    log_odds_se: float  # delta-method standard error (before the design effect)

    @property
    def additive(self) -> float:
        return self.excess.mean

    def log_odds_interval(self, alpha: float = 0.05) -> tuple[float, float]:
        z = float(norm.isf(alpha / 2))
        half = z * self.log_odds_se * math.sqrt(self.excess.design_effect)
        return self.log_odds_excess - half, self.log_odds_excess + half

    def to_detail(self) -> dict[str, Any]:
        return {
            "markers": list(self.markers),
            "rates": dict(self.rates),
            "intersection_disparity": self.disparity,
            "marker_sum": self.marker_sum,
            "blocks": self.blocks,
            "log_odds_excess": self.log_odds_excess,
            "log_odds_ci": list(self.log_odds_interval()),
            "block_mean": asdict(self.excess),
        }


def excess_values(table: pd.DataFrame, intersection: str, markers: Sequence[str]) -> np.ndarray:
    """X_b per complete block of a block x condition 0/1 table (columns: baseline, markers, intersection)."""
    y = table.astype(float)
    base = y[BASELINE_ID].to_numpy()
    values = y[intersection].to_numpy() - base
    for marker in markers:
        values = values - (y[marker].to_numpy() - base)
    return np.asarray(values)


def _log_odds(table: pd.DataFrame, intersection: str, markers: Sequence[str]) -> tuple[float, float]:
    """L and its delta-method standard error over the blocks (Haldane-Anscombe corrected rates)."""
    n = len(table)
    weights = {intersection: 1.0, BASELINE_ID: len(markers) - 1.0, **{m: -1.0 for m in markers}}
    estimate, influence = 0.0, np.zeros(n)
    for condition, weight in weights.items():
        y = table[condition].to_numpy(float)
        p = (y.sum() + 0.5) / (n + 1)
        estimate += weight * math.log(p / (1 - p))
        influence += weight * (y - y.mean()) / (p * (1 - p))
    se = float(math.sqrt(influence.var() / n)) if n > 1 else math.inf
    return estimate, se


def compounding(table: pd.DataFrame, intersection: str, markers: Sequence[str]) -> Compounding:
    """The compounding statistics on the blocks of `table` that answered every needed condition."""
    needed = [BASELINE_ID, *markers, intersection]
    if any(c not in table.columns for c in needed):
        table = pd.DataFrame(columns=needed)
    table = table[needed].dropna().astype(bool)
    k = len(markers)
    values = excess_values(table, intersection, markers) if len(table) else np.zeros(0)
    excess = BlockMean.of(values, -1.0 - k, 1.0 + k)
    rates = {c: float(table[c].mean()) if len(table) else 0.0 for c in needed}
    disparity = rates[intersection] - rates[BASELINE_ID]
    marker_sum = sum(rates[m] - rates[BASELINE_ID] for m in markers)
    log_odds, se = _log_odds(table, intersection, markers) if len(table) else (0.0, math.inf)
    return Compounding(intersection, tuple(markers), len(table), rates, disparity, marker_sum, excess, log_odds, se)
