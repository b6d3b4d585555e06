"""Bad input and faults on `falserefusal run | report`: one line naming the input and the fix, exit 2, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falserefusal.cli import main

RUN = ["run", "--samples", "2", "--tasks", "nli", "--no-progress", "--no-cache"]


def usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line; it must exit 2 with exactly one line on stderr, which is returned."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("falserefusal: error: "), err
    return err[0]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"README": "hello"}, "a folder without config.json"),
        ({"config.json": '{"model_type": "llama"}'}, "no weights in the folder"),
        ({"config.json": "{not json", "model.safetensors": ""}, "is not valid JSON"),
        ({"config.json": '{"model_type": "mine", "auto_map": {"AutoModelForCausalLM": "m.M"}}', "model.safetensors": ""},
         "needs custom code (auto_map in config.json); fix: review it, then pass --trust-remote-code"),
        ({"config.json": '{"model_type": "no-such-architecture"}', "model.safetensors": ""}, "model_type 'no-such-architecture' is unknown"),
    ],
)
def test_a_folder_that_is_not_a_checkpoint_is_refused_before_generation(
    workdir: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str], expected: str
) -> None:
    folder = workdir / "ckpt"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    line = usage_error([*RUN, "--model", str(folder)], capsys)
    assert f"--model {folder}: " in line and expected in line and "fix:" in line
    assert not (workdir / "report").exists()  # nothing was generated or written


def test_a_gguf_that_is_not_gguf_is_refused_before_generation(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = workdir / "model.gguf"
    fake.write_text("version https://git-lfs.github.com/spec/v1\n")
    line = usage_error([*RUN, "--model", str(fake)], capsys)
    assert f"--model {fake}: not a GGUF file" in line and "fix:" in line
    assert not (workdir / "report").exists()


def test_a_model_that_answers_nothing_does_not_promise_a_resume(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(["run", "--samples", "2", "--tasks", "nli", "--no-progress", "--model", "scripted:base=0,fail_after=0"], capsys)
    assert line.startswith("falserefusal: error: generation stopped: ") and "resumes" not in line


def test_a_report_folder_under_a_regular_file_is_refused_before_generation(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "plain").write_text("a file, not a folder")
    line = usage_error([*RUN[:-1], "--model", "scripted:base=0", "--report-dir", "plain/out"], capsys)
    assert "--report-dir " in line and "plain/out: cannot write there" in line and "fix:" in line
    assert not (workdir / ".falserefusal-cache").exists()  # refused before the generation cache was touched


def test_report_refuses_an_unwritable_report_folder_up_front(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*RUN[:-1], "--model", "scripted:base=0", "--report-dir", "out"]) == 0
    (workdir / "plain").write_text("a file, not a folder")
    capsys.readouterr()
    line = usage_error(["report", "out/results.jsonl", "--report-dir", "plain/html"], capsys)
    assert "--report-dir plain/html: cannot write there" in line
