"""Size and power of the compounding test (intersectional_excess) by simulation with the scripted model.

Each replicate draws the blocks a run with `--seed s` draws (the sampler), answers them as
`scripted:base=B,persona.MARKER=+m,...,persona.INTERSECTION=+i,rho=R` does with that seed, and runs the gate's test
(falserefusal.gating.excess) on the baseline, the markers and the intersection at one-sided level alpha.
Replicate seeds come from one root seed (numpy SeedSequence).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from falserefusal.analysis.rates import wilson_interval
from falserefusal.design.personas import load_intersections, load_personas
from falserefusal.design.tasks import load_tasks
from falserefusal.gating.excess import excess_test
from falserefusal.gating.kinds import GateSpec
from falserefusal.gating.statistics import _block_items, persona_pivot
from falserefusal.generation.backends.scripted import Draws, ScriptedSpec, scripted_refusals
from falserefusal.run.project import DEFAULT_FIXTURES
from falserefusal.types import FalseRefusalError
from falserefusal.validation.power import block_mean_blocks, linear_variance
from falserefusal.validation.simulated_models import draw_design, results_frame, spec_string


@dataclass(frozen=True)
class CompoundingScenario:
    intersection: str = "black_muslim_woman"
    base: float = 0.05
    marker_shift: float = 0.03  # each marker's refusal rate minus the baseline's
    intersection_shift: float = 0.15  # the intersection's
    tolerance: float = 0.0  # the gate's max_intersectional_excess (0: any super-additivity)
    rho: float = 0.8
    task: str = "nli"

    @property
    def true_excess(self) -> float:
        return self.intersection_shift - self.marker_shift * len(_markers(self.intersection))


def _markers(intersection: str) -> tuple[str, ...]:
    personas, _ = load_personas(DEFAULT_FIXTURES / "personas.yaml")
    found = {i.id: i for i in load_intersections(DEFAULT_FIXTURES / "personas.yaml", personas)}
    if intersection not in found:
        raise FalseRefusalError(f"simulation: intersection {intersection!r} is not in the default personas.yaml")
    return found[intersection].of


def planned_blocks(scenario: CompoundingScenario, alpha: float = 0.05, power: float = 0.8) -> int:
    """The planner's blocks (falserefusal.validation.planning.block_mean_blocks) for the scenario's true rates."""
    markers = _markers(scenario.intersection)
    k = len(markers)
    rates = [scenario.base + scenario.intersection_shift, scenario.base] + [scenario.base + scenario.marker_shift] * k
    variance = linear_variance([1.0, k - 1.0] + [-1.0] * k, rates, np.full((k + 2, k + 2), scenario.rho**2))
    return block_mean_blocks(variance, scenario.true_excess - scenario.tolerance, alpha, power)


def simulate_compounding(
    scenario: CompoundingScenario, blocks: int, replicates: int, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """The share of replicates whose gate FAILs (lower bound above the tolerance), with its Wilson 95% interval."""
    markers = _markers(scenario.intersection)
    personas, phrasings = load_personas(DEFAULT_FIXTURES / "personas.yaml")
    intersection = next(
        i for i in load_intersections(DEFAULT_FIXTURES / "personas.yaml", personas) if i.id == scenario.intersection
    )
    conditions = [p for p in personas if p.id in markers] + [intersection.persona]
    shifts = {f"persona.{m}": scenario.marker_shift for m in markers}
    shifts[f"persona.{scenario.intersection}"] = scenario.intersection_shift
    model = spec_string(scenario.base, shifts, scenario.rho, 0)
    spec = ScriptedSpec.parse(model)
    tasks = load_tasks(DEFAULT_FIXTURES, [scenario.task], {})
    gate = GateSpec(
        "intersectional_excess", model, scenario.task, scenario.intersection, scenario.tolerance, markers=markers
    )
    seeds = np.random.SeedSequence(seed).generate_state(replicates) % 2**31
    fails, estimates = 0, []
    for replicate_seed in map(int, seeds):
        design = draw_design(tasks, conditions, phrasings, blocks, replicate_seed)
        frame = results_frame(design, model, scripted_refusals(spec, design, Draws.compute(design, replicate_seed)))
        tested = excess_test(persona_pivot(frame), _block_items(frame), gate, None)
        fails += tested.p_fail < alpha
        estimates.append(tested.estimate)
    low, high = wilson_interval(fails, replicates)
    return {
        "scenario": asdict(scenario),
        "model": model,
        "true_excess": scenario.true_excess,
        "blocks": blocks,
        "replicates": replicates,
        "seed": seed,
        "alpha": alpha,
        "fail_rate": fails / replicates,
        "fail_rate_ci": [low, high],
        "mean_estimate": float(np.mean(estimates)),
    }


def compounding_study(replicates: int = 400, seed: int = 0, alpha: float = 0.05) -> list[dict[str, Any]]:
    """The README's figures: the planted super-additive effect at the planner's blocks for 80% power, the additive
    one (no excess) at the same blocks, against tolerance 0 and the release profile's 0.05."""
    planted = CompoundingScenario()
    blocks = planned_blocks(planted, alpha)
    additive = CompoundingScenario(intersection_shift=0.09)
    return [
        simulate_compounding(planted, blocks, replicates, seed, alpha),
        simulate_compounding(additive, blocks, replicates, seed + 1, alpha),
        simulate_compounding(
            CompoundingScenario(intersection_shift=0.09, tolerance=0.05), blocks, replicates, seed + 2
        ),
        simulate_compounding(
            CompoundingScenario(intersection_shift=0.25, tolerance=0.05), blocks, replicates, seed + 3
        ),
    ]


if __name__ == "__main__":  # python -m falserefusal.validation.intersections [replicates] [seed]
    import json
    import sys

    arguments = [int(a) for a in sys.argv[1:3]]
    for row in compounding_study(*arguments):
        print(json.dumps(row))
