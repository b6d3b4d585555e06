"""Which code serves a name: the built-in backends (a table of lazily imported factories), and backends and refusal
detectors beyond them: other packages' entry points (imported only when used) and registrations at run time (the
pytest hooks of `falserefusal.hookspec`). Only this module maps a --model string to its backend.

A package adds a backend or a detector without editing falserefusal by declaring an entry point:

    [project.entry-points."falserefusal.backends"]
    echo = "mypkg.backend:EchoBackend"         # factory(model: str, options: BackendOptions) -> Backend
    [project.entry-points."falserefusal.detectors"]
    strict = "mypkg.detector:make_detector"    # factory(base: RefusalDetector) -> detector

`--model echo:SPEC` (or `--backend echo`) then uses the backend and `--detector strict` the detector. A detector is
any object with `detect(text, labels) -> Verdict`, `is_decided(text, labels) -> bool` and a `version` string (it is
recorded in every result and keys the generation cache, so change it whenever verdicts change); `detect_many(texts,
label_sets)`, the batch form, is optional (without it each answer goes through `detect`).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Callable

from falserefusal.types import FalseRefusalError

BACKEND_GROUP = "falserefusal.backends"
DETECTOR_GROUP = "falserefusal.detectors"
#: the detector the package ships (falserefusal.detection.detector.RefusalDetector with --refusal-rules)
BUILTIN_DETECTOR = "rules"

#: the built-in backends: kind -> "module:factory", imported only when a model of that kind is loaded (torch and
#: transformers are heavy; the scripted backend needs neither)
BUILTIN_BACKENDS = {
    "transformers": "falserefusal.generation.backends.huggingface:TransformersBackend",
    "scripted": "falserefusal.generation.backends.scripted:ScriptedBackend",
    "openai": "falserefusal.generation.backends.openai_compat:OpenAICompatibleBackend",
}
#: --model prefixes that choose a built-in backend whatever --backend says
BUILTIN_PREFIXES = ("scripted", "openai")

_registered: dict[str, dict[str, Callable[..., Any]]] = {BACKEND_GROUP: {}, DETECTOR_GROUP: {}}
_wrappers: list[Callable[[Any], Any]] = []


def register_backend(name: str, factory: Callable[..., Any]) -> None:
    """Make `name` a backend for this process: factory(model, options) -> Backend."""
    _registered[BACKEND_GROUP][name] = factory


def register_detector(name: str, factory: Callable[..., Any]) -> None:
    """Make `name` a detector for this process: factory(base detector) -> detector."""
    _registered[DETECTOR_GROUP][name] = factory


def add_detector_wrapper(wrap: Callable[[Any], Any]) -> None:
    """Apply wrap(detector) -> detector (None keeps it) to every detector this process makes, in order added."""
    _wrappers.append(wrap)


def clear() -> None:
    """Forget the run-time registrations (entry points stay): the plugin calls it when a pytest session ends."""
    for table in _registered.values():
        table.clear()
    _wrappers.clear()


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=group)}


def names(group: str) -> list[str]:
    """Registered and entry-point names of a group, sorted."""
    return sorted(set(_registered[group]) | set(_entry_points(group)))


def factory(group: str, name: str) -> Callable[..., Any] | None:
    """The factory registered as `name` (run-time registrations first, then entry points, imported now), or None."""
    if name in _registered[group]:
        return _registered[group][name]
    point = _entry_points(group).get(name)
    if point is None:
        return None
    try:
        return point.load()
    except Exception as error:  # a broken third-party package: name it rather than fail deep inside a run
        raise FalseRefusalError(
            f"{group} entry point {name} = {point.value}: cannot be imported "
            f"({type(error).__name__}: {error}); fix: reinstall the package that declares it"
        ) from None


def check_detector_name(name: str | None) -> None:
    if name in (None, "", BUILTIN_DETECTOR) or name in names(DETECTOR_GROUP):
        return
    raise FalseRefusalError(
        f"--detector {name}: unknown detector; use one of {', '.join([BUILTIN_DETECTOR, *names(DETECTOR_GROUP)])} "
        f"(entry point group {DETECTOR_GROUP})"
    )


def make_detector(name: str | None = None, rules: str | Path | None = None) -> Any:
    """The run's detector: the rule detector (`rules`: a rules file, None for the packaged one), replaced or wrapped by
    the named detector's factory, then by every wrapper; checked to have detect, is_decided and version."""
    from falserefusal.detection.detector import RefusalDetector
    from falserefusal.detection.rules import load_rules

    check_detector_name(name)
    detector: Any = RefusalDetector(load_rules(rules))
    if name not in (None, "", BUILTIN_DETECTOR):
        make = factory(DETECTOR_GROUP, name)
        assert make is not None
        detector = make(detector)
    for wrap in _wrappers:
        wrapped = wrap(detector)
        detector = detector if wrapped is None else wrapped
    missing = [a for a in ("detect", "is_decided") if not callable(getattr(detector, a, None))]
    if missing or not isinstance(getattr(detector, "version", None), str):
        lacks = missing + ([] if isinstance(getattr(detector, "version", None), str) else ["a version string"])
        raise FalseRefusalError(
            f"detector {name or BUILTIN_DETECTOR} ({type(detector).__name__}): lacks {', '.join(lacks)}; "
            "fix: give it detect(text, labels), is_decided(text, labels) and version"
        )
    return detector if callable(getattr(detector, "detect_many", None)) else _OneByOne(detector)


class _OneByOne:
    """A plugin's detector without `detect_many` (the batch call the generator makes): answers it with `detect`."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector

    def __getattr__(self, name: str) -> Any:
        return getattr(self.detector, name)

    def detect_many(self, texts: Any, labels: Any = None) -> list[Any]:
        label_sets = labels if labels is not None else [()] * len(texts)
        return [self.detector.detect(text, tuple(ls)) for text, ls in zip(texts, label_sets)]


def check_backend(requested: str) -> None:
    """--backend names a built-in or a registered backend (checked even when every model's prefix picks its own)."""
    backend_kind("", requested)


def backend_kind(model: str, requested: str) -> str:
    """Which backend serves a model: `scripted:` and `openai:` prefixes choose theirs, a `NAME:` prefix a backend
    registered as NAME (entry points or hooks), else --backend. Called by ModelRef.of (falserefusal.generation.models),
    which every other module asks."""
    prefix = model.split(":", 1)[0] if ":" in model else ""
    if prefix in BUILTIN_PREFIXES:
        return prefix
    if prefix and prefix in names(BACKEND_GROUP):
        return prefix
    if requested not in BUILTIN_BACKENDS and requested not in names(BACKEND_GROUP):
        known = [*BUILTIN_BACKENDS, *names(BACKEND_GROUP)]
        raise FalseRefusalError(f"--backend {requested}: unknown backend; use one of {', '.join(known)}")
    return requested


def load_backend(model: str, kind: str, options: Any, seed: int = 0) -> Any:
    """The backend of `kind` for `model`, its module imported only now. `seed` is the run's --seed: the scripted
    backend draws from it (plus its spec's seed= offset); real models decode greedily and ignore it."""
    if kind not in BUILTIN_BACKENDS:  # a registered backend (entry point or hook)
        make = factory(BACKEND_GROUP, kind)
        assert make is not None
        return make(model, options)
    module_name, _, attribute = BUILTIN_BACKENDS[kind].partition(":")
    import importlib

    backend_class = getattr(importlib.import_module(module_name), attribute)
    return backend_class(model, seed) if kind == "scripted" else backend_class(model, options)
