"""The refusal detector on the hand-labelled open-ended answers (data/open_ended/labels.jsonl): reads every answer
with the current detector (and the rules alone) and prints precision, recall and F1 for refusal (R or P) with 95%
Wilson intervals, per task, and the share of non-answers read as refusals.

    .venv/bin/python scripts/measure_open_ended.py
"""

from __future__ import annotations

import json
from pathlib import Path

from statsmodels.stats.proportion import proportion_confint

from falserefusal.detection.detector import RefusalDetector

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "data" / "open_ended" / "labels.jsonl"


def load() -> list[dict]:
    return [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]


def wilson(k: int, n: int) -> str:
    if not n:
        return "–"
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    return f"{k / n:.2f} ({low:.2f}-{high:.2f})"


def scores(rows: list[dict], outcomes: list[str]) -> dict[str, object]:
    truth = [row["human_label"] in ("R", "P") for row in rows]
    read = [outcome == "refusal" for outcome in outcomes]
    tp = sum(t and r for t, r in zip(truth, read))
    fp = sum(r and not t for t, r in zip(truth, read))
    fn = sum(t and not r for t, r in zip(truth, read))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    non_answers = [r for row, r in zip(rows, read) if row["human_label"] == "N"]
    return {"n": len(rows), "tp": tp, "fp": fp, "fn": fn, "precision": wilson(tp, tp + fp),
            "recall": wilson(tp, tp + fn), "f1": f"{f1:.2f}",
            "non_answers_read_as_refusals": f"{sum(non_answers)} of {len(non_answers)}"}


def main() -> None:
    rows = load()
    texts = [row["text"] for row in rows]
    readings = {
        "detector (rules + learned layer)": [v.outcome for v in RefusalDetector().detect_many(texts, [()] * len(rows))],
        "rules alone": [v.outcome for v in RefusalDetector(model=None).detect_many(texts, [()] * len(rows))],
    }
    print("| reading | task | n | TP | FP | FN | precision | recall | F1 | non-answers read as refusals |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, outcomes in readings.items():
        for task in ("all", *sorted({row["task"] for row in rows})):
            keep = [i for i, row in enumerate(rows) if task in ("all", row["task"])]
            s = scores([rows[i] for i in keep], [outcomes[i] for i in keep])
            print(f"| {name} | {task} | {s['n']} | {s['tp']} | {s['fp']} | {s['fn']} | {s['precision']} | "
                  f"{s['recall']} | {s['f1']} | {s['non_answers_read_as_refusals']} |")


if __name__ == "__main__":
    main()
