"""The pytest plugin: maps options, gate items, xdist workers and session hooks onto falserefusal's Run."""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import pytest

from falserefusal.gating.custom import (
    CustomAccounting,
    CustomGate,
    Results,
    outcome_from_dict,
)
from falserefusal.gating.kinds import GateOutcome, GateSpec
from falserefusal.generation.gpus import pin_worker_gpu, share_cpu_threads
from falserefusal.plugin_items import (
    ADDED_FIXTURE,
    CUSTOM_FIXTURE,
    CUSTOM_MARKER,
    GATE_FIXTURES,
    NO_ADDED_GATES,
    NO_GATES,
    OPTIONAL_GATE_KINDS,
    STASH,
    USAGE_ERROR_ID,
    FalseRefusalSession,
    InconclusiveGateWarning,
    _declaration,
    _family_group,
    _option_value_taken_for_path,
    _parametrize_added_gates,
    _parametrize_custom_gate,
    _pytest_command,
    _run_config,
    _worker_index,
)
from falserefusal.run.options import OPTIONS, add_options, resolve
from falserefusal.run.summary import summary_lines
from falserefusal.types import FalseRefusalError, Record


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from falserefusal import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_unconfigure(config: pytest.Config) -> None:
    from falserefusal import registry

    registry.clear()  # hook registrations belong to this session (pytester runs several in one process)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("falserefusal", "falserefusal: persona false-refusal gates")
    add_options(group.addoption)
    for option in OPTIONS:
        kind: Literal["bool", "args", "string"] = (
            "bool" if option.kind == "flag" else ("args" if option.kind == "list" else "string")
        )
        parser.addini(option.dest, f"default for --{option.name}", type=kind, default=None)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Find rootdir and the config file again now that falserefusal's options are known.

    pytest determines them from the command line before any plugin is loaded, so in `--report-dir /tmp/out` it
    takes `/tmp/out` for a test path once that folder exists: rootdir moves there, and pyproject's testpaths,
    addopts and falserefusal_* settings are silently dropped (a failing suite then passes on its second run).
    Here the setup is determined again from the real test paths; when it differs, the right config file's
    settings and addopts are put in place before conftests are collected, so both spellings behave alike."""
    from _pytest.config.findpaths import determine_setup

    ns = early_config.known_args_namespace
    where = {
        "inifile": ns.inifilename,
        "args": ns.file_or_dir,
        "rootdir_cmd_arg": ns.rootdir or None,
        "invocation_dir": early_config.invocation_params.dir,
    }
    try:
        setup = determine_setup(override_ini=ns.override_ini, **where)
    except TypeError:  # pytest 8 has no override_ini here
        setup = determine_setup(**where)
    rootpath, inipath, inicfg = setup[0], setup[1], setup[2]
    if (rootpath, inipath) == (early_config.rootpath, early_config.inipath):
        return
    taken = _option_value_taken_for_path(early_config.invocation_params.args)
    wrong_ini = early_config.inipath
    private = ("_rootpath", "_inipath", "_inicfg", "_inicache")
    if wrong_ini is not None or not all(hasattr(early_config, a) for a in private):
        # settings of another config file were already applied (or this pytest keeps them elsewhere): refuse
        raise pytest.UsageError(
            f"{taken or 'an option value'}: pytest read it as a test path before falserefusal's options were known, "
            f"so it took {wrong_ini or early_config.rootpath} for the project instead of {inipath or rootpath}; "
            f"fix: write the option with '=', e.g. {(taken or '--report-dir DIR').replace(' ', '=', 1)}"
        )
    early_config._rootpath, early_config._inipath, early_config._inicfg = rootpath, inipath, inicfg
    if len(setup) > 3:
        early_config._ignored_config_files = setup[3]
    early_config._inicache.clear()
    parser.extra_info.update(rootdir=str(rootpath), inifile=str(inipath))
    addopts = list(early_config.getini("addopts"))
    if addopts:
        args[:0] = addopts
        early_config.pluginmanager.consider_preparse(addopts, exclude_only=False)
    early_config.known_args_namespace = parser.parse_known_args(args, namespace=copy.copy(early_config.option))
    if early_config.known_args_namespace.confcutdir is None:
        early_config.known_args_namespace.confcutdir = str(inipath.parent if inipath else rootpath)


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config) -> Iterator[Any]:
    """With -n and no --dist, distribute by xdist_group: each (model, task) family is generated on one worker.

    A wrapper, so it runs before xdist's own (tryfirst) hook, which would pick --dist load and split families.
    """
    option = config.option
    if (
        getattr(option, "numprocesses", None)
        and getattr(option, "dist", None) == "no"
        and not getattr(option, "distload", False)
    ):
        option.dist = "loadgroup"
    return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "falserefusal_gate: a falserefusal release gate (one per gate)")
    config.addinivalue_line(
        "markers",
        f"{CUSTOM_MARKER}(tasks=None, family=None, weight=1, checks=1): a custom gate "
        f"test (asks for the {CUSTOM_MARKER} fixture); one item per (model, task) family, joining the "
        "run's alpha accounting",
    )
    config.stash[STASH] = FalseRefusalSession(config)
    if hasattr(config, "workerinput"):  # before anything loads torch: one GPU per worker on a multi-GPU machine
        device = resolve(
            _option("device"), config.getoption(_option("device").dest), config.getini(_option("device").dest)
        )
        pin_worker_gpu(device, _worker_index(config))
        share_cpu_threads(int(config.workerinput.get("workercount", 1)))
        return
    if getattr(config.option, "numprocesses", None):
        try:  # the xdist controller reads the options again for every worker (pytest_configure_node), where a
            _run_config(config)  # bad --seed or --samples would be an INTERNALERROR: a usage error here instead
        except FalseRefusalError as error:
            raise pytest.UsageError(str(error)) from None
    if getattr(config.option, "dist", "no") in ("load", "worksteal", "each"):
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"falserefusal: --dist {config.option.dist} splits a (model, task) family across workers, which then "
                "generate it more than once; use --dist loadgroup (the default falserefusal picks with -n)"
            ),
            stacklevel=2,
        )


def _option(name: str) -> Any:
    return next(option for option in OPTIONS if option.name == name)


def pytest_configure_node(node: Any) -> None:
    """xdist controller -> worker: every worker draws cases from the controller's seed."""
    session = node.config.stash[STASH]
    node.workerinput["falserefusal_seed"] = _run_config(session.config).seed


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadgroup that really groups: xdist 3.8 tags a worker's items with their group by rewriting
    `item._nodeid`, which pytest 9 no longer reads, so every gate became its own group and several workers
    generated the same family. This scheduler finds a gate's family from its parameter id instead."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    groups: dict[str, str] = {}
    try:
        suite = config.stash[STASH].get_suite()
        groups = {spec.gate_id(suite.model_label(spec.model)): _family_group(suite, spec) for spec in suite.gates}
    except FalseRefusalError:
        pass  # reported by the workers' collection as a usage error

    class FamilyScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            if scope == nodeid and nodeid.endswith("]") and "[" in nodeid:
                parts = nodeid[nodeid.rfind("[") + 1 : -1].split("-")
                # a gate id, or one that ends with its family's (added gates: NAME-TASK, custom gates with more params)
                found = (groups.get("-".join(parts[i:])) for i in range(len(parts)))
                return next((group for group in found if group), nodeid)
            return scope

    return FamilyScheduling(config, log)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture, kind in GATE_FIXTURES.items():
        if fixture not in metafunc.fixturenames:
            continue
        session = metafunc.config.stash[STASH]
        try:
            suite = session.get_suite()
        except FalseRefusalError:
            # reported as a usage error once collection ends (by the xdist controller when this is a worker)
            metafunc.parametrize(fixture, [pytest.param(None, id=USAGE_ERROR_ID)])
            continue
        params = [
            pytest.param(
                spec,
                id=spec.gate_id(suite.model_label(spec.model)),
                marks=[pytest.mark.xdist_group(_family_group(suite, spec)), pytest.mark.falserefusal_gate],
            )
            for spec in suite.gates
            if spec.kind == kind
        ]
        # e.g. non-inferiority gates without a baseline model: one placeholder, deselected in collection (an optional
        # kind's placeholder is dropped instead)
        metafunc.parametrize(fixture, params or [pytest.param(None, id=OPTIONAL_GATE_KINDS.get(kind, NO_GATES))])
    if ADDED_FIXTURE in metafunc.fixturenames:
        _parametrize_added_gates(metafunc)
    elif CUSTOM_FIXTURE in metafunc.fixturenames:
        _parametrize_custom_gate(metafunc)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fix the custom gate families (alpha weights and gate counts) from the collected items, as every worker does."""
    state = session.config.stash[STASH]
    if state.suite is None:
        return
    items = [item for item in session.items if CUSTOM_FIXTURE in getattr(getattr(item, "callspec", None), "params", {})]
    try:
        state.custom = CustomAccounting.of(_declaration(item) for item in items)
    except FalseRefusalError as error:
        raise pytest.UsageError(str(error)) from None
    state.set_custom_weight()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = config.stash[STASH]
    if session.error is not None and not hasattr(config, "workerinput"):
        raise pytest.UsageError(str(session.error))
    # the packaged test of hook-added gates when no conftest adds any, and that of a gate kind the profile leaves off:
    # not a gate, so not counted as deselected
    dropped = (NO_ADDED_GATES, *OPTIONAL_GATE_KINDS.values())
    items[:] = [
        item
        for item in items
        if not any(mark in getattr(getattr(item, "callspec", None), "id", "") for mark in dropped)
    ]
    unused = [item for item in items if NO_GATES in getattr(getattr(item, "callspec", None), "id", "")]
    if unused:
        items[:] = [item for item in items if item not in unused]
        config.hook.pytest_deselected(items=unused)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """xdist controller: a worker's bad options end the run as a usage error (raised on the worker, it crashes)."""
    if any(nodeid.endswith(f"[{USAGE_ERROR_ID}]") for nodeid in ids):
        state = node.config.stash[STASH]
        try:
            state.get_suite()
        except FalseRefusalError as error:
            raise pytest.UsageError(str(error)) from None
        raise pytest.UsageError(
            f"falserefusal: worker {node.gateway.id} rejected the options; fix: run with -n 0 to see why"
        )


