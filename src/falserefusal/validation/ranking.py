"""The ranking scenario: does the plug-in sensitivity index rank model > task > persona > paraphrase as planted."""

from __future__ import annotations

from typing import Any

import pandas as pd

from falserefusal.analysis.sensitivity import sensitivity_table
from falserefusal.generation.backends.scripted import Draws, refusal_probabilities, scripted_refusals
from falserefusal.validation.simulated_models import _spec, draw_design, results_frame
from falserefusal.validation.simulation_plan import RANKED_FACTORS, Plan


def _ranking(plan: Plan, seed: int, reuse: tuple[pd.DataFrame, Draws] | None = None) -> dict[str, Any]:
    """Two scripted models on the same requests; the real sensitivity table ranks the factors.

    The paraphrase that is ranked is the wording id crossed with task (column `wording`: "unforced-1" in
    every task, the level the scripted backend plants). The table's own `paraphrase` row nests it in task
    (task:paraphrase), a finer partition than task, so its index is never below the task's: the planted
    order task > paraphrase cannot hold for it, and `nested_above_task` counts how often it is above.
    """
    samples = plan.settings.ranking_samples or plan.samples
    if reuse is not None and samples == plan.samples:
        design, first_draws = reuse  # the same blocks and the first model's seed: the same draws
    else:
        design = draw_design(plan.tasks, plan.personas, plan.phrasings, samples, seed)
        first_draws = Draws.compute(design, seed)
    frames, planted = [], []
    for k, (base, shifts) in enumerate(plan.ranking):
        model, spec = _spec(
            base, shifts, plan.settings.rho, k, name=f"m{k}"
        )  # seed= k: the offset to the replicate's seed
        draws = first_draws if k == 0 else Draws.compute(design, seed + k)
        frames.append(results_frame(design, model, scripted_refusals(spec, design, draws)))
        planted.append(design.assign(model=model, p=refusal_probabilities(spec, design)))
    frame = pd.concat(frames, ignore_index=True)
    frame["wording"] = frame["paraphrase"]
    factors = ("model", "task", "persona", "wording", "paraphrase")
    table = sensitivity_table(frame, factors=factors, n_boot=plan.settings.ranking_boot, seed=seed).set_index("factor")
    index = {factor: float(table.loc[column, "index"]) for factor, column in zip(RANKED_FACTORS, factors)}
    values = [index[f] for f in RANKED_FACTORS]
    return {
        "index": index,
        "recovered": bool(all(a > b for a, b in zip(values, values[1:]))),
        "distinguishable": {f: bool(table.loc[c, "distinguishable"]) for f, c in zip(RANKED_FACTORS, factors)},
        "nested_paraphrase_index": float(table.loc["paraphrase", "index"]),
        "nested_above_task": bool(table.loc["paraphrase", "index"] >= table.loc["task", "index"]),
        "planted_index": planted_index(pd.concat(planted, ignore_index=True)),
    }


def planted_index(frame: pd.DataFrame) -> dict[str, float]:
    """The index each factor would have without sampling noise: the closed form on the rows' refusal probabilities."""
    p = float(frame["p"].mean())
    values = {}
    for factor in RANKED_FACTORS:
        grouped = frame["p"].groupby(frame[factor].to_numpy())
        spread = float((grouped.size() / len(frame) * (grouped.mean() - p).abs()).sum())
        values[factor] = spread / (2 * p * (1 - p))
    return values
