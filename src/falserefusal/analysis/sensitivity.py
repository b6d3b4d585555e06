"""Wasserstein (optimal-transport) global sensitivity of refusal to each design factor, with a noise floor.

Borgonovo, Figalli, Plischke & Savaré, "Global sensitivity analysis via optimal transport", Management
Science (2024), measure how much knowing a factor X moves the distribution of the output Y:

    ι(Y, X) = E_X[ W2²(P_Y, P_{Y|X}) ] / (2 Var Y)

estimated from given data by partitioning X (for a categorical factor, one cell per level; the estimator of
their R package gsaot). Why 2 Var Y: coupling Y with an independent copy of Y|X=k costs
Var Y + Var(Y|k) + (E Y - E[Y|k])², which averages over k to 2 Var Y, so ι lies in [0, 1]; ι = 0 when Y|X
has the law of Y for every level (X does not matter), ι = 1 when Y is a function of X (each Y|X=k is a point
mass, and the independent coupling is then the only coupling).

In one dimension the optimal coupling is the quantile coupling, W2²(P, Q) = ∫_0^1 (F_P^-1(u) - F_Q^-1(u))² du,
which `wasserstein_index` computes exactly for empirical distributions (step quantile functions).

Refusal is binary. The quantile function of Bernoulli(p) is 1{u > 1 - p}, so the squared quantile
difference of Bernoulli(p) and Bernoulli(p_k) is 1 on an interval of length |p - p_k| and 0 elsewhere:
W2² = |p - p_k|, Var Y = p (1 - p), and

    ι = Σ_k w_k |p_k - p| / (2 p (1 - p))        (w_k: share of level k)

(`binary_closed_form`; the general estimator equals it exactly on 0/1 data, and tests check that). The
normalisation is the paper's; nothing needed adjusting. Since Σ_k w_k p_k = p and |p_k - p| is convex in
p_k, the sum is largest when every p_k is 0 or 1, where it equals p(1-p) + (1-p)p: ι = 1 exactly for any
number of levels when each level always or never refuses.

The plug-in estimate ι̂ is biased upwards, and the more so the more levels and the fewer rows per level a factor
has: |p̂_k - p̂| >= |p_k - p| on average (Jensen), so sampling noise shows as dependence. `sensitivity_table`
therefore reports, beside ι̂:

- a noise floor from a permutation null that keeps the paired design: a factor that varies within request blocks
  (persona, model) has its levels swapped within each block, a level's rows moving together (a persona's answers
  from every model; one model's answers to all 16 conditions, which share that model's draw for the request), so
  the answers to one request stay paired as they are in the data; a factor fixed within blocks (task, forcing
  level, paraphrase, item) has its labels permuted between blocks, within the levels of the factors it is nested
  in (an item within its task, a paraphrase within its task x forcing level). The
  floor is the 1 - alpha quantile of ι̂ of the permuted labels, and the factor is distinguishable from noise when
  the permutation p-value (1 + #{permuted ι̂ >= ι̂}) / (1 + n_perm) is at most alpha (a test of "refusal does not
  depend on the factor"; ι̂ then lies above the floor);
- the bias-corrected index ι̂ - E_0[ι̂], E_0 the mean of the permutation null (the expected index of a factor
  with these levels and no effect; clipped at 0), as chance-corrected indices such as the adjusted Rand index are;
- a 1 - alpha interval for the population index ι (the closed form on the true refusal probabilities):
  [ι̂ - E_0[ι̂] - z s, ι̂ + z s], s the standard deviation of ι̂ over request-block bootstrap resamples, clipped to
  [0, 1]. Why it covers: E[ι̂] >= ι (above), so the upper end covers; and the bias E[ι̂] - ι is at most the bias
  when the factor has no effect at all (per level, E|N(d, s²)| - |d| is largest at d = 0), which E_0[ι̂]
  estimates from the permutations, so the lower end covers. It is wide for many-level factors with few rows per
  level (item), as it should be: those data cannot size a small item effect. Coverage per factor, and the
  agreement with the persona gates, are measured by `falserefusal simulate --sensitivity` (README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, TypeAlias

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import norm

from falserefusal.analysis.rates import require_columns
from falserefusal.types import FalseRefusalError

DEFAULT_FACTORS: tuple[str, ...] = ("model", "task", "persona", "forcing_level", "paraphrase", "item")
#: factors whose ids repeat across tasks ("forced-1" in every task): their levels are task:id
NESTED_IN_TASK: tuple[str, ...] = ("paraphrase", "item")
#: factors that can be fixed within request blocks and nest one another (the strata of a between-block permutation)
BLOCK_FACTORS: tuple[str, ...] = ("task", "forcing_level", "paraphrase", "item")
SENSITIVITY_COLUMNS = (
    "factor",
    "n_levels",
    "index",
    "index_corrected",
    "ci_low",
    "ci_high",
    "noise_floor",
    "null_mean",
    "p_value",
    "distinguishable",
    "note",
)


ArrayLike: TypeAlias = Sequence[float] | np.ndarray | pd.Series


def _as_arrays(y: ArrayLike, levels: Sequence[object] | np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray, int]:
    y = np.asarray(y, dtype=float)
    codes, uniques = pd.factorize(pd.Series(np.asarray(levels, dtype=object)), sort=True)
    if y.ndim != 1 or len(y) != len(codes):
        raise FalseRefusalError(
            f"sensitivity: y and levels must be 1-d and of equal length, got {y.shape} and {len(codes)}"
        )
    if (codes < 0).any():
        raise FalseRefusalError("sensitivity: levels contain missing values; give every row a level")
    return y, codes, len(uniques)


def wasserstein_squared(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2² between the empirical distributions of two 1-d samples: ∫ (quantile_a - quantile_b)² du."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    ua, ub = np.arange(1, len(a) + 1) / len(a), np.arange(1, len(b) + 1) / len(b)
    grid = np.union1d(ua, ub)  # the quantile functions are constant between consecutive grid points
    widths = np.diff(grid, prepend=0.0)
    middle = grid - widths / 2
    qa = a[np.minimum(np.searchsorted(ua, middle), len(a) - 1)]
    qb = b[np.minimum(np.searchsorted(ub, middle), len(b) - 1)]
    return float(np.sum(widths * (qa - qb) ** 2))


def wasserstein_index(y: Sequence[float] | np.ndarray, levels: Sequence[object] | np.ndarray) -> float:
    """Given-data ι = Σ_k w_k W2²(P_Y, P_{Y|k}) / (2 Var Y) for a categorical factor; NaN when Y is constant."""
    y, codes, k = _as_arrays(y, levels)
    variance = float(np.var(y)) if len(y) else 0.0
    if variance <= 0.0:
        return float("nan")
    shares = np.bincount(codes, minlength=k) / len(y)
    cost = sum(shares[j] * wasserstein_squared(y, y[codes == j]) for j in range(k))
    return float(cost / (2.0 * variance))


def _binary_index(refusals: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ι from per-level refusal sums and row counts (last axis: levels); NaN where the pooled rate is 0 or 1."""
    total = counts.sum(axis=-1, keepdims=True)
    p = refusals.sum(axis=-1, keepdims=True) / total
    # Σ_k w_k |p_k - p| = Σ_k |refusals_k - counts_k p| / total
    spread = np.abs(refusals - counts * p).sum(axis=-1, keepdims=True) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        index = spread / (2.0 * p * (1.0 - p))
    index = np.where((p > 0) & (p < 1), index, np.nan)
    return np.clip(index[..., 0], 0.0, 1.0)  # clip: float rounding only


