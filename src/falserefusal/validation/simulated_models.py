"""Scripted models vectorised over a whole design: the refusal probability of every case and seeded draws of its answers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from falserefusal.design.personas import all_conditions
from falserefusal.design.sampler import draw_cases
from falserefusal.design.tasks import TaskSpec
from falserefusal.generation.backends.scripted import ScriptedSpec, item_factor
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


def hash_uniforms(seed: int, stream: str, keys: Iterable[str]) -> np.ndarray:
    """`scripted._uniform(seed, stream, key)` for many keys at once (the same SHA-256, the same floats)."""
    prefix = f"{seed}|{stream}|"
    digests = b"".join(hashlib.sha256((prefix + key).encode("utf-8")).digest()[:8] for key in keys)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


@dataclass(frozen=True)
class Draws:
    """The scripted backend's three uniforms per case for one model seed (they do not depend on p or rho)."""

    shared: np.ndarray  # the block's draw, per case
    own: np.ndarray
    couple: np.ndarray
    seed: int = 0  # the effective model seed (the run's --seed plus the spec's offset): also draws the item factors

    @classmethod
    def compute(cls, design: pd.DataFrame, seed: int) -> "Draws":
        codes, blocks = pd.factorize(design["block"])
        shared = hash_uniforms(seed, "block", blocks)[codes]
        case_ids = design["case_id"].tolist()
        return cls(shared, hash_uniforms(seed, "case", case_ids), hash_uniforms(seed, "couple", case_ids), seed)

    def subset(self, mask: np.ndarray) -> "Draws":
        """The draws of the rows in `mask` (e.g. a design's first n blocks)."""
        return Draws(self.shared[mask], self.own[mask], self.couple[mask], self.seed)

    def latent(self, rho: float) -> np.ndarray:
        """`ScriptedBackend.draw` per case: the block's draw with probability rho, else the case's own."""
        return np.where(self.couple < rho, self.shared, self.own)


def refusal_probability(spec: ScriptedSpec, design: pd.DataFrame, seed: int | None = None) -> np.ndarray:
    """`ScriptedSpec.refusal_probability` for every row (base + the shifts of matching levels, times the item's
    factor when `item_sd` > 0, which needs the effective model `seed`; clipped)."""
    shift = np.zeros(len(design))
    for (factor, level), value in spec.shifts.items():
        if factor in design.columns:
            shift = shift + value * (design[factor].to_numpy() == level)
    p = spec.base + shift
    if spec.item_sd:
        if seed is None:
            raise FalseRefusalError(
                "simulation: a scripted model with item_sd needs the model seed for its item factors"
            )
        pairs = design[["task", "item"]].drop_duplicates()
        factors = {(t, i): item_factor(spec.item_sd, seed, t, i) for t, i in zip(pairs["task"], pairs["item"])}
        p = p * np.array([factors[key] for key in zip(design["task"], design["item"])])
    return np.clip(p, 0.0, 1.0)


def scripted_refusals(spec: ScriptedSpec, design: pd.DataFrame, draws: Draws) -> np.ndarray:
    """Whether ScriptedBackend answers each case with its refusal text: u < p, u the block's or the case's draw."""
    return draws.latent(spec.rho) < refusal_probability(spec, design, draws.seed)


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
