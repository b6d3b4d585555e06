"""The block-mean score test of the non-inferiority gates: size, inversion, degenerate data."""

from __future__ import annotations

import numpy as np
import pytest

from falserefusal.analysis.block_mean import BlockMean


def test_interval_inverts_the_test() -> None:
    rng = np.random.default_rng(0)
    stats = BlockMean.of(rng.choice([-1, 0, 0, 0, 1, 1], size=300).astype(float))
    low = stats.bound(0.01, "lower")
    assert stats.pvalue(low) == pytest.approx(0.01, rel=1e-6)
    high = stats.bound(0.01, "upper")
    assert 1 - stats.pvalue(high) == pytest.approx(0.01, rel=1e-6)


def test_identical_blocks_give_no_evidence() -> None:
    stats = BlockMean.of(np.zeros(50))
    assert stats.pvalue(0.0) == 1.0 and stats.interval() == (0.0, 0.0)
    assert stats.pvalue(-0.1) < 1e-6 and stats.pvalue(0.1) > 0.999  # |T| <= sqrt(n), finite


def test_size_under_the_null_is_at_most_alpha() -> None:
    rng = np.random.default_rng(1)
    # rare discordant blocks at the margin: X in {-1, 0, 1} with mean 0.01
    rejections = 0
    for _ in range(2000):
        x = rng.choice([-1.0, 0.0, 1.0], p=[0.02, 0.95, 0.03], size=600)
        rejections += BlockMean.of(x).pvalue(0.01) < 0.05
    assert rejections / 2000 < 0.065


def test_empty_data_pass_and_range_bounds() -> None:
    stats = BlockMean.of([], -2.0, 2.0)
    assert stats.pvalue(0.0) == 1.0 and stats.interval() == (-2.0, 2.0)
