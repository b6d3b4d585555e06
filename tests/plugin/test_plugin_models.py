"""pytester: several --model in one run; the model is a factor in the gate ids, the alpha split and the analysis."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from falserefusal.analysis import fit_logistic, persona_disparities, records_frame, sensitivity_table
from falserefusal.runner import read_results

ROOT = Path(__file__).resolve().parents[2]
ALPHA = "scripted:name=alpha,base=0.02,rho=0.8"
BETA = "scripted:name=beta,base=0.2,persona.muslim=0.3,rho=0.8"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    shutil.copytree(ROOT / "fixtures", pytester.path / "fixtures")
    shutil.copytree(ROOT / "tests" / "refusal", pytester.path / "tests" / "refusal")
    shutil.copy(ROOT / "thresholds.yaml", pytester.path / "thresholds.yaml")
    pytester.makeini("[pytest]\ntestpaths = tests/refusal\n")
    return pytester


def test_two_scripted_models_in_one_run(project: pytest.Pytester) -> None:
    result = project.runpytest(
        "--model", ALPHA, "--model", BETA, "--profile", "release", "--samples", "150", "--seed", "3",
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

    _, records = read_results(project.path / "report" / "results.jsonl")
    frame = records_frame(records)
    assert frame.groupby("model").size().to_dict() == {ALPHA: 150 * 16, BETA: 150 * 16}

    regression = fit_logistic(frame)
    assert "C(model)" in regression.formula
    model_term = regression.table.set_index("term").loc[f"model[{BETA}]"]
    assert model_term["ci_low"] > 1.0  # beta refuses more often than alpha, the reference level

    sensitivity = sensitivity_table(frame, n_boot=20).set_index("factor")
    assert sensitivity.loc["model", "n_levels"] == 2 and bool(sensitivity.loc["model", "distinguishable"])

    disparities = persona_disparities(frame).set_index(["model", "persona"])
    assert len(disparities) == 2 * 15
    assert disparities.loc[(BETA, "muslim"), "ci_low"] > 0 > disparities.loc[(ALPHA, "muslim"), "ci_low"]
