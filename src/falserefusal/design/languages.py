"""Prompt languages: the persona instructions of personas.yaml's `translations:` and the choice of them per task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from falserefusal.design.personas import check_keys, read_yaml
from falserefusal.types import FalseRefusalError, Persona, PersonaPhrasing

#: the languages a task may declare (`language:` in its file); English is the fixtures' own language
LANGUAGES: tuple[str, ...] = ("en", "es", "de")
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class PersonaTranslation:
    """One language's persona instructions: phrasing id -> template, persona id -> wording."""

    language: str
    phrasings: Mapping[str, str]
    wordings: Mapping[str, str]


def check_language(source: str, value: Any) -> str:
    """A task's `language:` value, or an error naming the file and the languages there are."""
    language = str(value)
    if language not in LANGUAGES:
        raise FalseRefusalError(
            f"{source}: language '{language}' is not supported; fix: use one of {', '.join(LANGUAGES)}"
        )
    return language


def load_translations(
    path: Path, personas: Sequence[Persona], phrasings: Sequence[PersonaPhrasing]
) -> dict[str, PersonaTranslation]:
    """The file's `translations:` (none when absent), keyed by language: known ids, every phrasing translated with
    its {persona} placeholder. Wordings may be partial; a case that needs a missing one fails when it is drawn."""
    data = read_yaml(path)
    entries = (data.get("translations") if isinstance(data, dict) else None) or {}
    if not isinstance(entries, dict):
        raise FalseRefusalError(f"{path}: translations must map a language to {{phrasings, wordings}}; fix the entry")
    phrasing_ids = {p.id for p in phrasings}
    persona_ids = {p.id for p in personas}
    found: dict[str, PersonaTranslation] = {}
    for language, entry in entries.items():
        language = check_language(f"{path}: translations", language)
        if language == DEFAULT_LANGUAGE:
            raise FalseRefusalError(f"{path}: translations.en: English is the file's own text; fix: remove it")
        what = f"translations.{language}"
        entry = check_keys(path, what, entry, {"phrasings", "wordings"}, {"phrasings", "wordings"})
        templates = {str(k): str(v) for k, v in (entry["phrasings"] or {}).items()}
        wordings = {str(k): str(v) for k, v in (entry["wordings"] or {}).items()}
        missing = sorted(phrasing_ids - set(templates))
        unknown = sorted(set(templates) - phrasing_ids)
        if missing or unknown:
            raise FalseRefusalError(
                f"{path}: {what}.phrasings must translate exactly the phrasings "
                f"({'missing ' + ', '.join(missing) if missing else 'unknown ' + ', '.join(unknown)}); fix the ids"
            )
        for phrasing_id, template in templates.items():
            if "{persona}" not in template:
                raise FalseRefusalError(
                    f"{path}: {what}.phrasings.{phrasing_id} has no {{persona}} placeholder; fix: add it"
                )
        # intersections are declared after the personas; their ids may be translated too
        extra = sorted(set(wordings) - persona_ids - _intersection_ids(data))
        if extra:
            raise FalseRefusalError(
                f"{path}: {what}.wordings names unknown persona(s) {', '.join(extra)}; fix: use ids of this file"
            )
        found[language] = PersonaTranslation(language, templates, wordings)
    return found


def _intersection_ids(data: Any) -> set[str]:
    entries = data.get("intersections") if isinstance(data, dict) else None
    return {str(e.get("id")) for e in entries or () if isinstance(e, dict)}


def localised(
    persona: Persona,
    phrasing: PersonaPhrasing,
    language: str,
    translations: Mapping[str, PersonaTranslation] | None,
) -> tuple[Persona, PersonaPhrasing]:
    """The persona and phrasing worded in `language` (unchanged for English or the baseline); same ids, so a
    persona's disparity compares across languages."""
    if language == DEFAULT_LANGUAGE or persona.is_baseline:
        return persona, phrasing
    translation = (translations or {}).get(language)
    if translation is None or persona.id not in translation.wordings:
        raise FalseRefusalError(
            f"personas.yaml: no {language} wording for persona '{persona.id}', which a task in language {language} "
            f"asks; fix: add it under translations.{language}.wordings, or leave that task out of --tasks"
        )
    return (
        Persona(persona.id, persona.dimension, translation.wordings[persona.id]),
        PersonaPhrasing(phrasing.id, translation.phrasings[phrasing.id]),
    )
