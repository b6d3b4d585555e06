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

The plug-in estimate is biased upwards (a factor with many small levels shows sampling noise as
dependence), so `sensitivity_table` reports a noise floor: the 1 - alpha quantile of the index of a random
dummy factor with the same number of levels and the same level shares (the factor's labels permuted), scored
on the same bootstrap resamples as the factor, and calls a factor distinguishable only when the lower end of
its cluster-bootstrap interval clears that floor. (Resampling duplicates blocks, which inflates the index of a
many-level factor such as item; the percentile interval can then sit above the plug-in index, and the floor,
inflated alike, keeps the comparison fair.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from falserefusal.analysis.rates import require_columns
from falserefusal.types import FalseRefusalError

DEFAULT_FACTORS: tuple[str, ...] = ("model", "task", "persona", "forcing_level", "paraphrase", "item")
#: factors whose ids repeat across tasks ("forced-1" in every task): their levels are task:id
NESTED_IN_TASK: tuple[str, ...] = ("paraphrase", "item")
SENSITIVITY_COLUMNS = ("factor", "n_levels", "index", "ci_low", "ci_high", "noise_floor", "distinguishable", "note")


ArrayLike = Sequence[float] | np.ndarray | pd.Series


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


def _null_labels(codes: np.ndarray, block_codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dummy factor with the factor's levels and shares and no link to y: the labels permuted.

    A factor fixed within each request block is permuted across blocks, so the dummy keeps the block
    structure (rows of a block are correlated; permuting rows would understate the noise).
    """
    first_row = np.unique(block_codes, return_index=True)[1]
    per_block = codes[first_row]
    if np.array_equal(per_block[block_codes], codes):
        return rng.permutation(per_block)[block_codes]
    return rng.permutation(codes)


def sensitivity_table(
    df: pd.DataFrame,
    factors: Sequence[str] = DEFAULT_FACTORS,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per factor: ι for refusal, a block-bootstrap 1 - alpha interval, and the noise floor.

    The bootstrap resamples request blocks (all rows of a block, every model and persona, together); the
    noise floor is the 1 - alpha quantile of ι of the factor's labels permuted, one permutation per resample.
    Factors with fewer than two levels, and data whose pooled refusal rate is 0 or 1, get NaN and a note.
    """
    require_columns(df, [*factors, "block", "refused"], "sensitivity_table")
    if n_boot < 1:
        raise FalseRefusalError(f"sensitivity_table: n_boot must be >= 1, got {n_boot}")
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
    rows = []
    for factor, perm_seed in zip(factors, perm_seeds):
        codes, uniques = pd.factorize(factor_levels(df, factor), sort=True)
        k = len(uniques)
        row = {"factor": factor, "n_levels": k, "index": np.nan, "ci_low": np.nan, "ci_high": np.nan,
               "noise_floor": np.nan, "distinguishable": False, "note": ""}
        if k < 2:
            row["note"] = "fewer than two levels: nothing to compare"
        elif not 0.0 < pooled < 1.0:
            row["note"] = f"pooled refusal rate is {pooled:g}: the index is undefined"
        else:
            rng = np.random.default_rng(perm_seed)
            row.update(_factor_row(y, codes, k, block_codes, n_blocks, boot_counts, alpha, rng))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SENSITIVITY_COLUMNS))


def _factor_row(
    y: np.ndarray,
    codes: np.ndarray,
    k: int,
    block_codes: np.ndarray,
    n_blocks: int,
    boot_counts: np.ndarray,
    alpha: float,
    rng: np.random.Generator,
) -> dict[str, object]:
    index = float(_binary_index(np.bincount(codes, weights=y, minlength=k), np.bincount(codes, minlength=k)))
    # per block x level sums; a bootstrap replicate weights each block by how often it was drawn
    cells = sparse.csr_matrix((np.ones_like(y), (block_codes, codes)), shape=(n_blocks, k))
    cell_refusals = sparse.csr_matrix((y, (block_codes, codes)), shape=(n_blocks, k))
    boot = _binary_index(np.asarray(cell_refusals.T @ boot_counts.T).T, np.asarray(cells.T @ boot_counts.T).T)
    # the dummy is scored on the same resamples: duplicated blocks inflate ι of many-level factors, and the
    # floor must carry that inflation too, or a null factor's interval would clear it
    null = np.empty(len(boot_counts))
    for b, counts in enumerate(boot_counts):
        labels, weights = _null_labels(codes, block_codes, rng), counts[block_codes]
        refusals = np.bincount(labels, weights=weights * y, minlength=k)
        null[b] = _binary_index(refusals, np.bincount(labels, weights=weights, minlength=k))
    null = null[np.isfinite(null)]
    finite = boot[np.isfinite(boot)]
    low, high = (np.quantile(finite, [alpha / 2, 1 - alpha / 2]) if len(finite) else (np.nan, np.nan))
    floor = float(np.quantile(null, 1 - alpha)) if len(null) else float("nan")
    return {
        "index": index,
        "ci_low": float(low),
        "ci_high": float(high),
        "noise_floor": floor,
        "distinguishable": bool(np.isfinite(low) and low > floor),
    }
