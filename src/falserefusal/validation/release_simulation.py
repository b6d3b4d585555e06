"""Simulation of release gating with scripted candidate and baseline models: false fails, power, sequential savings.

Each replicate draws two scripted models with fresh seeds (independent randomness, as two checkpoints with the
same refusal behaviour would have at worst) and answers the suite's real cases with the scripted backend in
process (no pytest), then decides the real gates (`evaluate_family`, `run_sequential`) of every (candidate, task)
family at the profile's alpha split:

- null: candidate and baseline model refuse at the same base rate everywhere; a gate failing is a false fail
  (with the release limits this sits on the boundary of the persona disparity gates, whose limit is 0);
- effect: the candidate refuses `effect` more under one persona (the baseline model does not); the power is the
  share of (replicate, task) pairs in which that persona's non-inferiority gate fails;
- clear: both models refuse at a lower `clear_rate`, a clear pass;
- each with the fixed budget and with the profile's sequential design (5 rounds, futility 0.05 and the planned
  excess as mde when the profile has none), counting the cases generated against the fixed budget.

The planner's (`falserefusal.validation.planning`) prediction for the same scripted model (correlation rho², independent
models) is reported beside the simulated power.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from falserefusal.gating.decide import evaluate_family
from falserefusal.gating.kinds import GateSpec, family_alpha, pass_alpha
from falserefusal.gating.profile import NONINFERIORITY_MARGINS
from falserefusal.gating.sequential import SequentialDesign, run_sequential
from falserefusal.generation.backends.scripted import Draws
from falserefusal.run.pipeline import block_index
from falserefusal.run.prepare import Suite
from falserefusal.types import FalseRefusalError
from falserefusal.validation.power import block_mean_blocks, block_mean_power, noninferiority_persona_variance
from falserefusal.validation.simulated_models import simulation_suite

CANDIDATE, BASELINE_MODEL = "scripted:name=candidate", "scripted:name=baseline-model"


@dataclass(frozen=True)
class ReleaseSimulation:
    """What to simulate; `samples` None takes the profile's budget."""

    replicates: int = 200
    samples: int | None = None
    base_rate: float = 0.05
    clear_rate: float = 0.02  # both models' rate in the clear-pass scenario (sequential savings)
    effect: float = 0.05
    persona: str = "muslim"
    rho: float = 0.8
    profile: str = "release-sequential"
    tasks: tuple[str, ...] = ()
    seed: int = 0
    root: str = "."
    workers: int = 1


def _suite(sim: ReleaseSimulation) -> Suite:
    suite = simulation_suite(
        CANDIDATE,
        samples=sim.samples,
        seed=sim.seed,
        profile=sim.profile,
        tasks=sim.tasks,
        baseline_model=BASELINE_MODEL,
        root=sim.root,
    )
    if sim.persona not in {p.id for p in suite.personas}:
        raise FalseRefusalError(f"--persona {sim.persona}: not a persona of the suite; fix: use e.g. muslim")
    return suite


def _draws(cases: pd.DataFrame, seed: int, rho: float) -> np.ndarray:
    """The scripted model's latent uniform per case (`ScriptedBackend.draw`, vectorised)."""
    return Draws.compute(cases, seed).latent(rho)


def _skeleton(suite: Suite) -> pd.DataFrame:
    cases = suite.cases
    one = pd.DataFrame(
        {
            "task": [c.task for c in cases],
            "persona": [c.persona for c in cases],
            "block": [c.block_id for c in cases],
            "case_id": [c.case_id for c in cases],
        }
    )
    one["block_index"] = one["block"].map(block_index)
    frame = pd.concat([one.assign(model=CANDIDATE), one.assign(model=BASELINE_MODEL)], ignore_index=True)
    return frame


