"""pytester tests of release gating against a baseline model: non-inferiority gates, saved baselines, sequential stop."""

from __future__ import annotations

import json

import pytest

CANDIDATE = "scripted:base=0.05,rho=0.8,name=candidate"
BASELINE = "scripted:base=0.05,rho=0.8,seed=7,name=baseline"
SMALL = ("--profile", "release", "--samples", "150", "--tasks", "offensiveness", "--no-progress")


def test_identical_scripted_models_pass_every_gate(project: pytest.Pytester) -> None:
    result = project.runpytest("--model", CANDIDATE, "--baseline-model", BASELINE, *SMALL, "-v")
    result.assert_outcomes(passed=32)  # 1 rate + 15 disparity + 1 non-inferiority + 15 persona non-inferiority
    result.stdout.fnmatch_lines(["*test_noninferiority[[]offensiveness[]] PASSED*",
                                 "*test_noninferiority_persona[[]offensiveness-muslim[]] PASSED*"])
    lines = [json.loads(line) for line in (project.path / "report" / "results.jsonl").read_text().splitlines()]
    assert lines[0]["baseline_model"] == BASELINE
    assert {line["model"] for line in lines[1:]} == {CANDIDATE, BASELINE}


def test_planted_persona_effect_fails_exactly_that_noninferiority_gate(project: pytest.Pytester) -> None:
    result = project.runpytest("--model", CANDIDATE + ",persona.muslim=0.4", "--baseline-model", BASELINE, *SMALL)
    # the candidate's own disparity gate for the persona fails too (+40 pp against the 2 pp tolerance); no other gate does
    result.assert_outcomes(failed=2, passed=30)
    result.stdout.fnmatch_lines([
        "*FAIL non-inferiority of persona disparity offensiveness/muslim*vs margin +3.0 pp*Flipped (refused by the candidate only): offensiveness-b*-muslim*",
        "FAILED tests/refusal/test_gates.py::test_noninferiority_persona[[]offensiveness-muslim[]]*",
    ])
    result.stdout.no_fnmatch_line("FAILED*test_noninferiority[[]*")


def test_without_a_baseline_the_noninferiority_tests_are_deselected(project: pytest.Pytester) -> None:
    result = project.runpytest("--model", CANDIDATE, *SMALL)
    result.assert_outcomes(passed=16)
    result.stdout.fnmatch_lines(["*2 deselected*"])


def test_saved_baseline_results_are_reused(project: pytest.Pytester) -> None:
    project.runpytest("--model", BASELINE, "--report-dir", "shipped", *SMALL).assert_outcomes(passed=16)
    result = project.runpytest("--model", CANDIDATE, "--baseline-results", "shipped/results.jsonl", *SMALL)
    result.assert_outcomes(passed=32)
    lines = (project.path / "report" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 2 * 150 * 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--seed", "5"), "*seed differs (saved 0, this run 5*"),
        (("--tasks", "nli"), "*task set differs (saved offensiveness, this run nli)*"),
        (("--samples", "160"), "*cases differ: 160 of this run's 2560 cases are not in it*"),
        (("--persona-placement", "user"), "*cases differ: * cases have other prompts (e.g. offensiveness-b00000-*"),
    ],
)
def test_mismatched_baseline_results_is_a_usage_error_naming_the_difference(
    project: pytest.Pytester, args: tuple[str, ...], message: str
) -> None:
    project.runpytest("--model", BASELINE, "--report-dir", "shipped", *SMALL)
    options = dict(zip(SMALL[::2], SMALL[1::2]))
    options.update(dict(zip(args[::2], args[1::2])))
    flat = [part for key, value in options.items() for part in ((key, value) if value != "--no-progress" else (key,))]
    result = project.runpytest("--model", CANDIDATE, "--baseline-results", "shipped/results.jsonl", *flat, "--no-progress")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --baseline-results *shipped/results.jsonl: not the same cases as this run: {message}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_sequential_profile_stops_a_clear_pass_early_and_reports_the_budget(project: pytest.Pytester) -> None:
    result = project.runpytest("--model", "scripted:base=0.0,name=c", "--baseline-model", "scripted:base=0.0,name=b",
                               "--profile", "release-sequential", "--samples", "500", "--tasks", "nli", "--no-progress")
    result.assert_outcomes(passed=32)
    # with no refusal seen, look 1 (100 blocks) already rules out the planned excess (mde 4 pp over the 2 pp
    # tolerance, 3 pp margins): every gate settles for futility; not shown below its limit, so INCONCLUSIVE (warn)
    result.stdout.fnmatch_lines(["*sequential stop: 1600 of 8000 cases per model (20% of the fixed budget*"])
    header = json.loads((project.path / "report" / "results.jsonl").read_text().splitlines()[0])
    assert header["budget"]["cases_used"] == 1600 and header["budget"]["cases_budget"] == 8000
