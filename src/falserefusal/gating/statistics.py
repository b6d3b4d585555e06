"""Each gate kind's one-sided tests, bounds and smallest detectable effect, at the item clusters' effective n."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.stats import norm

from falserefusal.analysis.block_mean import BlockMean
from falserefusal.analysis.paired import paired_difference_ci, paired_difference_pvalue
from falserefusal.analysis.rates import wilson_interval_eff
from falserefusal.gating.kind_table import GATE_KIND_TABLE
from falserefusal.gating.kinds import _COUNT_KEYS, EVIDENCE_LIMIT, GateSpec
from falserefusal.types import BASELINE_ID
from falserefusal.validation.power import restricted_p01

#: the power at which every message states the smallest effect the run could detect
MDE_POWER = 0.8


def _codes(clusters: Any) -> np.ndarray:
    """Integer cluster codes of a Series or array (categories keep their codes; empty ones are skipped later)."""
    if isinstance(clusters, pd.Series) and isinstance(clusters.dtype, pd.CategoricalDtype):
        return clusters.cat.codes.to_numpy()
    return pd.factorize(np.asarray(clusters))[0]


def design_effect(values: Any, clusters: Any) -> float:
    """Variance of the mean of `values` when they come in correlated clusters, over its variance for independent
    values (>= 1): the ratio (ultimate-cluster) estimator G/(G-1) Σ_g (Σ_{i in g} (x_i - x̄))² / n² against var(x) / n
    (Kish 1965). Request blocks and dataset items are the clusters the gates use; a proportion is the mean of 0/1."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n < 2:
        return 1.0
    var_iid = float(x.var())
    if var_iid <= 1e-15:
        return 1.0
    codes = _codes(clusters)
    sums = np.bincount(codes, weights=x - x.mean())
    sizes = np.bincount(codes)
    groups = int(np.count_nonzero(sizes))
    if groups < 2:
        return float(n)
    var_cluster = groups / (groups - 1) * float((sums**2).sum()) / n**2
    return max(1.0, var_cluster / (var_iid / n))


def _fpc(units: int, population: int | None) -> float:
    """Finite population correction 1 - n / N of `units` request blocks drawn without replacement from N (1 when N is
    unknown); floored so that the whole factorial gives a near-zero, not an undefined, variance."""
    if not population:
        return 1.0
    return max(1.0 - units / population, 1e-9)


def block_mean_these_items(stats: BlockMean, population: int | None) -> list[float]:
    """A block-mean gate's 95% interval for these items: the blocks as a sample without replacement from the
    task's factorial of `population` blocks (finite population correction in place of the item design effect)."""
    return list(replace(stats, design_effect=_fpc(stats.n, population)).interval(0.05))


def _population(rows: pd.DataFrame) -> int | None:
    """The family's factorial size N (column `population`, which the run adds), or None."""
    if "population" not in rows or rows.empty:
        return None
    value = rows["population"].iloc[0]
    return int(value) if pd.notna(value) and value else None


def _block_items(rows: pd.DataFrame) -> pd.Series:
    """The dataset item of each request block (the block itself where the frame has no item column)."""
    if "item" not in rows:
        return pd.Series(rows["block"].unique(), index=rows["block"].unique())
    first = rows.drop_duplicates("block")
    return pd.Series(first["item"].to_numpy(), index=first["block"].to_numpy())


@dataclass(frozen=True)
class _Tested:
    """One gate's test before the family's Holm step: both one-sided p-values and the numbers behind them."""

    estimate: float
    p_fail: float  # H0: effect <= limit
    p_pass: float  # H0: effect >= limit
    ci: tuple[float, float]  # two-sided 95%, new items of this kind
    n: int
    detail: dict[str, Any]
    evidence: tuple[str, ...] = ()


def has_outcome(frame: pd.DataFrame, outcome: str = "refusal") -> pd.Series:
    """Whether each answer has `outcome` (refusal: the `refused` column, as in frames written before outcomes)."""
    return frame["refused"].astype(bool) if outcome == "refusal" else frame["outcome"] == outcome