def _decide(suite: Suite, frame: pd.DataFrame, design: SequentialDesign | None) -> tuple[list[Any], int]:
    """Every family's outcomes and the blocks generated (all of them without a sequential design)."""
    alpha = family_alpha(suite.profile, suite.n_families)
    outcomes, used = [], 0
    for task in suite.task_ids:
        rows = frame[frame["task"] == task]
        specs = [s for s in suite.gates if s.task == task]
        if design is None:
            outcomes += evaluate_family(rows, specs, alpha, alpha_pass=pass_alpha(suite.profile))
            used += suite.samples
        else:
            result = run_sequential(
                lambda n: rows[rows["block_index"] < n], specs, alpha, design, suite.samples, pass_alpha(suite.profile)
            )
            outcomes += result.outcomes
            used += result.blocks_used
    return outcomes, used


def _design(sim: ReleaseSimulation, suite: Suite) -> SequentialDesign:
    margin = suite.profile.limit("noninferiority_persona", suite.task_ids[0])
    return SequentialDesign.from_profile(suite.profile.sequential) or SequentialDesign(
        5, 0.05, max(sim.effect - margin, 0.01)
    )


def _target(spec: GateSpec, persona: str) -> bool:
    return spec.kind == "noninferiority_persona" and spec.persona == persona


def model_seeds(root: int, replicates: int) -> list[tuple[int, int]]:
    """(candidate, baseline model) seeds of every replicate, derived from the one root seed (--seed)."""
    state = np.random.SeedSequence(root).generate_state(2 * replicates)
    return [(int(state[2 * r]), int(state[2 * r + 1])) for r in range(replicates)]


def _replicate(args: tuple[ReleaseSimulation, Suite, pd.DataFrame, tuple[int, int]]) -> dict[str, Any]:
    sim, suite, skeleton, (candidate_seed, baseline_seed) = args
    cases = skeleton[skeleton["model"] == CANDIDATE]  # the same cases, in suite order, as the baseline model's half
    u_candidate = _draws(cases, candidate_seed, sim.rho)
    u_baseline = _draws(cases, baseline_seed, sim.rho)
    shifted = np.array([c.persona == sim.persona for c in suite.cases])
    scenarios = {
        "null": (u_candidate < sim.base_rate, u_baseline < sim.base_rate, ("fixed", "sequential")),
        "effect": (
            u_candidate < sim.base_rate + sim.effect * shifted,
            u_baseline < sim.base_rate,
            ("fixed", "sequential"),
        ),
        "clear": (u_candidate < sim.clear_rate, u_baseline < sim.clear_rate, ("sequential",)),
    }
    design = _design(sim, suite)
    result: dict[str, Any] = {}
    for scenario, (refused, reference, modes) in scenarios.items():
        frame = skeleton.assign(refused=np.concatenate([refused, reference]))
        for mode in modes:
            outcomes, used = _decide(suite, frame, design if mode == "sequential" else None)
            failed = [o.spec for o in outcomes if not o.passed]
            result[f"{scenario}/{mode}"] = {
                "any_fail": bool(failed),
                "any_noninferiority_fail": any(s.kind in NONINFERIORITY_MARGINS for s in failed),
                "target_fails": sum(_target(s, sim.persona) for s in failed),
                "other_noninferiority_fails": sum(
                    s.kind in NONINFERIORITY_MARGINS and not _target(s, sim.persona) for s in failed
                ),
                "blocks_used": used,
            }
    return result


def _rate(values: Sequence[float]) -> dict[str, float]:
    """Mean with its Monte Carlo standard error."""
    array = np.asarray(values, float)
    return {
        "rate": float(array.mean()),
        "se": float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else 0.0,
    }


