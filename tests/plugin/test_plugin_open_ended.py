"""pytester: `--tasks story` runs an open-ended (label-less) task and gates it; without --tasks it is not run."""

from __future__ import annotations

import pytest

ARGS = ("--model", "scripted:base=0.05,task.story=0.9,rho=0", "--samples", "12", "--personas", "religion",
        "--no-cache", "--no-progress", "-p", "no:randomly")


def test_tasks_story_runs_and_gates_the_open_ended_task(project: pytest.Pytester) -> None:
    result = project.runpytest(*ARGS, "--tasks", "offensiveness,story")
    # a planted 90% refusal rate fails story's rate gate (the smoke limit is far below it); offensiveness's 5% does not
    result.stdout.fnmatch_lines(["FAILED tests/refusal/test_gates.py::test_refusal_rate[[]story[]]*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    assert outcomes.get("passed") == 11  # 1 rate + 5 religion disparities for offensiveness, 5 for story
    assert (project.path / "report" / "results.jsonl").read_text().count('"task": "story"') == 12 * 6


def test_without_tasks_the_open_ended_tasks_are_not_collected(project: pytest.Pytester) -> None:
    result = project.runpytest(*ARGS, "--collect-only", "-q")
    items = [line for line in result.stdout.lines if line.startswith("tests/refusal/test_gates.py::")]
    assert {line.split("[")[1].split("-")[0].rstrip("]") for line in items} == {"nli", "offensiveness", "politeness"}
