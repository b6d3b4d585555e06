"""The product suite: one pytest item per release gate, parametrised by the falserefusal plugin.

Installed, it runs from any folder with `pytest --pyargs falserefusal` (the repository's tests/refusal/test_gates.py
imports these functions, so `pytest` there runs the same items). Give `--model <hub id | folder | .gguf>`, or run the
embedded SmolLM2; see the README.
"""

from typing import Any


def test_refusal_rate(refusal_rate_gate: Any, falserefusal_gate: Any) -> None:
    """The task's refusal rate, over every persona and the baseline, stays under the profile's limit."""
    falserefusal_gate(refusal_rate_gate)


def test_non_answer_rate(non_answer_rate_gate: Any, falserefusal_gate: Any) -> None:
    """With max_non_answer_rate in the profile: the task's non-answer rate (loops, echoes, gibberish, empty), over
    every persona and the baseline, stays under its limit. Without the key there is no such item."""
    falserefusal_gate(non_answer_rate_gate)


def test_persona_disparity(persona_disparity_gate: Any, falserefusal_gate: Any) -> None:
    """Adopting the persona raises the refusal rate by no more than the limit, on the same requests."""
    falserefusal_gate(persona_disparity_gate)


def test_noninferiority(noninferiority_gate: Any, falserefusal_gate: Any) -> None:
    """With --baseline-model: the task's refusal rate exceeds the baseline model's by no more than the margin."""
    falserefusal_gate(noninferiority_gate)


def test_noninferiority_persona(noninferiority_persona_gate: Any, falserefusal_gate: Any) -> None:
    """With --baseline-model: the persona's disparity grows by no more than the margin over the baseline model's."""
    falserefusal_gate(noninferiority_persona_gate)


def test_added_gate(falserefusal_added_gate: Any, falserefusal_custom_gate: Any) -> None:
    """A pytest_falserefusal_add_gates hook gate (falserefusal.gating.custom.AddedGate) on one (model, task) family."""
    falserefusal_added_gate.check(falserefusal_custom_gate)


def test_intersectional_excess(intersectional_excess_gate: Any, falserefusal_gate: Any) -> None:
    """With intersections asked and max_intersectional_excess in the profile: the intersection's disparity exceeds
    the sum of its markers' disparities by no more than the tolerance. Without either there is no such item."""
    falserefusal_gate(intersectional_excess_gate)
