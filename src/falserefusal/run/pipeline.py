"""The one run path: per (model, task) family, generate and decide its gates once; the CLI, plugin and bench call it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from falserefusal.analysis import records_frame
from falserefusal.analysis.detector_audit import DetectorAudit
from falserefusal.gating.decide import evaluate_gates
from falserefusal.gating.kinds import GateOutcome, GateSpec, ci_failed, family_alpha, gate_specs, pass_alpha
from falserefusal.gating.profile import Profile
from falserefusal.generation.generator import Generator, generation_stopped
from falserefusal.generation.models import model_labels
from falserefusal.run.config import RunConfig
from falserefusal.run.prepare import Suite, prepare
from falserefusal.run.results import RESULTS_FILE, canonical_order, run_metadata, write_results
from falserefusal.types import Case, FalseRefusalError, Record


@dataclass
class RunResult:
    suite: Suite
    records: list[Record]
    outcomes: list[GateOutcome]
    metadata: dict[str, Any]
    replaced: bool = False  # an earlier run's results.jsonl was in the report folder (the summary says so)
    report_path: Path | None = None
    report_error: str | None = None  # the report could not be written (the gates and results stand)

    @property
    def passed(self) -> bool:
        """No gate fails CI: no FAIL, and no INCONCLUSIVE under the profile's `inconclusive: fail`."""
        return not any(ci_failed(outcome, self.suite.profile.inconclusive) for outcome in self.outcomes)


def evaluate(suite: Suite, records: Sequence[Record]) -> list[GateOutcome]:
    """The gate outcomes of finished records."""
    return decide_gates(
        suite.gates, records, suite.profile, suite.n_families, suite.samples, suite.factorial, suite.audit
    )


def with_population(frame: pd.DataFrame, factorial: Mapping[str, int] | None) -> pd.DataFrame:
    """The analysis frame with column `population`: each row's task factorial size (the gates' finite population
    for the "these items" interval); absent when the sizes are unknown (results written before 0.2)."""
    if factorial:
        frame["population"] = frame["task"].map(dict(factorial))
    return frame


def decide_gates(
    gates: Sequence[GateSpec],
    records: Sequence[Record],
    profile: Profile,
    n_families: float,
    samples: int,
    factorial: Mapping[str, int] | None = None,
    audit: DetectorAudit | None = None,
) -> list[GateOutcome]:
    """Gates of the families present in `records`; a sequential profile replays its looks on the saved prefixes.
    With an `audit`, a profile of `detector_correction: audit` gates on rates corrected for detector error."""
    from falserefusal.gating.sequential import SequentialDesign, run_sequential

    frame = with_population(records_frame(records), factorial)
    present = {(r.model, r.case.task) for r in records}
    specs = [spec for spec in gates if spec.family in present]
    design = SequentialDesign.from_profile(profile.sequential)
    if design is None:
        return evaluate_gates(frame, specs, profile, n_families, audit)
    frame["block_index"] = frame["block"].map(block_index)
    outcomes: list[GateOutcome] = []
    for family in dict.fromkeys(spec.family for spec in specs):
        family_specs = [spec for spec in specs if spec.family == family]
        rows = frame[frame["task"] == family[1]]
        result = run_sequential(
            lambda n: rows[rows["block_index"] < n],
            family_specs,
            family_alpha(profile, n_families),
            design,
            samples,
            pass_alpha(profile),
        )
        outcomes.extend(result.outcomes)
    return outcomes


def block_index(block_id: str) -> int:
    """The position of a request block in its task ("nli-b00012" -> 12)."""
    return int(block_id.rsplit("-b", 1)[1])


@dataclass
class FamilyRun:
    """One (model, task) family: its new records (candidate, and baseline model ones not yet emitted) and outcomes."""

    records: list[Record]
    outcomes: list[GateOutcome]
    blocks_used: int
    budget: int


class BaselineSource:
    """The baseline model's records for given cases: generated once (shared by candidates) or read from a saved run."""

    def __init__(self, suite: Suite, generator: "Generator") -> None:
        self.suite, self.generator = suite, generator
        self.known: dict[str, Record] = {}

    def records_for(self, cases: Sequence[Case]) -> tuple[list[Record], list[Record]]:
        """(records for these cases, the ones this source had not handed out before)."""
        suite = self.suite
        todo = [c for c in cases if c.case_id not in self.known]
        if todo and suite.baseline_records is not None:
            fresh = [suite.baseline_records[c.case_id] for c in todo]
        elif todo:
            fresh = self.generator.generate(suite.baseline or "", todo, f"baseline {todo[0].task}")
        else:
            fresh = []
        self.known.update({r.case.case_id: r for r in fresh})
        return [self.known[c.case_id] for c in cases], fresh


