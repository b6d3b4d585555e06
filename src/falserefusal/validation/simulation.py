"""The gate simulation (`falserefusal simulate`): scripted models answer the real sampler's design, the gates decide.

Each replicate is a run of the real suite on scripted models (see `falserefusal.generation.backends.scripted`), with
no model loaded:

- cases come from the real sampler (`design.sampler.draw_cases`, the same blocks `falserefusal run --seed S` draws:
  a seeded permutation of each task's factorial, without replacement; only one case per block is built as an
  object and the persona conditions are expanded as columns);
- answers are the scripted backend's, computed vectorised from the same SHA-256 draws (`_uniform(seed,
  "block" | "case" | "couple" | "item", ...)`), so a replicate equals `ScriptedBackend` answering every case; the
  refusal label is taken from the scripted answer's branch (refusal text or task label), which is what the
  real detector returns for those two texts (tests check both equalities on whole runs);
- gates are the real `gating.decide.evaluate_gates` on the thresholds.yaml profile, and the ranking uses the real
  `analysis.sensitivity_table`.

Replicate r uses seed s_r (from `SeedSequence(--seed)`) both as the sampler's seed and as the scripted model's,
so it is exactly `falserefusal run --seed s_r --model scripted:...` (the spec's seed= is an offset, 0 here; the
ranking's second model has offset 1). The gate scenarios' models carry per-item heterogeneity (`item_sd`: each
item's refusal probability times exp(sd z - sd²/2), drawn anew per replicate), so the items are a sample of items
of their kind, which is what the gates' "new items" inference is for.

What is measured (every rate with a Wilson 95% interval over replicates):

(a) family-wise false-fail rate: share of replicates in which ANY gate of the profile FAILs for a model
    with no persona effect at a refusal rate below the limit (`null`: 80% of each task's limit), and at the
    boundary where the null is hardest (`boundary`: every persona at the disparity tolerance, the pooled rate at
    the rate limit);
(b) power and PASS rates: the share of the planted persona's disparity gates (one per task) that FAIL when it
    refuses `power_shift` more often than the baseline's `power_base` (when that is below the target, the
    smallest budget that reaches it, by bisection on the same seeds), and when it refuses `exceed_shift` more
    (the planner's 80% FAIL power at the budget), beside the share that PASS at `small_shift` (well below the
    tolerance) and at no effect (every persona gate of the null); each with the planner's prediction;
(c) ranking recovery: share of replicates in which the Wasserstein indices of two scripted models rank
    model > task > persona > paraphrase, the order planted (see `ranking_models`);
(d) the width of a persona disparity's 95% interval in the paired design (Tango, n blocks asked with and
    without the persona) over its width with independent sampling at equal cost (Newcombe's hybrid score
    interval; the persona's answers to n requests, the baseline's to n other requests): 2n generations each,
    n the budget or half the factorial when that is smaller."""

from __future__ import annotations

import gc
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import get_all_start_methods, get_context
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import confint_proportions_2indep

from falserefusal.analysis.paired import paired_difference_ci
from falserefusal.gating.decide import evaluate_gates
from falserefusal.gating.kinds import GateOutcome, GateSpec, gate_specs, verdict_counts
from falserefusal.generation.backends.scripted import Draws, scripted_refusals
from falserefusal.types import BASELINE_ID
from falserefusal.validation.ranking import _ranking
from falserefusal.validation.simulated_models import _spec, draw_design, results_frame, spec_string
from falserefusal.validation.simulation_plan import GATE_COLUMNS, Plan, SimulationSettings, build_plan
from falserefusal.validation.simulation_summary import _ranking_summary, _rate


def _gate_outcomes(plan: Plan, frame: pd.DataFrame, model: str) -> list[GateOutcome]:
    """Every gate of the profile for one model, evaluated family by family as the plugin does."""
    specs = gate_specs(plan.profile, [model], plan.task_ids, [p.id for p in plan.personas])
    # only the columns the gates read, as categories: the same outcomes, about twice as fast
    frame = frame[list(GATE_COLUMNS)].astype(
        {column: "category" for column in ("model", "task", "persona", "block", "item")}
    )
    outcomes: list[GateOutcome] = []
    for task in plan.task_ids:
        family = [spec for spec in specs if spec.task == task]
        outcomes.extend(evaluate_gates(frame[frame["task"] == task], family, plan.profile, len(plan.tasks)))
    return outcomes


def _gate_failures(plan: Plan, frame: pd.DataFrame, model: str) -> list[tuple[GateSpec, bool]]:
    """(gate, FAILed) for every gate of the profile for one model."""
    return [(outcome.spec, outcome.verdict == "FAIL") for outcome in _gate_outcomes(plan, frame, model)]


