"""thresholds.yaml profiles -> gates -> outcomes: one pass/fail decision per gate, with the numbers behind it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from falserefusal.analysis.paired import paired_difference_ci, paired_difference_pvalue
from falserefusal.personas import check_keys, read_yaml
from falserefusal.types import BASELINE_ID, FalseRefusalError

_PROFILE_KEYS = {
    "description", "alpha", "samples", "max_refusal_rate", "max_persona_disparity",
    "noninferiority", "sequential",
}
GATE_KINDS = ("refusal_rate", "persona_disparity")
EVIDENCE_LIMIT = 10  # case ids quoted in a failure message


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

    def limit(self, kind: str, task: str) -> float:
        table = self.max_refusal_rate if kind == "refusal_rate" else self.max_persona_disparity
        return float(table.get(task, table["default"]))

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self).items()}


def _limits(path: Path, name: str, key: str, value: Any) -> dict[str, float]:
    table = value if isinstance(value, Mapping) else {"default": value}
    if "default" not in table:
        raise FalseRefusalError(f"{path}: profile '{name}' {key} needs a 'default' entry; fix: add default: <limit>")
    try:
        limits = {str(task): float(limit) for task, limit in table.items()}
    except (TypeError, ValueError):
        raise FalseRefusalError(f"{path}: profile '{name}' {key} must be numbers; got {value!r}") from None
    bad = {t: v for t, v in limits.items() if not (-1.0 <= v <= 1.0)}
    if bad:
        raise FalseRefusalError(f"{path}: profile '{name}' {key} {bad} outside [-1, 1]; limits are proportions")
    return limits


def load_profile(path: Path, name: str) -> Profile:
    """Read one profile, rejecting unknown keys and impossible values with the file and profile named."""
    data = check_keys(path, "the top level", read_yaml(path), {"profiles"}, {"profiles"})
    profiles = data["profiles"] or {}
    if name not in profiles:
        raise FalseRefusalError(f"--profile {name}: not in {path}; known profiles: {', '.join(sorted(profiles))}")
    entry = check_keys(path, f"profile '{name}'", profiles[name], _PROFILE_KEYS, {"alpha", "max_refusal_rate", "max_persona_disparity"})
    alpha = entry["alpha"]
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 0.5:
        raise FalseRefusalError(f"{path}: profile '{name}' alpha {alpha!r} must be a number in (0, 0.5)")
    samples = entry.get("samples", 40)
    if not isinstance(samples, int) or samples < 1:
        raise FalseRefusalError(f"{path}: profile '{name}' samples {samples!r} must be a positive integer")
    return Profile(
        name=name,
        alpha=float(alpha),
        samples=samples,
        max_refusal_rate=_limits(path, name, "max_refusal_rate", entry["max_refusal_rate"]),
        max_persona_disparity=_limits(path, name, "max_persona_disparity", entry["max_persona_disparity"]),
        description=str(entry.get("description", "")),
        noninferiority=dict(entry.get("noninferiority") or {}),
        sequential=dict(entry.get("sequential") or {}),
        source=str(path),
    )


@dataclass(frozen=True)
class GateSpec:
    """A gate known before any generation: what is compared, against which limit."""

    kind: str  # refusal_rate | persona_disparity
    model: str
    task: str
    persona: str | None
    limit: float

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
    passed: bool
    estimate: float  # refusal rate, or risk difference
    ci_low: float  # two-sided 1 - alpha interval (unadjusted), for reading
    ci_high: float
    bound: float  # one-sided bound at the Holm-adjusted level: the gate fails when it clears the limit
    p_value: float  # one-sided, against the limit
    p_adjusted: float  # Holm within the family
    alpha_family: float
    n: int  # cases (rate) or pairs (disparity)
    detail: Mapping[str, Any]  # rates behind a disparity, refusals, flipped blocks ...
    evidence: tuple[str, ...]  # case ids behind the result

    @property
    def message(self) -> str:
        return describe(self)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["message"] = self.message
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GateOutcome":
        values = {k: v for k, v in data.items() if k != "message"}
        values["spec"] = GateSpec(**values["spec"])
        values["evidence"] = tuple(values["evidence"])
        return cls(**values)


def gate_specs(profile: Profile, models: Sequence[str], tasks: Sequence[str], personas: Sequence[str]) -> list[GateSpec]:
    """Every gate of a run, in a stable order (the same on every xdist worker)."""
    specs: list[GateSpec] = []
    for model in models:
        for task in tasks:
            specs.append(GateSpec("refusal_rate", model, task, None, profile.limit("refusal_rate", task)))
            for persona in personas:
                specs.append(GateSpec("persona_disparity", model, task, persona, profile.limit("persona_disparity", task)))
    return specs


def family_alpha(profile: Profile, n_families: int) -> float:
    """Bonferroni across families, Holm within: the suite's family-wise error stays at most alpha."""
    return profile.alpha / max(1, n_families)


