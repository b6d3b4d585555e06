"""The generation cache: exact keys, one transaction per batch, resume without recomputing, and bad files refused."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any, Sequence

import pytest

from falserefusal.generation.backends import BackendOptions
from falserefusal.generation.cache import CACHE_FILE, CacheKey, GenerationCache
from falserefusal.generation.generator import Generator
from falserefusal.generation.gpus import pin_worker_gpu, share_cpu_threads, visible_gpus, worker_gpu
from falserefusal.run.config import RunConfig
from falserefusal.run.prepare import prepare
from falserefusal.run.project import DEFAULT_FIXTURES, DEFAULT_THRESHOLDS
from falserefusal.run.summary import cache_summary
from falserefusal.types import Completion, FalseRefusalError, GenerationRequest, Message

IDENTITY = {"backend": "transformers", "model": "m", "commit": "abc", "chat_template_sha256": "t1", "dtype": "float32"}
DECODING = {"max_new_tokens": 32, "stop": None}


def request(case_id: str = "nli-b00000-baseline", content: str = "Is it polite?") -> GenerationRequest:
    return GenerationRequest(case_id=case_id, messages=(Message("user", content),), factors={"task": "nli"})


def key(identity: dict[str, Any] = IDENTITY, req: GenerationRequest | None = None, decoding: dict[str, Any] = DECODING) -> CacheKey:
    return CacheKey.of("transformers", "m", identity, req or request(), decoding)


def test_a_stored_generation_comes_back_after_reopening(tmp_path: Path) -> None:
    cache = GenerationCache(tmp_path)
    cache.put("transformers", "m", IDENTITY, [(key(), Completion("It is polite.", 4, "stop"))])
    cache.close()
    again = GenerationCache(tmp_path)
    assert again.get([key()]) == {key().key: Completion("It is polite.", 4, "stop")}
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    "other",
    [
        key(identity={**IDENTITY, "commit": "def"}),
        key(identity={**IDENTITY, "chat_template_sha256": "t2"}),
        key(identity={**IDENTITY, "dtype": "bfloat16"}),
        key(req=request(content="Is it rude?")),
        key(req=request(case_id="nli-b00001-baseline")),
        key(decoding={**DECODING, "max_new_tokens": 64}),
        key(decoding={**DECODING, "stop": {"policy": "decided", "detector": "2026.11-1"}}),
    ],
    ids=["revision", "chat-template", "dtype", "messages", "case", "max-new-tokens", "stop-policy"],
)
def test_anything_that_changes_the_answer_changes_the_key(tmp_path: Path, other: CacheKey) -> None:
    cache = GenerationCache(tmp_path)
    cache.put("transformers", "m", IDENTITY, [(key(), Completion("It is polite.", 4, "stop"))])
    assert other.key != key().key
    assert cache.get([other]) == {}


def test_rescore_keys_ignore_the_identity_and_stop_policy_but_not_the_request() -> None:
    stopped = key(identity={**IDENTITY, "dtype": "bfloat16"}, decoding={**DECODING, "stop": "decided"})
    assert stopped.request_key == key().request_key and stopped.variant != key().variant
    assert key(req=request(content="Is it rude?")).request_key != key().request_key
    assert key(decoding={**DECODING, "max_new_tokens": 64}).request_key != key().request_key


def test_rescore_reads_the_variant_that_holds_every_request(tmp_path: Path) -> None:
    cache = GenerationCache(tmp_path)
    requests = [request(f"nli-b0000{i}-baseline") for i in range(3)]
    full = [key(req=r) for r in requests]
    partial = key(identity={**IDENTITY, "dtype": "bfloat16"}, req=requests[0])
    cache.put("transformers", "m", IDENTITY, [(k, Completion(f"fp32 {i}", 2, "stop")) for i, k in enumerate(full)])
    cache.put("transformers", "m", {**IDENTITY, "dtype": "bfloat16"}, [(partial, Completion("bf16", 1, "stop"))])
    found, missing = cache.get_for_rescore("transformers", "m", full)
    assert missing == 0 and [found[k.request_key].completion.text for k in full] == ["fp32 0", "fp32 1", "fp32 2"]
    assert found[full[0].request_key].identity["dtype"] == "float32"
    _, missing = cache.get_for_rescore("transformers", "m", [*full, key(req=request("nli-b00009-baseline"))])
    assert missing == 1
    assert cache.get_for_rescore("transformers", "other-model", full) == ({}, 3)


def test_a_file_that_is_not_sqlite_is_refused_with_its_name_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE).write_bytes(b"this is not a database, just some text that is long enough" * 20)
    with pytest.raises(FalseRefusalError, match=rf"{tmp_path / CACHE_FILE}: not a usable falserefusal generation cache.*fix: delete"):
        GenerationCache(tmp_path)


def _execute(folder: Path, statement: str) -> None:
    """Change the cache file behind falserefusal's back, as another program would."""
    with sqlite3.connect(folder / CACHE_FILE) as db:
        db.execute(statement)
    db.close()