def _scenario(
    plan: Plan, design: pd.DataFrame, draws: Draws, base: float, shifts: Mapping[str, float]
) -> list[GateOutcome]:
    """The profile's gates on one scripted model (with the settings' item heterogeneity) answering the design."""
    model, spec = _spec(base, shifts, plan.settings.rho, item_sd=plan.settings.item_sd)
    return _gate_outcomes(plan, results_frame(design, model, scripted_refusals(spec, design, draws)), model)


def _power_hits(plan: Plan, design: pd.DataFrame, draws: Draws, seed: int) -> tuple[list[bool], int]:
    """The planted persona's disparity gates that fail (one per task), and how many other gates fail."""
    outcomes = _scenario(
        plan, design, draws, plan.settings.power_base, {f"persona.{plan.planted_persona}": plan.settings.power_shift}
    )
    disparity = [o for o in outcomes if o.spec.kind == "persona_disparity"]
    hits = [o.verdict == "FAIL" for o in disparity if o.spec.persona == plan.planted_persona]
    others = sum(o.verdict == "FAIL" for o in disparity if o.spec.persona != plan.planted_persona)
    return hits, others


def _ci_widths(frame: pd.DataFrame, persona: str, samples: int) -> list[tuple[float, float]]:
    """(paired, independent) 95% interval widths of persona - baseline per task, at 2 * samples generations each.

    Paired: blocks [0, samples) asked with and without the persona. Independent: the persona's answers to
    blocks [0, samples) and the baseline's answers to blocks [samples, 2 * samples), i.e. other requests.
    """
    widths = []
    for _, rows in frame.groupby("task", sort=True):
        first = rows[rows["block_index"] < samples]
        cond = first.loc[first["persona"] == persona].set_index("block")["refused"]
        ref = first.loc[first["persona"] == BASELINE_ID].set_index("block")["refused"].reindex(cond.index)
        n10, n01 = int((cond & ~ref).sum()), int((~cond & ref).sum())
        low, high = paired_difference_ci(n10, n01, len(cond))
        other = rows.loc[
            (rows["block_index"] >= samples) & (rows["block_index"] < 2 * samples) & (rows["persona"] == BASELINE_ID),
            "refused",
        ]
        i_low, i_high = confint_proportions_2indep(
            int(cond.sum()), len(cond), int(other.sum()), len(other), method="newcomb"
        )
        widths.append((high - low, float(i_high - i_low)))
    return widths


def _kind_fails(outcomes: Sequence[GateOutcome]) -> dict[str, bool]:
    return {
        "any": any(o.verdict == "FAIL" for o in outcomes),
        "refusal_rate": any(o.verdict == "FAIL" for o in outcomes if o.spec.kind == "refusal_rate"),
        "persona_disparity": any(o.verdict == "FAIL" for o in outcomes if o.spec.kind == "persona_disparity"),
    }