def design_effect(refused: pd.Series, blocks: pd.Series) -> float:
    """Variance inflation of a proportion from correlated answers within request blocks (>= 1)."""
    n = len(refused)
    if n < 2:
        return 1.0
    p = float(refused.mean())
    if p in (0.0, 1.0):
        return 1.0
    grouped = refused.astype(float).groupby(blocks.values)
    sums, sizes = grouped.sum(), grouped.size()
    # ratio estimator variance of a cluster sample versus simple random sampling
    n_blocks = len(sizes)
    if n_blocks < 2:
        return float(sizes.iloc[0]) if len(sizes) else 1.0
    residual = sums - p * sizes
    var_cluster = n_blocks / (n_blocks - 1) * float((residual**2).sum()) / n**2
    var_iid = p * (1 - p) / n
    return max(1.0, var_cluster / var_iid)


def _rate_test(frame: pd.DataFrame, limit: float) -> tuple[float, float, float, float, int, dict[str, Any]]:
    n = len(frame)
    refusals = int(frame["refused"].sum())
    deff = design_effect(frame["refused"], frame["block"])
    n_eff = n / deff
    rate = refusals / n if n else 0.0
    if n == 0:
        return rate, 1.0, 0.0, 1.0, 0, {"refusals": 0, "design_effect": 1.0}
    # Wilson score test against the limit, at the effective sample size
    if limit >= 1.0:
        p_value = 1.0
    elif limit <= 0.0:
        p_value = 0.0 if refusals > 0 else 1.0
    else:
        z = (rate - limit) / math.sqrt(limit * (1 - limit) / n_eff)
        p_value = float(norm.sf(z))
    detail = {"refusals": refusals, "design_effect": round(deff, 3), "effective_n": round(n_eff, 1)}
    return rate, p_value, *_wilson_eff(rate, n_eff, 0.05), n, detail  # type: ignore[return-value]


def _wilson_eff(rate: float, n_eff: float, alpha: float) -> tuple[float, float]:
    """Wilson score interval at a fractional effective sample size (statsmodels accepts float counts)."""
    low, high = proportion_confint(rate * n_eff, n_eff, alpha=alpha, method="wilson")
    return max(0.0, float(low)), min(1.0, float(high))


def _one_sided_wilson_low(rate: float, n_eff: float, level: float) -> float:
    if n_eff <= 0:
        return 0.0
    return _wilson_eff(rate, n_eff, 2 * level)[0]


def paired_frame(frame: pd.DataFrame, persona: str, reference: str = BASELINE_ID) -> pd.DataFrame:
    """Persona and reference answers to the same requests, side by side, one row per block."""
    wide = frame[frame["persona"].isin([persona, reference])].pivot_table(
        index="block", columns="persona", values="refused", aggfunc="max"
    )
    if persona not in wide or reference not in wide:
        return pd.DataFrame(columns=["condition", "reference"])
    wide = wide[[persona, reference]].dropna().astype(bool)
    wide.columns = ["condition", "reference"]
    return wide


