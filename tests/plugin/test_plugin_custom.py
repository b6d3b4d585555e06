"""pytester tests of custom gates: the marker joins the alpha accounting and shows up in JUnit, results and report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from falserefusal.cli import main
from falserefusal.runner import read_results

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
    project.makepyfile(**{"tests/refusal/test_custom": CUSTOM_TEST})
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
    project.makepyfile(**{"tests/refusal/test_custom": "def test_x(falserefusal_custom_gate):\n    pass\n"})
    result = project.runpytest("--model", "scripted:base=0", "--samples", "2", "--tasks", "nli", "--no-progress")
    result.stdout.fnmatch_lines(["*asks for the falserefusal_custom_gate fixture without @pytest.mark.falserefusal_custom_gate*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED
