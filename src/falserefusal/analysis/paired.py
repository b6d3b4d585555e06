"""Paired comparison of refusal proportions: Tango's score test and interval, exact McNemar, pairing, multiplicity.

The design is paired: within a model, the rows of one request block differ only by persona, so a persona is
compared with the baseline on the same requests (and a candidate model with a reference model on the same
requests and personas). For the pairs (first condition, second condition), with
n10 = pairs where the first refused and the second did not, n01 = the reverse, n = all pairs, the estimand is
the difference of refusal proportions Δ = p10 - p01 = P(first refuses) - P(second refuses).

Tango (1998, Statistics in Medicine 17:891-908) tests H0: Δ = δ with the score statistic

    T(δ) = (n10 - n01 - n δ) / sqrt(n (2 q(δ) + δ (1 - δ)))

where q(δ) is the maximum-likelihood estimate of p01 under the restriction p10 - p01 = δ (the larger root
of 2n q² + B q + C = 0, B = -n10 - n01 + (2n - n10 + n01) δ, C = -n01 δ (1 - δ)). At δ = 0 this is
McNemar's score statistic (n10 - n01) / sqrt(n10 + n01). Its interval inverts the test.

Clustered pairs (several request blocks of one dataset item): the counts may be fractional effective counts,
n10 / deff, n01 / deff, n / deff, with deff the design effect of the clusters on the paired difference (Rao &
Scott 1992, Biometrics 48:577-585, "A simple method for the analysis of clustered binary data"); the test and
interval take them as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import binomtest, norm
from statsmodels.stats.multitest import multipletests

from falserefusal.analysis.rates import require_columns
from falserefusal.types import FalseRefusalError

Sided = Literal["two", "upper", "lower"]
# distance kept from Δ = ±1, where the restricted variance is 0 and T is infinite
_EDGE = 1e-9


@dataclass(frozen=True)
class PairedCounts:
    """Concordant and discordant pair counts of a condition against a reference."""

    n10: int  # condition refused, reference did not
    n01: int  # reference refused, condition did not
    n11: int
    n00: int
    n: int
    flipped_blocks: tuple[str, ...]  # blocks of the n10 pairs, sorted, each once

    @property
    def difference(self) -> float:
        """Risk difference condition minus reference (0 when there are no pairs)."""
        return (self.n10 - self.n01) / self.n if self.n else 0.0


def _check_counts(n10: float, n01: float, n: float, where: str) -> None:
    if min(n10, n01, n) < 0 or n10 + n01 > n * (1 + 1e-12):
        raise FalseRefusalError(f"{where}: need n10, n01 >= 0 and n10 + n01 <= n, got n10={n10}, n01={n01}, n={n}")


def _restricted_p01(n10: float, n01: float, n: float, delta: float) -> float:
    """Restricted MLE of p01 given p10 - p01 = delta (Tango 1998, eq. 3), kept inside the parameter space."""
    a = 2.0 * n
    b = -n10 - n01 + (2.0 * n - n10 + n01) * delta
    c = -n01 * delta * (1.0 - delta)
    root = (math.sqrt(max(b * b - 4.0 * a * c, 0.0)) - b) / (2.0 * a)
    # p10 = p01 + delta >= 0 and p11 + p00 = 1 - 2 p01 - delta >= 0; the root leaves this box only at |delta| ~ 1
    return min(max(root, max(0.0, -delta)), (1.0 - delta) / 2.0)


def tango_statistic(n10: float, n01: float, n: float, delta: float) -> float:
    """Tango's score statistic T(delta); ±inf when the restricted variance is 0, NaN when T is 0/0."""
    numerator = n10 - n01 - n * delta
    q = _restricted_p01(n10, n01, n, delta)
    variance = n * (2.0 * q + delta * (1.0 - delta))
    if variance <= 0.0 or not math.isfinite(variance):
        # no variance under H0: the data either agree with delta exactly or are impossible under it
        if numerator == 0:
            return math.nan
        return math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def paired_difference_pvalue(
    n10: float, n01: float, n: float, margin: float = 0.0, alternative: str = "greater"
) -> float:
    """One-sided p (Tango score test) for H0: Δ <= margin against H1: Δ > margin (`alternative` "greater"), or
    for H0: Δ >= margin against H1: Δ < margin ("less"); 1.0 without data. Counts may be effective (fractional)."""
    _check_counts(n10, n01, n, "paired_difference_pvalue")
    if alternative not in ("greater", "less"):
        raise FalseRefusalError(
            f"paired_difference_pvalue: alternative must be 'greater' or 'less', got {alternative!r}"
        )
    if not -1.0 <= margin <= 1.0:
        raise FalseRefusalError(f"paired_difference_pvalue: margin must lie in [-1, 1], got {margin}")
    if n == 0:
        return 1.0
    statistic = tango_statistic(n10, n01, n, margin)
    if math.isnan(statistic):
        # T is 0/0: the data sit exactly on a margin with no variance (no discordant pair at margin 0, or
        # every pair n01 at margin -1). Like the exact conditional test we give 1; the score p tends to 0.5
        # on either side, so this one point breaks the monotonicity in the margin.
        return 1.0
    return float(norm.sf(statistic) if alternative == "greater" else norm.cdf(statistic))


