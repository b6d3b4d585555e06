"""Simulated analysis frames with planted effects: the known truth the statistics are checked against.

A frame has the columns of `Record.flat` and the paired design of a real run: every request block
(task, item, paraphrase, phrasing) is asked under every persona and the baseline, for every model.
Refusals follow a logistic model whose log-odds add up the planted effects of the rows' factor levels.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.special import expit

from falserefusal.types import BASELINE_ID, FORCING_LEVELS, Record


def simulate_frame(
    *,
    models: Sequence[str] = ("model-a",),
    tasks: Sequence[str] = ("nli", "politeness"),
    personas: Sequence[str] = (BASELINE_ID, "persona-1", "persona-2"),
    forcing_levels: Sequence[str] = FORCING_LEVELS,
    paraphrases_per_level: int = 2,
    items_per_task: int = 10,
    intercept: float = -2.0,
    effects: Mapping[tuple[str, str], float] | None = None,
    block_sd: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """A paired frame whose refusal log-odds are `intercept` + the `effects` of its levels.

    `effects` maps (column, level) to a log-odds shift, e.g. {("persona", "persona-1"): 1.0};
    paraphrase levels are the per-task ids ("forced-1"). `block_sd` adds a random block intercept, so
    rows of a block are correlated as in real runs.
    """
    effects = dict(effects or {})
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    blocks = []
    for task in tasks:
        index = 0
        for item in range(items_per_task):
            for level in forcing_levels:
                for k in range(1, paraphrases_per_level + 1):
                    blocks.append((task, f"{task}-item{item:03d}", level, f"{level}-{k}", f"{task}-b{index:05d}"))
                    index += 1
    block_frame = pd.DataFrame(blocks, columns=["task", "item", "forcing_level", "paraphrase", "block"])
    block_frame["block_effect"] = rng.normal(0.0, block_sd, len(block_frame)) if block_sd > 0 else 0.0
    grid = pd.MultiIndex.from_product([models, personas], names=["model", "persona"]).to_frame(index=False)
    frame = block_frame.merge(grid, how="cross")
    log_odds = intercept + frame["block_effect"].to_numpy()
    for (column, level), shift in effects.items():
        log_odds = log_odds + shift * (frame[column] == level).to_numpy()
    refused = rng.random(len(frame)) < expit(log_odds)
    is_baseline = frame["persona"] == BASELINE_ID
    frame = frame.assign(
        persona_dimension=np.where(is_baseline, "none", "synthetic"),
        language="en",
        phrasing=np.where(is_baseline, "none", "you-are"),
        case_id=frame["block"] + "-" + frame["persona"],
        refused=refused,
        rule="synthetic",
        seed=seed,
        outcome=np.where(refused, "refusal", "compliance"),
    )
    return frame[list(Record.FLAT_COLUMNS)]
