"""Logistic regression of refusal on the design factors, with cluster-robust SEs and a separation fallback.

    refused ~ C(model) + C(task) + C(persona, Treatment("baseline")) + C(forcing_level) + C(task:paraphrase)

fitted as a statsmodels Binomial GLM with standard errors clustered on the request block (rows of a block
share the request, so they are not independent). What the model cannot identify is handled and said:

- a factor with one level is dropped;
- paraphrase ids repeat across tasks ("forced-1" in every task), so the term is task:paraphrase; each
  paraphrase belongs to one task and one forcing level, so treatment dummies for it would be collinear with
  task and forcing_level. Its effects are coded as sum-to-zero deviations within each task × forcing-level
  cell instead: task and forcing-level effects then average over their paraphrases, and a paraphrase term
  says how far that wording sits from the other wordings of its cell (the last wording of a cell has no term:
  it is minus the sum of the others);
- any other exact collinearity drops the later column (order: model, task, persona, forcing_level,
  paraphrase);
- (quasi-)separation, e.g. a persona that never refuses, makes the MLE diverge: it is detected (a level with
  all-0 or all-1 outcomes, statsmodels' separation/convergence warnings, huge or non-finite estimates) and the
  model is refitted with a log-F(1,1) prior on every non-intercept coefficient, by data augmentation
  (Greenland & Mansournia 2015, Stat Med 34:3133): one pseudo-row per coefficient with that column 1, the
  rest 0 and half a refusal. The estimates are then finite and shrunk only where the data say little.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import norm
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationError, PerfectSeparationWarning

from falserefusal.analysis.rates import require_columns
from falserefusal.types import BASELINE_ID, FORCING_LEVELS

FORMULA_TERMS = {
    "model": "C(model)",
    "task": "C(task)",
    "persona": f'C(persona, Treatment("{BASELINE_ID}"))',
    "forcing_level": "C(forcing_level)",
    "paraphrase": "C(task:paraphrase, Sum within task x forcing_level)",
}
TABLE_COLUMNS = ("term", "odds_ratio", "ci_low", "ci_high", "p_value", "factor", "level")
METHOD_MLE = "mle, cluster-robust SE by block"
METHOD_MLE_MODEL_SE = "mle, model-based SE (too few blocks to cluster)"
METHOD_PENALIZED = "penalized (log-F(1,1) prior by data augmentation) fallback, cluster-robust SE by block"
# |log-odds| or SE beyond these means the MLE ran off to infinity (an OR of e^10 = 22 000 is not an estimate)
_HUGE_COEF = 10.0
_HUGE_SE = 10.0


@dataclass(frozen=True, eq=False)
class RegressionResult:
    """Odds ratios of the design factors, how they were obtained, and what was dropped or penalised."""

    table: pd.DataFrame  # term, odds_ratio, ci_low, ci_high, p_value, factor, level
    method: str
    notes: tuple[str, ...]
    n: int
    formula: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None."""
        rows = [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in self.table.to_dict(orient="records")
        ]
        return {"table": rows, "method": self.method, "notes": list(self.notes), "n": self.n, "formula": self.formula}


@dataclass(frozen=True)
class _Column:
    term: str
    factor: str
    level: str


def _levels(values: pd.Series, factor: str) -> list[str]:
    """Levels in reference-first order: the baseline persona, the least forcing level, else sorted."""
    present = sorted(values.unique().tolist())
    if factor == "persona" and BASELINE_ID in present:
        return [BASELINE_ID, *[v for v in present if v != BASELINE_ID]]
    if factor == "forcing_level":
        return [v for v in FORCING_LEVELS if v in present] + [v for v in present if v not in FORCING_LEVELS]
    return present


