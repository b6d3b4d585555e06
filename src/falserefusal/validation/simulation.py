"""Monte Carlo validation of the gates and the analysis with planted effects: `falserefusal simulate`.

Each replicate is a run of the real suite on scripted models (see `falserefusal.generation.backends.scripted`), with
no model loaded:

- cases come from the real sampler (`cases.draw_cases`, the same blocks `falserefusal run --seed S` draws:
  a seeded permutation of each task's factorial, without replacement; only one case per block is built as an
  object and the persona conditions are expanded as columns);
- answers are the scripted backend's, computed vectorised from the same SHA-256 draws (`_uniform(seed,
  "block" | "case" | "couple" | "item", ...)`), so a replicate equals `ScriptedBackend` answering every case; the
  refusal label is taken from the scripted answer's branch (refusal text or task label), which is what the
  real detector returns for those two texts (tests check both equalities on whole runs);
- gates are the real `gates.evaluate_gates` on the thresholds.yaml profile, and the ranking uses the real
  `analysis.sensitivity_table`.

Replicate r uses seed s_r (from `SeedSequence(--seed)`) both as the sampler's seed and as the scripted model's,
so it is exactly `falserefusal run --seed s_r --model scripted:...` (the spec's seed= is an offset, 0 here; the
ranking's second model has offset 1). The gate scenarios' models carry per-item heterogeneity (`item_sd`: each
item's refusal probability times exp(sd z - sd²/2), drawn anew per replicate), so the items are a sample of items
of their kind, which is what the gates' "new items" inference is for.

What is measured (every rate with a Wilson 95% interval over replicates):

(a) family-wise false-fail rate: share of replicates in which ANY gate of the profile FAILs for a model
    with no persona effect at a refusal rate below the limit (`null`: 80% of each task's limit), and at the
    boundary where the null is hardest (`boundary`: every persona at the disparity tolerance, the pooled rate at
    the rate limit);
(b) power and PASS rates: the share of the planted persona's disparity gates (one per task) that FAIL when it
    refuses `power_shift` more often than the baseline's `power_base` (when that is below the target, the
    smallest budget that reaches it, by bisection on the same seeds), and when it refuses `exceed_shift` more
    (the planner's 80% FAIL power at the budget), beside the share that PASS at `small_shift` (well below the
    tolerance) and at no effect (every persona gate of the null); each with the planner's prediction;
(c) ranking recovery: share of replicates in which the Wasserstein indices of two scripted models rank
    model > task > persona > paraphrase, the order planted (see `ranking_models`);
(d) the width of a persona disparity's 95% interval in the paired design (Tango, n blocks asked with and
    without the persona) over its width with independent sampling at equal cost (Newcombe's hybrid score
    interval; the persona's answers to n requests, the baseline's to n other requests): 2n generations each,
    n the budget or half the factorial when that is smaller.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_all_start_methods, get_context
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import confint_proportions_2indep

from falserefusal.analysis.paired import paired_difference_ci
from falserefusal.analysis.rates import wilson_interval
from falserefusal.analysis.sensitivity import sensitivity_table
from falserefusal.design.personas import all_conditions
from falserefusal.design.sampler import draw_cases
from falserefusal.design.tasks import TaskSpec
from falserefusal.gating.decide import evaluate_gates
from falserefusal.gating.kinds import GateOutcome, GateSpec, gate_specs, verdict_counts
from falserefusal.gating.profile import Profile
from falserefusal.generation.backends.scripted import ScriptedSpec, item_factor
from falserefusal.run.config import RunConfig
from falserefusal.run.prepare import prepare
from falserefusal.types import BASELINE_ID, FalseRefusalError, Persona, PersonaPhrasing, Record
from falserefusal.validation.planning import disparity_pass_power, disparity_power

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
)


@dataclass(frozen=True)
class SimulationSettings:
    """What `falserefusal simulate` measures, and how hard it tries."""

    replicates: int = 200
    seed: int = 0
    samples: int | None = None  # request blocks per task; None: the profile's `samples`
    rho: float = 0.8  # scripted within-block correlation (share of answers that use the block's draw)
    profile: str = "release"
    thresholds: str | None = None  # None: the project's file, else the packaged default (falserefusal.project)
    fixtures: str | None = None
    root: str = "."
    null_fraction: float = 0.8  # the null model refuses at this fraction of each task's rate limit
    power_base: float = 0.05
    power_shift: float = 0.05
    power_target: float = 0.8
    item_sd: float = 0.5  # per-item heterogeneity of every gate scenario's model (scripted item_sd=)
    exceed_shift: float | None = (
        None  # a disparity beyond the tolerance; None: the planner's 80% FAIL power at the budget
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
        if self.seed < 0:
            raise FalseRefusalError(f"--seed {self.seed}: must be a non-negative integer")
        if self.samples is not None and self.samples < 2:
            raise FalseRefusalError(f"--samples {self.samples}: must be at least 2 request blocks per task")
        if not 0.0 <= self.rho <= 1.0:
            raise FalseRefusalError(f"--rho {self.rho}: must lie in [0, 1] (share of a block's answers on one draw)")
        if not 0.0 <= self.item_sd <= 3.0:
            raise FalseRefusalError(f"--item-sd {self.item_sd}: must lie in [0, 3] (log-scale sd of the item factor)")


QUICK = dict(replicates=20, samples=120, ranking_boot=20, find_budget=False)


# ---------------------------------------------------------------------------------------------- design


def draw_design(
    tasks: Sequence[TaskSpec],
    personas: Sequence[Persona],
    phrasings: Sequence[PersonaPhrasing],
    samples: int,
    seed: int,
    placement: str = "system",
) -> pd.DataFrame:
    """The cases `draw_cases` would draw, as columns (same rows, same order), plus `block_index` within its task.

    The sampler draws (item, paraphrase, phrasing) once per block whatever the personas are, so drawing the
    blocks with one persona and expanding the conditions as columns gives the same cases, ~16x faster.
    """
    if not personas:
        raise FalseRefusalError("simulation: needs at least one persona besides the baseline")
    drawn = draw_cases(tasks, personas[:1], phrasings, samples, seed, placement)
    block_cases, persona_cases = drawn[0::2], drawn[1::2]
    conditions = all_conditions(personas)
    k, n_blocks = len(conditions), len(block_cases)
    per_block = pd.DataFrame(
        {
            "task": [c.task for c in block_cases],
            "forcing_level": [c.forcing_level for c in block_cases],
            "paraphrase": [c.paraphrase_id for c in block_cases],
            "item": [c.item_id for c in block_cases],
            "block": [c.block_id for c in block_cases],
            "phrasing_drawn": [c.phrasing_id for c in persona_cases],
        }
    )
    # a task has min(samples, its factorial) blocks: the sampler never repeats one
    per_block["block_index"] = per_block.groupby("task", sort=False).cumcount().to_numpy()
    frame = per_block.loc[np.repeat(np.arange(n_blocks), k)].reset_index(drop=True)
    persona_ids = np.array([p.id for p in conditions], dtype=object)
    frame["persona"] = np.tile(persona_ids, n_blocks)
    frame["persona_dimension"] = np.tile(np.array([p.dimension for p in conditions], dtype=object), n_blocks)
    is_baseline = frame["persona"].to_numpy() == BASELINE_ID
    frame["phrasing"] = np.where(is_baseline, "none", frame["phrasing_drawn"].to_numpy())
    frame["case_id"] = frame["block"] + "-" + frame["persona"]
    frame["seed"] = seed
    return frame.drop(columns="phrasing_drawn")


# ---------------------------------------------------------------------------------------------- answers


def hash_uniforms(seed: int, stream: str, keys: Iterable[str]) -> np.ndarray:
    """`scripted._uniform(seed, stream, key)` for many keys at once (the same SHA-256, the same floats)."""
    prefix = f"{seed}|{stream}|"
    digests = b"".join(hashlib.sha256((prefix + key).encode("utf-8")).digest()[:8] for key in keys)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


@dataclass(frozen=True)
class Draws:
    """The scripted backend's three uniforms per case for one model seed (they do not depend on p or rho)."""

    shared: np.ndarray  # the block's draw, per case
    own: np.ndarray
    couple: np.ndarray
    seed: int = 0  # the effective model seed (the run's --seed plus the spec's offset): also draws the item factors

    @classmethod
    def compute(cls, design: pd.DataFrame, seed: int) -> "Draws":
        codes, blocks = pd.factorize(design["block"])
        shared = hash_uniforms(seed, "block", blocks)[codes]
        case_ids = design["case_id"].tolist()
        return cls(shared, hash_uniforms(seed, "case", case_ids), hash_uniforms(seed, "couple", case_ids), seed)

    def subset(self, mask: np.ndarray) -> "Draws":
        """The draws of the rows in `mask` (e.g. a design's first n blocks)."""
        return Draws(self.shared[mask], self.own[mask], self.couple[mask], self.seed)

    def latent(self, rho: float) -> np.ndarray:
        """`ScriptedBackend.draw` per case: the block's draw with probability rho, else the case's own."""
        return np.where(self.couple < rho, self.shared, self.own)


