"""Monte Carlo check of the sensitivity section: `falserefusal simulate --sensitivity`.

Each replicate answers the real sampler's cases (`simulation.draw_design`, the blocks `falserefusal run --seed S`
draws) with scripted models (`simulation.scripted_refusals`, the scripted backend's own draws), runs the real
`analysis.sensitivity_table`, and compares it with the population index: the closed form
Σ_k w_k |p_k - p| / (2 p (1 - p)) on the rows' true refusal probabilities (w_k the design's shares), which is what
the table's interval is for. Three scenarios, on the same blocks:

- planted: two models (base 0.10 and 0.25) with an effect on every factor: task (+0.08 on the first task), persona
  (+0.06 for four personas), forcing level (+0.05 forced), paraphrase (+0.06 for one wording id in every task) and
  item (+0.10 for every sixth item of each task); coverage of the interval per factor;
- null: two models of base 0.10 and no effect at all (every population index is 0); coverage, and how often a
  factor is called distinguishable from noise (a false positive of the permutation test);
- persona: one model at base `persona_base` whose `persona` refuses `persona_shift` more (the gates' power
  scenario), with the profile's gates evaluated too: how often the section calls persona distinguishable among
  the replicates in which a persona disparity gate of that persona FAILs.

Every rate comes with a Wilson 95% interval over replicates.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from falserefusal.analysis.rates import wilson_interval
from falserefusal.analysis.sensitivity import DEFAULT_FACTORS, factor_levels, sensitivity_table
from falserefusal.gating.decide import evaluate_gates
from falserefusal.gating.kinds import gate_specs
from falserefusal.generation.backends.scripted import Draws, ScriptedSpec, refusal_probabilities, scripted_refusals
from falserefusal.validation.simulated_models import draw_design, results_frame, spec_string
from falserefusal.validation.simulation import _map
from falserefusal.validation.simulation_plan import SimulationSettings, build_plan

SCENARIOS = ("planted", "null", "persona")
#: --quick: a run of seconds, for tests
QUICK = dict(replicates=3, samples=60, n_boot=20, n_perm=20)


@dataclass(frozen=True)
class SensitivitySettings:
    """What `falserefusal simulate --sensitivity` measures, and how hard it tries."""

    replicates: int = 200
    seed: int = 0
    samples: int = 200  # request blocks per task
    rho: float = 0.8
    n_boot: int = 100  # bootstrap resamples of each table (the report uses 200)
    n_perm: int = 100  # permutations of each table's noise floor
    persona: str = "muslim"
    persona_base: float = 0.05
    persona_shift: float = 0.10
    profile: str = "release"
    thresholds: str | None = None
    fixtures: str | None = None
    root: str = "."
    jobs: int = 0  # worker processes; 0: every CPU (bad replicates, samples or rho: SimulationSettings says so)


@dataclass(frozen=True)
class _Plan:
    settings: SensitivitySettings
    base: Any  # simulation.Plan: the suite's tasks, personas, phrasings, profile
    seeds: tuple[int, ...]


def _plan(settings: SensitivitySettings) -> _Plan:
    given: dict[str, Any] = {
        k: v for k, v in (("thresholds", settings.thresholds), ("fixtures", settings.fixtures)) if v is not None
    }
    simulation = SimulationSettings(
        replicates=settings.replicates,
        seed=settings.seed,
        samples=settings.samples,
        rho=settings.rho,
        profile=settings.profile,
        planted_persona=settings.persona,
        root=settings.root,
        **given,
    )
    base = build_plan(simulation)
    return _Plan(settings, base, base.seeds)


def planted_shifts(design: pd.DataFrame, personas: Sequence[str], tasks: Sequence[str]) -> dict[str, float]:
    """The planted scenario's shifts (see the module docstring), as scripted --model keys."""
    shifts = {f"task.{tasks[0]}": 0.08, "forcing.forced": 0.05, "paraphrase.unforced-1": 0.06}
    shifts.update({f"persona.{persona}": 0.06 for persona in personas[:4]})
    for task in tasks:
        items = sorted(design.loc[design["task"] == task, "item"].unique())
        shifts.update({f"item.{item}": 0.10 for item in items[::6]})
    return shifts


