"""Logistic regression: planted log-odds are recovered, clustering is by block, degenerate data are handled."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from falserefusal.analysis import fit_logistic, simulate_frame
from falserefusal.analysis.regression import METHOD_MLE, METHOD_PENALIZED, RegressionResult

PLANTED = {
    ("persona", "p1"): 1.0,
    ("model", "b"): 0.5,
    ("forcing_level", "forced"): 0.7,
    ("paraphrase", "forced-1"): 0.8,  # one of the two forced wordings of every task
}


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, RegressionResult]:
    # 2 models x 3 tasks x 100 items x 6 wordings x 4 personas = 14 400 rows
    frame = simulate_frame(
        models=("a", "b"), tasks=("nli", "off", "pol"), personas=("baseline", "p1", "p2", "p3"),
        items_per_task=100, intercept=-1.5, effects=PLANTED, seed=11,
    )
    return frame, fit_logistic(frame)


def _log_or(result: RegressionResult, term: str) -> float:
    return math.log(result.table.set_index("term").loc[term, "odds_ratio"])


def test_planted_log_odds_are_recovered(planted: tuple[pd.DataFrame, RegressionResult]) -> None:
    frame, result = planted
    assert result.method == METHOD_MLE and result.n == len(frame)
    assert _log_or(result, "persona[p1]") == pytest.approx(1.0, abs=0.15)
    assert _log_or(result, "model[b]") == pytest.approx(0.5, abs=0.15)
    for null_term in ("persona[p2]", "persona[p3]", "task[off]", "task[pol]"):
        assert _log_or(result, null_term) == pytest.approx(0.0, abs=0.15), null_term  # ~3 standard errors
    table = result.table.set_index("term")
    assert table.loc["persona[p1]", "ci_low"] > 1.0 and table.loc["persona[p1]", "p_value"] < 1e-6


def test_paraphrase_effects_are_deviations_within_task_and_forcing_level(
    planted: tuple[pd.DataFrame, RegressionResult],
) -> None:
    _, result = planted
    # forced-1 is +0.8 and forced-2 is 0: the cell mean is +0.4 and forced-1 deviates from it by +0.4 ...
    for task in ("nli", "off", "pol"):
        assert _log_or(result, f"paraphrase[{task}:forced-1]") == pytest.approx(0.4, abs=0.2)
        assert _log_or(result, f"paraphrase[{task}:unforced-1]") == pytest.approx(0.0, abs=0.2)
    # ... and the forcing-level effect averages over its wordings: 0.7 + 0.4
    assert _log_or(result, "forcing_level[forced]") == pytest.approx(1.1, abs=0.15)
    assert "paraphrase[nli:forced-2]" not in set(result.table["term"])  # the cell's last wording: no term
    assert any("sum-to-zero deviations" in note for note in result.notes)
    assert "C(task:paraphrase" in result.formula and 'Treatment("baseline")' in result.formula


def test_standard_errors_are_clustered_on_blocks() -> None:
    frame = simulate_frame(items_per_task=60, effects={("persona", "persona-1"): 1.0}, seed=5)
    doubled = pd.concat([frame, frame], ignore_index=True)  # every row twice, in the same block

    def width(result: RegressionResult) -> float:
        low, high = result.table.set_index("term").loc["persona[persona-1]", ["ci_low", "ci_high"]]
        return math.log(high / low)

    single, twice = fit_logistic(frame), fit_logistic(doubled)
    # copies within a block add no information: a block-clustered interval keeps its width (a model-based
    # one would shrink by 1/sqrt(2) = 0.71)
    assert width(twice) / width(single) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    "refused, note", [(False, "no refusals — nothing to model"), (True, "every request refused — nothing to model")]
)
def test_data_without_variation_give_an_empty_table_and_a_note(refused: bool, note: str) -> None:
    frame = simulate_frame(items_per_task=3).assign(refused=refused)
    result = fit_logistic(frame)
    assert result.table.empty and result.notes == (note,) and result.n == len(frame)
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["notes"] == [note]
    assert fit_logistic(frame.iloc[:0]).table.empty


def test_separation_falls_back_to_a_penalised_fit_with_finite_numbers() -> None:
    frame = simulate_frame(
        tasks=("nli", "off"), personas=("baseline", "p1", "never"), items_per_task=60,
        effects={("persona", "p1"): 1.0}, seed=2,
    )
    frame.loc[frame["persona"] == "never", "refused"] = False  # a persona that never refuses
    frame.loc[frame["task"] == "off", "refused"] = False  # a task whose rows are all 0
    result = fit_logistic(frame)
    assert result.method == METHOD_PENALIZED
    separation = [note for note in result.notes if note.startswith("separation")]
    assert separation and "persona[never]" in separation[0] and "task[off]" in separation[0]
    numbers = result.table[["odds_ratio", "ci_low", "ci_high", "p_value"]].to_numpy()
    assert np.isfinite(numbers).all()
    table = result.table.set_index("term")
    assert table.loc["persona[never]", "odds_ratio"] < 0.05 and table.loc["task[off]", "odds_ratio"] < 0.05
    # the penalty barely touches what the data do identify
    assert _log_or(result, "persona[p1]") == pytest.approx(1.0, abs=0.3)
    json.dumps(result.to_dict(), allow_nan=False)


def test_single_level_factors_are_dropped_and_said() -> None:
    frame = simulate_frame(
        models=("only",), tasks=("nli",), items_per_task=40, effects={("persona", "persona-1"): 1.0}, seed=1
    )
    result = fit_logistic(frame)
    assert "C(model)" not in result.formula and "C(task)" not in result.formula
    assert any(note.startswith("model has one level") for note in result.notes)
    assert any(note.startswith("task has one level") for note in result.notes)
    assert not any(term.startswith(("model[", "task[")) for term in result.table["term"])
    assert _log_or(result, "persona[persona-1]") > 0.3
