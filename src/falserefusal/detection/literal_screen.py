"""Exact screening of regex searches: the literal text that every match of a pattern must contain.

Python's `re` has no fast scan for case-insensitive patterns that open with `\\b` or a group, so it tries
each pattern at every position of every sentence; that was most of the refusal detector's time.
`required_literals` reads a pattern's parse tree once and gives lower-case ASCII strings of which any text
the pattern matches holds at least one (None when it cannot tell). `LiteralScreen` finds them for a whole rule
set at once, per word of the text (split where no literal has a character; each word worked out once and
remembered), far cheaper than the searches. It is a necessary condition only: a screened-out search is one
that could not match, so no match is lost or changed.

Only ASCII text is screened: there an ASCII pattern letter matches just its two cases, whereas Unicode
case-insensitive matching also pairs e.g. "k" with the Kelvin sign.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

try:  # Python 3.11+ (typeshed has no stubs for the private re._constants / re._parser)
    from re import _constants as _sre  # type: ignore[attr-defined]
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # Python 3.10
    import sre_constants as _sre
    import sre_parse as _sre_parse

_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT} | (
    {_sre.POSSESSIVE_REPEAT} if hasattr(_sre, "POSSESSIVE_REPEAT") else set()
)
_ATOMIC = getattr(_sre, "ATOMIC_GROUP", None)
_MAX_CHUNKS = 100_000  # remembered chunks per screen (a few MB at most)


@lru_cache(maxsize=1024)
def required_literals(pattern: re.Pattern[str]) -> frozenset[str] | None:
    """Lower-case ASCII strings, one of which is in every text `pattern` matches; None when none is known."""
    try:
        tree = _sre_parse.parse(pattern.pattern, pattern.flags)
    except (AttributeError, TypeError, ValueError):  # a parser changed in a later Python: screen nothing
        return None
    found = _sequence(tree)
    if not found:
        return None
    # a literal holding a shorter one of the set adds nothing: the shorter is there whenever it is
    return frozenset(a for a in found if not any(b != a and b in a for b in found))


@dataclass(frozen=True)
class LiteralScreen:
    """Which of several patterns may match a text, from the literals in its words instead of a search per pattern."""

    patterns: tuple[re.Pattern[str], ...]
    unscreened: frozenset[int]  # patterns with no known literal: always searched
    by_literal: Mapping[str, frozenset[int]]  # literal -> the patterns that need it (one of theirs)
    # ASCII -> itself lower-cased, or a space where no literal holds it (no literal spans one, so text splits there)
    to_chunks: Mapping[int, str]
    chunks: _ChunkTable = field(compare=False, repr=False)  # chunk -> patterns, remembered: answers repeat words

    @classmethod
    def of(cls, patterns: Sequence[re.Pattern[str]]) -> LiteralScreen:
        by_literal: dict[str, set[int]] = {}
        unscreened = set()
        for index, pattern in enumerate(patterns):
            literals = required_literals(pattern)
            if literals is None:
                unscreened.add(index)
            for literal in literals or ():
                by_literal.setdefault(literal, set()).add(index)
        alphabet = set("".join(by_literal))
        to_chunks = {code: chr(code).lower() if chr(code).lower() in alphabet else " " for code in range(128)}
        frozen = {literal: frozenset(indices) for literal, indices in by_literal.items()}
        return cls(tuple(patterns), frozenset(unscreened), frozen, to_chunks, _ChunkTable(frozen))

    def candidates(self, text: str) -> AbstractSet[int]:
        """Indices of the patterns that may match `text`; all of them unless it is ASCII."""
        if not text.isascii():
            return frozenset(range(len(self.patterns)))
        # each literal lies inside one chunk (for English, a word), and what a chunk holds is worked out once
        return self.unscreened.union(*map(self.chunks.__getitem__, text.translate(self.to_chunks).split()))


class _ChunkTable(dict):
    """Chunk -> the patterns with a literal in it, worked out on first look-up (hits are plain dict look-ups)."""

    def __init__(self, by_literal: Mapping[str, frozenset[int]]) -> None:
        super().__init__()
        self.by_first: dict[
            str, list[tuple[str, frozenset[int]]]
        ] = {}  # a literal in a chunk starts with one of its letters
        for literal, indices in by_literal.items():
            self.by_first.setdefault(literal[0], []).append((literal, indices))

    def __missing__(self, chunk: str) -> frozenset[int]:
        found = frozenset().union(
            *[indices for first in set(chunk) for literal, indices in self.by_first.get(first, ()) if literal in chunk]
        )
        if len(self) >= _MAX_CHUNKS:
            self.clear()
        self[chunk] = found
        return found


def _sequence(items: Any) -> set[str] | None:
    """A sequence matches only if each part does: the most selective part's literals (runs of letters count)."""
    best: set[str] | None = None

    def consider(candidate: set[str] | None) -> None:
        nonlocal best
        if candidate and (best is None or _selectivity(candidate) > _selectivity(best)):
            best = candidate

    run: list[str] = []
    for op, argument in items:
        if op is _sre.LITERAL and chr(argument).isascii() and not chr(argument).isspace():
            run.append(chr(argument).lower())
            continue
        consider({"".join(run)} if run else None)
        run = []
        consider(_part(op, argument))
    consider({"".join(run)} if run else None)
    return best


def _part(op: Any, argument: Any) -> set[str] | None:
    if op is _sre.SUBPATTERN:
        return _sequence(argument[-1])
    if op is _ATOMIC:
        return _sequence(argument)
    if op in _REPEATS:
        low, _high, body = argument
        return _sequence(body) if low >= 1 else None
    if op is _sre.BRANCH:
        union: set[str] = set()
        for alternative in argument[1]:
            found = _sequence(alternative)
            if not found:
                return None  # one alternative needs no literal, so the alternation needs none
            union |= found
        return union
    return None  # character sets, anchors, lookarounds, back-references: nothing required (safe)


def _selectivity(literals: set[str]) -> tuple[int, int]:
    # longer literals are rarer; fewer of them is cheaper to check
    return min(map(len, literals)), -len(literals)
