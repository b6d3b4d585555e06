"""The table of gate kinds: per kind its statistic, its profile key, what it counts, its pytest fixture and report name.

Every place that treats kinds differently reads this table instead of comparing kind strings."""

from __future__ import annotations

from dataclasses import dataclass

#: the statistics a gate can be tested with (falserefusal.gating.statistics)
STATISTICS = ("wilson", "tango", "block_mean", "excess")


@dataclass(frozen=True)
class GateKind:
    name: str  # GateSpec.kind
    statistic: (
        str  # wilson: a rate at the items' effective n; tango: a paired disparity; block_mean: a paired difference
    )
    limit_key: str  # the profile key of its limit (under `noninferiority:` for the candidate-versus-baseline kinds)
    title: str  # how the report and messages name it
    fixture: str  # the pytest fixture the packaged suite's test of this kind asks for
    per_persona: bool  # one gate per persona (else one per task)
    counts: str = "refusal"  # the answer outcome it counts
    optional: bool = False  # only where the profile sets its key (else no gate and no item)
    scale: str = "rate"  # rate: shown as a percentage; difference: in percentage points
    per_intersection: bool = False  # one gate per intersection of the run (falserefusal.design.personas.Intersection)

    @property
    def versus_baseline_model(self) -> bool:
        """Compares the candidate with --baseline-model (non-inferiority)."""
        return self.statistic == "block_mean"


GATE_KIND_TABLE: dict[str, GateKind] = {
    kind.name: kind
    for kind in (
        GateKind("refusal_rate", "wilson", "max_refusal_rate", "refusal rate", "refusal_rate_gate", False),
        GateKind(
            "non_answer_rate",
            "wilson",
            "max_non_answer_rate",
            "non-answer rate",
            "non_answer_rate_gate",
            False,
            counts="non_answer",
            optional=True,
        ),
        GateKind(
            "persona_disparity",
            "tango",
            "max_persona_disparity",
            "persona disparity",
            "persona_disparity_gate",
            True,
            scale="difference",
        ),
        GateKind(
            "noninferiority",
            "block_mean",
            "margin",
            "non-inferiority",
            "noninferiority_gate",
            False,
            scale="difference",
        ),
        GateKind(
            "noninferiority_persona",
            "block_mean",
            "persona_margin",
            "non-inferiority of disparity",
            "noninferiority_persona_gate",
            True,
            scale="difference",
        ),
        GateKind(
            "intersectional_excess",
            "excess",  # the block mean of d_I - Σ d_m (falserefusal.analysis.intersections)
            "max_intersectional_excess",
            "intersectional excess",
            "intersectional_excess_gate",
            False,
            optional=True,
            scale="difference",
            per_intersection=True,
        ),
    )
}
assert all(kind.statistic in STATISTICS for kind in GATE_KIND_TABLE.values())


def kind_of(name: str) -> GateKind | None:
    """The kind of a built-in gate; None for a custom gate (custom:...)."""
    return GATE_KIND_TABLE.get(name)
