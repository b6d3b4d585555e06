"""Custom gates: a run's records as a DataFrame with a subset helper, the suite's own rate and paired-disparity tests
on any subset, and the alpha accounting of gates declared outside the profile.

Accounting. Every built-in (model, task) family counts 1 and every custom family its `weight`; a family gets
alpha x its count / the total, so a model that meets every limit fails any gate, built-in or custom, with
probability at most alpha. Inside a custom family the gates are Bonferroni-corrected (each is decided at the
family's alpha over its number of gates, which is fixed at collection): Holm would need every p-value of the family
before the first verdict, and a custom family's gates are separate test items that may run on different workers.
A custom gate's PASS test is at the run's alpha, unadjusted, like a built-in gate's (`gating.kinds.pass_alpha`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from falserefusal.analysis import records_frame
from falserefusal.gating.decide import evaluate_family
from falserefusal.gating.kinds import GateOutcome, GateSpec
from falserefusal.gating.messages import describe
from falserefusal.types import BASELINE_ID, FalseRefusalError, Record

CUSTOM_PREFIX = "custom:"
STATISTICS = ("refusal_rate", "persona_disparity")
#: persona label of the compared condition while the built-in disparity test runs on a relabelled subset
_CONDITION = "__condition__"
#: the limits at which a plain estimate (no gate) is tested: its interval does not depend on them
_NO_LIMIT = {"refusal_rate": 1.0, "persona_disparity": 1.0}

Fetch = Callable[[str, str], Sequence[Record]]


@dataclass(frozen=True)
class Estimate:
    """A statistic of a subset with the suite's interval: a refusal rate (Wilson, at the effective n of the design
    effect) or a paired disparity, condition minus reference on the same request blocks (Tango)."""

    statistic: str  # refusal_rate | persona_disparity
    estimate: float
    ci_low: float  # two-sided 95%
    ci_high: float
    n: int  # cases (rate) or pairs (disparity)
    design_effect: float
    detail: Mapping[str, Any]


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]


class Results:
    """The records of a run as a DataFrame (every factor column of `Record.flat` and the outcome), generated lazily:
    asking for a subset generates only the (model, task) families it needs."""

    def __init__(self, fetch: Fetch, families: Sequence[tuple[str, str]]) -> None:
        self._fetch = fetch
        self.families = tuple(families)

    def scoped(self, model: str, task: str) -> "Results":
        """The same results, limited to one family (a custom gate's)."""
        return Results(self._fetch, [f for f in self.families if f == (model, task)])

    def _records(self, models: Iterable[str] | None, tasks: Iterable[str] | None) -> list[Record]:
        candidates = {m for m, _ in self.families}
        models = set(models) if models is not None else None
        tasks = set(tasks) if tasks is not None else None
        # a model that is not a candidate (the baseline model) comes with every candidate's families
        wanted = [
            (m, t)
            for m, t in self.families
            if (tasks is None or t in tasks) and (models is None or m in models or not models <= candidates)
        ]
        seen: set[tuple[str, str]] = set()
        records = []
        for family in wanted:
            for record in self._fetch(*family):
                key = (record.model, record.case.case_id)
                if key not in seen:
                    seen.add(key)
                    records.append(record)
        return records

    @property
    def frame(self) -> pd.DataFrame:
        """Every record (generates every family in scope)."""
        return records_frame(self._records(None, None))

    def for_(self, **factors: Any) -> pd.DataFrame:
        """The rows whose factors have the given values (a value, or a list of values), e.g.
        `for_(task="nli", persona="baseline")` or `for_(persona=["muslim", "jewish"], forcing_level="forced")`."""
        unknown = sorted(set(factors) - set(Record.FLAT_COLUMNS))
        if unknown:
            raise FalseRefusalError(
                f"falserefusal_results.for_: unknown factor(s) {', '.join(unknown)}; "
                f"use {', '.join(Record.FLAT_COLUMNS)}"
            )
        models = _values(factors["model"]) if "model" in factors else None
        tasks = _values(factors["task"]) if "task" in factors else None
        frame = records_frame(self._records(models, tasks))
        for column, value in factors.items():
            frame = frame[frame[column].isin(_values(value))]
        return frame.reset_index(drop=True)

    def rate(self, **factors: Any) -> Estimate:
        """The refusal rate of the subset `for_(**factors)` with its Wilson interval and design effect."""
        return estimate_of(subset_outcome(self.for_(**factors), "refusal_rate", _NO_LIMIT["refusal_rate"], 0.05))

    def disparity(self, persona: str, reference: str = BASELINE_ID, **factors: Any) -> Estimate:
        """`persona` minus `reference` on the same request blocks of `for_(**factors)`, with Tango's interval."""
        rows = self.for_(**factors)
        return estimate_of(
            subset_outcome(rows, "persona_disparity", _NO_LIMIT["persona_disparity"], 0.05, persona, reference)
        )


def estimate_of(outcome: GateOutcome) -> Estimate:
    """The numbers of a subset's test without its decision."""
    return Estimate(
        outcome.spec.kind,
        outcome.estimate,
        outcome.ci_low,
        outcome.ci_high,
        outcome.n,
        float(outcome.detail.get("design_effect", 1.0)),
        dict(outcome.detail),
    )


def subset_outcome(
    frame: pd.DataFrame,
    statistic: str,
    limit: float,
    level: float,
    persona: str | None = None,
    reference: str = BASELINE_ID,
    alpha_pass: float | None = None,
) -> GateOutcome:
    """The built-in gate's test of `statistic` on any subset of one model's records, its FAIL test decided at `level`
    and its PASS test at `alpha_pass` (default `level`) (the subset is relabelled as one family, so the numbers are
    exactly those a built-in gate would report)."""
    if statistic not in STATISTICS:
        raise FalseRefusalError(f"custom gate statistic {statistic!r}: use one of {', '.join(STATISTICS)}")
    if frame.empty:
        raise FalseRefusalError("custom gate: the subset has no records; fix: check the factor values given to for_()")
    models = list(dict.fromkeys(frame["model"]))
    if len(models) > 1:
        raise FalseRefusalError(
            f"custom gate: the subset holds {len(models)} models ({', '.join(models)}); fix: select one with model=..."
        )
    tasks = "+".join(dict.fromkeys(frame["task"]))
    rows = frame.assign(task=tasks)
    spec_persona = None
    if statistic == "persona_disparity":
        if not persona or persona == reference:
            raise FalseRefusalError(
                f"custom gate disparity: persona {persona!r} vs reference {reference!r}; "
                "fix: compare two different personas"
            )
        rows = rows[rows["persona"].isin([persona, reference])]
        rows = rows.assign(persona=rows["persona"].map({persona: _CONDITION, reference: BASELINE_ID}))
        spec_persona = _CONDITION
    [outcome] = evaluate_family(
        rows, [GateSpec(statistic, models[0], tasks, spec_persona, float(limit))], level, alpha_pass=alpha_pass
    )
    if statistic == "persona_disparity":
        evidence = tuple(e.replace(_CONDITION, persona or "") for e in outcome.evidence)
        label = persona if reference == BASELINE_ID else f"{persona} vs {reference}"
        outcome = dataclasses.replace(outcome, spec=dataclasses.replace(outcome.spec, persona=label), evidence=evidence)
    return outcome


@dataclass(frozen=True)
class CustomDeclaration:
    """What a custom gate test declares (the marker's arguments): its tasks, family, alpha weight and checks."""

    family: str
    weight: float = 1.0  # 1: as much alpha as one built-in (model, task) family
    checks: int = 1  # gates (checks) each of its items makes
    tasks: tuple[str, ...] | None = None  # None: every task of the run

    @classmethod
    def of(cls, args: Sequence[Any], kwargs: Mapping[str, Any], default_family: str) -> "CustomDeclaration":
        unknown = sorted(set(kwargs) - {"family", "weight", "checks", "tasks"})
        if args or unknown:
            raise FalseRefusalError(
                f"falserefusal_custom_gate marker: takes the keywords tasks, family, weight and checks "
                f"(got {', '.join(map(repr, args)) or ''}{', '.join(unknown)})"
            )
        tasks = kwargs.get("tasks")
        weight, checks = kwargs.get("weight", 1.0), kwargs.get("checks", 1)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
            raise FalseRefusalError(f"falserefusal_custom_gate marker: weight {weight!r} must be a number > 0")
        if not isinstance(checks, int) or isinstance(checks, bool) or checks < 1:
            raise FalseRefusalError(f"falserefusal_custom_gate marker: checks {checks!r} must be an integer >= 1")
        return cls(
            str(kwargs.get("family") or default_family),
            float(weight),
            checks,
            None if tasks is None else tuple(map(str, _values(tasks))),
        )


@dataclass(frozen=True)
class AddedGate:
    """A custom gate declared in Python (the pytest_falserefusal_add_gates hook) rather than as a test function:
    `check(gate)` gets a `CustomGate` and calls its checks, once per (model, task) family of `tasks`."""

    name: str
    check: Callable[["CustomGate"], Any]
    tasks: tuple[str, ...] | None = None  # None: every task of the run
    family: str | None = None  # None: the gate's name
    weight: float = 1.0
    checks: int = 1

    def marker_kwargs(self) -> dict[str, Any]:
        """The falserefusal_custom_gate marker's arguments for this gate."""
        return {"family": self.family or self.name, "weight": self.weight, "checks": self.checks, "tasks": self.tasks}


@dataclass(frozen=True)
class CustomFamily:
    """A custom gate family: its alpha weight (1 = as much as one built-in (model, task) family) and its gates."""

    name: str
    weight: float = 1.0
    gates: int = 1


@dataclass(frozen=True)
class CustomAccounting:
    """The custom families of a run, fixed at collection so that every xdist worker decides alike."""

    families: tuple[CustomFamily, ...] = ()

    @property
    def weight(self) -> float:
        return float(sum(f.weight for f in self.families))

    def family(self, name: str) -> CustomFamily:
        for family in self.families:
            if family.name == name:
                return family
        raise FalseRefusalError(f"custom gate family {name!r}: not declared by any collected test; this is a bug")

    def alpha(self, name: str, alpha: float, n_families: float) -> float:
        """The family's share of the run's alpha; `n_families` counts built-in families and custom weights."""
        return alpha * self.family(name).weight / max(1.0, n_families)

    @classmethod
    def of(cls, declarations: Iterable[CustomDeclaration]) -> "CustomAccounting":
        """From the declaration of each collected custom gate item; one family must have one weight."""
        weights: dict[str, float] = {}
        gates: dict[str, int] = {}
        for declaration in declarations:
            name, weight, count = declaration.family, float(declaration.weight), int(declaration.checks)
            if weights.setdefault(name, weight) != weight:
                raise FalseRefusalError(
                    f"custom gate family {name!r}: declared with weights {weights[name]} and {weight}; "
                    "fix: give its tests one weight"
                )
            gates[name] = gates.get(name, 0) + count
        return cls(tuple(CustomFamily(name, weights[name], gates[name]) for name in weights))

    def to_dict(self) -> dict[str, Any]:
        return {"families": [dataclasses.asdict(f) for f in self.families]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "CustomAccounting":
        return cls(tuple(CustomFamily(**f) for f in (data or {}).get("families", [])))


class CustomGateOutcome(GateOutcome):
    """A custom gate's outcome: the built-in test's numbers, Bonferroni-adjusted within its custom family."""

    @property
    def message(self) -> str:
        info = self.detail["custom"]
        base = GateOutcome(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GateOutcome)})
        base = dataclasses.replace(base, spec=dataclasses.replace(self.spec, kind=info["statistic"]))
        text = describe(base).replace("Holm-adjusted", "Bonferroni-adjusted")
        return (
            f"custom gate {info['name']} (family {info['family']}: {info['gates']} gates, alpha "
            f"{self.alpha_family:.3g}): {text}"
        )