def _design(df: pd.DataFrame) -> tuple[np.ndarray, list[_Column], list[str], list[str]]:
    """Design matrix, its columns, the factors used, and notes on what was dropped or recoded."""
    notes: list[str] = []
    blocks: list[np.ndarray] = [np.ones((len(df), 1))]
    columns = [_Column("Intercept", "Intercept", "")]
    used: list[str] = []
    for factor in ("model", "task", "persona", "forcing_level"):
        values = df[factor].astype(str)
        levels = _levels(values, factor)
        if len(levels) < 2:
            notes.append(f"{factor} has one level ({levels[0]!r}): term dropped")
            continue
        if factor == "persona" and levels[0] != BASELINE_ID:
            notes.append(f"no {BASELINE_ID!r} persona in the data: persona effects are against {levels[0]!r}")
        used.append(factor)
        for level in levels[1:]:
            blocks.append((values == level).to_numpy(float)[:, None])
            columns.append(_Column(f"{factor}[{level}]", factor, level))
    # paraphrase: sum-to-zero deviations within each task x forcing-level cell (see the module docstring)
    wording = df["task"].astype(str) + ":" + df["paraphrase"].astype(str)
    cell = df["task"].astype(str) + "|" + df["forcing_level"].astype(str)
    added = 0
    for cell_id in sorted(cell.unique()):
        in_cell = (cell == cell_id).to_numpy()
        wordings = sorted(wording[in_cell].unique())
        last = (wording == wordings[-1]).to_numpy(float)
        for level in wordings[:-1]:
            blocks.append(((wording == level).to_numpy(float) - last)[:, None])
            columns.append(_Column(f"paraphrase[{level}]", "paraphrase", level))
            added += 1
    if added:
        used.append("paraphrase")
        notes.append(
            "paraphrase (as task:paraphrase) is nested in task x forcing_level: its effects are sum-to-zero "
            "deviations within each task x forcing-level cell, so task and forcing_level effects average over "
            "their paraphrases"
        )
    else:
        notes.append("paraphrase has one level per task x forcing level: term dropped")
    return np.hstack(blocks), columns, used, notes


def _independent_columns(x: np.ndarray) -> list[int]:
    """Indices of the columns kept when each one in the span of the earlier ones is dropped."""
    distinct = np.unique(x, axis=0)  # same column space, far fewer rows
    kept: list[int] = []
    rank = 0
    for j in range(x.shape[1]):
        trial = distinct[:, [*kept, j]]
        new_rank = np.linalg.matrix_rank(trial)
        if new_rank > rank:
            kept.append(j)
            rank = new_rank
    return kept


def _separated_levels(df: pd.DataFrame, y: np.ndarray, factors: list[str]) -> list[str]:
    """Levels of treatment-coded factors whose rows all refused or all complied (their MLE is infinite)."""
    found = []
    for factor in factors:
        if factor == "paraphrase":
            continue  # deviation-coded: an all-0 wording does not by itself separate; the fit checks tell
        grouped = pd.Series(y).groupby(df[factor].astype(str).to_numpy()).agg(["sum", "size"])
        for level, (refusals, size) in grouped.iterrows():
            if refusals == 0 or refusals == size:
                what = "never refuses" if refusals == 0 else "always refuses"
                found.append(f"{factor}[{level}] {what} ({int(refusals)}/{int(size)})")
    return found


def _fit(
    y: np.ndarray, x: np.ndarray, groups: np.ndarray | None
) -> tuple[Any | None, list[str]]:
    """One GLM fit; returns the result (None if it failed) and the warnings that signal trouble."""
    trouble: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = sm.GLM(y, x, family=sm.families.Binomial())
            if groups is None:
                result = model.fit()
            else:
                result = model.fit(cov_type="cluster", cov_kwds={"groups": groups})
        except (PerfectSeparationError, np.linalg.LinAlgError, ValueError) as error:
            return None, [f"fit failed: {type(error).__name__}: {error}"]
    for warning in caught:
        if issubclass(warning.category, PerfectSeparationWarning):
            trouble.append("statsmodels detected perfect separation")
        elif issubclass(warning.category, ConvergenceWarning):
            trouble.append("the fit did not converge")
        elif issubclass(warning.category, RuntimeWarning) and "overflow" in str(warning.message):
            trouble.append("numerical overflow in the fit")
    return result, sorted(set(trouble))


def _diverged_terms(result: Any, columns: list[_Column]) -> list[str]:
    params, bse = np.asarray(result.params), np.asarray(result.bse)
    sane = np.isfinite(params) & np.isfinite(bse) & (np.abs(params) <= _HUGE_COEF) & (bse <= _HUGE_SE)
    return [column.term for column, ok in zip(columns, sane) if column.term != "Intercept" and not ok]


