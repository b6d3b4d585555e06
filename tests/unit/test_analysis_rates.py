"""Wilson intervals and per-cell refusal rates."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from falserefusal.analysis import refusal_rates, wilson_interval
from falserefusal.types import FalseRefusalError


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 2000), data=st.data(), alpha=st.sampled_from([0.01, 0.05, 0.1, 0.2]))
def test_wilson_bounds_solve_the_score_equation(n: int, data: st.DataObject, alpha: float) -> None:
    # the Wilson bounds are the p where |p_hat - p| / sqrt(p (1 - p) / n) = z: check that definition directly
    refusals = data.draw(st.integers(0, n))
    low, high = wilson_interval(refusals, n, alpha)
    p_hat, z = refusals / n, norm.isf(alpha / 2)
    assert 0.0 <= low <= p_hat <= high <= 1.0
    for bound in (low, high):
        if 0.0 < bound < 1.0:
            score = abs(p_hat - bound) / math.sqrt(bound * (1 - bound) / n)
            assert score == pytest.approx(z, rel=1e-6)
    expected = proportion_confint(refusals, n, alpha=alpha, method="wilson")
    assert (low, high) == pytest.approx((max(0.0, expected[0]), min(1.0, expected[1])), abs=1e-12)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.0 < high < 0.1  # a rate of 0 has a nonzero upper bound, unlike Wald
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and 0.9 < low < 1.0
    with pytest.raises(FalseRefusalError, match="refusals"):
        wilson_interval(5, 3)


def _frame() -> pd.DataFrame:
    rows = []
    # model a, task t: baseline 1/4 refused, persona p 3/4; model b only the baseline, 0/2
    for persona, refused in (("baseline", [1, 0, 0, 0]), ("p", [1, 1, 1, 0])):
        for i, r in enumerate(refused):
            rows.append({"model": "a", "task": "t", "persona": persona, "forcing_level": "forced",
                         "paraphrase": f"forced-{i % 2}", "refused": bool(r)})
    for i in range(2):
        rows.append({"model": "b", "task": "t", "persona": "baseline", "forcing_level": "forced",
                     "paraphrase": "forced-0", "refused": False})
    return pd.DataFrame(rows)


def test_refusal_rates_counts_every_cell_with_data_and_only_those() -> None:
    table = refusal_rates(_frame(), by=("model", "persona"))
    assert list(table.columns) == ["model", "persona", "n", "refusals", "rate", "ci_low", "ci_high"]
    cells = {(r.model, r.persona): (r.n, r.refusals, r.rate) for r in table.itertuples()}
    assert cells == {("a", "baseline"): (4, 1, 0.25), ("a", "p"): (4, 3, 0.75), ("b", "baseline"): (2, 0, 0.0)}
    row = table[(table["model"] == "a") & (table["persona"] == "p")].iloc[0]
    assert (row["ci_low"], row["ci_high"]) == wilson_interval(3, 4)


def test_refusal_rates_default_cells_and_alpha() -> None:
    frame = _frame()
    table = refusal_rates(frame)
    assert len(table) == 5  # (a, baseline/p) x 2 paraphrases + (b, baseline, forced-0)
    assert table["n"].sum() == len(frame)
    wide = refusal_rates(frame, by=("model",), alpha=0.01)
    narrow = refusal_rates(frame, by=("model",), alpha=0.2)
    assert (wide["ci_high"] - wide["ci_low"] > narrow["ci_high"] - narrow["ci_low"]).all()


def test_refusal_rates_names_a_missing_column() -> None:
    with pytest.raises(FalseRefusalError, match="paraphrase"):
        refusal_rates(_frame().drop(columns="paraphrase"))
    assert refusal_rates(_frame().iloc[:0]).empty
