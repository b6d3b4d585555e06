"""The report's sections as template data: gate rows and verdicts, forest-plot bounds, evidence, the regression
reading, run metadata, the audit panel."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from falserefusal.analysis import refusal_rates
from falserefusal.analysis.comparison import comparison_table, flipped_examples
from falserefusal.analysis.detector_audit import DetectorAudit, audit_summary
from falserefusal.analysis.detector_correction import corrected_estimates
from falserefusal.analysis.regression import MAX_CI_RATIO, MIN_DF, headline_terms
from falserefusal.gating.kind_table import GATE_KIND_TABLE
from falserefusal.gating.kinds import RATE_OUTCOMES, GateOutcome, ci_failed, verdict_counts
from falserefusal.gating.statistics import confidence_bound
from falserefusal.types import BASELINE_ID, Record


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def _pct(x: Any, digits: int = 1) -> str:
    return f"{100 * float(x):.{digits}f}%" if _finite(x) else "–"


def _pp(x: Any) -> str:
    return f"{100 * float(x):+.1f} pp" if _finite(x) else "–"


def _pvalue(x: Any) -> str:
    if not _finite(x):
        return "–"
    return "< 0.001" if x < 0.001 else f"{float(x):.3f}"


def _num(x: Any, digits: int = 2) -> str:
    return f"{float(x):.{digits}f}" if _finite(x) else "–"


def _ordered(preferred: Iterable[str], present: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(present))
    order = [p for p in preferred if p in set(present)]
    return order + sorted(set(present) - set(order))


GATE_KIND_NAMES = {kind.name: kind.title for kind in GATE_KIND_TABLE.values()}


def _gate_row(outcome: GateOutcome, labels: Mapping[str, str]) -> dict[str, Any]:
    spec = outcome.spec
    custom = outcome.detail.get("custom") or {}  # a custom gate (gating.custom): its statistic decides the format
    is_rate = custom.get("statistic", spec.kind) in RATE_OUTCOMES
    fmt = _pct if is_rate else _pp
    these = outcome.detail.get("these_items_ci")
    return {
        "passed": outcome.passed,
        "verdict": outcome.verdict,
        "kind": GATE_KIND_NAMES.get(spec.kind, spec.kind.replace(":", ": ", 1)),
        "model": labels.get(spec.model, spec.model),
        "task": spec.task,
        "persona": spec.persona or "all",
        "estimate": fmt(outcome.estimate),
        "ci": f"{fmt(outcome.ci_low)} to {fmt(outcome.ci_high)}",
        "limit": fmt(spec.limit),
        "bound": fmt(outcome.bound),
        "upper_bound": fmt(outcome.upper_bound),
        "these_ci": f"{fmt(these[0])} to {fmt(these[1])}" if these else "–",
        "mde": fmt(spec.limit + outcome.mde) if _finite(outcome.mde) else "–",
        "design_effect": _num(outcome.detail.get("design_effect", 1.0)),
        "p_adjusted": _pvalue(outcome.p_adjusted),
        "p_pass_adjusted": _pvalue(outcome.p_pass_adjusted),
        "n": outcome.n,
        "message": outcome.message,
    }


def _verdict(
    metadata: Mapping[str, Any],
    outcomes: Sequence[GateOutcome],
    models: Sequence[str],
    labels: Mapping[str, str],
    n_records: int,
) -> dict[str, Any]:
    profile = metadata.get("profile") or {}
    policy = profile.get("inconclusive", "warn")
    failed = [o for o in outcomes if o.verdict == "FAIL"]
    inconclusive = [o for o in outcomes if o.verdict == "INCONCLUSIVE"]
    rank = {"FAIL": 0, "INCONCLUSIVE": 1, "PASS": 2}
    ordered = sorted(
        outcomes, key=lambda o: (rank[o.verdict], o.spec.model, o.spec.task, o.spec.kind != "refusal_rate")
    )
    return {
        "passed": not any(ci_failed(o, policy) for o in outcomes),
        "n_gates": len(outcomes),
        "n_failed": len(failed),
        "counts": verdict_counts(outcomes),
        "policy": policy,
        "failed": [_gate_row(o, labels) for o in failed],
        "inconclusive": [_gate_row(o, labels) for o in inconclusive],
        "gates": [_gate_row(o, labels) for o in ordered],
        "models": [{"id": m, "label": labels[m]} for m in models],
        "profile": profile.get("name", "?"),
        "profile_description": profile.get("description", ""),
        "alpha": profile.get("alpha"),
        "seed": metadata.get("seed", "?"),
        "samples": metadata.get("samples", "?"),
        "n_records": n_records,
    }


def _forest_alpha(outcomes: Sequence[GateOutcome]) -> tuple[float, str]:
    """The two-sided level whose lower end is the Bonferroni bound over a gate family (at most 0.05)."""
    families: dict[tuple[str, str], list[GateOutcome]] = {}
    for outcome in outcomes:
        if "custom" not in outcome.detail:  # custom gates have families of their own
            families.setdefault(outcome.spec.family, []).append(outcome)
    if not families:
        return 0.05, "95% CI, unadjusted (no gate outcomes)"
    level = min(o.alpha_family / len(members) for members in families.values() for o in members)
    alpha = min(0.05, 2 * level)
    return alpha, (
        f"{100 * (1 - alpha):.2f}% CI: Bonferroni over each family of {max(map(len, families.values()))} gates "
        f"at α_family = {min(o.alpha_family for o in outcomes):.3g} (lower end = one-sided bound at α_family/m)"
    )


def _new_items_intervals(table: pd.DataFrame, outcomes: Sequence[GateOutcome], alpha: float) -> pd.DataFrame:
    """The disparity table's CIs for new items of this kind: each gate's Tango interval at its item design effect."""
    gates = {(o.spec.model, o.spec.task, o.spec.persona): o for o in outcomes if o.spec.kind == "persona_disparity"}
    if table.empty or not gates:
        return table
    table = table.copy()
    for index, row in table.iterrows():
        outcome = gates.get((row["model"], row["task"], row["persona"]))
        if outcome is not None and outcome.n:
            table.loc[index, "ci_low"] = confidence_bound(
                outcome.spec.kind, outcome.estimate, outcome.n, outcome.detail, alpha / 2, "lower"
            )
            table.loc[index, "ci_high"] = confidence_bound(
                outcome.spec.kind, outcome.estimate, outcome.n, outcome.detail, alpha / 2, "upper"
            )
    return table


def _regression_reading(table: pd.DataFrame, notes: Sequence[str]) -> str:
    terms = table[table["term"] != "Intercept"] if len(table) else table
    if terms.empty or terms["odds_ratio"].isna().all():
        return "No estimates: " + ("; ".join(notes) or "nothing to model") + "."
    significant = terms[terms["p_value"] < 0.05]
    if significant.empty:
        return (
            f"No factor level changes the odds of refusal detectably: none of the {len(terms)} terms has p < 0.05 "
            "(absence of evidence at this sample size, not evidence of absence)."
        )
    # no headline for a term whose interval spans > MAX_CI_RATIO or whose df are too few to trust its test
    usable = headline_terms(table).copy()
    if usable.empty:
        return (
            f"No headline: {len(significant)} of {len(terms)} terms have p < 0.05, but none is significant after "
            f"Benjamini-Hochberg over the {len(terms)} terms with an interval within a factor of {MAX_CI_RATIO:g} and "
            f"at least {MIN_DF:g} df; these data are too few to single out and size an effect."
        )
    usable["strength"] = np.abs(np.log(usable["odds_ratio"].astype(float)))
    top = usable.sort_values("strength", ascending=False).iloc[0]
    direction = "raises" if top["odds_ratio"] > 1 else "lowers"
    return (
        f"Strongest effect: {top['factor']} = {top['level']} {direction} the odds of refusal ×{top['odds_ratio']:.2f} "
        f"(95% CI {top['ci_low']:.2f}–{top['ci_high']:.2f}, p {_pvalue(top['p_value'])}) with the other factors "
        f"held fixed; {len(significant)} of {len(terms)} terms have p < 0.05."
    )


def _rate_gates(outcomes: Sequence[GateOutcome]) -> dict[tuple[str, str], tuple[float, float, float, str]]:
    """(model, task) -> the refusal-rate gate's bounds (lower Holm-adjusted, upper at alpha), limit and verdict, for
    under the heatmap's columns."""
    return {
        (o.spec.model, o.spec.task): (o.bound, o.upper_bound, o.spec.limit, o.verdict)
        for o in outcomes
        if o.spec.kind == "refusal_rate" and "custom" not in o.detail
    }


