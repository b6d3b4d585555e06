"""ModelRef: a --model string resolved once (which backend serves it, what kind of source it names, its short label),
used by preflight, the Generator, cache keys, gate ids and the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from falserefusal import registry
from falserefusal.generation.backends import DEFAULT_MODEL_NAME

#: where a model comes from: the embedded default, a local .gguf file or checkpoint folder, a hub id, a served model
#: (OpenAI-compatible API), the scripted simulator, or a backend another package registered
SOURCES = ("default", "file", "folder", "hub", "served", "scripted", "plugin")


@dataclass(frozen=True)
class ModelRef:
    """One model of a run. `name` is the string as given (it keys the cache and is the results' `model` field),
    `kind` the backend that serves it, `label` its short name in gate ids, progress bars and the report."""

    name: str
    kind: str
    source: str
    label: str

    @classmethod
    def of(cls, name: str, backend: str, label: str | None = None) -> ModelRef:
        kind = registry.backend_kind(name, backend)
        return cls(name, kind, _source(name, kind), label if label is not None else label_of(name))

    @property
    def is_default(self) -> bool:
        return self.source == "default"


def _source(name: str, kind: str) -> str:
    if kind == "scripted":
        return "scripted"
    if kind == "openai":
        return "served"
    if kind not in registry.BUILTIN_BACKENDS:
        return "plugin"
    if name == DEFAULT_MODEL_NAME:
        return "default"
    path = Path(name).expanduser()
    if path.is_file() or name.endswith(".gguf"):
        return "file"
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return "folder"  # a path (that may be missing: preflight says so)
    return "hub"


def label_of(name: str, index: int = 0) -> str:
    """The one label rule: a scripted spec's name=, else the last path part without .gguf; ':' becomes '_'."""
    label = name.split("name=")[1].split(",")[0] if "name=" in name else Path(name.rstrip("/")).name
    return label.removesuffix(".gguf").replace(":", "_") or f"model{index}"


def model_refs(names: Sequence[str], backend: str) -> tuple[ModelRef, ...]:
    """The run's models (the embedded default when none is named), each with a label unique in the run."""
    names = tuple(names) or (DEFAULT_MODEL_NAME,)
    labels = model_labels(names)
    return tuple(ModelRef.of(name, backend, labels[name]) for name in names)


def model_labels(names: Sequence[str]) -> dict[str, str]:
    """model name -> its label, for names in run order (two models named alike get -1, -2 alike everywhere)."""
    labels: dict[str, str] = {}
    for index, name in enumerate(names):
        label = label_of(name, index)
        labels[name] = f"{label}-{index}" if label in labels.values() else label
    return labels
