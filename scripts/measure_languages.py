"""The refusal detector on hand-labelled Spanish and German answers (data/languages/labels.jsonl): reads every answer
with the current detector (rules + learned layer, and the rules alone) and prints, per prompt language, precision,
recall and F1 for refusal (R or P) with 95% Wilson intervals, the share of answers written in the prompt's language
(the labeller's judgement) and how often `answer_language` agrees with it.

    .venv/bin/python scripts/measure_languages.py
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from unittest import mock

from measure_open_ended import scores, wilson  # the same counts and intervals as the open-ended figures

from falserefusal.design.tasks import load_tasks
from falserefusal.detection import detector as detector_module
from falserefusal.detection.answer_language import answer_language
from falserefusal.detection.detector import RefusalDetector
from falserefusal.run.project import DEFAULT_FIXTURES

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "data" / "languages" / "labels.jsonl"


def load() -> list[dict]:
    return [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]


def share(k: int, n: int) -> str:
    return f"{k}/{n} = {wilson(k, n)}"


def main() -> None:
    rows = load()
    labels = {
        spec.task.id: spec.task.reading_labels
        for spec in load_tasks(DEFAULT_FIXTURES, sorted({r["task"] for r in rows}))
    }
    texts = [row["text"] for row in rows]
    label_sets = [labels[row["task"]] for row in rows]
    readings = {
        "detector (rules + learned layer, answers in es/de by rules)": RefusalDetector().detect_many(texts, label_sets),
        "rules alone": RefusalDetector(model=None).detect_many(texts, label_sets),
    }
    # what the learned layer would say if it also read the Spanish and German answers (before `answer_language`)
    with mock.patch.object(detector_module, "answer_language", lambda text: "en"):
        readings["learned layer on every answer (no language routing)"] = RefusalDetector().detect_many(
            texts, label_sets
        )
    print(f"{len(rows)} answers; human labels: {dict(sorted(Counter(r['human_label'] for r in rows).items()))}")
    print("\n| reading | prompt language | n | TP | FP | FN | precision | recall | F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, verdicts in readings.items():
        outcomes = [v.outcome for v in verdicts]
        for language in ("all", *sorted({row["language"] for row in rows})):
            keep = [i for i, row in enumerate(rows) if language in ("all", row["language"])]
            s = scores([rows[i] for i in keep], [outcomes[i] for i in keep])
            print(
                f"| {name} | {language} | {s['n']} | {s['tp']} | {s['fp']} | {s['fn']} | {s['precision']} | "
                f"{s['recall']} | {s['f1']} |"
            )
    print(
        "\n| prompt language | human labels R/P/C/N | answers in the prompt's language (labeller) | in English |"
        " answer_language agrees with the labeller (es/de/en answers) |"
    )
    print("|---|---|---|---|---|")
    for language in sorted({row["language"] for row in rows}):
        these = [row for row in rows if row["language"] == language]
        counts = Counter(row["human_label"] for row in these)
        same = sum(row["answer_language"] == language for row in these)
        english = sum(row["answer_language"] == "en" for row in these)
        judged = [row for row in these if row["answer_language"] in ("es", "de", "en")]
        agree = sum(answer_language(row["text"]) == row["answer_language"] for row in judged)
        print(
            f"| {language} | {'/'.join(str(counts[k]) for k in 'RPCN')} | {share(same, len(these))} | "
            f"{share(english, len(these))} | {share(agree, len(judged))} |"
        )
    print(
        "\n| reading | prompt language | human N read as non_answer / compliance / refusal "
        "| human C read as compliance |"
    )
    print("|---|---|---|---|")
    for name, verdicts in readings.items():
        for language in sorted({row["language"] for row in rows}):
            pairs = [(row["human_label"], v.outcome) for row, v in zip(rows, verdicts) if row["language"] == language]
            read_n = Counter(outcome for human, outcome in pairs if human == "N")
            read_c = Counter(outcome for human, outcome in pairs if human == "C")
            print(
                f"| {name} | {language} | {read_n['non_answer']} / {read_n['compliance']} / {read_n['refusal']} | "
                f"{read_c['compliance']} of {sum(read_c.values())} |"
            )
    for language in sorted({row["language"] for row in rows}):
        print(
            f"\n{language}: answers' languages (labeller): "
            f"{dict(Counter(row['answer_language'] for row in rows if row['language'] == language).most_common())}"
        )


if __name__ == "__main__":
    main()
