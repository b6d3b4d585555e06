"""Rates and disparities corrected for the detector's audited error (Rogan-Gladen per stratum), with bootstrap
bounds that carry the audit's own uncertainty."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from falserefusal.analysis.detector_audit import AuditStratum, DetectorAudit, persona_group
from falserefusal.types import BASELINE_ID, OUTCOMES

#: bootstrap replicates of the corrected estimates: the report's default
CORRECTION_BOOTSTRAP = 1000


#: replicates behind gates on corrected rates: the smallest bootstrap p, 1 / 4001, lies below every Holm level of
#: a run (e.g. 0.05 / 3 tasks / 16 gates = 0.001)
GATE_BOOTSTRAP = 4000


#: probabilities at which a corrected gate keeps its replicates' quantiles, for bounds at any Holm level
BOUND_GRID: tuple[float, ...] = tuple(
    np.unique(np.concatenate([np.geomspace(1e-4, 0.5, 41), 1 - np.geomspace(1e-4, 0.5, 41)]))
)


@dataclass(frozen=True)
class CorrectedEstimates:
    """Refusal rates per (model, task, persona) and per (model, task) pooled (persona "all"), and paired persona
    disparities, corrected for detector error, with bootstrap intervals (see `corrected_estimates`)."""

    rates: pd.DataFrame
    disparities: pd.DataFrame
    n_boot: int
    alpha: float
    method: str
    # (kind, model, task, persona) -> bootstrap replicates; kind "rate" (persona "all": pooled) or "disparity"
    replicates: Mapping[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict)

    def estimate(self, kind: str, model: str, task: str, persona: str | None) -> float:
        """The corrected point estimate of one rate (persona None: pooled) or disparity; NaN if not corrected."""
        table = self.rates if kind == "rate" else self.disparities
        column = "corrected_rate" if kind == "rate" else "corrected_difference"
        row = table[(table["model"] == model) & (table["task"] == task) & (table["persona"] == (persona or "all"))]
        return float(row[column].iloc[0]) if len(row) else math.nan

    def pvalue(self, kind: str, model: str, task: str, persona: str | None, limit: float, side: str = "above") -> float:
        """Bootstrap one-sided p (the inverted percentile interval): side "above" tests H0 theta <= limit (small p:
        the estimate lies above the limit), side "below" H0 theta >= limit; (1 + k) / (1 + B) with k the replicates
        on the H0 side, so the smallest p is 1 / (1 + B). 1.0 when the estimate is not corrected."""
        values = self.replicates.get((kind, model, task, persona or "all"))
        finite = values[np.isfinite(values)] if values is not None else np.zeros(0)
        if not len(finite):
            return 1.0
        k = int((finite <= limit).sum() if side == "above" else (finite >= limit).sum())
        return (1 + k) / (1 + len(finite))

    def gate_test(
        self, gate_kind: str, model: str, task: str, persona: str | None, limit: float
    ) -> dict[str, Any] | None:
        """What a refusal-rate (persona None) or persona-disparity gate decides on, corrected: the estimate, both
        one-sided bootstrap p-values against `limit` (FAIL: H0 theta <= limit; PASS: H0 theta >= limit), the 95%
        interval, and a `detail` with the replicates' quantiles on BOUND_GRID (plain JSON values, from which the
        gates read a bound at any level); None where this gate is not corrected."""
        kind = "rate" if gate_kind == "refusal_rate" else "disparity"
        values = self.replicates.get((kind, model, task, persona or "all"))
        estimate = self.estimate(kind, model, task, persona)
        finite = values[np.isfinite(values)] if values is not None else np.zeros(0)
        if len(finite) < 2 or not math.isfinite(estimate):
            return None
        table = self.rates if kind == "rate" else self.disparities
        row = table[
            (table["model"] == model) & (table["task"] == task) & (table["persona"] == (persona or "all"))
        ].iloc[0]
        return {
            "estimate": estimate,
            "p_fail": self.pvalue(kind, model, task, persona, limit, "above"),
            "p_pass": self.pvalue(kind, model, task, persona, limit, "below"),
            "ci": (float(row["ci_low"]), float(row["ci_high"])),
            "detail": {
                "observed": float(row["observed_rate" if kind == "rate" else "observed_difference"]),
                "replicates": int(len(finite)),
                "method": self.method,
                "probabilities": list(BOUND_GRID),
                "quantiles": [float(q) for q in np.quantile(finite, BOUND_GRID)],
            },
        }

    def bound(self, kind: str, model: str, task: str, persona: str | None, level: float, side: str) -> float:
        """One-sided (1 - level) percentile bound: side "lower" or "upper"; NaN when not corrected."""
        values = self.replicates.get((kind, model, task, persona or "all"))
        finite = values[np.isfinite(values)] if values is not None else np.zeros(0)
        if not len(finite):
            return math.nan
        return float(np.percentile(finite, 100 * level if side == "lower" else 100 * (1 - level)))


class _TaskStrata:
    """The audit strata of one (model, task), with one set of posterior draws of their human-refusal shares q
    shared by every level and cell, so two cells corrected by the same strata get the same draws."""

    def __init__(self, strata: Sequence[AuditStratum], rng: np.random.Generator, n_boot: int) -> None:
        self.strata = [s for s in strata if s.n]
        self.sizes = np.array([s.size for s in self.strata], float)
        self.outcome = np.array([s.detector_outcome for s in self.strata], dtype=object)
        self.positive = self.outcome == "refusal"
        refusals = np.array([s.refusals for s in self.strata], float)
        n = np.array([s.n for s in self.strata], float)
        self.q = refusals / n if len(n) else np.zeros(0)
        # Jeffreys posterior draws of every stratum's q: Beta(r + 1/2, n - r + 1/2)
        self.q_boot = rng.beta(refusals + 0.5, n - refusals + 0.5, size=(n_boot, len(n)))
        # per detector outcome, the task's strata pooled, for the pooled rate: (size-weighted q, its draws, size).
        # Per-stratum Jeffreys draws summed over many strata whose labels found no refusal would each add their
        # prior's half pseudo-count and push the pooled rate up; so the pooled share is drawn once, from Jeffreys at
        # Kish's effective n of its labelled answers (weights size / n), as `weighted_share` scores it
        self.pooled: dict[str, tuple[float, np.ndarray, float]] = {}
        for outcome in OUTCOMES:
            chosen = self.outcome == outcome
            if chosen.any():
                sizes, weights = self.sizes[chosen], self.sizes[chosen] / n[chosen]
                q_hat = float((sizes * self.q[chosen]).sum() / sizes.sum())
                n_eff = float(sizes.sum() ** 2 / (n[chosen] * weights**2).sum())
                draws = rng.beta(q_hat * n_eff + 0.5, (1 - q_hat) * n_eff + 0.5, size=n_boot)
                self.pooled[outcome] = (q_hat, draws, float(sizes.sum()))

    def pooled_rate(
        self, shares: Mapping[str, float], shares_boot: Mapping[str, np.ndarray], same_run: bool
    ) -> tuple[float, np.ndarray, str]:
        """The (model, task)'s corrected rate over every persona from the pooled strata: (point, replicates, form).
        Predictive values for an audit of this run (the same point as the size-weighted mean of the cells); Rogan-
        Gladen with the pooled sensitivity and specificity for another run's, where they are defined."""
        present = [o for o, share in shares.items() if share > 0]
        if not present or any(o not in self.pooled for o in present):
            return math.nan, np.full(len(next(iter(shares_boot.values()))), np.nan), ""
        pooled = {o: self.pooled[o] for o in present}
        negatives = [o for o in self.pooled if o != "refusal"]

        def sens_spec(q: Mapping[str, Any]) -> tuple[Any, Any]:
            tp, fp = self.pooled["refusal"][2] * q["refusal"], self.pooled["refusal"][2] * (1 - q["refusal"])
            fn = sum(self.pooled[o][2] * q[o] for o in negatives)
            tn = sum(self.pooled[o][2] * (1 - q[o]) for o in negatives)
            return tp / (tp + fn), tn / (tn + fp)

        if not same_run and "refusal" in self.pooled and negatives:
            sens, spec = sens_spec({o: entry[0] for o, entry in self.pooled.items()})
            if sens + spec > 1.0:
                boot = rogan_gladen(
                    shares_boot["refusal"], *sens_spec({o: entry[1] for o, entry in self.pooled.items()})
                )
                return rogan_gladen(shares["refusal"], sens, spec), boot, "Rogan-Gladen"
        point = sum(shares[o] * entry[0] for o, entry in pooled.items())
        return float(point), sum(shares_boot[o] * entry[1] for o, entry in pooled.items()), "predictive values"

    def groups(self, persona: str) -> dict[str, np.ndarray]:
        """The strata a cell may borrow from, most specific first: its own, its persona group's, the task's."""
        return {
            "cell": np.array([s.persona == persona for s in self.strata], bool),
            "persona group": np.array([persona_group(s.persona) == persona_group(persona) for s in self.strata], bool),
            "task": np.ones(len(self.strata), bool),
        }

    def sens_spec(self, q: np.ndarray, members: np.ndarray) -> tuple[Any, Any]:
        """(sensitivity, specificity) of the member strata for shares q (strata on the last axis); NaN if undefined."""
        sizes, positive = self.sizes[members], self.positive[members]
        true_refusals, others = q[..., members] * sizes, (1 - q[..., members]) * sizes
        tp, fn = true_refusals[..., positive].sum(-1), true_refusals[..., ~positive].sum(-1)
        fp, tn = others[..., positive].sum(-1), others[..., ~positive].sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / (tp + fn), tn / (tn + fp)

    def predictive(self, q: np.ndarray, members: np.ndarray, shares: Mapping[str, Any]) -> Any:
        """sum over detector outcomes o of share(o) x (size-weighted human-refusal share of the member strata of o)."""
        total: Any = 0.0
        for outcome, share in shares.items():
            chosen = members & (self.outcome == outcome)
            if chosen.any():
                total = total + share * (q[..., chosen] * self.sizes[chosen]).sum(-1) / self.sizes[chosen].sum()
        return total

    def method(self, persona: str, outcomes: Sequence[str], same_run: bool) -> tuple[str, np.ndarray | None, str]:
        """(level name, member strata, form) for a cell whose answers have these detector outcomes.

        An audit of another run: Rogan-Gladen at the most specific level whose sensitivity and specificity are both
        defined and sum to more than 1. An audit of this run, or where no level defines them: the predictive-value
        form at the most specific level that labelled every detector outcome the cell has.
        """
        groups = self.groups(persona)
        for name, members in groups.items() if not same_run else ():
            if members.any():
                sens, spec = self.sens_spec(self.q, members)
                if math.isfinite(sens) and math.isfinite(spec) and sens + spec > 1.0:
                    return name, members, "Rogan-Gladen"
        for name, members in groups.items():
            if all((members & (self.outcome == outcome)).any() for outcome in outcomes):
                return name, members, "predictive values"
        return "none", None, ""


