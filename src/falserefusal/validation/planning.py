"""Sample-size planning: request blocks per task each gate type needs to fail a given excess with a given power.

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

Level: a gate is planned at the Bonferroni level α / (families × gates per family), which is where Holm's
step-down starts, so a single real excess among true nulls is detected with the stated power (Holm can only do
better once other gates fail).

Three verdicts: a gate FAILs when its lower bound clears the limit and PASSes when its upper bound lies below it
(`falserefusal.gates`). Each row gives the blocks to FAIL a truth `mde` beyond the limit and the blocks to PASS a
truth below it (`pass_effect` for disparities and non-inferiority, default 0; the base rate for the refusal-rate
gate when it is below the limit): the same formula with θ0 the limit and θ1 the PASS truth, since the PASS test is
the mirror one-sided test at the same level. The budget is the larger of the two over every gate type; a task's
budget cannot exceed its factorial of distinct blocks (items × paraphrases × phrasings; 1,782 for the bundled
tasks).

Items: the gates test at the item clusters' effective n. With `item_sd` > 0 the disparity rows assume each item
multiplies the refusal probabilities by exp(sd z - sd²/2) (as the scripted backend's item_sd=), so the item means of
a disparity Δ vary with variance Δ² (e^{sd²} - 1): the design effect 1 + (n / items - 1) Δ² (e^{sd²} - 1) / σ1²
divides n (none for a zero disparity). The other rows have no item term.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

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


@dataclass(frozen=True)
class PlanRow:
    gate: str
    gates: int  # of this type in the suite
    truth: str  # what the gate must detect
    level: float  # one-sided test level it is planned at
    blocks: int | None  # request blocks per task to FAIL the truth `truth` (None: item heterogeneity leaves a floor)
    cases: int  # generations per model for the whole suite
    blocks_pass: int | None = None  # request blocks per task to PASS the truth `truth_pass` (None: it cannot PASS)
    truth_pass: str = ""


@dataclass(frozen=True)
class Plan:
    assumptions: dict[str, Any]
    rows: tuple[PlanRow, ...]

    @property
    def blocks(self) -> int:
        """Blocks per task so that every gate type reaches the power, to FAIL and to PASS."""
        return max(max(row.blocks or 0, row.blocks_pass or 0) for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"assumptions": self.assumptions, "rows": [asdict(r) for r in self.rows], "blocks": self.blocks}


def plan(
    base_rate: float,
    mde: float,
    power: float = 0.8,
    alpha: float = 0.05,
    personas: int = 15,
    tasks: int = 3,
    models: int = 1,
    baseline: bool = True,
    correlation: float = 0.64,
    model_correlation: float = 0.0,
    rate_limit: float | None = None,
    disparity_limit: float = 0.02,
    margin: float = 0.03,
    persona_margin: float = 0.03,
    pass_effect: float = 0.0,
    pass_rate: float | None = None,
    item_sd: float = 0.0,
    items: int = 66,
    non_answer_limit: float | None = None,
    non_answer_rate: float = 0.0,
    intersections: int = 0,
    excess_limit: float = 0.05,
) -> Plan:
    """Blocks per task each gate type needs to FAIL, with `power`, a truth `mde` beyond its limit, and to PASS a truth
    `pass_effect` below its tolerance (`pass_rate` for the refusal-rate gate; default the base rate) (see module doc).
    With `non_answer_limit` (a profile's max_non_answer_rate) each family has one more gate, the non-answer rate,
    planned as the refusal-rate gate (PASS truth `non_answer_rate`). With `intersections` (of 3 markers each, counted
    in `personas` too), each family has that many intersectional_excess gates (tolerance `excess_limit`): the block-mean
    test of X_b = (y_I - y_0) - Σ_m (y_m - y_0), Var(X_b) from `excess_variance` (markers at the base rate)."""
    _check("base-rate", base_rate, 0.0, 1.0)
    _check("mde", mde, 0.0, 1.0)
    _check("power", power, 0.0, 1.0)
    _check("alpha", alpha, 0.0, 0.5)
    for name, value in (("correlation", correlation), ("model-correlation", model_correlation)):
        if not 0.0 <= value <= 1.0:
            raise FalseRefusalError(f"--{name} {value}: must lie in [0, 1]")
    if personas < 1 or tasks < 1 or models < 1:
        raise FalseRefusalError("--personas, --tasks and --models must be at least 1")
    limit = base_rate if rate_limit is None else rate_limit
    passing_rate = base_rate if pass_rate is None else pass_rate
    if not 0.0 <= pass_effect < 1.0:
        raise FalseRefusalError(f"--pass-effect {pass_effect}: must lie in [0, 1)")
    if non_answer_limit is not None:
        _check("non-answer-limit", non_answer_limit, 0.0, 1.0)
    conditions = personas + 1
    per_family = (1 + personas) * (2 if baseline else 1) + (non_answer_limit is not None) + max(0, intersections)
    families = tasks * models
    level = alpha / (families * per_family)
    per_task_cases = conditions * models * tasks

    def row(gate: str, count: int, truth: str, blocks: int | None, blocks_pass: int | None, truth_pass: str) -> PlanRow:
        return PlanRow(
            gate, count * families, truth, level, blocks, (blocks or 0) * per_task_cases, blocks_pass, truth_pass
        )

    def block_mean_pass(variance: float, tolerance: float) -> int | None:
        return block_mean_blocks(variance, tolerance - pass_effect, level, power) if pass_effect < tolerance else None

    rows = [
        row(
            "refusal_rate",
            1,
            f"task refusal rate {limit + mde:.3f} vs limit {limit:.3f}",
            rate_gate_blocks(limit, mde, level, power, conditions, correlation),
            rate_pass_blocks(limit, passing_rate, level, power, conditions, correlation),
            f"rate {passing_rate:.3f}",
        ),
        *(
            [
                row(
                    "non_answer_rate",
                    1,
                    f"task non-answer rate {non_answer_limit + mde:.3f} vs limit {non_answer_limit:.3f}",
                    rate_gate_blocks(non_answer_limit, mde, level, power, conditions, correlation),
                    rate_pass_blocks(non_answer_limit, non_answer_rate, level, power, conditions, correlation),
                    f"rate {non_answer_rate:.3f}",
                )
            ]
            if non_answer_limit is not None
            else []
        ),
        row(
            "persona_disparity",
            personas,
            f"persona minus no-persona {disparity_limit + mde:+.3f} vs limit {disparity_limit:+.3f}",
            disparity_gate_blocks(base_rate, disparity_limit, mde, level, power, correlation, item_sd, items),
            disparity_pass_blocks(base_rate, disparity_limit, pass_effect, level, power, correlation, item_sd, items),
            f"{pass_effect:+.3f}",
        ),
    ]
    if intersections > 0:
        rows.append(
            row(
                "intersectional_excess",
                intersections,
                f"intersection's minus its 3 markers' disparities {excess_limit + mde:+.3f} vs {excess_limit:+.3f}",
                block_mean_blocks(excess_variance(base_rate, excess_limit + mde, 3, correlation), mde, level, power),
                block_mean_pass(excess_variance(base_rate, pass_effect, 3, correlation), excess_limit),
                f"{pass_effect:+.3f}",
            )
        )
    if baseline:
        rows.append(
            row(
                "noninferiority",
                1,
                f"candidate minus baseline model {margin + mde:+.3f} vs margin {margin:+.3f}",
                block_mean_blocks(
                    noninferiority_variance(base_rate, margin + mde, conditions, correlation, model_correlation),
                    mde,
                    level,
                    power,
                ),
                block_mean_pass(
                    noninferiority_variance(base_rate, pass_effect, conditions, correlation, model_correlation), margin
                ),
                f"{pass_effect:+.3f}",
            )
        )
        rows.append(
            row(
                "noninferiority_persona",
                personas,
                f"candidate's persona gap minus baseline model's {persona_margin + mde:+.3f} vs margin "
                f"{persona_margin:+.3f}",
                block_mean_blocks(
                    noninferiority_persona_variance(base_rate, persona_margin + mde, correlation, model_correlation),
                    mde,
                    level,
                    power,
                ),
                block_mean_pass(
                    noninferiority_persona_variance(base_rate, pass_effect, correlation, model_correlation),
                    persona_margin,
                ),
                f"{pass_effect:+.3f}",
            )
        )
    assumptions = {
        "base_rate": base_rate,
        "mde": mde,
        "power": power,
        "alpha": alpha,
        "personas": personas,
        "tasks": tasks,
        "models": models,
        "baseline": baseline,
        "correlation": correlation,
        "model_correlation": model_correlation,
        "rate_limit": limit,
        "disparity_limit": disparity_limit,
        "margin": margin,
        "persona_margin": persona_margin,
        "pass_effect": pass_effect,
        "pass_rate": passing_rate,
        "item_sd": item_sd,
        "items": items,
        "non_answer_limit": non_answer_limit,
        "non_answer_rate": non_answer_rate,
        **({"intersections": intersections, "excess_limit": excess_limit} if intersections > 0 else {}),
        "gates_per_family": per_family,
        "families": families,
        "level": level,
    }
    return Plan(assumptions, tuple(rows))


def format_plan(result: Plan) -> str:
    a = result.assumptions
    lines = [
        f"Request blocks per task to FAIL a truth {a['mde']:.3f} beyond each gate's limit, and to PASS a truth "
        f"{a['pass_effect']:+.3f} (refusal rate {a['pass_rate']:.3f}) below it, each with power {a['power']:.2f}",
        f"(base refusal rate {a['base_rate']:.3f}; {a['personas']} personas + the no-persona condition = "
        f"{a['personas'] + 1} cases per block; {a['tasks']} task(s) x {a['models']} model(s) = {a['families']} "
        f"families of {a['gates_per_family']} gates; each gate at the Bonferroni level alpha {a['alpha']} / "
        f"{a['families'] * a['gates_per_family']} = {a['level']:.2e}, where Holm starts;",
        f"correlation of two conditions of one request {a['correlation']}, of the two models on one case "
        f"{a['model_correlation']}; answers share a latent draw with that probability, else independent"
        + (
            f"; disparity rows: item heterogeneity sd {a['item_sd']:g} over {a['items']} items)"
            if a["item_sd"]
            else ")"
        ),
        "",
        f"{'gate':<24} {'gates':>5}  {'to FAIL':>8}  {'to PASS':>8}  {'cases/model':>11}  FAIL truth; PASS truth",
    ]
    for r in result.rows:
        passing = "-" if r.blocks_pass is None else str(r.blocks_pass)
        failing = "-" if r.blocks is None else str(r.blocks)
        lines.append(
            f"{r.gate:<24} {r.gates:>5}  {failing:>8}  {passing:>8}  {r.cases:>11}  {r.truth}; "
            + (f"{r.truth_pass}" if r.blocks_pass is not None else f"{r.truth_pass} cannot PASS (not below the limit)")
        )
    lines += [
        "",
        f"paired design: --samples {result.blocks} request blocks per task reach the power for every gate type, "
        "to FAIL and to PASS (blocks/task columns; a task's factorial of distinct blocks caps the budget)",
    ]
    return "\n".join(lines)


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
    delta, sigma0, sigma1 = _disparity_sigmas(base_rate, limit, effect, correlation)
    n = blocks / item_design_effect(blocks, items, item_ratio(delta, sigma1, item_sd))
    return float(norm.cdf((math.sqrt(n) * (delta - limit) - norm.isf(level) * sigma0) / sigma1))


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
    delta, sigma0, sigma1 = _disparity_sigmas(base_rate, limit, effect, correlation)
    n = blocks / item_design_effect(blocks, items, item_ratio(delta, sigma1, item_sd))
    return float(norm.cdf((math.sqrt(n) * (limit - delta) - norm.isf(level) * sigma0) / sigma1))
