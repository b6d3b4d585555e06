"""Batch scheduling: length buckets that cut padding, and batches that halve on out-of-memory instead of failing."""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

from falserefusal.types import FalseRefusalError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted by length (ties by index): neighbours in a batch need little left padding."""
    return sorted(range(len(lengths)), key=lambda i: (lengths[i], i))


def padding_fraction(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of prompt positions in the batches of `order` that are padding (0 = none)."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        chunk = [lengths[i] for i in order[start : start + batch_size]]
        padded += max(chunk) * len(chunk)
        real += sum(chunk)
    return 1 - real / padded if padded else 0.0


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA (or MPS) out-of-memory, recognised without importing torch (the scripted backend has none)."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def run_batches(
    items: Sequence[T],
    batch_size: int,
    generate: Callable[[Sequence[T]], Sequence[R]],
    on_oom: Callable[[], None] | None = None,
    done: Callable[[Sequence[T], Sequence[R]], None] | None = None,
) -> tuple[list[R], int]:
    """Call `generate` on consecutive batches of `items`; returns all results in order and the final batch size.

    On out-of-memory the same rows are retried at half the batch size (after `on_oom`, e.g. emptying the CUDA
    cache), and the smaller size is kept for the rest of the run: no row is lost or generated twice.
    """
    if batch_size < 1:
        raise FalseRefusalError(
            f"batch size {batch_size}: must be >= 1; fix: pass --batch-size 1 or more (0 = automatic)"
        )
    results: list[R] = []
    start = 0
    while start < len(items):
        chunk = items[start : start + batch_size]
        try:
            outputs = list(generate(chunk))
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if batch_size == 1:
                raise FalseRefusalError(
                    "generation: out of GPU memory with a single prompt; fix: a smaller --max-new-tokens, "
                    "another --dtype or a larger GPU"
                ) from None
            del error  # drop the traceback's references to the failed batch's tensors before retrying
            if on_oom is not None:
                on_oom()
            batch_size = max(1, batch_size // 2)
            log.warning("out of memory: batch size halved to %d; retrying the same rows", batch_size)
            continue
        if len(outputs) != len(chunk):
            raise FalseRefusalError(f"backend returned {len(outputs)} completions for {len(chunk)} requests")
        results.extend(outputs)
        if done is not None:
            done(chunk, outputs)
        start += len(chunk)
    return results, batch_size
