"""The HTML disparity report: verdict, figures, evidence and run metadata in one self-contained index.html."""

from falserefusal.report.html import REPORT_FILE, build_report, report_context, summary_html

__all__ = ["REPORT_FILE", "build_report", "report_context", "summary_html"]