def run_family(
    generator: "Generator", suite: Suite, model: str, task: str, baseline: BaselineSource | None = None
) -> FamilyRun:
    """Generate one family (with the baseline model's answers to the same cases) and decide its gates.

    A sequential profile generates round by round and stops once every gate is settled; otherwise the whole
    budget is generated at once. Both plugin and CLI come through here.
    """
    from falserefusal.gating.sequential import SequentialDesign, run_sequential

    cases = suite.cases_for(task)
    per_block = suite.conditions
    label = f"{model_labels(suite.models)[model]} {task}"
    specs = [spec for spec in suite.gates if spec.family == (model, task)]
    records: list[Record] = []
    emitted: list[Record] = []
    have = 0

    def fetch(blocks: int) -> pd.DataFrame:
        nonlocal have
        if blocks > have:
            chunk = cases[have * per_block : blocks * per_block]
            fresh = generator.generate(model, chunk, label)
            records.extend(fresh)
            emitted.extend(fresh)
            if baseline is not None:
                paired, new = baseline.records_for(chunk)
                records.extend(paired)
                emitted.extend(new)
            have = blocks
        return with_population(records_frame(records), suite.factorial)

    design = SequentialDesign.from_profile(suite.profile.sequential)
    if design is None:
        outcomes = evaluate_gates(fetch(suite.samples), specs, suite.profile, suite.n_families, suite.audit)
        return FamilyRun(emitted, outcomes, suite.samples, suite.samples)
    result = run_sequential(
        fetch, specs, family_alpha(suite.profile, suite.n_families), design, suite.samples, pass_alpha(suite.profile)
    )
    return FamilyRun(emitted, result.outcomes, result.blocks_used, suite.samples)


def budget_usage(suite: Suite, records: Sequence[Record]) -> dict[str, Any]:
    """Request blocks generated per gated (model, task) family versus the fixed budget (sequential runs stop early)."""
    blocks: dict[str, set[str]] = {}
    for record in records:
        if record.model in suite.models:
            blocks.setdefault(f"{record.model}|{record.case.task}", set()).add(record.case.block_id)
    used = {family: len(ids) for family, ids in blocks.items()}
    budget = suite.samples * len(used)
    return {
        "sequential": dict(suite.profile.sequential),
        "blocks_per_family": used,
        "blocks_used": sum(used.values()),
        "blocks_budget": budget,
        "cases_used": sum(used.values()) * suite.conditions,
        "cases_budget": budget * suite.conditions,
    }


def outcomes_from_results(
    metadata: Mapping[str, Any], records: Sequence[Record], audit: DetectorAudit | None = None
) -> list[GateOutcome]:
    """Gate outcomes recomputed from a saved results file: its header's profile, models, tasks and personas (and,
    with `audit`, a profile of `detector_correction: audit` decides on the corrected rates)."""
    try:
        known = {f.name for f in fields(Profile)}
        profile = Profile(**{k: v for k, v in metadata["profile"].items() if k in known})
        models, tasks, personas = list(metadata["models"]), list(metadata["tasks"]), list(metadata["personas"])
    except (KeyError, TypeError) as error:
        raise FalseRefusalError(
            f"results header: lacks the run's profile, models, tasks or personas ({error}); "
            "fix: pass a results.jsonl written by falserefusal run or pytest"
        ) from None
    specs = gate_specs(profile, models, tasks, personas, metadata.get("baseline_model"), metadata.get("intersections"))
    from falserefusal.gating.custom import CustomAccounting, outcome_from_dict

    custom = metadata.get("custom_gates") or {}  # custom gates (pytest markers) keep their alpha and outcomes
    n_families = len(models) * len(tasks) + CustomAccounting.from_dict(custom.get("accounting")).weight
    outcomes = decide_gates(
        specs,
        records,
        profile,
        n_families,
        int(metadata.get("samples") or profile.samples),
        (metadata.get("sampling") or {}).get("factorial"),
        audit,
    )
    return outcomes + [outcome_from_dict(o) for o in custom.get("outcomes", [])]


