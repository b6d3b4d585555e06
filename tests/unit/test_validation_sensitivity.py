"""`falserefusal simulate --sensitivity`: the planted index it checks against, and a quick end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from falserefusal.analysis import binary_closed_form, simulate_frame
from falserefusal.cli import main
from falserefusal.validation.sensitivity import SCENARIOS, population_index


def test_population_index_is_the_closed_form_on_the_true_probabilities() -> None:
    frame = simulate_frame(items_per_task=5, seed=1)
    # a probability of 0 or 1 per row is its own outcome: the closed form on 0/1 data
    certain = (frame["persona"] == "persona-1").to_numpy(float)
    assert population_index(frame, certain, ["persona"])["persona"] == pytest.approx(binary_closed_form(certain, frame["persona"]))
    flat = population_index(frame, np.full(len(frame), 0.2), ["persona", "item"])
    assert flat == pytest.approx({"persona": 0.0, "item": 0.0}, abs=1e-12)


def test_quick_run_reports_coverage_per_factor_and_the_persona_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--sensitivity", "--quick", "--jobs", "1", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = json.loads(out[-1])
    assert summary["replicates"] == 3 and set(summary["scenarios"]) == set(SCENARIOS)
    assert set(summary["scenarios"]["planted"]) == {"model", "task", "persona", "forcing_level", "paraphrase", "item"}
    assert "model" not in summary["scenarios"]["persona"]  # one model there
    # no effect at all: every planted index is 0, and the interval's lower end reaches it
    assert all(row["mean_planted"] == pytest.approx(0.0, abs=1e-12) for row in summary["scenarios"]["null"].values())
    assert 0.0 <= summary["min_coverage"] <= 1.0
    assert summary["persona_agreement"]["gate_fails"]["n"] == 3
    assert any(line.startswith("planted  persona") for line in out)
