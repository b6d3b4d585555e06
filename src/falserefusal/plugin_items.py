"""The plugin's per-process state and items: the session's Run, options read from pytest, gates as parametrised
items, custom and hook-added gate items."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from falserefusal.gating.custom import (
    AddedGate,
    CustomAccounting,
    CustomDeclaration,
)
from falserefusal.gating.kind_table import GATE_KIND_TABLE
from falserefusal.gating.kinds import GateOutcome, GateSpec
from falserefusal.run.config import RunConfig
from falserefusal.run.options import OPTIONS, resolve
from falserefusal.run.pipeline import Run, RunResult
from falserefusal.run.prepare import Suite
from falserefusal.run.results import rerunnable_command
from falserefusal.types import FalseRefusalError, Record

#: parameter id of the one placeholder gate that a worker collects when the options are bad
USAGE_ERROR_ID = "falserefusal-usage-error"


#: gate fixture name -> gate kind; tests/refusal asks for these fixtures
GATE_FIXTURES = {kind.fixture: kind.name for kind in GATE_KIND_TABLE.values()}


#: id of the placeholder parameter of a gate test that has no gates in this run (deselected at collection)
NO_GATES = "no-gates-in-this-run"


#: gate kinds a profile turns on by a key (max_non_answer_rate): when off, their test is dropped, not deselected
OPTIONAL_GATE_KINDS = {kind.name: "gate-off-in-this-profile" for kind in GATE_KIND_TABLE.values() if kind.optional}


#: the marker that declares a custom gate test, and the fixture such a test asks for (gating.custom.CustomGate)
CUSTOM_MARKER = "falserefusal_custom_gate"


CUSTOM_FIXTURE = "falserefusal_custom_gate"


#: the packaged suite's parameter holding a gate of the pytest_falserefusal_add_gates hook (gating.custom.AddedGate)
ADDED_FIXTURE = "falserefusal_added_gate"


NO_ADDED_GATES = "no-added-gates"


class InconclusiveGateWarning(UserWarning):
    """A gate neither FAILed nor PASSed under a profile with `inconclusive: warn`: the item passes with this warning."""


@dataclass
class FalseRefusalSession:
    """Per-process state: this process's Run (falserefusal.run.pipeline), the custom gates, and the finished result."""

    config: pytest.Config
    run: Run | None = None
    error: FalseRefusalError | None = None  # bad options: a usage error once collection ends
    started: float = field(default_factory=time.perf_counter)
    result: RunResult | None = None  # the controller's finished run
    custom: CustomAccounting = field(default_factory=CustomAccounting)  # custom gate families, fixed at collection
    custom_outcomes: dict[GateSpec, GateOutcome] = field(default_factory=dict)

    @property
    def suite(self) -> Suite | None:
        return self.run.suite if self.run is not None else None

    def get_run(self) -> Run:
        if self.run is None and self.error is None:
            try:
                _register_extensions(self.config)
                self.run = Run(_run_config(self.config), progress_position=_worker_index(self.config))
            except FalseRefusalError as error:
                self.error = error
        if self.error is not None:
            raise self.error
        assert self.run is not None
        return self.run

    def get_suite(self) -> Suite:
        return self.get_run().suite

    def set_custom_weight(self) -> None:
        """The custom gate families' alpha weight, fixed from the collected items (every worker collects the same)."""
        if self.run is not None:
            self.run.suite = dataclasses.replace(self.run.suite, custom_weight=self.custom.weight)

    def outcome(self, spec: GateSpec) -> GateOutcome:
        """Generate the gate's (model, task) family once, in batches, with all its gates decided together."""
        with self._generating():
            return self.get_run().outcome(spec)

    def family_records(self, model: str, task: str) -> list[Record]:
        """The records of one (model, task) family (with the baseline model's answers to its cases), generated once."""
        with self._generating():
            return self.get_run().family_records(model, task)

    def _generating(self) -> Any:
        """The progress bar goes to the terminal, not into the current test's captured output."""
        capture = self.config.pluginmanager.getplugin("capturemanager")
        return capture.global_and_fixture_disabled() if capture and self.get_suite().config.progress else _nothing()


STASH = pytest.StashKey[FalseRefusalSession]()


def _register_extensions(config: pytest.Config) -> None:
    """Backends and detectors from the pytest_falserefusal_* hooks, and the detector wrapper that applies every
    pytest_falserefusal_wrap_detector in turn (falserefusal.registry; cleared at unconfigure)."""
    from falserefusal import registry

    registry.clear()
    for hook, register in (
        (config.hook.pytest_falserefusal_backends, registry.register_backend),
        (config.hook.pytest_falserefusal_detectors, registry.register_detector),
    ):
        for found in hook(config=config):
            for name, factory in (found or {}).items():
                register(name, factory)
    wrappers = list(reversed(config.hook.pytest_falserefusal_wrap_detector.get_hookimpls()))  # in call order
    if wrappers:

        def wrap(detector: Any) -> Any:
            for impl in wrappers:
                given = {"config": config, "detector": detector}
                result = impl.function(**{name: given[name] for name in impl.argnames})
                detector = detector if result is None else result
            return detector

        registry.add_detector_wrapper(wrap)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _worker_index(config: pytest.Config) -> int:
    """0 without xdist; N for worker gwN."""
    worker = getattr(config, "workerinput", {}).get("workerid", "gw0")
    return int(worker.removeprefix("gw") or 0)


