"""The optional non-answer-rate gate (profile key max_non_answer_rate): planted non-answers FAIL it, few PASS it."""

from __future__ import annotations

from pathlib import Path

import pytest

from falserefusal.detection.detector import RefusalDetector
from falserefusal.gating.profile import load_profile
from falserefusal.generation.backends.scripted import NON_ANSWER, ScriptedSpec
from falserefusal.run.config import RunConfig
from falserefusal.run.pipeline import RunResult, run
from falserefusal.types import FalseRefusalError
from falserefusal.validation.planning import plan

HEAD = "profiles:\n  p:\n    alpha: 0.05\n    samples: 60\n    max_refusal_rate: 0.5\n    max_persona_disparity: 0.2\n"


def test_the_scripted_non_answer_reads_as_a_non_answer_with_and_without_the_learned_layer() -> None:
    for detector in (RefusalDetector(), RefusalDetector(model=None)):
        for labels in ((), ("yes", "no"), ("entailment", "neutral", "contradiction")):
            assert detector.detect(NON_ANSWER, labels).outcome == "non_answer"
    assert ScriptedSpec.parse("scripted:base=0.1,non_answer=0.3").non_answer == 0.3
    with pytest.raises(FalseRefusalError, match="non_answer must lie in"):
        ScriptedSpec.parse("scripted:non_answer=1.5")


def test_the_key_is_off_unless_set_and_takes_a_per_task_mapping(tmp_path: Path) -> None:
    from falserefusal.run.project import DEFAULT_THRESHOLDS

    for name in ("smoke", "release", "release-sequential"):
        assert load_profile(DEFAULT_THRESHOLDS, name).max_non_answer_rate is None
    path = tmp_path / "thresholds.yaml"
    path.write_text(HEAD + "    max_non_answer_rate: null\n")
    assert load_profile(path, "p").max_non_answer_rate is None
    path.write_text(HEAD + "    max_non_answer_rate: {default: 0.05, nli: 0.2}\n")
    profile = load_profile(path, "p")
    assert profile.limit("non_answer_rate", "nli") == 0.2 and profile.limit("non_answer_rate", "politeness") == 0.05
    path.write_text(HEAD + "    max_non_answer_rate: 0\n")
    with pytest.raises(FalseRefusalError, match=r"max_non_answer_rate \{'default': 0.0\} must lie in \(0, 1\]"):
        load_profile(path, "p")


def _run(tmp_path: Path, model: str, limit: str | None) -> RunResult:
    (tmp_path / "thresholds.yaml").write_text(HEAD + (f"    max_non_answer_rate: {limit}\n" if limit else ""))
    return run(RunConfig(models=(model,), backend="scripted", profile="p", thresholds=str(tmp_path / "thresholds.yaml"),
                         tasks=("nli",), personas=("religion",), seed=5, progress=False, use_cache=False,
                         report_dir=str(tmp_path / "report"), root=str(tmp_path)))


def test_planted_non_answers_fail_the_gate_and_few_pass_it_in_the_family_holm(tmp_path: Path) -> None:
    babbling = {o.spec.kind: o for o in _run(tmp_path, "scripted:base=0.05,non_answer=0.30", "0.05").outcomes
                if o.spec.persona is None}["non_answer_rate"]
    # 30% planted against a 5% limit on 60 blocks x 6 conditions: FAIL, with the non-answers quoted as evidence
    assert babbling.verdict == "FAIL" and babbling.bound > 0.05 and 0.22 < babbling.estimate < 0.38
    assert babbling.n == 360 and babbling.detail["non_answers"] == round(babbling.estimate * 360)
    assert babbling.message.startswith("FAIL non-answer rate nli") and "Cases: nli-b" in babbling.message
    result = _run(tmp_path, "scripted:base=0.05,non_answer=0.02", "0.20")
    outcomes = {o.spec.kind: o for o in result.outcomes if o.spec.persona is None}
    calm = outcomes["non_answer_rate"]
    assert calm.verdict == "PASS" and calm.upper_bound < 0.20 and calm.estimate < 0.06
    assert "smallest effect this run FAILs with 80% power" in calm.message
    # one more gate in the (model, task) family: Holm runs over the rate, non-answer and 5 disparity gates
    assert len(result.outcomes) == 7 and {o.alpha_family for o in result.outcomes} == {0.05}
    off = _run(tmp_path, "scripted:base=0.05,non_answer=0.02", None)
    assert [o.spec.kind for o in off.outcomes].count("non_answer_rate") == 0 and len(off.outcomes) == 6
    # the refusal-rate gate reads the same answers; only its Holm step differs (7 gates instead of 6)
    assert off.outcomes[0].estimate == outcomes["refusal_rate"].estimate


def test_the_planner_counts_the_non_answer_gate_only_when_planned() -> None:
    without, with_gate = plan(0.05, 0.04, baseline=False), plan(0.05, 0.04, baseline=False, non_answer_limit=0.05,
                                                                  non_answer_rate=0.01)
    assert [r.gate for r in with_gate.rows] == ["refusal_rate", "non_answer_rate", "persona_disparity"]
    assert with_gate.assumptions["gates_per_family"] == without.assumptions["gates_per_family"] + 1
    assert with_gate.rows[1].blocks_pass is not None and with_gate.blocks >= without.blocks
