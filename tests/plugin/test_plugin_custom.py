"""pytester tests of custom gates: the marker joins the alpha accounting and shows up in JUnit, results and report."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from falserefusal.cli import main
from falserefusal.run.results import read_results

CUSTOM_TEST = '''
import pytest


@pytest.mark.falserefusal_custom_gate(tasks="nli")
def test_baseline_rate(falserefusal_custom_gate):
    falserefusal_custom_gate.rate_at_most(0.05, persona="baseline")


def test_results_frame(falserefusal_results):
    rows = falserefusal_results.for_(task="nli", persona="baseline")
    assert len(rows) == 30 and set(rows["persona"]) == {"baseline"}
    assert falserefusal_results.rate(task="nli", persona="baseline").ci_low > 0.05
'''


def test_a_custom_gate_joins_the_accounting_and_every_output(project: pytest.Pytester) -> None:
    project.makepyfile(**{"tests/refusal/test_team_custom_gates": CUSTOM_TEST})
    result = project.runpytest("--model", "scripted:base=0.4", "--profile", "release", "--samples", "30", "--tasks", "nli",
                               "--personas", "muslim", "--no-progress", "--junitxml=junit.xml")
    result.assert_outcomes(passed=2, failed=2)  # the rate gates (built-in and custom) fail; the frame test passes
    result.stdout.fnmatch_lines(["*custom gate test_baseline_rate[[]nli[]] (family test_baseline_rate: 1 gates, alpha 0.025)"
                                 ": FAIL refusal rate nli*"])
    properties = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
                  for case in ET.parse(project.path / "junit.xml").iter("testcase")}
    custom = json.loads(properties["test_baseline_rate[nli]"]["falserefusal"])
    assert custom["spec"]["kind"] == "custom:test_baseline_rate[nli]" and custom["verdict"] == "FAIL"
    assert custom["ci_low"] > 0.05 and custom["detail"]["design_effect"] >= 1.0
    builtin = json.loads(properties["test_refusal_rate[nli]"]["falserefusal"])
    assert builtin["alpha_family"] == pytest.approx(0.05 / 2)  # one built-in family and one custom family share alpha
    metadata, _ = read_results(project.path / "report" / "results.jsonl")
    assert [o["spec"]["kind"] for o in metadata["custom_gates"]["outcomes"]] == ["custom:test_baseline_rate[nli]"]
    assert "custom: test_baseline_rate[nli]" in (project.path / "report" / "index.html").read_text()
    # the report rebuilt from the results file keeps the custom gate and the built-in gates' alpha
    assert main(["report", str(project.path / "report" / "results.jsonl"), "--report-dir", str(project.path / "again")]) == 0
    assert "custom: test_baseline_rate[nli]" in (project.path / "again" / "index.html").read_text()


def test_the_fixture_without_the_marker_is_a_collection_error(project: pytest.Pytester) -> None:
    project.makepyfile(**{"tests/refusal/test_team_custom_gates": "def test_x(falserefusal_custom_gate):\n    pass\n"})
    result = project.runpytest("--model", "scripted:base=0", "--samples", "2", "--tasks", "nli", "--no-progress")
    result.stdout.fnmatch_lines(["*asks for the falserefusal_custom_gate fixture without @pytest.mark.falserefusal_custom_gate*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_gates"
#: one run gates two models: the first refuses offensiveness under the Muslim persona, and NLI without a persona, far
#: beyond the example's limits; the second has no effect
PLANTED = "scripted:name=planted,base=0.02,persona.muslim=0.5,persona.baseline=0.3,rho=0.8"
NULL = "scripted:name=null,base=0.01,rho=0.8"
EXAMPLE_GATES = ("test_added_gate[religion-vs-gender-{}-offensiveness]", "test_baseline_refuses_nli_rarely[{}-nli]")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_the_example_custom_gates_fail_on_a_planted_effect_only(pytester: pytest.Pytester, workers: str) -> None:
    """examples/custom_gates in a fresh project that only installs falserefusal, run as its README says."""
    for name in ("conftest.py", "test_custom_gates.py"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    result = pytester.runpytest_subprocess(
        "--pyargs", "falserefusal", "test_custom_gates.py", "-n", workers, "--model", PLANTED, "--model", NULL,
        "--samples", "30", "--tasks", "nli,offensiveness", "--personas", "religion,woman", "--profile", "release",
        "--no-progress", "--junitxml=junit.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    cases = {case.get("name"): case for case in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    for label, planted in (("planted", True), ("null", False)):
        for name in (gate.format(label) for gate in EXAMPLE_GATES):
            verdict = {p.get("name"): p.get("value") for p in cases[name].iter("property")}["falserefusal_verdict"]
            assert (cases[name].find("failure") is not None) == planted == (verdict == "FAIL"), name
    outcomes = read_results(pytester.path / "report" / "results.jsonl")[0]["custom_gates"]["outcomes"]
    # each model's NLI gate, the null model's 5 religion checks, the planted one's until its first FAIL (muslim, 2nd)
    assert len(outcomes) == 2 + 5 + 2
    assert all(o["alpha_family"] == pytest.approx(0.05 / 6) for o in outcomes)  # 2 x 2 built-in families + 2 custom ones
    assert "custom: test_baseline_refuses_nli_rarely[planted-nli]" in (pytester.path / "report" / "index.html").read_text()
