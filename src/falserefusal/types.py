"""Frozen dataclasses that every other module speaks: what is asked, what came back, what it means.

Everything here round-trips through JSON (`to_dict` / `from_dict`), so records can travel between
pytest-xdist workers, sit in the generation cache, and rebuild a report later without the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

ForcingLevel = Literal["unforced", "semi_forced", "forced"]
FORCING_LEVELS: tuple[str, ...] = ("unforced", "semi_forced", "forced")
Placement = Literal["system", "user"]

#: persona id of the no-persona condition every persona is compared with
BASELINE_ID = "baseline"
#: what the detector reads an answer as; the gates count "refusal" (full or partial), the report shows all three
OUTCOMES: tuple[str, ...] = ("refusal", "compliance", "non_answer")


class FalseRefusalError(ValueError):
    """A bad input from the user: the message names the input and the fix (one line, no traceback)."""


def _from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class Persona:
    """A sociodemographic identity the model is asked to adopt (`wording` fills "You are {persona}.")."""

    id: str
    dimension: str  # gender | race | religion | disability | none (baseline)
    wording: str  # e.g. "a Muslim person"; empty for the baseline

    @property
    def is_baseline(self) -> bool:
        return self.id == BASELINE_ID


BASELINE = Persona(id=BASELINE_ID, dimension="none", wording="")


@dataclass(frozen=True)
class PersonaPhrasing:
    """One way of instructing the persona, e.g. "You are {persona}."."""

    id: str
    template: str


@dataclass(frozen=True)
class Task:
    """A benign task (classification, or open-ended when it has no labels): any refusal to do it is a false refusal."""

    id: str  # nli | politeness | offensiveness | story | saying | interview | user-defined
    labels: tuple[str, ...]  # answer options in the order shown to the model; () for an open-ended task
    fields: tuple[str, ...]  # item fields the paraphrase templates use, e.g. ("premise", "hypothesis")
    description: str = ""
    language: str = "en"  # the language of the task's prompts (en | es | de); persona instructions follow it
    label_words: tuple[tuple[str, ...], ...] = ()  # per label, its words in `language` (the first is shown)

    @property
    def shown_labels(self) -> tuple[str, ...]:
        """The labels as the prompt shows them: each label's first word in the task's language, else the label."""
        return tuple(words[0] for words in self.label_words) if self.label_words else self.labels

    @property
    def reading_labels(self) -> tuple[str, ...]:
        """What the detector may read as a stated label: the label ids and all their words in the task's language."""
        words = tuple(w for ws in self.label_words for w in ws if w not in self.labels)
        return self.labels + tuple(dict.fromkeys(words))


@dataclass(frozen=True)
class Item:
    """One dataset example of a task, with its gold label (kept for the record, never used to gate)."""

    task: str
    id: str
    fields: Mapping[str, str]
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "id": self.id, "fields": dict(self.fields), "label": self.label}


@dataclass(frozen=True)
class Paraphrase:
    """A prompt wording of a task at one forcing level; `template` uses the task's fields and {labels}."""

    id: str  # readable and unique within the task, e.g. "forced-2"
    task: str
    forcing_level: str  # one of FORCING_LEVELS
    template: str


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class Case:
    """One request: a block's (task, item, paraphrase, phrasing) asked under one persona (or the baseline).

    Cases of the same block differ only by persona: that is the paired design the disparity tests use.
    """

    case_id: str  # "{block_id}-{persona}", e.g. "offensiveness-b00012-muslim"
    block_id: str  # "{task}-b{index:05d}"
    seed: int  # the root seed of the run that drew it
    task: str
    item_id: str
    paraphrase_id: str
    forcing_level: str
    persona: str  # persona id, BASELINE_ID for the baseline
    persona_dimension: str
    phrasing_id: str  # persona phrasing id ("none" for the baseline)
    placement: str  # system | user
    messages: tuple[Message, ...]
    labels: tuple[str, ...]  # the task's answer options (for label parsing), with their words in `language`
    gold_label: str
    language: str = "en"  # the task's prompt language; results written before it existed read as English

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["messages"] = [dataclasses.asdict(m) for m in self.messages]
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Case":
        values = dict(data)
        values["messages"] = tuple(Message(**m) for m in values["messages"])
        values["labels"] = tuple(values["labels"])
        return _from_dict(cls, values)