def run_replicate(plan: Plan, index: int) -> dict[str, Any]:
    """One seed: the null, the boundary, the planted persona (power, beyond the tolerance, well below it, CI widths)
    and the ranking scenario; the gate scenarios' models carry the settings' item heterogeneity."""
    seed, settings, rho = plan.seeds[index], plan.settings, plan.settings.rho
    # the CI-width comparison needs 2w blocks (w = the budget, or half the factorial when that is smaller); the
    # first n blocks are exactly the blocks of a run with n samples (the sampler draws a task's blocks in order)
    width_blocks = min(plan.samples, plan.factorial // 2)
    design = draw_design(plan.tasks, plan.personas, plan.phrasings, max(plan.samples, 2 * width_blocks), seed)
    draws = Draws.compute(design, seed)
    first = design["block_index"].to_numpy() < plan.samples
    design_n = design[first].reset_index(drop=True)
    draws_n = draws.subset(first)
    result: dict[str, Any] = {"seed": seed}
    null = _scenario(plan, design_n, draws_n, 0.0, plan.null_shifts)
    result["null"] = {
        **_kind_fails(null),
        "zero_pass": [o.verdict == "PASS" for o in null if o.spec.kind == "persona_disparity"],
        "verdicts": verdict_counts(null),
    }
    boundary = _scenario(plan, design_n, draws_n, 0.0, plan.boundary_shifts)
    result["boundary"] = {
        **_kind_fails(boundary),
        # every persona exactly at the tolerance: a PASS of its gate is a false PASS (each at most alpha)
        "false_pass": [o.verdict == "PASS" for o in boundary if o.spec.kind == "persona_disparity"],
        "all_pass": all(o.verdict == "PASS" for o in boundary),  # the intersection-union claim: at most alpha
    }
    hits, others = _power_hits(plan, design_n, draws_n, seed)
    result["power"] = {"hits": hits, "other_disparity_fails": others}
    planted = f"persona.{plan.planted_persona}"
    for name, shift in (("exceed", plan.exceed_shift), ("small", plan.small_shift)):
        outcomes = [
            o
            for o in _scenario(plan, design_n, draws_n, settings.power_base, {planted: shift})
            if o.spec.kind == "persona_disparity" and o.spec.persona == plan.planted_persona
        ]
        result[name] = {
            "fail": [o.verdict == "FAIL" for o in outcomes],
            "pass": [o.verdict == "PASS" for o in outcomes],
        }
    model, spec = _spec(
        settings.power_base, {planted: settings.power_shift}, rho
    )  # the paired-design comparison: no item effect
    frame = design.assign(refused=scripted_refusals(spec, design, draws))
    null_persona = next(p.id for p in plan.personas if p.id != plan.planted_persona)
    result["widths"] = {
        "planted": _ci_widths(frame, plan.planted_persona, width_blocks),
        "null": _ci_widths(frame, null_persona, width_blocks),
        "blocks": width_blocks,
    }
    result["ranking"] = _ranking(plan, seed, (design_n, draws_n)) if settings.ranking else None
    return result


def power_at(plan: Plan, samples: int, jobs: int) -> float:
    """Share of the planted persona's gates that fail at `samples` blocks per task (same seeds as the rest)."""
    capped = min(samples, plan.factorial) if plan.factorial else samples  # the sampler never repeats a block
    hits = [hit for result in _map(_power_only, replace(plan, samples=capped), jobs) for hit in result]
    return sum(hits) / len(hits)


def _power_only(plan: Plan, index: int) -> list[bool]:
    seed = plan.seeds[index]
    design = draw_design(plan.tasks, plan.personas, plan.phrasings, plan.samples, seed)
    return _power_hits(plan, design, Draws.compute(design, seed), seed)[0]


def find_budget(
    plan: Plan, target: float, jobs: int, known: Mapping[int, float]
) -> tuple[int | None, dict[int, float]]:
    """Smallest blocks per task (to ~5%) whose power reaches `target`: bracket by doubling or halving, then bisect."""
    measured = dict(known)

    def power(n: int) -> float:
        if n not in measured:
            measured[n] = power_at(plan, n, jobs)
        return measured[n]

    n = plan.samples
    if power(n) >= target:
        high, low = n, n // 2
        while low >= 10 and power(low) >= target:
            high, low = low, low // 2
        if low < 10:
            return high, measured
    else:
        low, high = n, n * 2
        while power(high) < target:
            if high > 16 * n:
                return None, measured
            low, high = high, high * 2
    while high - low > max(10, high // 20):
        middle = (low + high) // 2
        if power(middle) >= target:
            high = middle
        else:
            low = middle
    return high, measured


_PLAN: Plan | None = None


def _init_worker(plan: Plan) -> None:
    global _PLAN
    _PLAN = plan
    gc.freeze()  # statsmodels' Holm calls gc.collect() per family; frozen imports make that cheap


def _call(job: tuple[Any, int]) -> Any:
    function, index = job
    assert _PLAN is not None
    return function(_PLAN, index)


def _map(function: Any, plan: Any, jobs: int) -> list[Any]:
    """`function(plan, i)` for every seed index of `plan` (a Plan, or any plan with `seeds`), over `jobs` processes."""
    indices = range(len(plan.seeds))
    if jobs <= 1:
        return [function(plan, i) for i in indices]
    context = get_context("fork") if "fork" in get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(plan,)) as pool:
        return list(pool.map(_call, [(function, i) for i in indices], chunksize=max(1, len(plan.seeds) // (4 * jobs))))


def simulate(settings: SimulationSettings) -> dict[str, Any]:
    """Run every replicate and summarise; the result is JSON-ready."""
    started = time.perf_counter()
    plan = build_plan(settings)
    jobs = settings.jobs or os.cpu_count() or 1
    jobs = min(jobs, settings.replicates)
    results = _map(run_replicate, plan, jobs)
    r = len(results)
    null = {
        kind: _rate(sum(x["null"][kind] for x in results), r) for kind in ("any", "refusal_rate", "persona_disparity")
    }
    boundary = {
        kind: _rate(sum(x["boundary"][kind] for x in results), r)
        for kind in ("any", "refusal_rate", "persona_disparity")
    }
    hits = [hit for x in results for hit in x["power"]["hits"]]
    power = _rate(sum(hits), len(hits))
    power_any = _rate(sum(any(x["power"]["hits"]) for x in results), r)

    def gates(scenario: str, key: str) -> dict[str, Any]:
        values = [hit for x in results for hit in x[scenario][key]]
        return _rate(sum(values), len(values))

    exceed, small, zero = gates("exceed", "fail"), gates("small", "pass"), gates("null", "zero_pass")
    false_pass, all_pass = gates("boundary", "false_pass"), _rate(sum(x["boundary"]["all_pass"] for x in results), r)
    small_every_task = _rate(sum(all(x["small"]["pass"]) for x in results), r)
    verdicts = {v: int(sum(x["null"]["verdicts"][v] for x in results)) for v in ("PASS", "FAIL", "INCONCLUSIVE")}
    budget, search = None, {plan.samples: power["rate"]}
    if settings.find_budget:
        budget, search = find_budget(plan, settings.power_target, jobs, search)
    elif power["rate"] >= settings.power_target:
        budget = plan.samples
    widths = {kind: np.array([pair for x in results for pair in x["widths"][kind]]) for kind in ("planted", "null")}
    ratio = {kind: float(w[:, 0].mean() / w[:, 1].mean()) for kind, w in widths.items()}
    ranking = _ranking_summary(results)
    rho, item_sd = settings.rho, settings.item_sd
    planted = f"persona.{plan.planted_persona}"

    def scenario(base: float, shifts: Mapping[str, float], item: float = item_sd) -> str:
        return spec_string(base, shifts, rho, 0, item_sd=item) + " --seed <replicate>"

    return {
        "replicates": r,
        "family_wise_false_fail_rate": null["any"]["rate"],
        "null_false_fail_with_item_heterogeneity": null["any"]["rate"],
        "power": power["rate"],
        "power_tolerance_exceeded": exceed["rate"],
        "pass_rate_well_below_tolerance": small["rate"],
        "pass_rate_zero_effect": zero["rate"],
        "false_pass_rate_at_tolerance": false_pass["rate"],
        "ranking_recovery": ranking["recovered"]["rate"] if ranking else None,
        "paired_vs_iid_ci_width_ratio": ratio["planted"],
        "false_fail": {
            "null": null,
            "boundary": boundary,
            "alpha": plan.profile.alpha,
            "n_gates": len(gate_specs(plan.profile, ["m"], plan.task_ids, [p.id for p in plan.personas])),
            "item_sd": item_sd,
        },
        "power_detail": {
            "per_gate": power,
            "any_task": power_any,
            "budget": plan.samples,
            "target": settings.power_target,
            "budget_for_target": budget,
            "search": {str(k): v for k, v in sorted(search.items())},
            "other_disparity_fails_per_replicate": float(
                np.mean([x["power"]["other_disparity_fails"] for x in results])
            ),
            "planned": plan.planner["power_shift_fail_power"],
        },
        "verdict_detail": {
            "tolerance": plan.tolerance,
            "item_sd": item_sd,
            "planner": dict(plan.planner),
            "exceeded": {
                "effect": plan.exceed_shift,
                "fail_per_gate": exceed,
                "planned_fail_power": plan.planner["exceed_fail_power"],
            },
            "well_below": {
                "effect": plan.small_shift,
                "pass_per_gate": small,
                "pass_in_every_task": small_every_task,
                "planned_pass_power": plan.planner["small_pass_power"],
            },
            "zero_effect": {"pass_per_gate": zero, "planned_pass_power": plan.planner["zero_pass_power"]},
            "at_tolerance": {
                "effect": plan.tolerance,
                "false_pass_per_gate": false_pass,
                "every_gate_pass": all_pass,
                "alpha": plan.profile.alpha,
            },
            "null_verdicts": verdicts,
        },
        "ranking": ranking,
        "ci_width": {
            **{
                kind: {"paired": float(w[:, 0].mean()), "independent": float(w[:, 1].mean()), "ratio": ratio[kind]}
                for kind, w in widths.items()
            },
            "blocks": results[0]["widths"]["blocks"],
        },
        "budgets": {
            "samples_per_task": plan.samples,
            "tasks": len(plan.tasks),
            "conditions": len(plan.personas) + 1,
            "generations_per_model": plan.samples * len(plan.tasks) * (len(plan.personas) + 1),
            "factorial": plan.factorial,
        },
        "scenarios": {
            "null": scenario(0.0, plan.null_shifts),
            "boundary": scenario(0.0, plan.boundary_shifts),
            "power": scenario(settings.power_base, {planted: settings.power_shift}),
            "exceeded": scenario(settings.power_base, {planted: plan.exceed_shift}),
            "well_below": scenario(settings.power_base, {planted: plan.small_shift}),
            "ci_width": scenario(settings.power_base, {planted: settings.power_shift}, 0.0),
            "ranking": [
                spec_string(b, s, rho, k, f"m{k}") + " --seed <replicate>" for k, (b, s) in enumerate(plan.ranking)
            ],
        },
        "settings": {**asdict(settings), "profile_samples": plan.profile.samples, "jobs": jobs},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