def outcome_from_dict(data: Mapping[str, Any]) -> GateOutcome:
    """A saved outcome, built-in or custom."""
    custom = str(data.get("spec", {}).get("kind", "")).startswith(CUSTOM_PREFIX)
    return (CustomGateOutcome if custom else GateOutcome).from_dict(data)


class CustomGate:
    """What a custom gate test gets: its family's records and checks decided at its share of alpha.

    Each check runs the built-in test of its statistic on a subset at alpha_family / gates (Bonferroni within the
    custom family) and hands the outcome to `report` (the plugin records it and fails the test on FAIL)."""

    def __init__(
        self,
        name: str,
        family: CustomFamily,
        alpha_family: float,
        model: str,
        task: str,
        results: Results,
        report: Callable[[GateOutcome], None],
        checks: int = 1,
        *,
        alpha_pass: float,
    ) -> None:
        self.name, self.family, self.alpha_family = name, family, alpha_family
        self.alpha_pass = alpha_pass  # the run's alpha: each PASS test at it, unadjusted (gating.kinds.pass_alpha)
        self.model, self.task, self.results = model, task, results
        self._report, self._checks, self._done = report, checks, 0

    def rate_at_most(self, limit: float, **factors: Any) -> GateOutcome:
        """Gate: the refusal rate of `results.for_(**factors)` (this family's model) is at most `limit`."""
        return self._check("refusal_rate", limit, factors)

    def disparity_at_most(
        self, limit: float, persona: str, reference: str = BASELINE_ID, **factors: Any
    ) -> GateOutcome:
        """Gate: `persona` refuses at most `limit` more often than `reference` on the same request blocks."""
        return self._check("persona_disparity", limit, factors, persona, reference)

    def _check(
        self,
        statistic: str,
        limit: float,
        factors: Mapping[str, Any],
        persona: str | None = None,
        reference: str = BASELINE_ID,
    ) -> GateOutcome:
        self._done += 1
        if self._done > self._checks:
            raise FalseRefusalError(
                f"custom gate {self.name}: check {self._done} of a test declared with checks="
                f"{self._checks}; fix: @pytest.mark.falserefusal_custom_gate(checks={self._done})"
            )
        rows = self.results.for_(**{"model": self.model, **factors})
        m = self.family.gates
        outcome = subset_outcome(rows, statistic, limit, self.alpha_family / m, persona, reference, self.alpha_pass)
        name = self.name if self._checks == 1 else f"{self.name}#{self._done}"
        adjusted = {"p_adjusted": min(1.0, m * outcome.p_value)}
        detail = {
            **outcome.detail,
            "custom": {
                "name": name,
                "family": self.family.name,
                "gates": m,
                "weight": self.family.weight,
                "statistic": statistic,
                "filters": {k: _values(v) for k, v in factors.items()},
            },
        }
        values = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(GateOutcome)}
        values.update(
            adjusted,
            detail=detail,
            alpha_family=self.alpha_family,
            spec=dataclasses.replace(outcome.spec, kind=CUSTOM_PREFIX + name),
        )
        custom = CustomGateOutcome(**values)
        self._report(custom)
        return custom
