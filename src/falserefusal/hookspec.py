"""The hooks falserefusal's pytest plugin calls, for a project's conftest.py (or a plugin) to extend the suite.

Implement them in a conftest.py at the project root (so that the xdist controller loads it too), e.g.:

    from falserefusal.gating.custom import AddedGate

    def pytest_falserefusal_add_gates(config, suite):
        return [AddedGate("forced-rate", lambda gate: gate.rate_at_most(0.10, forcing_level="forced"))]

    def pytest_falserefusal_backends(config):
        return {"echo": EchoBackend}            # --model echo:SPEC, or --backend echo

    def pytest_falserefusal_wrap_detector(config, detector):
        return LoggingDetector(detector)         # or None to keep it

Other packages can register backends and detectors through entry points instead (see falserefusal.registry).
Only pluggy is imported here: the hook specifications are plain functions marked for pytest's plugin manager.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from pluggy import HookspecMarker

hookspec = HookspecMarker("pytest")


@hookspec
def pytest_falserefusal_add_gates(config: Any, suite: Any) -> Sequence[Any] | None:
    """Custom gates declared in Python (a list of `falserefusal.gating.custom.AddedGate`), run like the built-in ones.

    Each gate becomes one item per (model, task) family of its tasks, `test_added_gate[NAME-TASK]` of the packaged
    suite (collect it: `pytest --pyargs falserefusal`, or the repository's tests/refusal), grouped with its family
    under xdist; its `check(gate)` gets a `falserefusal.gating.custom.CustomGate` and calls `gate.rate_at_most(...)` or
    `gate.disparity_at_most(...)`. It joins the alpha accounting as a custom family (`family`, `weight`, `checks`).
    `suite` is the resolved `falserefusal.run.prepare.Suite` (models, tasks, personas, profile).

        def pytest_falserefusal_add_gates(config, suite):
            return [AddedGate("baseline-nli", lambda gate: gate.rate_at_most(0.02, persona="baseline"), tasks=("nli",))]
    """


@hookspec
def pytest_falserefusal_backends(config: Any) -> Mapping[str, Callable[..., Any]] | None:
    """Backends to register, name -> factory(model: str, options: BackendOptions) -> Backend (see
    `falserefusal.generation.backends.Backend`: identity(), generate(requests, max_new_tokens, stop_when), close()).

    `--model NAME:SPEC` (or `--backend NAME` for models without a prefix) then uses it; the name is recorded as the
    records' backend and keys the generation cache.

        def pytest_falserefusal_backends(config):
            from mypkg import EchoBackend
            return {"echo": EchoBackend}
    """


@hookspec
def pytest_falserefusal_detectors(config: Any) -> Mapping[str, Callable[..., Any]] | None:
    """Refusal detectors to register, name -> factory(base: RefusalDetector) -> detector; `--detector NAME` picks one.

    A detector has `detect(text, labels) -> Verdict`, `is_decided(text, labels) -> bool` (True once more text cannot
    change the verdict: generation stops there) and a `version` string (recorded in every result; change it when
    verdicts change). The factory may wrap `base`, the rule detector built from --refusal-rules.

        def pytest_falserefusal_detectors(config):
            return {"strict": lambda base: StrictDetector(base)}
    """


@hookspec
def pytest_falserefusal_wrap_detector(config: Any, detector: Any) -> Any | None:
    """Wrap or replace the run's detector (after --detector); return the new detector, or None to keep it.

    Every implementation is applied in turn, each to the previous one's result, in pytest's hook call order.

        def pytest_falserefusal_wrap_detector(config, detector):
            return CountingDetector(detector)
    """
