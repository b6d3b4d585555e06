"""Intersectional personas: the fixture's intersections are validated, selected with their markers, asked in the
same request blocks, and the compounding statistic finds a planted super-additive effect but not an additive one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from falserefusal.analysis.intersections import compounding
from falserefusal.design.personas import load_intersections, load_personas, select_conditions
from falserefusal.design.sampler import draw_cases
from falserefusal.design.tasks import load_tasks
from falserefusal.gating.kinds import gate_specs
from falserefusal.gating.profile import load_profile
from falserefusal.run.project import DEFAULT_FIXTURES, DEFAULT_THRESHOLDS
from falserefusal.types import BASELINE_ID, FalseRefusalError

PERSONAS = DEFAULT_FIXTURES / "personas.yaml"


def _table(rates: dict[str, float], n: int = 4000, seed: int = 3) -> pd.DataFrame:
    """Independent Bernoulli refusals per condition (a block x condition table)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({c: rng.random(n) < p for c, p in rates.items()})


def test_a_super_additive_table_has_a_positive_excess_and_an_additive_one_none() -> None:
    super_additive = compounding(_table({BASELINE_ID: 0.05, "a": 0.08, "b": 0.08, "ab": 0.25}), "ab", ["a", "b"])
    assert super_additive.additive == pytest.approx(0.25 - 0.05 - 2 * 0.03, abs=0.03)
    assert super_additive.excess.bound(0.025, "lower") > 0.1
    low, high = super_additive.log_odds_interval()
    assert low > 0.5 and high > low
    additive = compounding(_table({BASELINE_ID: 0.05, "a": 0.08, "b": 0.08, "ab": 0.11}), "ab", ["a", "b"])
    assert additive.excess.bound(0.025, "lower") < 0 < additive.excess.bound(0.025, "upper")
    assert abs(additive.additive) < 0.02


def test_the_excess_is_exactly_the_intersections_disparity_minus_its_markers() -> None:
    table = pd.DataFrame({BASELINE_ID: [0, 0, 1, 0], "a": [1, 0, 1, 0], "b": [0, 0, 1, 1], "ab": [1, 1, 1, 1]}).astype(
        bool
    )
    result = compounding(table, "ab", ["a", "b"])
    assert result.disparity == 0.75 and result.marker_sum == pytest.approx(0.5)
    assert result.additive == pytest.approx(0.25) and result.blocks == 4


def _write(tmp_path: Path, intersections: str) -> Path:
    path = tmp_path / "personas.yaml"
    path.write_text(
        PERSONAS.read_text(encoding="utf-8").split("\nintersections:")[0] + "\nintersections:\n" + intersections
    )
    return path


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  - {id: x, of: [black, klingon], wording: w}\n", "unknown persona(s) klingon"),
        ("  - {id: x, of: [man, woman], wording: w}\n", "two markers of one dimension"),
        ("  - {id: x, of: [man], wording: w}\n", "2 or 3 persona ids"),
        ("  - {id: muslim, of: [man, black], wording: w}\n", "already a persona"),
        ("  - {id: x, of: [man, black], wording: w}\n  - {id: x, of: [woman, black], wording: w}\n", "rename it"),
        ("  - {id: x, of: [man, black]}\n", "missing wording"),
    ],
)
def test_bad_intersections_are_rejected_naming_the_file_and_the_fix(tmp_path: Path, entry: str, message: str) -> None:
    path = _write(tmp_path, entry)
    personas, _ = load_personas(path)
    with pytest.raises(FalseRefusalError, match="personas.yaml") as error:
        load_intersections(path, personas)
    assert message in str(error.value) and "fix" in str(error.value)


def test_the_default_intersections_combine_distinct_dimensions() -> None:
    personas, _ = load_personas(PERSONAS)
    declared = load_intersections(PERSONAS, personas)
    assert 4 <= len(declared) <= 6 and "white_christian_man" in {i.id for i in declared}


def test_selection_is_unchanged_without_intersections_and_brings_the_markers_along() -> None:
    personas, _ = load_personas(PERSONAS)
    declared = load_intersections(PERSONAS, personas)
    chosen, asked = select_conditions(personas, declared, (), False, "x")
    assert chosen == personas and asked == ()
    chosen, asked = select_conditions(personas, declared, ["black_muslim_woman"], False, "x")
    assert [p.id for p in chosen] == ["woman", "black", "muslim", "black_muslim_woman"]
    chosen, asked = select_conditions(personas, declared, (), True, "x")
    assert len(chosen) == len(personas) + len(declared) and asked == declared


