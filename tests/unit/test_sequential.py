"""Exact group-sequential boundaries (Lan-DeMets O'Brien-Fleming-type spending) and Holm at a look."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from falserefusal.analysis.paired import holm_adjusted
from falserefusal.gating.sequential import (
    SequentialDesign,
    crossing_probability,
    group_sequential_bounds,
    nominal_levels,
    obrien_fleming_spending,
    sequential_holm,
)
from falserefusal.types import FalseRefusalError

EQUAL_FIVE = (0.2, 0.4, 0.6, 0.8, 1.0)


def test_five_equal_looks_match_the_published_obrien_fleming_lan_demets_boundaries() -> None:
    # one-sided 0.025 (Jennison & Turnbull 2000, table 7.6; gsDesign sfLDOF): 4.877, 3.357, 2.680, 2.290, 2.031
    bounds = group_sequential_bounds(0.025, EQUAL_FIVE)
    assert bounds == pytest.approx((4.877, 3.357, 2.680, 2.290, 2.031), abs=1e-3)
    # the joint normal of the correlated looks (scipy's cdf, not the integration that solved them): each look
    # spends exactly what the spending function says, and all of them together alpha
    assert crossing_probability(bounds, EQUAL_FIVE) == pytest.approx(0.025, abs=1e-4)
    for k in (2, 3):
        spent = obrien_fleming_spending(0.025, EQUAL_FIVE[k - 1])
        assert crossing_probability(bounds[:k], EQUAL_FIVE[:k]) == pytest.approx(spent, abs=1e-5)


@pytest.mark.parametrize("alpha, fractions", [(0.05 / 3 / 32, EQUAL_FIVE), (0.05, (0.3, 0.5, 1.0)), (0.01, (0.5, 1.0))])
def test_cumulative_crossing_equals_alpha_for_unequal_looks_and_small_levels(alpha: float, fractions: tuple[float, ...]) -> None:
    bounds = group_sequential_bounds(alpha, fractions)
    assert crossing_probability(bounds, fractions, abseps=1e-9) == pytest.approx(alpha, rel=2e-3, abs=1e-6)
    # the last boundary lies between the fixed-sample critical value and the union bound's (the increment alone)
    increment = alpha - obrien_fleming_spending(alpha, fractions[-2])
    assert norm.isf(alpha) < bounds[-1] < norm.isf(increment)


def test_the_last_look_is_tested_above_its_alpha_increment() -> None:
    # the union bound tested the last of 5 looks at its increment alone (z 3.342 at the release Holm level 0.05/3/32);
    # the exact boundary is 3.298, against 3.279 for a fixed-sample test
    design, level = SequentialDesign(rounds=5), 0.05 / 3 / 32
    assert design.alpha_increments(level, 1225)[-1] < design.nominal_levels(level, 1225)[-1] < level
    assert norm.isf(design.nominal_levels(level, 1225)[-1]) == pytest.approx(3.298, abs=1e-3)
    assert norm.isf(design.alpha_increments(level, 1225)[-1]) == pytest.approx(3.342, abs=1e-3)


def test_one_look_is_the_fixed_sample_test_and_holm() -> None:
    assert nominal_levels(0.05, (1.0,)) == pytest.approx((0.05,))
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001, 0.04])
    adjusted, levels = sequential_holm(p, 0.05, (1.0,), 0)
    assert adjusted == pytest.approx(holm_adjusted(p))
    assert sorted(levels) == pytest.approx(sorted(0.05 / np.arange(1, 7)))


def test_holm_at_an_early_look_uses_each_steps_boundary() -> None:
    p = np.array([1e-9, 2e-5, 0.3])
    adjusted, levels = sequential_holm(p, 0.05, EQUAL_FIVE, 1)
    first = nominal_levels(0.05 / 3, EQUAL_FIVE)[1]  # look 2 of 5, step 1 of 3: the boundaries for alpha / 3
    second = nominal_levels(0.05 / 2, EQUAL_FIVE)[1]
    assert levels[0] == pytest.approx(first) and levels[1] == pytest.approx(second)
    assert (adjusted < 0.05).tolist() == [True, True, False]
    assert adjusted[0] == pytest.approx(1e-9 * 0.05 / first)


def test_bad_fractions_and_levels_are_rejected() -> None:
    with pytest.raises(FalseRefusalError, match="must increase strictly"):
        group_sequential_bounds(0.05, (0.5, 0.5, 1.0))
    with pytest.raises(FalseRefusalError, match="alpha 0.7"):
        group_sequential_bounds(0.7, (1.0,))