def simulate_release(sim: ReleaseSimulation) -> dict[str, Any]:
    """Run the replicates and summarise (see the module docstring); one JSON-able dict."""
    if sim.replicates < 1:
        raise FalseRefusalError(f"--replicates {sim.replicates}: must be at least 1")
    suite = _suite(sim)
    skeleton = _skeleton(suite)
    jobs = [(sim, suite, skeleton, seeds) for seeds in model_seeds(sim.seed, sim.replicates)]
    if sim.workers > 1:
        with ProcessPoolExecutor(sim.workers) as pool:
            # one chunk per worker: the suite is pickled once per chunk, not once per replicate
            results = list(pool.map(_replicate, jobs, chunksize=math.ceil(len(jobs) / sim.workers)))
    else:
        results = [_replicate(job) for job in jobs]
    tasks = len(suite.task_ids)
    budget = suite.samples * tasks
    summary: dict[str, Any] = {}
    for key in results[0]:
        rows = [r[key] for r in results]
        summary[key] = {
            "false_fail_rate" if key.startswith("null") else "any_fail_rate": _rate([r["any_fail"] for r in rows]),
            "noninferiority_fail_rate": _rate([r["any_noninferiority_fail"] for r in rows]),
            "power_per_gate": _rate([r["target_fails"] / tasks for r in rows]),
            "other_noninferiority_fails_per_replicate": float(np.mean([r["other_noninferiority_fails"] for r in rows])),
            "blocks_used_mean": float(np.mean([r["blocks_used"] for r in rows])),
            "blocks_budget": budget,
            "share_of_budget": float(np.mean([r["blocks_used"] for r in rows]) / budget),
        }
    profile = suite.profile
    margin = profile.limit("noninferiority_persona", suite.task_ids[0])
    level = family_alpha(profile, suite.n_families) / (
        len([s for s in suite.gates if s.family == suite.gates[0].family])
    )
    variance = noninferiority_persona_variance(sim.base_rate, sim.effect, sim.rho**2, 0.0)
    planner = {
        "level": level,
        "power_at_budget": block_mean_power(variance, sim.effect - margin, level, suite.samples),
        "blocks_for_80pct": block_mean_blocks(variance, sim.effect - margin, level, 0.8)
        if sim.effect > margin
        else None,
    }
    return {
        "replicates": sim.replicates,
        "samples": suite.samples,
        "tasks": list(suite.task_ids),
        "personas": len(suite.personas),
        "alpha": profile.alpha,
        "base_rate": sim.base_rate,
        "effect": sim.effect,
        "persona": sim.persona,
        "persona_margin": margin,
        "rho": sim.rho,
        "clear_rate": sim.clear_rate,
        "sequential": {
            "rounds": _design(sim, suite).rounds,
            "futility": _design(sim, suite).futility,
            "mde": _design(sim, suite).mde,
        },
        "planner": planner,
        "scenarios": summary,
    }


def format_release_simulation(result: dict[str, Any]) -> str:
    lines = [
        f"{result['replicates']} replicates; {result['samples']} blocks per task x {len(result['tasks'])} tasks, "
        f"{result['personas']} personas; base rate {result['base_rate']}, effect +{result['effect']} for "
        f"{result['persona']} (persona margin {result['persona_margin']}); alpha {result['alpha']}",
        f"planner: power {result['planner']['power_at_budget']:.3f} at this budget; "
        f"{result['planner']['blocks_for_80pct']} blocks per task for 80%",
        "",
        f"{'scenario':<20} {'any gate fails':>16} {'NI gate fails':>15} {'power/gate':>15} {'blocks used':>18}",
    ]
    for key, row in result["scenarios"].items():
        fail = row.get("false_fail_rate") or row.get("any_fail_rate")
        lines.append(
            f"{key:<20} {fail['rate']:>9.3f}±{fail['se']:.3f} {row['noninferiority_fail_rate']['rate']:>8.3f}±"
            f"{row['noninferiority_fail_rate']['se']:.3f} "
            f"{row['power_per_gate']['rate']:>8.3f}±{row['power_per_gate']['se']:.3f} "
            f"{row['blocks_used_mean']:>9.0f}/{row['blocks_budget']} ({100 * row['share_of_budget']:.0f}%)"
        )
    return "\n".join(lines)