def _solve(n10: float, n01: float, n: float, z: float, lower: bool) -> float:
    """The δ on one side of the estimate where T(δ) = ±z (T decreases in δ)."""
    estimate = (n10 - n01) / n
    if lower:
        if estimate <= -1.0 + _EDGE:
            return -1.0
        end, target = -1.0 + _EDGE, z
        bracket = (end, estimate)
    else:
        if estimate >= 1.0 - _EDGE:
            return 1.0
        end, target = 1.0 - _EDGE, -z
        bracket = (estimate, end)

    def gap(delta: float) -> float:
        # T(estimate) is 0 by construction, even where it is formally 0/0
        return (0.0 if delta == estimate else tango_statistic(n10, n01, n, delta)) - target

    if gap(end) * gap(estimate) > 0:
        return -1.0 if lower else 1.0  # the test never rejects on this side: the bound is the edge
    return float(brentq(gap, *bracket, xtol=1e-12, rtol=1e-12))


@lru_cache(maxsize=65536)
def _interval(n10: float, n01: float, n: float, alpha: float, sided: str) -> tuple[float, float]:
    if n == 0:
        return -1.0, 1.0
    if sided == "two":
        z = float(norm.isf(alpha / 2.0))
        return _solve(n10, n01, n, z, lower=True), _solve(n10, n01, n, z, lower=False)
    z = float(norm.isf(alpha))
    if sided == "lower":
        return _solve(n10, n01, n, z, lower=True), 1.0
    return -1.0, _solve(n10, n01, n, z, lower=False)


def paired_difference_ci(
    n10: float, n01: float, n: float, alpha: float = 0.05, sided: Sided = "two"
) -> tuple[float, float]:
    """Tango score interval for Δ (1 - alpha); sided="lower"/"upper" gives a one-sided bound, other end ±1.
    Counts may be effective (fractional, see the module docstring)."""
    _check_counts(n10, n01, n, "paired_difference_ci")
    if not 0.0 < alpha < 1.0:
        raise FalseRefusalError(f"paired_difference_ci: alpha must lie in (0, 1), got {alpha}")
    if sided not in ("two", "upper", "lower"):
        raise FalseRefusalError(f"paired_difference_ci: sided must be 'two', 'upper' or 'lower', got {sided!r}")
    low, high = _interval(float(n10), float(n01), float(n), float(alpha), sided)
    return max(-1.0, low), min(1.0, high)


