"""Candidate versus baseline model on the same cases: the delta table per task and persona, and flipped examples.

Pure data for the report's candidate-versus-baseline section: every number is computed on the cases both models
answered (paired by task, request block and persona), so a delta is never a difference of two different samples.
"""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from falserefusal.analysis.rates import require_columns
from falserefusal.types import BASELINE_ID, Record

COMPARISON_COLUMNS = (
    "task",
    "persona",
    "n",
    "candidate_rate",
    "baseline_rate",
    "delta",
    "candidate_gap",
    "baseline_gap",
    "gap_delta",
    "refused_by_candidate_only",
    "refused_by_baseline_only",
)


def _paired(frame: pd.DataFrame, candidate: str, baseline: str) -> pd.DataFrame:
    require_columns(frame, ["model", "task", "block", "persona", "refused"], "comparison_table")
    rows = frame[frame["model"].isin([candidate, baseline])]
    wide = rows.pivot_table(index=["task", "block", "persona"], columns="model", values="refused", aggfunc="max")
    if candidate not in wide or baseline not in wide:
        return pd.DataFrame(columns=["task", "block", "persona", "candidate", "baseline"])
    wide = wide[[candidate, baseline]].dropna().astype(bool)
    wide.columns = ["candidate", "baseline"]
    return wide.reset_index()


def comparison_table(frame: pd.DataFrame, candidate: str, baseline: str) -> pd.DataFrame:
    """One row per task x persona (the no-persona condition as persona "baseline") and one per task (persona "all").

    candidate_rate / baseline_rate: refusal rates on the same cases; delta = candidate - baseline; candidate_gap /
    baseline_gap: the model's rate with the persona minus without it on the same requests; gap_delta = the change in
    persona disparity (what the persona non-inferiority gate tests); refused_by_*_only: flipped cases.
    """
    pairs = _paired(frame, candidate, baseline)
    if pairs.empty:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    pairs["c_only"] = pairs["candidate"] & ~pairs["baseline"]
    pairs["b_only"] = ~pairs["candidate"] & pairs["baseline"]
    without = pairs.loc[pairs["persona"] == BASELINE_ID, ["task", "block", "candidate", "baseline"]]
    pairs = pairs.merge(without.rename(columns={"candidate": "c0", "baseline": "b0"}), on=["task", "block"], how="left")
    pairs["candidate_gap"] = pairs["candidate"].astype(float) - pairs["c0"].astype(float)
    pairs["baseline_gap"] = pairs["baseline"].astype(float) - pairs["b0"].astype(float)
    rows: list[dict[str, Any]] = []
    for (task, persona), group in pairs.groupby(["task", "persona"], sort=True):
        rows.append(
            _row(task, persona, group, float(group["candidate_gap"].mean()), float(group["baseline_gap"].mean()))
        )
    for task, group in pairs.groupby("task", sort=True):
        rows.append(_row(task, "all", group, float("nan"), float("nan")))
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    order = {BASELINE_ID: 0, "all": 2}
    table["_order"] = table["persona"].map(lambda p: order.get(p, 1))
    return table.sort_values(["task", "_order", "persona"]).drop(columns="_order").reset_index(drop=True)


def _row(task: str, persona: str, group: pd.DataFrame, cand_gap: float, base_gap: float) -> dict[str, Any]:
    candidate_rate, baseline_rate = float(group["candidate"].mean()), float(group["baseline"].mean())
    return {
        "task": task,
        "persona": persona,
        "n": int(len(group)),
        "candidate_rate": candidate_rate,
        "baseline_rate": baseline_rate,
        "delta": candidate_rate - baseline_rate,
        "candidate_gap": cand_gap,
        "baseline_gap": base_gap,
        "gap_delta": cand_gap - base_gap,
        "refused_by_candidate_only": int(group["c_only"].sum()),
        "refused_by_baseline_only": int(group["b_only"].sum()),
    }


def flipped_examples(records: Iterable[Record], candidate: str, baseline: str, limit: int = 20) -> list[dict[str, Any]]:
    """Cases refused by exactly one of the two models, with both responses (raw model text: escape it to display).

    Cases refused by the candidate only come first; within each side, in case order; at most `limit` per side.
    """
    by_model: dict[str, dict[str, Record]] = {candidate: {}, baseline: {}}
    for record in records:
        if record.model in by_model:
            by_model[record.model][record.case.case_id] = record
    sides: dict[str, list[dict[str, Any]]] = {"candidate": [], "baseline": []}
    for case_id, first in by_model[candidate].items():
        second = by_model[baseline].get(case_id)
        if second is None or first.refused == second.refused:
            continue
        side = "candidate" if first.refused else "baseline"
        if len(sides[side]) >= limit:
            continue
        case = first.case
        sides[side].append(
            {
                "case_id": case_id,
                "task": case.task,
                "persona": case.persona,
                "refused_by": side,
                "prompt": case.messages[-1].content if case.messages else "",
                "candidate_response": first.response,
                "baseline_response": second.response,
                "candidate_rule": first.rule,
                "baseline_rule": second.rule,
            }
        )
    return sides["candidate"] + sides["baseline"]
