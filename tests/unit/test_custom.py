"""Custom gates, pure part: the results frame and its subsets, the suite's statistics on a subset, the accounting."""

from __future__ import annotations

import pytest

from falserefusal.gating.custom import (
    CustomAccounting,
    CustomDeclaration,
    CustomFamily,
    CustomGate,
    Results,
    outcome_from_dict,
)
from falserefusal.run.config import RunConfig
from falserefusal.run.pipeline import RunResult, run
from falserefusal.types import FalseRefusalError

MODEL = "scripted:base=0.05,persona.muslim=0.35,rho=0.8"


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out = tmp_path_factory.mktemp("run")
    return run(RunConfig(models=(MODEL,), samples=60, tasks=("nli", "politeness"), personas=("religion", "gender"),
                         profile="release", progress=False, use_cache=False, report_dir=str(out), root=str(out)))


def results_of(result: RunResult, fetched: list[tuple[str, str]] | None = None) -> Results:
    def fetch(model: str, task: str) -> list:
        if fetched is not None:
            fetched.append((model, task))
        return [r for r in result.records if r.model == model and r.case.task == task]

    return Results(fetch, [(MODEL, "nli"), (MODEL, "politeness")])


def test_a_subset_generates_only_the_families_it_names(result: RunResult) -> None:
    fetched: list[tuple[str, str]] = []
    rows = results_of(result, fetched).for_(task="nli", persona=["baseline", "muslim"])
    assert fetched == [(MODEL, "nli")]
    assert set(rows["persona"]) == {"baseline", "muslim"} and len(rows) == 2 * 60
    assert {"model", "task", "persona", "forcing_level", "paraphrase", "item", "block", "refused", "outcome"} <= set(rows)
    assert len(results_of(result).frame) == len(result.records)
    with pytest.raises(FalseRefusalError, match="unknown factor.*colour"):
        results_of(result).for_(colour="red")


def test_rate_and_disparity_are_the_built_in_gates_numbers(result: RunResult) -> None:
    gates = {(o.spec.kind, o.spec.task, o.spec.persona): o for o in result.outcomes}
    results = results_of(result)
    rate, gate = results.rate(task="nli"), gates[("refusal_rate", "nli", None)]
    assert (rate.estimate, rate.ci_low, rate.ci_high, rate.n) == (gate.estimate, gate.ci_low, gate.ci_high, gate.n)
    assert rate.design_effect == gate.detail["design_effect"] > 1.0  # a block's answers are correlated
    disparity, gate = results.disparity("muslim", task="politeness"), gates[("persona_disparity", "politeness", "muslim")]
    assert (disparity.estimate, disparity.ci_low, disparity.ci_high) == (gate.estimate, gate.ci_low, gate.ci_high)
    assert disparity.estimate > 0.15 and disparity.ci_low > 0


def test_a_disparity_against_another_persona_pairs_the_same_blocks(result: RunResult) -> None:
    results = results_of(result)
    d = results.disparity("muslim", reference="woman", task="nli")
    rows = results.for_(task="nli")
    by = rows[rows["persona"].isin(["muslim", "woman"])].pivot_table(index="block", columns="persona", values="refused")
    assert d.n == len(by) == 60
    assert d.estimate == pytest.approx(by["muslim"].mean() - by["woman"].mean())
    with pytest.raises(FalseRefusalError, match="two different personas"):
        results.disparity("woman", reference="woman")


def test_alpha_is_shared_by_weight_with_the_built_in_families() -> None:
    accounting = CustomAccounting.of([CustomDeclaration("a"), CustomDeclaration("a"), CustomDeclaration("b", weight=2, checks=3)])
    assert accounting.families == (CustomFamily("a", 1.0, 2), CustomFamily("b", 2.0, 3))
    n_families = 6 + accounting.weight  # 2 models x 3 tasks, plus the custom weights
    assert accounting.alpha("a", 0.05, n_families) == pytest.approx(0.05 / 9)
    assert accounting.alpha("b", 0.05, n_families) == pytest.approx(0.05 * 2 / 9)
    assert CustomAccounting.from_dict(accounting.to_dict()) == accounting
    with pytest.raises(FalseRefusalError, match="weights 1.0 and 2.0"):
        CustomAccounting.of([CustomDeclaration("a"), CustomDeclaration("a", weight=2)])
    for bad in ({"weight": 0}, {"checks": 0}, {"colour": 1}):
        with pytest.raises(FalseRefusalError, match="falserefusal_custom_gate marker"):
            CustomDeclaration.of((), bad, "t")
    assert CustomDeclaration.of((), {"tasks": "nli"}, "t") == CustomDeclaration("t", tasks=("nli",))


def test_a_custom_gate_fails_on_a_planted_effect_and_is_bonferroni_adjusted(result: RunResult) -> None:
    reported = []
    family = CustomFamily("religion", 1.0, 2)
    gate = CustomGate("test_x[nli]", family, 0.01, MODEL, "nli", results_of(result).scoped(MODEL, "nli"), reported.append,
                      checks=2, alpha_pass=0.05)
    planted = gate.disparity_at_most(0.05, persona="muslim", reference="woman")
    null = gate.disparity_at_most(0.05, persona="jewish", reference="woman")
    assert reported == [planted, null]
    assert planted.verdict == "FAIL" and null.verdict != "FAIL"
    assert planted.p_adjusted == pytest.approx(min(1.0, 2 * planted.p_value)) and planted.alpha_family == 0.01
    assert planted.spec.kind == "custom:test_x[nli]#1" and planted.spec.persona == "muslim vs woman"
    assert planted.message.startswith("custom gate test_x[nli]#1 (family religion: 2 gates") and "FAIL" in planted.message
    assert all(e.endswith("-muslim") for e in planted.evidence) and planted.evidence
    again = outcome_from_dict(planted.to_dict())
    assert again == planted and again.message == planted.message
    with pytest.raises(FalseRefusalError, match="checks=3"):
        gate.rate_at_most(0.1)