def _run_config(config: pytest.Config) -> RunConfig:
    values = {}
    for option in OPTIONS:
        ini = config.getini(option.dest) if option.kind != "flag" else config.getini(option.dest)
        values[option.name] = resolve(option, config.getoption(option.dest), ini)
    if hasattr(config, "workerinput"):
        values["seed"] = int(config.workerinput.get("falserefusal_seed", values["seed"]))
    if values.get("cache-dir") is None:
        cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
        values["cache-dir"] = str(cache.mkdir("falserefusal")) if cache is not None else None
    # relative paths (fixtures, thresholds, report dir) resolve against the project's config file; pytest's
    # rootdir can move to an option's value (`--report-dir /tmp/out` is taken for a path argument)
    root = config.inipath.parent if config.inipath else config.invocation_params.dir
    return RunConfig.from_options(values, root=str(root))


def _option_value_taken_for_path(argv: Sequence[str]) -> str | None:
    """The first `--option VALUE` of ours whose VALUE is an existing path (what pytest's first pass misreads)."""
    values = {"--" + option.name for option in OPTIONS if option.kind != "flag"}
    for flag, value in zip(argv, argv[1:]):
        if flag in values and Path(value).expanduser().exists():
            return f"{flag} {value}"
    return None


def _family_group(suite: Suite, spec: GateSpec) -> str:
    """The xdist group of a gate: its (model, task) family, generated in one batch run on one worker."""
    label = suite.model_label(spec.model)
    return f"falserefusal-{label}-{spec.task}" if label else f"falserefusal-{spec.task}"


def _parametrize_custom_gate(metafunc: pytest.Metafunc) -> None:
    """One item per (model, task) family the marker's tasks select; its id is the family's refusal-rate gate id, so
    the scheduler runs it on the worker that generates that family."""
    marker = metafunc.definition.get_closest_marker(CUSTOM_MARKER)
    if marker is None:
        pytest.fail(
            f"{metafunc.definition.nodeid}: asks for the {CUSTOM_FIXTURE} fixture without "
            f"@pytest.mark.{CUSTOM_MARKER}(...); fix: add the marker",
            pytrace=False,
        )
    try:
        declaration = CustomDeclaration.of(marker.args, marker.kwargs, metafunc.function.__name__)
        suite = metafunc.config.stash[STASH].get_suite()
    except FalseRefusalError as error:
        if metafunc.config.stash[STASH].error is None:
            pytest.fail(f"{metafunc.definition.nodeid}: {error}", pytrace=False)
        metafunc.parametrize(CUSTOM_FIXTURE, [pytest.param(None, id=USAGE_ERROR_ID)], indirect=True)
        return
    firsts = {spec.family: spec for spec in reversed(suite.gates)}  # each family's first gate: its refusal rate
    params = [
        pytest.param(
            family,
            id=spec.gate_id(suite.model_label(spec.model)),
            marks=[pytest.mark.xdist_group(_family_group(suite, spec)), pytest.mark.falserefusal_gate],
        )
        for family, spec in reversed(firsts.items())
        if declaration.tasks is None or family[1] in declaration.tasks
    ]
    metafunc.parametrize(CUSTOM_FIXTURE, params or [pytest.param(None, id=NO_GATES)], indirect=True)


def _parametrize_added_gates(metafunc: pytest.Metafunc) -> None:
    """The gates of the pytest_falserefusal_add_gates hook: one item per gate and (model, task) family, marked as
    a custom gate with the gate's declaration."""
    state = metafunc.config.stash[STASH]
    try:
        suite = state.get_suite()
    except FalseRefusalError:
        metafunc.parametrize(
            (ADDED_FIXTURE, CUSTOM_FIXTURE), [pytest.param(None, None, id=USAGE_ERROR_ID)], indirect=[CUSTOM_FIXTURE]
        )
        return
    gates = [
        gate
        for found in metafunc.config.hook.pytest_falserefusal_add_gates(config=metafunc.config, suite=suite)
        for gate in (found or [])
    ]
    names = [gate.name for gate in gates]
    if len(set(names)) != len(names) or not all(isinstance(gate, AddedGate) for gate in gates):
        raise pytest.UsageError(
            f"pytest_falserefusal_add_gates: gates must be falserefusal.gating.custom.AddedGate with "
            f"distinct names; got {', '.join(map(repr, names))}"
        )
    firsts = {spec.family: spec for spec in reversed(suite.gates)}  # each family's first gate: its refusal rate
    params = [
        pytest.param(
            gate,
            family,
            id=f"{gate.name}-{spec.gate_id(suite.model_label(spec.model))}",
            marks=[
                pytest.mark.xdist_group(_family_group(suite, spec)),
                pytest.mark.falserefusal_gate,
                getattr(pytest.mark, CUSTOM_MARKER)(**gate.marker_kwargs()),
            ],
        )
        for gate in gates
        for family, spec in reversed(firsts.items())
        if gate.tasks is None or family[1] in gate.tasks
    ]
    metafunc.parametrize(
        (ADDED_FIXTURE, CUSTOM_FIXTURE),
        params or [pytest.param(None, None, id=NO_ADDED_GATES)],
        indirect=[CUSTOM_FIXTURE],
    )


def _declaration(item: pytest.Item) -> CustomDeclaration:
    marker = item.get_closest_marker(CUSTOM_MARKER)
    assert marker is not None
    return CustomDeclaration.of(marker.args, marker.kwargs, getattr(item, "originalname", item.name))


def _pytest_command(config: pytest.Config) -> str:
    """This session as a command to type again: `pytest` (or `python -m pytest`) and the arguments pytest got."""
    launcher = rerunnable_command(sys.argv[:1])
    if "pytest" not in launcher:  # pytest.main() called from a script or another runner
        launcher = "pytest"
    return rerunnable_command(["", *config.invocation_params.args], prefix=launcher)
