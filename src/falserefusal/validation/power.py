"""Sample-size and power formulas of the gates (the planner, falserefusal.validation.planning, uses them).

Every formula has the form  n = (z_a σ0 + z_b σ1)² / (θ1 - θ0)²  (one-sided level a, power 1 - b), with σ0 the
standard deviation of one unit's contribution as the gate's test estimates it under H0 (at the limit θ0) and σ1
under the alternative θ1 = θ0 + mde:

- refusal rate (one-sample score test on all cases of a task, Wilson-type): σ0² = p0 q0, σ1² = p1 q1 (Fleiss,
  Levin & Paik, "Statistical Methods for Rates and Proportions", 3rd ed. 2003, eq. 2.14), in cases, times the
  design effect 1 + (m - 1) ρ of m correlated answers per request block (Kish, "Survey Sampling", 1965);
- persona disparity (Tango's paired score test of persona versus no persona, margin δ0): σ1² = p10 + p01 - Δ²
  and σ0² = 2 q̃ + δ0 (1 - δ0), q̃ the restricted MLE of p01 under Δ = δ0 at the expected counts (Nam,
  Biometrics 53:1422-1430, 1997; at δ0 = 0 this is Connor's McNemar formula, Biometrics 43:207-211, 1987);
- non-inferiority against a baseline model (the self-normalised block-mean test of
  `falserefusal.analysis.block_mean`): σ1² = Var(X_b), σ0² = Var(X_b) + mde² (its variance is estimated around the
  margin), with X_b the block's candidate-minus-baseline difference (task gate: mean over the m conditions; persona
  gate: difference of the two models' persona gaps).

Dependence model (exact for the scripted backend): two answers share one latent uniform draw with probability s
and are independent otherwise, so Cov = s (min(p_a, p_b) - p_a p_b); s = ρ for two conditions of one request (the
scripted backend's rho² ), s = ρ_m for the two models on the same case, s = ρ ρ_m for the two models on different
conditions of one request. At equal rates s is the correlation of the two answers.

Level: a gate's FAIL test is planned at the Bonferroni level α / (families × gates per family), which is where
Holm's step-down starts, so a single real excess among true nulls is detected with the stated power (Holm can only
do better once other gates fail); its PASS test at α itself, as the gates decide it (falserefusal.gating.kinds.
pass_alpha: a release is shown clean when every gate PASSes, an intersection-union test).

Three verdicts: a gate FAILs when its lower bound clears the limit and PASSes when its upper bound lies below it
(`falserefusal.gating`). Each row gives the blocks to FAIL a truth `mde` beyond the limit and the blocks to PASS a
truth below it (`pass_effect` for disparities and non-inferiority, default 0; the base rate for the refusal-rate
gate when it is below the limit): the same formula with θ0 the limit and θ1 the PASS truth, since the PASS test is
the mirror one-sided test at its own level. The budget is the larger of the two over every gate type; a task's
budget cannot exceed its factorial of distinct blocks (items × paraphrases × phrasings; 1,782 for the bundled
tasks).

Items: the gates test at the item clusters' effective n. With `item_sd` > 0 the disparity rows assume each item
multiplies the refusal probabilities by exp(sd z - sd²/2) (as the scripted backend's item_sd=), so the item means of
a disparity Δ vary with variance Δ² (e^{sd²} - 1): the design effect 1 + (n / items - 1) Δ² (e^{sd²} - 1) / σ1²
divides n (none for a zero disparity). The other rows have no item term.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import norm

from falserefusal.types import FalseRefusalError


def _check(name: str, value: float, low: float, high: float) -> None:
    if not low < value < high:
        raise FalseRefusalError(f"--{name} {value}: must lie in ({low}, {high})")


def shared_draw_covariance(p_a: float, p_b: float, share: float) -> float:
    """Cov of two refusal indicators that share their latent draw with probability `share`."""
    return share * (min(p_a, p_b) - p_a * p_b)


def linear_variance(weights: Sequence[float], rates: Sequence[float], share: np.ndarray) -> float:
    """Var(Σ w_i Y_i) for refusal indicators Y_i with rates p_i and pairwise shared-draw probabilities share[i, j]."""
    w, p = np.asarray(weights, float), np.asarray(rates, float)
    cov = share * (np.minimum.outer(p, p) - np.outer(p, p))
    np.fill_diagonal(cov, p * (1 - p))
    return float(w @ cov @ w)


def _blocks(sigma0: float, sigma1: float, effect: float, level: float, power: float) -> int:
    if effect <= 0:
        raise FalseRefusalError(f"--mde {effect}: must be positive")
    n = (norm.isf(level) * sigma0 + norm.isf(1 - power) * sigma1) ** 2 / effect**2
    return max(1, math.ceil(n - 1e-9))


def rate_gate_blocks(limit: float, mde: float, level: float, power: float, conditions: int, correlation: float) -> int:
    """Request blocks per task for the refusal-rate gate to fail a rate of limit + mde."""
    p0, p1 = limit, min(limit + mde, 1.0)
    cases = _blocks(math.sqrt(p0 * (1 - p0)), math.sqrt(p1 * (1 - p1)), p1 - p0, level, power)
    design_effect = 1 + (conditions - 1) * correlation
    return max(1, math.ceil(cases * design_effect / conditions))


def rate_pass_blocks(
    limit: float, rate: float, level: float, power: float, conditions: int, correlation: float
) -> int | None:
    """Request blocks per task for the refusal-rate gate to PASS a true rate below its limit (None at or above it)."""
    if rate >= limit:
        return None
    cases = _blocks(math.sqrt(limit * (1 - limit)), math.sqrt(rate * (1 - rate)), limit - rate, level, power)
    return max(1, math.ceil(cases * (1 + (conditions - 1) * correlation) / conditions))


def _discordance(base_rate: float, effect: float, correlation: float) -> tuple[float, float]:
    """(p10, p01) of persona versus no persona when the persona refuses `effect` more (shared-draw dependence)."""
    p_ref, p_persona = base_rate, min(max(base_rate + effect, 0.0), 1.0)
    p11 = p_ref * p_persona + shared_draw_covariance(p_persona, p_ref, correlation)
    return p_persona - p11, p_ref - p11


def _disparity_sigmas(base_rate: float, limit: float, effect: float, correlation: float) -> tuple[float, float, float]:
    """(Δ, σ0, σ1) of Tango's test against the tolerance `limit` when the persona refuses `effect` more: σ0 under H0
    (the restricted MLE at the expected counts), σ1 under the truth."""
    p10, p01 = _discordance(base_rate, effect, correlation)
    delta = p10 - p01
    sigma1 = math.sqrt(max(p10 + p01 - delta**2, 1e-12))
    sigma0 = math.sqrt(max(2 * restricted_p01(p10, p01, limit) + limit * (1 - limit), 1e-12))
    return delta, sigma0, sigma1


def item_ratio(effect: float, sigma1: float, item_sd: float) -> float:
    """Between-item over within-block variance of the paired difference when each item multiplies the refusal
    probabilities by exp(sd z - sd²/2): the item means of the disparity vary as effect · that factor."""
    return effect**2 * math.expm1(item_sd**2) / max(sigma1**2, 1e-12)


def item_design_effect(blocks: float, items: int, ratio: float) -> float:
    """Design effect of `blocks` request blocks spread over `items` dataset items: 1 + (blocks / items - 1) · ratio."""
    return 1.0 + max(blocks / items - 1.0, 0.0) * ratio


def _with_items(blocks: int, items: int, ratio: float) -> int | None:
    """Blocks n with n / deff(n) = `blocks` (the gates test at the item clusters' effective n); None when no
    budget reaches it (the items' own variance is the floor: n0 · ratio >= items)."""
    if ratio <= 0.0 or blocks <= items:
        return blocks
    denominator = 1.0 - blocks * ratio / items
    if denominator <= 0.0:
        return None
    return max(blocks, math.ceil(blocks * (1.0 - ratio) / denominator - 1e-9))


def disparity_pass_blocks(
    base_rate: float,
    limit: float,
    effect: float,
    level: float,
    power: float,
    correlation: float,
    item_sd: float = 0.0,
    items: int = 66,
) -> int | None:
    """Request blocks per task for a persona disparity gate (tolerance δ) to PASS a true disparity `effect` < δ."""
    if effect >= limit:
        return None
    delta, sigma0, sigma1 = _disparity_sigmas(base_rate, limit, effect, correlation)
    return _with_items(_blocks(sigma0, sigma1, limit - delta, level, power), items, item_ratio(delta, sigma1, item_sd))


def restricted_p01(p10: float, p01: float, delta: float) -> float:
    """Tango's restricted MLE of p01 under p10 - p01 = delta, at the expected proportions (Nam 1997)."""
    b = -p10 - p01 + (2 - p10 + p01) * delta
    c = -p01 * delta * (1 - delta)
    return (math.sqrt(max(b * b - 8 * c, 0.0)) - b) / 4


def disparity_gate_blocks(
    base_rate: float,
    limit: float,
    mde: float,
    level: float,
    power: float,
    correlation: float,
    item_sd: float = 0.0,
    items: int = 66,
) -> int | None:
    """Request blocks per task for a persona disparity gate (limit δ0) to fail a persona excess of δ0 + mde (None:
    the item heterogeneity `item_sd` leaves a floor no budget of `items` items gets under)."""
    delta, sigma0, sigma1 = _disparity_sigmas(base_rate, limit, limit + mde, correlation)
    return _with_items(_blocks(sigma0, sigma1, delta - limit, level, power), items, item_ratio(delta, sigma1, item_sd))


def _share_matrix(conditions: int, correlation: float, model_correlation: float) -> np.ndarray:
    """Shared-draw probabilities of the 2m answers of one block: candidate conditions, then the baseline model's."""
    within = np.full((conditions, conditions), correlation)
    across = np.full((conditions, conditions), correlation * model_correlation)
    np.fill_diagonal(across, model_correlation)
    return np.block([[within, across], [across, within]])


def noninferiority_variance(
    base_rate: float, excess: float, conditions: int, correlation: float, model_correlation: float
) -> float:
    """Var of a block's mean candidate-minus-baseline difference when the candidate refuses `excess` more everywhere."""
    rates = [min(base_rate + excess, 1.0)] * conditions + [base_rate] * conditions
    weights = [1 / conditions] * conditions + [-1 / conditions] * conditions
    return linear_variance(weights, rates, _share_matrix(conditions, correlation, model_correlation))


def noninferiority_persona_variance(
    base_rate: float, excess: float, correlation: float, model_correlation: float
) -> float:
    """Var of (c_persona - c_none) - (b_persona - b_none) when the candidate's persona refuses `excess` more."""
    rates = [min(base_rate + excess, 1.0), base_rate, base_rate, base_rate]
    return linear_variance([1, -1, -1, 1], rates, _share_matrix(2, correlation, model_correlation))


def excess_variance(base_rate: float, excess: float, markers: int, correlation: float) -> float:
    """Var of a block's (y_I - y_0) - Σ_m (y_m - y_0) when the markers refuse at the base rate and the intersection
    `excess` more (falserefusal.analysis.intersections); every two conditions of a request share a draw."""
    rates = [min(base_rate + excess, 1.0), base_rate] + [base_rate] * markers
    share = np.full((markers + 2, markers + 2), correlation)
    return linear_variance([1.0, markers - 1.0] + [-1.0] * markers, rates, share)


def block_mean_blocks(variance: float, mde: float, level: float, power: float) -> int:
    """Blocks for the self-normalised block-mean test to fail a mean of margin + mde."""
    return _blocks(math.sqrt(variance + mde**2), math.sqrt(variance), mde, level, power)


def block_mean_power(variance: float, mde: float, level: float, blocks: int) -> float:
    """Power of the block-mean test at `blocks` blocks against a mean of margin + mde (inverse of block_mean_blocks)."""
    sigma0, sigma1 = math.sqrt(variance + mde**2), math.sqrt(variance)
    return float(norm.cdf((math.sqrt(blocks) * mde - norm.isf(level) * sigma0) / sigma1))


def disparity_power(
    base_rate: float,
    limit: float,
    effect: float,
    level: float,
    blocks: int,
    correlation: float,
    item_sd: float = 0.0,
    items: int = 66,
) -> float:
    """Chance that a persona disparity gate (tolerance δ) FAILs a true disparity `effect` > δ at `blocks` blocks."""
    return _disparity_side_power(base_rate, limit, effect, level, blocks, correlation, item_sd, items, +1)


def disparity_pass_power(
    base_rate: float,
    limit: float,
    effect: float,
    level: float,
    blocks: int,
    correlation: float,
    item_sd: float = 0.0,
    items: int = 66,
) -> float:
    """Chance that a persona disparity gate (tolerance δ) PASSes a true disparity `effect` < δ at `blocks` blocks."""
    return _disparity_side_power(base_rate, limit, effect, level, blocks, correlation, item_sd, items, -1)


def _disparity_side_power(
    base_rate: float,
    limit: float,
    effect: float,
    level: float,
    blocks: int,
    correlation: float,
    item_sd: float,
    items: int,
    side: int,
) -> float:
    """One-sided power of Tango's test at the items' effective n: side +1 the FAIL test (δ above the limit), -1 PASS."""
    delta, sigma0, sigma1 = _disparity_sigmas(base_rate, limit, effect, correlation)
    n = blocks / item_design_effect(blocks, items, item_ratio(delta, sigma1, item_sd))
    return float(norm.cdf((math.sqrt(n) * side * (delta - limit) - norm.isf(level) * sigma0) / sigma1))
