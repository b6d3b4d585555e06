"""Batch scheduling: token-length buckets, out-of-memory halving, and per-row decided-early stopping."""

from __future__ import annotations

from typing import Any, Sequence

import pytest
import torch

from falserefusal.generation.backends import BackendOptions
from falserefusal.generation.backends.huggingface import DecidedRows, kv_bytes_per_token, pick_batch_size
from falserefusal.generation.generator import Generator
from falserefusal.generation.scheduling import is_out_of_memory, length_order, padding_fraction, run_batches
from falserefusal.run.config import RunConfig
from falserefusal.run.prepare import prepare
from falserefusal.types import Completion, FalseRefusalError, GenerationRequest, Message


def oom_above(limit: int, calls: list[list[int]]) -> Any:
    def generate(chunk: Sequence[int]) -> list[int]:
        calls.append(list(chunk))
        if len(chunk) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [10 * item for item in chunk]

    return generate


def test_length_order_groups_similar_lengths_and_cuts_padding() -> None:
    lengths = [90, 10, 88, 12, 50, 11, 91, 52]
    order = length_order(lengths)
    assert [lengths[i] for i in order] == sorted(lengths)
    assert padding_fraction(lengths, order, 2) < padding_fraction(lengths, list(range(len(lengths))), 2)
    assert length_order([5, 5, 5]) == [0, 1, 2]  # ties keep the sampler's order: runs are reproducible


def test_out_of_memory_halves_the_batch_and_retries_the_same_rows() -> None:
    calls: list[list[int]] = []
    released: list[bool] = []
    done: list[list[int]] = []
    results, size = run_batches(list(range(20)), 16, oom_above(5, calls), on_oom=lambda: released.append(True),
                                done=lambda chunk, _: done.append(list(chunk)))
    assert results == [10 * i for i in range(20)]  # every row once, in order
    assert size == 4
    assert calls[:3] == [list(range(16)), list(range(8)), list(range(4))]  # the failed rows come back first
    assert len(released) == 2
    assert [i for chunk in done for i in chunk] == list(range(20))


def test_out_of_memory_with_one_row_is_a_clear_error() -> None:
    with pytest.raises(FalseRefusalError, match="out of GPU memory with a single prompt"):
        run_batches([1, 2], 2, oom_above(0, []))


def test_other_errors_are_not_retried() -> None:
    def broken(chunk: Sequence[int]) -> list[int]:
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        run_batches([1, 2, 3], 2, broken)
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert not is_out_of_memory(ValueError("x"))


class CharTokenizer:
    """One token per character; id 0 is EOS."""

    eos_token_id = 0

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if i != 0)


def request(case_id: str) -> GenerationRequest:
    return GenerationRequest(case_id=case_id, messages=(Message("user", "q"),), factors={})


def test_decided_rows_stop_each_row_once_its_verdict_is_settled() -> None:
    answers = ["Yes. more", "No", "maybe so"]
    prompt = 3
    seen: list[str] = []

    def stop_when(text: str, req: GenerationRequest) -> bool:
        seen.append(text)
        return text.endswith(". ")

    criteria = DecidedRows(CharTokenizer(), [request(str(i)) for i in range(3)], prompt, stop_when)
    ids = torch.full((3, prompt), 7)
    stops = []
    for step in range(9):
        column = [ord(a[step]) if step < len(a) else 0 for a in answers]  # row 1 ends with EOS at step 2
        ids = torch.cat([ids, torch.tensor(column)[:, None]], dim=1)
        stops.append(criteria(ids, None).tolist())
    assert criteria.decided_at == [5, None, None]  # "Yes. " after 5 tokens
    assert stops[4] == [True, False, False] and stops[8] == [True, False, False]
    assert criteria.ended == [False, True, True]  # rows 1 and 2 ended with EOS (steps 2 and 8)
    assert "Yes. m" not in seen  # a decided row is not decoded again
    assert not any(text.startswith("No") and len(text) > 2 for text in seen)  # nor a row after its EOS


def test_decided_rows_drop_a_partial_utf8_character() -> None:
    class Bytes(CharTokenizer):
        def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
            return bytes(i for i in ids if i).decode("utf-8", errors="replace")

    seen: list[str] = []
    criteria = DecidedRows(Bytes(), [request("0")], 1, lambda text, _: seen.append(text) or False)
    ids = torch.tensor([[1]])
    for byte in "é".encode():
        ids = torch.cat([ids, torch.tensor([[byte]])], dim=1)
        criteria(ids, None)
    assert seen == ["", "é"]


def test_automatic_batch_size_fits_the_kv_cache_in_free_memory() -> None:
    class Llama8B:
        num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_size = 32, 32, 8, 4096
        intermediate_size, vocab_size, head_dim = 14336, 128256, 128

    per_token = kv_bytes_per_token(Llama8B, torch.bfloat16)
    assert per_token == 2 * 32 * 8 * 128 * 2  # 128 KiB per token
    small = pick_batch_size(8 * 2**30, per_token, 300, Llama8B)
    large = pick_batch_size(60 * 2**30, per_token, 300, Llama8B)
    assert 1 <= small < large <= 256
    assert large & (large - 1) == 0  # a power of two


class FakeBackend:
    """Answers "Label: <first label>. Then more text", one token per character; OOM above 4 rows."""

    name = "fake"
    model = "fake"

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.stopped_early = 0

    def identity(self) -> dict[str, Any]:
        return {}

    def prompt_lengths(self, requests: Sequence[GenerationRequest]) -> list[int]:
        return [len(r.case_id) for r in requests]

    def generate(self, requests: Sequence[GenerationRequest], max_new_tokens: int, stop_when: Any = None) -> list[Completion]:
        self.sizes.append(len(requests))
        if len(requests) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        out = []
        for r in requests:
            full = f"The answer is {r.factors['labels'].split('|')[0]}. Then more text follows here."[:max_new_tokens]
            for n in range(1, len(full) + 1):
                if stop_when is not None and stop_when(full[:n], r):
                    self.stopped_early += 1
                    out.append(Completion(full[:n].strip(), n, "decided"))
                    break
            else:
                out.append(Completion(full, len(full), "length"))
        return out

    def close(self) -> None:
        pass


def test_generator_stops_decided_rows_and_survives_out_of_memory() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    config = RunConfig(models=("fake",), backend_options=BackendOptions(batch_size=8), root=str(root), progress=False,
                       use_cache=False)
    suite = prepare(RunConfig(samples=1, tasks=("nli",), root=str(root), progress=False))
    from falserefusal.detection.detector import RefusalDetector

    generator = Generator(config)
    generator.detector = RefusalDetector(model=None)  # the rules alone stop a row at a settled verdict
    fake = FakeBackend()
    generator.backends["fake"] = fake
    cases = suite.cases_for("nli")
    records = generator.generate("fake", cases)
    assert [r.case.case_id for r in records] == [c.case_id for c in cases]
    assert fake.sizes[:2] == [8, 4] and generator.batch_sizes["fake"] == 4
    assert fake.stopped_early == len(cases)
    assert all(r.finish_reason == "decided" and r.parsed_label == r.case.labels[0] and not r.refused for r in records)
    assert all(r.response == f"The answer is {r.case.labels[0]}." for r in records)
    # with the learned layer (the default) the whole read window counts: these 50-character answers run to their end
    shipped = Generator(config)
    if shipped.detector.model is not None:
        shipped.backends["fake"] = full = FakeBackend()
        assert all(r.finish_reason == "length" for r in shipped.generate("fake", cases)) and full.stopped_early == 0
