"""The simulations' design: the real sampler's cases as columns, scripted models' answers to it, their suite."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from falserefusal.design.personas import all_conditions
from falserefusal.design.sampler import draw_cases
from falserefusal.design.tasks import TaskSpec
from falserefusal.generation.backends.scripted import ScriptedSpec
from falserefusal.run.config import RunConfig
from falserefusal.run.prepare import Suite, prepare
from falserefusal.types import BASELINE_ID, FalseRefusalError, Persona, PersonaPhrasing, Record


def draw_design(
    tasks: Sequence[TaskSpec],
    personas: Sequence[Persona],
    phrasings: Sequence[PersonaPhrasing],
    samples: int,
    seed: int,
    placement: str = "system",
) -> pd.DataFrame:
    """The cases `draw_cases` would draw, as columns (same rows, same order), plus `block_index` within its task.

    The sampler draws (item, paraphrase, phrasing) once per block whatever the personas are, so drawing the
    blocks with one persona and expanding the conditions as columns gives the same cases, ~16x faster.
    """
    if not personas:
        raise FalseRefusalError("simulation: needs at least one persona besides the baseline")
    drawn = draw_cases(tasks, personas[:1], phrasings, samples, seed, placement)
    block_cases, persona_cases = drawn[0::2], drawn[1::2]
    conditions = all_conditions(personas)
    k, n_blocks = len(conditions), len(block_cases)
    per_block = pd.DataFrame(
        {
            "task": [c.task for c in block_cases],
            "language": [c.language for c in block_cases],
            "forcing_level": [c.forcing_level for c in block_cases],
            "paraphrase": [c.paraphrase_id for c in block_cases],
            "item": [c.item_id for c in block_cases],
            "block": [c.block_id for c in block_cases],
            "phrasing_drawn": [c.phrasing_id for c in persona_cases],
        }
    )
    # a task has min(samples, its factorial) blocks: the sampler never repeats one
    per_block["block_index"] = per_block.groupby("task", sort=False).cumcount().to_numpy()
    frame = per_block.loc[np.repeat(np.arange(n_blocks), k)].reset_index(drop=True)
    persona_ids = np.array([p.id for p in conditions], dtype=object)
    frame["persona"] = np.tile(persona_ids, n_blocks)
    frame["persona_dimension"] = np.tile(np.array([p.dimension for p in conditions], dtype=object), n_blocks)
    is_baseline = frame["persona"].to_numpy() == BASELINE_ID
    frame["phrasing"] = np.where(is_baseline, "none", frame["phrasing_drawn"].to_numpy())
    frame["case_id"] = frame["block"] + "-" + frame["persona"]
    frame["seed"] = seed
    return frame.drop(columns="phrasing_drawn")


def results_frame(design: pd.DataFrame, model: str, refused: np.ndarray) -> pd.DataFrame:
    """The analysis frame (`records_frame` columns) of the design answered by one model."""
    frame = design.assign(model=model, refused=np.asarray(refused, dtype=bool), rule="scripted")
    frame["outcome"] = np.where(frame["refused"], "refusal", "compliance")
    return frame[list(Record.FLAT_COLUMNS)]


def spec_string(
    base: float, shifts: Mapping[str, float], rho: float, seed: int, name: str = "", item_sd: float = 0.0
) -> str:
    """A scripted --model string (what `falserefusal run --model` would take for the same model); `seed` is the spec's
    offset, added to the run's --seed."""
    parts = ([f"name={name}"] if name else []) + [f"base={base:g}"]
    parts += [f"{key}={value:+g}" for key, value in shifts.items()]
    parts += [f"item_sd={item_sd:g}"] if item_sd else []
    return "scripted:" + ",".join(parts + [f"rho={rho:g}", f"seed={seed}"])


def _spec(
    base: float, shifts: Mapping[str, float], rho: float, offset: int = 0, name: str = "", item_sd: float = 0.0
) -> tuple[str, ScriptedSpec]:
    """A scripted model and its parsed spec; `offset` is its seed= (the replicate's seed is the run's --seed)."""
    model = spec_string(base, shifts, rho, offset, name, item_sd)
    return model, ScriptedSpec.parse(model)


def simulation_suite(model: str, **options: Any) -> Suite:
    """The suite a simulation draws from: the real preparation (fixtures, profile, sampler) of a scripted run, with
    no progress bars and no cache; `options` are RunConfig fields (samples, seed, profile, tasks, root, ...)."""
    return prepare(RunConfig(models=(model,), backend="scripted", progress=False, use_cache=False, **options))
