"""Persona disparity table: planted disparities are found, null personas are not, the family is adjusted."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from falserefusal.analysis import (
    benjamini_hochberg,
    holm,
    mcnemar_exact_pvalue,
    paired_counts,
    paired_difference_ci,
    persona_disparities,
    simulate_frame,
)
from falserefusal.analysis.disparity import DISPARITY_COLUMNS


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return simulate_frame(
        models=("a", "b"), tasks=("nli", "politeness"), items_per_task=30,
        effects={("persona", "persona-1"): 1.5}, seed=0,
    )


def test_planted_disparity_is_found_and_null_persona_is_not(frame: pd.DataFrame) -> None:
    table = persona_disparities(frame)
    assert list(table.columns) == list(DISPARITY_COLUMNS)
    assert len(table) == 2 * 2 * 2  # models x tasks x non-baseline personas
    assert (table["n_pairs"] == 30 * 6).all()  # every block of the task, paired
    planted, null = table[table["persona"] == "persona-1"], table[table["persona"] == "persona-2"]
    assert (planted["ci_low"] > 0).all() and (planted["p_holm"] < 0.05).all()
    # Holm keeps the family-wise error at 5%: no null cell may be flagged (each raw CI may miss 0 at 5%)
    assert (null["p_holm"] > 0.05).all()
    assert (planted["risk_difference"] > null["ci_high"].max()).all()
    difference = (table["persona_rate"] - table["baseline_rate"]).to_numpy()
    assert table["risk_difference"].to_numpy() == pytest.approx(difference)


def test_each_row_is_the_paired_test_of_its_cell(frame: pd.DataFrame) -> None:
    table = persona_disparities(frame, alpha=0.1)
    row = table[(table["model"] == "b") & (table["task"] == "nli") & (table["persona"] == "persona-1")].iloc[0]
    cell = frame[(frame["model"] == "b") & (frame["task"] == "nli")]
    counts = paired_counts(cell, "persona", "persona-1", "baseline")
    assert (row["n10"], row["n01"], row["n_pairs"]) == (counts.n10, counts.n01, counts.n)
    interval = paired_difference_ci(counts.n10, counts.n01, counts.n, alpha=0.1)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(interval)
    assert row["p_mcnemar"] == pytest.approx(mcnemar_exact_pvalue(counts.n10, counts.n01))
    assert row["odds_ratio"] == pytest.approx(counts.n10 / counts.n01)
    # one family: the whole table
    assert table["q_bh"].to_numpy() == pytest.approx(benjamini_hochberg(table["p_mcnemar"].to_numpy()))
    assert table["p_holm"].to_numpy() == pytest.approx(holm(table["p_mcnemar"].to_numpy()))


def _tiny() -> pd.DataFrame:
    rows = []
    # persona p refuses 3 blocks the baseline answered, and never the reverse
    for i, (base, persona) in enumerate([(0, 1), (0, 1), (0, 1), (1, 1), (0, 0)]):
        rows += [
            {"model": "m", "task": "t", "persona": "baseline", "block": f"t-b{i}", "refused": bool(base)},
            {"model": "m", "task": "t", "persona": "p", "block": f"t-b{i}", "refused": bool(persona)},
        ]
    # persona q has rows but no baseline partner in task u
    rows.append({"model": "m", "task": "u", "persona": "q", "block": "u-b0", "refused": True})
    return pd.DataFrame(rows)


def test_continuity_correction_and_unpaired_personas() -> None:
    table = persona_disparities(_tiny()).set_index("persona")
    assert table.loc["p", "odds_ratio"] == pytest.approx(3.5 / 0.5)
    assert (table.loc["p", "persona_rate"], table.loc["p", "baseline_rate"]) == pytest.approx((0.8, 0.2))
    assert table.loc["q", "n_pairs"] == 0
    assert all(math.isnan(table.loc["q", c]) for c in ("risk_difference", "p_mcnemar", "p_holm", "ci_low"))
    # the untestable persona stays out of the family: p's Holm p is its own raw p
    assert table.loc["p", "p_holm"] == pytest.approx(table.loc["p", "p_mcnemar"])


def test_no_personas_gives_an_empty_table() -> None:
    only_baseline = _tiny()[lambda d: d["persona"] == "baseline"]
    table = persona_disparities(only_baseline)
    assert table.empty and list(table.columns) == list(DISPARITY_COLUMNS)