def test_another_programs_sqlite_database_is_refused(tmp_path: Path) -> None:
    _execute(tmp_path, "CREATE TABLE generations (key TEXT, text TEXT)")
    with pytest.raises(FalseRefusalError, match="another program"):
        GenerationCache(tmp_path)
    assert sqlite3.connect(tmp_path / CACHE_FILE).execute("SELECT COUNT(*) FROM generations").fetchone() == (0,)


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    GenerationCache(tmp_path).close()
    _execute(tmp_path, "UPDATE schema SET version = 99")
    with pytest.raises(FalseRefusalError, match="schema version 99"):
        GenerationCache(tmp_path)


def test_a_damaged_row_is_an_error_not_a_wrong_answer(tmp_path: Path) -> None:
    cache = GenerationCache(tmp_path)
    cache.put("transformers", "m", IDENTITY, [(key(), Completion("It is polite.", 4, "stop"))])
    cache.db.execute("UPDATE generations SET text = 'I cannot help with that.'")
    with pytest.raises(FalseRefusalError, match="fails its checksum"):
        cache.get([key()])


def _write_rows(folder: str, worker: int) -> None:
    cache = GenerationCache(folder)
    for batch in range(5):
        entries = [(key(req=request(f"nli-b{batch:05d}-w{worker}-{i}")), Completion(f"{worker}/{batch}/{i}", 1, "stop")) for i in range(20)]
        cache.put("transformers", "m", IDENTITY, entries)
    cache.close()


def test_two_processes_can_fill_one_cache_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_rows, args=(str(tmp_path), w)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert GenerationCache(tmp_path).count() == 2 * 5 * 20


# ----- the cache inside the generator -----------------------------------------------------------------------------


class CountingBackend:
    """The scripted model, counting the requests it is asked to answer."""

    def __init__(self, model: str) -> None:
        from falserefusal.generation.backends.scripted import ScriptedBackend

        self.inner = ScriptedBackend(model)
        self.name, self.model = self.inner.name, model
        self.asked: list[str] = []

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def generate(self, requests: Sequence[GenerationRequest], max_new_tokens: int, stop_when: Any = None) -> list[Completion]:
        self.asked.extend(r.case_id for r in requests)
        return self.inner.generate(requests, max_new_tokens)

    def close(self) -> None:
        pass


MODEL = "scripted:base=0.2,persona.muslim=0.3"


def config_for(tmp_path: Path, **changes: Any) -> RunConfig:
    values = dict(models=(MODEL,), samples=5, tasks=("nli",), progress=False, fixtures=str(DEFAULT_FIXTURES),
                  thresholds=str(DEFAULT_THRESHOLDS), cache_dir=str(tmp_path / "cache"), root=str(tmp_path))
    return RunConfig(**{**values, **changes})


def generate(config: RunConfig, cases: Sequence[Any]) -> tuple[list[Any], CountingBackend, dict[str, int]]:
    generator = Generator(config)
    backend = CountingBackend(MODEL)
    generator.backends[MODEL] = backend
    try:
        return generator.generate(MODEL, cases), backend, dict(generator.cache_counts)
    finally:
        generator.close()


def test_a_rerun_asks_the_model_only_for_the_missing_cases(tmp_path: Path) -> None:
    config = config_for(tmp_path, backend_options=BackendOptions(batch_size=8))
    cases = list(prepare(config).cases)
    first, _, _ = generate(config, cases[:30])  # as if killed after some batches of a smaller run
    records, backend, counts = generate(config, cases)
    assert sorted(backend.asked) == sorted(c.case_id for c in cases[30:])
    assert counts == {"hits": 30, "generated": len(cases) - 30}
    assert [r.cached for r in records] == [True] * 30 + [False] * (len(cases) - 30)
    fresh, _, _ = generate(config_for(tmp_path, use_cache=False), cases)
    assert [r.to_dict() | {"cached": False} for r in records] == [r.to_dict() for r in fresh]
    again, backend, counts = generate(config, cases)
    assert backend.asked == [] and all(r.cached for r in again) and counts["generated"] == 0


