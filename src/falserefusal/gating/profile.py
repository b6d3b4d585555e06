"""Profiles of thresholds.yaml: alpha, budget, per-task limits and tolerances, inconclusive policy, sequential looks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from falserefusal.design.personas import check_keys, read_yaml
from falserefusal.gating.kind_table import GATE_KIND_TABLE
from falserefusal.types import FalseRefusalError

_PROFILE_KEYS = {
    "description",
    "alpha",
    "samples",
    "max_refusal_rate",
    "max_persona_disparity",
    "noninferiority",
    "sequential",
    "inconclusive",
    "detector_correction",
    "max_non_answer_rate",
    "max_intersectional_excess",
}


_SEQUENTIAL_KEYS = {"rounds", "futility", "mde"}


#: what an INCONCLUSIVE gate does in CI: fail the item, pass it with a warning, or pass it (marked either way)
INCONCLUSIVE_POLICIES = ("fail", "warn", "pass")

#: candidate-versus-baseline gate kinds -> their margin key under a profile's `noninferiority`
NONINFERIORITY_MARGINS = {k.name: k.limit_key for k in GATE_KIND_TABLE.values() if k.versus_baseline_model}


@dataclass(frozen=True)
class Profile:
    """One named gating policy from thresholds.yaml."""

    name: str
    alpha: float
    samples: int
    max_refusal_rate: Mapping[str, float]  # task -> limit; key "default" for the rest
    max_persona_disparity: Mapping[str, float]
    description: str = ""
    noninferiority: Mapping[str, Any] = field(default_factory=dict)
    sequential: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    inconclusive: str = "warn"  # fail | warn | pass: what an INCONCLUSIVE gate does in CI
    detector_correction: str = "none"  # none | audit: with --audit, rate and disparity gates decide on corrected rates
    max_non_answer_rate: Mapping[str, float] | None = None  # task -> limit ("default" for the rest); None: no such gate
    max_intersectional_excess: Mapping[str, float] | None = None  # task -> tolerance; None: no compounding gate

    def limit(self, kind: str, task: str) -> float:
        """The limit (or margin) of a gate kind on a task: the kind's key in this profile (gating.kind_table)."""
        entry = GATE_KIND_TABLE[kind]
        table = self.noninferiority[entry.limit_key] if entry.versus_baseline_model else getattr(self, entry.limit_key)
        if table is None:
            raise FalseRefusalError(
                f"profile '{self.name}' has no {entry.limit_key}; fix: add e.g. {entry.limit_key}: 0.05"
            )
        return float(table.get(task, table["default"]))

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self).items()}


def _limits(path: Path, name: str, key: str, value: Any) -> dict[str, float]:
    table = value if isinstance(value, Mapping) else {"default": value}
    if "default" not in table:
        raise FalseRefusalError(f"{path}: profile '{name}' {key} needs a 'default' entry; fix: add default: <limit>")
    try:
        if any(isinstance(limit, bool) for limit in table.values()):
            raise TypeError("a yes/no is not a limit")
        limits = {str(task): float(limit) for task, limit in table.items()}
    except (TypeError, ValueError):
        raise FalseRefusalError(f"{path}: profile '{name}' {key} must be numbers; got {value!r}") from None
    bad = {t: v for t, v in limits.items() if not (-1.0 <= v <= 1.0)}
    if bad:
        raise FalseRefusalError(f"{path}: profile '{name}' {key} {bad} outside [-1, 1]; limits are proportions")
    return limits


def _rates(path: Path, name: str, key: str, limits: Mapping[str, float]) -> Mapping[str, float]:
    """A refusal-rate limit is a proportion in (0, 1]: at 0 no run can PASS (every upper bound is above 0), and a
    negative one FAILed nothing at 0 refusals (it was accepted before)."""
    bad = {t: v for t, v in limits.items() if not 0.0 < v <= 1.0}
    if bad:
        raise FalseRefusalError(
            f"{path}: profile '{name}' {key} {bad} must lie in (0, 1]: a rate is a proportion "
            "and at 0 no run can PASS; fix: set e.g. 0.05"
        )
    return limits


def _tolerances(path: Path, name: str, key: str, limits: Mapping[str, float]) -> Mapping[str, float]:
    """A disparity or non-inferiority tolerance must be > 0: a PASS shows the effect lies below it."""
    bad = {t: v for t, v in limits.items() if v <= 0.0}
    if bad:
        raise FalseRefusalError(
            f"{path}: profile '{name}' {key} {bad} must be > 0: it is the tolerance a PASS shows the effect to be "
            "below (at 0 no run can PASS); fix: set e.g. 0.02"
        )
    return limits