def refusal_probability(spec: ScriptedSpec, design: pd.DataFrame, seed: int | None = None) -> np.ndarray:
    """`ScriptedSpec.refusal_probability` for every row (base + the shifts of matching levels, times the item's
    factor when `item_sd` > 0, which needs the effective model `seed`; clipped)."""
    shift = np.zeros(len(design))
    for (factor, level), value in spec.shifts.items():
        if factor in design.columns:
            shift = shift + value * (design[factor].to_numpy() == level)
    p = spec.base + shift
    if spec.item_sd:
        if seed is None:
            raise FalseRefusalError(
                "simulation: a scripted model with item_sd needs the model seed for its item factors"
            )
        pairs = design[["task", "item"]].drop_duplicates()
        factors = {(t, i): item_factor(spec.item_sd, seed, t, i) for t, i in zip(pairs["task"], pairs["item"])}
        p = p * np.array([factors[key] for key in zip(design["task"], design["item"])])
    return np.clip(p, 0.0, 1.0)


def scripted_refusals(spec: ScriptedSpec, design: pd.DataFrame, draws: Draws) -> np.ndarray:
    """Whether ScriptedBackend answers each case with its refusal text: u < p, u the block's or the case's draw."""
    return draws.latent(spec.rho) < refusal_probability(spec, design, draws.seed)


