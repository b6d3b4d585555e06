"""The refusal rules: named regular expressions from refusal_rules.yaml (or --refusal-rules), compiled with their
precedence and the task's label patterns."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Sequence

from falserefusal.design.personas import check_keys, read_yaml
from falserefusal.types import FalseRefusalError

_RULES_RESOURCE = "refusal_rules.yaml"


_TOP_KEYS = {"sympathy", "refusal", "compliance", "answer_forms"}


_RULE_KEYS = {"strength", "patterns", "reads_as"}


_STRENGTHS = ("strong", "weak")


_LABEL_SLOT = "{label}"


# A sentence ends at . ! ? (plus closing quotes or markdown) *followed by white space*, or at a line
# break. Requiring the white space keeps "3.5" and "e.g.x" whole and makes a boundary final: text added
# later cannot move it.
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]*_`]*(?=\s)|\n")


_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'"})  # same length: positions survive


_CONTRAST = re.compile(r"\b(?:but|however|though|although|yet|nevertheless|nonetheless|that said)\b", re.I)


_WHETHER = re.compile(r"\b(?:whether|if)\b(?:\W+\w+){0,5}\W*\Z", re.I)


_NEGATED = re.compile(
    r"(?:(?:\bnot|n't|\bnever|\bnon|\bhardly|\bno)[\s-]+"
    r"(?:(?:very|really|particularly|necessarily|exactly|entirely|quite|at\s+all|so|too|that|overly|"
    r"considered|seen\s+as|classified\s+as|labell?ed\s+as|an?)\s+)*[\"'*_`]*"
    r"|\b(?:don't|do\s+not|doesn't|does\s+not|wouldn't|would\s+not|didn't|did\s+not)\s+"
    r"(?:think|believe|say|consider|find|feel|see)\b[^.,;:]{0,40})\Z",
    re.I,
)


_LIST_JOIN = r"\s*(?:,|/|\bor\b|\band\b|\bnor\b|\bvs\b\.?|\bversus\b)\s*(?:an?\s+|the\s+)?[\"'*_`]*"


@dataclass(frozen=True)
class RefusalRule:
    """One named refusal rule: any of its patterns matching a sentence fires it."""

    name: str  # "refusal:cannot_help"
    strength: str  # strong: always a refusal (bar a stated label) | weak: a later compliance pattern undoes it
    patterns: tuple[re.Pattern[str], ...]
    #: the rule the learned layer reads this one's firings as ("refusal:cannot_help" for a Spanish "no puedo" rule):
    #: the shipped weights were trained on English answers and know only the English rules' names; "" = itself
    reads_as: str = ""


@dataclass(frozen=True)
class RefusalRules:
    """Compiled detector rules, as loaded from YAML (see `refusal_rules.yaml` for the precedence)."""

    source: str  # the file they came from
    digest: str  # sha256 of the canonical rule content (comments and layout do not count)
    sympathy: tuple[re.Pattern[str], ...]
    refusals: tuple[RefusalRule, ...]
    compliance: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]  # ("compliance:answer_follows", patterns)
    answer_forms: tuple[str, ...]  # regex sources holding {label}; compiled per label set


@dataclass(frozen=True)
class _Hit:
    """Where a rule or label fired: absolute position, rule or label, and whether its sentence is final."""

    pos: int
    name: str
    final: bool


@dataclass(frozen=True)
class _Reading:
    """Everything one read of a response found, each kind sorted by position."""

    answers: tuple[_Hit, ...]  # labels stated as the answer (name = label)
    plain_labels: tuple[_Hit, ...]  # any other usable mention of a label
    strong: tuple[_Hit, ...]
    weak: tuple[_Hit, ...]
    compliance: tuple[_Hit, ...]
    first_end: int  # where the window's first sentence ends (0: the window holds none)


def _compile(source: str, path: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(source, re.IGNORECASE)
    except re.error as error:
        raise FalseRefusalError(f"{path}: {what} is not a valid regex ({error}); fix: correct the pattern") from None


def _pattern_list(path: str, what: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise FalseRefusalError(f"{path}: {what} must be a list of regex strings; fix: write it as a YAML list")
    return value


def _label_alternation(labels: Sequence[str]) -> str:
    # longest first, so "not offensive" wins over "offensive" at the same position
    ordered = sorted({label for label in labels if label.strip()}, key=lambda label: (-len(label), label))
    return "|".join(r"\s+".join(map(re.escape, label.split())) for label in ordered)


def load_rules(path: str | Path | None = None) -> RefusalRules:
    """Load and compile detector rules; None loads the packaged default."""
    if path is None:
        with as_file(files("falserefusal.detection") / _RULES_RESOURCE) as packaged:
            return _compile_rules(packaged)
    return _compile_rules(Path(path))


def _compile_rules(source: Path) -> RefusalRules:
    where = str(source)
    data = check_keys(source, "the top level", read_yaml(source), _TOP_KEYS, {"refusal"})
    sympathy = tuple(
        _compile(p, where, f"sympathy pattern #{i + 1}")
        for i, p in enumerate(_pattern_list(where, "sympathy", data.get("sympathy") or []))
    )
    if not isinstance(data["refusal"], dict) or not data["refusal"]:
        raise FalseRefusalError(f"{where}: refusal must map rule names to {{strength, patterns}}; fix: add a rule")
    refusals = []
    for name, entry in data["refusal"].items():
        entry = check_keys(source, f"refusal rule '{name}'", entry, _RULE_KEYS, {"strength", "patterns"})
        if entry["strength"] not in _STRENGTHS:
            raise FalseRefusalError(
                f"{where}: refusal rule '{name}' has strength '{entry['strength']}'; fix: use strong or weak"
            )
        patterns = _pattern_list(where, f"refusal rule '{name}' patterns", entry["patterns"])
        compiled = tuple(_compile(p, where, f"refusal rule '{name}' pattern #{i + 1}") for i, p in enumerate(patterns))
        reads_as = str(entry.get("reads_as") or "")
        target = data["refusal"].get(reads_as)
        if reads_as and (not isinstance(target, dict) or target.get("reads_as")):
            raise FalseRefusalError(
                f"{where}: refusal rule '{name}' reads_as '{reads_as}', which is not a rule of its own (without "
                "reads_as) in this file; fix: name one"
            )
        refusals.append(
            RefusalRule(f"refusal:{name}", entry["strength"], compiled, f"refusal:{reads_as}" if reads_as else "")
        )
    compliance_data = data.get("compliance") or {}
    if not isinstance(compliance_data, dict):
        raise FalseRefusalError(f"{where}: compliance must map rule names to pattern lists; fix the section")
    compliance = tuple(
        (
            f"compliance:{name}",
            tuple(
                _compile(p, where, f"compliance rule '{name}' pattern #{i + 1}")
                for i, p in enumerate(_pattern_list(where, f"compliance rule '{name}'", patterns))
            ),
        )
        for name, patterns in compliance_data.items()
    )
    answer_forms = tuple(_pattern_list(where, "answer_forms", data.get("answer_forms") or []))
    for i, form in enumerate(answer_forms):
        if form.count(_LABEL_SLOT) != 1:
            raise FalseRefusalError(f"{where}: answer_forms pattern #{i + 1} must hold {_LABEL_SLOT} once; fix: add it")
        _compile(form.replace(_LABEL_SLOT, "(?P<label>x)"), where, f"answer_forms pattern #{i + 1}")
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return RefusalRules(where, digest, sympathy, tuple(refusals), compliance, answer_forms)


@lru_cache(maxsize=1)
def _default_rules() -> RefusalRules:
    return load_rules(None)


@lru_cache(maxsize=256)
def _label_patterns(
    answer_forms: tuple[str, ...], labels: tuple[str, ...]
) -> tuple[re.Pattern[str], tuple[re.Pattern[str], ...], re.Pattern[str], re.Pattern[str]]:
    """The plain label matcher, the answer forms, and the list-of-labels checks, for one label set."""
    alternation = _label_alternation(labels)
    plain = re.compile(rf"\b(?P<label>{alternation})\b", re.I)
    forms = tuple(re.compile(form.replace(_LABEL_SLOT, rf"(?P<label>{alternation})\b"), re.I) for form in answer_forms)
    listed_after = re.compile(rf"{_LIST_JOIN}(?:{alternation}|not\b)", re.I)
    listed_before = re.compile(
        rf"(?:\b(?:{alternation})[\"'*_`]*{_LIST_JOIN}|\b(?:either|neither)\s+(?:an?\s+)?[\"'*_`]*)\Z", re.I
    )
    return plain, forms, listed_after, listed_before


def _sentences(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, final) spans; final = a boundary follows inside `text`, so no later text can change it."""
    spans, start = [], 0
    for boundary in _BOUNDARY.finditer(text):
        spans.append((start, boundary.end(), True))
        start = boundary.end()
    spans.append((start, len(text), False))
    return [(s, e, final) for s, e, final in spans if text[s:e].strip()]