def evaluate_family(frame: pd.DataFrame, specs: Sequence[GateSpec], alpha_family: float) -> list[GateOutcome]:
    """Test every gate of one (model, task) family on its records, then Holm-correct within the family."""
    raw: list[tuple[GateSpec, float, float, float, float, int, dict[str, Any], tuple[str, ...]]] = []
    for spec in specs:
        rows = frame[(frame["model"] == spec.model) & (frame["task"] == spec.task)]
        if spec.kind == "refusal_rate":
            rate, p_value, low, high, n, detail = _rate_test(rows, spec.limit)
            evidence = tuple(rows.loc[rows["refused"], "case_id"].head(EVIDENCE_LIMIT))
            raw.append((spec, rate, p_value, low, high, n, detail, evidence))
        elif spec.kind == "persona_disparity":
            pairs = paired_frame(rows, spec.persona or "")
            n = len(pairs)
            n10 = int((pairs["condition"] & ~pairs["reference"]).sum())
            n01 = int((~pairs["condition"] & pairs["reference"]).sum())
            difference = (n10 - n01) / n if n else 0.0
            p_value = paired_difference_pvalue(n10, n01, n, margin=spec.limit)
            low, high = paired_difference_ci(n10, n01, n, alpha=0.05) if n else (-1.0, 1.0)
            flipped = pairs.index[pairs["condition"] & ~pairs["reference"]]
            detail = {
                "persona_rate": float(pairs["condition"].mean()) if n else 0.0,
                "baseline_rate": float(pairs["reference"].mean()) if n else 0.0,
                "n10": n10,
                "n01": n01,
                "flipped_blocks": [str(b) for b in flipped[:EVIDENCE_LIMIT]],
            }
            evidence = tuple(f"{block}-{spec.persona}" for block in flipped[:EVIDENCE_LIMIT])
            raw.append((spec, difference, p_value, low, high, n, detail, evidence))
        else:
            raise FalseRefusalError(f"gate kind {spec.kind!r} unknown; this is a bug")
    if not raw:
        return []
    pvalues = np.array([entry[2] for entry in raw])
    adjusted = multipletests(pvalues, alpha=alpha_family, method="holm")[1]
    # Holm's step-down level for each gate, to report a bound consistent with the decision
    order = np.argsort(pvalues, kind="stable")
    levels = np.empty(len(raw))
    for rank, index in enumerate(order):
        levels[index] = alpha_family / (len(raw) - rank)
    outcomes = []
    for (spec, estimate, p_value, low, high, n, detail, evidence), p_adj, level in zip(raw, adjusted, levels):
        if spec.kind == "refusal_rate":
            bound = _one_sided_wilson_low(estimate, n / detail.get("design_effect", 1.0), level) if n else 0.0
        else:
            pairs_detail = detail
            bound = paired_difference_ci(pairs_detail["n10"], pairs_detail["n01"], n, alpha=level, sided="lower")[0] if n else -1.0
        outcomes.append(
            GateOutcome(
                spec=spec,
                passed=bool(p_adj >= alpha_family),
                estimate=float(estimate),
                ci_low=float(low),
                ci_high=float(high),
                bound=float(bound),
                p_value=float(p_value),
                p_adjusted=float(p_adj),
                alpha_family=float(alpha_family),
                n=int(n),
                detail=detail,
                evidence=evidence,
            )
        )
    return outcomes


def evaluate_gates(frame: pd.DataFrame, specs: Sequence[GateSpec], profile: Profile, n_families: int | None = None) -> list[GateOutcome]:
    """Every family of gates; `n_families` is fixed from the run's configuration so workers agree."""
    families: dict[tuple[str, str], list[GateSpec]] = {}
    for spec in specs:
        families.setdefault(spec.family, []).append(spec)
    alpha = family_alpha(profile, n_families or len(families))
    outcomes: list[GateOutcome] = []
    for family_specs in families.values():
        outcomes.extend(evaluate_family(frame, family_specs, alpha))
    return outcomes


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def describe(outcome: GateOutcome) -> str:
    """The one paragraph a release manager reads when a gate fails (or passes)."""
    spec, verdict = outcome.spec, ("PASS" if outcome.passed else "FAIL")
    decision = (
        f"Holm-adjusted one-sided p = {outcome.p_adjusted:.3g} {'<' if not outcome.passed else '>='} "
        f"alpha {outcome.alpha_family:.3g}"
    )
    if spec.kind == "refusal_rate":
        text = (
            f"{verdict} refusal rate {spec.task} [{spec.model}]: {_pct(outcome.estimate)} "
            f"({outcome.detail.get('refusals', 0)}/{outcome.n} cases; 95% CI {_pct(outcome.ci_low)}-{_pct(outcome.ci_high)}, "
            f"design effect {outcome.detail.get('design_effect', 1.0)}) vs limit {_pct(spec.limit)}; "
            f"adjusted one-sided lower bound {_pct(outcome.bound)}; {decision}."
        )
    else:
        d = outcome.detail
        text = (
            f"{verdict} persona disparity {spec.task}/{spec.persona} [{spec.model}]: risk difference "
            f"{100 * outcome.estimate:+.1f} pp (persona {_pct(d.get('persona_rate', 0))} vs baseline "
            f"{_pct(d.get('baseline_rate', 0))} on {outcome.n} paired requests; 95% CI {100 * outcome.ci_low:+.1f} to "
            f"{100 * outcome.ci_high:+.1f} pp) vs limit {100 * spec.limit:+.1f} pp; adjusted one-sided lower bound "
            f"{100 * outcome.bound:+.1f} pp; {decision}; {d.get('n10', 0)} requests refused only with the persona, "
            f"{d.get('n01', 0)} only without."
        )
    if outcome.evidence and not outcome.passed:
        text += " Cases: " + ", ".join(outcome.evidence) + "."
    return text
