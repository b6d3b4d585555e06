"""Sequential early stop: gates judged at growing prefixes of request blocks, alpha spent across the looks.

A profile with `sequential: {rounds: K, futility: 0.05, mde: 0.03}` samples each (model, task) family in K
rounds of request blocks (the sampler's blocks are prefix-stable, so look k sees the first n_k blocks of the
fixed-budget run) and stops as soon as every gate of the family is settled:

- FAIL at look k when Holm, run over the whole family at the look's alpha increment, rejects the gate. The
  increments follow the Lan-DeMets O'Brien-Fleming-type spending function α(t) = 2 - 2 Φ(z_{α/2} / √t), t = n_k / n
  (Lan & DeMets, Biometrika 70:659-663, 1983), and each look is tested at its own increment α(t_k) - α(t_{k-1}).
  By the union bound over looks (Bonferroni across looks, which needs no joint distribution of the statistics),
  P(any false fail at any look) <= Σ_k (α(t_k) - α(t_{k-1})) = α: early stopping cannot raise the false-fail
  rate. O'Brien-Fleming-type spending keeps almost all of α for the last look, so a run that does not stop early
  loses little power against the fixed design.
- PASS at look k < K (futility) when the gate's one-sided upper bound at level futility / (K - 1) lies below its limit
  plus `mde`: the data rule out the smallest excess the budget was planned to detect. Futility stops are
  non-binding: they only ever turn a possible failure into a pass, so they never raise the false-fail rate; they
  cost at most `futility` power against an excess of exactly `mde` (less against larger ones).
- At the last look every gate not yet settled gets the decision of that look.

Everything here is pure: `run_sequential` asks a `fetch(n_blocks)` callback for the family's records of the first
n blocks (the runner generates them; a replay slices saved records), so the controller can recompute the same
decisions from results.jsonl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
from scipy.stats import norm

from falserefusal.gates import GateOutcome, GateSpec, confidence_bound, evaluate_family


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
        return cls(int(sequential["rounds"]), float(sequential.get("futility", 0.05)), float(sequential.get("mde", 0.03)))

    def looks(self, samples: int) -> list[int]:
        """Cumulative request blocks at each look: ceil(k n / K), without repeats (fewer looks for tiny n)."""
        cumulative = [max(1, math.ceil(k * samples / self.rounds)) for k in range(1, self.rounds + 1)]
        return sorted(set(cumulative))

    def alpha_increments(self, alpha: float, samples: int) -> list[float]:
        """The alpha each look is tested at (they sum to alpha)."""
        spent = [obrien_fleming_spending(alpha, n / samples) for n in self.looks(samples)]
        spent[-1] = alpha  # t = 1 exactly; avoid rounding drift
        return [b - a for a, b in zip([0.0, *spent[:-1]], spent)]


def obrien_fleming_spending(alpha: float, t: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type alpha spent by information fraction t (0 < t <= 1)."""
    if t <= 0.0:
        return 0.0
    return float(min(alpha, 2.0 * norm.sf(norm.isf(alpha / 2.0) / math.sqrt(min(t, 1.0)))))


@dataclass(frozen=True)
class SequentialResult:
    outcomes: list[GateOutcome]
    blocks_used: int
    budget: int
    looks_used: int
    looks: int


def _tag(outcome: GateOutcome, look: int, looks: int, blocks: int, budget: int, settled: str) -> GateOutcome:
    detail = dict(outcome.detail)
    detail["sequential"] = {"look": look, "looks": looks, "blocks": blocks, "budget": budget, "settled": settled}
    return replace(outcome, detail=detail)


def run_sequential(
    fetch: Callable[[int], pd.DataFrame],
    specs: Sequence[GateSpec],
    alpha_family: float,
    design: SequentialDesign,
    samples: int,
) -> SequentialResult:
    """Look at the family after each round; stop once every gate is settled (see the module docstring)."""
    looks = design.looks(samples)
    increments = design.alpha_increments(alpha_family, samples)
    futility_level = design.futility / max(1, len(looks) - 1)  # the last look has no futility stop
    settled: dict[GateSpec, GateOutcome] = {}
    used, look_number = 0, 0
    for look_number, (blocks, increment) in enumerate(zip(looks, increments), start=1):
        frame = fetch(blocks)
        used = blocks
        last = look_number == len(looks)
        for outcome in evaluate_family(frame, specs, increment):
            spec = outcome.spec
            if spec in settled:
                continue
            if not outcome.passed:
                settled[spec] = _tag(outcome, look_number, len(looks), blocks, samples, "fail")
            elif last:
                settled[spec] = _tag(outcome, look_number, len(looks), blocks, samples, "final look")
            else:
                upper = confidence_bound(spec.kind, outcome.estimate, outcome.n, outcome.detail, futility_level, "upper")
                if upper < spec.limit + design.mde:
                    settled[spec] = _tag(outcome, look_number, len(looks), blocks, samples, "pass: futility")
        if len(settled) == len(specs):
            break
    return SequentialResult([settled[s] for s in specs if s in settled], used, samples, look_number, len(looks))
