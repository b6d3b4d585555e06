"""The simulation's parts equal the real path (sampler, scripted backend, detector, gates) and its summary is sane."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from falserefusal.analysis import records_frame
from falserefusal.design.sampler import draw_cases
from falserefusal.gating.decide import evaluate_gates
from falserefusal.generation.backends.scripted import Draws, ScriptedSpec, refusal_probabilities, scripted_refusals
from falserefusal.generation.generator import Generator
from falserefusal.run.config import RunConfig
from falserefusal.run.prepare import prepare
from falserefusal.validation import simulation
from falserefusal.validation.simulated_models import draw_design, results_frame
from falserefusal.validation.simulation import find_budget, simulate
from falserefusal.validation.simulation_plan import JSON_KEYS, SimulationSettings, build_plan

ROOT = Path(__file__).resolve().parents[2]
# every kind of shift, a rho between 0 and 1, item heterogeneity and a seed offset: all of the scripted backend's semantics
SPEC = ("scripted:base=0.2,persona.muslim=+0.3,persona.man=-0.1,task.nli=+0.1,forcing.unforced=+0.2,"
        "paraphrase.forced-2=+0.4,item.nli-003=+0.5,item_sd=0.7,rho=0.5,seed=7")


def suite(samples: int, seed: int, model: str = SPEC):
    return prepare(RunConfig(models=(model,), backend="scripted", samples=samples, seed=seed, profile="release",
                             root=str(ROOT), progress=False, use_cache=False))


def test_design_has_the_samplers_cases_in_order() -> None:
    s = suite(6, 3)
    design = draw_design(s.tasks, s.personas, s.phrasings, 6, 3)
    cases = draw_cases(s.tasks, s.personas, s.phrasings, 6, 3)
    expected = pd.DataFrame(
        {
            "task": [c.task for c in cases], "forcing_level": [c.forcing_level for c in cases],
            "paraphrase": [c.paraphrase_id for c in cases], "item": [c.item_id for c in cases],
            "block": [c.block_id for c in cases], "persona": [c.persona for c in cases],
            "persona_dimension": [c.persona_dimension for c in cases], "phrasing": [c.phrasing_id for c in cases],
            "case_id": [c.case_id for c in cases], "seed": [c.seed for c in cases],
        }
    )
    assert design[list(expected.columns)].astype(object).equals(expected.astype(object))


def test_first_blocks_of_a_larger_design_are_the_smaller_run() -> None:
    s = suite(2, 0)
    large = draw_design(s.tasks, s.personas, s.phrasings, 10, 5)
    small = draw_design(s.tasks, s.personas, s.phrasings, 5, 5)
    prefix = large[large["block_index"] < 5].reset_index(drop=True)
    pd.testing.assert_frame_equal(prefix, small)


def test_vectorised_answers_equal_the_scripted_backend_and_detector() -> None:
    """One replicate's frame equals records_frame of ScriptedBackend answers labelled by the real detector."""
    s = suite(12, 7)
    generator = Generator(s.config)
    records = [r for spec in s.tasks for r in generator.generate(SPEC, s.cases_for(spec.task.id))]
    expected = records_frame(records)
    design = draw_design(s.tasks, s.personas, s.phrasings, 12, 7)
    spec = ScriptedSpec.parse(SPEC)
    # the backend draws from the run's --seed (7) plus the spec's seed= offset (7)
    frame = results_frame(design, SPEC, scripted_refusals(spec, design, Draws.compute(design, 7 + spec.seed)))
    columns = [c for c in expected.columns if c != "rule"]  # the detector's rule name is not simulated
    pd.testing.assert_frame_equal(frame[columns].reset_index(drop=True), expected[columns], check_dtype=False)
    # both branches of the scripted answer occur, so the detector was checked on each
    assert 0 < expected["refused"].sum() < len(expected)
    assert {r.rule for r in records if r.refused}.isdisjoint({r.rule for r in records if not r.refused})


def test_gates_per_family_equal_evaluate_gates_on_the_whole_frame() -> None:
    model = "scripted:base=0.05,persona.muslim=+0.5,rho=0.8,seed=1"
    s = suite(60, 1, model)
    plan = build_plan(SimulationSettings(replicates=1, samples=60, root=str(ROOT)))
    design = draw_design(s.tasks, s.personas, s.phrasings, 60, 1)
    frame = results_frame(design, model, scripted_refusals(ScriptedSpec.parse(model), design, Draws.compute(design, 1)))
    expected = {o.spec: not o.passed for o in evaluate_gates(frame, s.gates, s.profile, s.n_families)}
    got = dict(simulation._gate_failures(plan, frame, model))
    assert got == expected and any(expected.values())


