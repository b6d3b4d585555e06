"""Sequential early stop: gates judged at growing prefixes of request blocks, with exact group-sequential boundaries.

A profile with `sequential: {rounds: K, futility: 0.05, mde: 0.03}` samples each (model, task) family in K
rounds of request blocks (the sampler's blocks are prefix-stable, so look k sees the first n_k blocks of the
fixed-budget run) and stops as soon as every gate of the family is settled.

Boundaries. A gate's one-sided z statistics at the looks are, under its null and for large n, jointly normal with
corr(Z_i, Z_j) = √(t_i / t_j), t_k = n_k / n the information fraction (a Brownian motion observed at the looks).
`group_sequential_bounds` solves, look by look, for the boundary c_k whose crossing probability
P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) equals the alpha spent at t_k minus the alpha spent before, with
the Lan-DeMets O'Brien-Fleming-type spending function α(t) = 2 - 2 Φ(z_{α/2} / √t) (Lan & DeMets, Biometrika
70:659-663, 1983). The joint probabilities are computed by the standard recursive numerical integration of the
Brownian increments (Armitage, McPherson & Rowe 1969; Jennison & Turnbull 2000, ch. 19), which reproduces the
published boundaries (5 equal looks, one-sided 0.025: 4.877, 3.357, 2.680, 2.290, 2.031); the tests check that
the cumulative crossing probability, from scipy's multivariate normal cdf of the correlated looks, equals alpha.
The look's nominal level 1 - Φ(c_k) replaces the union bound over looks used before (which tested each look at its
alpha increment alone and so spent a share of alpha on crossings that earlier looks had already counted).

Multiplicity. The FAIL tests: Holm runs within the family at every look, each of its steps at the nominal level of
a boundary computed for that step's share of alpha (step i of m: the boundaries for alpha / (m - i)): the
sequential closed test of Tamhane, Mehta & Liu (Biometrics 66:1174-1184, 2010) with Bonferroni intersection
tests, so the family-wise false-FAIL rate over all looks is at most alpha. The PASS tests are unadjusted, as in
the fixed design (`falserefusal.gating.kinds.pass_alpha`): each gate's PASS test has its own boundaries for the
profile's alpha, so a gate at or beyond its limit PASSes at some look with probability at most alpha.

- FAIL at look k when the excess over the limit is shown (the family's false-fail rate over all looks <= alpha);
- PASS at look k when the effect is shown below the limit (the gate's false-PASS rate over all looks <= alpha);
- settled early as "futility" (non-binding) when the gate's one-sided upper bound at level futility / (K - 1) lies
  below its limit plus `mde`: the data rule out the smallest excess the budget was planned to detect. Its verdict
  is what the look shows (INCONCLUSIVE unless the PASS test rejected). Futility stops only ever stop a gate that
  might still have failed, so they never raise the false-fail rate; they cost at most `futility` power against
  an excess of exactly `mde`.
- At the last look every gate not yet settled gets the verdict of that look.

What it costs. O'Brien-Fleming-type spending keeps most of alpha for the last look, whose boundary is then a
little above the fixed-sample critical value (one-sided 0.025, 5 looks: 2.031 vs 1.960; at the release profile's
first Holm step 0.05 / 3 / 32: 3.298 vs 3.279, where the union bound needed 3.342). Measured by `falserefusal
simulate-release` (100 seeds, +7 pp under one persona against a 3 pp margin, 1,404 blocks per task, the planner's
80%): per-gate power 0.810 fixed, 0.787 sequential, on 87% of the blocks (with Holm on the PASS tests and other
seeds before: 0.797, 0.773, and 0.753 with the union bound); a model
with no effect stops at 27% of the budget (README, "Early stop").

Everything here is pure: `run_sequential` asks a `fetch(n_blocks)` callback for the family's records of the first
n blocks (the Run generates them; a replay slices saved records), so the controller can recompute the same
decisions from results.jsonl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import multivariate_normal, norm

from falserefusal.gating.decide import evaluate_family
from falserefusal.gating.kinds import GateOutcome, GateSpec, verdict_of
from falserefusal.gating.statistics import confidence_bound
from falserefusal.types import FalseRefusalError

#: grid points per look of the numerical integration (Simpson's rule): 201 reproduces the published boundaries to
#: 1e-5 and agrees with 1,601 points to 1e-5 for alpha from 1e-5 to 0.2
_GRID = 201
#: the continuation region is cut this many standard deviations below zero (the mass below is < 1e-23)
_DEPTH = 10.0


@dataclass(frozen=True)
class SequentialDesign:
    """The looks of a sequential profile and how a gate settles early."""

    rounds: int
    futility: float = 0.05
    mde: float = 0.03

    @classmethod
    def from_profile(cls, sequential: Mapping[str, Any]) -> "SequentialDesign | None":
        """None when the profile samples its whole budget at once (no `sequential`, or one round)."""
        if not sequential or int(sequential.get("rounds", 1)) <= 1:
            return None
        return cls(
            int(sequential["rounds"]), float(sequential.get("futility", 0.05)), float(sequential.get("mde", 0.03))
        )

    def looks(self, samples: int) -> list[int]:
        """Cumulative request blocks at each look: ceil(k n / K), without repeats (fewer looks for tiny n)."""
        cumulative = [max(1, math.ceil(k * samples / self.rounds)) for k in range(1, self.rounds + 1)]
        return sorted(set(cumulative))

    def fractions(self, samples: int) -> tuple[float, ...]:
        """Information fraction t_k = n_k / n of each look (the last is 1)."""
        return tuple(n / samples for n in self.looks(samples))

    def alpha_increments(self, alpha: float, samples: int) -> list[float]:
        """The alpha the spending function spends at each look (summing to alpha); the boundaries spend just these."""
        spent = [obrien_fleming_spending(alpha, n / samples) for n in self.looks(samples)]
        spent[-1] = alpha  # t = 1 exactly; avoid rounding drift
        return [b - a for a, b in zip([0.0, *spent[:-1]], spent)]

    def nominal_levels(self, alpha: float, samples: int) -> tuple[float, ...]:
        """The one-sided level each look tests a single gate at, from the exact boundaries for `alpha`."""
        return nominal_levels(alpha, self.fractions(samples))


def obrien_fleming_spending(alpha: float, t: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type alpha spent by information fraction t (0 < t <= 1)."""
    if t <= 0.0:
        return 0.0
    return float(min(alpha, 2.0 * norm.sf(norm.isf(alpha / 2.0) / math.sqrt(min(t, 1.0)))))


