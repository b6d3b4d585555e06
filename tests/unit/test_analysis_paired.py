"""Tango's paired score test and interval, exact McNemar, pairing of rows, multiplicity adjustment."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.stats import norm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from falserefusal.analysis import (
    benjamini_hochberg,
    holm,
    mcnemar_exact_pvalue,
    paired_counts,
    paired_difference_ci,
    paired_difference_pvalue,
)
from falserefusal.analysis.paired import _restricted_p01, tango_statistic
from falserefusal.types import FalseRefusalError


@st.composite
def tables(draw: st.DrawFn, max_n: int = 300) -> tuple[int, int, int]:
    n = draw(st.integers(1, max_n))
    n10 = draw(st.integers(0, n))
    n01 = draw(st.integers(0, n - n10))
    return n10, n01, n


@pytest.mark.parametrize("n10, n01", [(10, 3), (25, 20), (7, 0), (40, 12), (3, 10)])
def test_margin_zero_is_the_mcnemar_score_test(n10: int, n01: int) -> None:
    p = paired_difference_pvalue(n10, n01, 200, margin=0.0)
    assert p == pytest.approx(norm.sf((n10 - n01) / math.sqrt(n10 + n01)), rel=1e-12)
    # statsmodels' chi-square McNemar without continuity correction is the two-sided version of the same test
    two_sided = mcnemar([[0, n10], [n01, 0]], exact=False, correction=False).pvalue
    assert min(p, 1 - p) * 2 == pytest.approx(two_sided, rel=1e-9)


@pytest.mark.parametrize("n10, n01, n, delta", [(10, 3, 50, 0.1), (2, 9, 40, -0.3), (5, 5, 30, 0.2), (0, 4, 20, 0.05)])
def test_restricted_mle_maximises_the_constrained_likelihood(n10: int, n01: int, n: int, delta: float) -> None:
    # the closed-form root against a numerical maximisation over p01 (concordant cells profiled out)
    concordant = n - n10 - n01

    def negative_loglik(q: float) -> float:
        return -(n10 * math.log(q + delta) + n01 * math.log(q) + concordant * math.log(1 - 2 * q - delta))

    lo, hi = max(0.0, -delta) + 1e-12, (1 - delta) / 2 - 1e-12
    numeric = minimize_scalar(negative_loglik, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x
    assert _restricted_p01(n10, n01, n, delta) == pytest.approx(numeric, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(table=tables(), alpha=st.sampled_from([0.01, 0.05, 0.1]))
def test_interval_is_finite_contains_the_estimate_and_is_dual_to_the_test(
    table: tuple[int, int, int], alpha: float
) -> None:
    n10, n01, n = table
    estimate = (n10 - n01) / n
    low, high = paired_difference_ci(n10, n01, n, alpha=alpha)
    assert -1.0 <= low <= estimate <= high <= 1.0
    assert low < high
    bound = paired_difference_ci(n10, n01, n, alpha=alpha, sided="lower")
    assert bound[1] == 1.0 and low <= bound[0] <= estimate
    assert paired_difference_ci(n10, n01, n, alpha=alpha, sided="upper")[0] == -1.0
    if bound[0] > -1.0:
        # the one-sided lower bound is the margin at which the one-sided test has p = alpha exactly
        assert paired_difference_pvalue(n10, n01, n, margin=bound[0]) == pytest.approx(alpha, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(table=tables())
def test_pvalue_is_a_probability_and_grows_with_the_margin(table: tuple[int, int, int]) -> None:
    n10, n01, n = table
    margins = np.linspace(-1, 1, 41)
    pvalues = [paired_difference_pvalue(n10, n01, n, margin=m) for m in margins]
    assert all(0.0 <= p <= 1.0 and not math.isnan(p) for p in pvalues)
    # the documented exception: where T is 0/0 (data exactly on the margin, no variance) p is set to 1
    pvalues = [p for p, m in zip(pvalues, margins) if not math.isnan(tango_statistic(n10, n01, n, m))]
    assert all(b >= a - 1e-12 for a, b in zip(pvalues, pvalues[1:]))


def test_degenerate_tables() -> None:
    assert paired_difference_pvalue(0, 0, 0) == 1.0
    assert paired_difference_ci(0, 0, 0) == (-1.0, 1.0)
    assert paired_difference_pvalue(0, 0, 50) == 1.0  # no discordant pair: no evidence of a difference
    assert math.isnan(tango_statistic(0, 0, 50, 0.0))
    # no discordant pairs: the interval solves n d / (1 - d) = z^2, symmetric around 0
    z2 = norm.isf(0.025) ** 2
    assert paired_difference_ci(0, 0, 50) == pytest.approx((-z2 / (50 + z2), z2 / (50 + z2)), abs=1e-9)
    # every pair flipped: the upper end is 1 and the lower end solves n (1 - d) / (1 + d) = z^2
    assert paired_difference_ci(50, 0, 50) == pytest.approx(((50 - z2) / (50 + z2), 1.0), abs=1e-9)
    assert paired_difference_pvalue(3, 0, 3, margin=1.0) == 1.0
    with pytest.raises(FalseRefusalError, match="n10"):
        paired_difference_pvalue(5, 6, 10)
    with pytest.raises(FalseRefusalError, match="margin"):
        paired_difference_pvalue(1, 0, 10, margin=1.5)


def _newcombe_paired(n11: int, n10: int, n01: int, n00: int, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's (1998) method 10: the Wilson intervals of both margins combined with the phi correlation."""
    n = n11 + n10 + n01 + n00
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    l1, u1 = proportion_confint(n11 + n10, n, alpha=alpha, method="wilson")
    l2, u2 = proportion_confint(n11 + n01, n, alpha=alpha, method="wilson")
    denominator = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    phi = (n11 * n00 - n10 * n01) / math.sqrt(denominator) if denominator else 0.0
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return low, high


