"""Logistic regression of refusal on the design factors, with small-sample cluster-robust SEs and a separation fallback.

    refused ~ C(model) + C(task) + C(persona, Treatment("baseline")) + C(forcing_level) + C(task:paraphrase)

(+ C(language, Treatment("en")) before C(task) when the run has prompts in more than one language)

fitted as a statsmodels Binomial GLM. Rows of one dataset item share the item (and rows of one request block the
request), so they are not independent: standard errors are clustered on the item (task:item; it nests the request
blocks, so this is also the two-way item x block clustering; the block where a frame has no item column).

Few clusters. The usual cluster-robust (sandwich) variance is biased downwards and its Wald tests over-reject
when clusters are few or unbalanced (Cameron & Miller 2015, J Human Resources 50:317-372, section VI; a `make run`
of 12 blocks per task has 36 clusters). The variance is therefore CR2, the bias-reduced linearisation of Bell &
McCaffrey (2002, Survey Methodology 28:169-181): each cluster's residuals are scaled by (I - H_gg)^(-1/2), H_gg its
block of the hat matrix, computed on the whitened IRLS problem at convergence (X̃ = W^½ X, ẽ = W^½ (z - η)) as for
a weighted least-squares fit; and each coefficient's t reference has the Satterthwaite degrees of freedom of
Bell & McCaffrey under working independence, (Σλ)² / Σλ², λ the eigenvalues of G'G (Imbens & Kolesár 2016,
REStat 98:701-712; Pustejovsky & Tipton 2018, JBES 36:672-683, who find this combination close to nominal size
with as few as 15-20 clusters, and anti-conservative tests when its df fall below about 4, as does Tipton 2015,
Psych Methods 20:375-393). We chose CR2 over a wild cluster bootstrap: it is deterministic, needs one fit
instead of hundreds, and gives every coefficient its own df, which shows where few clusters inform a term. Below
`FEW_CLUSTERS` (42, the rule of thumb of Angrist & Pischke 2009, Mostly Harmless Econometrics, ch. 8, that
Cameron & Miller discuss) the result carries a warning, and terms with df < `MIN_DF` are marked. A one-line
reading may headline the strongest term only when it is significant after Benjamini-Hochberg over all terms (the
strongest of ~30 terms is otherwise often a chance one), has at least `MIN_DF` df, and a CI within a factor of
`MAX_CI_RATIO`.

What the model cannot identify is handled and said:

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
from scipy.stats import t as student_t
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationError, PerfectSeparationWarning

from falserefusal.analysis.rates import require_columns
from falserefusal.types import BASELINE_ID, FORCING_LEVELS

FORMULA_TERMS = {
    "model": "C(model)",
    "language": 'C(language, Treatment("en"))',
    "task": "C(task)",
    "persona": f'C(persona, Treatment("{BASELINE_ID}"))',
    "forcing_level": "C(forcing_level)",
    "paraphrase": "C(task:paraphrase, Sum within task x forcing_level)",
}
TABLE_COLUMNS = ("term", "odds_ratio", "ci_low", "ci_high", "p_value", "df", "factor", "level")
CLUSTERED_SE = "CR2 cluster-robust SE by item, Satterthwaite df"
METHOD_MLE = f"mle, {CLUSTERED_SE}"
METHOD_MLE_MODEL_SE = "mle, model-based SE (one cluster: nothing to cluster)"
METHOD_PENALIZED = f"penalized (log-F(1,1) prior by data augmentation) fallback, {CLUSTERED_SE}"
#: below this many clusters the result carries a warning (see the module docstring)
FEW_CLUSTERS = 42
#: a term whose Satterthwaite df fall below this is marked: its test is not trustworthy even with CR2
MIN_DF = 4.0
#: no "strongest effect" headline for a term whose CI spans more than this ratio (two orders of magnitude)
MAX_CI_RATIO = 100.0
# |log-odds| or SE beyond these means the MLE ran off to infinity (an OR of e^10 = 22 000 is not an estimate)
_HUGE_COEF = 10.0
_HUGE_SE = 10.0


@dataclass(frozen=True, eq=False)
class RegressionResult:
    """Odds ratios of the design factors, how they were obtained, and what was dropped or penalised."""

    table: pd.DataFrame  # term, odds_ratio, ci_low, ci_high, p_value, df, factor, level
    method: str
    notes: tuple[str, ...]
    n: int
    formula: str
    clusters: int = 0
    warning: str = ""  # shown above the table: few clusters, or terms with few df

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None."""
        rows = [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in self.table.to_dict(orient="records")
        ]
        return {
            "table": rows,
            "method": self.method,
            "notes": list(self.notes),
            "n": self.n,
            "formula": self.formula,
            "clusters": self.clusters,
            "warning": self.warning,
        }


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
    if factor == "language" and "en" in present:
        return ["en", *[v for v in present if v != "en"]]
    return present


