"""Statistics of the results frame: rates, paired disparities, logistic regression, Wasserstein sensitivity.

Everything here is pure: it takes the analysis frame (one row per generation, columns of `Record.flat`)
and returns numbers or DataFrames. Nothing imports pytest.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from falserefusal.analysis.disparity import persona_disparities
from falserefusal.analysis.paired import (
    PairedCounts,
    benjamini_hochberg,
    holm,
    mcnemar_exact_pvalue,
    pair_rows,
    paired_counts,
    paired_difference_ci,
    paired_difference_pvalue,
)
from falserefusal.analysis.rates import refusal_rates, wilson_interval
from falserefusal.analysis.regression import RegressionResult, fit_logistic
from falserefusal.analysis.sensitivity import binary_closed_form, sensitivity_table, wasserstein_index
from falserefusal.analysis.synthetic import simulate_frame
from falserefusal.types import Record


def records_frame(records: Iterable[Record]) -> pd.DataFrame:
    """The analysis frame: one row per record, the columns of `Record.flat` (also when there are none)."""
    frame = pd.DataFrame([record.flat() for record in records], columns=list(Record.FLAT_COLUMNS))
    frame["refused"] = frame["refused"].astype(bool)
    return frame


__all__ = [
    "PairedCounts",
    "RegressionResult",
    "benjamini_hochberg",
    "binary_closed_form",
    "fit_logistic",
    "holm",
    "mcnemar_exact_pvalue",
    "pair_rows",
    "paired_counts",
    "paired_difference_ci",
    "paired_difference_pvalue",
    "persona_disparities",
    "records_frame",
    "refusal_rates",
    "sensitivity_table",
    "simulate_frame",
    "wasserstein_index",
    "wilson_interval",
]
