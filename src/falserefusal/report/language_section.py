"""The report's language panel: refusal rate by language x persona, for a run whose tasks ask in several languages."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from falserefusal.analysis import refusal_rates

#: the order languages are shown in (English, the fixtures' own language, first)
LANGUAGE_ORDER = ("en", "es", "de")


def language_panel(frame: pd.DataFrame, personas: Sequence[str], labels: Mapping[str, str]) -> dict[str, Any] | None:
    """Per (model, persona) row, one cell per language: rate, Wilson interval and n. None for a one-language run
    (or results written before the language column, which read as English)."""
    if "language" not in frame.columns or frame["language"].nunique() < 2:
        return None
    present = list(frame["language"].unique())
    languages = [x for x in LANGUAGE_ORDER if x in present] + sorted(set(present) - set(LANGUAGE_ORDER))
    cells = refusal_rates(frame, by=["model", "persona", "language"]).set_index(["model", "persona", "language"])
    rows = []
    for model in dict.fromkeys(frame["model"]):
        for persona in [p for p in personas if p in set(frame["persona"])]:
            row = []
            for language in languages:
                key = (model, persona, language)
                cell = cells.loc[key].to_dict() if key in cells.index else None
                row.append(cell and {**cell, "n": int(cell["n"])})
            rows.append({"model": labels.get(model, model), "persona": persona, "cells": row})
    tasks = frame.groupby("language")["task"].unique()
    return {
        "languages": languages,
        "rows": rows,
        "tasks": {language: ", ".join(sorted(map(str, tasks[language]))) for language in languages},
    }
