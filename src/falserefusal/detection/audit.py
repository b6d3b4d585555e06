"""Detector audit files: a stratified sample of a run's answers as a CSV for people to label, and scoring it.

`export_audit` draws up to N answers per stratum (model x task x persona x detector outcome) of a results.jsonl,
seeded, and writes them in a shuffled order as CSV, with every stratum's size (the sampling weights) in the CSV
and in a sidecar JSON. People fill in `human_label` (R, P, C or N: the rubric in LABELLING.md) and `note`.
`score_labels` reads the labelled CSV back, checks every label and turns it into a `DetectorAudit` (see
`falserefusal.analysis.detector_audit` for the statistics), written as the audit summary JSON the report loads.

The CSV holds untrusted model text. It is written with the csv module and every field quoted, so commas, quotes
and line breaks inside a response stay inside its cell; and a cell that starts with =, +, -, @, a tab or a
carriage return gets a leading apostrophe, so a spreadsheet shows it as text instead of running it as a formula
(CSV injection, OWASP). Reading strips that apostrophe again from the columns the score uses.
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from falserefusal.analysis.detector_audit import (
    HUMAN_LABELS,
    LABEL_NAMES,
    OUTCOMES,
    RUBRIC_VERSION,
    AuditStratum,
    DetectorAudit,
    audit_summary,
)
from falserefusal.types import FalseRefusalError, Record

#: answers drawn per stratum unless --per-stratum says otherwise
DEFAULT_PER_STRATUM = 5
COLUMNS: tuple[str, ...] = (
    "audit_id",
    "case_id",
    "model",
    "task",
    "persona",
    "forcing_level",
    "paraphrase",
    "item",
    "detector_outcome",
    "detector_rule",
    "system_prompt",
    "user_prompt",
    "response",
    "human_label",
    "note",
    "stratum",
    "stratum_size",
    "stratum_sampled",
)
#: what `score_labels` needs of each row
REQUIRED: tuple[str, ...] = ("audit_id", "model", "task", "persona", "detector_outcome", "human_label", "stratum_size")
#: a spreadsheet reads a cell starting with one of these as a formula
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: human labels also accepted in full (any case)
LABEL_ALIASES = {
    "refusal": "R",
    "partial": "P",
    "partial refusal": "P",
    "compliance": "C",
    "non-answer": "N",
    "non_answer": "N",
    "nonanswer": "N",
}


def spreadsheet_safe(text: str) -> str:
    """The cell as text a spreadsheet will not evaluate: a leading apostrophe before =, +, -, @, tab or CR."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def unguard(text: str) -> str:
    """Undo `spreadsheet_safe` (a spreadsheet may also keep the apostrophe when it saves the file)."""
    return text[1:] if text.startswith("'") and text[1:2] and text[1:].startswith(FORMULA_STARTS) else text


def _outcome(record: Record) -> str:
    # `outcome` arrived with the three-outcome detector; older results only say `refused`
    return getattr(record, "outcome", None) or ("refusal" if record.refused else "compliance")


@dataclass(frozen=True)
class AuditSample:
    """The drawn answers, in the order people will label them, and the size of every stratum of the run."""

    rows: tuple[tuple[str, Record], ...]  # (audit id, record)
    sizes: Mapping[tuple[str, str, str, str], int]  # every stratum of the run -> answers in it
    sampled: Mapping[tuple[str, str, str, str], int]
    per_stratum: int
    seed: int


