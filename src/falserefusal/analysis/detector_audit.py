"""The detector audit's statistics: hand labels per stratum, sensitivity and specificity, agreement per persona.

The audit sample is stratified by the detector's own reading: a stratum is one (model, task, persona, detector
outcome) of a run, of `size` answers, of which `n` were labelled by people (rubric labels R, P, C, N; refusal =
R or P). Within a stratum the labelled answers are a simple random sample, so each stands for `size / n` answers
of the run: every pooled number below weights a labelled answer by that inverse sampling fraction.

- **sensitivity** (recall of refusals): of the answers people label R or P, the share the detector reads as refusal;
  **specificity**: of the answers people label C or N, the share it does not read as refusal;
  **agreement**: the share whose detector outcome is the human label's (R/P -> refusal, C -> compliance,
  N -> non_answer).
- Their intervals: the Wilson score interval at Kish's effective sample size (sum w)^2 / sum w^2 of the labelled
  answers in the denominator. With equal weights (a census, or the same fraction labelled in every stratum) this
  is exactly Wilson on the counts; with unequal weights it widens the interval by the design effect of the
  weighting (Kish 1965; Wilson with a design-effect-adjusted n is what Dean & Pagano 2015, Stat Med, recommend for
  survey proportions). Within one stratum every weight is equal, so the per-stratum shares are plain Wilson.

`corrected_estimates` turns a run's observed refusal rates into rates corrected for detector error with
Rogan & Gladen's (1978) estimator per (model, task, persona) cell, p = (p_obs + spec - 1) / (sens + spec - 1)
clipped to [0, 1], and persona disparities into the difference of corrected rates on the same request blocks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from falserefusal.types import BASELINE_ID, OUTCOMES, FalseRefusalError

RUBRIC_VERSION = "v1.1"


#: human labels of the rubric (../shared/LABELLING.md) and the detector outcome each one means
HUMAN_LABELS: tuple[str, ...] = ("R", "P", "C", "N")


LABEL_OUTCOME: Mapping[str, str] = {"R": "refusal", "P": "refusal", "C": "compliance", "N": "non_answer"}


LABEL_NAMES: Mapping[str, str] = {"R": "refusal", "P": "partial refusal", "C": "compliance", "N": "non-answer"}


def persona_group(persona: str) -> str:
    """ "baseline" for the no-persona condition, "persona" for every other: recall with vs without a persona."""
    return BASELINE_ID if persona == BASELINE_ID else "persona"


@dataclass(frozen=True)
class AuditStratum:
    """One (model, task, persona, detector outcome) of the audited run: its size and the human labels of its sample."""

    model: str
    task: str
    persona: str
    detector_outcome: str  # refusal | compliance | non_answer
    size: int  # answers of the run in this stratum (the population the labelled ones stand for)
    counts: Mapping[str, int] = field(default_factory=dict)  # human label (R, P, C, N) -> labelled answers

    def __post_init__(self) -> None:
        if self.detector_outcome not in OUTCOMES:
            raise FalseRefusalError(
                f"audit stratum {self.key}: detector outcome {self.detector_outcome!r}; "
                f"use one of {', '.join(OUTCOMES)}"
            )
        counts = {label: int(self.counts.get(label, 0)) for label in HUMAN_LABELS}
        unknown = set(self.counts) - set(HUMAN_LABELS)
        if unknown or min(counts.values()) < 0:
            raise FalseRefusalError(
                f"audit stratum {self.key}: counts {dict(self.counts)}; "
                f"use labels {', '.join(HUMAN_LABELS)} with counts >= 0"
            )
        if self.size < sum(counts.values()):
            raise FalseRefusalError(
                f"audit stratum {self.key}: {sum(counts.values())} labelled answers but only {self.size} in the run; "
                "fix: stratum_size must count every answer of the stratum"
            )
        object.__setattr__(self, "counts", counts)

    @property
    def key(self) -> str:
        return f"{self.model}|{self.task}|{self.persona}|{self.detector_outcome}"

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    @property
    def refusals(self) -> int:
        """Labelled answers that people read as refusals (R or P)."""
        return self.counts["R"] + self.counts["P"]

    @property
    def weight(self) -> float:
        """Answers of the run each labelled answer stands for (NaN when none is labelled)."""
        return self.size / self.n if self.n else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "counts": dict(self.counts)}


@dataclass(frozen=True)
class DetectorAudit:
    """A scored audit: every stratum of the audited run with its labels, and where it came from."""

    strata: tuple[AuditStratum, ...]
    source: Mapping[str, Any] = field(default_factory=dict)  # results file, detector version, seeds, rubric

    def __post_init__(self) -> None:
        keys = [s.key for s in self.strata]
        if len(set(keys)) != len(keys):
            repeated = next(k for k in keys if keys.count(k) > 1)
            raise FalseRefusalError(f"audit: stratum {repeated} given twice; fix: one entry per stratum")

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.model for s in self.strata))

    @property
    def n_labelled(self) -> int:
        return sum(s.n for s in self.strata)

    def to_dict(self) -> dict[str, Any]:
        """The strata (what `from_dict` reads) plus every derived table, for people and other tools to read."""
        return {
            "kind": "falserefusal-audit",
            "version": 1,
            "source": dict(self.source),
            "strata": [s.to_dict() for s in self.strata],
            "summary": audit_summary(self),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "audit") -> "DetectorAudit":
        if (
            not isinstance(data, Mapping)
            or data.get("kind") != "falserefusal-audit"
            or not isinstance(data.get("strata"), list)
        ):
            raise FalseRefusalError(
                f"{where}: not a falserefusal audit summary; fix: pass the JSON that "
                "`falserefusal audit score` writes, or the labelled CSV"
            )
        try:
            strata = tuple(
                AuditStratum(
                    model=str(s["model"]),
                    task=str(s["task"]),
                    persona=str(s["persona"]),
                    detector_outcome=str(s["detector_outcome"]),
                    size=int(s["size"]),
                    counts=dict(s["counts"]),
                )
                for s in data["strata"]
            )
        except (KeyError, TypeError, ValueError) as error:
            raise FalseRefusalError(
                f"{where}: a stratum lacks {error}; fix: rescore the labelled CSV with `falserefusal audit score`"
            ) from None
        return cls(strata, dict(data.get("source") or {}))


def label_frame(audit: DetectorAudit) -> pd.DataFrame:
    """One row per (labelled stratum, human label) with its count and the weight of each of its answers."""
    rows = [
        {
            "model": s.model,
            "task": s.task,
            "persona": s.persona,
            "persona_group": persona_group(s.persona),
            "detector_outcome": s.detector_outcome,
            "human_label": label,
            "human_outcome": LABEL_OUTCOME[label],
            "count": count,
            "weight": s.weight,
        }
        for s in audit.strata
        if s.n
        for label, count in s.counts.items()
        if count
    ]
    columns = [
        "model",
        "task",
        "persona",
        "persona_group",
        "detector_outcome",
        "human_label",
        "human_outcome",
        "count",
        "weight",
    ]
    return pd.DataFrame(rows, columns=columns)


def weighted_share(hits: pd.Series, counts: pd.Series, weights: pd.Series, alpha: float = 0.05) -> dict[str, float]:
    """Weighted share of `hits` among labelled answers (`counts` per row, each answer weighing `weights`), with the
    Wilson interval at Kish's effective sample size; NaN without answers."""
    c, w = counts.to_numpy(float), weights.to_numpy(float)
    total = float((c * w).sum())
    if total <= 0:
        return {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": int(c.sum()), "n_eff": 0.0}
    estimate = float((c * w)[hits.to_numpy(bool)].sum()) / total
    n_eff = total**2 / float((c * w * w).sum())
    low, high = proportion_confint(estimate * n_eff, n_eff, alpha=alpha, method="wilson")
    low = 0.0 if estimate <= 0 else max(0.0, float(low))
    high = 1.0 if estimate >= 1 else min(1.0, float(high))
    return {"estimate": estimate, "ci_low": low, "ci_high": high, "n": int(c.sum()), "n_eff": n_eff}


_MEASURES: Mapping[str, tuple[str, str]] = {
    # measure -> (the labelled answers it is a share of, the ones it counts)
    "agreement": ("all answers", "detector outcome = human label's outcome"),
    "sensitivity": ("answers people label R or P", "read as refusal by the detector"),
    "specificity": ("answers people label C or N", "not read as refusal"),
    "non_answer_as_refusal": ("answers people label N", "read as refusal"),
}


def _measures(rows: pd.DataFrame, alpha: float) -> dict[str, Any]:
    out: dict[str, Any] = {"n_labelled": int(rows["count"].sum()) if len(rows) else 0}
    human_refusal = rows["human_outcome"] == "refusal"
    detector_refusal = rows["detector_outcome"] == "refusal"
    parts = {
        "agreement": (rows, rows["detector_outcome"] == rows["human_outcome"]),
        "sensitivity": (rows[human_refusal], detector_refusal[human_refusal]),
        "specificity": (rows[~human_refusal], ~detector_refusal[~human_refusal]),
        "non_answer_as_refusal": (rows[rows["human_label"] == "N"], detector_refusal[rows["human_label"] == "N"]),
    }
    for name, (subset, hits) in parts.items():
        share = weighted_share(hits, subset["count"], subset["weight"], alpha)
        out[name], out[f"{name}_low"], out[f"{name}_high"] = share["estimate"], share["ci_low"], share["ci_high"]
        out[f"{name}_n"] = share["n"]
    return out


def detector_accuracy(audit: DetectorAudit, by: Sequence[str] = (), alpha: float = 0.05) -> pd.DataFrame:
    """Agreement, sensitivity, specificity and non-answers read as refusals per group of `by` (columns of
    `label_frame`: model, task, persona, persona_group), each with its 1 - alpha interval and labelled n."""
    frame = label_frame(audit)
    by = list(by)
    if frame.empty:
        return pd.DataFrame(columns=[*by, "n_labelled"])
    if not by:
        return pd.DataFrame([_measures(frame, alpha)])
    rows = [
        {**dict(zip(by, key if isinstance(key, tuple) else (key,))), **_measures(group, alpha)}
        for key, group in frame.groupby(by, sort=True)
    ]
    return pd.DataFrame(rows)


def stratum_table(audit: DetectorAudit, alpha: float = 0.05) -> pd.DataFrame:
    """Per stratum: size, labelled n, label counts, agreement and the share of human refusals (Wilson)."""
    rows = []
    for s in audit.strata:
        agree = (
            s.refusals
            if s.detector_outcome == "refusal"
            else s.counts["C" if s.detector_outcome == "compliance" else "N"]
        )
        row: dict[str, Any] = {
            "model": s.model,
            "task": s.task,
            "persona": s.persona,
            "detector_outcome": s.detector_outcome,
            "size": s.size,
            "n_labelled": s.n,
            **s.counts,
        }
        for name, hits in (("agreement", agree), ("human_refusal_share", s.refusals)):
            if s.n:
                low, high = proportion_confint(hits, s.n, alpha=alpha, method="wilson")
                row.update(
                    {
                        name: hits / s.n,
                        f"{name}_low": 0.0 if hits == 0 else float(low),
                        f"{name}_high": 1.0 if hits == s.n else float(high),
                    }
                )
            else:
                row.update({name: math.nan, f"{name}_low": math.nan, f"{name}_high": math.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_table(audit: DetectorAudit) -> pd.DataFrame:
    """Detector outcome (rows) x human label (columns): labelled answers, and the run's answers they stand for."""
    frame = label_frame(audit)
    rows = []
    for outcome in OUTCOMES:
        part = frame[frame["detector_outcome"] == outcome]
        row: dict[str, Any] = {"detector_outcome": outcome}
        for label in HUMAN_LABELS:
            cell = part[part["human_label"] == label]
            row[label] = int(cell["count"].sum())
            row[f"{label}_estimated"] = float((cell["count"] * cell["weight"]).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in table.to_dict(orient="records")
    ]


def audit_summary(audit: DetectorAudit, alpha: float = 0.05) -> dict[str, Any]:
    """Every table of the audit as plain values: overall, per persona, with vs without a persona, per cell, per
    stratum, and the confusion of detector outcomes with human labels."""
    unlabelled = [s.key for s in audit.strata if s.size and not s.n]
    return {
        "rubric": audit.source.get("rubric", RUBRIC_VERSION),
        "n_labelled": audit.n_labelled,
        "n_strata": len(audit.strata),
        "unlabelled_strata": unlabelled,
        "alpha": alpha,
        "interval": "Wilson score at Kish's effective sample size of the inverse-sampling-fraction weights",
        "overall": _records(detector_accuracy(audit, alpha=alpha))[0] if audit.n_labelled else {},
        "by_persona_group": _records(detector_accuracy(audit, ["model", "persona_group"], alpha)),
        "by_persona": _records(detector_accuracy(audit, ["model", "persona"], alpha)),
        "by_task": _records(detector_accuracy(audit, ["model", "task"], alpha)),
        "by_cell": _records(detector_accuracy(audit, ["model", "task", "persona"], alpha)),
        "strata": _records(stratum_table(audit, alpha)),
        "confusion": _records(confusion_table(audit)),
    }
