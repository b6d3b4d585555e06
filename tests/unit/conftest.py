"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from falserefusal.run.project import DEFAULT_FIXTURES, DEFAULT_THRESHOLDS

# CI must not turn red on an example that no earlier run drew: the default profile draws the same examples on
# every run; HYPOTHESIS_PROFILE=explore draws fresh ones (run it when changing the statistics)
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))



@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project folder with the bundled fixtures and thresholds, made the working directory."""
    shutil.copytree(DEFAULT_FIXTURES, tmp_path / "fixtures")
    shutil.copy(DEFAULT_THRESHOLDS, tmp_path / "thresholds.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path