def sample_audit(records: Sequence[Record], per_stratum: int = DEFAULT_PER_STRATUM, seed: int = 0) -> AuditSample:
    """Up to `per_stratum` answers of every (model, task, persona, detector outcome), drawn without replacement.

    Each stratum draws from its own generator, seeded by `seed` and the stratum's name, so adding a persona or a
    model to a run does not change what the other strata draw; the drawn rows are then shuffled (seeded), so the
    people labelling them do not see them grouped by the detector's reading.
    """
    if per_stratum < 1:
        raise FalseRefusalError(f"--per-stratum {per_stratum}: must be at least 1")
    strata: dict[tuple[str, str, str, str], list[Record]] = {}
    for record in records:
        strata.setdefault((record.model, record.case.task, record.case.persona, _outcome(record)), []).append(record)
    drawn: list[Record] = []
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda r: r.case.case_id)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32("|".join(key).encode()),)))
        picked = rng.choice(len(members), size=min(per_stratum, len(members)), replace=False)
        drawn.extend(members[i] for i in sorted(picked))
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(len(drawn))
    width = max(4, len(str(len(drawn))))
    rows = tuple((f"a{number:0{width}d}", drawn[index]) for number, index in enumerate(order, start=1))
    sampled: dict[tuple[str, str, str, str], int] = {}
    for _, record in rows:
        key = (record.model, record.case.task, record.case.persona, _outcome(record))
        sampled[key] = sampled.get(key, 0) + 1
    return AuditSample(rows, {k: len(v) for k, v in strata.items()}, sampled, per_stratum, seed)


def _prompt(record: Record, role: str) -> str:
    return "\n\n".join(m.content for m in record.case.messages if m.role == role)


def _row(audit_id: str, record: Record, sample: AuditSample) -> dict[str, Any]:
    key = (record.model, record.case.task, record.case.persona, _outcome(record))
    case = record.case
    return {
        "audit_id": audit_id,
        "case_id": case.case_id,
        "model": record.model,
        "task": case.task,
        "persona": case.persona,
        "forcing_level": case.forcing_level,
        "paraphrase": case.paraphrase_id,
        "item": case.item_id,
        "detector_outcome": key[3],
        "detector_rule": record.rule,
        "system_prompt": _prompt(record, "system"),
        "user_prompt": _prompt(record, "user"),
        "response": record.response,
        "human_label": "",
        "note": "",
        "stratum": "|".join(key),
        "stratum_size": sample.sizes[key],
        "stratum_sampled": sample.sampled[key],
    }


def _cell(value: Any) -> str:
    return spreadsheet_safe(str(value).replace("\x00", "\ufffd"))


def strata_path(csv_path: Path) -> Path:
    """The sidecar JSON beside an audit CSV: audit.csv -> audit.strata.json."""
    return csv_path.with_name(csv_path.stem + ".strata.json")


def export_audit(
    results: Path, out: Path | None = None, per_stratum: int = DEFAULT_PER_STRATUM, seed: int = 0
) -> tuple[Path, Path, AuditSample]:
    """Write the labelling CSV (default: audit.csv beside the results) and its strata sidecar; return both paths."""
    from falserefusal.run.results import read_results

    metadata, records = read_results(Path(results))
    if not records:
        raise FalseRefusalError(f"{results}: no generations to audit; fix: pass the results.jsonl of a finished run")
    sample = sample_audit(records, per_stratum, seed)
    out = Path(out) if out else Path(results).with_name("audit.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_suffix(out.suffix + ".tmp")
    with open(staging, "w", encoding="utf-8-sig", newline="") as handle:  # the BOM tells spreadsheets it is UTF-8
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS), quoting=csv.QUOTE_ALL)
        writer.writeheader()
        for audit_id, record in sample.rows:
            writer.writerow({k: _cell(v) for k, v in _row(audit_id, record, sample).items()})
    staging.replace(out)
    sidecar = strata_path(out)
    sidecar.write_text(
        json.dumps(
            {
                "kind": "falserefusal-audit-sample",
                "results": str(results),
                "seed": seed,
                "per_stratum": per_stratum,
                "run_seed": metadata.get("seed"),
                "detector_version": metadata.get("detector_version"),
                "models": sorted({r.model for r in records}),
                "rubric": RUBRIC_VERSION,
                "labels": list(HUMAN_LABELS),
                "strata": [
                    {
                        "model": k[0],
                        "task": k[1],
                        "persona": k[2],
                        "detector_outcome": k[3],
                        "size": size,
                        "sampled": sample.sampled.get(k, 0),
                    }
                    for k, size in sorted(sample.sizes.items())
                ],
            },
            indent=1,
            sort_keys=True,
        ),
        encoding="utf-8",
    )
    return out, sidecar, sample


# ----- scoring ---------------------------------------------------------------------------------------------------


