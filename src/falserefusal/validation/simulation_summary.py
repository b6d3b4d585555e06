"""The simulation's summary: rates with Wilson intervals over seeds, and the printed table."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from falserefusal.analysis.rates import wilson_interval
from falserefusal.validation.simulation_plan import RANKED_FACTORS


def _rate(successes: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, n)
    return {"rate": successes / n if n else float("nan"), "ci": [low, high], "k": successes, "n": n}


def _ranking_summary(results: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The ranking scenario over replicates; None when it was not run (`ranking=False`)."""
    rankings = [x["ranking"] for x in results if x.get("ranking") is not None]
    if not rankings:
        return None
    r = len(rankings)
    return {
        "recovered": _rate(sum(x["recovered"] for x in rankings), r),
        "distinguishable": {f: _rate(sum(x["distinguishable"][f] for x in rankings), r) for f in RANKED_FACTORS},
        "mean_index": {f: float(np.mean([x["index"][f] for x in rankings])) for f in RANKED_FACTORS},
        "planted_index": {f: float(np.mean([x["planted_index"][f] for x in rankings])) for f in RANKED_FACTORS},
        "order": list(RANKED_FACTORS),
        "nested_paraphrase_above_task": _rate(sum(x["nested_above_task"] for x in rankings), r),
        "mean_nested_paraphrase_index": float(np.mean([x["nested_paraphrase_index"] for x in rankings])),
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _ci(rate: Mapping[str, Any]) -> str:
    return f"{_pct(rate['rate'])} [{_pct(rate['ci'][0])}, {_pct(rate['ci'][1])}] ({rate['k']}/{rate['n']})"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The simulation table a reviewer reads."""
    ff, pw, rk, cw = summary["false_fail"], summary["power_detail"], summary["ranking"], summary["ci_width"]
    vd = summary["verdict_detail"]
    s = summary["settings"]
    budget = pw["budget_for_target"]
    tolerance = vd["tolerance"]
    rows = [
        (
            "(a) family-wise false-fail rate, null",
            _ci(ff["null"]["any"]),
            f"{ff['n_gates']} gates, alpha {ff['alpha']:g}, item_sd {ff['item_sd']:g}; {summary['scenarios']['null']}",
        ),
        (
            "    of which a rate gate / a disparity gate",
            f"{_pct(ff['null']['refusal_rate']['rate'])} / {_pct(ff['null']['persona_disparity']['rate'])}",
            "(a replicate can fail both)",
        ),
        (
            "(a) family-wise false-fail rate, boundary",
            _ci(ff["boundary"]["any"]),
            f"every gate at its limit; {summary['scenarios']['boundary']}",
        ),
        (
            "    of which a rate gate / a disparity gate",
            f"{_pct(ff['boundary']['refusal_rate']['rate'])} / {_pct(ff['boundary']['persona_disparity']['rate'])}",
            "",
        ),
        (
            "(b) FAIL per gate, +{:g} pp at {:g}%".format(100 * s["power_shift"], 100 * s["power_base"]),
            _ci(pw["per_gate"]),
            f"planned {_pct(pw['planned'])}; {pw['budget']} blocks/task; {summary['scenarios']['power']}",
        ),
        (
            "    persona flagged in any task",
            _ci(pw["any_task"]),
            f"other disparity gates failing: {pw['other_disparity_fails_per_replicate']:.3f} per replicate",
        ),
        (
            f"    budget reaching {_pct(pw['target'])} power",
            "not found" if budget is None else f"{budget} blocks/task",
            "searched: " + ", ".join(f"{k}: {_pct(v)}" for k, v in pw["search"].items()),
        ),
        (
            f"(b) FAIL per gate beyond the {100 * tolerance:g} pp tolerance",
            _ci(vd["exceeded"]["fail_per_gate"]),
            f"+{100 * vd['exceeded']['effect']:.2f} pp: planned {_pct(vd['exceeded']['planned_fail_power'])} with "
            "the item term, "
            f"{_pct(vd['planner'].get('exceed_fail_power_without_items', float('nan')))} without it",
        ),
        (
            "(b) PASS per gate, well below the tolerance",
            _ci(vd["well_below"]["pass_per_gate"]),
            f"+{100 * vd['well_below']['effect']:.2f} pp: planned {_pct(vd['well_below']['planned_pass_power'])}; "
            f"PASS in every task {_pct(vd['well_below']['pass_in_every_task']['rate'])}",
        ),
        (
            "(b) false PASS per gate, at the tolerance",
            _ci(vd["at_tolerance"]["false_pass_per_gate"]) if "at_tolerance" in vd else "-",
            f"boundary scenario, every persona +{100 * tolerance:g} pp; each PASS test at alpha "
            f"{vd['at_tolerance']['alpha']:g}: every gate PASSes {_ci(vd['at_tolerance']['every_gate_pass'])}"
            if "at_tolerance" in vd
            else "",
        ),
        (
            "(b) PASS per gate, zero effect (null)",
            _ci(vd["zero_effect"]["pass_per_gate"]),
            f"planned {_pct(vd['zero_effect']['planned_pass_power'])}; null verdicts "
            + ", ".join(f"{k} {v}" for k, v in vd["null_verdicts"].items()),
        ),
    ]
    if rk is not None:
        rows += [
            (
                "(c) ranking recovery " + " > ".join(rk["order"]),
                _ci(rk["recovered"]),
                "mean index " + ", ".join(f"{f} {rk['mean_index'][f]:.3f}" for f in rk["order"]),
            ),
            ("    planted (noise-free) index", "", ", ".join(f"{f} {rk['planted_index'][f]:.3f}" for f in rk["order"])),
            (
                "    distinguishable from noise",
                "",
                ", ".join(f"{f} {_pct(rk['distinguishable'][f]['rate'])}" for f in rk["order"]),
            ),
            (
                "    nested task:paraphrase index >= task's",
                _ci(rk["nested_paraphrase_above_task"]),
                f"mean nested index {rk['mean_nested_paraphrase_index']:.3f} (finer partition of task: never below it)",
            ),
        ]
    rows += [
        (
            "(d) CI width paired / independent, planted",
            f"{cw['planted']['ratio']:.3f}",
            f"{100 * cw['planted']['paired']:.2f} pp vs {100 * cw['planted']['independent']:.2f} pp "
            "at equal generations "
            f"({cw['blocks']} blocks)",
        ),
        (
            "    same, persona without effect",
            f"{cw['null']['ratio']:.3f}",
            f"{100 * cw['null']['paired']:.2f} pp vs {100 * cw['null']['independent']:.2f} pp",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [
        f"falserefusal simulate: {summary['replicates']} replicates, seed {s['seed']}, profile {s['profile']}, "
        f"rho {s['rho']:g}, {summary['budgets']['generations_per_model']} generations per model and replicate, "
        f"{summary['elapsed_s']} s",
        f"{'measure':<{width}}  {'value [95% CI] (k/n)':<{value_width}}  setting",
    ]
    lines += [f"{name:<{width}}  {value:<{value_width}}  {note}" for name, value, note in rows]
    return "\n".join(lines)