def _table(result: Any, columns: list[_Column], alpha: float) -> pd.DataFrame:
    params, bse = np.asarray(result.params, float), np.asarray(result.bse, float)
    z = norm.isf(alpha / 2)
    with np.errstate(over="ignore", invalid="ignore"):
        table = pd.DataFrame(
            {
                "term": [c.term for c in columns],
                "odds_ratio": np.exp(params),
                "ci_low": np.exp(params - z * bse),
                "ci_high": np.exp(params + z * bse),
                "p_value": 2 * norm.sf(np.abs(params / bse)),
                "factor": [c.factor for c in columns],
                "level": [c.level for c in columns],
            }
        )
    numeric = ["odds_ratio", "ci_low", "ci_high", "p_value"]
    table[numeric] = table[numeric].where(np.isfinite(table[numeric].to_numpy()), np.nan)
    return table


def _empty(n: int, note: str) -> RegressionResult:
    return RegressionResult(pd.DataFrame(columns=list(TABLE_COLUMNS)), "none", (note,), n, "")


def fit_logistic(df: pd.DataFrame, alpha: float = 0.05) -> RegressionResult:
    """Odds ratios (1 - alpha Wald intervals, cluster-robust by block) of every factor level against its reference."""
    require_columns(df, ["model", "task", "persona", "forcing_level", "paraphrase", "block", "refused"], "fit_logistic")
    n = len(df)
    if n == 0:
        return _empty(0, "no rows — nothing to model")
    y = df["refused"].astype(bool).to_numpy(float)
    if y.sum() == 0:
        return _empty(n, "no refusals — nothing to model")
    if y.sum() == n:
        return _empty(n, "every request refused — nothing to model")

    x, columns, used, notes = _design(df)
    kept = _independent_columns(x)
    if len(kept) < x.shape[1]:
        dropped = [columns[j].term for j in range(x.shape[1]) if j not in kept]
        notes.append(f"collinear with earlier terms, dropped: {', '.join(dropped)}")
        x, columns = x[:, kept], [columns[j] for j in kept]
    formula = "refused ~ " + " + ".join(FORMULA_TERMS[f] for f in used) if used else "refused ~ 1"

    groups = pd.factorize(df["block"])[0]
    if groups.max() + 1 <= x.shape[1]:
        # a cluster-robust covariance needs more clusters than parameters, or it is singular
        notes.append(f"only {groups.max() + 1} blocks for {x.shape[1]} parameters: model-based SEs, not clustered")
        groups, method = None, METHOD_MLE_MODEL_SE
    else:
        method = METHOD_MLE

    separated = _separated_levels(df, y, used)
    result, trouble = _fit(y, x, groups)
    diverged = _diverged_terms(result, columns) if result is not None else []
    if not (separated or trouble or diverged or result is None):
        return RegressionResult(_table(result, columns, alpha), method, tuple(notes), n, formula)

    # separation: refit with a log-F(1,1) prior on every coefficient but the intercept (data augmentation)
    k = x.shape[1]
    pseudo = np.eye(k)[1:]
    x_aug = np.vstack([x, pseudo])
    y_aug = np.concatenate([y, np.full(k - 1, 0.5)])
    groups_aug = None if groups is None else np.concatenate([groups, groups.max() + 1 + np.arange(k - 1)])
    penalized, trouble_pen = _fit(y_aug, x_aug, groups_aug)
    named = {reason.split(" ")[0] for reason in separated}
    reasons = [*separated, *trouble, *(f"{t} diverged" for t in diverged if t not in named)]
    notes.append(f"separation ({'; '.join(reasons)}): refitted with a log-F(1,1) penalty on every coefficient")
    method = METHOD_PENALIZED
    if groups is None:
        method = METHOD_PENALIZED.replace("cluster-robust SE by block", "model-based SE")
    if penalized is None:
        notes.append(f"the penalised fit failed too ({'; '.join(trouble_pen)}): no estimates")
        table = pd.DataFrame({"term": [c.term for c in columns], "factor": [c.factor for c in columns],
                              "level": [c.level for c in columns]})
        for column in ("odds_ratio", "ci_low", "ci_high", "p_value"):
            table[column] = np.nan
        return RegressionResult(table[list(TABLE_COLUMNS)], method, tuple(notes), n, formula)
    table = _table(penalized, columns, alpha)
    missing = table.loc[table[["odds_ratio", "ci_low", "ci_high", "p_value"]].isna().any(axis=1), "term"]
    if len(missing):
        notes.append(f"not estimable even penalised (NaN): {', '.join(missing)}")
    return RegressionResult(table, method, tuple(notes), n, formula)