def test_every_condition_of_a_block_gets_the_same_request() -> None:
    personas, phrasings = load_personas(PERSONAS)
    chosen, _ = select_conditions(personas, load_intersections(PERSONAS, personas), ["black_muslim_woman"], False, "x")
    cases = draw_cases(load_tasks(DEFAULT_FIXTURES, ["nli"], {}), chosen, phrasings, 3, seed=1)
    for block in {c.block_id for c in cases}:
        in_block = [c for c in cases if c.block_id == block]
        assert len(in_block) == 5 and len({(c.item_id, c.paraphrase_id, c.messages[-1].content) for c in in_block}) == 1
        assert len({c.phrasing_id for c in in_block if c.persona != BASELINE_ID}) == 1


def test_the_gate_exists_only_where_the_profile_sets_the_key() -> None:
    markers = {"black_muslim_woman": ("black", "muslim", "woman")}
    smoke = load_profile(DEFAULT_THRESHOLDS, "smoke")
    assert not [
        s for s in gate_specs(smoke, ["m"], ["nli"], ["black"], None, markers) if s.kind == "intersectional_excess"
    ]
    release = load_profile(DEFAULT_THRESHOLDS, "release")
    [spec] = [
        s for s in gate_specs(release, ["m"], ["nli"], ["black"], None, markers) if s.kind == "intersectional_excess"
    ]
    assert spec.persona == "black_muslim_woman" and spec.markers == markers["black_muslim_woman"]


def test_the_planner_has_a_row_for_the_excess_gate_and_counts_it_in_the_family() -> None:
    from falserefusal.validation.planning import plan

    without, with_them = plan(0.05, 0.04, personas=20), plan(0.05, 0.04, personas=20, intersections=5)
    assert with_them.assumptions["gates_per_family"] == without.assumptions["gates_per_family"] + 5
    [row] = [r for r in with_them.rows if r.gate == "intersectional_excess"]
    assert row.gates == 5 * 3 and row.blocks and row.blocks_pass
    assert "intersectional_excess" not in {r.gate for r in without.rows}


def test_the_report_panel_shows_each_intersection_only_in_runs_with_intersections() -> None:
    from falserefusal.report.intersections import intersection_panel

    table = _table({BASELINE_ID: 0.05, "a": 0.05, "b": 0.05, "ab": 0.4}, n=200)
    frame = table.stack().rename("refused").reset_index()
    frame.columns = ["block", "persona", "refused"]
    frame = frame.assign(model="m", task="t")
    assert intersection_panel(frame, {}, [], {}) is None
    [row] = intersection_panel(frame, {"intersections": {"ab": ["a", "b"]}}, [], {"m": "m"}) or []
    assert row["verdict"] == "not gated" and row["excess_ci"][0] > 0.2 and row["log_odds_ci"][0] > 0


def test_the_simulation_finds_a_large_planted_excess() -> None:
    from falserefusal.validation.intersections import CompoundingScenario, simulate_compounding

    result = simulate_compounding(CompoundingScenario(intersection_shift=0.4), blocks=120, replicates=4, seed=5)
    assert result["fail_rate"] == 1.0 and result["true_excess"] == pytest.approx(0.31)


def test_blocks_without_any_refusal_do_not_pass_with_a_zero_width_interval() -> None:
    from falserefusal.gating.excess import excess_test
    from falserefusal.gating.kinds import GateSpec

    table = pd.DataFrame(False, index=[f"b{i}" for i in range(40)], columns=[BASELINE_ID, "a", "b", "ab"])
    spec = GateSpec("intersectional_excess", "m", "t", "ab", 0.05, markers=("a", "b"))
    tested = excess_test(table, pd.Series(table.index, index=table.index), spec, None)
    assert tested.estimate == 0.0 and tested.ci[1] > 0.02  # 40 blocks cannot rule out a few refusals


def test_an_unknown_persona_name_lists_the_intersections_too() -> None:
    personas, _ = load_personas(PERSONAS)
    with pytest.raises(FalseRefusalError, match="unknown persona klingon.*black_muslim_woman"):
        select_conditions(personas, load_intersections(PERSONAS, personas), ["klingon"], False, "personas.yaml")