def mcnemar_exact_pvalue(n10: int, n01: int) -> float:
    """Two-sided exact McNemar p: the discordant pairs against Binomial(n10 + n01, 1/2); 1.0 with none."""
    if min(n10, n01) < 0:
        raise FalseRefusalError(f"mcnemar_exact_pvalue: counts must be >= 0, got n10={n10}, n01={n01}")
    if n10 + n01 == 0:
        return 1.0
    return float(binomtest(int(n10), int(n10 + n01), 0.5, alternative="two-sided").pvalue)


def pair_rows(
    df: pd.DataFrame,
    condition_col: str,
    reference: str,
    pair_on: Sequence[str] = ("model", "block"),
) -> pd.DataFrame:
    """Every non-reference row joined with its reference row: the condition rows plus `refused_reference`.

    Rows without a partner are dropped. A pairing key must name one row per condition; more than one is
    an error (pair on more columns), since silently picking one would change the test.
    """
    pair_on = list(pair_on)
    require_columns(df, [*pair_on, condition_col, "refused"], "pairing")
    if condition_col in pair_on:
        raise FalseRefusalError(f"pairing: condition column {condition_col!r} cannot also be in pair_on={pair_on}")
    is_reference = df[condition_col] == reference
    references = df.loc[is_reference, [*pair_on, "refused"]]
    conditions = df.loc[~is_reference]
    sides = ((references, pair_on, repr(reference)), (conditions, [*pair_on, condition_col], "a condition"))
    for rows, key, name in sides:
        repeated = rows.duplicated(subset=key, keep=False)
        if repeated.any():
            example = rows.loc[repeated, key].iloc[0].to_dict()
            raise FalseRefusalError(
                f"pairing: {int(repeated.sum())} rows of {name} share a pairing key {key}, e.g. {example}; "
                "pair on more columns (e.g. pair_on=('block', 'persona') when comparing models)"
            )
    paired = conditions.merge(
        references.rename(columns={"refused": "refused_reference"}), on=pair_on, how="inner", validate="many_to_one"
    )
    paired["refused"] = paired["refused"].astype(bool)
    paired["refused_reference"] = paired["refused_reference"].astype(bool)
    return paired


def paired_counts(
    df: pd.DataFrame,
    condition_col: str,
    condition: str,
    reference: str,
    pair_on: Sequence[str] = ("model", "block"),
) -> PairedCounts:
    """Pair `condition` with `reference` rows on `pair_on` and count concordant and discordant pairs.

    Personas against the baseline: condition_col="persona", pair_on=("model", "block").
    A candidate model against a reference model: condition_col="model", pair_on=("block", "persona").
    """
    paired = pair_rows(df[df[condition_col].isin([condition, reference])], condition_col, reference, pair_on)
    first, second = paired["refused"].to_numpy(), paired["refused_reference"].to_numpy()
    flipped = first & ~second
    blocks: tuple[str, ...] = ()
    if "block" in paired.columns:
        blocks = tuple(sorted({str(b) for b in paired.loc[flipped, "block"]}))
    return PairedCounts(
        n10=int(flipped.sum()),
        n01=int((~first & second).sum()),
        n11=int((first & second).sum()),
        n00=int((~first & ~second).sum()),
        n=int(len(paired)),
        flipped_blocks=blocks,
    )


def _adjust(pvalues: Sequence[float] | np.ndarray, method: str) -> np.ndarray:
    """statsmodels' adjustment over the finite p-values; NaN stays NaN (a test that was not run)."""
    values = np.asarray(pvalues, dtype=float)
    adjusted = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    if finite.any():
        adjusted[finite] = multipletests(values[finite], method=method)[1]
    return adjusted


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error)."""
    return _adjust(pvalues, "holm")


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (false discovery rate)."""
    return _adjust(pvalues, "fdr_bh")


def holm_adjusted(pvalues: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (as statsmodels' multipletests "holm", without its per-call overhead)."""
    order = np.argsort(pvalues, kind="stable")
    m = len(pvalues)
    stepped = np.maximum.accumulate((m - np.arange(m)) * pvalues[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted
