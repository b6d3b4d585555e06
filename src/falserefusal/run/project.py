"""Where a run's personas, tasks and thresholds come from: the option, else the project's own file, else the packaged
default; and `falserefusal init`, which copies the packaged defaults into a project for editing."""

from __future__ import annotations

import shutil
from pathlib import Path

from falserefusal.types import FalseRefusalError

#: the packaged defaults: thresholds.yaml and fixtures/ (personas.yaml, tasks/*.yaml)
DEFAULTS_DIR = Path(__file__).resolve().parent.parent / "defaults"
THRESHOLDS_FILE = "thresholds.yaml"
FIXTURES_DIR = "fixtures"
DEFAULT_THRESHOLDS = DEFAULTS_DIR / THRESHOLDS_FILE
DEFAULT_FIXTURES = DEFAULTS_DIR / FIXTURES_DIR


def _resolve(given: str | None, root: Path, name: str, packaged: Path, option: str, exists: str) -> Path:
    if given is not None:
        path = Path(given).expanduser()
        path = path if path.is_absolute() else root / path
        if not getattr(path, exists)():
            kind = "folder" if exists == "is_dir" else "file"
            raise FalseRefusalError(
                f"{option} {given}: no such {kind} ({path}); fix: check the path, or drop {option} "
                f"to use ./{name} or the packaged default"
            )
        return path
    own = root / name
    return own if getattr(own, exists)() else packaged


def thresholds_path(given: str | None, root: str | Path = ".") -> Path:
    """--thresholds PATH, else ROOT/thresholds.yaml when the project has one, else the packaged thresholds.yaml."""
    return _resolve(given, Path(root), THRESHOLDS_FILE, DEFAULT_THRESHOLDS, "--thresholds", "is_file")


def fixtures_path(given: str | None, root: str | Path = ".") -> Path:
    """--fixtures-dir DIR, else ROOT/fixtures when the project has one, else the packaged fixtures."""
    return _resolve(given, Path(root), FIXTURES_DIR, DEFAULT_FIXTURES, "--fixtures-dir", "is_dir")


def init_project(target: str | Path = ".", force: bool = False) -> list[Path]:
    """Copy the packaged thresholds.yaml and fixtures/ into `target` for editing; returns what was written.

    Refuses (naming them) to overwrite files that are there unless `force`."""
    target = Path(target)
    sources = [DEFAULT_THRESHOLDS, *sorted(p for p in DEFAULT_FIXTURES.rglob("*.yaml"))]
    destinations = [target / source.relative_to(DEFAULTS_DIR) for source in sources]
    present = [d for d in destinations if d.exists()]
    if present and not force:
        shown = ", ".join(str(p) for p in present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
        raise FalseRefusalError(f"init {target}: {shown} already there; fix: edit them, or pass --force to overwrite")
    for source, destination in zip(sources, destinations):
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return destinations