def _design(df: pd.DataFrame) -> tuple[np.ndarray, list[_Column], list[str], list[str]]:
    """Design matrix, its columns, the factors used, and notes on what was dropped or recoded."""
    notes: list[str] = []
    blocks: list[np.ndarray] = [np.ones((len(df), 1))]
    columns = [_Column("Intercept", "Intercept", "")]
    used: list[str] = []
    # language (a property of the task) comes before task: with translated tasks their task terms are the collinear
    # ones dropped, so the language effect is estimated; a run in one language has no language term (and no note)
    several_languages = "language" in df.columns and df["language"].nunique() > 1
    for factor in ("model", *(("language",) if several_languages else ()), "task", "persona", "forcing_level"):
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


def _fit(y: np.ndarray, x: np.ndarray) -> tuple[Any | None, list[str]]:
    """One GLM fit (model-based covariance; `cr2` replaces it); the result (None if it failed) and trouble signs."""
    trouble: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = sm.GLM(y, x, family=sm.families.Binomial()).fit()
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


def cr2(x: np.ndarray, residuals: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CR2 cluster-robust covariance of a (weighted) least-squares fit and each coefficient's Satterthwaite df.

    `x` and `residuals` are the whitened design and residuals (for OLS the plain ones). Bell & McCaffrey's
    adjustment A_g = (I - H_gg)^(-1/2) is applied through an orthonormal basis of each cluster's rows
    (H_gg has rank <= p, so only p directions change; a leverage of 1 gets the Moore-Penrose 0). The df of
    coefficient j are (Σλ)² / Σλ² for the eigenvalues λ of G'G, G_g = (I - H)_{·g} A_g X_g M e_j
    (Imbens & Kolesár 2016, eq. 9),
    computed without the n x G matrix: (G'G)_gh = δ_gh u_g'u_g - v_g' M v_h with u_g = A_g X_g M e_j, v_g = X_g'u_g.
    """
    x, residuals = np.asarray(x, dtype=float), np.asarray(residuals, dtype=float)
    codes = pd.factorize(np.asarray(clusters))[0]
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.diff(codes[order], prepend=-1))
    groups = np.split(order, starts[1:])
    bread = np.linalg.pinv(x.T @ x)
    k = x.shape[1]
    scores, norms, v = np.zeros((len(groups), k)), np.zeros((len(groups), k)), np.zeros((len(groups), k, k))
    for g, rows in enumerate(groups):
        xg, eg = x[rows], residuals[rows]
        # an orthonormal basis q of the cluster's column space and xg = q r, from the p x p Gram matrix (cheaper
        # than a QR of the n_g x p rows, and rank-revealing)
        gram_values, gram_vectors = np.linalg.eigh(xg.T @ xg)
        keep = gram_values > 1e-12 * max(float(gram_values.max()), 1e-300)
        q = xg @ (gram_vectors[:, keep] / np.sqrt(gram_values[keep]))
        r = np.sqrt(gram_values[keep])[:, None] * gram_vectors[:, keep].T
        leverage, vectors = np.linalg.eigh(r @ bread @ r.T)
        w = q @ vectors
        room = 1.0 - leverage
        scale = np.where(room > 1e-10, 1.0 / np.sqrt(np.clip(room, 1e-300, None)), 0.0) - 1.0

        def adjust(values: np.ndarray) -> np.ndarray:  # A_g @ values
            return values + w @ (scale[:, None] * (w.T @ values))

        scores[g] = xg.T @ adjust(eg[:, None])[:, 0]
        u = adjust(xg) @ bread  # column j: u_g for coefficient j
        norms[g] = (u * u).sum(axis=0)
        v[g] = xg.T @ u
    cov = bread @ (scores.T @ scores) @ bread
    vmv = np.einsum("gaj,ab,gbj->gj", v, bread, v)
    df = np.empty(k)
    for j in range(k):
        cross = bread @ (v[:, :, j].T @ v[:, :, j])
        square = float((norms[:, j] ** 2).sum() - 2 * (norms[:, j] * vmv[:, j]).sum() + (cross * cross.T).sum())
        trace = float(norms[:, j].sum() - vmv[:, j].sum())
        df[j] = trace**2 / square if square > 0 else np.nan
    return cov, df


def glm_cr2(result: Any, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`cr2` of a fitted statsmodels GLM: the whitened IRLS problem at convergence (X̃ = W^½ X, ẽ = W^½ (z - η))."""
    root_w = np.sqrt(np.asarray(result.model.family.weights(result.mu), dtype=float))
    x = np.asarray(result.model.exog, dtype=float) * root_w[:, None]
    return cr2(x, root_w * np.asarray(result.resid_working, dtype=float), clusters)


@dataclass(frozen=True)
class _Inference:
    params: np.ndarray
    se: np.ndarray
    df: np.ndarray  # inf: normal reference (model-based SEs)


def _inference(result: Any, clusters: np.ndarray | None) -> _Inference:
    params = np.asarray(result.params, dtype=float)
    if clusters is None:
        return _Inference(params, np.asarray(result.bse, dtype=float), np.full(len(params), np.inf))
    cov, df = glm_cr2(result, clusters)
    with np.errstate(invalid="ignore"):
        return _Inference(params, np.sqrt(np.diag(cov)), df)


def _diverged_terms(inference: _Inference, columns: list[_Column]) -> list[str]:
    params, se = inference.params, inference.se
    sane = np.isfinite(params) & np.isfinite(se) & (np.abs(params) <= _HUGE_COEF) & (se <= _HUGE_SE)
    return [column.term for column, ok in zip(columns, sane) if column.term != "Intercept" and not ok]


def _table(inference: _Inference, columns: list[_Column], alpha: float) -> pd.DataFrame:
    params, se, df = inference.params, inference.se, inference.df
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        q = student_t.isf(alpha / 2, df)
        table = pd.DataFrame(
            {
                "term": [c.term for c in columns],
                "odds_ratio": np.exp(params),
                "ci_low": np.exp(params - q * se),
                "ci_high": np.exp(params + q * se),
                "p_value": 2 * student_t.sf(np.abs(params / se), df),
                "df": df,
                "factor": [c.factor for c in columns],
                "level": [c.level for c in columns],
            }
        )
    numeric = ["odds_ratio", "ci_low", "ci_high", "p_value"]
    table[numeric] = table[numeric].where(np.isfinite(table[numeric].to_numpy()), np.nan)
    return table


def _warning(clusters: int, table: pd.DataFrame) -> str:
    """Few clusters, or terms whose Satterthwaite df are too few for their test to hold (see the module docstring)."""
    parts = []
    if clusters and clusters < FEW_CLUSTERS:
        parts.append(
            f"only {clusters} clusters (dataset items): below {FEW_CLUSTERS}, cluster-robust tests are unreliable even "
            "with the CR2 correction and Satterthwaite df (Cameron & Miller 2015); read the p-values and intervals "
            "as rough, and judge persona effects by the paired gates"
        )
    terms = table[(table["term"] != "Intercept") & (table["df"] < MIN_DF)] if len(table) else table
    if len(terms):
        parts.append(
            f"{len(terms)} of {int((table['term'] != 'Intercept').sum())} terms have fewer than {MIN_DF:g} "
            "Satterthwaite df (few clusters inform them): their tests are not trustworthy"
        )
    return "; ".join(parts)


def headline_terms(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Terms a reading may headline: significant after Benjamini-Hochberg over the terms (a headline picks the
    strongest of many), finite, with at least MIN_DF df and a CI within a factor of MAX_CI_RATIO."""
    if table.empty:
        return table
    terms = table[(table["term"] != "Intercept") & np.isfinite(table["p_value"].astype(float))]
    if terms.empty:
        return terms
    q = multipletests(terms["p_value"].astype(float).to_numpy(), method="fdr_bh")[1]
    ratio = terms["ci_high"].astype(float) / terms["ci_low"].astype(float)
    keep = (q < alpha) & np.isfinite(ratio) & (ratio <= MAX_CI_RATIO) & (terms["df"].astype(float) >= MIN_DF)
    return terms[keep]


def _empty(n: int, note: str) -> RegressionResult:
    return RegressionResult(pd.DataFrame(columns=list(TABLE_COLUMNS)), "none", (note,), n, "")


def _clusters(df: pd.DataFrame) -> np.ndarray:
    """The cluster of each row: its dataset item within its task (items nest request blocks), else its block."""
    if "item" in df.columns:
        return pd.factorize(df["task"].astype(str) + ":" + df["item"].astype(str))[0]
    return pd.factorize(df["block"])[0]


def fit_logistic(df: pd.DataFrame, alpha: float = 0.05) -> RegressionResult:
    """Odds ratios (1 - alpha intervals, CR2 cluster-robust by item with Satterthwaite t) of every factor level
    against its reference."""
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

    clusters = _clusters(df)
    n_clusters = int(clusters.max()) + 1
    groups: np.ndarray | None = clusters
    if n_clusters < 2:
        notes.append("one cluster: model-based SEs, not clustered")
        groups, method = None, METHOD_MLE_MODEL_SE
    else:
        # with fewer clusters than parameters the covariance matrix is singular, but each term's CR2 variance and
        # Satterthwaite df still say how much its few clusters tell (model-based SEs would claim far more)
        method = METHOD_MLE
        if n_clusters <= x.shape[1]:
            notes.append(
                f"{n_clusters} clusters for {x.shape[1]} parameters: the covariance matrix is singular (joint "
                "tests impossible); each term keeps its own CR2 SE and df"
            )

    def finish(table: pd.DataFrame, method: str) -> RegressionResult:
        warning = _warning(n_clusters, table)
        if groups is None:
            warning = "; ".join(
                filter(
                    None,
                    ["one cluster: model-based SEs, which ignore the correlation within it (too optimistic)", warning],
                )
            )
        return RegressionResult(table, method, tuple(notes), n, formula, n_clusters, warning)

    separated = _separated_levels(df, y, used)
    result, trouble = _fit(y, x)
    inference = _inference(result, groups) if result is not None else None
    diverged = _diverged_terms(inference, columns) if inference is not None else []
    if inference is not None and not (separated or trouble or diverged):
        return finish(_table(inference, columns, alpha), method)

    # separation: refit with a log-F(1,1) prior on every coefficient but the intercept (data augmentation)
    k = x.shape[1]
    pseudo = np.eye(k)[1:]
    x_aug = np.vstack([x, pseudo])
    y_aug = np.concatenate([y, np.full(k - 1, 0.5)])
    groups_aug = None if groups is None else np.concatenate([groups, groups.max() + 1 + np.arange(k - 1)])
    penalized, trouble_pen = _fit(y_aug, x_aug)
    named = {reason.split(" ")[0] for reason in separated}
    reasons = [*separated, *trouble, *(f"{t} diverged" for t in diverged if t not in named)]
    notes.append(f"separation ({'; '.join(reasons)}): refitted with a log-F(1,1) penalty on every coefficient")
    method = METHOD_PENALIZED
    if groups is None:
        method = METHOD_PENALIZED.replace(CLUSTERED_SE, "model-based SE")
    if penalized is None:
        notes.append(f"the penalised fit failed too ({'; '.join(trouble_pen)}): no estimates")
        table = pd.DataFrame(
            {
                "term": [c.term for c in columns],
                "factor": [c.factor for c in columns],
                "level": [c.level for c in columns],
            }
        )
        for column in ("odds_ratio", "ci_low", "ci_high", "p_value", "df"):
            table[column] = np.nan
        return finish(table[list(TABLE_COLUMNS)], method)
    table = _table(_inference(penalized, groups_aug), columns, alpha)
    missing = table.loc[table[["odds_ratio", "ci_low", "ci_high", "p_value"]].isna().any(axis=1), "term"]
    if len(missing):
        notes.append(f"not estimable even penalised (NaN): {', '.join(missing)}")
    return finish(table, method)