def _label(value: str) -> str | None:
    text = unguard(value).strip()
    if text.upper() in HUMAN_LABELS:
        return text.upper()
    return LABEL_ALIASES.get(text.lower())


def read_labels(path: Path) -> DetectorAudit:
    """The labelled CSV as a `DetectorAudit`; a bad row raises one line naming the file, the row and the fix.

    Rows are numbered as a spreadsheet shows them (the header is row 1). A row may be deleted to leave it out;
    the strata sizes then still come from `stratum_size` (and from the sidecar, for strata with no row left).
    """
    path = Path(path)
    if not path.is_file():
        raise FalseRefusalError(
            f"{path}: labels file not found; fix: pass the CSV that `falserefusal audit export` wrote, with "
            "human_label filled in"
        )
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = [unguard(h or "").strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise FalseRefusalError(
                    f"{path}: no column(s) {', '.join(missing)}; fix: keep the header row and columns "
                    "that `falserefusal audit export` wrote"
                )
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise FalseRefusalError(f"{path}: not a readable CSV ({error}); fix: save it as CSV (UTF-8)") from None
    if not rows:
        raise FalseRefusalError(f"{path}: no labelled rows; fix: label the rows `falserefusal audit export` wrote")
    sizes: dict[tuple[str, str, str, str], int] = {}
    counts: dict[tuple[str, str, str, str], dict[str, int]] = {}
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        audit_id = unguard(row.get("audit_id") or "").strip()
        where = f"{path}, row {number}" + (f" (audit_id {audit_id})" if audit_id else "")
        if None in row:
            raise FalseRefusalError(
                f"{where}: more cells than columns; fix: a response with a comma or line break must stay quoted, "
                "re-export or save the file as CSV again"
            )
        if audit_id in seen:
            raise FalseRefusalError(f"{where}: audit_id repeats row {seen[audit_id]}; fix: delete the duplicate row")
        seen[audit_id] = number
        raw = row.get("human_label") or ""
        label = _label(raw)
        if label is None:
            given = "empty" if not raw.strip() else f"{raw.strip()!r}"
            raise FalseRefusalError(
                f"{where}: human_label is {given}; fix: write one of R (refusal), P (partial refusal), C (compliance), "
                f"N (non-answer) per the rubric {RUBRIC_VERSION}, or delete the row to leave it out"
            )
        outcome = unguard(row.get("detector_outcome") or "").strip()
        if outcome not in OUTCOMES:
            raise FalseRefusalError(
                f"{where}: detector_outcome {outcome!r} is not one of {', '.join(OUTCOMES)}; "
                "fix: keep the value `falserefusal audit export` wrote"
            )
        key = (unguard(row["model"]).strip(), unguard(row["task"]).strip(), unguard(row["persona"]).strip(), outcome)
        try:
            size = int(unguard(row.get("stratum_size") or "").strip())
        except ValueError:
            size = -1
        if size < 1:
            raise FalseRefusalError(
                f"{where}: stratum_size {row.get('stratum_size')!r} is not a positive whole number; "
                "fix: keep the value `falserefusal audit export` wrote"
            )
        if sizes.setdefault(key, size) != size:
            raise FalseRefusalError(
                f"{where}: stratum_size {size} differs from {sizes[key]} on an earlier row of stratum "
                f"{'|'.join(key)}; fix: keep the values `falserefusal audit export` wrote"
            )
        stratum = counts.setdefault(key, {label: 0 for label in HUMAN_LABELS})
        stratum[label] += 1
        if sum(stratum.values()) > size:
            raise FalseRefusalError(
                f"{where}: stratum {'|'.join(key)} has more labelled rows than its stratum_size {size}; "
                "fix: delete rows copied twice"
            )
    source: dict[str, Any] = {"labels": str(path), "rubric": RUBRIC_VERSION}
    sidecar = strata_path(path)
    if sidecar.is_file():  # strata whose rows were all deleted still count as unlabelled strata of the run
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            for entry in data.get("strata", []):
                sizes.setdefault(
                    (entry["model"], entry["task"], entry["persona"], entry["detector_outcome"]), int(entry["size"])
                )
            source.update({k: data.get(k) for k in ("results", "seed", "per_stratum", "run_seed", "detector_version")})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise FalseRefusalError(
                f"{sidecar}: not the strata file of an audit export; fix: delete it, or re-export"
            ) from None
    strata = tuple(AuditStratum(*key, size=size, counts=counts.get(key, {})) for key, size in sorted(sizes.items()))
    return DetectorAudit(strata, source)


def summary_path(labels: Path) -> Path:
    """Where `audit score` writes the summary: audit.csv -> audit.json."""
    return Path(labels).with_suffix(".json")


def score_labels(labels: Path, out: Path | None = None) -> tuple[DetectorAudit, Path]:
    """Score a labelled CSV and write the audit summary JSON (default: beside it, .json); return both."""
    audit = read_labels(labels)
    out = Path(out) if out else summary_path(labels)
    if out.resolve() == Path(labels).resolve():
        raise FalseRefusalError(f"--out {out}: would overwrite the labels; fix: pass another file")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_plain(audit.to_dict()), indent=1, sort_keys=True, allow_nan=False), encoding="utf-8")
    return audit, out


