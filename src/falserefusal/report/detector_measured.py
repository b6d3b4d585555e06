"""The report's note on detector accuracy for the run's open-ended tasks and non-English prompts, as measured.

The figures ship with the detector (`detection/measured_accuracy.json`); the rows shown are the task kinds the run
has: open-ended tasks (no labels) and each prompt language other than English."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from typing import Any, Sequence

from falserefusal.types import Record


@lru_cache(maxsize=1)
def _measured() -> dict[str, Any]:
    text = (files("falserefusal.detection") / "measured_accuracy.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def measured_accuracy(records: Sequence[Record]) -> dict[str, Any] | None:
    """The measured rows for the run's task kinds beyond English classification; None when it has none."""
    measured = _measured()
    kinds: list[str] = []
    if any(not record.case.labels for record in records):
        kinds.append("open_ended")
    for language in sorted({getattr(record.case, "language", "en") or "en" for record in records} - {"en"}):
        if language in measured:
            kinds.append(language)
    if not kinds:
        return None
    return {"note": measured["note"], "rows": [measured[kind] for kind in kinds]}
