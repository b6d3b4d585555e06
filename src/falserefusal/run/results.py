"""results.jsonl and run.json: the header of a run's settings, one line per generation, read back with checks."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from falserefusal.detection.detector import decision_window_of
from falserefusal.types import FalseRefusalError, Record

if TYPE_CHECKING:  # the suite is prepared from results too (--baseline-results)
    from falserefusal.run.prepare import Suite


RESULTS_FILE = "results.jsonl"


#: version of the results.jsonl layout, in its header; a file without one was written before this was recorded
RESULTS_SCHEMA = 1


def canonical_order(suite: Suite, records: Iterable[Record]) -> list[Record]:
    """Records in (model, case) order of the suite, whatever process or order produced them."""
    model_rank = {m: i for i, m in enumerate(suite.all_models)}
    case_rank = {c.case_id: i for i, c in enumerate(suite.cases)}
    return sorted(records, key=lambda r: (model_rank.get(r.model, len(model_rank)), case_rank.get(r.case.case_id, 0)))


def run_metadata(
    suite: Suite,
    identities: Mapping[str, Any],
    timings: Mapping[str, float],
    detector_version: str,
    cache: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    config = suite.config
    return {
        "cache": dict(cache or {}),  # hits and generated cases of this run: volatile, in run.json only
        "kind": "run",
        "schema": RESULTS_SCHEMA,
        "seed": config.seed,
        "samples": suite.samples,
        "sampling": {
            "design": "seeded permutation of each task's item x paraphrase x phrasing factorial, without replacement",
            "factorial": dict(suite.factorial),
            "blocks": {task: min(suite.samples, size) for task, size in suite.factorial.items()},
            "notes": list(suite.notes),
        },
        "profile": {
            # a run without intersections has no compounding gate: its header stays as before the key existed
            **{
                k: v
                for k, v in suite.profile.to_dict().items()
                if suite.intersections or k != "max_intersectional_excess"
            },
            "source": project_path(suite.profile.source, config.root),
        },
        "models": list(suite.models),
        "model_identities": {
            model: {k: project_path(v, config.root) if k == "folder" else v for k, v in dict(identity).items()}
            for model, identity in identities.items()
        },
        "backend": config.backend,
        "backend_options": asdict(config.backend_options),
        "tasks": list(suite.task_ids),
        "task_sources": {spec.task.id: project_path(spec.source, config.root) for spec in suite.tasks},
        "personas": [p.id for p in suite.personas],
        # intersection id -> its markers, only when the run asks intersections (other headers stay as they were)
        **({"intersections": {i.id: list(i.of) for i in suite.intersections}} if suite.intersections else {}),
        "persona_placement": config.persona_placement,
        "baseline": "no persona turn: the model's own default chat (a template may add its default system prompt)",
        "n_cases": len(suite.cases) * len(suite.models),
        "baseline_model": suite.baseline,
        "baseline_results": config.baseline_results
        and project_path(str(config.path(config.baseline_results)), config.root),
        "detector_version": detector_version,
        "decision_window": decision_window_of(detector_version),
        "versions": package_versions(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
        "timings": dict(timings),
        "command": rerunnable_command(sys.argv),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def rerunnable_command(argv: Sequence[str], prefix: str | None = None) -> str:
    """The command a user can type again: `pytest ...`, `python -m pytest ...`, `falserefusal ...` rather than the
    script path in argv[0] (a site-packages `__main__.py` or a venv's bin/pytest); arguments shell-quoted.
    `prefix` replaces argv[0] when the caller knows better (the plugin passes pytest's own invocation)."""
    if prefix is None:
        script = Path(argv[0]) if argv else Path("")
        if script.name == "__main__.py":
            prefix = f"python -m {script.parent.name}"
        else:
            prefix = script.name.removesuffix(".exe") or "python"
    return " ".join([prefix, *map(shlex.quote, argv[1:])])


def project_path(value: str, root: str) -> str:
    """A path as the results header stores it: relative to the project's folder (its config file's, for pytest and
    `falserefusal run` alike) when inside it, package-relative for the packaged defaults, else as given; so the same
    run from two checkouts writes the same bytes. Hub ids and other non-paths pass through unchanged."""
    path = Path(value)
    if not path.is_absolute():
        return value
    import falserefusal

    for base, prefix in ((Path(root).resolve(), ""), (Path(falserefusal.__file__).resolve().parent, "falserefusal/")):
        try:
            return prefix + path.resolve().relative_to(base).as_posix()
        except ValueError:
            continue
    return value


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("falserefusal", "torch", "transformers", "gguf", "numpy", "pandas", "scipy", "statsmodels", "pytest"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


#: metadata that differs between two runs of the same configuration; kept out of results.jsonl (which is
#: byte-identical for the same seed and settings) and written to run.json beside it
VOLATILE_KEYS = ("timings", "finished_at", "command", "cache")


RUN_FILE = "run.json"


def write_results(path: Path, metadata: Mapping[str, Any], records: Sequence[Record]) -> None:
    """results.jsonl: a header line with the run's settings, then one line per generation; plus run.json.

    Both are written atomically. Whether a generation came from the cache is a property of this run, not of
    the result, so `cached` stays out of results.jsonl (run.json counts cache hits).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {k: v for k, v in metadata.items() if k not in VOLATILE_KEYS}
    staging = path.with_suffix(path.suffix + ".tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(header, sort_keys=True) + "\n")
        for record in records:
            line = record.to_dict()
            line.pop("cached", None)
            handle.write(json.dumps(line, sort_keys=True) + "\n")
    staging.replace(path)
    run_file = path.with_name(RUN_FILE)
    staging = run_file.with_suffix(".tmp")
    staging.write_text(json.dumps(dict(metadata), sort_keys=True, indent=2), encoding="utf-8")
    staging.replace(run_file)


def read_results(path: Path) -> tuple[dict[str, Any], list[Record]]:
    """The metadata (header, plus run.json beside it when present) and the records of a results.jsonl file."""
    if not path.is_file():
        raise FalseRefusalError(f"{path}: results file not found; fix: run the suite first, or check the path")
    metadata: dict[str, Any] = {}
    records: list[Record] = []
    fix = "fix: pass a results.jsonl written by falserefusal run or pytest"
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    if data.get("kind") == "run":
                        metadata = data
                    else:
                        _check_field_types(data)
                        records.append(Record.from_dict(data))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
                    raise FalseRefusalError(
                        f"{path}:{number}: not a falserefusal results line ({error}); {fix}"
                    ) from None
    except UnicodeDecodeError as error:
        raise FalseRefusalError(f"{path}: not UTF-8 text (byte {error.start}), so not a results file; {fix}") from None
    if not metadata and not records:
        raise FalseRefusalError(f"{path}: empty; {fix}")
    if not metadata:
        raise FalseRefusalError(f'{path}: no header line (the first line, with "kind": "run"); {fix}')
    schema = metadata.get("schema")
    if schema is not None and (not isinstance(schema, int) or schema > RESULTS_SCHEMA):
        raise FalseRefusalError(
            f"{path}: results schema {schema!r}, newer than this falserefusal reads ({RESULTS_SCHEMA}); "
            "fix: upgrade falserefusal"
        )
    run_file = path.with_name(RUN_FILE)
    if run_file.is_file():
        try:
            extra = json.loads(run_file.read_text(encoding="utf-8"))
            if extra.get("seed") == metadata.get("seed"):  # only the run.json of this same run
                metadata = {**extra, **metadata, "schema": schema}  # the schema is the header's
        except json.JSONDecodeError:
            pass  # run.json is informational; a broken one loses timings only
    return metadata, records


#: the type of every results-line field the gates and the report read: a string "false" for `refused` would count
#: as a refusal, so types are checked, not coerced (n_tokens: int, not bool)
_FIELD_TYPES = {
    "model": str,
    "backend": str,
    "response": str,
    "n_tokens": int,
    "finish_reason": str,
    "refused": bool,
    "rule": str,
    "detector_version": str,
    "outcome": str,
}


_CASE_FIELD_TYPES = {
    "case_id": str,
    "block_id": str,
    "seed": int,
    "task": str,
    "item_id": str,
    "paraphrase_id": str,
    "forcing_level": str,
    "persona": str,
    "persona_dimension": str,
    "phrasing_id": str,
    "gold_label": str,
    "language": str,
}


def _check_field_types(data: Mapping[str, Any]) -> None:
    from falserefusal.types import OUTCOMES

    for fields_, where in ((_FIELD_TYPES, data), (_CASE_FIELD_TYPES, data.get("case"))):
        if not isinstance(where, Mapping):
            raise ValueError("case is not an object")
        for name, kind in fields_.items():
            if name in where and type(where[name]) is not kind:
                raise ValueError(f"{name} is {json.dumps(where[name])}, not a JSON {_JSON_NAMES[kind]}")
    if data.get("outcome") not in (None, "", *OUTCOMES):
        raise ValueError(f"outcome {json.dumps(data.get('outcome'))} is not one of {', '.join(OUTCOMES)}")


_JSON_NAMES = {str: "string", int: "integer", bool: "true/false"}


def results_warnings(metadata: Mapping[str, Any], records: Sequence[Record], current_detector: str) -> list[str]:
    """What a reader of a saved results file should know: it predates the schema, or another detector labelled it."""
    notes = []
    if metadata.get("schema") is None:
        notes.append(
            "no results schema in its header (written by an earlier falserefusal); read as schema "
            f"{RESULTS_SCHEMA}, which may miss fields it lacks"
        )
    versions = sorted({r.detector_version for r in records})
    if versions and versions != [current_detector]:
        notes.append(
            f"labelled by detector {', '.join(versions)}, not this falserefusal's {current_detector}: the gates "
            "use the saved labels; fix: rerun with --rescore to label the cached answers with this detector"
        )
    return notes
