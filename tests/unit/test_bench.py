"""The benchmark's pure parts: case selection and its refusal of backends it cannot time."""

from __future__ import annotations

from pathlib import Path

import pytest

from falserefusal.cli import main
from falserefusal.run.config import RunConfig
from falserefusal.run.prepare import prepare
from falserefusal.validation.bench import pick_cases

ROOT = Path(__file__).resolve().parents[2]


def test_pick_cases_spreads_over_tasks_in_suite_order() -> None:
    cases = prepare(RunConfig(samples=2, root=str(ROOT), progress=False)).cases
    picked = pick_cases(cases, 10)
    assert len(picked) == 10
    counts = {task: sum(c.task == task for c in picked) for task in {c.task for c in cases}}
    assert max(counts.values()) - min(counts.values()) <= 1
    positions = [cases.index(c) for c in picked]
    assert positions == sorted(positions)
    assert pick_cases(cases, 10) == picked


def test_bench_refuses_a_backend_without_model_generate(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["bench", "--model", "scripted:base=0.1", "--cases", "4", "--rounds", "1"]) == 2
    assert "needs the transformers backend" in capsys.readouterr().err
