"""Decided-early stopping on the real SmolLM2: stopped answers are prefixes of the full ones, verdicts unchanged."""

from __future__ import annotations

from pathlib import Path

from falserefusal.detection.detector import RefusalDetector
from falserefusal.generation.backends import BackendOptions
from falserefusal.generation.backends.huggingface import TransformersBackend
from falserefusal.generation.generator import request_for
from falserefusal.run.config import RunConfig
from falserefusal.run.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]


def test_early_stopped_outputs_are_prefixes_of_naive_outputs_with_the_same_verdicts() -> None:
    suite = prepare(RunConfig(samples=1, root=str(ROOT), progress=False))
    cases = [suite.cases_for(task)[i] for task in suite.task_ids for i in (0, 5)]  # 6 cases, every task
    requests = [request_for(case) for case in cases]
    labels = {case.case_id: case.labels for case in cases}
    detector = RefusalDetector()
    backend = TransformersBackend("", BackendOptions(device="cpu"))
    try:
        naive = backend.generate(requests, 40)
        stopped = backend.generate(requests, 40, lambda text, request: detector.is_decided(text, labels[request.case_id]))
    finally:
        backend.close()
    assert any(c.finish_reason == "decided" for c in stopped)
    assert sum(c.n_tokens for c in stopped) < sum(c.n_tokens for c in naive)
    for case, full, short in zip(cases, naive, stopped):
        assert full.text.startswith(short.text), (full.text, short.text)
        assert short.n_tokens <= full.n_tokens
        assert detector.detect(short.text, case.labels) == detector.detect(full.text, case.labels)
