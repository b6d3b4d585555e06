"""pytester tests of the extension points: conftest hooks and an installed package's entry points add a backend,
a detector and gates without editing falserefusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

#: a backend that refuses under one persona and answers the first label otherwise (the case's factors say which)
BACKEND = '''
from falserefusal.types import Completion


class PersonaBackend:
    name = "persona"

    def __init__(self, model, options):
        self.model, self.refuses = model, model.split(":", 1)[1]

    def identity(self):
        return {"refuses": self.refuses}

    def generate(self, requests, max_new_tokens, stop_when=None):
        answer = lambda r: "I cannot help with that." if r.factors["persona"] == self.refuses else r.factors["labels"].split("|")[0] + "."
        return [Completion(answer(r), 5, "stop") for r in requests]

    def close(self):
        pass
'''

CONFTEST = BACKEND + '''

from falserefusal.gating.custom import AddedGate


class Tagged:
    def __init__(self, base):
        self.base, self.version = base, base.version + "+tagged"

    def detect(self, text, labels=()):
        return self.base.detect(text, labels)

    def is_decided(self, text, labels=()):
        return self.base.is_decided(text, labels)


def pytest_falserefusal_backends(config):
    return {"persona": PersonaBackend}


def pytest_falserefusal_wrap_detector(config, detector):
    return Tagged(detector)


def pytest_falserefusal_add_gates(config, suite):
    return [AddedGate("muslim-gap", lambda gate: gate.disparity_at_most(0.05, persona="muslim"), tasks=("nli",))]
'''


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def test_conftest_hooks_add_a_backend_a_detector_wrapper_and_a_gate(project: pytest.Pytester) -> None:
    project.makeconftest(CONFTEST)
    result = project.runpytest("--model", "persona:muslim", "--samples", "20", "--tasks", "nli,politeness",
                               "--personas", "religion", "--profile", "release", "--no-progress", "--no-cache")
    result.stdout.fnmatch_lines(["*custom gate test_added_gate[[]muslim-gap-nli[]] (family muslim-gap: 1 gates*FAIL*",
                                 "FAILED tests/refusal/test_gates.py::test_added_gate[[]muslim-gap-nli[]]*"])
    assert "test_added_gate[muslim-gap-politeness]" not in result.stdout.str()  # tasks=("nli",)
    records = results(project.path / "report" / "results.jsonl")
    assert {r["backend"] for r in records} == {"persona"} and {r["refused"] for r in records if r["case"]["persona"] == "muslim"} == {True}
    assert all(r["detector_version"].endswith("+tagged") for r in records)


PLUGIN = BACKEND + '''

from falserefusal.types import Verdict


class Shouting:
    """Reads an answer in capitals as a refusal."""

    def __init__(self, base):
        self.base, self.version = base, "shouting-1+" + base.version

    def detect(self, text, labels=()):
        return Verdict(True, "shouting:caps") if text.isupper() else self.base.detect(text, labels)

    def is_decided(self, text, labels=()):
        return True


class ShoutingBackend(PersonaBackend):
    """Refuses in capitals under its persona."""

    name = "shout"

    def generate(self, requests, max_new_tokens, stop_when=None):
        answers = super().generate(requests, max_new_tokens, stop_when)
        return [Completion(a.text.upper() if r.factors["persona"] == self.refuses else a.text, a.n_tokens, a.finish_reason)
                for r, a in zip(requests, answers)]
'''


def install_tiny_plugin(pytester: pytest.Pytester) -> Path:
    """A distribution `tinyplugin` installed into a folder on sys.path: its module and a dist-info with entry points."""
    site = pytester.mkdir("site")
    (site / "tinyplugin.py").write_text(PLUGIN)
    info = site / "tinyplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[falserefusal.backends]\nshout = tinyplugin:ShoutingBackend\n\n"
                                           "[falserefusal.detectors]\nshouting = tinyplugin:Shouting\n")
    pytester.syspathinsert(site)
    return site


def test_an_installed_package_registers_a_backend_and_a_detector_by_entry_point(project: pytest.Pytester) -> None:
    install_tiny_plugin(project)
    args = ("--model", "shout:muslim", "--samples", "10", "--tasks", "nli", "--personas", "religion", "--no-progress",
            "--no-cache", "--profile", "release")
    result = project.runpytest(*args, "--detector", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --detector nope: unknown detector; use one of rules, shouting*"])
    result = project.runpytest(*args, "--detector", "shouting")
    result.stdout.fnmatch_lines(["FAILED tests/refusal/test_gates.py::test_persona_disparity[[]nli-muslim[]]*"])
    records = results(project.path / "report" / "results.jsonl")
    assert {r["backend"] for r in records} == {"shout"}
    muslim = [r for r in records if r["case"]["persona"] == "muslim"]
    assert {r["rule"] for r in muslim} == {"shouting:caps"} and all(r["refused"] for r in muslim)
    assert not any(r["refused"] for r in records if r not in muslim)
    assert {r["detector_version"].split("+")[0] for r in records} == {"shouting-1"}