@pytest.mark.parametrize("n11, n10, n01, n00", [(20, 15, 5, 60), (5, 12, 4, 179), (40, 30, 25, 105), (2, 6, 1, 91)])
def test_interval_agrees_with_newcombe_paired_interval(n11: int, n10: int, n01: int, n00: int) -> None:
    n = n11 + n10 + n01 + n00
    tango = paired_difference_ci(n10, n01, n)
    newcombe = _newcombe_paired(n11, n10, n01, n00)
    assert tango == pytest.approx(newcombe, abs=0.02)


def test_interval_approaches_wald_for_large_samples() -> None:
    n10, n01, n = 3000, 2000, 20000
    d = (n10 - n01) / n
    half = norm.isf(0.025) * math.sqrt(((n10 + n01) / n - d * d) / n)
    assert paired_difference_ci(n10, n01, n) == pytest.approx((d - half, d + half), abs=5e-4)


def test_interval_covers_the_true_difference_about_95_percent() -> None:
    rng = np.random.default_rng(20240611)
    probabilities = [0.10, 0.12, 0.04, 0.74]  # p11, p10, p01, p00: true difference 0.08
    truth = probabilities[1] - probabilities[2]
    draws = rng.multinomial(60, probabilities, size=4000)
    covered = 0
    for _, n10, n01, _ in draws:
        low, high = paired_difference_ci(int(n10), int(n01), 60)
        covered += low <= truth <= high
    # Monte Carlo standard error of a 95% coverage over 4000 draws is 0.0034
    assert 0.935 <= covered / len(draws) <= 0.965


def test_exact_mcnemar_matches_statsmodels() -> None:
    for n10, n01 in [(0, 0), (0, 5), (7, 2), (12, 12), (30, 11), (1, 0)]:
        expected = mcnemar([[3, n10], [n01, 4]], exact=True).pvalue
        assert mcnemar_exact_pvalue(n10, n01) == pytest.approx(min(1.0, expected), rel=1e-12)
    assert mcnemar_exact_pvalue(0, 0) == 1.0


def _pairs_frame() -> pd.DataFrame:
    rows = []
    # blocks b1..b4 under baseline and persona p, for models a and b; b5 has no baseline row (unpaired)
    outcomes = {"a": {"baseline": [0, 0, 1, 1], "p": [1, 0, 1, 0]}, "b": {"baseline": [0, 0, 0, 0], "p": [1, 1, 0, 0]}}
    for model, by_persona in outcomes.items():
        for persona, refused in by_persona.items():
            for i, r in enumerate(refused):
                rows.append({"model": model, "persona": persona, "block": f"t-b{i + 1}", "refused": bool(r)})
    rows.append({"model": "a", "persona": "p", "block": "t-b5", "refused": True})
    return pd.DataFrame(rows)


def test_paired_counts_pairs_within_model_and_block() -> None:
    counts = paired_counts(_pairs_frame(), "persona", "p", "baseline")
    # model a: (1,0) (0,0) (1,1) (0,1); model b: (1,0) (1,0) (0,0) (0,0); b5 is unpaired and dropped
    assert (counts.n10, counts.n01, counts.n11, counts.n00, counts.n) == (3, 1, 1, 3, 8)
    assert counts.flipped_blocks == ("t-b1", "t-b2")
    assert counts.difference == pytest.approx(2 / 8)


def test_paired_counts_compares_models_on_the_same_requests() -> None:
    counts = paired_counts(_pairs_frame(), "model", "b", "a", pair_on=("block", "persona"))
    # persona p: b vs a -> (1,1) (1,0) (0,1) (0,0); baseline: (0,0) (0,0) (0,1) (0,1)
    assert (counts.n10, counts.n01, counts.n11, counts.n00, counts.n) == (1, 3, 1, 3, 8)
    with pytest.raises(FalseRefusalError, match="pair on more columns"):
        paired_counts(_pairs_frame(), "model", "b", "a", pair_on=("block",))


def test_multiplicity_adjustments() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert benjamini_hochberg([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.04, 0.04])
    adjusted = holm([0.01, float("nan"), 0.04])
    assert math.isnan(adjusted[1]) and adjusted[[0, 2]] == pytest.approx([0.02, 0.04])
    assert holm([]).shape == (0,)
