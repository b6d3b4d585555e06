"""ModelRef: a --model string resolved once, with one label rule for gate ids, progress bars and the report."""

from __future__ import annotations

import pytest

from falserefusal.generation.backends import DEFAULT_MODEL_NAME
from falserefusal.generation.models import ModelRef, model_labels, model_refs
from falserefusal.types import FalseRefusalError


@pytest.mark.parametrize(
    ("name", "kind", "source"),
    [
        (DEFAULT_MODEL_NAME, "transformers", "default"),
        ("scripted:base=0.1", "scripted", "scripted"),
        ("openai:served-model", "openai", "served"),
        ("/no/such/model.gguf", "transformers", "file"),
        ("./checkpoints/step-100", "transformers", "folder"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "transformers", "hub"),
    ],
)
def test_a_model_string_is_classified_once(name: str, kind: str, source: str) -> None:
    ref = ModelRef.of(name, "transformers")
    assert (ref.kind, ref.source) == (kind, source)


def test_one_label_rule_for_gate_ids_and_the_report() -> None:
    """0.1.0 labelled the default model SmolLM2-135M-Instruct.Q4_1 in gate ids and ....gguf in the report."""
    from falserefusal.report import html, sections

    names = [DEFAULT_MODEL_NAME, "scripted:name=old,base=0.1", "scripted:name=old,base=0.2"]
    labels = model_labels(names)
    assert labels == {DEFAULT_MODEL_NAME: "SmolLM2-135M-Instruct.Q4_1", names[1]: "old", names[2]: "old-2"}
    assert [ref.label for ref in model_refs(names, "transformers")] == list(labels.values())
    assert getattr(html, "model_labels", model_labels) is model_labels
    assert getattr(sections, "model_labels", model_labels) is model_labels


def test_no_model_means_the_embedded_default_and_an_unknown_backend_is_a_usage_error() -> None:
    assert [ref.name for ref in model_refs((), "transformers")] == [DEFAULT_MODEL_NAME]
    with pytest.raises(FalseRefusalError, match="--backend nope: unknown backend"):
        ModelRef.of("x", "nope")
