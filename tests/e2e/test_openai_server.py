"""The OpenAI-compatible backend against a real server (llama.cpp serving the embedded SmolLM2 on loopback).

The same product suite as tests/e2e/test_smollm2_suite.py, small, then the failure paths a user meets first: a
model name the server does not serve, a key it rejects, a port where nothing listens, a too-short timeout.
"""

from __future__ import annotations

# Known: llama-cpp-python 0.3.36 with fastapi 0.165/starlette 1.10 sometimes stalls a request before it reaches
# the model (seen under load); the short --request-timeout plus retries recovers, so these tests stay bounded.
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from falserefusal.cli import main
from falserefusal.generation.backends import BackendOptions
from falserefusal.generation.backends.openai_compat import OpenAICompatibleBackend
from falserefusal.types import FalseRefusalError, GenerationRequest, Record

ROOT = Path(__file__).resolve().parents[2]
SUITE_ARGS = ("--samples", "2", "--tasks", "nli", "--personas", "religion", "--max-new-tokens", "32", "--seed", "7",
              "--profile", "smoke", "--concurrency", "4", "--request-timeout", "90", "--max-retries", "4")


def options(server: Any, **changes: object) -> BackendOptions:
    base = BackendOptions(base_url=server.base_url, api_key_env=server.key_env, concurrency=4, timeout_s=20.0, max_retries=4)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served_run(llama_server: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    report_dir = tmp_path_factory.mktemp("served")
    command = [sys.executable, "-m", "pytest", "tests/refusal", "-p", "no:randomly", "-p", "no:cacheprovider", "--no-progress",
               "--model", f"openai:{llama_server.model}", "--base-url", llama_server.base_url,
               "--api-key-env", llama_server.key_env, "--report-dir", str(report_dir), *SUITE_ARGS]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    return result, report_dir


def test_the_suite_runs_against_the_served_model_and_evaluates_its_gates(served_run) -> None:
    result, _ = served_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "6 passed" in result.stdout  # 1 rate gate + 5 religion disparity gates
    assert "refusal rate per persona x task" in result.stdout and "profile: smoke" in result.stdout


def test_served_results_record_every_generation_and_the_server_identity(served_run, llama_server: Any) -> None:
    _, report_dir = served_run
    lines = [json.loads(line) for line in (report_dir / "results.jsonl").read_text().splitlines()]
    header, records = lines[0], [Record.from_dict(line) for line in lines[1:]]
    identity = header["model_identities"][f"openai:{llama_server.model}"]
    assert identity["base_url"] == llama_server.base_url and identity["model_card"]["id"] == llama_server.model
    assert identity["backend"] == "openai" and identity["temperature"] == 0.0
    assert len(records) == 2 * 6  # 2 blocks x (baseline + 5 religion personas)
    assert all(r.backend == "openai" and r.response for r in records)
    assert all(r.rule.startswith(("refusal:", "compliance:", "model:", "non_answer:")) for r in records)  # rule or model reading
    assert all(r.outcome in ("refusal", "compliance", "non_answer") and r.refused == (r.outcome == "refusal") for r in records)
    assert all(0 < r.n_tokens <= 32 and r.finish_reason in {"stop", "length"} for r in records)
    assert {r.case.persona for r in records} == {"baseline", *header["personas"]}


def test_served_greedy_answers_repeat_whatever_the_concurrency(served_run, llama_server: Any) -> None:
    _, report_dir = served_run
    records = [Record.from_dict(json.loads(line)) for line in (report_dir / "results.jsonl").read_text().splitlines()[1:]][:6]
    requests = [GenerationRequest(r.case.case_id, r.case.messages) for r in records]
    backend = OpenAICompatibleBackend(f"openai:{llama_server.model}", options(llama_server, concurrency=1))
    try:
        again = backend.generate(requests, max_new_tokens=32)
    finally:
        backend.close()
    assert [c.text for c in again] == [r.response for r in records]  # the suite ran at --concurrency 4


def test_an_unknown_model_is_one_usage_line_naming_the_served_models(
    llama_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # llama.cpp's server answers any model name with its own model: only the /v1/models check catches a typo
    monkeypatch.chdir(ROOT)
    code = main(["run", "--model", "openai:smolm2", "--base-url", llama_server.base_url, "--api-key-env", llama_server.key_env,
                 "--tasks", "nli", "--samples", "1", "--no-progress", "--report-dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"falserefusal: error: --model openai:smolm2: {llama_server.base_url} does not serve 'smolm2'; "
        f"fix: use openai:NAME with one of: {llama_server.model}"
    ]
    assert not (tmp_path / "results.jsonl").exists()


def test_a_rejected_key_names_the_variable_to_set(llama_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALSEREFUSAL_E2E_WRONG_KEY", "sk-wrong")
    with pytest.raises(FalseRefusalError) as caught:
        OpenAICompatibleBackend(f"openai:{llama_server.model}", options(llama_server, api_key_env="FALSEREFUSAL_E2E_WRONG_KEY"))
    message = str(caught.value)
    assert message.startswith(f"--model openai:{llama_server.model} at {llama_server.base_url}: 401")
    assert "$FALSEREFUSAL_E2E_WRONG_KEY holds a key the server rejects" in message and "--api-key-env" in message


def test_a_closed_port_fails_after_the_retries_with_one_usage_line(
    closed_base_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    url = closed_base_url
    code = main(["run", "--model", "openai:smollm2", "--base-url", url, "--max-retries", "2", "--request-timeout", "5",
                 "--tasks", "nli", "--samples", "1", "--no-progress", "--report-dir", str(tmp_path)])
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"falserefusal: error: --base-url {url}: cannot connect (") and "3 tries" in line
    assert line.endswith("fix: start the server or correct --base-url")


def test_a_request_timeout_names_the_option(llama_server: Any) -> None:
    with pytest.raises(FalseRefusalError, match=r"no answer within --request-timeout 0.001s \(1 try\); fix: raise --request-timeout"):
        OpenAICompatibleBackend(f"openai:{llama_server.model}", options(llama_server, timeout_s=0.001, max_retries=0))
