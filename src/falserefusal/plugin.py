"""The pytest plugin: maps options, gate items, xdist workers and session hooks onto falserefusal's library."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from falserefusal.gates import GateOutcome, GateSpec, evaluate_gates
from falserefusal.options import OPTIONS, add_options, resolve
from falserefusal.runner import (
    RESULTS_FILE,
    Generator,
    RunConfig,
    Suite,
    canonical_order,
    evaluate,
    format_rate_table,
    model_labels,
    prepare,
    records_frame,
    run_metadata,
    write_results,
)
from falserefusal.types import FalseRefusalError, Record

#: gate fixture name -> gate kind; tests/refusal asks for these fixtures
GATE_FIXTURES = {"refusal_rate_gate": "refusal_rate", "persona_disparity_gate": "persona_disparity"}


@dataclass
class FalseRefusalSession:
    """Per-process state: the suite, the generator, records and outcomes of the families run here."""

    config: pytest.Config
    suite: Suite | None = None
    error: FalseRefusalError | None = None
    generator: Generator | None = None
    records: list[Record] = field(default_factory=list)
    outcomes: dict[GateSpec, GateOutcome] = field(default_factory=dict)
    families_done: set[tuple[str, str]] = field(default_factory=set)
    worker_records: list[dict[str, Any]] = field(default_factory=list)
    identities: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    metadata: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = None
    report_error: str | None = None

    def get_suite(self) -> Suite:
        if self.suite is None and self.error is None:
            try:
                self.suite = prepare(_run_config(self.config))
            except FalseRefusalError as error:
                self.error = error
        if self.error is not None:
            raise self.error
        assert self.suite is not None
        return self.suite

    def outcome(self, spec: GateSpec) -> GateOutcome:
        """Generate the gate's (model, task) family once, in batches, then evaluate all its gates together."""
        suite = self.get_suite()
        if spec.family not in self.families_done:
            if self.generator is None:
                worker = getattr(self.config, "workerinput", {}).get("workerid", "gw0")
                self.generator = Generator(suite.config, progress_position=int(worker.removeprefix("gw") or 0))
            model, task = spec.family
            label = f"{model_labels(suite.models)[model]} {task}"
            family_records = self.generator.generate(model, suite.cases_for(task), label)
            self.records.extend(family_records)
            family_specs = [s for s in suite.gates if s.family == spec.family]
            outcomes = evaluate_gates(records_frame(family_records), family_specs, suite.profile, suite.n_families)
            self.outcomes.update({o.spec: o for o in outcomes})
            self.families_done.add(spec.family)
        return self.outcomes[spec]


STASH = pytest.StashKey[FalseRefusalSession]()


def _run_config(config: pytest.Config) -> RunConfig:
    values = {}
    for option in OPTIONS:
        ini = config.getini(option.dest) if option.kind != "flag" else config.getini(option.dest)
        values[option.name] = resolve(option, config.getoption(option.dest), ini)
    if hasattr(config, "workerinput"):
        values["seed"] = int(config.workerinput.get("falserefusal_seed", values["seed"]))
    return RunConfig.from_options(values, root=str(config.rootpath))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("falserefusal", "falserefusal: persona false-refusal gates")
    add_options(group.addoption)
    for option in OPTIONS:
        kind = "bool" if option.kind == "flag" else ("args" if option.kind == "list" else "string")
        parser.addini(option.dest, f"default for --{option.name}", type=kind, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "falserefusal_gate: a falserefusal release gate (one per gate)")
    config.stash[STASH] = FalseRefusalSession(config)


