"""The report's matplotlib figures, each returned as an SVG data URI (self-contained, no scripts, no network).

Figures are drawn on `matplotlib.figure.Figure` objects, never through pyplot: no global state, no GUI
backend, safe inside a pytest session. Every function takes tables the analysis package computed; none
computes a statistic of its own.
"""

from __future__ import annotations

import base64
import io
import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from falserefusal.types import FORCING_LEVELS

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

FAIL_COLOR = "#c0392b"
PASS_COLOR = "#1e8449"  # the page's PASS green
INCONCLUSIVE_COLOR = "#d68910"
VERDICT_COLORS = {"FAIL": FAIL_COLOR, "PASS": PASS_COLOR, "INCONCLUSIVE": INCONCLUSIVE_COLOR}
MUTED_COLOR = "#95a5a6"
CI_COLOR = "#b8c0c6"  # the two-sided CI drawn for reading, behind what a gate decides on
DISTINGUISHABLE_COLOR = "#2c3e50"
NO_REFUSALS = "no refusals"

# text stays text (smaller, selectable); a fixed hash salt and no date keep the SVG identical between rebuilds
_RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "falserefusal",
    "font.size": 9,
    "font.family": "DejaVu Sans",
}


def data_uri(figure: Figure) -> str:
    with matplotlib.rc_context(_RC):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def message_figure(text: str, width: float = 6.0, height: float = 1.2) -> str:
    """A figure that only says why there is nothing to draw (e.g. "no refusals")."""
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(width, height))
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color=MUTED_COLOR)
        return data_uri(figure)


def _titled(figure: Figure, title: str, no_refusals: bool) -> Figure:
    """Suptitle (saying "no refusals" when that is why the panels are flat) and tight layout."""
    if no_refusals:
        title += f" — {NO_REFUSALS}"
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _titled_uri(figure: Figure, title: str, no_refusals: bool) -> str:
    return data_uri(_titled(figure, title, no_refusals))


def _column_label(model_label: str, task: str, several_models: bool) -> str:
    return f"{model_label}\n{task}" if several_models else task


def gate_line(lower: float, upper: float, limit: float, verdict: str, fmt: str = "{:.1%}") -> str:
    """A rate gate's verdict with the bound it rests on, for under a heatmap column."""
    low, high, cap = fmt.format(lower), fmt.format(upper), fmt.format(limit)
    if verdict == "FAIL":
        return f"FAIL\nlower bound {low}\n> limit {cap}"
    if verdict == "PASS":
        return f"PASS\nupper bound {high}\n< limit {cap}"
    return f"INCONCLUSIVE\n{low} to {high}\nspans limit {cap}"


