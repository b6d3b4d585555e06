"""The sampler, fixtures and scripted backend: pure functions, no model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from falserefusal.design.personas import load_personas, select_personas
from falserefusal.design.sampler import draw_cases
from falserefusal.design.tasks import load_dataset_items, load_task_file, load_tasks
from falserefusal.generation.backends.scripted import ScriptedBackend, ScriptedSpec
from falserefusal.generation.generator import request_for
from falserefusal.run.project import DEFAULT_FIXTURES
from falserefusal.types import BASELINE_ID, FORCING_LEVELS, Case, FalseRefusalError, Record

FIXTURES = DEFAULT_FIXTURES


@pytest.fixture(scope="module")
def suite_parts():
    personas, phrasings = load_personas(FIXTURES / "personas.yaml")
    return personas, phrasings, load_tasks(FIXTURES)


def test_bundled_personas_cover_four_dimensions(suite_parts) -> None:
    personas, phrasings, _ = suite_parts
    assert len(personas) == 15
    assert {p.dimension for p in personas} == {"gender", "race", "religion", "disability"}
    assert len(phrasings) >= 3 and all("{persona}" in p.template for p in phrasings)


def test_bundled_tasks_are_balanced_with_nine_paraphrases(suite_parts) -> None:
    _, _, tasks = suite_parts
    assert [t.task.id for t in tasks] == ["nli", "offensiveness", "politeness"]
    for spec in tasks:
        assert len(spec.items) >= 60
        counts = {label: sum(i.label == label for i in spec.items) for label in spec.task.labels}
        assert max(counts.values()) - min(counts.values()) <= 1, counts
        levels = [p.forcing_level for p in spec.paraphrases]
        assert len(levels) == 9 and all(levels.count(level) == 3 for level in FORCING_LEVELS)


def test_each_block_is_asked_under_every_persona_and_the_baseline(suite_parts) -> None:
    personas, phrasings, tasks = suite_parts
    cases = draw_cases(tasks, personas, phrasings, samples=4, seed=1)
    assert len(cases) == 3 * 4 * 16
    blocks: dict[str, list[Case]] = {}
    for case in cases:
        blocks.setdefault(case.block_id, []).append(case)
    for block in blocks.values():
        assert [c.persona for c in block][0] == BASELINE_ID
        assert len({c.persona for c in block}) == 16
        # the same request: only the persona differs
        assert len({(c.item_id, c.paraphrase_id, c.messages[-1].content[-60:]) for c in block}) == 1
        baseline = block[0]
        assert [m.role for m in baseline.messages] == ["user"]
        assert all(c.messages[0].role == "system" and c.messages[-1] == baseline.messages[-1] for c in block[1:])


def test_case_ids_are_readable_and_unique(suite_parts) -> None:
    personas, phrasings, tasks = suite_parts
    cases = draw_cases(tasks, personas, phrasings, samples=3, seed=5)
    assert cases[0].case_id == "nli-b00000-baseline"
    assert len({c.case_id for c in cases}) == len(cases)


def test_same_seed_same_cases_in_another_process(suite_parts) -> None:
    personas, phrasings, tasks = suite_parts
    here = [c.to_dict() for c in draw_cases(tasks, personas, phrasings, samples=5, seed=42)]
    code = (
        "import json,sys; from pathlib import Path; from falserefusal.design.personas import load_personas;"
        "from falserefusal.design.tasks import load_tasks; from falserefusal.design.sampler import draw_cases;"
        f"f=Path({str(FIXTURES)!r}); p,ph=load_personas(f/'personas.yaml');"
        "print(json.dumps([c.to_dict() for c in draw_cases(load_tasks(f),p,ph,5,42)]))"
    )
    there = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout)
    assert here == there
    assert here != [c.to_dict() for c in draw_cases(tasks, personas, phrasings, samples=5, seed=43)]


def test_a_tasks_blocks_do_not_depend_on_other_tasks_or_sample_count(suite_parts) -> None:
    personas, phrasings, tasks = suite_parts
    nli_only = [t for t in tasks if t.task.id == "nli"]
    small = draw_cases(nli_only, personas, phrasings, samples=3, seed=9)
    large = [c for c in draw_cases(tasks, personas, phrasings, samples=10, seed=9) if c.task == "nli"]
    assert small == large[: len(small)]


def test_user_placement_puts_the_persona_in_the_user_turn(suite_parts) -> None:
    personas, phrasings, tasks = suite_parts
    cases = draw_cases(tasks[:1], personas[:1], phrasings, samples=1, seed=0, placement="user")
    persona_case = cases[1]
    assert [m.role for m in persona_case.messages] == ["user"]
    assert "a man" in persona_case.messages[0].content


def test_records_round_trip_through_json(suite_parts) -> None:
    personas, phrasings, tasks = suite_parts
    case = draw_cases(tasks, personas, phrasings, samples=1, seed=0)[3]
    record = Record(case, "m", "scripted", "I can't <script>", 3, "stop", True, "refusal:x", None, "v1")
    assert Record.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_select_personas_by_dimension_and_reject_unknown(suite_parts) -> None:
    personas, _, _ = suite_parts
    assert {p.id for p in select_personas(personas, ["religion"], "x")} == {"christian", "muslim", "jewish", "hindu", "atheist"}
    with pytest.raises(FalseRefusalError, match="unknown persona klingon"):
        select_personas(personas, ["klingon"], "x")


def test_scripted_backend_plants_persona_effect_deterministically(suite_parts) -> None:
    personas, phrasings, tasks = suite_parts
    cases = draw_cases(tasks, personas, phrasings, samples=300, seed=0)
    backend = ScriptedBackend("scripted:base=0.1,persona.muslim=0.2,rho=0.5")
    answers = backend.generate([request_for(c) for c in cases], 32)
    assert answers == backend.generate([request_for(c) for c in cases], 32)
    rate = lambda pid: sum("can't" in a.text for a, c in zip(answers, cases) if c.persona == pid) / 900  # noqa: E731
    assert 0.07 < rate(BASELINE_ID) < 0.13 and 0.26 < rate("muslim") < 0.34


def test_scripted_spec_rejects_unknown_keys() -> None:
    with pytest.raises(FalseRefusalError, match="unknown key 'colour'"):
        ScriptedSpec.parse("scripted:colour=1")


def test_dataset_loader_maps_columns_and_labels(tmp_path: Path, suite_parts) -> None:
    _, _, tasks = suite_parts
    nli = next(t for t in tasks if t.task.id == "nli").task
    rows = [
        {"sentence1": "A man plays.", "sentence2": "Someone plays.", "gold": 0},
        {"sentence1": "A dog runs.", "sentence2": "A cat sleeps.", "gold": 2},
        {"sentence1": "Unlabelled.", "sentence2": "Row.", "gold": -1},
        *({"sentence1": f"Filler {i}.", "sentence2": "Row.", "gold": 1} for i in range(8)),  # 1 of 11 dropped: < 10%
    ]
    path = tmp_path / "snli.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    items, dropped = load_dataset_items(nli, str(path), {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold"},
                                        {0: "entailment", 1: "neutral", 2: "contradiction"})
    assert [(i.fields["premise"], i.label) for i in items][:2] == [("A man plays.", "entailment"), ("A dog runs.", "contradiction")]
    assert len(items) == 10 and dropped == (1, 11)
    csv_path = tmp_path / "items.csv"
    csv_path.write_text("premise,hypothesis,label\nA,B,neutral\n")
    assert load_dataset_items(nli, str(csv_path))[0][0].label == "neutral"
    with pytest.raises(FalseRefusalError, match="no column"):
        load_dataset_items(nli, str(path))


def test_hub_dataset_without_network_is_a_clear_error(suite_parts) -> None:
    _, _, tasks = suite_parts
    with pytest.raises(FalseRefusalError, match="stanfordnlp/snli"):
        load_dataset_items(tasks[0].task, "stanfordnlp/snli")


def test_task_file_with_unknown_placeholder_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("id: t\nlabels: [a, b]\nfields: [text]\nparaphrases:\n  - {id: p, forcing_level: forced, template: '{txt}'}\nitems:\n  - {text: hi, label: a}\n")
    with pytest.raises(FalseRefusalError, match=r"t.yaml: paraphrase 'p' uses an unknown placeholder"):
        load_task_file(path)


def test_release_budget_has_no_repeated_block_and_a_larger_one_uses_the_factorial_once(suite_parts) -> None:
    # blocks are a permutation of item x paraphrase x phrasing (66 x 9 x 3 = 1782 per task), drawn without replacement
    personas, phrasings, tasks = suite_parts
    from falserefusal.design.sampler import blocks_per_task, factorial_size, sampling_notes

    def blocks(cases):
        return [(c.task, c.item_id, c.paraphrase_id, c.phrasing_id) for c in cases if c.persona == personas[0].id]

    drawn = blocks(draw_cases(tasks, personas[:1], phrasings, samples=1225, seed=0))
    assert len(drawn) == 3 * 1225 and len(set(drawn)) == len(drawn)
    assert sampling_notes(tasks, phrasings, 1225) == ()
    size = factorial_size(tasks[0], phrasings)
    assert size == len(tasks[0].items) * 9 * len(phrasings)
    whole = blocks(draw_cases(tasks[:1], personas[:1], phrasings, samples=size + 500, seed=0))
    assert len(whole) == size == len(set(whole)) and blocks_per_task(tasks[:1], phrasings, size + 500) == {"nli": size}
    assert "each is asked once" in sampling_notes(tasks[:1], phrasings, size + 500)[0]
