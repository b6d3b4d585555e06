"""The report in a real browser (Debian's headless chromium): no console errors, injected model text inert,
and a full-page screenshot. Skips only when no chromium is installed (.ci/run installs it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from browser import find_chromium, open_page

from falserefusal.report import build_report
from falserefusal.run.config import RunConfig, default_options
from falserefusal.run.pipeline import run

ROOT = Path(__file__).resolve().parents[2]
INJECTION = "<script>console.error('injected script ran')</script></table></pre><b onmouseover=alert(1)>x</b>"

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")


def test_harness_catches_console_errors(tmp_path: Path) -> None:
    """The check below means something: a page that errs is caught (uncaught exception and console.error)."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom'); missingFunction();</script></body></html>")
    errors = open_page(page).errors
    assert any("boom" in e for e in errors) and any("missingFunction" in e for e in errors)


def test_report_opens_without_console_errors(tmp_path: Path) -> None:
    options = default_options()
    options.update({"model": ["scripted:base=0.05,persona.muslim=0.3,name=planted", "scripted:base=0.1,name=other"],
                    "samples": 30, "tasks": ["nli", "offensiveness"], "report-dir": str(tmp_path), "no-progress": True,
                    "profile": "release"})
    result = run(RunConfig.from_options(options, root=str(ROOT)))
    # model text is untrusted: put markup into every refusal; it must show as text and never run
    records = [dataclasses.replace(r, response=INJECTION + r.response) if r.refused else r for r in result.records]
    path = build_report(result.metadata, records, result.outcomes, tmp_path)
    page = open_page(path)
    (tmp_path / "report.png").write_bytes(page.screenshot)
    assert page.errors == [], "\n".join(page.errors)
    assert not any("injected script ran" in line for line in page.console)
    assert page.screenshot.startswith(b"\x89PNG") and page.height > 3000  # every section laid out
