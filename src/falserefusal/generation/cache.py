"""The generation cache: completions in SQLite keyed by what determines them, so a rerun generates only what is missing.

One row per generation. `key` hashes the backend's identity (`Backend.identity()`: hub id and commit or file
hash, chat template, dtype, ...), the request (case id, messages, factors) and the decoding settings; a hit
is therefore the answer this model would give again. `request_key` hashes the same minus the identity and the
early-stop policy: `--rescore` finds a model's generations through it without loading the model.

Rows are written in one transaction per batch (WAL mode, so a SIGKILL loses at most the batch in flight and
pytest-xdist workers can share one file). Each row carries a checksum of its key and value: a damaged row is
an error, never a wrong answer. A file that is not a cache of ours is refused with its name and the fix.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from falserefusal.types import Completion, FalseRefusalError, GenerationRequest

#: the file inside the cache folder
CACHE_FILE = "generations.sqlite"
#: written to the schema table; a file with another version is refused (not silently reinterpreted)
SCHEMA_VERSION = 1
#: SQLite's application_id header field ("FRgc"): tells our file from any other SQLite database
APPLICATION_ID = 0x46526763
#: SQLite limits bound parameters per statement (999 in old builds)
_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    request_key TEXT NOT NULL,
    variant TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    identity TEXT NOT NULL,
    text TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    checksum TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS generations_by_request ON generations (backend, model, request_key);
"""


def _digest(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")
    ).hexdigest()


def request_payload(request: GenerationRequest) -> dict[str, Any]:
    return {
        "case_id": request.case_id,
        "messages": [[m.role, m.content] for m in request.messages],
        "factors": dict(request.factors),
    }


@dataclass(frozen=True)
class CacheKey:
    """Where one generation lives: `key` for an exact hit, `request_key` for --rescore, `variant` groups a run."""

    key: str
    request_key: str
    variant: str

    @classmethod
    def of(
        cls,
        backend: str,
        model: str,
        identity: Mapping[str, Any],
        request: GenerationRequest,
        decoding: Mapping[str, Any],
    ) -> "CacheKey":
        """`decoding` holds every setting that changes the returned text; its "stop" entry (the early-stop policy,
        which names the detector that drives it) is left out of `request_key` so that --rescore finds text that an
        older detector stopped."""
        reading = {k: v for k, v in decoding.items() if k != "stop"}
        request_key = _digest(
            {"backend": backend, "model": model, "request": request_payload(request), "decoding": reading}
        )
        variant = _digest({"identity": dict(identity), "decoding": dict(decoding)})
        return cls(key=_digest([request_key, variant]), request_key=request_key, variant=variant)


@dataclass(frozen=True)
class Cached:
    completion: Completion
    identity: dict[str, Any]


