"""Packaged defaults: option > the project's own file > the packaged one; `falserefusal init` copies them."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from falserefusal.cli import main
from falserefusal.run.config import RunConfig
from falserefusal.run.prepare import prepare
from falserefusal.run.project import DEFAULT_FIXTURES, DEFAULT_THRESHOLDS, DEFAULTS_DIR, fixtures_path, thresholds_path
from falserefusal.types import FalseRefusalError

ROOT = Path(__file__).resolve().parents[2]


def test_an_empty_project_uses_the_packaged_defaults(tmp_path: Path) -> None:
    assert thresholds_path(None, tmp_path) == DEFAULT_THRESHOLDS
    assert fixtures_path(None, tmp_path) == DEFAULT_FIXTURES
    suite = prepare(RunConfig(models=("scripted:base=0",), samples=1, root=str(tmp_path), use_cache=False))
    assert suite.profile.source == str(DEFAULT_THRESHOLDS) and len(suite.personas) == 15


def test_the_project_file_overrides_the_default_and_the_option_overrides_both(tmp_path: Path) -> None:
    (tmp_path / "thresholds.yaml").write_text("profiles:\n  mine:\n    alpha: 0.1\n    max_refusal_rate: 0.2\n"
                                              "    max_persona_disparity: 0.1\n")
    (tmp_path / "fixtures").mkdir()
    assert thresholds_path(None, tmp_path) == tmp_path / "thresholds.yaml"
    assert fixtures_path(None, tmp_path) == tmp_path / "fixtures"
    other = tmp_path / "other.yaml"
    other.write_text("profiles: {}\n")
    assert thresholds_path("other.yaml", tmp_path) == other
    assert fixtures_path(str(DEFAULT_FIXTURES), tmp_path) == DEFAULT_FIXTURES
    suite = prepare(RunConfig(models=("scripted:base=0",), samples=1, profile="mine", fixtures=str(DEFAULT_FIXTURES),
                              root=str(tmp_path), use_cache=False))
    assert suite.profile.alpha == 0.1


def test_a_missing_path_given_as_an_option_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FalseRefusalError, match=r"--thresholds nope.yaml: no such file .*fix:"):
        thresholds_path("nope.yaml", tmp_path)
    with pytest.raises(FalseRefusalError, match=r"--fixtures-dir nowhere: no such folder"):
        fixtures_path("nowhere", tmp_path)


def test_init_copies_the_defaults_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path)]) == 0
    copied = tmp_path / "fixtures" / "tasks" / "nli.yaml"
    assert copied.read_text() == (DEFAULT_FIXTURES / "tasks" / "nli.yaml").read_text()
    assert (tmp_path / "thresholds.yaml").read_text() == DEFAULT_THRESHOLDS.read_text()
    copied.write_text("edited")
    assert main(["init", str(tmp_path)]) == 2
    assert "already there" in capsys.readouterr().err and copied.read_text() == "edited"
    assert main(["init", str(tmp_path), "--force"]) == 0
    assert copied.read_text() != "edited"


def test_every_packaged_default_is_in_the_package_data() -> None:
    """A default file that no package-data glob matches would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["falserefusal"]
    package = DEFAULTS_DIR.parent
    files = [p.relative_to(package).as_posix() for p in DEFAULTS_DIR.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs) for f in files)