def _simpson_weights(grid: np.ndarray) -> np.ndarray:
    weights = np.ones(len(grid))
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return weights * (grid[1] - grid[0]) / 3.0


def _check_fractions(alpha: float, fractions: Sequence[float]) -> tuple[float, ...]:
    t = tuple(float(f) for f in fractions)
    if not 0.0 < alpha < 0.5:
        raise FalseRefusalError(f"group-sequential alpha {alpha!r}: must lie in (0, 0.5)")
    if not t or t[0] <= 0.0 or any(b <= a for a, b in zip(t, t[1:])) or t[-1] > 1.0 + 1e-12:
        raise FalseRefusalError(f"information fractions {list(t)}: must increase strictly within (0, 1]")
    return t


@lru_cache(maxsize=4096)
def group_sequential_bounds(alpha: float, fractions: tuple[float, ...]) -> tuple[float, ...]:
    """One-sided z boundaries c_k with P_0(no crossing before look k, Z_k >= c_k) = α(t_k) - α(t_{k-1}) exactly.

    Z_k = S_k / √t_k for a standard Brownian motion S; the sub-density of S_k on the continuation region
    (S_j < c_j √t_j for every j <= k) is carried from look to look on a Simpson grid, and each boundary is the root of
    its crossing probability (see the module docstring). Cached: the looks of a run repeat for every family.
    """
    t = _check_fractions(alpha, fractions)
    bounds: list[float] = []
    spent_before = 0.0
    grid = density = np.zeros(0)
    for k, tk in enumerate(t):
        spent = obrien_fleming_spending(alpha, tk)
        target = spent - spent_before
        spent_before = spent
        if k == 0:
            c = float(norm.isf(target))
            grid = np.linspace(-_DEPTH * math.sqrt(tk), c * math.sqrt(tk), _GRID)
            density = norm.pdf(grid, scale=math.sqrt(tk))
        else:
            step = math.sqrt(tk - t[k - 1])
            mass = _simpson_weights(grid) * density
            root_t = math.sqrt(tk)

            def excess(c: float) -> float:
                return float(mass @ norm.sf((c * root_t - grid) / step)) - target

            c = float(brentq(excess, -10.0, 40.0, xtol=1e-10))
            following = np.linspace(-_DEPTH * root_t, c * root_t, _GRID)
            density = norm.pdf((following[:, None] - grid[None, :]) / step) @ mass / step
            grid = following
        bounds.append(c)
    return tuple(bounds)


def nominal_levels(alpha: float, fractions: Sequence[float]) -> tuple[float, ...]:
    """1 - Φ(c_k): the one-sided p-value below which look k rejects, for a design of overall level alpha."""
    return tuple(float(norm.sf(c)) for c in group_sequential_bounds(float(alpha), tuple(float(f) for f in fractions)))


def crossing_probability(bounds: Sequence[float], fractions: Sequence[float], abseps: float = 1e-7) -> float:
    """P_0(Z_k >= c_k at some look) from scipy's multivariate normal cdf of the correlated looks (checks the bounds)."""
    t = np.asarray(fractions, dtype=float)
    correlation = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    joint = multivariate_normal(mean=np.zeros(len(t)), cov=correlation, seed=0, abseps=abseps, releps=abseps)
    return float(1.0 - joint.cdf(np.asarray(bounds, dtype=float)))