def _why_undefined(row: Mapping[str, Any]) -> str:
    """For a sensitivity row without an index: why, in words ("" when it has one)."""
    if _finite(row["index"]):
        return ""
    if row["factor"] == "model" and row["n_levels"] < 2:
        return "one model in this run: nothing to compare (give --model twice to compare models)"
    return str(row["note"] or "undefined")


def _messages(record: Record) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in record.case.messages]


def _side(record: Record | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "persona": record.case.persona,
        "case_id": record.case.case_id,
        "messages": _messages(record),
        "response": record.response,
        "refused": record.refused,
        "rule": record.rule,
    }


def _evidence(
    outcomes: Sequence[GateOutcome], records: Sequence[Record], labels: Mapping[str, str]
) -> list[dict[str, Any]]:
    """For each failed gate, up to EXAMPLES_PER_GATE pairs: the request with the persona and without it."""
    failed = [o for o in outcomes if not o.passed]
    if not failed:
        return []
    wanted = {(o.spec.model, case_id) for o in failed for case_id in o.evidence[:EXAMPLES_PER_GATE]}
    by_case = {(r.model, r.case.case_id): r for r in records if (r.model, r.case.case_id) in wanted}
    blocks = {(r.model, r.case.block_id) for r in by_case.values()}
    baselines = {
        (r.model, r.case.block_id): r
        for r in records
        if r.case.persona == BASELINE_ID and (r.model, r.case.block_id) in blocks
    }
    # a non-inferiority gate compares with the baseline model's answer to the same case
    references = {o.spec.reference for o in failed if o.spec.reference}
    reference_cases = {(r.model, r.case.case_id): r for r in records if r.model in references}
    sections = []
    for outcome in failed:
        examples = []
        for case_id in outcome.evidence[:EXAMPLES_PER_GATE]:
            record = by_case.get((outcome.spec.model, case_id))
            if record is None:
                continue
            example = {
                "block": record.case.block_id,
                "paraphrase": record.case.paraphrase_id,
                "forcing_level": record.case.forcing_level,
                "item": record.case.item_id,
                "subject": _side(record),
            }
            if outcome.spec.reference:
                example.update(
                    baseline=_side(reference_cases.get((outcome.spec.reference, case_id))),
                    subject_title=f"candidate {labels.get(record.model, record.model)}",
                    baseline_title=f"baseline model {labels.get(outcome.spec.reference, outcome.spec.reference)}",
                )
            else:
                reference = (
                    None if record.case.persona == BASELINE_ID else baselines.get((record.model, record.case.block_id))
                )
                example["baseline"] = _side(reference)
            examples.append(example)
        sections.append({"gate": _gate_row(outcome, labels), "examples": examples})
    return sections


