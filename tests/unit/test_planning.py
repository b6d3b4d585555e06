"""Sample-size planning: the formulas against hand computations and the dependence model against simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from falserefusal.cli import main
from falserefusal.gating.profile import load_profile
from falserefusal.run.project import DEFAULT_THRESHOLDS
from falserefusal.types import FalseRefusalError
from falserefusal.validation.planning import plan
from falserefusal.validation.power import (
    block_mean_blocks,
    block_mean_power,
    disparity_gate_blocks,
    disparity_pass_blocks,
    linear_variance,
    noninferiority_persona_variance,
    noninferiority_variance,
    rate_gate_blocks,
    rate_pass_blocks,
    restricted_p01,
)


def test_disparity_gate_at_margin_zero_is_connors_mcnemar_formula() -> None:
    base, mde, level, power, corr = 0.05, 0.05, 0.001, 0.8, 0.64
    p11 = corr * base + (1 - corr) * base * (base + mde)  # shared draw: min(p_a, p_b) = base
    p10, p01 = base + mde - p11, base - p11
    psi, delta = p10 + p01, p10 - p01
    connor = (norm.isf(level) * math.sqrt(psi) + norm.isf(1 - power) * math.sqrt(psi - delta**2)) ** 2 / delta**2
    assert disparity_gate_blocks(base, 0.0, mde, level, power, corr) == math.ceil(connor)


def test_restricted_p01_at_margin_zero_is_half_the_discordance() -> None:
    assert restricted_p01(0.08, 0.02, 0.0) == pytest.approx(0.05)


def test_rate_gate_is_the_one_sample_formula_times_the_design_effect() -> None:
    p0, p1, level, power = 0.05, 0.09, 0.0005, 0.8
    cases = (norm.isf(level) * math.sqrt(p0 * (1 - p0)) + norm.isf(1 - power) * math.sqrt(p1 * (1 - p1))) ** 2 / 0.04**2
    expected = math.ceil(math.ceil(cases) * (1 + 15 * 0.5) / 16)
    assert rate_gate_blocks(p0, 0.04, level, power, 16, 0.5) == expected


def _mixture_answers(rng: np.random.Generator, rates: list[float], blocks: int, rho: float, model_seed_shared: bool) -> np.ndarray:
    """The scripted backend's dependence: each answer uses the block's draw with probability rho, else its own."""
    block_draw = rng.random((blocks, 1))
    own = rng.random((blocks, len(rates)))
    use_block = rng.random((blocks, len(rates))) < rho
    u = np.where(use_block, block_draw, own)
    return (u < np.asarray(rates)).astype(float)


def test_persona_noninferiority_variance_matches_a_simulation_of_the_scripted_dependence() -> None:
    rng = np.random.default_rng(0)
    blocks, rho, base, excess = 400_000, 0.8, 0.05, 0.05
    candidate = _mixture_answers(rng, [base + excess, base], blocks, rho, False)
    reference = _mixture_answers(rng, [base, base], blocks, rho, False)  # an independent model
    x = (candidate[:, 0] - candidate[:, 1]) - (reference[:, 0] - reference[:, 1])
    assert noninferiority_persona_variance(base, excess, rho**2, 0.0) == pytest.approx(x.var(), rel=0.02)


def test_task_noninferiority_variance_matches_a_simulation() -> None:
    rng = np.random.default_rng(1)
    blocks, rho, m = 200_000, 0.8, 4
    candidate = _mixture_answers(rng, [0.08] * m, blocks, rho, False)
    reference = _mixture_answers(rng, [0.05] * m, blocks, rho, False)
    x = (candidate - reference).mean(axis=1)
    assert noninferiority_variance(0.05, 0.03, m, rho**2, 0.0) == pytest.approx(x.var(), rel=0.02)


def test_linear_variance_of_one_indicator_is_bernoulli() -> None:
    assert linear_variance([1.0], [0.2], np.ones((1, 1))) == pytest.approx(0.16)


def test_block_mean_power_and_blocks_are_inverse() -> None:
    variance, mde, level = 0.07, 0.04, 0.0005
    blocks = block_mean_blocks(variance, mde, level, 0.8)
    assert block_mean_power(variance, mde, level, blocks) >= 0.8 > block_mean_power(variance, mde, level, blocks - 1)


def test_more_gates_or_smaller_effects_need_more_blocks() -> None:
    base = plan(0.05, 0.04)
    assert plan(0.05, 0.04, personas=30).blocks > base.blocks
    assert plan(0.05, 0.03).blocks > base.blocks
    assert plan(0.05, 0.04, baseline=False).blocks < base.blocks
    assert [r.gate for r in plan(0.05, 0.04, baseline=False).rows] == ["refusal_rate", "persona_disparity"]
    assert base.assumptions["level"] == pytest.approx(0.05 / (3 * 32))


def test_correlated_checkpoints_need_fewer_blocks() -> None:
    # the non-inferiority rows (the budget itself is set by PASSing a zero persona disparity, which has one model)
    correlated, independent = plan(0.05, 0.04, model_correlation=0.8).rows[2:], plan(0.05, 0.04).rows[2:]
    assert all(c.blocks < i.blocks and c.blocks_pass < i.blocks_pass for c, i in zip(correlated, independent))


@pytest.mark.parametrize("kwargs", [{"base_rate": 0.0}, {"mde": 1.5}, {"power": 1.0}, {"alpha": 0.7}, {"correlation": 2.0}])
def test_bad_planning_input_is_a_usage_error(kwargs: dict) -> None:
    values = {"base_rate": 0.05, "mde": 0.04, **kwargs}
    with pytest.raises(FalseRefusalError):
        plan(**values)


RELEASE_PLAN = ["plan", "--base-rate", "0.05", "--mde", "0.04", "--power", "0.9", "--pass-effect", "0.005",
                "--item-sd", "0.5"]


def test_plan_command_prints_blocks_per_gate_type_and_gives_the_release_budget(capsys: pytest.CaptureFixture[str]) -> None:
    # the command thresholds.yaml quotes for the release profile's samples
    assert main(RELEASE_PLAN) == 0
    out = capsys.readouterr().out
    assert "noninferiority_persona" in out and "--samples 1718" in out and "each PASS test at alpha 0.05" in out
    assert load_profile(DEFAULT_THRESHOLDS, "release").samples == 1718
    assert main([*RELEASE_PLAN, "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["blocks"] == 1718 and data["assumptions"]["families"] == 3
    disparity = next(row for row in data["rows"] if row["gate"] == "persona_disparity")
    assert disparity["level_pass"] == 0.05 and disparity["level"] == pytest.approx(0.05 / 96)
    assert disparity["blocks_pass"] == 1618  # PASSing +0.5 pp against 2 pp with 90% power
    rate = next(row for row in data["rows"] if row["gate"] == "refusal_rate")
    assert rate["blocks_pass"] is None  # a model refusing exactly at the limit cannot PASS it


def test_pass_sizing_is_the_mirror_formula_and_grows_as_the_truth_nears_the_tolerance() -> None:
    base, delta, level, power, corr = 0.05, 0.02, 0.001, 0.8, 0.64
    p11 = base * base + corr * (base - base * base)
    p10 = p01 = base - p11
    sigma0 = math.sqrt(2 * restricted_p01(p10, p01, delta) + delta * (1 - delta))
    expected = (norm.isf(level) * sigma0 + norm.isf(1 - power) * math.sqrt(p10 + p01)) ** 2 / delta**2
    assert disparity_pass_blocks(base, delta, 0.0, level, power, corr) == math.ceil(expected)
    assert disparity_pass_blocks(base, delta, 0.01, level, power, corr) > math.ceil(expected)
    assert disparity_pass_blocks(base, delta, 0.02, level, power, corr) is None
    assert rate_pass_blocks(0.05, 0.03, level, power, 16, corr) < rate_pass_blocks(0.05, 0.04, level, power, 16, corr)


def test_item_heterogeneity_costs_power_on_a_disparity_and_nothing_on_a_zero_one() -> None:
    from falserefusal.validation.power import disparity_power, item_design_effect

    level, corr = 0.05 / 48, 0.64
    plain = disparity_gate_blocks(0.05, 0.02, 0.03, level, 0.8, corr)
    heterogeneous = disparity_gate_blocks(0.05, 0.02, 0.03, level, 0.8, corr, item_sd=0.5, items=66)
    assert heterogeneous > plain
    assert disparity_power(0.05, 0.02, 0.05, level, heterogeneous, corr, 0.5, 66) >= 0.8
    assert disparity_pass_blocks(0.05, 0.02, 0.0, level, 0.8, corr, item_sd=0.5) == disparity_pass_blocks(0.05, 0.02, 0.0, level, 0.8, corr)
    assert item_design_effect(66 * 26, 66, 0.01) == pytest.approx(1.25)
    assert disparity_gate_blocks(0.05, 0.02, 0.03, level, 0.8, corr, item_sd=2.0, items=5) is None  # the items' floor
