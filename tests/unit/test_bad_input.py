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


def test_a_lone_surrogate_in_model_text_is_stored_and_reported(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A served model's JSON can carry "\\ud800": it crashed the first cache commit and the report of a failed gate."""
    from falserefusal.generation.backends.scripted import ScriptedBackend

    plain = ScriptedBackend.answers
    monkeypatch.setattr(ScriptedBackend, "answers", lambda self, requests: [t + " \ud800!" for t in plain(self, requests)])
    args = ["run", "--samples", "3", "--tasks", "nli", "--no-progress", "--model", "scripted:base=0.9", "--profile", "release"]
    assert main(args) == 1  # the refusal-rate gate fails: its evidence (with the text) goes into the report
    results = (workdir / "report" / "results.jsonl").read_text(encoding="utf-8")
    assert main(args) == 1  # the second run reads every answer back from the cache
    assert (workdir / "report" / "results.jsonl").read_text(encoding="utf-8") == results
    assert "cache: 48 generations from" in capsys.readouterr().out
    answers = [json.loads(line)["response"] for line in results.splitlines()[1:]]
    assert len(answers) == 48 and all(answer.endswith(" \ufffd!") for answer in answers)
    assert "\ufffd!" in (workdir / "report" / "index.html").read_text(encoding="utf-8")
    assert not list((workdir / "report").glob("*.tmp"))


def test_the_report_writes_unencodable_text_escaped_and_leaves_no_tmp(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*RUN[:-1], "--model", "scripted:base=0.9", "--profile", "release", "--report-dir", "out"]) == 1
    path = workdir / "out" / "results.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    edited = [lines[0]] + [json.dumps({**json.loads(line), "response": "I'm sorry \ud800"}) for line in lines[1:]]
    path.write_text("\n".join(edited) + "\n", encoding="utf-8")  # json.dumps escapes the surrogate as \\ud800
    (workdir / "out" / "index.html").unlink()
    assert main(["report", str(path)]) == 0
    assert "I&#39;m sorry \\ud800" in (workdir / "out" / "index.html").read_text(encoding="utf-8")
    assert not list((workdir / "out").glob("*.tmp"))


