"""pytester tests of bad input and faults on the plugin: one usage error line, the right exit code, no silent verdict."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SCRIPTED = ("--model", "scripted:base=0.02,rho=0", "--samples", "20", "--tasks", "nli", "--no-cache", "--no-progress")


def test_option_value_after_a_space_keeps_the_projects_settings(project: pytest.Pytester, tmp_path: Path) -> None:
    """`--report-dir DIR` with DIR existing outside the project was read as a test path by pytest's first pass:
    rootdir moved there, pyproject's falserefusal_thresholds was dropped and a failing suite passed on its second run."""
    (project.path / "strict.yaml").write_text(
        "profiles:\n  release:\n    alpha: 0.05\n    samples: 20\n    max_refusal_rate: 0.001\n    max_persona_disparity: 0.5\n"
    )
    (project.path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests/refusal"]\nfalserefusal_thresholds = "strict.yaml"\n'
    )
    out = tmp_path / "out_demo"
    out.mkdir()  # the second run of the reproduction: the report folder exists
    for spelling in (("--report-dir", str(out)), (f"--report-dir={out}",)):
        result = project.runpytest(*SCRIPTED, *spelling)
        result.assert_outcomes(failed=1, passed=15)
        result.stdout.fnmatch_lines([f"rootdir: {project.path}", "configfile: pyproject.toml*"])
        assert (out / "results.jsonl").is_file()


def usage_error(result: pytest.RunResult) -> str:
    """pytest must stop with exit 4 and one `ERROR:` line, no traceback, no gate run; the line is returned."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: "), errors
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert not re.search(r"\d+ (passed|failed)", result.stdout.str())
    return errors[0]


@pytest.mark.parametrize("make", ["folder", "gguf"])
def test_a_model_path_that_is_not_a_model_is_a_usage_error(project: pytest.Pytester, make: str) -> None:
    if make == "folder":
        (project.path / "ckpt").mkdir()
        model = "./ckpt"
    else:
        (project.path / "fake.gguf").write_text("not a gguf")
        model = "./fake.gguf"
    line = usage_error(project.runpytest("--model", model, *SCRIPTED[2:]))
    assert f"--model {model}: " in line and "fix:" in line


@pytest.mark.parametrize("option", ["--seed", "--samples"])
def test_a_non_number_under_xdist_is_a_usage_error_not_an_internal_error(project: pytest.Pytester, option: str) -> None:
    line = usage_error(project.runpytest_subprocess("-n", "2", option, "abc", *SCRIPTED[:2], "--tasks", "nli", "--no-progress"))
    assert line.startswith(f"ERROR: {option} abc: not a whole number; fix: give e.g. {option} ")


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ("refusal:\n  mine:\n    strength: strong\n    patterns: ['(unclosed']\n", "is not a valid regex"),
        (None, "rules.yaml"),
    ],
)
def test_bad_refusal_rules_are_a_usage_error_not_a_failed_gate(project: pytest.Pytester, rules: str | None, expected: str) -> None:
    if rules is not None:
        (project.path / "rules.yaml").write_text(rules)
    line = usage_error(project.runpytest(*SCRIPTED, "--refusal-rules", "rules.yaml"))
    assert "rules.yaml" in line and expected in line


def test_a_cache_row_failing_its_checksum_is_a_usage_error_before_generation(project: pytest.Pytester) -> None:
    import sqlite3

    args = (*SCRIPTED[:4], "--tasks", "nli", "--no-progress", "--cache-dir", "gen-cache")
    project.runpytest(*args).assert_outcomes(passed=16)
    with sqlite3.connect(project.path / "gen-cache" / "generations.sqlite") as db:
        db.execute("UPDATE generations SET text = 'tampered' WHERE rowid = 1")
    line = usage_error(project.runpytest(*args))
    assert "generations.sqlite: not a usable falserefusal generation cache" in line and "fails its checksum" in line


def test_pytest_and_the_command_line_write_the_same_results_from_two_checkouts(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header held absolute paths (thresholds, task files), so the same run from another folder differed."""
    import shutil

    from falserefusal.cli import main

    (project.path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests/refusal"]\n')
    assert main(["init", str(project.path)]) == 0  # the project's own thresholds.yaml and fixtures/
    other = tmp_path / "second-checkout"
    shutil.copytree(project.path, other)
    args = ("--model", "scripted:base=0.1", "--samples", "2", "--tasks", "nli", "--no-cache", "--no-progress")
    assert project.runpytest(*args, "--report-dir=out").ret in (0, 1)  # the verdict is not the point here
    monkeypatch.chdir(other)
    assert main(["run", *args, "--report-dir", "out"]) in (0, 1)
    first, second = (project.path / "out" / "results.jsonl").read_bytes(), (other / "out" / "results.jsonl").read_bytes()
    assert b'"source": "thresholds.yaml"' in first and b'"nli": "fixtures/tasks/nli.yaml"' in first
    assert first == second