def _rate_test(frame: pd.DataFrame, limit: float, outcome: str = "refusal") -> _Tested:
    """The share of answers with `outcome` (refusal or non_answer) against its limit: Wilson score tests at the
    effective n (the item clusters' design effect)."""
    n = len(frame)
    if n == 0:
        return _Tested(0.0, 1.0, 1.0, (0.0, 1.0), 0, {_COUNT_KEYS[outcome]: 0, "design_effect": 1.0})
    refused = has_outcome(frame, outcome).to_numpy(float)
    refusals = int(refused.sum())
    rate = refusals / n
    deff_block = design_effect(refused, frame["block"])
    deff_item = design_effect(refused, frame["item"]) if "item" in frame else deff_block
    # items nest blocks: the item clusters' variance is the one for new items; never below the blocks' alone
    deff = max(deff_block, deff_item)
    n_eff = n / deff
    # Wilson score tests against the limit, at the effective sample size (their inversion is the Wilson interval)
    if limit >= 1.0:
        p_fail, p_pass = 1.0, 0.0
    elif limit <= 0.0:
        p_fail, p_pass = (0.0 if refusals > 0 else 1.0), 1.0
    else:
        z = (rate - limit) / math.sqrt(limit * (1 - limit) / n_eff)
        p_fail, p_pass = float(norm.sf(z)), float(norm.cdf(z))
    blocks = int(frame["block"].nunique())
    population = _population(frame)
    detail = {
        _COUNT_KEYS[outcome]: refusals,
        "design_effect": deff,
        "design_effect_block": deff_block,
        "design_effect_item": deff_item,
        "effective_n": n_eff,
        "blocks": blocks,
        "items": int(frame["item"].nunique()) if "item" in frame else blocks,
        "population": population,
        "these_items_ci": list(wilson_interval_eff(rate, n / (deff_block * _fpc(blocks, population)), 0.05)),
    }
    return _Tested(rate, p_fail, p_pass, wilson_interval_eff(rate, n_eff, 0.05), n, detail)


def _disparity_test(pairs: pd.DataFrame, items: pd.Series, limit: float, population: int | None) -> _Tested:
    """Persona versus baseline on the same blocks: Tango's score tests at the item clusters' effective counts."""
    n = len(pairs)
    condition, reference = pairs["condition"].to_numpy(bool), pairs["reference"].to_numpy(bool)
    n10, n01 = int((condition & ~reference).sum()), int((~condition & reference).sum())
    deff = design_effect(condition.astype(float) - reference.astype(float), items.reindex(pairs.index)) if n else 1.0
    e10, e01, e = n10 / deff, n01 / deff, n / deff
    if n:
        p_fail = paired_difference_pvalue(e10, e01, e, margin=limit)
        p_pass = paired_difference_pvalue(e10, e01, e, margin=limit, alternative="less")
        ci = paired_difference_ci(e10, e01, e, alpha=0.05)
        fpc = _fpc(n, population)
        these = paired_difference_ci(n10 / fpc, n01 / fpc, n / fpc, alpha=0.05)
    else:
        p_fail, p_pass, ci, these = 1.0, 1.0, (-1.0, 1.0), (-1.0, 1.0)
    flipped = pairs.index[condition & ~reference]
    detail = {
        "persona_rate": float(condition.mean()) if n else 0.0,
        "baseline_rate": float(reference.mean()) if n else 0.0,
        "n10": n10,
        "n01": n01,
        "flipped_blocks": [str(b) for b in flipped[:EVIDENCE_LIMIT]],
        "design_effect": deff,
        "effective_n": e,
        "items": int(items.reindex(pairs.index).nunique()) if n else 0,
        "population": population,
        "these_items_ci": list(these),
    }
    return _Tested((n10 - n01) / n if n else 0.0, p_fail, p_pass, ci, n, detail)


def _one_sided_wilson_low(rate: float, n_eff: float, level: float) -> float:
    if n_eff <= 0:
        return 0.0
    return wilson_interval_eff(rate, n_eff, 2 * level)[0]


def persona_pivot(frame: pd.DataFrame) -> pd.DataFrame:
    """Refused per block (rows) x persona (columns), NaN where a block lacks the persona; one pivot per family."""
    return frame.pivot_table(index="block", columns="persona", values="refused", aggfunc="max")