class Run:
    """One run, as every front end drives it: `prepare` on construction, then `family(model, task)` per (model, task)
    family (generate its cases, decide its gates once), then `finish()`: records in canonical order, results.jsonl
    and run.json, and optionally the report. `falserefusal run` runs every family in one process; under pytest
    each process (xdist worker) runs the families of its items and the controller `absorb`s what they made."""

    def __init__(
        self,
        config: RunConfig,
        suite: Suite | None = None,
        generator: Generator | None = None,
        progress_position: int = 0,
    ) -> None:
        self.suite = suite if suite is not None else prepare(config)
        self.config = self.suite.config
        self._generator = generator
        self._owns_generator = generator is None
        self._progress_position = progress_position
        self._baseline: BaselineSource | None = None
        self.records: list[Record] = []
        self.outcomes: dict[GateSpec, GateOutcome] = {}
        self.families_done: set[tuple[str, str]] = set()
        self.stopped: FalseRefusalError | None = None  # a model broke off mid-run: no more families
        self.identities: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.cache: dict[str, Any] = {}

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = Generator(self.config, progress_position=self._progress_position)
        return self._generator

    def family(self, model: str, task: str) -> None:
        """Generate one (model, task) family (with the baseline model's answers to its cases) and decide its gates,
        once; a model that broke off raises `generation_stopped` now and for every later family."""
        if self.stopped is not None:
            raise self.stopped
        if (model, task) in self.families_done:
            return
        if self._baseline is None and self.suite.baseline:
            self._baseline = BaselineSource(self.suite, self.generator)
        try:
            done = run_family(self.generator, self.suite, model, task, self._baseline)
        except FalseRefusalError as error:
            self.stopped = generation_stopped(error, self.generator)
            raise self.stopped from None
        self.records.extend(done.records)
        self.outcomes.update({o.spec: o for o in done.outcomes})
        self.families_done.add((model, task))

    def family_records(self, model: str, task: str) -> list[Record]:
        """The records of one family (and the baseline model's answers to its cases), generated once."""
        self.family(model, task)
        keep = {model, self.suite.baseline}
        return [r for r in self.records if r.case.task == task and r.model in keep]

    def outcome(self, spec: GateSpec) -> GateOutcome:
        self.family(*spec.family)
        return self.outcomes[spec]

    def run_all(self) -> None:
        """Every family of the suite in turn; stops at the first model that breaks off (`self.stopped`)."""
        for model, spec in itertools.product(self.suite.models, self.suite.tasks):
            try:
                self.family(model, spec.task.id)
            except FalseRefusalError:
                break

    def close(self) -> None:
        """Release the models; keep what the metadata needs (identities, timings, cache counts)."""
        if self._generator is not None:
            self.identities.update(self._generator.identities())
            for key, value in self._generator.timings.items():
                self.timings[key] = self.timings.get(key, 0.0) + value
            self.absorb_cache(self._generator.cache_stats())
            if self._owns_generator:
                self._generator.close()
            self._generator = None

    def absorb(
        self,
        records: Sequence[Record],
        outcomes: Sequence[GateOutcome],
        identities: Mapping[str, Any],
        timings: Mapping[str, float],
        cache: Mapping[str, Any],
    ) -> None:
        """What another process's Run made (an xdist worker's families), pooled here; its gates were decided there."""
        # with --dist load a family can be generated on two workers: keep one record per (model, case)
        seen = {(r.model, r.case.case_id) for r in self.records}
        self.records.extend(r for r in records if (r.model, r.case.case_id) not in seen)
        self.outcomes.update({o.spec: o for o in outcomes})
        self.identities.update(identities)
        for key, value in timings.items():
            self.timings[key] = self.timings.get(key, 0.0) + value
        self.absorb_cache(cache)

    def absorb_cache(self, cache: Mapping[str, Any]) -> None:
        for key, value in cache.items():
            # counters (Generator.cache_counts) add up over processes; the settings (enabled, path, rescore) are shared
            counter = isinstance(value, int) and not isinstance(value, bool)
            self.cache[key] = self.cache.get(key, 0) + value if counter else value

    def gate_outcomes(self) -> list[GateOutcome]:
        """The decided gates in the suite's order (whichever process decided them)."""
        rank = {spec: i for i, spec in enumerate(self.suite.gates)}
        return sorted(self.outcomes.values(), key=lambda o: rank.get(o.spec, len(rank)))

    def finish(self, extra: Mapping[str, Any] | None = None, report: bool = False) -> RunResult:
        """Records in canonical order, results.jsonl and run.json (a run that made nothing and stopped leaves an
        earlier file alone), and with `report` the HTML report."""
        self.close()
        suite = self.suite
        records = canonical_order(suite, self.records)
        version = records[0].detector_version if records else self.config.refusal_detector().version
        metadata = run_metadata(suite, self.identities, self.timings, version, self.cache)
        metadata["budget"] = budget_usage(suite, records)
        metadata.update(extra or {})
        report_dir = self.config.path(self.config.report_dir)
        result = RunResult(
            suite, records, self.gate_outcomes(), metadata, replaced=(report_dir / RESULTS_FILE).is_file()
        )
        if records or self.stopped is None:
            write_results(report_dir / RESULTS_FILE, metadata, records)
        if report:
            from falserefusal.report import build_report

            try:
                result.report_path = build_report(metadata, records, result.outcomes, report_dir, audit=suite.audit)
            except Exception as error:  # the gates and results.jsonl stand; a broken report must not hide them
                result.report_error = f"{type(error).__name__}: {error}"
        return result


def run(config: RunConfig, report: bool = False) -> RunResult:
    """Generate every case with every model, decide the gates, write results (and with `report` the report).
    A model that breaks off mid-run raises `generation_stopped` after the finished families' results are written."""
    whole = Run(config)
    whole.run_all()
    result = whole.finish(report=report and whole.stopped is None)
    if whole.stopped is not None:
        raise whole.stopped
    return result
