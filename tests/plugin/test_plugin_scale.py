"""Scaling out on the scripted model: a killed run resumes from the cache, -n 2 equals -n 0, --rescore, bad caches."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

#: 0.3 s per batch of 8: 20 batches take 6 s, long enough to kill the run in the middle
SLOW_MODEL = "scripted:base=0.1,persona.muslim=0.3,delay=0.3"
ARGS = ("--samples", "10", "--tasks", "nli", "--seed", "4", "--batch-size", "8", "--no-progress")


def run_file(report_dir: Path) -> dict:
    return json.loads((report_dir / "run.json").read_text())


def cached_rows(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is being created
        return 0


def test_a_killed_run_resumes_without_recomputing_and_ends_as_an_uninterrupted_run(project: pytest.Pytester) -> None:
    cache = project.path / "cache"
    db = cache / "generations.sqlite"
    total = 10 * 16
    process = project.popen(
        [sys.executable, "-m", "pytest", "--model", SLOW_MODEL, *ARGS, "--cache-dir=cache", "--report-dir=killed"],
        stdout=open(project.path / "killed.out", "wb"), stderr=open(project.path / "killed.err", "wb"),
    )
    deadline = time.monotonic() + 180
    while cached_rows(db) < 3 * 8 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    before = cached_rows(db)
    assert 3 * 8 <= before < total, (project.path / "killed.err").read_text()[-2000:]
    assert before % 8 == 0  # whole batches only: the one in flight is lost, nothing half-written
    assert not (project.path / "killed" / "results.jsonl").exists()

    resumed = project.runpytest_subprocess("--model", SLOW_MODEL, *ARGS, "--cache-dir=cache", "--report-dir=resumed")
    resumed.assert_outcomes(passed=1 + 15)
    assert run_file(project.path / "resumed")["cache"] | {"path": None} == {
        "enabled": True, "rescore": False, "path": None, "hits": before, "generated": total - before}

    uninterrupted = project.runpytest_subprocess("--model", SLOW_MODEL, *ARGS, "--no-cache", "--report-dir=whole")
    uninterrupted.assert_outcomes(passed=1 + 15)
    assert (project.path / "resumed" / "results.jsonl").read_text() == (project.path / "whole" / "results.jsonl").read_text()


def gate_outcomes(junit: Path) -> dict[str, str]:
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = "failed" if failed else "passed"
    return outcomes


def test_two_workers_give_the_same_results_and_gate_outcomes_as_one_process(project: pytest.Pytester) -> None:
    args = ("--model", "scripted:base=0.02,persona.muslim=0.3", "--profile", "release", "--samples", "40", "--seed", "9",
            "--no-progress", "--no-cache")
    one = project.runpytest_subprocess("-n", "0", *args, "--report-dir=one", "--junitxml=one.xml")
    two = project.runpytest_subprocess("-n", "2", *args, "--report-dir=two", "--junitxml=two.xml")
    outcomes = gate_outcomes(project.path / "one.xml")
    assert len(outcomes) == 48 and "failed" in outcomes.values() and "passed" in outcomes.values()
    assert gate_outcomes(project.path / "two.xml") == outcomes
    assert one.ret == two.ret == pytest.ExitCode.TESTS_FAILED
    assert (project.path / "one" / "results.jsonl").read_text() == (project.path / "two" / "results.jsonl").read_text()
    # each (model, task) family generated once, on one worker: no case was generated twice
    assert run_file(project.path / "two")["cache"]["generated"] == 3 * 40 * 16
    two.stdout.fnmatch_lines(["*2 workers*"])  # it really ran on two workers (which one runs which family varies)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_corrupt_cache_file_is_a_usage_error_naming_it(project: pytest.Pytester, workers: str) -> None:
    (project.path / "cache").mkdir()
    (project.path / "cache" / "generations.sqlite").write_text("not a database, only text " * 100)
    result = project.runpytest_subprocess("-n", workers, "--model", "scripted:base=0", "--samples", "2", "--cache-dir=cache")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: */cache/generations.sqlite: not a usable falserefusal generation cache*fix: delete the file*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


RULES_THAT_CALL_ANSWERS_REFUSALS = """\
refusal:
  answer_is:
    strength: strong
    patterns: ["^The answer is"]
"""


def test_rescore_relabels_cached_generations_with_new_rules_without_generating(project: pytest.Pytester) -> None:
    args = ("--model", "scripted:base=0.05", "--samples", "6", "--tasks", "politeness", "--profile", "release", "--no-progress",
            "--cache-dir=cache")
    project.runpytest("--report-dir=first", *args).assert_outcomes(passed=16)
    (project.path / "rules.yaml").write_text(RULES_THAT_CALL_ANSWERS_REFUSALS)
    result = project.runpytest("--report-dir=again", "--rescore", "--refusal-rules", "rules.yaml", *args)
    result.assert_outcomes(passed=15, failed=1)  # answers are now refusals: the rate gate fails
    first = [json.loads(line) for line in (project.path / "first" / "results.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (project.path / "again" / "results.jsonl").read_text().splitlines()]
    assert [r["response"] for r in first[1:]] == [r["response"] for r in again[1:]]
    assert [r["refused"] for r in again[1:]] == [r["response"].startswith("The answer is") for r in again[1:]]
    assert [r["refused"] for r in first[1:]] == [not r["response"].startswith("The answer is") for r in first[1:]]
    assert again[0]["detector_version"] != first[0]["detector_version"]
    assert run_file(project.path / "again")["cache"]["generated"] == 0
    assert run_file(project.path / "again")["cache"]["hits"] == 6 * 16
    result.stdout.fnmatch_lines(["cache: 96 generations re-labelled from *generations.sqlite, 0 generated"])


def test_rescore_of_generations_never_made_says_which_and_how_many(project: pytest.Pytester) -> None:
    args = ("--model", "scripted:base=0.05", "--tasks", "nli", "--no-progress", "--cache-dir=cache")
    project.runpytest("--samples", "2", *args).assert_outcomes(passed=16)
    result = project.runpytest("--samples", "3", "--rescore", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --rescore: 16 of 48 generations of *nli are not in the cache *generations.sqlite "
                                 "(e.g. nli-b00002-*); fix: run once without --rescore*"])