def rogan_gladen(observed: Any, sensitivity: Any, specificity: Any) -> Any:
    """(p_obs + spec - 1) / (sens + spec - 1), clipped to [0, 1]; NaN where sens + spec <= 1 (not identified)."""
    observed, sensitivity, specificity = (np.asarray(x, float) for x in (observed, sensitivity, specificity))
    youden = sensitivity + specificity - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        corrected = np.where(youden > 0, np.clip((observed + specificity - 1.0) / youden, 0.0, 1.0), np.nan)
    return float(corrected) if corrected.ndim == 0 else corrected


def _rng(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32("|".join(parts).encode()),)))


def corrected_estimates(
    frame: pd.DataFrame,
    audit: DetectorAudit,
    n_boot: int = CORRECTION_BOOTSTRAP,
    seed: int = 0,
    alpha: float = 0.05,
) -> CorrectedEstimates:
    """Refusal rates and persona disparities of `frame` (the analysis frame) corrected for the audited detector error.

    Per (model, task, persona) cell, Rogan-Gladen: p = (p_obs + spec - 1) / (sens + spec - 1), clipped to [0, 1],
    with the sensitivity and specificity of the audit's strata of that cell; where they are not defined there (no
    labelled refusal, or no labelled answer people read as C/N, or sens + spec <= 1), those of the cell's persona
    group (every persona, or the baseline), else of the whole (model, task) (the `level` column says which).

    Sensitivity and specificity are functions of the stratum sizes (the detector's own counts) and of each
    stratum's human-refusal share q. For an audit of this same run (every stratum size matches the run's), putting
    them into Rogan-Gladen gives exactly the predictive-value (double-sampling) estimator p = sum over detector
    outcomes o of P_obs(o) x q(o) (Tenenbein 1970, JASA 65:1350), so that form is used (`form` column): it is the
    same point estimate, and a bootstrap replicate that resamples the run's answers then moves sens and spec with
    them, where plugging resampled p_obs into sens and spec held fixed at the original sizes would divide by a
    noisy sens + spec - 1 and blow up. An audit of another run (same detector, e.g. last release's) is carried over
    by Rogan-Gladen's assumption that sens and spec, not the predictive values, transport; where no level defines
    them (people found no refusal at all), the predictive-value form is used for it too. A model or task the audit
    did not label stays uncorrected (NaN, level "none"). The pooled rate of a (model, task) (persona "all", what
    the refusal-rate gate reads) is corrected from the task's strata pooled per detector outcome (for an audit of
    this run its point is the size-weighted mean of the cells); a disparity is the persona's corrected rate minus
    the baseline's, on the request blocks that have both.

    Why a bootstrap, and this one: the corrected rate is a ratio of three estimates (p_obs, sens, spec) with two
    independent sources of error, the run's answers and the audit's labels, and the clipping to [0, 1] makes its
    distribution lopsided near 0, where refusal rates live, so a delta-method normal interval would be
    symmetric where the estimator is not. Each replicate redraws both sources together:
    - the run: dataset items resampled with replacement within the (model, task), each with all its request
      blocks, so the answers of one block (paired across personas) and the blocks of one item (correlated: the
      gates' design effect) stay together: the gates' unit of inference, "new items of this kind" (request blocks
      when the frame has no `item` column);
    - the audit: each stratum's share q of human refusals drawn from its Jeffreys posterior Beta(r + 1/2,
      n - r + 1/2), not resampled: a plain bootstrap of labelled rows has no variance in a stratum whose labels
      all agree (q = 0 or 1, the common case with a good detector and few labels) and would call the detector
      perfect; Jeffreys intervals keep near-nominal frequentist coverage there (Brown, Cai & DasGupta 2001).
      One draw per stratum and replicate serves every cell, so cells that share strata share their error.
    The interval is the replicates' percentile interval; `se` is their standard deviation (what the gates use).
    Replicates where sens + spec <= 1 are not identified and left out (`unidentified` is their share).
    The interval treats the run's answers and the audit's labels as independent; when the audit is a sample of
    the same run this holds up to the finite-population overlap.
    """
    rate_rows: list[dict[str, Any]] = []
    disparity_rows: list[dict[str, Any]] = []
    replicates: dict[tuple[str, str, str, str], np.ndarray] = {}
    lo_q, hi_q = 100 * alpha / 2, 100 * (1 - alpha / 2)
    frame = frame if "outcome" in frame else frame.assign(outcome=np.where(frame["refused"], "refusal", "compliance"))
    # many small matrix-vector products: one BLAS thread is fastest (16x on a loaded 2-core machine, measured)
    with threadpool_limits(1, user_api="blas"):
        _correct_families(frame, audit, n_boot, seed, lo_q, hi_q, rate_rows, disparity_rows, replicates)
    method = (
        f"Rogan-Gladen per (model, task, persona); {100 * (1 - alpha):.0f}% percentile interval of {n_boot} "
        "replicates that resample dataset items (with their request blocks) and draw each audit stratum's "
        "human-refusal share from its Jeffreys posterior"
    )
    rate_columns = [
        "model",
        "task",
        "persona",
        "n",
        "observed_rate",
        "corrected_rate",
        "sensitivity",
        "specificity",
        "level",
        "form",
        "ci_low",
        "ci_high",
        "se",
        "unidentified",
    ]
    disparity_columns = [
        "model",
        "task",
        "persona",
        "n_pairs",
        "observed_difference",
        "corrected_difference",
        "ci_low",
        "ci_high",
        "se",
        "unidentified",
    ]
    return CorrectedEstimates(
        pd.DataFrame(rate_rows, columns=rate_columns),
        pd.DataFrame(disparity_rows, columns=disparity_columns),
        n_boot,
        alpha,
        method,
        replicates,
    )