class CutBackend(CountingBackend):
    """Stops every answer after its first word, as if an earlier detector had judged it decided there."""

    def generate(self, requests: Sequence[GenerationRequest], max_new_tokens: int, stop_when: Any = None) -> list[Completion]:
        return [Completion(c.text.split()[0], 1, "decided") for c in super().generate(requests, max_new_tokens)]


def test_rescore_counts_answers_an_earlier_detector_cut_short_that_this_one_has_not_decided(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    cases = list(prepare(config).cases)
    generator = Generator(config)
    generator.backends[MODEL] = CutBackend(MODEL)
    generator.generate(MODEL, cases)  # "The" / "I'm": cut after one word
    generator.close()
    rescore = Generator(config_for(tmp_path, rescore=True))
    records = rescore.generate(MODEL, cases)
    summary = cache_summary(rescore.cache_stats())
    rescore.close()
    assert {r.response for r in records} == {"The", "I'm"}
    assert rescore.cache_counts == {"hits": len(cases), "generated": 0, "undecided": len(cases)}
    assert "80 of them were cut short when an earlier detector had decided" in summary


def test_no_cache_neither_reads_nor_writes(tmp_path: Path) -> None:
    config = config_for(tmp_path, use_cache=False)
    cases = list(prepare(config).cases)
    generate(config, cases)
    _, backend, _ = generate(config, cases)
    assert len(backend.asked) == len(cases)
    assert not (tmp_path / "cache").exists()


def test_rescore_needs_the_cache_and_every_generation(tmp_path: Path) -> None:
    with pytest.raises(FalseRefusalError, match="--rescore.*--no-cache"):
        prepare(config_for(tmp_path, rescore=True, use_cache=False))
    cases = list(prepare(config_for(tmp_path)).cases)
    generate(config_for(tmp_path), cases[:-3])
    with pytest.raises(FalseRefusalError, match=r"--rescore: 3 of 80 generations of .*nli are not in the cache .*nli-b00004"):
        prepare(config_for(tmp_path, rescore=True))


def test_scripted_delay_is_parsed() -> None:
    from falserefusal.generation.backends.scripted import ScriptedSpec

    assert ScriptedSpec.parse("scripted:base=0.1,delay=0.25").delay == 0.25


# ----- one GPU per xdist worker -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "worker", "visible", "expected"),
    [
        ("auto", 0, ["0", "1"], "0"),
        ("auto", 1, ["0", "1"], "1"),
        ("cuda", 3, ["0", "1", "2"], "0"),  # more workers than GPUs: round robin
        ("auto", 1, ["4", "7"], "7"),  # the GPUs the user made visible, in their order
        ("auto", 1, ["0"], None),  # one GPU: nothing to spread
        ("auto", 1, [], None),  # CPU machine
        ("cuda:1", 0, ["0", "1"], None),  # the user's own choice
        ("cpu", 0, ["0", "1"], None),
    ],
)
def test_worker_gpu_mapping(device: str, worker: int, visible: list[str], expected: str | None) -> None:
    assert worker_gpu(device, worker, visible) == expected


def test_pinning_sets_cuda_visible_devices_from_the_visible_list() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert visible_gpus(environ) == ["2", "3"]
    assert pin_worker_gpu("auto", 1, environ) == "3" and environ["CUDA_VISIBLE_DEVICES"] == "3"
    environ = {"CUDA_VISIBLE_DEVICES": "5"}
    assert pin_worker_gpu("auto", 1, environ) is None and environ == {"CUDA_VISIBLE_DEVICES": "5"}


def test_workers_share_the_cpu_threads_unless_the_user_chose() -> None:
    environ: dict[str, str] = {}
    assert share_cpu_threads(2, environ, cpus=16) == 8 and environ == {"OMP_NUM_THREADS": "8"}
    assert share_cpu_threads(4, {}, cpus=2) == 1
    assert share_cpu_threads(1, {}, cpus=2) is None
    assert share_cpu_threads(2, {"OMP_NUM_THREADS": "3"}, cpus=16) is None