def _comparison(
    metadata: Mapping[str, Any], records: Sequence[Record], frame: pd.DataFrame, labels: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Per candidate: the delta table against the baseline model and flipped examples (empty without a baseline)."""
    baseline = metadata.get("baseline_model")
    if not baseline or not (frame["model"] == baseline).any():
        return []
    sections = []
    for candidate in metadata.get("models") or []:
        table = comparison_table(frame, candidate, baseline)
        if table.empty:
            continue
        sections.append(
            {
                "candidate": labels.get(candidate, candidate),
                "baseline": labels.get(baseline, baseline),
                "rows": table.to_dict(orient="records"),
                "examples": flipped_examples(records, candidate, baseline, limit=EXAMPLES_PER_GATE),
            }
        )
    return sections


def _metadata_rows(metadata: Mapping[str, Any], models: Sequence[str], command_line: str | None) -> dict[str, Any]:
    options = metadata.get("backend_options") or {}
    profile = metadata.get("profile") or {}
    identities = metadata.get("model_identities") or {}
    timings = {
        k: (f"{v:.1f} s" if isinstance(v, (int, float)) else str(v))
        for k, v in sorted((metadata.get("timings") or {}).items())
    }
    general = [
        ("seed", metadata.get("seed")),
        ("samples (request blocks per task)", metadata.get("samples")),
        ("generations", metadata.get("n_cases")),
        (
            "profile",
            f"{profile.get('name', '?')}: alpha {profile.get('alpha')}, max refusal rate "
            f"{profile.get('max_refusal_rate')}, persona disparity tolerance {profile.get('max_persona_disparity')}, "
            f"non-inferiority margins {profile.get('noninferiority') or '–'}, inconclusive: "
            f"{profile.get('inconclusive', 'warn')}"
            + (f", max non-answer rate {profile['max_non_answer_rate']}" if profile.get("max_non_answer_rate") else ""),
        ),
        (
            "sampling",
            "; ".join(
                [
                    (metadata.get("sampling") or {}).get("design", "–"),
                    *(
                        f"{task}: {n} of {(metadata.get('sampling') or {}).get('factorial', {}).get(task, '?')} blocks"
                        for task, n in ((metadata.get("sampling") or {}).get("blocks") or {}).items()
                    ),
                    *((metadata.get("sampling") or {}).get("notes") or []),
                ]
            ),
        ),
        ("thresholds file", profile.get("source")),
        ("backend", metadata.get("backend")),
        ("device / dtype asked", f"{options.get('device', '?')} / {options.get('dtype', '?')}"),
        ("batch size / max new tokens", f"{options.get('batch_size', '?')} / {options.get('max_new_tokens', '?')}"),
        ("tasks", ", ".join(metadata.get("tasks") or [])),
        ("personas", ", ".join(metadata.get("personas") or [])),
        ("persona placement", metadata.get("persona_placement")),
        ("baseline", metadata.get("baseline")),
        ("refusal detector", metadata.get("detector_version")),
        ("machine", ", ".join(f"{k} {v}" for k, v in sorted((metadata.get("machine") or {}).items()))),
        ("finished at", metadata.get("finished_at")),
        ("timings", ", ".join(f"{k} {v}" for k, v in timings.items())),
        ("command line", metadata.get("command")),
    ]
    if command_line:
        general.append(("report rebuilt with", command_line))
    return {
        "general": [(k, "–" if v in (None, "") else str(v)) for k, v in general],
        "models": [
            {"id": m, "identity": sorted((str(k), str(v)) for k, v in (identities.get(m) or {}).items())}
            for m in models
        ],
        "versions": sorted((str(k), str(v)) for k, v in (metadata.get("versions") or {}).items()),
    }


def _records_of_frame(frame: pd.DataFrame, by: Sequence[str]) -> list[dict[str, Any]]:
    return refusal_rates(frame, by=by).to_dict(orient="records")


def _audit_section(
    audit: DetectorAudit, frame: pd.DataFrame, labels: Mapping[str, str], seed: int, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The detector panel: how far the detector is off on the audit's labels, and rates corrected for it."""
    summary = audit_summary(audit)
    corrected = corrected_estimates(frame, audit, seed=seed)

    def show(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [{**row, "model": labels.get(row["model"], row["model"])} for row in rows]

    rates = corrected.rates
    unaudited = sorted(set(frame["model"]) - set(audit.models))
    audited, reading = audit.source.get("detector_version"), metadata.get("detector_version")
    return {
        "summary": summary,
        "overall": summary["overall"],
        "groups": show(summary["by_persona_group"]),
        "personas": show(summary["by_persona"]),
        "confusion": summary["confusion"],
        "source": {k: v for k, v in audit.source.items() if v not in (None, "")},
        "rates": show(rates[rates["persona"] != "all"].to_dict(orient="records")),
        "pooled": show(rates[rates["persona"] == "all"].to_dict(orient="records")),
        "disparities": show(corrected.disparities.to_dict(orient="records")),
        "method": corrected.method,
        "unaudited": [labels.get(m, m) for m in unaudited],
        "other_detector": f"{audited} (this run: {reading})" if audited and reading and audited != reading else "",
    }


EXAMPLES_PER_GATE = 5
