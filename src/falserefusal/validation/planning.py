"""The budget planner (`falserefusal plan`): request blocks per task for every gate type to FAIL and to PASS."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from falserefusal.types import FalseRefusalError
from falserefusal.validation.power import (
    _check,
    block_mean_blocks,
    disparity_gate_blocks,
    disparity_pass_blocks,
    excess_variance,
    noninferiority_persona_variance,
    noninferiority_variance,
    rate_gate_blocks,
    rate_pass_blocks,
)


@dataclass(frozen=True)
class PlanRow:
    gate: str
    gates: int  # of this type in the suite
    truth: str  # what the gate must detect
    level: float  # one-sided level its FAIL test is planned at (Bonferroni: where Holm starts)
    blocks: int | None  # request blocks per task to FAIL the truth `truth` (None: item heterogeneity leaves a floor)
    cases: int  # generations per model for the whole suite
    blocks_pass: int | None = None  # request blocks per task to PASS the truth `truth_pass` (None: it cannot PASS)
    truth_pass: str = ""
    level_pass: float = 0.0  # one-sided level of its PASS test (alpha, unadjusted: gating.kinds.pass_alpha)


@dataclass(frozen=True)
class Plan:
    assumptions: dict[str, Any]
    rows: tuple[PlanRow, ...]

    @property
    def blocks(self) -> int:
        """Blocks per task so that every gate type reaches the power, to FAIL and to PASS."""
        return max(max(row.blocks or 0, row.blocks_pass or 0) for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"assumptions": self.assumptions, "rows": [asdict(r) for r in self.rows], "blocks": self.blocks}


def plan(
    base_rate: float,
    mde: float,
    power: float = 0.8,
    alpha: float = 0.05,
    personas: int = 15,
    tasks: int = 3,
    models: int = 1,
    baseline: bool = True,
    correlation: float = 0.64,
    model_correlation: float = 0.0,
    rate_limit: float | None = None,
    disparity_limit: float = 0.02,
    margin: float = 0.03,
    persona_margin: float = 0.03,
    pass_effect: float = 0.0,
    pass_rate: float | None = None,
    item_sd: float = 0.0,
    items: int = 66,
    non_answer_limit: float | None = None,
    non_answer_rate: float = 0.0,
    intersections: int = 0,
    excess_limit: float = 0.05,
) -> Plan:
    """Blocks per task each gate type needs to FAIL, with `power`, a truth `mde` beyond its limit, and to PASS a truth
    `pass_effect` below its tolerance (`pass_rate` for the refusal-rate gate; default the base rate) (see module doc).
    With `non_answer_limit` (a profile's max_non_answer_rate) each family has one more gate, the non-answer rate,
    planned as the refusal-rate gate (PASS truth `non_answer_rate`). With `intersections` (of 3 markers each, counted
    in `personas` too), each family has that many intersectional_excess gates (tolerance `excess_limit`): the block-mean
    test of X_b = (y_I - y_0) - Σ_m (y_m - y_0), Var(X_b) from `excess_variance` (markers at the base rate)."""
    _check("base-rate", base_rate, 0.0, 1.0)
    _check("mde", mde, 0.0, 1.0)
    _check("power", power, 0.0, 1.0)
    _check("alpha", alpha, 0.0, 0.5)
    for name, value in (("correlation", correlation), ("model-correlation", model_correlation)):
        if not 0.0 <= value <= 1.0:
            raise FalseRefusalError(f"--{name} {value}: must lie in [0, 1]")
    if personas < 1 or tasks < 1 or models < 1:
        raise FalseRefusalError("--personas, --tasks and --models must be at least 1")
    limit = base_rate if rate_limit is None else rate_limit
    passing_rate = base_rate if pass_rate is None else pass_rate
    if not 0.0 <= pass_effect < 1.0:
        raise FalseRefusalError(f"--pass-effect {pass_effect}: must lie in [0, 1)")
    if non_answer_limit is not None:
        _check("non-answer-limit", non_answer_limit, 0.0, 1.0)
    conditions = personas + 1
    per_family = (1 + personas) * (2 if baseline else 1) + (non_answer_limit is not None) + max(0, intersections)
    families = tasks * models
    level = alpha / (families * per_family)
    level_pass = alpha  # each PASS test at alpha (intersection-union; falserefusal.gating.kinds.pass_alpha)
    per_task_cases = conditions * models * tasks

    def row(gate: str, count: int, truth: str, blocks: int | None, blocks_pass: int | None, truth_pass: str) -> PlanRow:
        cases = (blocks or 0) * per_task_cases
        return PlanRow(gate, count * families, truth, level, blocks, cases, blocks_pass, truth_pass, level_pass)

    def block_mean_pass(variance: float, tolerance: float) -> int | None:
        if pass_effect >= tolerance:
            return None
        return block_mean_blocks(variance, tolerance - pass_effect, level_pass, power)

    rows = [
        row(
            "refusal_rate",
            1,
            f"task refusal rate {limit + mde:.3f} vs limit {limit:.3f}",
            rate_gate_blocks(limit, mde, level, power, conditions, correlation),
            rate_pass_blocks(limit, passing_rate, level_pass, power, conditions, correlation),
            f"rate {passing_rate:.3f}",
        ),
        *(
            [
                row(
                    "non_answer_rate",
                    1,
                    f"task non-answer rate {non_answer_limit + mde:.3f} vs limit {non_answer_limit:.3f}",
                    rate_gate_blocks(non_answer_limit, mde, level, power, conditions, correlation),
                    rate_pass_blocks(non_answer_limit, non_answer_rate, level_pass, power, conditions, correlation),
                    f"rate {non_answer_rate:.3f}",
                )
            ]
            if non_answer_limit is not None
            else []
        ),
        row(
            "persona_disparity",
            personas,
            f"persona minus no-persona {disparity_limit + mde:+.3f} vs limit {disparity_limit:+.3f}",
            disparity_gate_blocks(base_rate, disparity_limit, mde, level, power, correlation, item_sd, items),
            disparity_pass_blocks(
                base_rate, disparity_limit, pass_effect, level_pass, power, correlation, item_sd, items
            ),
            f"{pass_effect:+.3f}",
        ),
    ]
    if intersections > 0:
        rows.append(
            row(
                "intersectional_excess",
                intersections,
                f"intersection's minus its 3 markers' disparities {excess_limit + mde:+.3f} vs {excess_limit:+.3f}",
                block_mean_blocks(excess_variance(base_rate, excess_limit + mde, 3, correlation), mde, level, power),
                block_mean_pass(excess_variance(base_rate, pass_effect, 3, correlation), excess_limit),
                f"{pass_effect:+.3f}",
            )
        )
    if baseline:
        rows.append(
            row(
                "noninferiority",
                1,
                f"candidate minus baseline model {margin + mde:+.3f} vs margin {margin:+.3f}",
                block_mean_blocks(
                    noninferiority_variance(base_rate, margin + mde, conditions, correlation, model_correlation),
                    mde,
                    level,
                    power,
                ),
                block_mean_pass(
                    noninferiority_variance(base_rate, pass_effect, conditions, correlation, model_correlation), margin
                ),
                f"{pass_effect:+.3f}",
            )
        )
        rows.append(
            row(
                "noninferiority_persona",
                personas,
                f"candidate's persona gap minus baseline model's {persona_margin + mde:+.3f} vs margin "
                f"{persona_margin:+.3f}",
                block_mean_blocks(
                    noninferiority_persona_variance(base_rate, persona_margin + mde, correlation, model_correlation),
                    mde,
                    level,
                    power,
                ),
                block_mean_pass(
                    noninferiority_persona_variance(base_rate, pass_effect, correlation, model_correlation),
                    persona_margin,
                ),
                f"{pass_effect:+.3f}",
            )
        )
    assumptions = {
        "base_rate": base_rate,
        "mde": mde,
        "power": power,
        "alpha": alpha,
        "personas": personas,
        "tasks": tasks,
        "models": models,
        "baseline": baseline,
        "correlation": correlation,
        "model_correlation": model_correlation,
        "rate_limit": limit,
        "disparity_limit": disparity_limit,
        "margin": margin,
        "persona_margin": persona_margin,
        "pass_effect": pass_effect,
        "pass_rate": passing_rate,
        "item_sd": item_sd,
        "items": items,
        "non_answer_limit": non_answer_limit,
        "non_answer_rate": non_answer_rate,
        **({"intersections": intersections, "excess_limit": excess_limit} if intersections > 0 else {}),
        "gates_per_family": per_family,
        "families": families,
        "level": level,
        "level_pass": level_pass,
    }
    return Plan(assumptions, tuple(rows))


def format_plan(result: Plan) -> str:
    a = result.assumptions
    lines = [
        f"Request blocks per task to FAIL a truth {a['mde']:.3f} beyond each gate's limit, and to PASS a truth "
        f"{a['pass_effect']:+.3f} (refusal rate {a['pass_rate']:.3f}) below it, each with power {a['power']:.2f}",
        f"(base refusal rate {a['base_rate']:.3f}; {a['personas']} personas + the no-persona condition = "
        f"{a['personas'] + 1} cases per block; {a['tasks']} task(s) x {a['models']} model(s) = {a['families']} "
        f"families of {a['gates_per_family']} gates; each FAIL test at the Bonferroni level alpha {a['alpha']} / "
        f"{a['families'] * a['gates_per_family']} = {a['level']:.2e}, where Holm starts; each PASS test at alpha "
        f"{a['level_pass']:g};",
        f"correlation of two conditions of one request {a['correlation']}, of the two models on one case "
        f"{a['model_correlation']}; answers share a latent draw with that probability, else independent"
        + (
            f"; disparity rows: item heterogeneity sd {a['item_sd']:g} over {a['items']} items)"
            if a["item_sd"]
            else ")"
        ),
        "",
        f"{'gate':<24} {'gates':>5}  {'to FAIL':>8}  {'to PASS':>8}  {'cases/model':>11}  FAIL truth; PASS truth",
    ]
    for r in result.rows:
        passing = "-" if r.blocks_pass is None else str(r.blocks_pass)
        failing = "-" if r.blocks is None else str(r.blocks)
        lines.append(
            f"{r.gate:<24} {r.gates:>5}  {failing:>8}  {passing:>8}  {r.cases:>11}  {r.truth}; "
            + (f"{r.truth_pass}" if r.blocks_pass is not None else f"{r.truth_pass} cannot PASS (not below the limit)")
        )
    lines += [
        "",
        f"paired design: --samples {result.blocks} request blocks per task reach the power for every gate type, "
        "to FAIL and to PASS (blocks/task columns; a task's factorial of distinct blocks caps the budget)",
    ]
    return "\n".join(lines)
