"""The `falserefusal run` command line: same runner, exit codes 0 / 1 (gate failed) / 2 (usage error)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from falserefusal.cli import main
from falserefusal.validation.simulation_plan import JSON_KEYS


def test_run_passes_a_null_model_and_writes_results(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--model", "scripted:base=0.01", "--profile", "release", "--samples", "20", "--no-progress",
                 "--report-dir", "out"])
    assert code == 0
    lines = (workdir / "out" / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "run" and len(lines) == 1 + 3 * 20 * 16
    # 20 blocks FAIL nothing; what they cannot PASS is INCONCLUSIVE, which the release profile only warns about
    assert re.search(r"gates: \d+ pass, 0 fail, \d+ inconclusive \(inconclusive: warn\); 0 of 48 fail CI", capsys.readouterr().out)


def test_run_exits_1_when_a_gate_fails(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--model", "scripted:base=0.0,persona.atheist=0.5", "--profile", "release", "--samples", "60",
                 "--tasks", "politeness", "--no-progress"])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL persona disparity politeness/atheist" in out and re.search(r"gates: \d+ pass, 1 fail, .*; 1 of 16 fail CI", out)


def test_an_inconclusive_gate_fails_the_run_under_inconclusive_fail(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "thresholds.yaml").write_text(
        "profiles:\n  strict:\n    alpha: 0.05\n    max_refusal_rate: 0.5\n    max_persona_disparity: 0.02\n"
        "    inconclusive: fail\n  lenient:\n    alpha: 0.05\n    max_refusal_rate: 0.5\n    max_persona_disparity: 0.02\n"
        "    inconclusive: pass\n")
    args = ["run", "--model", "scripted:base=0.05", "--samples", "10", "--tasks", "nli", "--personas", "muslim", "--no-progress"]
    assert main([*args, "--profile", "strict"]) == 1  # 10 blocks cannot show a disparity below 2 pp
    out = capsys.readouterr().out
    assert "INCONCLUSIVE persona disparity nli/muslim" in out and "smallest effect this run FAILs with 80% power" in out
    assert main([*args, "--profile", "lenient"]) == 0
    assert "0 fail" in capsys.readouterr().out


def test_a_model_that_breaks_off_exits_2_and_keeps_the_finished_tasks(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--samples", "20", "--no-progress", "--report-dir", "out"]
    assert main([*args, "--model", "scripted:base=0.1,fail_after=400"]) == 2  # answers nli (320), breaks in the next task
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("falserefusal: error: generation stopped: scripted:base=0.1,fail_after=400: ")
    assert err[0].endswith("finished batches are in the generation cache, so a rerun resumes")
    lines = (workdir / "out" / "results.jsonl").read_text().splitlines()
    assert {json.loads(line)["case"]["task"] for line in lines[1:]} == {"nli"} and len(lines) == 1 + 320
    # a run that made nothing leaves the earlier results file alone
    assert main([*args, "--model", "scripted:base=0.1,fail_after=0", "--no-cache"]) == 2
    assert "fail_after=400" in (workdir / "out" / "results.jsonl").read_text().splitlines()[0]
    assert "so a rerun resumes" not in capsys.readouterr().err  # nothing was cached


def test_the_rate_table_names_several_models_by_their_labels(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["run", "--model", "scripted:name=alpha,base=0", "--model", "scripted:name=beta,base=0,persona.jewish=1",
          "--samples", "3", "--tasks", "nli,politeness", "--personas", "religion", "--no-progress"])
    table = capsys.readouterr().out.split("refusal rate per persona")[-1]
    header = next(line for line in table.splitlines() if "alpha/nli" in line)
    assert header.split() == ["alpha/nli", "alpha/politeness", "beta/nli", "beta/politeness", "n", "per", "cell"]
    assert next(line for line in table.splitlines() if line.startswith("jewish")).split() == [
        "jewish", "0.0%", "0.0%", "100.0%", "100.0%", "3"]


def test_run_exits_2_with_one_line_on_bad_input(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--samples", "0", "--model", "scripted:base=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["falserefusal: error: --samples 0: must be at least 1 request block per task; fix: e.g. --samples 40"]


def test_python_dash_m_is_the_same_command(workdir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "falserefusal", "run", "--model", "scripted:base=0", "--tasks", "nli",
                             "--samples", "2", "--profile", "release", "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (workdir / "report" / "results.jsonl").is_file()


def test_cli_simulate_prints_a_table_and_json_last(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--quick", "--replicates", "2", "--samples", "40", "--jobs", "1", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert any(line.startswith("(a) family-wise false-fail rate") for line in lines)
    summary = json.loads(lines[-1])
    assert set(JSON_KEYS) <= set(summary) and summary["replicates"] == 2
    assert summary["settings"]["samples"] == 40 and summary["settings"]["profile"] == "release"
    assert all(math.isfinite(summary[key]) for key in JSON_KEYS)


def test_cli_simulate_rejects_a_bad_rho(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--quick", "--rho", "1.5"]) == 2
    assert "--rho 1.5" in capsys.readouterr().err
