"""Shared fixture of the plugin tests: the product suite in pytester's temporary folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A copy of the project's suite in pytester's temporary folder (fixtures and thresholds: the packaged ones)."""
    shutil.copytree(ROOT / "tests" / "refusal", pytester.path / "tests" / "refusal")
    pytester.makeini("[pytest]\ntestpaths = tests/refusal\n")
    return pytester