def test_run_reads_the_falserefusal_settings_of_pyproject(workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nfalserefusal_model = ["scripted:base=0"]\nfalserefusal_samples = "3"\n'
        'falserefusal_tasks = "nli"\nfalserefusal_report_dir = "from-pyproject"\nfalserefusal_no_cache = true\n'
    )
    (workdir / "sub").mkdir()
    monkeypatch.chdir(workdir / "sub")  # as pytest does, the file is found above, and paths resolve against its folder
    assert main(["run", "--no-progress"]) == 0
    lines = (workdir / "from-pyproject" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 3 * 16 and json.loads(lines[0])["models"] == ["scripted:base=0"]
    assert not (workdir / ".falserefusal-cache").exists()  # falserefusal_no_cache = true
    assert main(["run", "--no-progress", "--samples", "2"]) == 0  # the command line overrides the file
    assert len((workdir / "from-pyproject" / "results.jsonl").read_text().splitlines()) == 1 + 2 * 16
    (workdir / "pyproject.toml").write_text('[tool.pytest.ini_options]\nfalserefusal_sample = "3"\n')
    capsys.readouterr()
    line = usage_error(["run", "--no-progress"], capsys)
    assert "pyproject.toml: falserefusal_sample is not a falserefusal option; fix:" in line


def test_a_tampered_cache_row_stops_the_run_before_generation(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    args = ["run", "--samples", "2", "--tasks", "nli", "--no-progress", "--model", "scripted:base=0", "--report-dir", "out"]
    assert main(args) == 0
    results = (workdir / "out" / "results.jsonl").read_text()
    with sqlite3.connect(workdir / ".falserefusal-cache" / "generations.sqlite") as db:
        db.execute("UPDATE generations SET text = 'tampered' WHERE rowid = 3")
    capsys.readouterr()
    line = usage_error(args, capsys)
    assert "fails its checksum" in line and "fix: delete the file" in line and "generation stopped" not in line
    assert (workdir / "out" / "results.jsonl").read_text() == results  # nothing lost


def nli_rows(path: Path, labels: list[str]) -> Path:
    path.write_text("\n".join(json.dumps({"premise": f"P{i}.", "hypothesis": "H.", "label": label}) for i, label in enumerate(labels)))
    return path


def test_dataset_rows_outside_the_labels_are_counted_and_too_many_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = nli_rows(workdir / "half.jsonl", ["entailment", "maybe", "neutral", "unsure"])  # the sweep's 2 of 4
    line = usage_error([*RUN, "--model", "scripted:base=0", "--dataset", f"nli={bad}"], capsys)
    assert "half.jsonl: 2 of 4 rows have a label outside entailment, neutral, contradiction (e.g. 'maybe')" in line
    few = nli_rows(workdir / "few.jsonl", ["entailment", "neutral", "contradiction"] * 4 + ["-1"])  # 1 of 13: kept
    assert main([*RUN, "--model", "scripted:base=0", "--dataset", f"nli={few}"]) == 0
    note = f"task nli: 1 of 13 rows of {few} have a label outside entailment, neutral, contradiction and are left out"
    assert note in capsys.readouterr().out
    assert note in json.loads((workdir / "report" / "results.jsonl").read_text().splitlines()[0])["sampling"]["notes"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("max_refusal_rate: -0.1", "max_refusal_rate {'default': -0.1} must lie in (0, 1]"),
        ("max_refusal_rate: 0", "max_refusal_rate {'default': 0.0} must lie in (0, 1]"),
        ("max_refusal_rate: {default: 0.05, nli: 1.5}", "outside [-1, 1]"),
        ("max_refusal_rate: true", "must be numbers"),
        ("max_persona_disparity: -0.05", "max_persona_disparity {'default': -0.05} must be > 0"),
        ("noninferiority: {margin: -0.01, persona_margin: 0.01}", "noninferiority.margin {'default': -0.01} must be > 0"),
        ("noninferiority: {margin: 0.01, persona_margin: -0.2}", "noninferiority.persona_margin {'default': -0.2} must be > 0"),
        ("samples: true", "samples True must be a positive integer"),
    ],
)
def test_every_limit_in_thresholds_is_range_checked(workdir: Path, capsys: pytest.CaptureFixture[str], line: str, expected: str) -> None:
    profile = {"alpha": "alpha: 0.05", "max_refusal_rate": "max_refusal_rate: 0.05",
               "max_persona_disparity": "max_persona_disparity: 0.02", line.split(":")[0]: line}
    (workdir / "mine.yaml").write_text("profiles:\n  p:\n" + "".join(f"    {entry}\n" for entry in profile.values()))
    error = usage_error([*RUN, "--model", "scripted:base=0", "--thresholds", "mine.yaml", "--profile", "p"], capsys)
    assert "mine.yaml: profile 'p' " in error and expected in error


@pytest.fixture
def saved(workdir: Path) -> Path:
    """A results.jsonl of a small scripted run, in out/."""
    assert main([*RUN, "--model", "scripted:base=0.2", "--report-dir", "out"]) in (0, 1)
    return workdir / "out" / "results.jsonl"


def test_report_refuses_unreadable_results_naming_the_file(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    lines = saved.read_text(encoding="utf-8").splitlines()
    cases = {
        "latin1.jsonl": ("\n".join(lines[:2]) + "\n").encode("utf-8") + "caf\xe9\n".encode("latin-1"),
        "empty.jsonl": b"",
        "headless.jsonl": ("\n".join(lines[1:]) + "\n").encode("utf-8"),
        "string-bool.jsonl": "\n".join([lines[0], json.dumps({**json.loads(lines[1]), "refused": "false"})]).encode("utf-8"),
        "newer.jsonl": "\n".join([json.dumps({**json.loads(lines[0]), "schema": 99}), lines[1]]).encode("utf-8"),
    }
    expected = {"latin1.jsonl": "not UTF-8 text", "empty.jsonl": "empty; fix:", "headless.jsonl": "no header line",
                "string-bool.jsonl": ':2: not a falserefusal results line (refused is "false", not a JSON true/false)',
                "newer.jsonl": "results schema 99, newer than this falserefusal reads"}
    for name, data in cases.items():
        path = saved.parent / name
        path.write_bytes(data)
        line = usage_error(["report", str(path)], capsys)
        assert f"falserefusal: error: {path}" in line and expected[name] in line and "fix:" in line


def test_report_warns_about_another_detector_or_a_missing_schema(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = saved.read_text(encoding="utf-8").splitlines()
    header = {k: v for k, v in json.loads(lines[0]).items() if k != "schema"}
    old = [json.dumps(header)] + [json.dumps({**json.loads(line), "detector_version": "rules-0"}) for line in lines[1:]]
    saved.write_text("\n".join(old) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["report", str(saved)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"falserefusal: warning: {saved}: ") for line in err)
    assert "no results schema" in err[0] and "labelled by detector rules-0, not this falserefusal's" in err[1]


@pytest.mark.parametrize("backend", ["scripted", "openai"])
def test_a_backend_other_than_transformers_without_a_model_is_refused_up_front(
    workdir: Path, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    line = usage_error(["run", "--backend", backend, "--samples", "30", "--no-progress"], capsys)
    assert f"--backend {backend}: no --model given" in line and "fix: name the model, e.g. --model " in line
    assert "generation stopped" not in line and not (workdir / "report").exists()


def test_header_paths_are_project_relative_or_package_relative(tmp_path: Path) -> None:
    from falserefusal.run.project import DEFAULT_THRESHOLDS
    from falserefusal.run.results import project_path

    assert project_path(str(tmp_path / "fixtures" / "tasks" / "nli.yaml"), str(tmp_path)) == "fixtures/tasks/nli.yaml"
    assert project_path(str(DEFAULT_THRESHOLDS), str(tmp_path)) == "falserefusal/defaults/thresholds.yaml"
    assert project_path("/elsewhere/data.jsonl", str(tmp_path)) == "/elsewhere/data.jsonl"
    assert project_path("stanfordnlp/snli", str(tmp_path)) == "stanfordnlp/snli"  # a hub id is not a path


def test_an_unknown_backend_is_refused_even_when_every_model_has_a_prefix(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error([*RUN, "--model", "scripted:base=0", "--backend", "tensorflow"], capsys)
    assert "--backend tensorflow: unknown backend; use one of transformers" in line