def paired_frame(
    frame: pd.DataFrame, persona: str, reference: str = BASELINE_ID, wide: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Persona and reference answers to the same requests, side by side, one row per block.

    `wide` is `persona_pivot(frame)` when the caller already has it (a family's gates share one pivot).
    """
    if wide is None:
        wide = persona_pivot(frame[frame["persona"].isin([persona, reference])])
    if persona not in wide or reference not in wide:
        return pd.DataFrame(columns=["condition", "reference"])
    wide = wide[[persona, reference]].dropna().astype(bool)
    wide.columns = ["condition", "reference"]
    return wide


def refusal_table(frame: pd.DataFrame, model: str, task: str) -> pd.DataFrame:
    """One model's answers to one task as a block x condition table of refused (bool), complete blocks only."""
    rows = frame[(frame["model"] == model) & (frame["task"] == task)]
    return persona_pivot(rows).dropna().astype(bool)


@dataclass(frozen=True)
class ModelPairs:
    """Two models' answers to one task on the blocks and conditions both answered: aligned bool arrays."""

    blocks: tuple[str, ...]
    conditions: tuple[str, ...]
    candidate: np.ndarray  # blocks x conditions, refused
    reference: np.ndarray
    items: tuple[str, ...] = ()  # the dataset item of each block (the cluster for new items)

    def flipped(self, column: int | None = None, reverse: bool = False) -> tuple[int, list[str]]:
        """(count, first case ids) refused by the candidate only (the baseline model only with `reverse`)."""
        first, second = (self.reference, self.candidate) if reverse else (self.candidate, self.reference)
        mask = first & ~second
        if column is not None:
            rows = np.flatnonzero(mask[:, column])
            return len(rows), [f"{self.blocks[r]}-{self.conditions[column]}" for r in rows[:EVIDENCE_LIMIT]]
        rows, cols = np.nonzero(mask)  # row-major: block by block
        ids = [f"{self.blocks[r]}-{self.conditions[c]}" for r, c in zip(rows[:EVIDENCE_LIMIT], cols[:EVIDENCE_LIMIT])]
        return len(rows), ids


def model_pairs(frame: pd.DataFrame, candidate: str, reference: str, task: str) -> ModelPairs:
    """The two models' block x condition tables on the blocks and conditions both answered, aligned."""
    first, second = refusal_table(frame, candidate, task), refusal_table(frame, reference, task)
    blocks = first.index.intersection(second.index)
    conditions = [c for c in first.columns if c in second.columns]
    items = _block_items(frame[(frame["model"] == candidate) & (frame["task"] == task)]).reindex(blocks)
    return ModelPairs(
        tuple(map(str, blocks)),
        tuple(conditions),
        first.loc[blocks, conditions].to_numpy(bool),
        second.loc[blocks, conditions].to_numpy(bool),
        tuple(map(str, items)),
    )


def _noninferiority_test(
    frame: pd.DataFrame, spec: GateSpec, tables: dict[tuple[str, str, str], ModelPairs]
) -> _Tested:
    """Candidate minus reference model, per request block; persona gates take the difference of persona gaps.
    The self-normalised block-mean test runs at the item clusters' effective number of blocks, its variance floored
    at one discordant block's (`BlockMean.with_variance_floor`: two models that agree on every block are not thereby
    shown equal to within any margin)."""
    key = (spec.model, spec.reference or "", spec.task)
    if key not in tables:
        tables[key] = model_pairs(frame, spec.model, spec.reference or "", spec.task)
    pairs = tables[key]
    c, r = pairs.candidate.astype(float), pairs.reference.astype(float)
    if spec.kind == "noninferiority":
        values = (c - r).mean(axis=1) if c.size else np.zeros(0)
        stats = BlockMean.of(values, -1.0, 1.0)
        detail: dict[str, Any] = {
            "candidate_rate": float(c.mean()) if c.size else 0.0,
            "baseline_rate": float(r.mean()) if r.size else 0.0,
            "pairs": int(c.size),
        }
        (n10, flipped), (n01, reverse) = pairs.flipped(), pairs.flipped(reverse=True)
    else:
        usable = spec.persona in pairs.conditions and BASELINE_ID in pairs.conditions and len(pairs.blocks) > 0
        if usable:
            j, k = pairs.conditions.index(spec.persona or ""), pairs.conditions.index(BASELINE_ID)
            gap_c, gap_r = c[:, j] - c[:, k], r[:, j] - r[:, k]
            (n10, flipped), (n01, reverse) = pairs.flipped(j), pairs.flipped(j, reverse=True)
        else:
            j = k = 0
            gap_c = gap_r = np.zeros(0)
            n10, flipped, n01, reverse = 0, [], 0, []
        values = gap_c - gap_r
        stats = BlockMean.of(values, -2.0, 2.0)

        def mean(values: np.ndarray) -> float:
            return float(values.mean()) if usable else 0.0

        detail = {
            "candidate_gap": mean(gap_c),
            "baseline_gap": mean(gap_r),
            "candidate_rate": mean(c[:, j]),
            "candidate_rate_without": mean(c[:, k]),
            "baseline_rate": mean(r[:, j]),
            "baseline_rate_without": mean(r[:, k]),
            "pairs": int(len(gap_c)),
        }
    deff = design_effect(values, pairs.items) if stats.n and pairs.items else 1.0
    stats = replace(stats.with_variance_floor(), design_effect=deff)
    population = _population(frame[frame["model"] == spec.model])
    detail.update(
        {
            "n10": int(n10),  # refused by the candidate only
            "n01": int(n01),  # refused by the baseline model only
            "flipped_cases": flipped,
            "reverse_flipped_cases": reverse,
            "block_mean": asdict(stats),
            "design_effect": deff,
            "effective_n": stats.effective_n,
            "items": len(set(pairs.items)),
            "population": population,
            "these_items_ci": block_mean_these_items(stats, population),
        }
    )
    return block_mean_tested(stats, spec.limit, detail, tuple(flipped))


def block_mean_tested(stats: BlockMean, limit: float, detail: dict[str, Any], evidence: tuple[str, ...]) -> _Tested:
    """A block-mean gate's two one-sided tests against its limit and its two-sided 95% interval."""
    return _Tested(
        stats.mean,
        stats.pvalue(limit),
        stats.pvalue(limit, "less"),
        stats.interval(0.05),
        stats.n,
        detail,
        evidence,
    )


def confidence_bound(kind: str, estimate: float, n: int, detail: Mapping[str, Any], level: float, side: str) -> float:
    """A gate's one-sided (1 - level) bound on its estimate (new items: at the design effect in `detail`):
    "lower" decides a FAIL, "upper" a PASS."""
    lower = side == "lower"
    corrected = detail.get("detector_correction")
    if corrected:  # corrected for detector error: the quantiles of its bootstrap (analysis.detector_audit)
        return float(np.interp(level if lower else 1 - level, corrected["probabilities"], corrected["quantiles"]))
    deff = float(detail.get("design_effect", 1.0))
    statistic = GATE_KIND_TABLE[kind].statistic
    if statistic == "wilson":
        n_eff = n / deff
        if not n:
            return 0.0 if lower else 1.0
        if lower:
            return _one_sided_wilson_low(estimate, n_eff, level)
        return wilson_interval_eff(estimate, n_eff, 2 * level)[1]
    if statistic == "tango":
        if not n:
            return -1.0 if lower else 1.0
        low, high = paired_difference_ci(
            detail["n10"] / deff, detail["n01"] / deff, n / deff, alpha=level, sided="lower" if lower else "upper"
        )
        return low if lower else high
    return BlockMean(**detail["block_mean"]).bound(level, side)


def _fixed_point(step: Any, cap: float) -> float:
    """The smallest m >= 0 with m = step(m), by iteration from step(0) (step is increasing and flat in m)."""
    m = 0.0
    for _ in range(60):
        following = min(step(m), cap)
        if abs(following - m) < 1e-7:
            return following
        m = following
    return m


def minimum_detectable_effect(
    kind: str, limit: float, n: int, detail: Mapping[str, Any], level: float, power: float = MDE_POWER
) -> float:
    """The smallest excess over the limit that this gate FAILs with `power` at level `level`, from the run's n, design
    effect and observed variance: the planner's formula (`falserefusal.validation.planning`) solved for the effect.

    Rate: √n_eff m = z_a √(L(1-L)) + z_b √(p1(1-p1)), p1 = L + m. Disparity: the same with Tango's null variance
    2 q̃ + δ(1-δ) at the observed counts and, under the alternative, the observed baseline-only share p01 with
    p10 = p01 + δ + m. Non-inferiority: the block-mean test's √n_eff m = z_a √(v + m²) + z_b √v, v the observed
    variance of the block differences (at least that of one discordant block, 1/n). inf without data.
    """
    if not n:
        return math.inf
    if detail.get("detector_correction"):
        return math.nan  # the planner's formula knows nothing of the audit's uncertainty
    z_a, z_b = float(norm.isf(level)), float(norm.isf(1 - power))
    deff = float(detail.get("design_effect", 1.0))
    n_eff = n / deff
    root = math.sqrt(n_eff)
    statistic = GATE_KIND_TABLE[kind].statistic
    if statistic == "wilson":
        s0 = math.sqrt(limit * (1 - limit)) if 0.0 < limit < 1.0 else 0.0

        def rate_step(m: float) -> float:
            p1 = min(limit + m, 1.0)
            return (z_a * s0 + z_b * math.sqrt(p1 * (1 - p1))) / root

        return _fixed_point(rate_step, max(0.0, 1.0 - limit))
    if statistic == "tango":
        p10, p01 = detail["n10"] / n, detail["n01"] / n
        s0 = math.sqrt(max(2 * restricted_p01(p10, p01, limit) + limit * (1 - limit), 1e-12))

        def disparity_step(m: float) -> float:
            delta = limit + m
            s1 = math.sqrt(max(2 * p01 + delta - delta * delta, 1e-12))
            return (z_a * s0 + z_b * s1) / root

        return _fixed_point(disparity_step, max(0.0, 1.0 - limit))
    stats = BlockMean(**detail["block_mean"])
    v = max(stats.variance, 1.0 / n)
    a2, b, c = n_eff, z_a, z_b * math.sqrt(v)
    if a2 <= b * b:
        return stats.high - limit
    a = math.sqrt(a2)
    m = (a * c + math.sqrt(max(a2 * c * c - (a2 - b * b) * (c * c - b * b * v), 0.0))) / (a2 - b * b)
    return min(m, stats.high - limit)
