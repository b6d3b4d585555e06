"""The labelled domain corpus (data/corpus/answers.jsonl) is split by item and template: nothing crosses splits."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from falserefusal.types import FORCING_LEVELS

ANSWERS = Path(__file__).resolve().parents[2] / "data" / "corpus" / "answers.jsonl"
SPLITS = {"train", "dev", "test"}


def _rows() -> list[dict]:
    return [json.loads(line) for line in ANSWERS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_no_item_paraphrase_or_phrasing_is_in_two_splits() -> None:
    seen: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for row in _rows():
        seen[("item", row["task"], row["item_id"])].add(row["split"])
        seen[("paraphrase", row["task"], row["paraphrase_id"])].add(row["split"])
        if row["phrasing_id"] != "none":  # the baseline has no persona phrasing
            seen[("phrasing", row["phrasing_id"])].add(row["split"])
    crossing = {key: sorted(splits) for key, splits in seen.items() if len(splits) > 1}
    assert not crossing


def test_every_split_has_every_task_and_forcing_level() -> None:
    rows = _rows()
    tasks = {row["task"] for row in rows}
    assert len(tasks) == 3
    present = {(row["split"], row["task"], row["forcing_level"]) for row in rows}
    assert present == {(s, t, f) for s in SPLITS for t in tasks for f in FORCING_LEVELS}


def test_no_chat_repeats_within_a_source() -> None:
    keys = [(row["source"], json.dumps(row["messages"])) for row in _rows()]
    assert len(keys) == len(set(keys))


def _build_corpus():
    import importlib.util
    import sys

    path = ANSWERS.parents[2] / "scripts" / "build_corpus.py"
    spec = importlib.util.spec_from_file_location("build_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_complete_generates_only_the_planned_rows_a_source_lacks(tmp_path: Path, capsys) -> None:
    import shutil

    corpus = ANSWERS.parent
    for name in ("templates.yaml", "splits.json", "answers.jsonl"):
        shutil.copy(corpus / name, tmp_path / name)
    build = _build_corpus().main
    plan = ["--source", "llamacpp", "--n", "450", "--plan-only", "--out", str(tmp_path)]
    assert build(plan) == 2 and "fix: remove them first, use a new --out, or --complete" in capsys.readouterr().err
    assert build([*plan, "--complete"]) == 0
    assert "450 rows already in answers.jsonl, 0 to generate" in capsys.readouterr().err
    with open(tmp_path / "answers.jsonl", "a", encoding="utf-8") as sink:  # a row the seeded draw never makes
        sink.write(json.dumps({"id": "lc-999999"}) + "\n")
    assert build([*plan, "--complete"]) == 2
    assert "1 llamacpp rows in answers.jsonl are not in this draw; fix: the --n and --seed" in capsys.readouterr().err


def test_wave_two_wordings_leave_the_wave_one_assignment_as_it_was(tmp_path: Path) -> None:
    """Wave-2 templates join the split they declare; the seeded wave-1 assignment is drawn without them, so adding
    them moved no earlier row's wording to another split."""
    import yaml

    build = _build_corpus()
    corpus = ANSWERS.parent
    specs, _, wordings = build.load_design(build.product_fixtures(), corpus / "templates.yaml")
    recorded = json.loads((corpus / "splits.json").read_text())
    assert build.assign_splits(recorded["seed"], specs, wordings) == recorded
    wave_two = set(wordings.declared_split)
    assert wave_two and all(split in {"train", "dev"} for split in wordings.declared_split.values())
    data = yaml.safe_load((corpus / "templates.yaml").read_text())
    data["paraphrases"] = {task: [p for p in ps if p.get("wave", 1) == 1] for task, ps in data["paraphrases"].items()}
    data["phrasings"] = [p for p in data["phrasings"] if p.get("wave", 1) == 1]
    (tmp_path / "templates.yaml").write_text(yaml.safe_dump(data))
    _, _, wave_one = build.load_design(build.product_fixtures(), tmp_path / "templates.yaml")
    without = build.assign_splits(recorded["seed"], specs, wave_one)
    for kind in ("paraphrases", "phrasings"):
        assert without[kind] == {split: [i for i in ids if i not in wave_two] for split, ids in recorded[kind].items()}
    rows = [row for row in _rows() if "w2-" in row["id"]]
    assert rows and {row["split"] for row in rows} <= {"train", "dev"}
    assert all(row["paraphrase_id"] in wave_two and row["phrasing_id"] in wave_two | {"none"} for row in rows)


def test_a_wave_two_wording_without_its_split_is_refused(tmp_path: Path) -> None:
    import pytest
    import yaml

    from falserefusal.types import FalseRefusalError

    build = _build_corpus()
    data = yaml.safe_load((ANSWERS.parent / "templates.yaml").read_text())
    del data["phrasings"][-1]["split"]
    (tmp_path / "templates.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(FalseRefusalError, match="a wave-2 entry \\(only\\) names its split; fix: add split"):
        build.load_design(build.product_fixtures(), tmp_path / "templates.yaml")


def test_wave_three_is_test_rows_without_a_persona_on_the_test_splits_own_wordings() -> None:
    splits = json.loads((ANSWERS.parent / "splits.json").read_text())
    rows = [row for row in _rows() if "w3-" in row["id"]]
    assert rows and all(row["split"] == "test" and row["persona"] == "baseline" for row in rows)
    assert all(row["paraphrase_id"] in splits["paraphrases"]["test"] for row in rows)
    assert all(row["item_id"] in splits["items"][row["task"]]["test"] for row in rows)
    assert {row["task"] for row in rows} == {"politeness", "offensiveness"}


def test_the_seeded_draws_reproduce_every_stored_chat() -> None:
    """answers.jsonl holds what build_corpus.py's draws make: each wave of each source, redrawn from the seed, gives
    the same chats under the same ids (so the wave-2 and wave-3 changes to the script left the earlier draws alone)."""
    build = _build_corpus()
    specs, personas, wordings = build.load_design(build.product_fixtures(), ANSWERS.parent / "templates.yaml")
    splits = json.loads((ANSWERS.parent / "splits.json").read_text())
    stored = {row["id"]: row for row in _rows()}
    for source in build.PREFIX:
        for wave in build.WAVES:
            mine = [row for row in stored.values() if row["id"].startswith(build.row_prefix(source, wave) + "-")]
            taken = build.taken_chats(list(stored.values()), source, wave)
            drawn = build.draw_rows(splits["seed"], source, len(mine), specs, personas, wordings, splits, wave, taken)
            assert {row["id"]: row["messages"] for row in drawn} == {row["id"]: row["messages"] for row in mine}