def load_profile(path: Path, name: str) -> Profile:
    """Read one profile, rejecting unknown keys and impossible values with the file and profile named."""
    data = check_keys(path, "the top level", read_yaml(path), {"profiles"}, {"profiles"})
    profiles = data["profiles"] or {}
    if name not in profiles:
        raise FalseRefusalError(f"--profile {name}: not in {path}; known profiles: {', '.join(sorted(profiles))}")
    entry = check_keys(
        path, f"profile '{name}'", profiles[name], _PROFILE_KEYS, {"alpha", "max_refusal_rate", "max_persona_disparity"}
    )
    alpha = entry["alpha"]
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 0.5:
        raise FalseRefusalError(f"{path}: profile '{name}' alpha {alpha!r} must be a number in (0, 0.5)")
    samples = entry.get("samples", 40)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise FalseRefusalError(f"{path}: profile '{name}' samples {samples!r} must be a positive integer")
    noninferiority = entry.get("noninferiority") or {}
    if noninferiority:
        check_keys(
            path,
            f"profile '{name}' noninferiority",
            noninferiority,
            set(NONINFERIORITY_MARGINS.values()),
            set(NONINFERIORITY_MARGINS.values()),
        )
        noninferiority = {
            key: _tolerances(path, name, f"noninferiority.{key}", _limits(path, name, f"noninferiority.{key}", value))
            for key, value in noninferiority.items()
        }
    inconclusive = entry.get("inconclusive", "warn")
    if inconclusive not in INCONCLUSIVE_POLICIES:
        raise FalseRefusalError(
            f"{path}: profile '{name}' inconclusive {inconclusive!r}: use one of {', '.join(INCONCLUSIVE_POLICIES)}"
        )
    correction = entry.get("detector_correction", "none")
    if correction not in ("none", "audit") or (correction == "audit" and entry.get("sequential")):
        raise FalseRefusalError(
            f"{path}: profile '{name}' detector_correction {correction!r}: use none or audit (audit: not with "
            "sequential, whose looks decide on the detector's own readings)"
        )
    return Profile(
        name=name,
        alpha=float(alpha),
        samples=samples,
        max_refusal_rate=_rates(
            path, name, "max_refusal_rate", _limits(path, name, "max_refusal_rate", entry["max_refusal_rate"])
        ),
        max_persona_disparity=_tolerances(
            path,
            name,
            "max_persona_disparity",
            _limits(path, name, "max_persona_disparity", entry["max_persona_disparity"]),
        ),
        description=str(entry.get("description", "")),
        noninferiority=noninferiority,
        sequential=_sequential(path, name, entry.get("sequential") or {}),
        source=str(path),
        inconclusive=str(inconclusive),
        detector_correction=str(correction),
        max_non_answer_rate=None
        if entry.get("max_non_answer_rate") is None
        else _rates(
            path, name, "max_non_answer_rate", _limits(path, name, "max_non_answer_rate", entry["max_non_answer_rate"])
        ),
        max_intersectional_excess=None
        if entry.get("max_intersectional_excess") is None
        else _tolerances(
            path,
            name,
            "max_intersectional_excess",
            _limits(path, name, "max_intersectional_excess", entry["max_intersectional_excess"]),
        ),
    )


def _sequential(path: Path, name: str, value: Any) -> dict[str, Any]:
    """`sequential: {rounds: 5, futility: 0.05, mde: 0.03}`, checked; {} when the profile samples all at once."""
    if not value:
        return {}
    entry = check_keys(path, f"profile '{name}' sequential", value, _SEQUENTIAL_KEYS, {"rounds"})
    rounds, futility, mde = entry["rounds"], entry.get("futility", 0.05), entry.get("mde", 0.03)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise FalseRefusalError(f"{path}: profile '{name}' sequential.rounds {rounds!r} must be a positive integer")
    for key, number in (("futility", futility), ("mde", mde)):
        if not isinstance(number, (int, float)) or not 0.0 < number < 1.0:
            raise FalseRefusalError(f"{path}: profile '{name}' sequential.{key} {number!r} must be a number in (0, 1)")
    return {"rounds": rounds, "futility": float(futility), "mde": float(mde)}