@pytest.fixture
def falserefusal_gate(request: pytest.FixtureRequest) -> Any:
    """Call with a GateSpec: runs (or reuses) its family's generation; the test fails on FAIL, and on INCONCLUSIVE
    under the profile's `inconclusive: fail` (under `warn` it passes with an InconclusiveGateWarning)."""
    session = request.config.stash[STASH]

    def check(spec: GateSpec) -> GateOutcome:
        broken: str | None
        try:
            outcome = session.outcome(spec)
        except FalseRefusalError as error:
            broken = str(error)
        else:
            broken = None
        if broken is not None:
            _stop(request, broken)
        _decide(request, session, outcome)
        return outcome

    return check


def _stop(request: pytest.FixtureRequest, broken: str) -> None:
    """The model broke off mid-run (a server went away, memory ran out at batch size 1): no gate's verdict, so the
    session stops after this item and exits 2 (interrupted), as `falserefusal run` does."""
    request.session.shouldstop = broken
    pytest.fail(broken, pytrace=False)


def _decide(request: pytest.FixtureRequest, session: FalseRefusalSession, outcome: GateOutcome) -> None:
    """Record a gate's outcome on its item (JUnit properties); fail the item on FAIL, and on INCONCLUSIVE under the
    profile's `inconclusive: fail` (under `warn` it passes with an InconclusiveGateWarning)."""
    request.node.user_properties.append(("falserefusal", json.dumps(outcome.to_dict(), default=str)))
    request.node.user_properties.append(("falserefusal_verdict", outcome.verdict))  # a JUnit property
    if outcome.verdict == "FAIL":
        pytest.fail(outcome.message, pytrace=False)
    if outcome.verdict == "INCONCLUSIVE":
        policy = session.get_suite().profile.inconclusive
        if policy == "fail":
            pytest.fail(outcome.message, pytrace=False)  # the message starts with INCONCLUSIVE
        if policy == "warn":
            warnings.warn(InconclusiveGateWarning(outcome.message), stacklevel=3)