def heatmap(
    rates: pd.DataFrame,
    personas: Sequence[str],
    columns: Sequence[tuple[str, str]],
    model_labels: Mapping[str, str],
    no_refusals: bool,
    gates: Mapping[tuple[str, str], tuple[float, float, float, str]] | None = None,
) -> str:
    """Refusal rate per persona (rows, baseline first) x model/task (columns), each cell with its Wilson CI; under
    each column, its refusal-rate gate (`gates`: (model, task) -> lower (Holm-adjusted) and upper bound, limit,
    verdict) in the verdict's colour."""
    several = len({model for model, _ in columns}) > 1
    lookup = {(r.model, r.task, r.persona): r for r in rates.itertuples(index=False)}
    values = np.full((len(personas), len(columns)), np.nan)
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(2.2 + 1.25 * len(columns), 1.2 + 0.42 * len(personas)))
        axes = figure.add_subplot()
        for i, persona in enumerate(personas):
            for j, key in enumerate(columns):
                row = lookup.get((*key, persona))
                if row is not None:
                    values[i, j] = row.rate
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
        vmax = max(0.05, top)
        image = axes.imshow(np.ma.masked_invalid(values), cmap="Reds", vmin=0.0, vmax=vmax, aspect="auto")
        for i, persona in enumerate(personas):
            for j, key in enumerate(columns):
                row = lookup.get((*key, persona))
                if row is None:
                    axes.text(j, i, "–", ha="center", va="center", color=MUTED_COLOR)
                    continue
                color = "white" if row.rate > 0.6 * vmax else "black"
                axes.text(
                    j,
                    i,
                    f"{row.rate:.0%}  [{row.ci_low:.0%}–{row.ci_high:.0%}]\nn={row.n}",
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color=color,
                )
        axes.set_xticks(range(len(columns)), [_column_label(model_labels[m], t, several) for m, t in columns])
        axes.set_yticks(range(len(personas)), list(personas))
        axes.xaxis.tick_top()
        axes.tick_params(length=0)
        axes.axhline(0.5, color="black", linewidth=1.2)  # the baseline row is the reference
        below = len(personas) - 0.5 + 0.15
        for j, key in enumerate(columns):
            gate = (gates or {}).get(key)
            if gate is not None:
                axes.text(
                    j,
                    below,
                    gate_line(*gate),
                    ha="center",
                    va="top",
                    fontsize=7.5,
                    color=VERDICT_COLORS.get(gate[3], PASS_COLOR),
                )
        if any(key in (gates or {}) for key in columns):
            axes.text(
                -0.6,
                below,
                "refusal-rate gate\n(all personas,\nits deciding bound)",
                ha="right",
                va="top",
                fontsize=7.5,
            )
        colorbar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
        colorbar.set_label("refusal rate")
        title = "refusal rate [95% Wilson CI], n generations"
        if no_refusals:
            title += f" — {NO_REFUSALS}"
        axes.set_title(title, fontsize=10, pad=28 if several else 18)
        return data_uri(figure)


def _verdict_counts_text(verdicts: Sequence[str]) -> str:
    return ", ".join(f"{verdicts.count(v)} {v}" for v in ("FAIL", "INCONCLUSIVE", "PASS") if verdicts.count(v))


def _shared_range(values: Iterable[float]) -> tuple[float, float]:
    """One x range for every panel: all intervals, bounds, 0 and the limits, with a margin."""
    finite = [v for v in values if math.isfinite(v)] + [0.0]
    low, high = min(finite), max(finite)
    margin = 0.06 * max(high - low, 1.0)
    return low - margin, high + margin


