"""pytester tests of the report wiring: index.html at session end, the pytest-html summary, one JUnit case per gate."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

ARGS = ("--model", "scripted:base=0.05,persona.muslim=0.3", "--profile", "release", "--samples", "40", "--seed", "3",
        "--tasks", "offensiveness", "--personas", "religion", "--no-progress")


def test_html_summary_has_the_verdict_and_a_link_to_the_report(project: pytest.Pytester) -> None:
    result = project.runpytest(*ARGS, "--html", "out/pytest.html", "--junitxml", "out/junit.xml")
    result.assert_outcomes(failed=2, passed=4)  # the pooled rate gate and the muslim gate fail
    result.stdout.fnmatch_lines([f"report: {project.path / 'report' / 'index.html'}"])
    report = (project.path / "report" / "index.html").read_text()
    assert "FAIL — 2 of 6 gates failed" in report
    summary = (project.path / "out" / "pytest.html").read_text()
    assert "FAIL — 2 of 6 gates failed" in summary
    assert "<b>muslim</b>" in summary
    assert 'href="../report/index.html"' in summary  # relative to pytest.html
    assert re.search(r'<img alt="refusal rate per persona and task" src="data:image/svg\+xml;base64,', summary)
    cases = ET.parse(project.path / "out" / "junit.xml").getroot().iter("testcase")
    assert len(list(cases)) == 6  # one per gate, never one per sample


def test_report_dir_option_moves_the_report(project: pytest.Pytester) -> None:
    project.runpytest(*ARGS, "--report-dir", "elsewhere").assert_outcomes(failed=2, passed=4)
    assert (project.path / "elsewhere" / "index.html").is_file()
    assert (project.path / "elsewhere" / "results.jsonl").is_file()
    assert not (project.path / "report").exists()


def test_run_records_a_command_to_rerun_and_says_when_it_replaces_an_earlier_run(project: pytest.Pytester) -> None:
    first = project.runpytest(*ARGS, "--report-dir", "out")
    assert "replaced the previous run's" not in first.stdout.str()
    command = json.loads((project.path / "out" / "run.json").read_text())["command"]
    assert command.startswith(("pytest ", "python -m pytest ")), command
    assert "--samples 40 --seed 3" in command and "--report-dir out" in command and "site-packages" not in command
    second = project.runpytest(*ARGS, "--report-dir", "out")
    second.stdout.fnmatch_lines([f"note: replaced the previous run's results.jsonl, run.json and index.html in {project.path / 'out'}*"])
