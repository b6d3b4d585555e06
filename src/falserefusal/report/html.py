"""The HTML report: one self-contained page from a run's metadata, records and gate outcomes; pytest-html's summary.

`report_context` turns metadata, records and gate outcomes into plain values (every statistic comes from
`falserefusal.analysis` or the gate outcomes); the Jinja2 templates (autoescape on: model text is untrusted)
lay them out; `build_report` writes the file. `summary_html` is the short version pytest-html shows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2

from falserefusal.analysis import fit_logistic, persona_disparities, records_frame, refusal_rates, sensitivity_table
from falserefusal.analysis.detector_audit import DetectorAudit
from falserefusal.analysis.sensitivity import DEFAULT_FACTORS
from falserefusal.gating.kinds import GateOutcome
from falserefusal.generation.models import model_labels
from falserefusal.report import figures
from falserefusal.report.detector_measured import measured_accuracy
from falserefusal.report.intersections import intersection_panel
from falserefusal.report.language_section import language_panel
from falserefusal.report.sections import (
    _audit_section,
    _comparison,
    _evidence,
    _finite,
    _forest_alpha,
    _metadata_rows,
    _new_items_intervals,
    _num,
    _ordered,
    _pct,
    _pp,
    _pvalue,
    _rate_gates,
    _regression_reading,
    _verdict,
    _why_undefined,
)
from falserefusal.types import BASELINE_ID, Record

REPORT_FILE = "index.html"


#: bootstrap resamples of the sensitivity CIs: enough for a readable interval, cheap on 50k-row runs
REPORT_BOOTSTRAP = 200


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("falserefusal.report", "templates"),
        autoescape=True,  # every template, whatever its extension: responses may contain <script>
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_pct, pp=_pp, pvalue=_pvalue, num=_num)
    return env


def report_context(
    metadata: Mapping[str, Any],
    records: Sequence[Record],
    outcomes: Sequence[GateOutcome],
    n_boot: int = REPORT_BOOTSTRAP,
    command_line: str | None = None,
    audit: DetectorAudit | None = None,
) -> dict[str, Any]:
    """Every value the templates show, computed once; with an `audit`, the detector panel and corrected rates."""
    started = time.perf_counter()
    frame = records_frame(records)
    models = _ordered(metadata.get("models") or [], frame["model"])
    if not models:
        models = list(dict.fromkeys(o.spec.model for o in outcomes))
    labels = model_labels(models)
    tasks = _ordered(metadata.get("tasks") or [], frame["task"])
    personas = _ordered([BASELINE_ID, *(metadata.get("personas") or [])], frame["persona"])
    refusals = int(frame["refused"].sum())
    no_refusals = refusals == 0
    seed = metadata.get("seed", 0)
    context: dict[str, Any] = {
        "verdict": _verdict(metadata, outcomes, models, labels, len(frame)),
        "no_refusals": no_refusals,
        "n_records": len(frame),
        "n_refusals": refusals,
        "several_models": len(models) > 1,
        "audit": None,
    }
    if frame.empty:
        context.update(empty=True, evidence=[], comparison=[], metadata=_metadata_rows(metadata, models, command_line))
        context["build_s"] = time.perf_counter() - started
        return context
    context["empty"] = False

    # 2. heatmap persona x task
    cells = refusal_rates(frame, by=["model", "task", "persona"])
    columns = [(m, t) for m in models for t in tasks if ((cells["model"] == m) & (cells["task"] == t)).any()]
    context["heatmap"] = figures.heatmap(cells, personas, columns, labels, no_refusals, _rate_gates(outcomes))
    context["heatmap_rows"] = cells.assign(model=cells["model"].map(labels)).to_dict(orient="records")
    # non-answers (loops, echoes, gibberish) per cell: not refusals, but a persona that makes a model babble is news
    babble = refusal_rates(frame.assign(refused=frame["outcome"] == "non_answer"), by=["model", "task", "persona"])
    context["non_answer_rows"] = babble.assign(model=babble["model"].map(labels)).to_dict(orient="records")
    context["non_answer_total"] = int((frame["outcome"] == "non_answer").sum())
    context["languages"] = language_panel(frame, personas, labels)  # None unless the run asks in several languages
    context["detector_measured"] = measured_accuracy(records)  # open-ended tasks, other languages: what was measured

    # 3. forest plot of persona disparities, with CIs adjusted over each gate family
    alpha, alpha_text = _forest_alpha(outcomes)
    disparities = _new_items_intervals(persona_disparities(frame, alpha=alpha), outcomes, alpha)
    families = [(m, t) for m, t in columns]
    limits = {o.spec.family: o.spec.limit for o in outcomes if o.spec.kind == "persona_disparity"}
    bounds = {
        (o.spec.model, o.spec.task, o.spec.persona): (o.bound, o.upper_bound, o.verdict)
        for o in outcomes
        if o.spec.kind == "persona_disparity"
    }
    others = [p for p in personas if p != BASELINE_ID]
    context["forest"] = (
        figures.forest(disparities, others, families, labels, limits, bounds, no_refusals) if others else None
    )
    context["forest_alpha"] = alpha_text
    context["disparity_rows"] = disparities.assign(model=disparities["model"].map(labels)).to_dict(orient="records")
    context["intersections"] = intersection_panel(frame, metadata, outcomes, labels)  # None without intersections

    # 4. Wasserstein sensitivity with the noise floor
    factors = [f for f in DEFAULT_FACTORS if f in frame.columns]
    if "language" in frame.columns and frame["language"].nunique() > 1:
        factors.insert(factors.index("task") + 1 if "task" in factors else len(factors), "language")
    sensitivity = sensitivity_table(frame, factors=factors, n_boot=n_boot, seed=int(seed) if _finite(seed) else 0)
    context["sensitivity"] = figures.sensitivity_bars(sensitivity, no_refusals)
    context["sensitivity_rows"] = [
        {**row, "undefined": _why_undefined(row)} for row in sensitivity.to_dict(orient="records")
    ]
    context["n_boot"] = n_boot

    # 5. forcing level and paraphrase
    levels = refusal_rates(frame, by=["model", "task", "forcing_level"])
    wordings = refusal_rates(frame, by=["model", "task", "forcing_level", "paraphrase"])
    context["forcing"] = figures.forcing_plot(levels, wordings, tasks, models, labels, no_refusals)
    context["forcing_rows"] = levels.assign(model=levels["model"].map(labels)).to_dict(orient="records")
    context["paraphrase_rows"] = wordings.assign(model=wordings["model"].map(labels)).to_dict(orient="records")

    # 6. logistic regression
    regression = fit_logistic(frame)
    rows = regression.table.to_dict(orient="records")
    context["regression"] = {
        "main_rows": [r for r in rows if r["factor"] != "paraphrase"],
        "paraphrase_rows": [r for r in rows if r["factor"] == "paraphrase"],
        "method": regression.method,
        "notes": list(regression.notes),
        "formula": regression.formula,
        "n": regression.n,
        "reading": _regression_reading(regression.table, regression.notes),
        "warning": regression.warning,
        "clusters": regression.clusters,
    }

    # 1b. candidate versus baseline model
    context["comparison"] = _comparison(metadata, records, frame, labels)

    # 6b. detector audit
    if audit is not None:
        context["audit"] = _audit_section(audit, frame, labels, int(seed) if _finite(seed) else 0, metadata)

    # 7. evidence, 8. metadata
    context["evidence"] = _evidence(outcomes, records, labels)
    context["metadata"] = _metadata_rows(metadata, models, command_line)
    context["build_s"] = time.perf_counter() - started
    return context


def build_report(
    metadata: Mapping[str, Any],
    records: Sequence[Record],
    outcomes: Sequence[GateOutcome],
    out_dir: Path,
    n_boot: int = REPORT_BOOTSTRAP,
    command_line: str | None = None,
    audit: DetectorAudit | None = None,
) -> Path:
    """Write `out_dir/index.html` (self-contained: figures inline, no scripts, no network) and return its path;
    `audit` (from `falserefusal.detection.audit.load_audit`) adds the detector panel and the rates corrected for its
    error."""
    context = report_context(metadata, records, outcomes, n_boot=n_boot, command_line=command_line, audit=audit)
    html = _environment().get_template("index.html.j2").render(**context)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    # text that UTF-8 cannot hold (a lone surrogate in a hand-edited results file) is shown as its backslash escape;
    # encoded before anything is written, so a failure never leaves a partial .tmp beside the report
    data = html.encode("utf-8", "backslashreplace")
    staging = path.with_suffix(".html.tmp")
    try:
        staging.write_bytes(data)
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def summary_html(
    metadata: Mapping[str, Any],
    records: Sequence[Record],
    outcomes: Sequence[GateOutcome],
    href: str | None,
) -> str:
    """The verdict, the heatmap and a link to the full report: what pytest-html puts in its summary."""
    frame = records_frame(records)
    models = _ordered(metadata.get("models") or [], frame["model"])
    labels = model_labels(models)
    tasks = _ordered(metadata.get("tasks") or [], frame["task"])
    personas = _ordered([BASELINE_ID, *(metadata.get("personas") or [])], frame["persona"])
    heatmap = None
    if not frame.empty:
        cells = refusal_rates(frame, by=["model", "task", "persona"])
        columns = [(m, t) for m in models for t in tasks if ((cells["model"] == m) & (cells["task"] == t)).any()]
        heatmap = figures.heatmap(cells, personas, columns, labels, not frame["refused"].any(), _rate_gates(outcomes))
    return (
        _environment()
        .get_template("summary.html.j2")
        .render(
            verdict=_verdict(metadata, outcomes, models, labels, len(frame)),
            heatmap=heatmap,
            href=href,
        )
    )