def population_index(frame: pd.DataFrame, probability: np.ndarray, factors: Sequence[str]) -> dict[str, float]:
    """The index each factor has without sampling noise: the closed form on the rows' true probabilities."""
    p = float(np.mean(probability))
    values = {}
    for factor in factors:
        if p <= 0.0 or p >= 1.0:
            values[factor] = float("nan")
            continue
        grouped = pd.Series(probability).groupby(factor_levels(frame, factor).to_numpy())
        values[factor] = float((grouped.size() / len(frame) * (grouped.mean() - p).abs()).sum()) / (2 * p * (1 - p))
    return values


def _models(plan: _Plan, scenario: str, design: pd.DataFrame) -> list[tuple[float, dict[str, float]]]:
    s, personas = plan.settings, [p.id for p in plan.base.personas]
    if scenario == "planted":
        shifts = planted_shifts(design, personas, plan.base.task_ids)
        return [(0.10, shifts), (0.25, shifts)]
    if scenario == "null":
        return [(0.10, {}), (0.10, {})]
    persona = s.persona if s.persona in personas else personas[0]
    return [(s.persona_base, {f"persona.{persona}": s.persona_shift})]


def _scenario(plan: _Plan, scenario: str, design: pd.DataFrame, seed: int) -> dict[str, Any]:
    frames, probabilities, models = [], [], []
    for k, (base, shifts) in enumerate(_models(plan, scenario, design)):
        model = spec_string(base, shifts, plan.settings.rho, seed + k, name=f"m{k}")
        spec = ScriptedSpec.parse(model)
        frames.append(results_frame(design, model, scripted_refusals(spec, design, Draws.compute(design, seed + k))))
        probabilities.append(refusal_probabilities(spec, design))
        models.append(model)
    frame = pd.concat(frames, ignore_index=True)
    factors = [f for f in DEFAULT_FACTORS if f != "model" or len(models) > 1]
    table = sensitivity_table(
        frame, factors=factors, n_boot=plan.settings.n_boot, n_perm=plan.settings.n_perm, seed=seed
    ).set_index("factor")
    truth = population_index(frame, np.concatenate(probabilities), factors)
    result: dict[str, Any] = {"factors": {}}
    for factor in factors:
        row = table.loc[factor]
        result["factors"][factor] = {
            "planted": truth[factor],
            "index": float(row["index"]),
            "corrected": float(row["index_corrected"]),
            "null_subtracted": max(0.0, float(row["index"] - row["null_mean"])),
            "ci": [float(row["ci_low"]), float(row["ci_high"])],
            "floor": float(row["noise_floor"]),
            "covered": bool(row["ci_low"] - 1e-12 <= truth[factor] <= row["ci_high"] + 1e-12),
            "distinguishable": bool(row["distinguishable"]),
        }
    if scenario == "persona":
        persona = models[0].split("persona.")[1].split("=")[0]
        profile = plan.base.profile
        specs = gate_specs(profile, models, plan.base.task_ids, [p.id for p in plan.base.personas])
        outcomes = evaluate_gates(frame, specs, profile, len(plan.base.task_ids))
        result["gate_fails"] = sum(
            not o.passed for o in outcomes if o.spec.kind == "persona_disparity" and o.spec.persona == persona
        )
    return result


def run_replicate(plan: _Plan, index: int) -> dict[str, Any]:
    seed = plan.seeds[index]
    design = draw_design(plan.base.tasks, plan.base.personas, plan.base.phrasings, plan.settings.samples, seed)
    return {"seed": seed, **{scenario: _scenario(plan, scenario, design, seed) for scenario in SCENARIOS}}