def _results(request: pytest.FixtureRequest) -> Results:
    """The run's records, generated lazily per (model, task) family through the session."""
    state = request.config.stash[STASH]
    suite = state.get_suite()

    def fetch(model: str, task: str) -> Sequence[Record]:
        try:
            return state.family_records(model, task)
        except FalseRefusalError as error:
            _stop(request, str(error))
            raise

    return Results(fetch, [(model, task) for model in suite.models for task in suite.task_ids])


@pytest.fixture(scope="session")
def falserefusal_results(request: pytest.FixtureRequest) -> Results:
    """The run's records as a pandas DataFrame (`.frame`, or `.for_(task="nli", persona="baseline")` for a subset),
    with the suite's statistics (`.rate(**factors)`, `.disparity(persona, reference="baseline", **factors)`). A
    subset generates only the (model, task) families it names; for a gate that joins the run's accounting, use the
    falserefusal_custom_gate marker and fixture."""
    return _results(request)


@pytest.fixture
def falserefusal_custom_gate(request: pytest.FixtureRequest) -> CustomGate:
    """A custom gate of one (model, task) family, for a test marked @pytest.mark.falserefusal_custom_gate: its
    `results` (that family's records) and checks `rate_at_most(limit, **factors)` and `disparity_at_most(limit,
    persona, reference="baseline", **factors)`, decided at the family's share of alpha and reported like a built-in
    gate (terminal, JUnit, HTML report)."""
    state = request.config.stash[STASH]
    suite = state.get_suite()
    model, task = request.param
    declaration = _declaration(request.node)
    family = state.custom.family(declaration.family)
    alpha = state.custom.alpha(family.name, suite.profile.alpha, suite.n_families)

    def report(outcome: GateOutcome) -> None:
        state.custom_outcomes[outcome.spec] = outcome
        _decide(request, state, outcome)

    return CustomGate(
        request.node.name,
        family,
        alpha,
        model,
        task,
        _results(request).scoped(model, task),
        report,
        declaration.checks,
        alpha_pass=suite.profile.alpha,
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash[STASH]
    if state.run is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand its families to the controller, the only writer of results
        run = state.run
        run.close()
        workeroutput["falserefusal"] = json.dumps(
            {
                "records": [r.to_dict() for r in run.records],
                "outcomes": [o.to_dict() for o in run.outcomes.values()],
                "identities": run.identities,
                "timings": run.timings,
                "cache": run.cache,
                "custom": state.custom.to_dict(),
                "custom_outcomes": [o.to_dict() for o in state.custom_outcomes.values()],
            },
            default=str,
        )
        return
    if state.run.records:
        _finish_controller(state, _pytest_command(session.config))


def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: pool a worker's families (records and the gates it decided)."""
    payload = getattr(node, "workeroutput", {}).get("falserefusal")
    if not payload:
        return
    state = node.config.stash[STASH]
    data = json.loads(payload)
    state.custom_outcomes.update({o.spec: o for o in map(outcome_from_dict, data.get("custom_outcomes", []))})
    state.custom = CustomAccounting.from_dict(data.get("custom"))  # every worker collected the same items
    try:
        run = state.get_run()
    except FalseRefusalError:
        return
    state.set_custom_weight()
    run.absorb(
        [Record.from_dict(r) for r in data["records"]],
        [outcome_from_dict(o) for o in data.get("outcomes", [])],
        data["identities"],
        data["timings"],
        data.get("cache") or {},
    )


def _finish_controller(state: FalseRefusalSession, command: str) -> None:
    """Pooled results on the controller: results.jsonl and the report (the gates were decided per family)."""
    run = state.run
    assert run is not None
    run.close()
    run.timings["wall_s"] = time.perf_counter() - state.started
    custom = sorted(
        state.custom_outcomes.values(), key=lambda o: (o.spec.kind, o.spec.model, o.spec.task, o.spec.persona or "")
    )
    extra: dict[str, Any] = {"command": command}
    if state.custom.families:  # so that `falserefusal report` rebuilds the same verdicts
        extra["custom_gates"] = {"accounting": state.custom.to_dict(), "outcomes": [o.to_dict() for o in custom]}
    run.outcomes.update({o.spec: o for o in custom})
    state.result = run.finish(extra, report=True)


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(
    prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
) -> None:
    """pytest-html (--html): the verdict and the heatmap in its summary, with a link to the full report."""
    result = session.config.stash[STASH].result
    if result is None:
        return
    from falserefusal.report import summary_html

    href = None
    html_path = getattr(session.config.option, "htmlpath", None)
    if result.report_path is not None and html_path:
        html_dir = Path(html_path).expanduser().resolve().parent
        href = Path(os.path.relpath(result.report_path.resolve(), html_dir)).as_posix()
    prefix.append(summary_html(result.metadata, result.records, result.outcomes, href))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    result = config.stash[STASH].result
    if result is None:
        return
    terminalreporter.section("falserefusal: refusal rate per persona x task")
    for line, style in summary_lines(result, message_chars=400):
        terminalreporter.write_line(line, **({style: True} if style else {}))
