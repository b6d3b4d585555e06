"""Logistic regression: planted log-odds are recovered, CR2 clustering by item, degenerate data are handled."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from falserefusal.analysis import fit_logistic, simulate_frame
from falserefusal.analysis.regression import (
    METHOD_MLE,
    METHOD_PENALIZED,
    TABLE_COLUMNS,
    RegressionResult,
    cr2,
    glm_cr2,
    headline_terms,
)

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


# ----- CR2 with Satterthwaite df, few clusters, the headline rule ---------------------------------------------


def test_cr2_with_singleton_clusters_is_hc2() -> None:
    import statsmodels.api as sm

    rng = np.random.default_rng(4)
    x = np.column_stack([np.ones(40), rng.normal(size=40), rng.integers(0, 2, 40)])
    y = x @ [1.0, 0.5, -0.3] + rng.normal(size=40) * (1 + np.abs(x[:, 1]))
    ols = sm.OLS(y, x).fit(cov_type="HC2")
    cov, df = cr2(x, y - x @ ols.params, np.arange(40))
    assert cov == pytest.approx(np.asarray(ols.cov_params()), rel=1e-10)
    assert np.isfinite(df).all() and (df > 1).all()


def test_cr2_of_a_mean_with_equal_clusters_is_the_g_over_g_minus_1_correction_with_g_minus_1_df() -> None:
    # intercept only, G clusters of n: H_gg = J / N, so A_g scales each cluster's sum by (1 - n/N)^(-1/2) and
    # V = G / (G - 1) * Σ_g (Σ_i e_gi)² / N²; the Bell-McCaffrey df are G - 1 (eigenvalues: G - 1 equal, one 0)
    rng = np.random.default_rng(5)
    groups, n = 7, 5
    y = rng.normal(size=groups * n) + np.repeat(rng.normal(size=groups), n)
    clusters = np.repeat(np.arange(groups), n)
    e = y - y.mean()
    cov, df = cr2(np.ones((groups * n, 1)), e, clusters)
    sums = np.bincount(clusters, weights=e)
    assert cov[0, 0] == pytest.approx(groups / (groups - 1) * (sums**2).sum() / (groups * n) ** 2, rel=1e-12)
    assert df[0] == pytest.approx(groups - 1, rel=1e-10)


def _dense_cr2(x: np.ndarray, e: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CR2 and Bell-McCaffrey df straight from the formulas, with full n x n matrices (small data only)."""
    bread = np.linalg.inv(x.T @ x)
    hat = x @ bread @ x.T
    residual_maker = np.eye(len(x)) - hat
    meat = np.zeros_like(bread)
    adjusted = {}
    for g in np.unique(clusters):
        rows = np.flatnonzero(clusters == g)
        values, vectors = np.linalg.eigh(np.eye(len(rows)) - hat[np.ix_(rows, rows)])
        adjusted[g] = (rows, vectors @ np.diag(values**-0.5) @ vectors.T)
        score = x[rows].T @ adjusted[g][1] @ e[rows]
        meat += np.outer(score, score)
    df = []
    for j in range(x.shape[1]):
        columns = [residual_maker[:, rows] @ a @ x[rows] @ bread[:, j] for rows, a in adjusted.values()]
        eigenvalues = np.linalg.eigvalsh(np.column_stack(columns).T @ np.column_stack(columns))
        df.append(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())
    return bread @ meat @ bread, np.array(df)


def test_cr2_of_a_logistic_fit_equals_the_dense_formulas_on_unequal_clusters() -> None:
    import statsmodels.api as sm

    rng = np.random.default_rng(6)
    sizes = rng.integers(2, 9, 15)
    clusters = np.repeat(np.arange(15), sizes)
    x = np.column_stack([np.ones(len(clusters)), rng.normal(size=len(clusters)), np.repeat(rng.integers(0, 2, 15), sizes)])
    y = (rng.random(len(clusters)) < 1 / (1 + np.exp(-(x @ [-0.5, 0.8, 0.6])))).astype(float)
    result = sm.GLM(y, x, family=sm.families.Binomial()).fit()
    cov, df = glm_cr2(result, clusters)
    w = result.mu * (1 - result.mu)
    dense_cov, dense_df = _dense_cr2(x * np.sqrt(w)[:, None], (y - result.mu) / np.sqrt(w), clusters)
    assert cov == pytest.approx(dense_cov, rel=1e-8)
    assert df == pytest.approx(dense_df, rel=1e-8)
    # the cluster-level covariate is informed by 15 clusters only: its df are well below the row count
    assert df[2] < 15


def test_few_clusters_give_a_warning_and_many_do_not() -> None:
    few = fit_logistic(simulate_frame(items_per_task=8, effects={("persona", "persona-1"): 1.0}, seed=3))
    assert few.clusters == 16 and few.warning.startswith("only 16 clusters (dataset items): below 42")
    assert set(few.table.columns) == set(TABLE_COLUMNS) and few.method == METHOD_MLE
    many = fit_logistic(simulate_frame(items_per_task=40, effects={("persona", "persona-1"): 1.0}, seed=3))
    assert many.clusters == 80 and "clusters (dataset items)" not in many.warning
    assert json.loads(json.dumps(few.to_dict(), allow_nan=False))["warning"] == few.warning


def test_no_headline_for_an_interval_spanning_more_than_two_orders_of_magnitude() -> None:
    table = pd.DataFrame({
        "term": ["Intercept", "paraphrase[politeness:forced-2]", "persona[asian]", "model[b]"],
        "odds_ratio": [0.1, 3912.0, 2.0, 1.1], "ci_low": [0.05, 28.0, 1.5, 0.9], "ci_high": [0.2, 547033.0, 2.7, 1.3],
        "p_value": [0.001, 0.001, 0.0001, 0.4], "df": [30.0, 20.0, 25.0, 30.0],
        "factor": ["Intercept", "paraphrase", "persona", "model"], "level": ["", "politeness:forced-2", "asian", "b"],
    })
    assert headline_terms(table)["term"].tolist() == ["persona[asian]"]
    assert headline_terms(table.assign(df=[30.0, 20.0, 3.0, 30.0])).empty  # too few df for the persona term
    # the strongest of many terms: p 0.011 is no headline among 31 terms (Benjamini-Hochberg q 0.34)
    many = pd.concat([table.iloc[[0, 2]].assign(p_value=[0.001, 0.011])] + [table.iloc[[3]].assign(term=f"t{i}")
                                                                          for i in range(29)], ignore_index=True)
    assert headline_terms(many).empty and headline_terms(many.iloc[:3])["term"].tolist() == ["persona[asian]"]
