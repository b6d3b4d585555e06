"""Deciding a (model, task) family's gates together: FAIL tests Holm within the family, PASS tests each at alpha."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd

from falserefusal.analysis.detector_audit import DetectorAudit
from falserefusal.analysis.detector_correction import GATE_BOOTSTRAP, CorrectedEstimates, corrected_estimates
from falserefusal.analysis.paired import holm_adjusted
from falserefusal.gating.excess import excess_test
from falserefusal.gating.kind_table import GATE_KIND_TABLE
from falserefusal.gating.kinds import EVIDENCE_LIMIT, GateOutcome, GateSpec, family_alpha, pass_alpha, verdict_of
from falserefusal.gating.profile import Profile
from falserefusal.gating.statistics import (
    ModelPairs,
    _block_items,
    _disparity_test,
    _noninferiority_test,
    _population,
    _rate_test,
    _Tested,
    confidence_bound,
    has_outcome,
    minimum_detectable_effect,
    paired_frame,
    persona_pivot,
)
from falserefusal.types import FalseRefusalError


def holm_levels(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down level of each p-value (alpha / (m - rank)), to report a bound consistent with the decision."""
    order = np.argsort(pvalues, kind="stable")
    levels = np.empty(len(pvalues))
    levels[order] = alpha / (len(pvalues) - np.arange(len(pvalues)))
    return levels


def _with_correction(tested: _Tested, spec: GateSpec, correction: CorrectedEstimates | None) -> _Tested:
    """The gate's test on rates corrected for detector error (profile detector_correction: audit), where it has them."""
    corrected = correction.gate_test(spec.kind, spec.model, spec.task, spec.persona, spec.limit) if correction else None
    if corrected is None:
        return tested
    return replace(
        tested,
        estimate=corrected["estimate"],
        p_fail=corrected["p_fail"],
        p_pass=corrected["p_pass"],
        ci=corrected["ci"],
        detail={**tested.detail, "these_items_ci": None, "detector_correction": corrected["detail"]},
    )


def evaluate_family(
    frame: pd.DataFrame,
    specs: Sequence[GateSpec],
    alpha_family: float,
    correction: CorrectedEstimates | None = None,
    alpha_pass: float | None = None,
) -> list[GateOutcome]:
    """Test every gate of one (model, task) family on its records: the FAIL tests Holm-corrected within the family at
    `alpha_family`, each PASS test at `alpha_pass` (the profile's alpha, `pass_alpha`; default `alpha_family`)
    unadjusted; with `correction`, rate and disparity gates test corrected rates."""
    raw: list[tuple[GateSpec, _Tested]] = []
    tables: dict[tuple[str, str, str], ModelPairs] = {}
    pivots: dict[tuple[str, str], tuple[pd.DataFrame, pd.Series, int | None]] = {}
    for spec in specs:
        kind = GATE_KIND_TABLE.get(spec.kind)
        if kind is None:
            raise FalseRefusalError(f"gate kind {spec.kind!r} unknown; this is a bug")
        if kind.statistic == "block_mean":
            raw.append((spec, _noninferiority_test(frame, spec, tables)))
            continue
        rows = frame[(frame["model"] == spec.model) & (frame["task"] == spec.task)]
        if kind.statistic == "excess":  # an intersection's compounding, on the family's persona pivot
            if spec.family not in pivots:
                pivots[spec.family] = (persona_pivot(rows), _block_items(rows), _population(rows))
            raw.append((spec, excess_test(*pivots[spec.family][:2], spec, pivots[spec.family][2])))
            continue
        if kind.statistic == "wilson":
            outcome = kind.counts
            tested = _rate_test(rows, spec.limit, outcome)
            if outcome == "refusal":  # the audit corrects refusal readings only
                tested = _with_correction(tested, spec, correction)
            evidence = tuple(rows.loc[has_outcome(rows, outcome), "case_id"].head(EVIDENCE_LIMIT))
            raw.append((spec, replace(tested, evidence=evidence)))
        else:  # tango: a persona's paired disparity
            if spec.family not in pivots:
                pivots[spec.family] = (persona_pivot(rows), _block_items(rows), _population(rows))
            wide, items, population = pivots[spec.family]
            tested = _disparity_test(paired_frame(rows, spec.persona or "", wide=wide), items, spec.limit, population)
            tested = _with_correction(tested, spec, correction)
            evidence = tuple(f"{block}-{spec.persona}" for block in tested.detail["flipped_blocks"])
            raw.append((spec, replace(tested, evidence=evidence)))
    if not raw:
        return []
    p_fail = np.array([tested.p_fail for _, tested in raw])
    p_pass = np.array([tested.p_pass for _, tested in raw])
    level_pass = alpha_family if alpha_pass is None else alpha_pass
    adjusted_fail, levels_fail = holm_adjusted(p_fail), holm_levels(p_fail, alpha_family)
    bonferroni = alpha_family / len(raw)  # where Holm starts: the level the planner and the MDE use
    outcomes = []
    for index, (spec, tested) in enumerate(raw):
        verdict = verdict_of(adjusted_fail[index], p_pass[index], alpha_family, level_pass)
        outcomes.append(
            GateOutcome(
                spec=spec,
                passed=verdict != "FAIL",
                estimate=float(tested.estimate),
                ci_low=float(tested.ci[0]),
                ci_high=float(tested.ci[1]),
                bound=float(
                    confidence_bound(spec.kind, tested.estimate, tested.n, tested.detail, levels_fail[index], "lower")
                ),
                p_value=float(tested.p_fail),
                p_adjusted=float(adjusted_fail[index]),
                alpha_family=float(alpha_family),
                n=int(tested.n),
                detail=tested.detail,
                evidence=tested.evidence,
                verdict=verdict,
                upper_bound=float(
                    confidence_bound(spec.kind, tested.estimate, tested.n, tested.detail, level_pass, "upper")
                ),
                p_pass=float(tested.p_pass),
                p_pass_adjusted=float(p_pass[index]),
                mde=float(minimum_detectable_effect(spec.kind, spec.limit, tested.n, tested.detail, bonferroni)),
                alpha_pass=float(level_pass),
            )
        )
    return outcomes


def evaluate_gates(
    frame: pd.DataFrame,
    specs: Sequence[GateSpec],
    profile: Profile,
    n_families: float | None = None,
    audit: DetectorAudit | None = None,
) -> list[GateOutcome]:
    """Every family of gates; `n_families` is fixed from the run's configuration so workers agree. With an `audit` and
    a profile of `detector_correction: audit`, rate and disparity gates decide on the corrected rates."""
    correction = None
    if audit is not None and profile.detector_correction == "audit" and len(frame):
        correction = corrected_estimates(frame, audit, n_boot=GATE_BOOTSTRAP, seed=int(frame["seed"].iloc[0]))
    families: dict[tuple[str, str], list[GateSpec]] = {}
    for spec in specs:
        families.setdefault(spec.family, []).append(spec)
    alpha = family_alpha(profile, n_families or len(families))
    outcomes: list[GateOutcome] = []
    for family_specs in families.values():
        outcomes.extend(evaluate_family(frame, family_specs, alpha, correction, pass_alpha(profile)))
    return outcomes