def _plain(value: Any) -> Any:
    """JSON values: numpy numbers as Python ones, NaN as null."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def load_audit(path: str | Path) -> DetectorAudit:
    """An audit from the summary JSON `audit score` writes, or straight from the labelled CSV."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_labels(path)
    if not path.is_file():
        raise FalseRefusalError(
            f"--audit {path}: not found; fix: run `falserefusal audit score LABELS` first, or pass the labelled CSV"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FalseRefusalError(
            f"--audit {path}: not JSON ({error}); fix: pass the file `falserefusal audit score` wrote"
        ) from None
    return DetectorAudit.from_dict(data, where=f"--audit {path}")


def _ci(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None or not math.isfinite(value):
        return "   -   " + " " * 18
    return f"{100 * value:5.1f}% [{100 * row[name + '_low']:5.1f}, {100 * row[name + '_high']:5.1f}]"


def format_audit(audit: DetectorAudit) -> str:
    """The terminal summary of `audit score`: overall, with vs without a persona, per persona, and the confusion."""
    summary = audit_summary(audit)
    lines = [
        f"{audit.n_labelled} labelled answers in {sum(1 for s in audit.strata if s.n)} strata "
        f"(rubric {summary['rubric']}; 95% Wilson intervals at the weighted effective n)"
    ]
    header = f"{'':24} {'n':>4}  {'agreement':26} {'sensitivity (recall)':26} {'specificity':26}"

    def line(name: str, row: Mapping[str, Any]) -> str:
        return (
            f"{name[:24]:24} {row.get('n_labelled', 0):4d}  {_ci(row, 'agreement'):26} {_ci(row, 'sensitivity'):26} "
            f"{_ci(row, 'specificity'):26}"
        )

    lines += [header, line("overall", summary["overall"])]
    several = len(audit.models) > 1
    for row in summary["by_persona_group"]:
        name = "without persona" if row["persona_group"] == "baseline" else "with a persona"
        lines.append(line(f"{row['model']}: {name}" if several else name, row))
    lines.append("per persona:")
    for row in summary["by_persona"]:
        lines.append(line(f"  {row['model']}: {row['persona']}" if several else f"  {row['persona']}", row))
    lines.append("detector outcome x human label (labelled answers; run answers they stand for):")
    lines.append(f"  {'':12}" + "".join(f"{label + ' ' + LABEL_NAMES[label]:>22}" for label in HUMAN_LABELS))
    for row in summary["confusion"]:
        lines.append(
            f"  {row['detector_outcome']:12}"
            + "".join(f"{row[label]:>12d} ({row[label + '_estimated']:6.1f})" for label in HUMAN_LABELS)
        )
    overall = summary["overall"]
    if overall.get("non_answer_as_refusal_n"):
        lines.append(
            f"non-answers read as refusals: {_ci(overall, 'non_answer_as_refusal').strip()} "
            f"of {overall['non_answer_as_refusal_n']} labelled N"
        )
    if summary["unlabelled_strata"]:
        lines.append(f"strata of the run with no labelled row (not represented): {len(summary['unlabelled_strata'])}")
    return "\n".join(lines)
