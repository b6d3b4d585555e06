"""pytester tests of the plugin on the scripted backend: planted effects fail their gate, null models pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falserefusal.analysis import fit_logistic, persona_disparities, records_frame, sensitivity_table
from falserefusal.run.results import read_results as read_run


def read_results(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["kind"] == "run"
    return lines[1:]


def test_planted_persona_effect_fails_exactly_that_gate(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--model", "scripted:base=0.02,persona.muslim=0.30,rho=0.8",
        "--profile", "release", "--samples", "150", "--seed", "3", "--tasks", "offensiveness", "--no-progress",
    )
    # 1 rate gate + 15 disparity gates; only muslim fails (base 0.02: the pooled rate, 0.02 + 0.30 / 16 = 3.9%, is
    # below the 5% limit; at base 0.05 it is 6.9%, and the rate gate rightly fails too under the seed's new blocks)
    result.assert_outcomes(failed=1, passed=15)
    result.stdout.fnmatch_lines(["FAILED tests/refusal/test_gates.py::test_persona_disparity[[]offensiveness-muslim[]]*"])


def test_null_model_passes_every_gate(project: pytest.Pytester) -> None:
    result = project.runpytest("--model", "scripted:base=0.02,rho=0.8", "--profile", "release", "--samples", "150", "--no-progress")
    result.assert_outcomes(passed=3 * 16)
    records = read_results(project.path / "report" / "results.jsonl")
    assert len(records) == 3 * 150 * 16
    assert {r["case"]["persona"] for r in records} >= {"baseline", "muslim", "able_bodied"}


def test_rate_gate_fails_with_the_numbers_in_the_message(project: pytest.Pytester) -> None:
    result = project.runpytest("--model", "scripted:base=0.5", "--profile", "release", "--samples", "30",
                               "--tasks", "nli", "--personas", "religion", "--no-progress")
    result.assert_outcomes(failed=1, passed=5)
    result.stdout.fnmatch_lines(["*FAIL refusal rate nli*vs limit 5.0%*Cases: nli-b*"])


def test_same_seed_gives_identical_results_file(project: pytest.Pytester) -> None:
    args = ("--model", "scripted:base=0.1,persona.woman=0.1", "--samples", "20", "--seed", "11", "--no-progress")
    project.runpytest(*args)
    first = (project.path / "report" / "results.jsonl").read_text().splitlines()[1:]
    project.runpytest(*args)
    second = (project.path / "report" / "results.jsonl").read_text().splitlines()[1:]
    assert first == second
    project.runpytest(*args[:-3], "--seed", "12", "--no-progress")
    third = (project.path / "report" / "results.jsonl").read_text().splitlines()[1:]
    assert third != first


def test_terminal_summary_prints_rates_per_persona_and_task(project: pytest.Pytester) -> None:
    result = project.runpytest("--model", "scripted:base=0.0,persona.hindu=1.0", "--samples", "5", "--profile", "release", "--no-progress")
    result.stdout.fnmatch_lines(["*refusal rate per persona x task*", "*baseline*0.0%*", "*hindu*100.0%*100.0%*100.0%*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--samples", "0"), "*--samples 0: must be at least 1*"),
        (("--tasks", "poetry"), "*--tasks: unknown task poetry*"),
        (("--personas", "martian"), "*--personas: unknown persona martian*"),
        (("--profile", "yolo"), "*--profile yolo: not in*known profiles*"),
        (("--model", "./missing-model"), "*--model ./missing-model: no such file or folder*"),
        (("--backend", "tensorflow"), "*--backend tensorflow: unknown backend*"),
        (("--model", "no-such-org/no-such-model"), "*--model no-such-org/no-such-model: *hub*fix:*"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(project: pytest.Pytester, args: tuple[str, ...], message: str) -> None:
    result = project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_malformed_thresholds_yaml_names_the_file(project: pytest.Pytester) -> None:
    (project.path / "thresholds.yaml").write_text("profiles:\n  smoke:\n    alpha: 0.05\n    max_refusal_rate: 0.5\n    max_persona_disparity: 0.1\n    colour: red\n")
    result = project.runpytest("--model", "scripted:base=0", "--profile", "smoke")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *thresholds.yaml: profile 'smoke' has unknown key(s) colour*"])


def test_options_are_listed_in_one_help_group(project: pytest.Pytester) -> None:
    result = project.runpytest("--help")
    result.stdout.fnmatch_lines(["falserefusal: persona false-refusal gates:", "*--model=MODEL*", "*--samples=N*", "*--seed=N*",
                                 "*--profile=PROFILE*", "*--thresholds=PATH*", "*--report-dir=DIR*", "*--tasks=IDS*", "*--personas=IDS*"])


def test_options_can_be_set_in_the_ini_file(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\ntestpaths = tests/refusal\nfalserefusal_model = scripted:base=0\nfalserefusal_samples = 3\nfalserefusal_tasks = nli\n")
    result = project.runpytest("--no-progress", "--profile", "release")
    result.assert_outcomes(passed=16)
    assert len(read_results(project.path / "report" / "results.jsonl")) == 3 * 16


TWO_MODELS_ALPHA = "scripted:name=alpha,base=0.02,rho=0.8"
TWO_MODELS_BETA = "scripted:name=beta,base=0.2,persona.muslim=0.3,rho=0.8"


def test_two_scripted_models_in_one_run(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--model", TWO_MODELS_ALPHA, "--model", TWO_MODELS_BETA, "--profile", "release", "--samples", "150", "--seed", "3",
        "--tasks", "offensiveness", "--no-progress", "-v",
    )
    # beta refuses 20% (> the 5% limit) and more as a Muslim; alpha meets every limit
    result.assert_outcomes(failed=2, passed=30)
    result.stdout.fnmatch_lines(
        [
            "*test_refusal_rate[[]alpha-offensiveness[]] PASSED*",
            "*test_refusal_rate[[]beta-offensiveness[]] FAILED*",
            "*test_persona_disparity[[]alpha-offensiveness-muslim[]] PASSED*",
            "*test_persona_disparity[[]beta-offensiveness-muslim[]] FAILED*",
        ]
    )
    # two (model, task) families share the suite's alpha
    result.stdout.fnmatch_lines(["*FAIL persona disparity offensiveness/muslim [[]scripted:name=beta*alpha 0.025*"])

    _, records = read_run(project.path / "report" / "results.jsonl")
    frame = records_frame(records)
    assert frame.groupby("model").size().to_dict() == {TWO_MODELS_ALPHA: 150 * 16, TWO_MODELS_BETA: 150 * 16}

    regression = fit_logistic(frame)
    assert "C(model)" in regression.formula
    model_term = regression.table.set_index("term").loc[f"model[{TWO_MODELS_BETA}]"]
    assert model_term["ci_low"] > 1.0  # beta refuses more often than alpha, the reference level

    sensitivity = sensitivity_table(frame, n_boot=20).set_index("factor")
    assert sensitivity.loc["model", "n_levels"] == 2 and bool(sensitivity.loc["model", "distinguishable"])

    disparities = persona_disparities(frame).set_index(["model", "persona"])
    assert len(disparities) == 2 * 15
    assert disparities.loc[(TWO_MODELS_BETA, "muslim"), "ci_low"] > 0 > disparities.loc[(TWO_MODELS_ALPHA, "muslim"), "ci_low"]


def test_an_absolute_report_dir_given_with_a_space_does_not_move_the_project_root(project: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "out"
    result = project.runpytest("--model", "scripted:base=0", "--samples", "2", "--tasks", "nli", "--profile", "release",
                               "--no-progress", "--report-dir", str(elsewhere))
    result.assert_outcomes(passed=16)
    assert (elsewhere / "results.jsonl").is_file()


def test_a_model_that_breaks_off_mid_run_stops_the_session_once_with_exit_code_2(project: pytest.Pytester) -> None:
    # 20 blocks x 16 = 320 cases per task: the model answers the first task (nli) and breaks off in the second
    result = project.runpytest("--model", "scripted:base=0.1,fail_after=400", "--samples", "20", "--no-progress")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(passed=1, failed=1)  # the nli rate gate, then the first offensiveness gate; no more
    result.stdout.fnmatch_lines(["*Interrupted: generation stopped: *stopped answering after 400 answers*"
                                 "finished batches are in the generation cache, so a rerun resumes*"])
    assert "Traceback" not in result.stdout.str()
    records = read_results(project.path / "report" / "results.jsonl")
    assert len(records) == 320 and {r["case"]["task"] for r in records} == {"nli"}  # what was done is kept
