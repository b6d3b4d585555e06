"""The CI workflow example stays valid: it parses, gates with a baseline, uploads the report and caches generations."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from falserefusal.run.options import OPTIONS

ROOT = Path(__file__).resolve().parents[2]


def test_github_actions_example_uses_only_real_options() -> None:
    workflow = yaml.safe_load((ROOT / "examples" / "github-actions-gate.yml").read_text())
    steps = workflow["jobs"]["gate"]["steps"]
    uses = [step.get("uses", "") for step in steps]
    assert any(u.startswith("actions/cache@") for u in uses) and any(u.startswith("actions/upload-artifact@") for u in uses)
    cache_step = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))
    assert "CACHE_DIR" in cache_step["with"]["path"]
    gate = next(s["run"] for s in steps if "pytest" in s.get("run", ""))
    flags = set(re.findall(r"--([a-z][a-z-]*)", gate))
    pytest_flags = {"junitxml", "html", "self-contained-html"}  # pytest and pytest-html
    assert {"model", "baseline-model", "cache-dir", "junitxml", "html"} <= flags
    assert flags - pytest_flags <= {option.name for option in OPTIONS}
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert "report/junit.xml" in upload["with"]["path"] and "report/index.html" in upload["with"]["path"]
    assert upload["if"] == "always()"