def results_frame(design: pd.DataFrame, model: str, refused: np.ndarray) -> pd.DataFrame:
    """The analysis frame (`records_frame` columns) of the design answered by one model."""
    frame = design.assign(model=model, refused=np.asarray(refused, dtype=bool), rule="scripted")
    frame["outcome"] = np.where(frame["refused"], "refusal", "compliance")
    return frame[list(Record.FLAT_COLUMNS)]


# ---------------------------------------------------------------------------------------------- scenarios


def spec_string(
    base: float, shifts: Mapping[str, float], rho: float, seed: int, name: str = "", item_sd: float = 0.0
) -> str:
    """A scripted --model string (what `falserefusal run --model` would take for the same model); `seed` is the spec's
    offset, added to the run's --seed."""
    parts = ([f"name={name}"] if name else []) + [f"base={base:g}"]
    parts += [f"{key}={value:+g}" for key, value in shifts.items()]
    parts += [f"item_sd={item_sd:g}"] if item_sd else []
    return "scripted:" + ",".join(parts + [f"rho={rho:g}", f"seed={seed}"])


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
    exceed_shift: float = 0.0  # a disparity beyond the tolerance: the planner's 80% FAIL power at the budget
    small_shift: float = 0.0  # a disparity well below the tolerance, that should PASS
    planner: Mapping[str, float] = field(default_factory=dict)  # the planner's predictions for these scenarios

    @property
    def task_ids(self) -> list[str]:
        return [spec.task.id for spec in self.tasks]


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


def _planned_effect(
    base: float, tolerance: float, level: float, blocks: int, correlation: float, power: float
) -> float:
    """The disparity the planner fails with `power` at `blocks` blocks (bisection on `disparity_power`)."""
    low, high = tolerance, min(1.0 - base, tolerance + 0.5)
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (
            (low, middle)
            if disparity_power(base, tolerance, middle, level, blocks, correlation) >= power
            else (middle, high)
        )
    return high


