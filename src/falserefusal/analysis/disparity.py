"""Persona disparity table: each persona against the baseline on the same requests, per model and task.

One row per model × task × persona: paired refusal rates, their difference with Tango's interval, the exact
McNemar p, and Holm / Benjamini-Hochberg adjustments across the whole table (every persona, task and model
is one family: the question "does any persona change refusals anywhere?").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from falserefusal.analysis.paired import (
    benjamini_hochberg,
    holm,
    mcnemar_exact_pvalue,
    pair_rows,
    paired_difference_ci,
)
from falserefusal.analysis.rates import require_columns
from falserefusal.types import BASELINE_ID

_KEYS = ["model", "task", "persona"]
DISPARITY_COLUMNS = (
    *_KEYS,
    "n_pairs",
    "persona_rate",
    "baseline_rate",
    "risk_difference",
    "ci_low",
    "ci_high",
    "p_mcnemar",
    "q_bh",
    "p_holm",
    "odds_ratio",
    "n10",
    "n01",
)


def paired_odds_ratio(n10: int, n01: int) -> float:
    """Conditional (matched-pairs) odds ratio n10 / n01, with 0.5 added to both when either is 0."""
    if n10 == 0 or n01 == 0:
        return (n10 + 0.5) / (n01 + 0.5)
    return n10 / n01


def persona_disparities(df: pd.DataFrame, baseline: str = BASELINE_ID, alpha: float = 0.05) -> pd.DataFrame:
    """Every persona of every model × task against `baseline` on the blocks both answered.

    A persona with no paired baseline row keeps its row with n_pairs 0 and NaN statistics; its NaN p-value
    stays out of the Holm and BH families (a test that could not be run is not a test that passed).
    """
    require_columns(df, [*_KEYS, "block", "refused"], "persona_disparities")
    cells = df.loc[df["persona"] != baseline, _KEYS].drop_duplicates()
    if cells.empty:
        return pd.DataFrame(columns=list(DISPARITY_COLUMNS))
    paired = pair_rows(df, "persona", baseline, pair_on=("model", "block"))
    first, second = paired["refused"], paired["refused_reference"]
    counts = (
        paired[_KEYS]
        .assign(n10=first & ~second, n01=~first & second, n11=first & second, n_pairs=1)
        .groupby(_KEYS, sort=False)
        .sum()
        .reset_index()
    )
    table = cells.merge(counts, on=_KEYS, how="left").sort_values(_KEYS, ignore_index=True)
    for column in ("n10", "n01", "n11", "n_pairs"):
        table[column] = table[column].fillna(0).astype(int)
    n = table["n_pairs"].to_numpy()
    has_pairs = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        table["persona_rate"] = np.where(has_pairs, (table["n11"] + table["n10"]) / n, np.nan)
        table["baseline_rate"] = np.where(has_pairs, (table["n11"] + table["n01"]) / n, np.nan)
        table["risk_difference"] = np.where(has_pairs, (table["n10"] - table["n01"]) / n, np.nan)
    rows = list(zip(table["n10"], table["n01"], n))
    bounds = [paired_difference_ci(a, b, m, alpha=alpha) if m else (np.nan, np.nan) for a, b, m in rows]
    table["ci_low"] = [low for low, _ in bounds]
    table["ci_high"] = [high for _, high in bounds]
    table["p_mcnemar"] = [mcnemar_exact_pvalue(a, b) if m else np.nan for a, b, m in rows]
    table["q_bh"] = benjamini_hochberg(table["p_mcnemar"].to_numpy())
    table["p_holm"] = holm(table["p_mcnemar"].to_numpy())
    table["odds_ratio"] = [paired_odds_ratio(a, b) if m else np.nan for a, b, m in rows]
    return table[list(DISPARITY_COLUMNS)]