def sequential_holm(
    pvalues: np.ndarray, alpha: float, fractions: Sequence[float], look: int
) -> tuple[np.ndarray, np.ndarray]:
    """Holm at one look of a group-sequential design: (adjusted p-values, the nominal level of each gate's step).

    Step i of m tests the i-th smallest p-value at ν = the look's nominal level for alpha / (m - i); the adjusted
    p-value scales each p by alpha / ν and takes the running maximum, so a gate is rejected at this look exactly when
    its adjusted p-value is below alpha. With one look (t = 1) ν = alpha / (m - i) and this is Holm's adjustment.
    """
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    steps = np.array([nominal_levels(alpha / (m - i), fractions)[look] for i in range(m)])
    adjusted, levels = np.empty(m), np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(p[order] * alpha / steps), 1.0)
    levels[order] = steps
    return adjusted, levels


def _at_look(
    outcomes: Sequence[GateOutcome], alpha: float, fractions: tuple[float, ...], look: int, alpha_pass: float
) -> list[GateOutcome]:
    """The look's verdicts: both one-sided tests of every gate re-decided against the group-sequential boundaries
    (FAIL: Holm's steps at `alpha`; PASS: each gate alone at `alpha_pass`, its p scaled to be compared with it)."""
    fail_adjusted, fail_levels = sequential_holm(np.array([o.p_value for o in outcomes]), alpha, fractions, look)
    level_pass = nominal_levels(alpha_pass, fractions)[look]
    decided = []
    for o, p_fail, level_fail in zip(outcomes, fail_adjusted, fail_levels):
        p_pass = min(1.0, o.p_pass * alpha_pass / level_pass)
        verdict = verdict_of(float(p_fail), p_pass, alpha, alpha_pass)
        decided.append(
            replace(
                o,
                verdict=verdict,
                passed=verdict != "FAIL",
                p_adjusted=float(p_fail),
                p_pass_adjusted=float(p_pass),
                bound=float(confidence_bound(o.spec.kind, o.estimate, o.n, o.detail, float(level_fail), "lower")),
                upper_bound=float(confidence_bound(o.spec.kind, o.estimate, o.n, o.detail, level_pass, "upper")),
                alpha_pass=float(alpha_pass),
                detail={**o.detail, "nominal_level": float(level_fail)},
            )
        )
    return decided


@dataclass(frozen=True)
class SequentialResult:
    outcomes: list[GateOutcome]
    blocks_used: int
    budget: int
    looks_used: int
    looks: int


def _tag(outcome: GateOutcome, look: int, looks: int, blocks: int, budget: int, settled: str) -> GateOutcome:
    detail = dict(outcome.detail)
    detail["sequential"] = {
        "look": look,
        "looks": looks,
        "blocks": blocks,
        "budget": budget,
        "settled": settled,
        "nominal_level": detail.pop("nominal_level", None),
    }
    return replace(outcome, detail=detail)


def run_sequential(
    fetch: Callable[[int], pd.DataFrame],
    specs: Sequence[GateSpec],
    alpha_family: float,
    design: SequentialDesign,
    samples: int,
    alpha_pass: float | None = None,
) -> SequentialResult:
    """Look at the family after each round; stop once every gate is settled (see the module docstring). FAIL tests at
    `alpha_family` (Holm), PASS tests each at `alpha_pass` (the profile's alpha; default `alpha_family`)."""
    level_pass = alpha_family if alpha_pass is None else alpha_pass
    looks = design.looks(samples)
    fractions = design.fractions(samples)
    futility_level = design.futility / max(1, len(looks) - 1)  # the last look has no futility stop
    settled: dict[GateSpec, GateOutcome] = {}
    used, look_number = 0, 0
    for look_number, blocks in enumerate(looks, start=1):
        frame = fetch(blocks)
        used = blocks
        last = look_number == len(looks)
        for outcome in _at_look(
            evaluate_family(frame, specs, alpha_family, alpha_pass=level_pass),
            alpha_family,
            fractions,
            look_number - 1,
            level_pass,
        ):
            spec = outcome.spec
            if spec in settled:
                continue
            if outcome.verdict in ("FAIL", "PASS"):
                settled[spec] = _tag(outcome, look_number, len(looks), blocks, samples, outcome.verdict.lower())
            elif last:
                settled[spec] = _tag(outcome, look_number, len(looks), blocks, samples, "final look")
            else:
                upper = confidence_bound(
                    spec.kind, outcome.estimate, outcome.n, outcome.detail, futility_level, "upper"
                )
                if upper < spec.limit + design.mde:
                    settled[spec] = _tag(outcome, look_number, len(looks), blocks, samples, "futility")
        if len(settled) == len(specs):
            break
    return SequentialResult([settled[s] for s in specs if s in settled], used, samples, look_number, len(looks))