@dataclass(frozen=True)
class GenerationRequest:
    """What a backend receives: the chat plus the case's factors (only the scripted backend reads those)."""

    case_id: str
    messages: tuple[Message, ...]
    factors: Mapping[str, str] = field(default_factory=dict)  # task, persona, forcing_level, paraphrase, block


@dataclass(frozen=True)
class Completion:
    """What a backend returns for one request."""

    text: str
    n_tokens: int  # generated tokens (0 where the backend cannot tell)
    finish_reason: str = "length"  # stop | length | decided (stopped early: verdict settled)

    def storable(self) -> "Completion":
        """The same answer as valid Unicode (see `storable_text`) that the cache, results.jsonl and report can hold."""
        text = storable_text(self.text)
        return self if text is self.text else dataclasses.replace(self, text=text)


def storable_text(text: str) -> str:
    """Model text that UTF-8 can encode: a served model's JSON may carry a lone surrogate ("\\ud800"), which no
    UTF-8 file or SQLite cache can store. Surrogate pairs are joined into their character; each lone one becomes
    U+FFFD (the replacement character), the same in the cache, results.jsonl and the report."""
    if not any("\ud800" <= char <= "\udfff" for char in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


@dataclass(frozen=True)
class Verdict:
    """The refusal detector's reading of one response."""

    refused: bool  # outcome == "refusal" (full or partial refusal): what the gates count
    rule: str  # the rule that fired, e.g. "refusal:cannot_help" or "compliance:label"
    label: str | None = None  # the task label the response gives, if one can be parsed
    outcome: str = ""  # refusal | compliance | non_answer; "" is filled from `refused` (older callers)

    def __post_init__(self) -> None:
        if not self.outcome:
            object.__setattr__(self, "outcome", "refusal" if self.refused else "compliance")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"verdict outcome {self.outcome!r}: use one of {', '.join(OUTCOMES)}")
        if self.refused != (self.outcome == "refusal"):
            raise ValueError(f"verdict refused={self.refused} contradicts outcome {self.outcome!r}")


@dataclass(frozen=True)
class Record:
    """One generation with its case, model and verdict: a line of `results.jsonl`."""

    case: Case
    model: str  # model identity as given by the user (hub id, folder, .gguf, endpoint, scripted spec)
    backend: str
    response: str
    n_tokens: int
    finish_reason: str
    refused: bool
    rule: str
    parsed_label: str | None
    detector_version: str
    cached: bool = False
    outcome: str = ""  # refusal | compliance | non_answer; "" (results written before 0.2) is read from `refused`

    def __post_init__(self) -> None:
        if not self.outcome:
            object.__setattr__(self, "outcome", "refusal" if self.refused else "compliance")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "generation",
            "model": self.model,
            "backend": self.backend,
            "response": self.response,
            "n_tokens": self.n_tokens,
            "finish_reason": self.finish_reason,
            "refused": self.refused,
            "outcome": self.outcome,
            "rule": self.rule,
            "parsed_label": self.parsed_label,
            "detector_version": self.detector_version,
            "cached": self.cached,
            "case": self.case.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Record":
        values = {k: v for k, v in data.items() if k != "kind"}
        values["case"] = Case.from_dict(values["case"])
        return _from_dict(cls, values)

    FLAT_COLUMNS = (
        "model",
        "task",
        "persona",
        "persona_dimension",
        "language",
        "forcing_level",
        "paraphrase",
        "phrasing",
        "item",
        "block",
        "case_id",
        "refused",
        "outcome",
        "rule",
        "seed",
    )

    def flat(self) -> dict[str, Any]:
        """One row for the analysis DataFrame (see `falserefusal.analysis.records_frame`)."""
        case = self.case
        return {
            "model": self.model,
            "task": case.task,
            "persona": case.persona,
            "persona_dimension": case.persona_dimension,
            "language": case.language,
            "forcing_level": case.forcing_level,
            "paraphrase": case.paraphrase_id,
            "phrasing": case.phrasing_id,
            "item": case.item_id,
            "block": case.block_id,
            "case_id": case.case_id,
            "refused": bool(self.refused),
            "outcome": self.outcome,
            "rule": self.rule,
            "seed": case.seed,
        }
