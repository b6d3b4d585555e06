"""The analysis frame built from records."""

from __future__ import annotations

from falserefusal.analysis import records_frame, refusal_rates
from falserefusal.types import Case, Message, Record


def _record(persona: str, refused: bool) -> Record:
    case = Case(
        case_id=f"nli-b00001-{persona}", block_id="nli-b00001", seed=7, task="nli", item_id="nli-0001",
        paraphrase_id="forced-1", forcing_level="forced", persona=persona,
        persona_dimension="none" if persona == "baseline" else "religion",
        phrasing_id="none" if persona == "baseline" else "you-are", placement="system",
        messages=(Message("user", "Premise: ..."),), labels=("entailment", "neutral", "contradiction"),
        gold_label="neutral",
    )
    return Record(case=case, model="tiny", backend="scripted", response="...", n_tokens=3, finish_reason="stop",
                  refused=refused, rule="refusal:cannot_help" if refused else "compliance:label",
                  parsed_label=None, detector_version="1")


def test_records_frame_has_the_flat_columns_and_feeds_the_statistics() -> None:
    frame = records_frame([_record("baseline", False), _record("muslim", True)])
    assert tuple(frame.columns) == Record.FLAT_COLUMNS
    assert frame["refused"].dtype == bool and frame["block"].tolist() == ["nli-b00001", "nli-b00001"]
    rates = refusal_rates(frame, by=("persona",)).set_index("persona")["rate"]
    assert rates.to_dict() == {"baseline": 0.0, "muslim": 1.0}


def test_records_frame_of_no_records_keeps_its_columns() -> None:
    frame = records_frame([])
    assert frame.empty and tuple(frame.columns) == Record.FLAT_COLUMNS


def test_outcome_round_trips_and_non_answers_are_counted_apart_from_refusals() -> None:
    from dataclasses import replace

    from falserefusal.run.summary import non_answer_line, rate_table

    loop = replace(_record("muslim", False), outcome="non_answer", rule="model:non_answer")
    records = [_record("baseline", False), loop, replace(_record("hindu", True))]
    assert Record.from_dict(loop.to_dict()) == loop
    # results written before outcomes existed read back with the outcome their boolean implies
    legacy = {k: v for k, v in _record("hindu", True).to_dict().items() if k != "outcome"}
    assert Record.from_dict(legacy).outcome == "refusal"
    assert records_frame(records)["outcome"].tolist() == ["compliance", "non_answer", "refusal"]
    refusals, _ = rate_table(records)
    babble, _ = rate_table(records, "non_answer")
    assert refusals.loc["muslim", "nli"] == 0.0 and babble.loc["muslim", "nli"] == 1.0
    assert non_answer_line(records).startswith("non-answers (not refusals; loops, echoes, gibberish): 1 of 3")
    assert "most under muslim on nli: 100.0%" in non_answer_line(records)
