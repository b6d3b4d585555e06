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


def test_tasks_in_two_languages_run_with_a_language_column_and_a_language_table(project: pytest.Pytester) -> None:
    import json

    result = project.runpytest("--model", "scripted:base=0.2,rho=0", "--samples", "4", "--personas", "muslim",
                               "--no-cache", "--no-progress", "-p", "no:randomly", "--tasks", "nli,nli_es")
    assert result.ret in (0, 1), result.stdout.str()
    rows = [json.loads(line) for line in (project.path / "report" / "results.jsonl").read_text().splitlines()]
    languages = {(r["case"]["task"], r["case"]["language"]) for r in rows if r.get("kind") == "generation"}
    assert languages == {("nli", "en"), ("nli_es", "es")}
    spanish = [r for r in rows if r.get("kind") == "generation" and r["case"]["persona"] == "muslim"
               and r["case"]["task"] == "nli_es"]
    assert all("un musulmán" in r["case"]["messages"][0]["content"] for r in spanish)
    html = (project.path / "report" / "index.html").read_text()
    assert "Refusal rate by language × persona" in html and "C(language" in html


def test_without_tasks_the_translated_tasks_are_not_collected(project: pytest.Pytester) -> None:
    # the default run is the one before languages: 3 rate gates + 3 tasks x 15 personas (the same 48 items)
    result = project.runpytest("--model", "scripted:base=0.05", "--samples", "2", "--collect-only", "-q")
    items = [line for line in result.stdout.lines if line.startswith("tests/refusal/test_gates.py::")]
    assert len(items) == 48 and not [line for line in items if "nli_es" in line or "nli_de" in line]
