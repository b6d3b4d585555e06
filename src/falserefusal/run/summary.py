"""The terminal summary of both front ends: refusal and non-answer rates per persona x task, verdicts, cache, files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd

from falserefusal.analysis import records_frame
from falserefusal.generation.models import model_labels
from falserefusal.run.results import RESULTS_FILE, RUN_FILE
from falserefusal.types import BASELINE_ID, Record

if TYPE_CHECKING:
    from falserefusal.run.pipeline import RunResult


def cache_summary(stats: Mapping[str, Any]) -> str:
    """One line for the terminal: what came from the cache and what the model was asked for."""
    if not stats.get("enabled"):
        return "cache: off (--no-cache)"
    verb = "re-labelled from" if stats.get("rescore") else "from"
    line = (
        f"cache: {stats.get('hits', 0)} generations {verb} {stats.get('path')}, {stats.get('generated', 0)} generated"
    )
    if stats.get("undecided"):
        line += (
            f"; {stats['undecided']} of them were cut short when an earlier detector had decided and this one has"
            " not (their labels may change with more text; fix: rerun without --rescore to regenerate them)"
        )
    return line


def replaced_results_line(report_dir: Path) -> str:
    """The terminal's note that a run's files replaced an earlier run's in the same folder (see README "The report")."""
    return (
        f"note: replaced the previous run's {RESULTS_FILE}, {RUN_FILE} and index.html in {report_dir} "
        "(pass --report-dir to keep both)"
    )


def format_usage(usage: Mapping[str, Any]) -> str:
    """One line: cases used versus the fixed budget."""
    share = usage["cases_used"] / usage["cases_budget"] if usage["cases_budget"] else 1.0
    return (
        f"sequential stop: {usage['cases_used']} of {usage['cases_budget']} cases per model "
        f"({100 * share:.0f}% of the fixed budget; {usage['blocks_used']} of {usage['blocks_budget']} request blocks)"
    )


def rate_table(records: Sequence[Record], outcome: str = "refusal") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rate of one detector outcome (refusal by default) and number of generations per persona (rows, baseline
    first) x model/task (columns), for the terminal summary; with several models the columns are (model label, task)."""
    frame = records_frame(records)
    if frame.empty:
        return pd.DataFrame(), pd.DataFrame()
    frame["refused"] = frame["outcome"] == outcome
    several = frame["model"].nunique() > 1
    if several:
        # labels from the models in run order, as the gate ids get them (two models named alike get -1, -2 alike)
        frame["model"] = frame["model"].map(model_labels(list(frame["model"].unique())))
    table = frame.pivot_table(
        index="persona", columns=["model", "task"] if several else "task", values="refused", aggfunc=["mean", "count"]
    )
    order = [BASELINE_ID] + sorted(p for p in table.index if p != BASELINE_ID)
    table = table.reindex(order)
    return table["mean"], table["count"]


def non_answer_line(records: Sequence[Record]) -> str:
    """One line on answers read as non-answers (loops, echoes, gibberish): how many, and the cell with the most."""
    table, counts = rate_table(records, "non_answer")
    if table.empty:
        return "non-answers: none"
    total = int(sum(r.outcome == "non_answer" for r in records))
    line = (
        f"non-answers (not refusals; loops, echoes, gibberish): {total} of {len(records)} "
        f"({100 * total / len(records):.1f}%)"
    )
    if total:
        stacked = table.stack(list(range(table.columns.nlevels)), future_stack=True).dropna()
        persona, *column = stacked.idxmax()
        line += f"; most under {persona} on {'/'.join(map(str, column))}: {100 * stacked.max():.1f}%"
    return line


def format_rate_table(records: Sequence[Record], outcome: str = "refusal") -> str:
    table, counts = rate_table(records, outcome)
    if table.empty:
        return "no generations"
    formatted = table.map(lambda x: f"{100 * x:5.1f}%" if pd.notna(x) else "   -  ")
    formatted.columns = [c if isinstance(c, str) else "/".join(c) for c in formatted.columns]
    # generations behind each rate: one number when every cell of the row has the same (the paired design)
    low, high = counts.min(axis=1).astype(int), counts.max(axis=1).astype(int)
    formatted["n per cell"] = [str(a) if a == b else f"{a}-{b}" for a, b in zip(low, high)]
    return formatted.to_string()


def summary_lines(result: RunResult, message_chars: int | None = None) -> list[tuple[str, str | None]]:
    """The run's summary as (line, style) pairs, style None, "red" (fails CI) or "yellow" (a warning): what
    `falserefusal run` prints and what pytest's terminal summary writes, from one place. Gate messages are cut
    to `message_chars` when given (pytest's summary: its failure reports hold the whole message)."""
    from falserefusal.gating.custom import CUSTOM_PREFIX
    from falserefusal.gating.kinds import ci_failed
    from falserefusal.gating.messages import format_verdict_counts

    suite, records, outcomes = result.suite, result.records, result.outcomes
    policy = suite.profile.inconclusive
    lines: list[tuple[str, str | None]] = [
        (
            f"models: {', '.join(suite.models)} | profile: {suite.profile.name} | seed: {suite.config.seed} | "
            f"samples: {suite.samples} blocks per task | {len(records)} generations",
            None,
        )
    ]
    lines += [(f"sampling: {note}", "yellow") for note in suite.notes]
    lines += [(format_rate_table(records), None), (non_answer_line(records), None)]
    if suite.profile.sequential:
        lines.append((format_usage(result.metadata["budget"]), None))
    lines.append((format_verdict_counts(outcomes, policy), None))
    shown = (
        ("FAIL",) if policy == "pass" else ("FAIL", "INCONCLUSIVE")
    )  # under `pass` inconclusive gates are counted only
    lines += [
        ("  " + o.message[:message_chars], "red" if ci_failed(o, policy) else "yellow")
        for o in outcomes
        if o.verdict in shown
    ]
    # custom gates are listed whatever their verdict (the built-in ones are in the table)
    lines += [
        ("  " + o.message[:message_chars], None)
        for o in outcomes
        if o.spec.kind.startswith(CUSTOM_PREFIX) and o.verdict not in shown
    ]
    if result.metadata.get("cache"):
        lines.append((cache_summary(result.metadata["cache"]), None))
    report_dir = suite.config.path(suite.config.report_dir)
    lines.append((f"results: {report_dir / RESULTS_FILE}", None))
    if result.replaced:
        lines.append((replaced_results_line(report_dir), "yellow"))
    if result.report_path is not None:
        lines.append((f"report: {result.report_path}", None))
    if result.report_error is not None:
        lines.append((f"report: not written ({result.report_error})", "red"))
    return lines