def _rate(successes: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, n)
    return {"rate": successes / n if n else float("nan"), "ci": [low, high], "k": successes, "n": n}


def simulate_sensitivity(settings: SensitivitySettings) -> dict[str, Any]:
    """Run every replicate and summarise; the result is JSON-ready."""
    started = time.perf_counter()
    plan = _plan(settings)
    results = _map(run_replicate, plan, min(settings.jobs or os.cpu_count() or 1, settings.replicates))
    r = len(results)
    summary: dict[str, Any] = {}
    for scenario in SCENARIOS:
        per_factor = {}
        for factor in results[0][scenario]["factors"]:
            rows = [x[scenario]["factors"][factor] for x in results]
            per_factor[factor] = {
                "coverage": _rate(sum(row["covered"] for row in rows), r),
                "distinguishable": _rate(sum(row["distinguishable"] for row in rows), r),
                "mean_planted": float(np.mean([row["planted"] for row in rows])),
                "mean_index": float(np.mean([row["index"] for row in rows])),
                "mean_corrected": float(np.mean([row["corrected"] for row in rows])),
                "mean_null_subtracted": float(np.mean([row["null_subtracted"] for row in rows])),
                "mean_ci_width": float(np.mean([row["ci"][1] - row["ci"][0] for row in rows])),
            }
        summary[scenario] = per_factor
    caught = [x["persona"]["factors"]["persona"]["distinguishable"] for x in results if x["persona"]["gate_fails"]]
    agreement = {
        "gate_fails": _rate(len(caught), r),
        "distinguishable_when_a_gate_fails": _rate(sum(caught), len(caught)),
        "distinguishable": summary["persona"]["persona"]["distinguishable"],
    }
    return {
        "replicates": r,
        "min_coverage": min(row["coverage"]["rate"] for scenario in SCENARIOS for row in summary[scenario].values()),
        "persona_distinguishable_when_gate_fails": agreement["distinguishable_when_a_gate_fails"]["rate"],
        "scenarios": summary,
        "persona_agreement": agreement,
        "settings": asdict(settings),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def _pct(rate: Mapping[str, Any]) -> str:
    return f"{100 * rate['rate']:.1f}% [{100 * rate['ci'][0]:.1f}, {100 * rate['ci'][1]:.1f}] ({rate['k']}/{rate['n']})"


def format_sensitivity_summary(summary: Mapping[str, Any]) -> str:
    """The table a reviewer reads: coverage and distinguishability per scenario and factor."""
    s = summary["settings"]
    lines = [
        f"falserefusal simulate --sensitivity: {summary['replicates']} replicates, seed {s['seed']}, {s['samples']} "
        f"blocks per task, rho {s['rho']:g}, {s['n_boot']} resamples, {s['n_perm']} permutations, "
        f"{summary['elapsed_s']} s",
        f"{'scenario':<8} {'factor':<14} {'planted ι':>9} {'plug-in':>8} {'corrected':>9} {'ι - E0 ι':>8} "
        f"{'CI width':>8}  {'coverage of planted ι [95% CI]':<34} distinguishable",
    ]
    for scenario in SCENARIOS:
        for factor, row in summary["scenarios"][scenario].items():
            lines.append(
                f"{scenario:<8} {factor:<14} {row['mean_planted']:>9.4f} {row['mean_index']:>8.4f} "
                f"{row['mean_corrected']:>9.4f} {row['mean_null_subtracted']:>8.4f} {row['mean_ci_width']:>8.4f}  "
                f"{_pct(row['coverage']):<34} "
                f"{100 * row['distinguishable']['rate']:.1f}%"
            )
    agreement = summary["persona_agreement"]
    lines.append(
        f"persona +{100 * s['persona_shift']:g} pp: a persona gate FAILs in {_pct(agreement['gate_fails'])}; the "
        f"section calls persona distinguishable in {_pct(agreement['distinguishable_when_a_gate_fails'])} of those"
    )
    return "\n".join(lines)
