"""The HTML report on the scripted backend: planted effects reach the verdict and the evidence, model text is
escaped, degenerate runs (no refusals, one task, several models) render, and saved results rebuild it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from falserefusal.cli import main
from falserefusal.report import build_report
from falserefusal.run.config import RunConfig, default_options
from falserefusal.run.pipeline import RunResult, outcomes_from_results, run
from falserefusal.run.project import DEFAULT_FIXTURES, DEFAULT_THRESHOLDS
from falserefusal.run.results import read_results
from falserefusal.types import BASELINE_ID

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "scripted:base=0.05,persona.muslim=0.3"
INJECTION = '<script>alert(1)</script></table><img src=x onerror="alert(2)">'


def run_scripted(report_dir: Path, models: list[str], samples: int, tasks: list[str] | None = None,
                 personas: list[str] | None = None) -> RunResult:
    options = default_options()
    options.update({
        "model": models, "samples": samples, "report-dir": str(report_dir), "no-progress": True, "profile": "release",
        "tasks": tasks or [], "personas": personas or [], "seed": 5,
    })
    return run(RunConfig.from_options(options, root=str(ROOT)))


def section(html: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', html, flags=re.S)
    assert match, f"no section {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    report_dir = tmp_path_factory.mktemp("planted")
    # 60 blocks: since blocks are drawn without replacement (and the 2 pp tolerance), 40 no longer fail nli at seed 5
    result = run_scripted(report_dir, [PLANTED], samples=60, tasks=["nli", "offensiveness"])
    return result, build_report(result.metadata, result.records, result.outcomes, report_dir)


def test_planted_persona_fails_in_the_verdict_and_shows_paired_evidence(planted) -> None:
    result, path = planted
    failed = {(o.spec.kind, o.spec.task, o.spec.persona) for o in result.outcomes if not o.passed}
    assert ("persona_disparity", "nli", "muslim") in failed  # the planted effect is found by the gates
    html = path.read_text()
    verdict = section(html, "verdict")
    assert f"FAIL — {len(failed)} of {len(result.outcomes)} gates failed" in verdict
    assert "<b>muslim</b>" in verdict and "release" in verdict and "seed <b>5</b>" in verdict
    evidence = section(html, "evidence")
    assert "persona disparity: nli · muslim" in evidence
    assert "with persona: muslim — REFUSED" in evidence
    assert "baseline (no persona) — answered" in evidence  # the same request without the persona
    assert "refusal:" in evidence and "compliance:" in evidence  # the detector rules that fired
    # sections in the order the issue asks for
    order = [html.index(f'<section id="{name}">') for name in
             ("verdict", "heatmap", "disparities", "sensitivity", "forcing", "regression", "evidence", "metadata")]
    assert order == sorted(order)
    assert "muslim" in section(html, "regression") and "Strongest effect: persona = muslim raises" in html


def test_report_is_self_contained(planted) -> None:
    _, path = planted
    html = path.read_text()
    assert "<script" not in html  # no scripts at all: nothing can run
    assert not re.search(r'(src|href)="(https?:)?//', html)  # no network assets
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == 4 and all(src.startswith("data:image/svg+xml;base64,") for src in images)


def test_model_text_is_escaped(planted, tmp_path: Path) -> None:
    result, _ = planted
    failing = next(o for o in result.outcomes if not o.passed and o.spec.kind == "persona_disparity")
    target = (failing.spec.model, failing.evidence[0])
    block = next(r.case.block_id for r in result.records if (r.model, r.case.case_id) == target)
    records = [
        dataclasses.replace(r, response=INJECTION + r.response)
        if (r.model, r.case.case_id) == target or (r.case.block_id == block and r.case.persona == BASELINE_ID) else r
        for r in result.records
    ]
    html = build_report(result.metadata, records, result.outcomes, tmp_path).read_text()
    assert "<script" not in html and "<img src=x" not in html
    evidence = section(html, "evidence")
    assert evidence.count("&lt;script&gt;alert(1)&lt;/script&gt;&lt;/table&gt;") == 2  # persona and baseline side
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in evidence


def test_run_without_refusals_says_so_and_passes(tmp_path: Path) -> None:
    result = run_scripted(tmp_path, ["scripted:base=0"], samples=8, tasks=["nli"], personas=["religion"])
    html = build_report(result.metadata, result.records, result.outcomes, tmp_path).read_text()
    # 8 blocks show no gate below its limit either: none fails, all 6 are INCONCLUSIVE (warned, not failed, in release)
    assert "PASS with 6 INCONCLUSIVE — 0 of 6 gates passed, 6 inconclusive (inconclusive: warn), none failed" in section(html, "verdict")
    assert "no refusals" in section(html, "verdict")
    assert "no refusals" in section(html, "sensitivity")
    assert "No estimates: no refusals" in section(html, "regression")
    assert "no failed gates" in section(html, "evidence")


def test_several_models_and_one_task(tmp_path: Path) -> None:
    models = ["scripted:base=0.05,name=alpha", "scripted:base=0.05,persona.jewish=0.4,name=beta"]
    result = run_scripted(tmp_path, models, samples=40, tasks=["politeness"], personas=["religion"])
    html = build_report(result.metadata, result.records, result.outcomes, tmp_path).read_text()
    verdict = section(html, "verdict")
    assert "models:" in verdict and all(m in verdict for m in models)
    assert "<td>beta</td><td>politeness</td><td><b>jewish</b></td>" in verdict  # the model column appears
    assert "· beta" in section(html, "evidence")
    heatmap = section(html, "heatmap")
    assert "<td>alpha</td><td>politeness</td><td>baseline</td>" in heatmap
    assert "<td>beta</td><td>politeness</td><td>jewish</td>" in heatmap
    assert "model has one level" not in html  # model is a factor of the regression here


def test_cli_report_rebuilds_the_report_from_saved_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    code = main(["run", "--model", PLANTED, "--samples", "30", "--tasks", "nli", "--personas", "religion",
                 "--profile", "release", "--seed", "2", "--report-dir", str(run_dir), "--no-progress",
                 "--fixtures-dir", str(DEFAULT_FIXTURES), "--thresholds", str(DEFAULT_THRESHOLDS)])
    assert code == 1  # the planted muslim effect fails its gate
    assert (run_dir / "index.html").is_file() and (run_dir / "results.jsonl").is_file()
    assert f"report: {run_dir / 'index.html'}" in capsys.readouterr().out
    rebuilt_dir = tmp_path / "rebuilt"
    assert main(["report", str(run_dir / "results.jsonl"), "--report-dir", str(rebuilt_dir)]) == 0
    assert "gates: 0 pass, 1 fail, 5 inconclusive (inconclusive: warn); 1 of 6 fail CI" in capsys.readouterr().out

    def stable(path: Path) -> str:  # everything but the build time and the rebuild command line
        text = path.read_text()
        text = re.sub(r"computed in [0-9.]+ s", "", text)
        return re.sub(r"<tr><th>report rebuilt with</th><td>.*?</td></tr>", "", text)

    assert stable(rebuilt_dir / "index.html") == stable(run_dir / "index.html")


def test_outcomes_from_results_equal_the_run_outcomes(planted) -> None:
    result, path = planted
    metadata, records = read_results(path.parent / "results.jsonl")
    assert [o.to_dict() for o in outcomes_from_results(metadata, records)] == [o.to_dict() for o in result.outcomes]


def test_cli_report_rejects_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: results file not found" in capsys.readouterr().err


def test_few_clusters_warn_and_no_regression_headline_has_an_unbounded_interval(tmp_path: Path) -> None:
    # `make run`'s shape: 12 blocks per task, 3 tasks, at most 36 item clusters
    result = run_scripted(tmp_path, ["scripted:base=0.1,persona.muslim=0.2,paraphrase.forced-2=0.3"], samples=12)
    regression = section(build_report(result.metadata, result.records, result.outcomes, tmp_path).read_text(), "regression")
    clusters = int(re.search(r"Warning: only (\d+) clusters \(dataset items\): below 42", regression).group(1))
    assert clusters <= 36 and f"{clusters} clusters." in regression
    reading = re.search(r'<p class="reading">(.*?)</p>', regression, flags=re.S).group(1)
    headline = re.search(r"95% CI ([\d.]+)–([\d.]+)", reading)
    assert headline is None or float(headline.group(2)) / float(headline.group(1)) <= 100, reading


def _forest_inputs() -> tuple:
    """Two panels, three personas: one gate of each verdict, and a wide two-sided CI on the PASS gate."""
    import pandas as pd

    rows, bounds = [], {}
    #            persona: (estimate, ci_low, ci_high, lower, upper, verdict); limit 0.02
    planted = {"pass": (0.0, -0.03, 0.03, -0.012, 0.012, "PASS"), "fail": (0.2, 0.12, 0.28, 0.14, 0.26, "FAIL"),
               "unsure": (0.01, -0.04, 0.06, -0.02, 0.05, "INCONCLUSIVE")}
    for task, shift in (("nli", 0.0), ("politeness", 0.2)):  # the second panel's FAIL lies further right
        for persona, (estimate, ci_low, ci_high, lower, upper, verdict) in planted.items():
            shift_of = shift if verdict == "FAIL" else 0.0
            rows.append({"model": "m", "task": task, "persona": persona, "n_pairs": 100, "risk_difference": estimate + shift_of,
                         "ci_low": ci_low + shift_of, "ci_high": ci_high + shift_of})
            bounds[("m", task, persona)] = (lower + shift_of, upper + shift_of, verdict)
    families = [("m", "nli"), ("m", "politeness")]
    return pd.DataFrame(rows), list(planted), families, {"m": "m"}, {family: 0.02 for family in families}, bounds


def test_forest_panels_share_one_x_range_and_draw_the_gated_bound_in_the_verdict_colour() -> None:
    from matplotlib.colors import to_hex

    from falserefusal.report import figures

    table, personas, families, labels, limits, bounds = _forest_inputs()
    figure = figures.forest_figure(table, personas, families, labels, limits, bounds, no_refusals=False)
    panels = [axes for axes in figure.axes if axes.has_data()]
    assert len(panels) == 2
    assert panels[0].get_xlim() == panels[1].get_xlim()
    low, high = panels[0].get_xlim()
    assert low <= -4.0 and high >= 48.0  # every interval of both panels is inside it
    for axes in panels:
        bars = {to_hex(line.get_color()): line.get_xdata() for line in axes.get_lines() if line.get_linewidth() >= 4}
        limit = 2.0  # pp
        # PASS: estimate to the upper bound, left of the limit, though its two-sided CI crosses it
        assert max(bars[figures.PASS_COLOR]) < limit
        assert min(bars[figures.FAIL_COLOR]) > limit  # FAIL: from the lower bound, right of the limit
        inconclusive = bars[figures.INCONCLUSIVE_COLOR]
        assert min(inconclusive) < limit < max(inconclusive)
        assert "limit +2.0 pp" in axes.get_title() and "1 FAIL, 1 INCONCLUSIVE, 1 PASS" in axes.get_title()
    legend = " ".join(text.get_text() for text in figure.legends[0].get_texts())
    for word in ("PASS", "FAIL", "INCONCLUSIVE", "limit", "two-sided CI"):
        assert word in legend


def test_heatmap_says_each_rate_gate_with_its_bound() -> None:
    from falserefusal.report.figures import gate_line

    assert gate_line(0.01, 0.038, 0.05, "PASS") == "PASS\nupper bound 3.8%\n< limit 5.0%"
    assert gate_line(0.12, 0.2, 0.05, "FAIL") == "FAIL\nlower bound 12.0%\n> limit 5.0%"
    assert gate_line(0.013, 0.06, 0.05, "INCONCLUSIVE") == "INCONCLUSIVE\n1.3% to 6.0%\nspans limit 5.0%"


def test_report_says_why_the_model_factor_has_no_index_in_a_one_model_run(planted) -> None:
    _, path = planted
    sensitivity = section(path.read_text(), "sensitivity")
    assert "one model in this run: nothing to compare" in sensitivity
    assert "– – –" not in sensitivity
    assert "Wasserstein index ι̂ (plug-in)" in sensitivity


@pytest.mark.parametrize("argv, expected", [
    (["/x/.venv/lib/python3.11/site-packages/pytest/__main__.py", "tests/refusal", "--samples", "4"],
     "python -m pytest tests/refusal --samples 4"),
    (["/x/.venv/bin/pytest", "tests/refusal", "--model", "scripted:base=0.05"], "pytest tests/refusal --model scripted:base=0.05"),
    (["/x/.venv/bin/falserefusal", "run", "--model", "a model"], "falserefusal run --model 'a model'"),
    (["/x/src/falserefusal/__main__.py", "run"], "python -m falserefusal run"),
])
def test_recorded_command_is_one_a_user_can_rerun(argv: list[str], expected: str) -> None:
    from falserefusal.run.results import rerunnable_command

    assert rerunnable_command(argv) == expected


def test_the_report_says_how_well_the_detector_reads_open_ended_and_other_language_tasks(tmp_path: Path) -> None:
    """Issue 14: a run with open-ended tasks or other languages shows the detector's measured accuracy for them."""
    mixed = run_scripted(tmp_path / "mixed", ["scripted:base=0.1"], samples=3, tasks=["nli", "story", "nli_de"],
                         personas=["muslim"])
    html = build_report(mixed.metadata, mixed.records, mixed.outcomes, tmp_path / "mixed").read_text()
    panel = html[html.index('id="detector-measured"'):html.index('<section id="disparities">')]
    assert "open-ended tasks" in panel and "0.55 (17/31" in panel and "German prompts" in panel
    assert "Spanish prompts" not in panel  # only the run's languages
    plain = run_scripted(tmp_path / "plain", ["scripted:base=0.1"], samples=3, tasks=["nli"], personas=["muslim"])
    assert 'id="detector-measured"' not in build_report(plain.metadata, plain.records, plain.outcomes,
                                                        tmp_path / "plain").read_text()