def build_plan(settings: SimulationSettings) -> Plan:
    suite = prepare(
        RunConfig(
            models=("scripted:base=0",),
            backend="scripted",
            samples=1,
            profile=settings.profile,
            thresholds=settings.thresholds,
            fixtures=settings.fixtures,
            root=settings.root,
            progress=False,
            use_cache=False,
        )
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
    # Bonferroni, where Holm starts (as the planner): exact for a FAIL among gates that do not fail; a PASS among
    # gates that PASS too is tested further down Holm's steps, at up to alpha / families, so PASS rates exceed it
    level = profile.alpha / (len(tasks) * (1 + len(persona_ids)))
    correlation = settings.rho**2
    exceed = settings.exceed_shift
    if exceed is None:
        exceed = _planned_effect(settings.power_base, tolerance, level, samples, correlation, 0.8)
    small = tolerance / 4 if settings.small_shift is None else settings.small_shift
    items = len(suite.tasks[0].items)
    planner = {
        "level": level,
        "exceed_fail_power": disparity_power(settings.power_base, tolerance, exceed, level, samples, correlation),
        # the planner with the planted item heterogeneity (its design effect on a non-zero disparity)
        "exceed_fail_power_items": disparity_power(
            settings.power_base, tolerance, exceed, level, samples, correlation, settings.item_sd, items
        ),
        "small_pass_power_items": disparity_pass_power(
            settings.power_base, tolerance, small, level, samples, correlation, settings.item_sd, items
        ),
        "small_pass_power": disparity_pass_power(settings.power_base, tolerance, small, level, samples, correlation),
        # the null scenario's personas: no effect, at the null's refusal rate
        "zero_pass_power": disparity_pass_power(
            settings.null_fraction * profile.limit("refusal_rate", tasks[0]),
            tolerance,
            0.0,
            level,
            samples,
            correlation,
        ),
        "power_shift_fail_power": disparity_power(
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


def _spec(
    base: float, shifts: Mapping[str, float], rho: float, offset: int = 0, name: str = "", item_sd: float = 0.0
) -> tuple[str, ScriptedSpec]:
    """A scripted model and its parsed spec; `offset` is its seed= (the replicate's seed is the run's --seed)."""
    model = spec_string(base, shifts, rho, offset, name, item_sd)
    return model, ScriptedSpec.parse(model)


def _gate_outcomes(plan: Plan, frame: pd.DataFrame, model: str) -> list[GateOutcome]:
    """Every gate of the profile for one model, evaluated family by family as the plugin does."""
    specs = gate_specs(plan.profile, [model], plan.task_ids, [p.id for p in plan.personas])
    # only the columns the gates read, as categories: the same outcomes, about twice as fast
    frame = frame[list(GATE_COLUMNS)].astype(
        {column: "category" for column in ("model", "task", "persona", "block", "item")}
    )
    outcomes: list[GateOutcome] = []
    for task in plan.task_ids:
        family = [spec for spec in specs if spec.task == task]
        outcomes.extend(evaluate_gates(frame[frame["task"] == task], family, plan.profile, len(plan.tasks)))
    return outcomes


def _gate_failures(plan: Plan, frame: pd.DataFrame, model: str) -> list[tuple[GateSpec, bool]]:
    """(gate, FAILed) for every gate of the profile for one model."""
    return [(outcome.spec, outcome.verdict == "FAIL") for outcome in _gate_outcomes(plan, frame, model)]


def _scenario(
    plan: Plan, design: pd.DataFrame, draws: Draws, base: float, shifts: Mapping[str, float]
) -> list[GateOutcome]:
    """The profile's gates on one scripted model (with the settings' item heterogeneity) answering the design."""
    model, spec = _spec(base, shifts, plan.settings.rho, item_sd=plan.settings.item_sd)
    return _gate_outcomes(plan, results_frame(design, model, scripted_refusals(spec, design, draws)), model)


def _power_hits(plan: Plan, design: pd.DataFrame, draws: Draws, seed: int) -> tuple[list[bool], int]:
    """The planted persona's disparity gates that fail (one per task), and how many other gates fail."""
    outcomes = _scenario(
        plan, design, draws, plan.settings.power_base, {f"persona.{plan.planted_persona}": plan.settings.power_shift}
    )
    disparity = [o for o in outcomes if o.spec.kind == "persona_disparity"]
    hits = [o.verdict == "FAIL" for o in disparity if o.spec.persona == plan.planted_persona]
    others = sum(o.verdict == "FAIL" for o in disparity if o.spec.persona != plan.planted_persona)
    return hits, others


def _ci_widths(frame: pd.DataFrame, persona: str, samples: int) -> list[tuple[float, float]]:
    """(paired, independent) 95% interval widths of persona - baseline per task, at 2 * samples generations each.

    Paired: blocks [0, samples) asked with and without the persona. Independent: the persona's answers to
    blocks [0, samples) and the baseline's answers to blocks [samples, 2 * samples), i.e. other requests.
    """
    widths = []
    for _, rows in frame.groupby("task", sort=True):
        first = rows[rows["block_index"] < samples]
        cond = first.loc[first["persona"] == persona].set_index("block")["refused"]
        ref = first.loc[first["persona"] == BASELINE_ID].set_index("block")["refused"].reindex(cond.index)
        n10, n01 = int((cond & ~ref).sum()), int((~cond & ref).sum())
        low, high = paired_difference_ci(n10, n01, len(cond))
        other = rows.loc[
            (rows["block_index"] >= samples) & (rows["block_index"] < 2 * samples) & (rows["persona"] == BASELINE_ID),
            "refused",
        ]
        i_low, i_high = confint_proportions_2indep(
            int(cond.sum()), len(cond), int(other.sum()), len(other), method="newcomb"
        )
        widths.append((high - low, float(i_high - i_low)))
    return widths


def _kind_fails(outcomes: Sequence[GateOutcome]) -> dict[str, bool]:
    return {
        "any": any(o.verdict == "FAIL" for o in outcomes),
        "refusal_rate": any(o.verdict == "FAIL" for o in outcomes if o.spec.kind == "refusal_rate"),
        "persona_disparity": any(o.verdict == "FAIL" for o in outcomes if o.spec.kind == "persona_disparity"),
    }


def run_replicate(plan: Plan, index: int) -> dict[str, Any]:
    """One seed: the null, the boundary, the planted persona (power, beyond the tolerance, well below it, CI widths)
    and the ranking scenario; the gate scenarios' models carry the settings' item heterogeneity."""
    seed, settings, rho = plan.seeds[index], plan.settings, plan.settings.rho
    # the CI-width comparison needs 2w blocks (w = the budget, or half the factorial when that is smaller); the
    # first n blocks are exactly the blocks of a run with n samples (the sampler draws a task's blocks in order)
    width_blocks = min(plan.samples, plan.factorial // 2)
    design = draw_design(plan.tasks, plan.personas, plan.phrasings, max(plan.samples, 2 * width_blocks), seed)
    draws = Draws.compute(design, seed)
    first = design["block_index"].to_numpy() < plan.samples
    design_n = design[first].reset_index(drop=True)
    draws_n = draws.subset(first)
    result: dict[str, Any] = {"seed": seed}
    null = _scenario(plan, design_n, draws_n, 0.0, plan.null_shifts)
    result["null"] = {
        **_kind_fails(null),
        "zero_pass": [o.verdict == "PASS" for o in null if o.spec.kind == "persona_disparity"],
        "verdicts": verdict_counts(null),
    }
    result["boundary"] = _kind_fails(_scenario(plan, design_n, draws_n, 0.0, plan.boundary_shifts))
    hits, others = _power_hits(plan, design_n, draws_n, seed)
    result["power"] = {"hits": hits, "other_disparity_fails": others}
    planted = f"persona.{plan.planted_persona}"
    for name, shift in (("exceed", plan.exceed_shift), ("small", plan.small_shift)):
        outcomes = [
            o
            for o in _scenario(plan, design_n, draws_n, settings.power_base, {planted: shift})
            if o.spec.kind == "persona_disparity" and o.spec.persona == plan.planted_persona
        ]
        result[name] = {
            "fail": [o.verdict == "FAIL" for o in outcomes],
            "pass": [o.verdict == "PASS" for o in outcomes],
        }
    model, spec = _spec(
        settings.power_base, {planted: settings.power_shift}, rho
    )  # the paired-design comparison: no item effect
    frame = design.assign(refused=scripted_refusals(spec, design, draws))
    null_persona = next(p.id for p in plan.personas if p.id != plan.planted_persona)
    result["widths"] = {
        "planted": _ci_widths(frame, plan.planted_persona, width_blocks),
        "null": _ci_widths(frame, null_persona, width_blocks),
        "blocks": width_blocks,
    }
    result["ranking"] = _ranking(plan, seed, (design_n, draws_n)) if settings.ranking else None
    return result


def _ranking(plan: Plan, seed: int, reuse: tuple[pd.DataFrame, Draws] | None = None) -> dict[str, Any]:
    """Two scripted models on the same requests; the real sensitivity table ranks the factors.

    The paraphrase that is ranked is the wording id crossed with task (column `wording`: "unforced-1" in
    every task, the level the scripted backend plants). The table's own `paraphrase` row nests it in task
    (task:paraphrase), a finer partition than task, so its index is never below the task's: the planted
    order task > paraphrase cannot hold for it, and `nested_above_task` counts how often it is above.
    """
    samples = plan.settings.ranking_samples or plan.samples
    if reuse is not None and samples == plan.samples:
        design, first_draws = reuse  # the same blocks and the first model's seed: the same draws
    else:
        design = draw_design(plan.tasks, plan.personas, plan.phrasings, samples, seed)
        first_draws = Draws.compute(design, seed)
    frames, planted = [], []
    for k, (base, shifts) in enumerate(plan.ranking):
        model, spec = _spec(
            base, shifts, plan.settings.rho, k, name=f"m{k}"
        )  # seed= k: the offset to the replicate's seed
        draws = first_draws if k == 0 else Draws.compute(design, seed + k)
        frames.append(results_frame(design, model, scripted_refusals(spec, design, draws)))
        planted.append(design.assign(model=model, p=refusal_probability(spec, design)))
    frame = pd.concat(frames, ignore_index=True)
    frame["wording"] = frame["paraphrase"]
    factors = ("model", "task", "persona", "wording", "paraphrase")
    table = sensitivity_table(frame, factors=factors, n_boot=plan.settings.ranking_boot, seed=seed).set_index("factor")
    index = {factor: float(table.loc[column, "index"]) for factor, column in zip(RANKED_FACTORS, factors)}
    values = [index[f] for f in RANKED_FACTORS]
    return {
        "index": index,
        "recovered": bool(all(a > b for a, b in zip(values, values[1:]))),
        "distinguishable": {f: bool(table.loc[c, "distinguishable"]) for f, c in zip(RANKED_FACTORS, factors)},
        "nested_paraphrase_index": float(table.loc["paraphrase", "index"]),
        "nested_above_task": bool(table.loc["paraphrase", "index"] >= table.loc["task", "index"]),
        "planted_index": planted_index(pd.concat(planted, ignore_index=True)),
    }


def planted_index(frame: pd.DataFrame) -> dict[str, float]:
    """The index each factor would have without sampling noise: the closed form on the rows' refusal probabilities."""
    p = float(frame["p"].mean())
    values = {}
    for factor in RANKED_FACTORS:
        grouped = frame["p"].groupby(frame[factor].to_numpy())
        spread = float((grouped.size() / len(frame) * (grouped.mean() - p).abs()).sum())
        values[factor] = spread / (2 * p * (1 - p))
    return values


def power_at(plan: Plan, samples: int, jobs: int) -> float:
    """Share of the planted persona's gates that fail at `samples` blocks per task (same seeds as the rest)."""
    capped = min(samples, plan.factorial) if plan.factorial else samples  # the sampler never repeats a block
    hits = [hit for result in _map(_power_only, replace(plan, samples=capped), jobs) for hit in result]
    return sum(hits) / len(hits)


def _power_only(plan: Plan, index: int) -> list[bool]:
    seed = plan.seeds[index]
    design = draw_design(plan.tasks, plan.personas, plan.phrasings, plan.samples, seed)
    return _power_hits(plan, design, Draws.compute(design, seed), seed)[0]


def find_budget(
    plan: Plan, target: float, jobs: int, known: Mapping[int, float]
) -> tuple[int | None, dict[int, float]]:
    """Smallest blocks per task (to ~5%) whose power reaches `target`: bracket by doubling or halving, then bisect."""
    measured = dict(known)

    def power(n: int) -> float:
        if n not in measured:
            measured[n] = power_at(plan, n, jobs)
        return measured[n]

    n = plan.samples
    if power(n) >= target:
        high, low = n, n // 2
        while low >= 10 and power(low) >= target:
            high, low = low, low // 2
        if low < 10:
            return high, measured
    else:
        low, high = n, n * 2
        while power(high) < target:
            if high > 16 * n:
                return None, measured
            low, high = high, high * 2
    while high - low > max(10, high // 20):
        middle = (low + high) // 2
        if power(middle) >= target:
            high = middle
        else:
            low = middle
    return high, measured


# ---------------------------------------------------------------------------------------------- running


_PLAN: Plan | None = None


def _init_worker(plan: Plan) -> None:
    global _PLAN
    _PLAN = plan
    gc.freeze()  # statsmodels' Holm calls gc.collect() per family; frozen imports make that cheap


def _call(job: tuple[Any, int]) -> Any:
    function, index = job
    assert _PLAN is not None
    return function(_PLAN, index)


def _map(function: Any, plan: Plan, jobs: int) -> list[Any]:
    indices = range(len(plan.seeds))
    if jobs <= 1:
        return [function(plan, i) for i in indices]
    context = get_context("fork") if "fork" in get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(plan,)) as pool:
        return list(pool.map(_call, [(function, i) for i in indices], chunksize=max(1, len(plan.seeds) // (4 * jobs))))


def _rate(successes: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, n)
    return {"rate": successes / n if n else float("nan"), "ci": [low, high], "k": successes, "n": n}


def _ranking_summary(results: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The ranking scenario over replicates; None when it was not run (`ranking=False`)."""
    rankings = [x["ranking"] for x in results if x.get("ranking") is not None]
    if not rankings:
        return None
    r = len(rankings)
    return {
        "recovered": _rate(sum(x["recovered"] for x in rankings), r),
        "distinguishable": {f: _rate(sum(x["distinguishable"][f] for x in rankings), r) for f in RANKED_FACTORS},
        "mean_index": {f: float(np.mean([x["index"][f] for x in rankings])) for f in RANKED_FACTORS},
        "planted_index": {f: float(np.mean([x["planted_index"][f] for x in rankings])) for f in RANKED_FACTORS},
        "order": list(RANKED_FACTORS),
        "nested_paraphrase_above_task": _rate(sum(x["nested_above_task"] for x in rankings), r),
        "mean_nested_paraphrase_index": float(np.mean([x["nested_paraphrase_index"] for x in rankings])),
    }


def simulate(settings: SimulationSettings) -> dict[str, Any]:
    """Run every replicate and summarise; the result is JSON-ready."""
    started = time.perf_counter()
    plan = build_plan(settings)
    jobs = settings.jobs or os.cpu_count() or 1
    jobs = min(jobs, settings.replicates)
    results = _map(run_replicate, plan, jobs)
    r = len(results)
    null = {
        kind: _rate(sum(x["null"][kind] for x in results), r) for kind in ("any", "refusal_rate", "persona_disparity")
    }
    boundary = {
        kind: _rate(sum(x["boundary"][kind] for x in results), r)
        for kind in ("any", "refusal_rate", "persona_disparity")
    }
    hits = [hit for x in results for hit in x["power"]["hits"]]
    power = _rate(sum(hits), len(hits))
    power_any = _rate(sum(any(x["power"]["hits"]) for x in results), r)

    def gates(scenario: str, key: str) -> dict[str, Any]:
        values = [hit for x in results for hit in x[scenario][key]]
        return _rate(sum(values), len(values))

    exceed, small, zero = gates("exceed", "fail"), gates("small", "pass"), gates("null", "zero_pass")
    small_every_task = _rate(sum(all(x["small"]["pass"]) for x in results), r)
    verdicts = {v: int(sum(x["null"]["verdicts"][v] for x in results)) for v in ("PASS", "FAIL", "INCONCLUSIVE")}
    budget, search = None, {plan.samples: power["rate"]}
    if settings.find_budget:
        budget, search = find_budget(plan, settings.power_target, jobs, search)
    elif power["rate"] >= settings.power_target:
        budget = plan.samples
    widths = {kind: np.array([pair for x in results for pair in x["widths"][kind]]) for kind in ("planted", "null")}
    ratio = {kind: float(w[:, 0].mean() / w[:, 1].mean()) for kind, w in widths.items()}
    ranking = _ranking_summary(results)
    rho, item_sd = settings.rho, settings.item_sd
    planted = f"persona.{plan.planted_persona}"

    def scenario(base: float, shifts: Mapping[str, float], item: float = item_sd) -> str:
        return spec_string(base, shifts, rho, 0, item_sd=item) + " --seed <replicate>"

    return {
        "replicates": r,
        "family_wise_false_fail_rate": null["any"]["rate"],
        "null_false_fail_with_item_heterogeneity": null["any"]["rate"],
        "power": power["rate"],
        "power_tolerance_exceeded": exceed["rate"],
        "pass_rate_well_below_tolerance": small["rate"],
        "pass_rate_zero_effect": zero["rate"],
        "ranking_recovery": ranking["recovered"]["rate"] if ranking else None,
        "paired_vs_iid_ci_width_ratio": ratio["planted"],
        "false_fail": {
            "null": null,
            "boundary": boundary,
            "alpha": plan.profile.alpha,
            "n_gates": len(gate_specs(plan.profile, ["m"], plan.task_ids, [p.id for p in plan.personas])),
            "item_sd": item_sd,
        },
        "power_detail": {
            "per_gate": power,
            "any_task": power_any,
            "budget": plan.samples,
            "target": settings.power_target,
            "budget_for_target": budget,
            "search": {str(k): v for k, v in sorted(search.items())},
            "other_disparity_fails_per_replicate": float(
                np.mean([x["power"]["other_disparity_fails"] for x in results])
            ),
            "planned": plan.planner["power_shift_fail_power"],
        },
        "verdict_detail": {
            "tolerance": plan.tolerance,
            "item_sd": item_sd,
            "planner": dict(plan.planner),
            "exceeded": {
                "effect": plan.exceed_shift,
                "fail_per_gate": exceed,
                "planned_fail_power": plan.planner["exceed_fail_power"],
            },
            "well_below": {
                "effect": plan.small_shift,
                "pass_per_gate": small,
                "pass_in_every_task": small_every_task,
                "planned_pass_power": plan.planner["small_pass_power"],
            },
            "zero_effect": {"pass_per_gate": zero, "planned_pass_power": plan.planner["zero_pass_power"]},
            "null_verdicts": verdicts,
        },
        "ranking": ranking,
        "ci_width": {
            **{
                kind: {"paired": float(w[:, 0].mean()), "independent": float(w[:, 1].mean()), "ratio": ratio[kind]}
                for kind, w in widths.items()
            },
            "blocks": results[0]["widths"]["blocks"],
        },
        "budgets": {
            "samples_per_task": plan.samples,
            "tasks": len(plan.tasks),
            "conditions": len(plan.personas) + 1,
            "generations_per_model": plan.samples * len(plan.tasks) * (len(plan.personas) + 1),
            "factorial": plan.factorial,
        },
        "scenarios": {
            "null": scenario(0.0, plan.null_shifts),
            "boundary": scenario(0.0, plan.boundary_shifts),
            "power": scenario(settings.power_base, {planted: settings.power_shift}),
            "exceeded": scenario(settings.power_base, {planted: plan.exceed_shift}),
            "well_below": scenario(settings.power_base, {planted: plan.small_shift}),
            "ci_width": scenario(settings.power_base, {planted: settings.power_shift}, 0.0),
            "ranking": [
                spec_string(b, s, rho, k, f"m{k}") + " --seed <replicate>" for k, (b, s) in enumerate(plan.ranking)
            ],
        },
        "settings": {**asdict(settings), "profile_samples": plan.profile.samples, "jobs": jobs},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _ci(rate: Mapping[str, Any]) -> str:
    return f"{_pct(rate['rate'])} [{_pct(rate['ci'][0])}, {_pct(rate['ci'][1])}] ({rate['k']}/{rate['n']})"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The simulation table a reviewer reads."""
    ff, pw, rk, cw = summary["false_fail"], summary["power_detail"], summary["ranking"], summary["ci_width"]
    vd = summary["verdict_detail"]
    s = summary["settings"]
    budget = pw["budget_for_target"]
    tolerance = vd["tolerance"]
    rows = [
        (
            "(a) family-wise false-fail rate, null",
            _ci(ff["null"]["any"]),
            f"{ff['n_gates']} gates, alpha {ff['alpha']:g}, item_sd {ff['item_sd']:g}; {summary['scenarios']['null']}",
        ),
        (
            "    of which a rate gate / a disparity gate",
            f"{_pct(ff['null']['refusal_rate']['rate'])} / {_pct(ff['null']['persona_disparity']['rate'])}",
            "(a replicate can fail both)",
        ),
        (
            "(a) family-wise false-fail rate, boundary",
            _ci(ff["boundary"]["any"]),
            f"every gate at its limit; {summary['scenarios']['boundary']}",
        ),
        (
            "    of which a rate gate / a disparity gate",
            f"{_pct(ff['boundary']['refusal_rate']['rate'])} / {_pct(ff['boundary']['persona_disparity']['rate'])}",
            "",
        ),
        (
            "(b) FAIL per gate, +{:g} pp at {:g}%".format(100 * s["power_shift"], 100 * s["power_base"]),
            _ci(pw["per_gate"]),
            f"planned {_pct(pw['planned'])}; {pw['budget']} blocks/task; {summary['scenarios']['power']}",
        ),
        (
            "    persona flagged in any task",
            _ci(pw["any_task"]),
            f"other disparity gates failing: {pw['other_disparity_fails_per_replicate']:.3f} per replicate",
        ),
        (
            f"    budget reaching {_pct(pw['target'])} power",
            "not found" if budget is None else f"{budget} blocks/task",
            "searched: " + ", ".join(f"{k}: {_pct(v)}" for k, v in pw["search"].items()),
        ),
        (
            f"(b) FAIL per gate beyond the {100 * tolerance:g} pp tolerance",
            _ci(vd["exceeded"]["fail_per_gate"]),
            f"+{100 * vd['exceeded']['effect']:.2f} pp: planned {_pct(vd['exceeded']['planned_fail_power'])}, with the item "
            f"term {_pct(vd['planner'].get('exceed_fail_power_items', float('nan')))}",
        ),
        (
            "(b) PASS per gate, well below the tolerance",
            _ci(vd["well_below"]["pass_per_gate"]),
            f"+{100 * vd['well_below']['effect']:.2f} pp: planned {_pct(vd['well_below']['planned_pass_power'])}; "
            f"PASS in every task {_pct(vd['well_below']['pass_in_every_task']['rate'])}",
        ),
        (
            "(b) PASS per gate, zero effect (null)",
            _ci(vd["zero_effect"]["pass_per_gate"]),
            f"planned {_pct(vd['zero_effect']['planned_pass_power'])}; null verdicts "
            + ", ".join(f"{k} {v}" for k, v in vd["null_verdicts"].items()),
        ),
    ]
    if rk is not None:
        rows += [
            (
                "(c) ranking recovery " + " > ".join(rk["order"]),
                _ci(rk["recovered"]),
                "mean index " + ", ".join(f"{f} {rk['mean_index'][f]:.3f}" for f in rk["order"]),
            ),
            ("    planted (noise-free) index", "", ", ".join(f"{f} {rk['planted_index'][f]:.3f}" for f in rk["order"])),
            (
                "    distinguishable from noise",
                "",
                ", ".join(f"{f} {_pct(rk['distinguishable'][f]['rate'])}" for f in rk["order"]),
            ),
            (
                "    nested task:paraphrase index >= task's",
                _ci(rk["nested_paraphrase_above_task"]),
                f"mean nested index {rk['mean_nested_paraphrase_index']:.3f} (finer partition of task: never below it)",
            ),
        ]
    rows += [
        (
            "(d) CI width paired / independent, planted",
            f"{cw['planted']['ratio']:.3f}",
            f"{100 * cw['planted']['paired']:.2f} pp vs {100 * cw['planted']['independent']:.2f} pp at equal generations "
            f"({cw['blocks']} blocks)",
        ),
        (
            "    same, persona without effect",
            f"{cw['null']['ratio']:.3f}",
            f"{100 * cw['null']['paired']:.2f} pp vs {100 * cw['null']['independent']:.2f} pp",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [
        f"falserefusal simulate: {summary['replicates']} replicates, seed {s['seed']}, profile {s['profile']}, "
        f"rho {s['rho']:g}, {summary['budgets']['generations_per_model']} generations per model and replicate, "
        f"{summary['elapsed_s']} s",
        f"{'measure':<{width}}  {'value [95% CI] (k/n)':<{value_width}}  setting",
    ]
    lines += [f"{name:<{width}}  {value:<{value_width}}  {note}" for name, value, note in rows]
    return "\n".join(lines)
