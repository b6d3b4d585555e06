"""Merge the labellers' files (data/corpus/labels/*.labels.jsonl) into data/corpus/labels.jsonl, checked.

Every id must be a corpus answer, labelled once, with a label of the rubric (R, P, C, N).

    python scripts/merge_labels.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from falserefusal.analysis.detector_audit import HUMAN_LABELS as LABELS

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"


def main() -> int:
    answers = {json.loads(line)["id"] for line in (CORPUS / "answers.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()}
    merged: dict[str, dict[str, str]] = {}
    for path in sorted((CORPUS / "labels").glob("*.labels.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            entry = json.loads(line)
            where = f"{path.name}:{number}"
            if entry.get("label") not in LABELS:
                raise SystemExit(f"{where}: label {entry.get('label')!r} is not one of R, P, C, N")
            if entry["id"] in merged:
                raise SystemExit(f"{where}: {entry['id']} is labelled twice")
            merged[entry["id"]] = {"id": entry["id"], "label": entry["label"], "reason": entry.get("reason", ""),
                                   "open_case": entry.get("open_case", ""), "file": path.name}
    unknown = sorted(set(merged) - answers)
    if unknown:
        print(f"{len(unknown)} labelled ids are not (yet) in answers.jsonl, kept: {unknown[:5]}", file=sys.stderr)
    order = sorted(merged)
    (CORPUS / "labels.jsonl").write_text("".join(json.dumps(merged[i], ensure_ascii=False, sort_keys=True) + "\n" for i in order), encoding="utf-8")
    counts = {label: sum(m["label"] == label for m in merged.values()) for label in sorted(LABELS)}
    print(f"{len(merged)} labels of {len(answers)} answers: {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
