"""Scaling out on the real SmolLM2 (32 cases): a SIGKILLed run resumes from the cache, and -n 2 equals -n 0."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: 2 tasks x 1 block x 16 personas = 32 cases in 8 batches of 4
SMALL = ("--tasks", "nli,politeness", "--samples", "1", "--max-new-tokens", "32", "--batch-size", "4", "--seed", "3")
COMMAND = [sys.executable, "-m", "pytest", "tests/refusal", "-p", "no:randomly", "--no-progress", *SMALL]


def run_suite(report_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*COMMAND, f"--report-dir={report_dir}", f"--junitxml={report_dir / 'junit.xml'}", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ))


def outcomes(report_dir: Path) -> dict[str, bool]:
    root = ET.parse(report_dir / "junit.xml").getroot()
    return {case.get("name", ""): case.find("failure") is None for case in root.iter("testcase")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    report_dir = tmp_path_factory.mktemp("whole")
    result = run_suite(report_dir, "--no-cache")
    assert (report_dir / "results.jsonl").is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    return report_dir


def cached_rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_killed_smollm2_run_resumes_from_the_cache_and_matches_an_uninterrupted_run(uninterrupted: Path, tmp_path: Path) -> None:
    db = tmp_path / "cache" / "generations.sqlite"
    process = subprocess.Popen([*COMMAND, f"--report-dir={tmp_path / 'killed'}", f"--cache-dir={tmp_path / 'cache'}"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while cached_rows(db) < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    before = cached_rows(db)
    assert 4 <= before < 32 and before % 4 == 0  # whole batches only, and the run did not finish

    resumed = run_suite(tmp_path / "resumed", f"--cache-dir={tmp_path / 'cache'}")
    cache = json.loads((tmp_path / "resumed" / "run.json").read_text())["cache"]
    assert (cache["hits"], cache["generated"]) == (before, 32 - before), resumed.stdout[-2000:]
    assert (tmp_path / "resumed" / "results.jsonl").read_text() == (uninterrupted / "results.jsonl").read_text()
    assert outcomes(tmp_path / "resumed") == outcomes(uninterrupted)



def test_two_xdist_workers_give_the_same_results_and_gate_outcomes_as_one_process(uninterrupted: Path, tmp_path: Path) -> None:
    # two tasks are two (model, task) families, so each worker loads SmolLM2 and generates one of them
    result = run_suite(tmp_path, "--no-cache", "-n", "2")
    assert "2 workers" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "results.jsonl").read_text() == (uninterrupted / "results.jsonl").read_text()
    assert outcomes(tmp_path) == outcomes(uninterrupted)
