"""Backends and detectors registered by name (run-time registrations; entry points are tested with pytester)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from falserefusal import registry
from falserefusal.generation.backends import BackendOptions
from falserefusal.generation.models import ModelRef
from falserefusal.registry import load_backend
from falserefusal.types import Completion, FalseRefusalError, Verdict


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    registry.clear()
    yield
    registry.clear()


class Echo:
    name = "echo"

    def __init__(self, model: str, options: BackendOptions) -> None:
        self.model, self.options = model, options

    def identity(self) -> dict[str, Any]:
        return {"echo": self.model}

    def generate(self, requests: Any, max_new_tokens: int, stop_when: Any = None) -> list[Completion]:
        return [Completion(self.model, 1) for _ in requests]

    def close(self) -> None:
        pass


def test_a_registered_backend_serves_its_prefix_and_its_backend_name() -> None:
    with pytest.raises(FalseRefusalError, match="--backend echo: unknown backend; use one of transformers"):
        ModelRef.of("some-model", "echo")
    assert ModelRef.of("echo:hi", "transformers").kind == "transformers"  # not registered: not a prefix
    registry.register_backend("echo", Echo)
    assert ModelRef.of("echo:hi", "transformers").kind == "echo" and ModelRef.of("plain", "echo").kind == "echo"
    backend = load_backend("echo:hi", ModelRef.of("echo:hi", "transformers").kind, BackendOptions(max_new_tokens=7))
    assert isinstance(backend, Echo) and backend.options.max_new_tokens == 7
    with pytest.raises(FalseRefusalError, match="use one of transformers, scripted, openai, echo"):
        ModelRef.of("x", "nope")


class Upper:
    """Refuses every answer in capitals, else asks the rule detector."""

    def __init__(self, base: Any) -> None:
        self.base, self.version = base, base.version + "+upper"

    def detect(self, text: str, labels: Any = ()) -> Verdict:
        return Verdict(True, "upper:shout") if text.isupper() else self.base.detect(text, labels)

    def is_decided(self, text: str, labels: Any = ()) -> bool:
        return self.base.is_decided(text, labels)


def test_a_named_detector_and_a_wrapper_shape_the_runs_detector() -> None:
    with pytest.raises(FalseRefusalError, match="--detector upper: unknown detector; use one of rules"):
        registry.make_detector("upper")
    registry.register_detector("upper", Upper)
    detector = registry.make_detector("upper")
    assert detector.detect("NO.", ()).rule == "upper:shout" and detector.version.endswith("+upper")
    assert not detector.detect("Offensive.", ("offensive", "not offensive")).refused
    assert [v.rule for v in detector.detect_many(["NO.", "NO!"])] == ["upper:shout"] * 2  # the generator's batch call
    calls = []
    registry.add_detector_wrapper(lambda d: calls.append(d.version))  # returns None: keeps the detector
    assert registry.make_detector("upper").version == detector.version and calls == [detector.version]
    registry.add_detector_wrapper(lambda d: object())
    with pytest.raises(FalseRefusalError, match="lacks detect, is_decided, a version string"):
        registry.make_detector()