def test_budget_search_finds_the_smallest_budget_reaching_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = build_plan(SimulationSettings(replicates=1, samples=300, root=str(ROOT)))
    monkeypatch.setattr(simulation, "power_at", lambda plan, n, jobs: min(1.0, n / 1000))
    budget, measured = find_budget(plan, 0.8, 1, {})
    assert 800 <= budget <= 840 and all(measured[n] < 0.8 for n in measured if n < 800)
    budget, _ = find_budget(build_plan(SimulationSettings(replicates=1, samples=900, root=str(ROOT))), 0.8, 1, {})
    assert 800 <= budget <= 840


def test_quick_summary_is_sane_and_finds_a_huge_effect() -> None:
    settings = SimulationSettings(replicates=3, samples=60, ranking_boot=5, find_budget=False, jobs=1,
                                  power_shift=0.5, root=str(ROOT))
    summary = simulate(settings)
    assert set(JSON_KEYS) <= set(summary) and summary["replicates"] == 3
    assert summary["family_wise_false_fail_rate"] <= 0.15
    assert summary["power"] == 1.0
    assert 0.0 <= summary["ranking_recovery"] <= 1.0
    assert 0.0 < summary["paired_vs_iid_ci_width_ratio"] < 1.0  # pairing helps when answers correlate (rho 0.8)
    ranking = summary["ranking"]
    assert ranking["planted_index"]["model"] > ranking["planted_index"]["task"] > ranking["planted_index"]["persona"]
    assert ranking["nested_paraphrase_above_task"]["rate"] == 1.0  # a finer partition never has a smaller index
    json.dumps(summary)


def test_the_run_seed_drives_the_scripted_backend_and_the_spec_seed_is_an_offset() -> None:
    model = "scripted:base=0.3,rho=0.5"
    answers = {}
    for seed, spec in ((1, model), (2, model), (1, model + ",seed=1")):
        s = suite(10, seed, spec)
        answers[(seed, spec)] = [r.refused for r in Generator(s.config).generate(spec, s.cases_for("nli"))]
    assert answers[(1, model)] != answers[(2, model)]  # a seed loop varies the model's draws too
    s = suite(10, 1, model)
    design = draw_design(s.tasks[:1], s.personas, s.phrasings, 10, 1)
    # --seed 1 with seed=1 answers seed 1's blocks with the draws of model seed 1 + 1
    expected = scripted_refusals(ScriptedSpec.parse(model), design, Draws.compute(design, 2))
    assert answers[(1, model + ",seed=1")] == list(expected) != answers[(1, model)]


def test_item_heterogeneity_spreads_item_rates_around_the_planted_mean() -> None:
    s = suite(1782, 3)
    design = draw_design(s.tasks[:1], s.personas[:1], s.phrasings, 1782, 3)  # the whole nli factorial
    spec = ScriptedSpec.parse("scripted:base=0.05,item_sd=0.5")
    p = refusal_probabilities(spec, design, seed=3)
    per_item = pd.Series(p).groupby(design["item"].to_numpy()).mean()
    assert per_item.std() > 0.01 and abs(per_item.mean() - 0.05) < 0.01  # heterogeneous, mean factor 1
    assert (refusal_probabilities(spec, design, seed=4) != p).any()  # drawn anew per seed


def test_the_exceeding_effect_is_planned_with_the_item_term_and_pass_at_alpha() -> None:
    # the scenario beyond the tolerance gets the planner's 80% FAIL power for the model it plants (item heterogeneity
    # included), so "fails with the planned power" compares like with like; PASS is planned at alpha, as decided
    with_items = build_plan(SimulationSettings(replicates=1, item_sd=0.5, root=str(ROOT)))
    without = build_plan(SimulationSettings(replicates=1, item_sd=0.0, root=str(ROOT)))
    assert with_items.planner["exceed_fail_power"] == pytest.approx(0.8, abs=1e-6)
    assert with_items.exceed_shift > without.exceed_shift  # the item design effect needs a larger effect
    assert with_items.planner["exceed_fail_power_without_items"] > 0.8
    assert with_items.planner["level_pass"] == with_items.profile.alpha > with_items.planner["level"]