class GenerationCache:
    """One SQLite file of generations; open it with `GenerationCache(folder)`, close it with `close()`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / CACHE_FILE
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FalseRefusalError(
                f"--cache-dir {self.folder}: cannot create it ({error.strerror}); fix: pass a writable --cache-dir, or "
                "--no-cache"
            ) from None
        if self.folder.is_file() or self.path.is_dir():
            raise self._foreign("not a file")
        try:
            # isolation_level=None: we open and commit transactions ourselves, one per batch
            self.db = sqlite3.connect(str(self.path), timeout=120.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise self._foreign(str(error)) from None
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            self.db.close()
            raise self._foreign(str(error)) from None

    def _foreign(self, why: str) -> FalseRefusalError:
        return FalseRefusalError(
            f"{self.path}: not a usable falserefusal generation cache ({why}); "
            "fix: delete the file (it only holds cached generations), or pass another --cache-dir, or --no-cache"
        )

    def _open(self) -> None:
        db = self.db
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if application_id == 0 and not tables:  # a new (or empty) file: make it ours
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                # another xdist worker may have initialised it between our check and our lock
                if db.execute("PRAGMA application_id").fetchone()[0] == 0:
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    for statement in filter(None, (part.strip() for part in _SCHEMA.split(";"))):
                        db.execute(statement)  # not executescript: it would commit the open transaction
                    db.execute(
                        "INSERT OR REPLACE INTO schema VALUES ('falserefusal-generations', ?)", (SCHEMA_VERSION,)
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            application_id = db.execute("PRAGMA application_id").fetchone()[0]
        if application_id != APPLICATION_ID:
            raise self._foreign("an SQLite database of another program")
        row = db.execute("SELECT version FROM schema WHERE name = 'falserefusal-generations'").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            raise self._foreign(
                f"cache schema version {row[0] if row else 'missing'}, this falserefusal reads version {SCHEMA_VERSION}"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed batch survives a killed process

    # ----- reading --------------------------------------------------------------------------------------------------
    def get(self, keys: Sequence[CacheKey]) -> dict[str, Completion]:
        """The cached completions among `keys`, by `key`."""
        found: dict[str, Completion] = {}
        wanted = [k.key for k in keys]
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            rows = self._query(
                "SELECT key, text, n_tokens, finish_reason, checksum FROM generations WHERE key IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, text, n_tokens, finish_reason, checksum in rows:
                self._verify(key, text, n_tokens, finish_reason, checksum)
                found[key] = Completion(text=text, n_tokens=n_tokens, finish_reason=finish_reason)
        return found

    def get_for_rescore(self, backend: str, model: str, keys: Sequence[CacheKey]) -> tuple[dict[str, Cached], int]:
        """Cached completions by `request_key`, from the most recently written variant (identity + decoding)
        that holds all of `keys`; else from the variant that holds most. Returns them and the number missing."""
        by_variant: dict[str, dict[str, Cached]] = {}
        latest: dict[str, int] = {}
        wanted = sorted({k.request_key for k in keys})
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            rows = self._query(
                "SELECT rowid, key, request_key, variant, identity, text, n_tokens, finish_reason, checksum FROM "
                f"generations WHERE backend = ? AND model = ? AND request_key IN ({','.join('?' * len(chunk))})",
                [backend, model, *chunk],
            )
            for rowid, key, request_key, variant, identity, text, n_tokens, finish_reason, checksum in rows:
                self._verify(key, text, n_tokens, finish_reason, checksum)
                completion = Completion(text=text, n_tokens=n_tokens, finish_reason=finish_reason)
                by_variant.setdefault(variant, {})[request_key] = Cached(completion, json.loads(identity))
                latest[variant] = max(latest.get(variant, 0), rowid)
        if not by_variant:
            return {}, len(wanted)
        best = max(by_variant, key=lambda v: (len(by_variant[v]), latest[v]))
        return by_variant[best], len(wanted) - len(by_variant[best])

    def _query(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, parameters).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._foreign(str(error)) from None

    def _verify(self, key: str, text: str, n_tokens: int, finish_reason: str, checksum: str) -> None:
        if checksum != _digest([key, text, n_tokens, finish_reason]):
            raise self._foreign(f"row {key[:12]} fails its checksum")

    # ----- writing --------------------------------------------------------------------------------------------------
    def put(
        self, backend: str, model: str, identity: Mapping[str, Any], entries: Iterable[tuple[CacheKey, Completion]]
    ) -> None:
        """Store one batch in one transaction: after this returns, a killed process keeps it."""
        identity_json = json.dumps(dict(identity), sort_keys=True, default=str)
        rows = [
            (
                k.key,
                k.request_key,
                k.variant,
                backend,
                model,
                identity_json,
                c.text,
                c.n_tokens,
                c.finish_reason,
                _digest([k.key, c.text, c.n_tokens, c.finish_reason]),
            )
            for k, c in entries
        ]
        if not rows:
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                # same key, same answer (greedy decoding): the first writer wins, a second xdist worker changes nothing
                self.db.executemany("INSERT OR IGNORE INTO generations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as error:
            raise self._foreign(str(error)) from None

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM generations", [])[0][0])

    def close(self) -> None:
        self.db.close()


class CachedBackend:
    """A backend behind the cache: `stored(requests)` is what the cache already holds, `generate` asks the backend
    for the rest and commits each answered batch before returning it (a killed run loses the batch in flight only)."""

    def __init__(
        self, backend: Any, cache: GenerationCache | None, kind: str, model: str, decoding: Mapping[str, Any]
    ) -> None:
        self.backend, self.cache, self.kind, self.model = backend, cache, kind, model
        self.identity = backend.identity()
        self.decoding = dict(decoding)

    def key(self, request: GenerationRequest) -> CacheKey:
        return CacheKey.of(self.kind, self.model, self.identity, request, self.decoding)

    def stored(self, requests: Sequence[GenerationRequest]) -> dict[int, Completion]:
        """index -> cached completion, for the requests the cache holds (none with the cache off)."""
        if self.cache is None:
            return {}
        keys = [self.key(request) for request in requests]
        found = self.cache.get(keys)
        return {i: found[key.key] for i, key in enumerate(keys) if key.key in found}

    def generate(
        self, requests: Sequence[GenerationRequest], max_new_tokens: int, stop_when: Any = None
    ) -> list[Completion]:
        answers = [answer.storable() for answer in self.backend.generate(requests, max_new_tokens, stop_when)]
        # storable: a lone surrogate (a served model's JSON can carry one) cannot be stored, nor shown
        if self.cache is not None:
            self.cache.put(self.kind, self.model, self.identity, [(self.key(r), a) for r, a in zip(requests, answers)])
        return answers