def _correct_families(
    frame: pd.DataFrame,
    audit: DetectorAudit,
    n_boot: int,
    seed: int,
    lo_q: float,
    hi_q: float,
    rate_rows: list[dict[str, Any]],
    disparity_rows: list[dict[str, Any]],
    replicates: dict[tuple[str, str, str, str], np.ndarray],
) -> None:
    """`corrected_estimates` for every (model, task) of `frame`: appends to the rows and replicates given."""
    for (model, task), rows in frame.groupby(["model", "task"], sort=False):
        model, task = str(model), str(task)
        wide = rows.pivot_table(index="block", columns="persona", values="outcome", aggfunc="first")
        personas = [str(p) for p in wide.columns]
        present = wide.notna().to_numpy()
        indicators = {o: (wide == o).to_numpy(bool) for o in OUTCOMES}  # blocks x personas, per detector outcome
        # the unit resampled: the dataset item (all its request blocks together), else the request block
        units = rows.groupby("block")["item"].first().reindex(wide.index) if "item" in rows else pd.Series(wide.index)
        codes, _ = pd.factorize(units.to_numpy())
        n_units = int(codes.max()) + 1
        draws = _rng(seed, model, task).multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot)
        counts = draws[:, codes].astype(float)  # n_boot x blocks: how often each block is in the replicate
        audited = [s for s in audit.strata if s.model == model and s.task == task]
        strata = _TaskStrata(audited, _rng(seed, model, task, "audit"), n_boot)
        # an audit of this very run: its strata are this run's answers, every size matches
        sizes_here = rows.groupby(["persona", "outcome"]).size()
        same_run = bool(audited) and {(s.persona, s.detector_outcome): s.size for s in audited if s.size} == {
            (str(p), str(o)): int(n) for (p, o), n in sizes_here.items()
        }

        def correct(j: int, rows_mask: np.ndarray) -> dict[str, Any]:
            """Corrected rate of persona column j on the blocks in rows_mask: point, replicates, what it used."""
            n = float(rows_mask.sum())
            resampled = counts @ rows_mask.astype(
                float
            )  # float operands: BLAS (a bool operand takes numpy's slow loop)
            with np.errstate(invalid="ignore", divide="ignore"):
                shares = {o: float((indicators[o][:, j] & rows_mask).sum() / n) for o in OUTCOMES}
                shares_boot = {
                    o: (counts @ (indicators[o][:, j] & rows_mask).astype(float)) / resampled for o in OUTCOMES
                }
            name, members, form = strata.method(personas[j], [o for o in OUTCOMES if shares[o] > 0], same_run)
            out = {
                "observed": shares["refusal"],
                "level": name,
                "form": form,
                "sensitivity": math.nan,
                "specificity": math.nan,
                "corrected": math.nan,
                "boot": np.full(n_boot, np.nan),
            }
            if members is None:
                return out
            sens, spec = strata.sens_spec(strata.q, members)
            out.update(sensitivity=float(sens), specificity=float(spec))
            if form == "Rogan-Gladen":
                out.update(
                    corrected=rogan_gladen(shares["refusal"], sens, spec),
                    boot=rogan_gladen(shares_boot["refusal"], *strata.sens_spec(strata.q_boot, members)),
                )
            else:
                out.update(
                    corrected=float(strata.predictive(strata.q, members, shares)),
                    boot=np.asarray(strata.predictive(strata.q_boot, members, shares_boot), float),
                )
            return out

        sizes = present.sum(0).astype(float)
        cells = [correct(j, present[:, j]) for j in range(len(personas))]
        for j, (persona, cell) in enumerate(zip(personas, cells)):
            replicates["rate", model, task, persona] = cell["boot"]
            rate_rows.append(
                {
                    "model": model,
                    "task": task,
                    "persona": persona,
                    "n": int(sizes[j]),
                    "observed_rate": cell["observed"],
                    "corrected_rate": cell["corrected"],
                    "sensitivity": cell["sensitivity"],
                    "specificity": cell["specificity"],
                    "level": cell["level"],
                    "form": cell["form"],
                    **_interval(cell["boot"], lo_q, hi_q),
                }
            )
        # the (model, task) rate over every persona and the baseline, as the refusal-rate gate pools it
        answers = counts @ present.sum(1).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = {o: float(indicators[o].sum() / sizes.sum()) for o in OUTCOMES}
            shares_boot = {o: (counts @ indicators[o].sum(1).astype(float)) / answers for o in OUTCOMES}
        pooled, pooled_boot, form = strata.pooled_rate(shares, shares_boot, same_run)
        replicates["rate", model, task, "all"] = pooled_boot
        rate_rows.append(
            {
                "model": model,
                "task": task,
                "persona": "all",
                "n": int(sizes.sum()),
                "observed_rate": shares["refusal"],
                "corrected_rate": float(pooled),
                "sensitivity": math.nan,
                "specificity": math.nan,
                "level": "pooled" if form else "none",
                "form": form,
                **_interval(pooled_boot, lo_q, hi_q),
            }
        )
        if BASELINE_ID not in personas:
            continue
        k = personas.index(BASELINE_ID)
        for j, persona in enumerate(personas):
            both = present[:, j] & present[:, k]
            if j == k or not both.any():
                continue
            # paired: both rates on the blocks that have both conditions, from the same resampled blocks
            with_persona, without = correct(j, both), correct(k, both)
            replicates["disparity", model, task, persona] = with_persona["boot"] - without["boot"]
            disparity_rows.append(
                {
                    "model": model,
                    "task": task,
                    "persona": persona,
                    "n_pairs": int(both.sum()),
                    "observed_difference": with_persona["observed"] - without["observed"],
                    "corrected_difference": with_persona["corrected"] - without["corrected"],
                    **_interval(with_persona["boot"] - without["boot"], lo_q, hi_q),
                }
            )


def _interval(values: np.ndarray, lo_q: float, hi_q: float) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    unidentified = 1.0 - len(finite) / len(values) if len(values) else 1.0
    if len(finite) < 2:
        return {"ci_low": math.nan, "ci_high": math.nan, "se": math.nan, "unidentified": unidentified}
    low, high = np.percentile(finite, [lo_q, hi_q])
    return {"ci_low": float(low), "ci_high": float(high), "se": float(finite.std(ddof=1)), "unidentified": unidentified}