def forest_figure(
    table: pd.DataFrame,
    personas: Sequence[str],
    families: Sequence[tuple[str, str]],
    model_labels: Mapping[str, str],
    limits: Mapping[tuple[str, str], float],
    bounds: Mapping[tuple[str, str, str | None], tuple[float, float, str]],
    no_refusals: bool,
) -> Figure:
    """Risk difference (persona minus baseline, pp) per persona, one panel per model x task, one shared x axis.

    The thick bar, in the gate's verdict colour, is what the gate decides on: PASS, from the estimate to the
    one-sided upper bound ◁ (at alpha), which lies left of the dashed limit; FAIL, from the Holm-adjusted one-sided
    lower bound ▷, right of the limit, to the estimate; INCONCLUSIVE, from ▷ to ◁, across the limit. The thin grey line
    is the two-sided CI in `table`, for reading only. Panel titles give the limit and the verdict counts.
    """
    several = len({model for model, _ in families}) > 1
    n_cols = len({task for _, task in families})
    n_rows = math.ceil(len(families) / n_cols)
    lookup = {(r.model, r.task, r.persona): r for r in table.itertuples(index=False)}
    nan3 = (float("nan"), float("nan"), "PASS")
    shown = [
        (key, lookup[key])
        for key in lookup
        if key[:2] in set(families) and key[2] in set(personas) and lookup[key].n_pairs
    ]
    span = [100 * v for key, row in shown for v in (row.ci_low, row.ci_high, *bounds.get(key, nan3)[:2])]
    span += [100 * limits.get(family, float("nan")) for family in families]
    x_range = _shared_range(span)
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(max(6.0, 1.8 + 3.0 * n_cols), 1.3 + n_rows * (0.8 + 0.3 * len(personas))))
        grid = figure.subplots(n_rows, n_cols, squeeze=False, sharey=True, sharex=True)
        y = np.arange(len(personas))
        for index, (model, task) in enumerate(families):
            axes = grid[index // n_cols][index % n_cols]
            limit = 100 * limits.get((model, task), float("nan"))
            axes.axvline(0.0, color=MUTED_COLOR, linewidth=0.8)
            if math.isfinite(limit):
                axes.axvline(limit, color=FAIL_COLOR, linestyle="--", linewidth=1.1)
            verdicts = []
            for i, persona in enumerate(personas):
                row = lookup.get((model, task, persona))
                if row is None or not row.n_pairs:
                    continue
                lower, upper, verdict = bounds.get((model, task, persona), nan3)
                lower, upper, estimate = 100 * lower, 100 * upper, 100 * row.risk_difference
                verdicts.append(verdict)
                color = VERDICT_COLORS.get(verdict, PASS_COLOR)
                axes.plot([100 * row.ci_low, 100 * row.ci_high], [i, i], color=CI_COLOR, linewidth=1.0, zorder=1)
                start, end = {"PASS": (estimate, upper), "FAIL": (lower, estimate)}.get(verdict, (lower, upper))
                if math.isfinite(start) and math.isfinite(end):
                    axes.plot([start, end], [i, i], color=color, linewidth=4.0, solid_capstyle="butt", zorder=2)
                if verdict != "PASS" and math.isfinite(lower):
                    axes.plot(lower, i, ">", color=color, markersize=6, zorder=3)
                if verdict != "FAIL" and math.isfinite(upper):
                    axes.plot(upper, i, "<", color=color, markersize=6, zorder=3)
                axes.plot(estimate, i, "o", color=color, markerfacecolor="white", markersize=4.5, zorder=4)
            name = f"{model_labels[model]} · {task}" if several else task
            limit_text = f"limit {limit:+.1f} pp" if math.isfinite(limit) else "no limit"
            axes.set_title(f"{name} — {limit_text}\n{_verdict_counts_text(verdicts) or 'no gates'}", fontsize=9.5)
            axes.set_yticks(y, list(personas))
            axes.set_ylim(len(personas) - 0.5, -0.5)
            axes.set_xlim(*x_range)
            axes.grid(axis="x", color="#eeeeee")
            if index // n_cols == n_rows - 1 or index + n_cols >= len(families):
                axes.set_xlabel("risk difference vs baseline (pp)")
                axes.xaxis.set_tick_params(labelbottom=True)
        for index in range(len(families), n_rows * n_cols):
            grid[index // n_cols][index % n_cols].set_axis_off()
        figure.legend(
            handles=_forest_legend(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False
        )
        return _titled(figure, "persona − baseline refusal rate; thick bar: what each gate decides on", no_refusals)


def _forest_legend() -> list[Line2D]:
    bar: dict[str, Any] = {"linewidth": 4.0, "solid_capstyle": "butt", "markersize": 6}
    return [
        Line2D([], [], color=PASS_COLOR, marker="<", **bar, label="PASS: upper bound ◁ left of the limit"),
        Line2D([], [], color=FAIL_COLOR, marker=">", **bar, label="FAIL: lower bound ▷ right of the limit"),
        Line2D([], [], color=INCONCLUSIVE_COLOR, **bar, label="INCONCLUSIVE: ▷ to ◁ crosses the limit"),
        Line2D([], [], color="black", marker="o", markerfacecolor="white", linestyle="none", label="estimate"),
        Line2D([], [], color=CI_COLOR, linewidth=1.0, label="two-sided CI (not gated)"),
        Line2D([], [], color=FAIL_COLOR, linestyle="--", linewidth=1.1, label="limit (tolerance)"),
    ]


def forest(
    table: pd.DataFrame,
    personas: Sequence[str],
    families: Sequence[tuple[str, str]],
    model_labels: Mapping[str, str],
    limits: Mapping[tuple[str, str], float],
    bounds: Mapping[tuple[str, str, str | None], tuple[float, float, str]],
    no_refusals: bool,
) -> str:
    """`forest_figure` as an SVG data URI."""
    return data_uri(forest_figure(table, personas, families, model_labels, limits, bounds, no_refusals))


def sensitivity_bars(table: pd.DataFrame, no_refusals: bool) -> str:
    """Per factor: plug-in ι (bar) against its paired noise floor (red tick), and the bias-corrected ι (dot) with its
    interval for the population index (whisker)."""
    shown = table[np.isfinite(table["index"].astype(float))]
    if no_refusals or shown.empty:
        return message_figure(NO_REFUSALS if no_refusals else "no factor with two levels and a defined index")
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(7.0, 0.8 + 0.45 * len(shown)))
        axes = figure.add_subplot()
        y = np.arange(len(shown))
        colors = [DISTINGUISHABLE_COLOR if d else MUTED_COLOR for d in shown["distinguishable"]]
        axes.barh(y, shown["index"], color=colors, height=0.55, alpha=0.45)
        for i, row in enumerate(shown.itertuples(index=False)):
            axes.plot([row.ci_low, row.ci_high], [i, i], color="black", linewidth=1.2)
            axes.plot(row.index_corrected, i, "o", color="black", markersize=4)
            if math.isfinite(row.noise_floor):
                axes.plot([row.noise_floor, row.noise_floor], [i - 0.38, i + 0.38], color=FAIL_COLOR, linewidth=2)
        axes.set_yticks(y, [f"{f} ({k} levels)" for f, k in zip(shown["factor"], shown["n_levels"])])
        axes.set_ylim(len(shown) - 0.5, -0.5)
        upper = float(np.nanmax(shown[["index", "ci_high", "noise_floor"]].to_numpy(float)))
        axes.set_xlim(0.0, min(1.0, max(0.05, 1.1 * upper)))
        axes.set_xlabel("Wasserstein sensitivity index ι (0: no effect, 1: refusal determined by the factor)")
        axes.set_title(
            "bar: plug-in ι, red tick: its noise floor (bar past tick: distinguishable, dark);\n"
            "dot: bias-corrected ι, whisker: 95% CI for the population ι",
            fontsize=9,
        )
        axes.grid(axis="x", color="#eeeeee")
        return data_uri(figure)


def forcing_plot(
    levels: pd.DataFrame,
    paraphrases: pd.DataFrame,
    tasks: Sequence[str],
    models: Sequence[str],
    model_labels: Mapping[str, str],
    no_refusals: bool,
) -> str:
    """Refusal rate by forcing level (Wilson CI) per task and model; grey dots: the individual paraphrases."""
    order = [level for level in FORCING_LEVELS if level in set(levels["forcing_level"])]
    order += sorted(set(levels["forcing_level"]) - set(order))
    position = {level: i for i, level in enumerate(order)}
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(1.5 + 2.8 * len(tasks), 3.0))
        grid = figure.subplots(1, len(tasks), squeeze=False, sharey=True)[0]
        offsets = np.linspace(-0.15, 0.15, len(models)) if len(models) > 1 else [0.0]
        palette = matplotlib.colormaps["tab10"]
        for axes, task in zip(grid, tasks):
            for k, (model, offset) in enumerate(zip(models, offsets)):
                rows = levels[(levels["task"] == task) & (levels["model"] == model)]
                x = [position[level] + offset for level in rows["forcing_level"]]
                axes.errorbar(
                    x,
                    rows["rate"],
                    yerr=[rows["rate"] - rows["ci_low"], rows["ci_high"] - rows["rate"]],
                    fmt="o",
                    color=palette(k),
                    capsize=3,
                    label=model_labels[model],
                )
                words = paraphrases[(paraphrases["task"] == task) & (paraphrases["model"] == model)]
                axes.plot(
                    [position[level] + offset + 0.08 for level in words["forcing_level"]],
                    words["rate"],
                    ".",
                    color=MUTED_COLOR,
                    markersize=4,
                )
            axes.set_xticks(range(len(order)), order)
            axes.set_xlim(-0.5, len(order) - 0.5)
            axes.set_title(task, fontsize=10)
            axes.grid(axis="y", color="#eeeeee")
        grid[0].set_ylabel("refusal rate")
        if len(models) > 1:
            grid[-1].legend(fontsize=8)
        return _titled_uri(
            figure, "refusal rate by forcing level (95% Wilson CI); grey dots: each paraphrase", no_refusals
        )
