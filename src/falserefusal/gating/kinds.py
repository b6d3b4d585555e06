"""Gate specs and outcomes, the gates a profile asks for per (model, task) family, and the three verdicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from falserefusal.gating.kind_table import GATE_KIND_TABLE
from falserefusal.gating.profile import Profile
from falserefusal.types import FalseRefusalError

GATE_KINDS = tuple(GATE_KIND_TABLE)


#: the rate gates -> the answer outcome each counts (a task's share of answers with it, over every persona and the
#: baseline); one test (`_rate_test`) for both. non_answer_rate exists only where a profile sets max_non_answer_rate.
RATE_OUTCOMES = {k.name: k.counts for k in GATE_KIND_TABLE.values() if k.statistic == "wilson"}


#: the rate gate's count in its `detail`, per outcome counted
_COUNT_KEYS = {"refusal": "refusals", "non_answer": "non_answers"}


EVIDENCE_LIMIT = 10  # case ids quoted in a failure message


VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")


@dataclass(frozen=True)
class GateSpec:
    """A gate known before any generation: what is compared, against which limit."""

    kind: str  # refusal_rate | non_answer_rate | persona_disparity | noninferiority | noninferiority_persona
    model: str
    task: str
    persona: str | None
    limit: float
    reference: str | None = None  # the baseline model a non-inferiority gate compares `model` with
    markers: tuple[str, ...] = ()  # an intersectional_excess gate's markers (persona is the intersection)

    @property
    def family(self) -> tuple[str, str]:
        """Holm runs within a (model, task) family; that is also the unit of generation per xdist group."""
        return (self.model, self.task)

    def gate_id(self, model_label: str | None) -> str:
        parts = [p for p in (model_label, self.task, self.persona) if p]
        return "-".join(parts)


@dataclass(frozen=True)
class GateOutcome:
    spec: GateSpec
    passed: bool  # not FAIL (the failure test did not reject); the three-state answer is `verdict`
    estimate: float  # refusal rate, or risk difference
    ci_low: float  # two-sided 95% interval (unadjusted, new items of this kind), for reading
    ci_high: float
    bound: float  # one-sided lower bound at the Holm-adjusted level: the gate FAILs when it lies above the limit
    p_value: float  # one-sided, against the limit (H0: effect <= limit)
    p_adjusted: float  # Holm within the family
    alpha_family: float
    n: int  # cases (rate) or pairs (disparity)
    detail: Mapping[str, Any]  # rates behind a disparity, refusals, flipped blocks, design effects, these-items CI ...
    evidence: tuple[str, ...]  # case ids behind the result
    verdict: str = ""  # PASS | FAIL | INCONCLUSIVE; "" (outcomes saved before verdicts) is read from `passed`
    upper_bound: float = 1.0  # one-sided upper bound at the PASS test's level: the gate PASSes when below the limit
    p_pass: float = 1.0  # one-sided p of the PASS test (H0: effect >= limit)
    p_pass_adjusted: float = 1.0  # the p compared with alpha_pass (= p_pass; Holm within the family before 0.2.1)
    mde: float = 1.0  # smallest excess over the limit this run FAILs with MDE_POWER (from the observed variance and n)
    alpha_pass: float | None = None  # the PASS test's level (the profile's alpha); None: saved before, alpha_family

    @property
    def pass_level(self) -> float:
        """The level the PASS test was decided at (alpha_family for outcomes saved before alpha_pass existed)."""
        return self.alpha_family if self.alpha_pass is None else self.alpha_pass

    def __post_init__(self) -> None:
        if not self.verdict:
            object.__setattr__(self, "verdict", "PASS" if self.passed else "FAIL")
        if self.verdict not in VERDICTS:
            raise ValueError(f"gate verdict {self.verdict!r}: use one of {', '.join(VERDICTS)}")

    @property
    def message(self) -> str:
        from falserefusal.gating.messages import describe  # messages read outcomes: imported when first needed

        return describe(self)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["message"] = self.message
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GateOutcome":
        values = {k: v for k, v in data.items() if k != "message"}
        values["spec"] = GateSpec(**{**values["spec"], "markers": tuple(values["spec"].get("markers") or ())})
        values["evidence"] = tuple(values["evidence"])
        return cls(**values)


def gate_specs(
    profile: Profile,
    models: Sequence[str],
    tasks: Sequence[str],
    personas: Sequence[str],
    baseline: str | None = None,
    intersections: Mapping[str, Sequence[str]] | None = None,
) -> list[GateSpec]:
    """Every gate of a run, in a stable order (the same on every xdist worker).

    With a baseline model, each candidate's (model, task) family also holds the non-inferiority gates against it,
    so Holm runs over all of the family's gates and alpha is still split over (model, task) families only.
    `intersections` (intersection id -> its markers) gives the per-intersection kinds their gates.
    """
    if baseline is not None and not profile.noninferiority:
        raise FalseRefusalError(
            f"{profile.source}: profile '{profile.name}' has no noninferiority margins, needed with a baseline model; "
            "fix: add e.g. noninferiority: {margin: 0.02, persona_margin: 0.03}"
        )
    specs: list[GateSpec] = []
    for model in models:
        for task in tasks:
            for kind in GATE_KIND_TABLE.values():  # the table's order is the gates' order within a family
                if kind.optional and getattr(profile, kind.limit_key) is None:
                    continue
                if kind.versus_baseline_model and baseline is None:
                    continue
                limit = profile.limit(kind.name, task)
                reference = baseline if kind.versus_baseline_model else None
                if kind.per_intersection:
                    for name, markers in (intersections or {}).items():
                        specs.append(GateSpec(kind.name, model, task, name, limit, markers=tuple(markers)))
                    continue
                for persona in personas if kind.per_persona else [None]:
                    specs.append(GateSpec(kind.name, model, task, persona, limit, reference))
    return specs


def family_alpha(profile: Profile, n_families: float) -> float:
    """The FAIL tests' alpha per family: Bonferroni across families, Holm within, so the suite's family-wise false-FAIL
    rate stays at most alpha (any one FAIL blocks a release: a union of rejections)."""
    return profile.alpha / max(1, n_families)


def pass_alpha(profile: Profile) -> float:
    """The PASS tests' level: the profile's alpha for each gate, unadjusted. A release is shown clean only when every
    gate PASSes, an intersection-union test (Berger, Technometrics 24:295-300, 1982): when any gate's effect is at or
    beyond its limit, all PASS together with probability at most that gate's level, so splitting alpha would only
    cost power. Each single PASS errs with probability at most alpha; the false PASSes of a suite are not
    family-wise controlled (README, "Three verdicts")."""
    return profile.alpha


def verdict_of(p_fail_adjusted: float, p_pass: float, alpha: float, alpha_pass: float) -> str:
    """FAIL when the excess over the limit is shown (Holm-adjusted p below the family's alpha), PASS when the effect is
    shown below it (p below `alpha_pass`), INCONCLUSIVE otherwise."""
    if p_fail_adjusted < alpha:
        return "FAIL"
    return "PASS" if p_pass < alpha_pass else "INCONCLUSIVE"


def ci_failed(outcome: GateOutcome, policy: str) -> bool:
    """Whether the gate fails CI: a FAIL always, an INCONCLUSIVE under the profile's `inconclusive: fail`."""
    return outcome.verdict == "FAIL" or (outcome.verdict == "INCONCLUSIVE" and policy == "fail")


def verdict_counts(outcomes: Iterable[GateOutcome]) -> dict[str, int]:
    """Gates per verdict, every verdict present (0 where none)."""
    counts = dict.fromkeys(VERDICTS, 0)
    for outcome in outcomes:
        counts[outcome.verdict] += 1
    return counts
