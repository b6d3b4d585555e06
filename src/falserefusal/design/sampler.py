"""The seeded Monte Carlo sampler: request blocks (task, item, paraphrase, phrasing), each asked under every persona."""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np

from falserefusal.design.languages import PersonaTranslation, localised
from falserefusal.design.personas import all_conditions
from falserefusal.design.tasks import TaskSpec, render_prompt
from falserefusal.types import Case, FalseRefusalError, Message, Persona, PersonaPhrasing

PLACEMENTS = ("system", "user")


def stable_key(text: str) -> int:
    """A process-independent integer for a name (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def check_seed(seed: int) -> None:
    """The root seed every random choice derives from: a non-negative integer (numpy's SeedSequence needs one)."""
    if seed < 0:
        raise FalseRefusalError(f"--seed {seed}: must be a non-negative integer")


def task_rng(seed: int, task_id: str) -> np.random.Generator:
    """One stream per task, so `--tasks nli` draws the same NLI blocks as a run over every task."""
    return np.random.default_rng(np.random.SeedSequence([seed, stable_key(task_id)]))


def persona_messages(prompt: str, persona: Persona, phrasing: PersonaPhrasing, placement: str) -> tuple[Message, ...]:
    """The chat for one condition. The baseline has no persona turn at all (the model's own default chat)."""
    if persona.is_baseline:
        return (Message("user", prompt),)
    instruction = phrasing.template.format(persona=persona.wording)
    if placement == "system":
        return (Message("system", instruction), Message("user", prompt))
    return (Message("user", f"{instruction}\n\n{prompt}"),)


def factorial_size(spec: TaskSpec, phrasings: Sequence[PersonaPhrasing]) -> int:
    """Distinct request blocks a task has: items x paraphrases x persona phrasings."""
    return len(spec.items) * len(spec.paraphrases) * max(1, len(phrasings))


def blocks_per_task(tasks: Sequence[TaskSpec], phrasings: Sequence[PersonaPhrasing], samples: int) -> dict[str, int]:
    """Blocks each task gets: `samples`, capped at the task's factorial (each block is drawn at most once)."""
    return {spec.task.id: min(samples, factorial_size(spec, phrasings)) for spec in tasks}


def sampling_notes(tasks: Sequence[TaskSpec], phrasings: Sequence[PersonaPhrasing], samples: int) -> tuple[str, ...]:
    """One line per task whose factorial is smaller than `samples`: it is used whole, once, not repeated."""
    notes = []
    for spec in tasks:
        size = factorial_size(spec, phrasings)
        if samples > size:
            notes.append(
                f"--samples {samples} exceeds the {size} distinct request blocks of task {spec.task.id} "
                f"({len(spec.items)} items x {len(spec.paraphrases)} paraphrases x {len(phrasings)} phrasings): each "
                f"is asked once, {size} blocks, none repeated"
            )
    return tuple(notes)


def draw_cases(
    tasks: Sequence[TaskSpec],
    personas: Sequence[Persona],
    phrasings: Sequence[PersonaPhrasing],
    samples: int,
    seed: int,
    placement: str = "system",
    translations: Mapping[str, PersonaTranslation] | None = None,
) -> list[Case]:
    """`samples` blocks per task, each block asked under the baseline and every persona (the paired design).

    A task's blocks are a seeded permutation of its full factorial (item x paraphrase x phrasing), taken in order:
    sampling without replacement, so no request block is asked twice; with `samples` above the factorial size the
    whole factorial is used once (see `sampling_notes`). A task in another language than English asks its personas
    in that language's `translations` (same ids, so disparities compare across languages). Same seed, same cases,
    same order, in every process; a task's first k blocks do not depend on `samples` or on the other tasks (one
    stream per task).
    """
    if samples < 1:
        raise FalseRefusalError(
            f"--samples {samples}: must be at least 1 request block per task; fix: e.g. --samples 40"
        )
    check_seed(seed)
    if placement not in PLACEMENTS:
        raise FalseRefusalError(f"--persona-placement {placement}: use one of {', '.join(PLACEMENTS)}")
    conditions = all_conditions(personas)
    cases: list[Case] = []
    for spec in tasks:
        shape = (len(spec.items), len(spec.paraphrases), len(phrasings))
        order = task_rng(seed, spec.task.id).permutation(factorial_size(spec, phrasings))[:samples]
        for index, cell in enumerate(order):
            i, j, k = np.unravel_index(int(cell), shape)
            item, paraphrase, phrasing = spec.items[i], spec.paraphrases[j], phrasings[int(k)]
            prompt = render_prompt(spec.task, paraphrase, item)
            block_id = f"{spec.task.id}-b{index:05d}"
            for persona in conditions:
                cases.append(
                    Case(
                        case_id=f"{block_id}-{persona.id}",
                        block_id=block_id,
                        seed=seed,
                        task=spec.task.id,
                        item_id=item.id,
                        paraphrase_id=paraphrase.id,
                        forcing_level=paraphrase.forcing_level,
                        persona=persona.id,
                        persona_dimension=persona.dimension,
                        phrasing_id="none" if persona.is_baseline else phrasing.id,
                        placement="none" if persona.is_baseline else placement,
                        messages=persona_messages(
                            prompt, *localised(persona, phrasing, spec.task.language, translations), placement
                        ),
                        labels=spec.task.reading_labels,
                        gold_label=item.label,
                        language=spec.task.language,
                    )
                )
    return cases