def binary_closed_form(y: Sequence[float] | np.ndarray, levels: Sequence[object] | np.ndarray) -> float:
    """ι = Σ_k w_k |p_k - p| / (2 p (1 - p)) for 0/1 outcomes; NaN when the pooled rate is 0 or 1."""
    y, codes, k = _as_arrays(y, levels)
    if not np.isin(y, (0.0, 1.0)).all():
        raise FalseRefusalError("binary_closed_form: y must be 0/1 (use wasserstein_index for other outcomes)")
    if len(y) == 0:
        return float("nan")
    return float(_binary_index(np.bincount(codes, weights=y, minlength=k), np.bincount(codes, minlength=k)))


def factor_levels(df: pd.DataFrame, factor: str) -> pd.Series:
    """A factor's level per row; ids that repeat across tasks are made distinct as task:id."""
    if factor in NESTED_IN_TASK and "task" in df.columns:
        return df["task"].astype(str) + ":" + df[factor].astype(str)
    return df[factor].astype(str)


def _combined(codes: Sequence[np.ndarray], n: int) -> np.ndarray:
    """One code per distinct combination of the given code arrays (all zero when there are none)."""
    if not codes:
        return np.zeros(n, dtype=np.int64)
    return np.unique(np.column_stack(codes), axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _nested_in(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Each level of `inner` sits in exactly one level of `outer`, which has fewer levels (inner is nested in it)."""
    pairs = np.unique(np.column_stack([inner, outer]), axis=0)
    return len(pairs) == len(np.unique(inner)) and len(np.unique(outer)) < len(np.unique(inner))


@dataclass(frozen=True)
class _Permutation:
    """How the null permutes one factor's labels: whole units (a request block, or the rows of one level within one
    block) keep one label, and units swap labels within strata."""

    units: np.ndarray  # per row: its unit
    unit_labels: np.ndarray  # the factor's level of each unit
    strata: np.ndarray  # per unit: the stratum it is permuted within
    order: np.ndarray  # units grouped by stratum, each stratum in its original order

    @classmethod
    def of(cls, codes: np.ndarray, block_codes: np.ndarray, others: Mapping[str, np.ndarray]) -> "_Permutation":
        """`others`: the codes of the other factors (for the nesting of a block-level factor)."""
        first_row = np.unique(block_codes, return_index=True)[1]
        if np.array_equal(codes[first_row][block_codes], codes):
            # a block-level factor: blocks swap labels within the levels of every block-level factor it is nested in
            units, unit_labels = block_codes, codes[first_row]
            block_level = [c[first_row] for c in others.values() if np.array_equal(c[first_row][block_codes], c)]
            strata = _combined([c for c in block_level if _nested_in(unit_labels, c)], len(first_row))
        else:
            # a factor that varies within blocks: the rows of one level in one block (a persona's answers from every
            # model, or one model's answers to every persona) swap labels with the other levels' rows of that block,
            # so whatever correlates within them (a model's shared draw for the request) stays together
            units = _combined([block_codes, codes], len(codes))
            first_unit = np.unique(units, return_index=True)[1]
            unit_labels, strata = codes[first_unit], block_codes[first_unit]
        return cls(units, unit_labels, strata, np.argsort(strata, kind="stable"))

    def labels(self, rng: np.random.Generator) -> np.ndarray:
        shuffled = np.empty_like(self.unit_labels)
        # strata + a uniform in [0, 1): sorting it shuffles within each stratum and keeps the strata in order
        shuffled[self.order] = self.unit_labels[np.argsort(self.strata + rng.random(len(self.strata)), kind="stable")]
        return shuffled[self.units]


def sensitivity_table(
    df: pd.DataFrame,
    factors: Sequence[str] = DEFAULT_FACTORS,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    n_perm: int | None = None,
) -> pd.DataFrame:
    """One row per factor: ι̂, the bias-corrected ι̂, a 1 - alpha interval for the population ι, and the noise floor.

    The bootstrap (`n_boot` resamples) resamples request blocks (all rows of a block, every model and persona,
    together) and gives the interval its spread; the noise floor and the bias correction come from `n_perm`
    (default: n_boot) permutations that keep the paired design (see the module docstring). Factors with fewer
    than two levels, and data whose pooled refusal rate is 0 or 1, get NaN and a note.
    """
    require_columns(df, [*factors, "block", "refused"], "sensitivity_table")
    n_perm = n_boot if n_perm is None else n_perm
    if n_boot < 2 or n_perm < 1:
        raise FalseRefusalError(f"sensitivity_table: n_boot must be >= 2 and n_perm >= 1, got {n_boot} and {n_perm}")
    y = df["refused"].astype(bool).to_numpy(float)
    block_codes, block_ids = pd.factorize(df["block"])
    n_blocks = len(block_ids)
    pooled = y.mean() if len(y) else float("nan")
    boot_seed, *perm_seeds = np.random.SeedSequence(seed).spawn(1 + len(factors))
    # one set of resampled blocks for every factor, so their intervals are comparable
    boot_counts = np.zeros((n_boot, 0))
    if n_blocks:
        draws = np.random.default_rng(boot_seed).integers(0, n_blocks, size=(n_boot, n_blocks))
        boot_counts = np.stack([np.bincount(row, minlength=n_blocks) for row in draws])
    # every design factor present shapes the permutation strata, not only the ones tabulated
    candidates = list(dict.fromkeys([*factors, *(f for f in DEFAULT_FACTORS if f in df.columns)]))
    all_codes = {f: pd.factorize(factor_levels(df, f), sort=True)[0] for f in candidates}
    rows = []
    for factor, perm_seed in zip(factors, perm_seeds):
        codes = all_codes[factor]
        k = int(codes.max()) + 1 if len(codes) else 0
        row: dict[str, object] = {column: np.nan for column in SENSITIVITY_COLUMNS}
        row.update(factor=factor, n_levels=k, distinguishable=False, note="")
        if k < 2:
            row["note"] = "fewer than two levels: nothing to compare"
        elif not 0.0 < pooled < 1.0:
            row["note"] = f"pooled refusal rate is {pooled:g}: the index is undefined"
        else:
            others = {f: c for f, c in all_codes.items() if f != factor}
            permutation = _Permutation.of(codes, block_codes, others)
            null, noise_sd = _null_indices(
                y, codes, k, block_codes, permutation, n_perm, np.random.default_rng(perm_seed)
            )
            row.update(_factor_row(y, codes, k, block_codes, n_blocks, boot_counts, null, alpha))
            rows_per_level = np.bincount(codes, minlength=k)
            d_hat = np.bincount(codes, weights=y, minlength=k) / np.maximum(rows_per_level, 1) - pooled
            row["index_corrected"] = corrected_index(d_hat, noise_sd, rows_per_level / len(y), pooled)
            if len(np.unique(permutation.strata)) == len(permutation.strata):
                row["note"] = "every unit is its own stratum: no permutation null"
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SENSITIVITY_COLUMNS))


def corrected_index(d_hat: np.ndarray, noise_sd: np.ndarray, shares: np.ndarray, p: float) -> float:
    """ι̂ with each level's |d̂_k| replaced by √max(d̂_k² - s_k², 0), the moment estimate of |d_k| (E d̂² = d² + s²).

    d̂_k = p̂_k - p̂ is d_k plus noise of sd s_k (here: its sd over the paired-design permutations, which pools the
    noise of every block of the level's stratum and keeps the pairing). For normal noise the plug-in |d̂_k| is
    biased by +0.80 s at d = 0 and +0.17 s at d = s; this estimate by +0.34 s at d = 0, -0.06 s at d = s/2,
    -0.27 s at d = s and -0.2 s at d = 3 s: within a third of the noise sd whatever the effect, level by level, so
    no assumption about how the effect spreads over the levels (one persona or every item) is needed.
    """
    magnitude = np.sqrt(np.maximum(d_hat**2 - noise_sd**2, 0.0))
    return float(np.clip(np.sum(shares * magnitude) / (2 * p * (1 - p)), 0.0, 1.0))


def _null_indices(
    y: np.ndarray,
    codes: np.ndarray,
    k: int,
    block_codes: np.ndarray,
    permutation: _Permutation,
    n_perm: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """ι̂ of the factor's labels permuted `n_perm` times under the paired-design null, and the sd of each level's
    deviation p̂_k - p̂ over those permutations (its noise when the factor has no effect)."""
    null = np.empty(n_perm)
    deviations = np.empty((n_perm, k))
    p = float(y.mean())
    for b in range(n_perm):
        labels = permutation.labels(rng)
        refusals, rows = np.bincount(labels, weights=y, minlength=k), np.bincount(labels, minlength=k)
        null[b] = _binary_index(refusals, rows)
        deviations[b] = refusals / np.maximum(rows, 1) - p
    noise_sd = deviations.std(axis=0, ddof=1) if n_perm > 1 else np.zeros(k)
    return null[np.isfinite(null)], noise_sd


def _factor_row(
    y: np.ndarray,
    codes: np.ndarray,
    k: int,
    block_codes: np.ndarray,
    n_blocks: int,
    boot_counts: np.ndarray,
    null: np.ndarray,
    alpha: float,
) -> dict[str, object]:
    index = float(_binary_index(np.bincount(codes, weights=y, minlength=k), np.bincount(codes, minlength=k)))
    # per block x level sums; a bootstrap replicate weights each block by how often it was drawn
    cells = sparse.csr_matrix((np.ones_like(y), (block_codes, codes)), shape=(n_blocks, k))
    cell_refusals = sparse.csr_matrix((y, (block_codes, codes)), shape=(n_blocks, k))
    boot = _binary_index(np.asarray(cell_refusals.T @ boot_counts.T).T, np.asarray(cells.T @ boot_counts.T).T)
    boot = boot[np.isfinite(boot)]
    spread = float(np.std(boot, ddof=1)) if len(boot) > 1 else float("nan")
    null_mean = float(null.mean()) if len(null) else float("nan")
    floor = float(np.quantile(null, 1 - alpha)) if len(null) else float("nan")
    z = float(norm.isf(alpha / 2))
    p_value = float((1 + np.sum(null >= index)) / (1 + len(null))) if len(null) else float("nan")
    return {
        "index": index,
        "ci_low": float(np.clip(index - null_mean - z * spread, 0.0, 1.0)),
        "ci_high": float(np.clip(index + z * spread, 0.0, 1.0)),
        "noise_floor": floor,
        "null_mean": null_mean,
        "p_value": p_value,
        # the permutation p-value (1 + #{null >= ι̂}) / (1 + n) is valid at any number of permutations and with ties,
        # which "ι̂ above the interpolated floor" is not
        "distinguishable": bool(p_value <= alpha),
    }