def pytest_configure_node(node: Any) -> None:
    """xdist controller -> worker: every worker draws cases from the controller's seed."""
    session = node.config.stash[STASH]
    node.workerinput["falserefusal_seed"] = _run_config(session.config).seed


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture, kind in GATE_FIXTURES.items():
        if fixture not in metafunc.fixturenames:
            continue
        session = metafunc.config.stash[STASH]
        try:
            suite = session.get_suite()
        except FalseRefusalError:
            metafunc.parametrize(fixture, [], ids=[])  # reported as a usage error once collection ends
            continue
        params = [
            pytest.param(spec, id=spec.gate_id(suite.model_label(spec.model)), marks=[pytest.mark.xdist_group(spec.task), pytest.mark.falserefusal_gate])
            for spec in suite.gates
            if spec.kind == kind
        ]
        metafunc.parametrize(fixture, params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = config.stash[STASH]
    if session.error is not None:
        raise pytest.UsageError(str(session.error))


@pytest.fixture
def falserefusal_gate(request: pytest.FixtureRequest) -> Any:
    """Call with a GateSpec: runs (or reuses) its family's generation and fails the test if the gate fails."""
    session = request.config.stash[STASH]

    def check(spec: GateSpec) -> GateOutcome:
        outcome = session.outcome(spec)
        request.node.user_properties.append(("falserefusal", json.dumps(outcome.to_dict(), default=str)))
        if not outcome.passed:
            pytest.fail(outcome.message, pytrace=False)
        return outcome

    return check


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash[STASH]
    if state.generator is not None:
        state.identities = state.generator.identities()
        state.timings = dict(state.generator.timings)
        state.generator.close()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand records to the controller
        workeroutput["falserefusal"] = json.dumps(
            {
                "records": [r.to_dict() for r in state.records],
                "identities": state.identities,
                "timings": state.timings,
            }
        )
        return
    if state.records and state.suite is not None:
        _finish_controller(state)


def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: collect a worker's records."""
    payload = getattr(node, "workeroutput", {}).get("falserefusal")
    if not payload:
        return
    state = node.config.stash[STASH]
    data = json.loads(payload)
    state.records.extend(Record.from_dict(r) for r in data["records"])
    state.identities.update(data["identities"])
    for key, value in data["timings"].items():
        state.timings[key] = state.timings.get(key, 0.0) + value
    if state.suite is None:
        try:
            state.get_suite()
        except FalseRefusalError:
            pass


def _finish_controller(state: FalseRefusalSession) -> None:
    """Pooled results on the controller: results.jsonl (and the report, when available)."""
    suite = state.suite
    assert suite is not None
    state.records = canonical_order(suite, state.records)
    timings = dict(state.timings, wall_s=time.perf_counter() - state.started)
    from falserefusal.refusal import DETECTOR_VERSION

    detector_version = state.records[0].detector_version if state.records else DETECTOR_VERSION
    metadata = run_metadata(suite, state.identities, timings, detector_version)
    report_dir = suite.config.path(suite.config.report_dir)
    write_results(report_dir / RESULTS_FILE, metadata, state.records)
    state.outcomes = {o.spec: o for o in evaluate(suite, state.records)}
    state.metadata = metadata
    from falserefusal.report import build_report

    try:
        state.report_path = build_report(metadata, state.records, list(state.outcomes.values()), report_dir)
    except Exception as error:  # the gates and results.jsonl stand; a broken report must not hide them
        state.report_error = f"{type(error).__name__}: {error}"


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session) -> None:
    """pytest-html (--html): the verdict and the heatmap in its summary, with a link to the full report."""
    state = session.config.stash[STASH]
    if not state.records or state.suite is None:
        return
    from falserefusal.report import summary_html

    href = None
    html_path = getattr(session.config.option, "htmlpath", None)
    if state.report_path is not None and html_path:
        html_dir = Path(html_path).expanduser().resolve().parent
        href = Path(os.path.relpath(state.report_path.resolve(), html_dir)).as_posix()
    prefix.append(summary_html(state.metadata, state.records, list(state.outcomes.values()), href))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash[STASH]
    if not state.records or state.suite is None:
        return
    suite = state.suite
    write = terminalreporter.write_line
    terminalreporter.section("falserefusal: refusal rate per persona x task")
    write(f"models: {', '.join(suite.models)} | profile: {suite.profile.name} | seed: {suite.config.seed} | "
          f"samples: {suite.samples} blocks per task | {len(state.records)} generations")
    write(format_rate_table(state.records))
    failed = [o for o in state.outcomes.values() if not o.passed]
    write(f"gates: {len(state.outcomes) - len(failed)} passed, {len(failed)} failed")
    for outcome in failed:
        write("  " + outcome.message[:400])
    write(f"results: {suite.config.path(suite.config.report_dir) / RESULTS_FILE}")
    if state.report_path is not None:
        write(f"report: {state.report_path}")
    if state.report_error is not None:
        write(f"report: not written ({state.report_error})", red=True)
