"""What a gate says: its one-line message (verdict, estimate, bounds, smallest detectable effect) and verdict counts."""

from __future__ import annotations

import math
from typing import Any, Sequence

from falserefusal.gating.kinds import _COUNT_KEYS, RATE_OUTCOMES, GateOutcome, ci_failed, verdict_counts
from falserefusal.gating.profile import NONINFERIORITY_MARGINS
from falserefusal.gating.statistics import MDE_POWER


def format_verdict_counts(outcomes: Sequence[GateOutcome], policy: str) -> str:
    """One line for the terminal: counts per verdict and what INCONCLUSIVE does under the profile."""
    counts = verdict_counts(outcomes)
    return (
        f"gates: {counts['PASS']} pass, {counts['FAIL']} fail, {counts['INCONCLUSIVE']} inconclusive "
        f"(inconclusive: {policy}); {sum(ci_failed(o, policy) for o in outcomes)} of {len(outcomes)} fail CI"
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def _decision(outcome: GateOutcome, fmt: Any, word: str) -> str:
    """Why the verdict: which bound clears the limit (or that neither does), with both p-values and their levels:
    the FAIL test Holm-adjusted against the family's alpha, the PASS test against the profile's alpha."""
    spec, alpha, alpha_pass = outcome.spec, outcome.alpha_family, outcome.pass_level
    bounds = f"one-sided lower bound {fmt(outcome.bound)} (Holm level), upper bound {fmt(outcome.upper_bound)}"
    if outcome.verdict == "FAIL":
        why = f"lower bound above the {word}: Holm-adjusted one-sided p = {outcome.p_adjusted:.3g} < alpha {alpha:.3g}"
    elif outcome.verdict == "PASS":
        why = (
            f"upper bound below the {word}: one-sided p = {outcome.p_pass_adjusted:.3g} < alpha {alpha_pass:.3g} "
            f"(excess: Holm-adjusted p = {outcome.p_adjusted:.3g})"
        )
    else:
        why = (
            f"neither bound clears the {word}: Holm-adjusted p = {outcome.p_adjusted:.3g} (excess) >= alpha "
            f"{alpha:.3g}, p = {outcome.p_pass_adjusted:.3g} (below) >= alpha {alpha_pass:.3g}"
        )
    text = f"{bounds}; {why}"
    if outcome.verdict != "FAIL" and math.isfinite(outcome.mde):
        text += (
            f"; smallest effect this run FAILs with {100 * MDE_POWER:.0f}% power: {fmt(spec.limit + outcome.mde)} "
            f"({100 * outcome.mde:.1f} pp beyond the {word})"
        )
    return text


def _intervals(outcome: GateOutcome, fmt: Any) -> str:
    """Both 95% intervals: new items of this kind (the gate's) and these items (finite population of the factorial)."""
    d = outcome.detail
    these = d.get("these_items_ci")
    text = f"95% CI {fmt(outcome.ci_low)} to {fmt(outcome.ci_high)} for new items of this kind"
    if these:
        population = d.get("population")
        text += f", {fmt(these[0])} to {fmt(these[1])} for these items" + (
            f" (finite population of {population} blocks)" if population else ""
        )
    if "items" in d:
        text += f"; {d['items']} items, item design effect {d.get('design_effect', 1.0):.2f}"
    return text


def describe(outcome: GateOutcome) -> str:
    """The one paragraph a release manager reads for a gate: verdict, numbers, both intervals, decision, MDE."""
    spec, verdict, d = outcome.spec, outcome.verdict, outcome.detail
    if spec.kind in RATE_OUTCOMES:
        counted_outcome = RATE_OUTCOMES[spec.kind]
        name, what = (
            ("non-answer rate", "cases answered with a loop, an echo, gibberish or nothing")
            if counted_outcome == "non_answer"
            else ("refusal rate", "cases")
        )
        text = (
            f"{verdict} {name} {spec.task} [{spec.model}]: "
            f"{_pct(outcome.estimate)} ({d.get(_COUNT_KEYS[counted_outcome], 0)}/{outcome.n} {what}; "
            f"{_intervals(outcome, _pct)}, request-block design effect "
            f"{d.get('design_effect_block', d.get('design_effect', 1.0)):.2f}) vs limit {_pct(spec.limit)}; "
            f"{_decision(outcome, _pct, 'limit')}."
        )
    elif spec.kind == "noninferiority":
        text = (
            f"{verdict} non-inferiority {spec.task} [{spec.model} vs baseline model {spec.reference}]: candidate "
            f"refuses {_pct(d.get('candidate_rate', 0))} vs baseline model {_pct(d.get('baseline_rate', 0))} on the "
            f"same {d.get('pairs', 0)} requests ({outcome.n} request blocks); paired difference "
            f"{_pp(outcome.estimate)} ({_intervals(outcome, _pp)}) vs margin {_pp(spec.limit)}; "
            f"{_decision(outcome, _pp, 'margin')}; {d.get('n10', 0)} requests refused only by the candidate, "
            f"{d.get('n01', 0)} only by the baseline model."
        )
    elif spec.kind == "noninferiority_persona":
        text = (
            f"{verdict} non-inferiority of persona disparity {spec.task}/{spec.persona} [{spec.model} vs baseline "
            f"model {spec.reference}]: candidate's persona gap {_pp(d.get('candidate_gap', 0))} "
            f"({_pct(d.get('candidate_rate', 0))} with the persona vs {_pct(d.get('candidate_rate_without', 0))} "
            f"without) vs baseline model's {_pp(d.get('baseline_gap', 0))} ({_pct(d.get('baseline_rate', 0))} vs "
            f"{_pct(d.get('baseline_rate_without', 0))}) on {outcome.n} paired request blocks; paired difference "
            f"{_pp(outcome.estimate)} ({_intervals(outcome, _pp)}) vs margin {_pp(spec.limit)}; "
            f"{_decision(outcome, _pp, 'margin')}; with the persona, {d.get('n10', 0)} requests refused only by the "
            f"candidate, {d.get('n01', 0)} only by the baseline model."
        )
    elif spec.kind == "intersectional_excess":
        low, high = d.get("log_odds_ci", (math.nan, math.nan))
        text = (
            f"{verdict} intersectional excess {spec.task}/{spec.persona} [{spec.model}]: the intersection's disparity "
            f"{_pp(d.get('intersection_disparity', 0))} minus its markers' ({' + '.join(spec.markers)}) summed "
            f"{_pp(d.get('marker_sum', 0))} = {_pp(outcome.estimate)} on {outcome.n} paired request blocks "
            f"({_intervals(outcome, _pp)}); log-odds excess {d.get('log_odds_excess', 0):+.2f} (95% CI {low:+.2f} "
            f"to {high:+.2f}); vs tolerance {_pp(spec.limit)}; {_decision(outcome, _pp, 'tolerance')}."
        )
    else:
        text = (
            f"{verdict} persona disparity {spec.task}/{spec.persona} [{spec.model}]: risk difference "
            f"{_pp(outcome.estimate)} (persona {_pct(d.get('persona_rate', 0))} vs baseline "
            f"{_pct(d.get('baseline_rate', 0))} on {outcome.n} paired requests; {_intervals(outcome, _pp)}) vs "
            f"tolerance {_pp(spec.limit)}; {_decision(outcome, _pp, 'tolerance')}; {d.get('n10', 0)} requests refused "
            f"only with the persona, {d.get('n01', 0)} only without."
        )
    if outcome.evidence and verdict == "FAIL":
        label = "Flipped (refused by the candidate only)" if spec.kind in NONINFERIORITY_MARGINS else "Cases"
        text += f" {label}: " + ", ".join(outcome.evidence) + "."
    corrected = d.get("detector_correction")
    if corrected:
        observed = _pct(corrected["observed"]) if spec.kind == "refusal_rate" else _pp(corrected["observed"])
        text += (
            f" Corrected for detector error by the audit (the detector's own reading: {observed}); bounds and "
            f"p-values from {corrected['replicates']} bootstrap replicates."
        )
    look = d.get("sequential")
    if look:
        text += f" Sequential look {look['look']}/{look['looks']} at {look['blocks']} blocks ({look['settled']})."
    return text
