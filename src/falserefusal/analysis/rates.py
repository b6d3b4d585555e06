"""Refusal rates per cell with Wilson score intervals.

A cell is any grouping of the analysis rows (by default model × task × persona × forcing level × paraphrase).
Wilson rather than Wald: refusal rates sit near 0, where the Wald interval collapses to a point.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from falserefusal.types import FalseRefusalError

DEFAULT_BY: tuple[str, ...] = ("model", "task", "persona", "forcing_level", "paraphrase")
RATE_COLUMNS: tuple[str, ...] = ("n", "refusals", "rate", "ci_low", "ci_high")


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise one readable error naming the columns `what` needs and the frame lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FalseRefusalError(
            f"{what}: the results frame lacks column(s) {missing}; build it with "
            "falserefusal.analysis.records_frame(records)"
        )


def wilson_interval(refusals: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided 1 - alpha Wilson score interval for refusals / n; (0, 1) when there is no data."""
    if n < 0 or refusals < 0 or refusals > n:
        raise FalseRefusalError(f"wilson_interval: need 0 <= refusals <= n, got refusals={refusals}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise FalseRefusalError(f"wilson_interval: alpha must lie in (0, 1), got {alpha}")
    if n == 0:
        return 0.0, 1.0
    low, high = proportion_confint(refusals, n, alpha=alpha, method="wilson")
    # the exact bounds at 0 and n refusals are 0 and 1; statsmodels' float arithmetic can leave ±1e-17
    low = 0.0 if refusals == 0 else max(0.0, float(low))
    high = 1.0 if refusals == n else min(1.0, float(high))
    return low, high


def refusal_rates(df: pd.DataFrame, by: Sequence[str] = DEFAULT_BY, alpha: float = 0.05) -> pd.DataFrame:
    """One row per cell of `by` that has data: the cell, n, refusals, rate and its Wilson interval."""
    by = list(by)
    require_columns(df, [*by, "refused"], "refusal_rates")
    columns = [*by, *RATE_COLUMNS]
    if df.empty:
        return pd.DataFrame(columns=columns)
    refused = df["refused"].astype(bool)
    grouped = refused.groupby([df[c] for c in by], observed=True, sort=True) if by else None
    if grouped is None:
        table = pd.DataFrame({"n": [len(refused)], "refusals": [int(refused.sum())]})
    else:
        table = grouped.agg(n="size", refusals="sum").reset_index()
    table["n"] = table["n"].astype(int)
    table["refusals"] = table["refusals"].astype(int)
    table["rate"] = table["refusals"] / table["n"]
    bounds = [wilson_interval(r, n, alpha) for r, n in zip(table["refusals"], table["n"])]
    table["ci_low"] = [b[0] for b in bounds]
    table["ci_high"] = [b[1] for b in bounds]
    return table[columns]


def wilson_interval_eff(rate: float, n_eff: float, alpha: float) -> tuple[float, float]:
    """Wilson score interval at a fractional effective sample size (statsmodels accepts float counts)."""
    low, high = proportion_confint(rate * n_eff, n_eff, alpha=alpha, method="wilson")
    return max(0.0, float(low)), min(1.0, float(high))
