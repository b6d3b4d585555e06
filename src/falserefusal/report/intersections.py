"""The report's intersection panel: per task and intersection, its disparity, its markers' sum and the excesses."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from falserefusal.analysis.intersections import compounding
from falserefusal.gating.kinds import GateOutcome
from falserefusal.gating.statistics import refusal_table


def intersection_panel(
    frame: pd.DataFrame, metadata: Mapping[str, Any], outcomes: Sequence[GateOutcome], labels: Mapping[str, str]
) -> list[dict[str, Any]] | None:
    """One row per (model, task, intersection) of a run that asks intersections (None otherwise): the gate's numbers
    where the profile gates the excess (max_intersectional_excess), else the same statistics ungated."""
    intersections: Mapping[str, Sequence[str]] = metadata.get("intersections") or {}
    if not intersections:
        return None
    gated = {(o.spec.model, o.spec.task, o.spec.persona): o for o in outcomes if o.spec.kind == "intersectional_excess"}
    rows = []
    for model in dict.fromkeys(frame["model"]):
        for task in dict.fromkeys(frame.loc[frame["model"] == model, "task"]):
            table = None
            for name, markers in intersections.items():
                outcome = gated.get((model, task, name))
                if outcome is not None:
                    d = outcome.detail
                    numbers = {
                        "disparity": d["intersection_disparity"],
                        "marker_sum": d["marker_sum"],
                        "excess": outcome.estimate,
                        "excess_ci": (outcome.ci_low, outcome.ci_high),
                        "log_odds": d["log_odds_excess"],
                        "log_odds_ci": tuple(d["log_odds_ci"]),
                        "blocks": outcome.n,
                        "verdict": outcome.verdict,
                        "tolerance": outcome.spec.limit,
                    }
                else:
                    table = refusal_table(frame, model, task) if table is None else table
                    result = compounding(table, name, markers)
                    numbers = {
                        "disparity": result.disparity,
                        "marker_sum": result.marker_sum,
                        "excess": result.additive,
                        "excess_ci": result.excess.interval(0.05),
                        "log_odds": result.log_odds_excess,
                        "log_odds_ci": result.log_odds_interval(),
                        "blocks": result.blocks,
                        "verdict": "not gated",
                        "tolerance": None,
                    }
                rows.append(
                    {
                        "model": labels.get(model, model),
                        "task": task,
                        "intersection": name,
                        "markers": " + ".join(markers),
                        **numbers,
                    }
                )
    return rows
