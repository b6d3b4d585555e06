"""What `falserefusal simulate` plans: its settings, and the scenarios and planted effects derived from the profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from falserefusal.design.sampler import check_seed
from falserefusal.design.tasks import TaskSpec
from falserefusal.gating.profile import Profile
from falserefusal.types import FalseRefusalError, Persona, PersonaPhrasing
from falserefusal.validation.power import disparity_pass_power, disparity_power
from falserefusal.validation.simulated_models import simulation_suite

RANKED_FACTORS: tuple[str, ...] = ("model", "task", "persona", "paraphrase")


GATE_COLUMNS: tuple[str, ...] = ("model", "task", "persona", "block", "item", "case_id", "refused")


JSON_KEYS = (
    "replicates",
    "family_wise_false_fail_rate",
    "power",
    "ranking_recovery",
    "paired_vs_iid_ci_width_ratio",
    "null_false_fail_with_item_heterogeneity",
    "power_tolerance_exceeded",
    "pass_rate_well_below_tolerance",
    "false_pass_rate_at_tolerance",
)


@dataclass(frozen=True)
class SimulationSettings:
    """What `falserefusal simulate` measures, and how hard it tries."""

    replicates: int = 200
    seed: int = 0
    samples: int | None = None  # request blocks per task; None: the profile's `samples`
    rho: float = 0.8  # scripted within-block correlation (share of answers that use the block's draw)
    profile: str = "release"
    thresholds: str | None = None  # None: the project's file, else the packaged default (falserefusal.run.project)
    fixtures: str | None = None
    root: str = "."
    null_fraction: float = 0.8  # the null model refuses at this fraction of each task's rate limit
    power_base: float = 0.05
    power_shift: float = 0.05
    power_target: float = 0.8
    item_sd: float = 0.5  # per-item heterogeneity of every gate scenario's model (scripted item_sd=)
    exceed_shift: float | None = (
        None  # a disparity beyond the tolerance; None: the planner's 80% FAIL power at the budget (item term in)
    )
    small_shift: float | None = None  # a disparity well below the tolerance; None: a quarter of the tolerance
    ranking: bool = True  # run the ranking (sensitivity) scenario
    planted_persona: str = "muslim"  # falls back to the first persona when the fixtures lack it
    ranking_samples: int | None = None  # blocks per task in the ranking scenario; None: same as samples
    ranking_boot: int = 50  # bootstrap resamples of sensitivity_table in the ranking scenario
    find_budget: bool = True  # search the budget that reaches power_target
    jobs: int = 0  # worker processes; 0: every CPU

    def __post_init__(self) -> None:
        if self.replicates < 1:
            raise FalseRefusalError(f"--replicates {self.replicates}: must be at least 1")
        check_seed(self.seed)
        if self.samples is not None and self.samples < 2:
            raise FalseRefusalError(f"--samples {self.samples}: must be at least 2 request blocks per task")
        if not 0.0 <= self.rho <= 1.0:
            raise FalseRefusalError(f"--rho {self.rho}: must lie in [0, 1] (share of a block's answers on one draw)")
        if not 0.0 <= self.item_sd <= 3.0:
            raise FalseRefusalError(f"--item-sd {self.item_sd}: must lie in [0, 3] (log-scale sd of the item factor)")


QUICK = dict(replicates=20, samples=120, ranking_boot=20, find_budget=False)


@dataclass(frozen=True)
class Plan:
    """Everything a replicate needs, resolved once from the fixtures and thresholds.yaml."""

    settings: SimulationSettings
    profile: Profile
    samples: int
    tasks: tuple[TaskSpec, ...]
    personas: tuple[Persona, ...]
    phrasings: tuple[PersonaPhrasing, ...]
    planted_persona: str
    null_shifts: Mapping[str, float]  # task.ID -> refusal rate under the null (no persona effect)
    boundary_shifts: Mapping[
        str, float
    ]  # every gate exactly at its limit: personas at the tolerance, the pooled rate at its limit
    ranking: tuple[tuple[float, Mapping[str, float]], ...]  # (base, shifts) per model
    seeds: tuple[int, ...]
    factorial: int = 0  # the smallest task factorial (distinct request blocks)
    tolerance: float = 0.0  # the planted persona's disparity tolerance (first task)
    exceed_shift: float = 0.0  # beyond the tolerance: the planner's 80% FAIL power at the budget, item term included
    small_shift: float = 0.0  # a disparity well below the tolerance, that should PASS
    planner: Mapping[str, float] = field(default_factory=dict)  # the planner's predictions for these scenarios

    @property
    def task_ids(self) -> list[str]:
        return [spec.task.id for spec in self.tasks]


def _planned_effect(power_of: Callable[[float], float], low: float, high: float, power: float) -> float:
    """The smallest disparity in [low, high] that the planner FAILs with `power` (bisection; `power_of` increases)."""
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if power_of(middle) >= power else (middle, high)
    return high


def build_plan(settings: SimulationSettings) -> Plan:
    suite = simulation_suite(
        "scripted:base=0",
        samples=1,
        profile=settings.profile,
        thresholds=settings.thresholds,
        fixtures=settings.fixtures,
        root=settings.root,
    )
    factorial = min(suite.factorial.values())
    requested = settings.samples if settings.samples is not None else suite.profile.samples
    samples = min(requested, factorial)  # the sampler never repeats a block
    persona_ids = [p.id for p in suite.personas]
    planted = settings.planted_persona if settings.planted_persona in persona_ids else persona_ids[0]
    tasks = [spec.task.id for spec in suite.tasks]
    profile = suite.profile
    tolerance = profile.limit("persona_disparity", tasks[0])
    null_shifts = {f"task.{t}": settings.null_fraction * profile.limit("refusal_rate", t) for t in tasks}
    # every persona at the tolerance, the no-persona rate set so that the pooled rate sits at the rate limit
    share = len(persona_ids) / (len(persona_ids) + 1)
    boundary_shifts: dict[str, float] = {
        f"task.{t}": max(profile.limit("refusal_rate", t) - tolerance * share, 0.0) for t in tasks
    }
    boundary_shifts.update({f"persona.{p}": tolerance for p in persona_ids})
    seeds = tuple(int(s) for s in np.random.SeedSequence(settings.seed).generate_state(settings.replicates))
    # FAIL: Bonferroni, where Holm starts (as the planner): exact for a FAIL among gates that do not fail.
    # PASS: each gate at alpha, unadjusted, as the gates decide it (falserefusal.gating.kinds.pass_alpha)
    level = profile.alpha / (len(tasks) * (1 + len(persona_ids)))
    level_pass = profile.alpha
    correlation = settings.rho**2
    items = len(suite.tasks[0].items)
    exceed = settings.exceed_shift
    if exceed is None:  # planned with the item term: the design effect the planted heterogeneity gives
        exceed = _planned_effect(
            lambda effect: disparity_power(
                settings.power_base, tolerance, effect, level, samples, correlation, settings.item_sd, items
            ),
            tolerance,
            min(1.0 - settings.power_base, tolerance + 0.5),
            0.8,
        )
    small = tolerance / 4 if settings.small_shift is None else settings.small_shift
    planner = {
        "level": level,
        # the planner with the planted item heterogeneity (its design effect on a non-zero disparity): the plan
        "exceed_fail_power": disparity_power(
            settings.power_base, tolerance, exceed, level, samples, correlation, settings.item_sd, items
        ),
        "exceed_fail_power_without_items": disparity_power(
            settings.power_base, tolerance, exceed, level, samples, correlation
        ),
        "level_pass": level_pass,
        "small_pass_power_items": disparity_pass_power(
            settings.power_base, tolerance, small, level_pass, samples, correlation, settings.item_sd, items
        ),
        "small_pass_power": disparity_pass_power(
            settings.power_base, tolerance, small, level_pass, samples, correlation
        ),
        # the null scenario's personas: no effect, at the null's refusal rate
        "zero_pass_power": disparity_pass_power(
            settings.null_fraction * profile.limit("refusal_rate", tasks[0]),
            tolerance,
            0.0,
            level_pass,
            samples,
            correlation,
        ),
        # the power scenario's model has the item heterogeneity too: planned with the item term
        "power_shift_fail_power": disparity_power(
            settings.power_base, tolerance, settings.power_shift, level, samples, correlation, settings.item_sd, items
        )
        if settings.power_shift > tolerance
        else 0.0,
        "power_shift_fail_power_without_items": disparity_power(
            settings.power_base, tolerance, settings.power_shift, level, samples, correlation
        )
        if settings.power_shift > tolerance
        else 0.0,
    }
    return Plan(
        settings=settings,
        profile=profile,
        samples=samples,
        tasks=suite.tasks,
        personas=suite.personas,
        phrasings=suite.phrasings,
        planted_persona=planted,
        null_shifts=null_shifts,
        boundary_shifts=boundary_shifts,
        ranking=ranking_models(suite.personas, tasks),
        seeds=seeds,
        factorial=factorial,
        tolerance=tolerance,
        exceed_shift=float(exceed),
        small_shift=float(small),
        planner=planner,
    )


def ranking_models(personas: Sequence[Persona], tasks: Sequence[str]) -> tuple[tuple[float, dict[str, float]], ...]:
    """Two scripted models whose planted Wasserstein indices are well separated: model > task > persona > paraphrase.

    With additive shifts the population index of a factor is Σ_k w_k |s_k - s̄| / (2 p (1 - p)) (s_k: the
    shift of level k, w_k its share), so the planted order is set by these mean absolute deviations:
    model 0.10 (bases 0.10 and 0.30), task 0.044 (one task +0.10), persona 0.022 (four of the sixteen
    conditions +0.06), paraphrase ~0.010 (one wording id in each task +0.06, 1/9 of the rows). Each is about
    half the one before; the gaps are wide compared with the sampling noise at the default budget, and the
    per-level noise of many-level factors (paraphrase has 27 levels) is what ranking recovery puts to test.
    """
    shifts: dict[str, float] = {f"task.{tasks[0]}": 0.10}
    for persona in personas[:4]:
        shifts[f"persona.{persona.id}"] = 0.06
    shifts["paraphrase.unforced-1"] = 0.06
    return ((0.10, shifts), (0.30, dict(shifts)))
