"""The `falserefusal` command line: a second thin front end over the Run (exit 1 = a gate failed, 2 = usage)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from falserefusal.cli_tools import (
    _add_bench_options,
    _audit_options,
    _cmd_audit,
    _cmd_bench,
    _cmd_plan,
    _cmd_simulate,
    _cmd_simulate_release,
    _plan_options,
    _simulate_options,
    _simulate_release_options,
)
from falserefusal.run.options import OPTIONS, add_options, project_settings, resolve
from falserefusal.types import FalseRefusalError


def _cmd_run(args: argparse.Namespace) -> int:
    from falserefusal.run.config import RunConfig
    from falserefusal.run.pipeline import run
    from falserefusal.run.summary import summary_lines

    # pyproject's falserefusal_* settings as the plugin reads them; relative paths resolve against that file's folder
    settings, config_file = project_settings(Path.cwd())
    values = {option.name: resolve(option, getattr(args, option.dest), settings.get(option.dest)) for option in OPTIONS}
    root = str(config_file.parent) if config_file is not None else "."
    result = run(RunConfig.from_options(values, root=root), report=True)
    for line, _ in summary_lines(result):
        print(line)
    return 0 if result.passed else 1  # a report that could not be written is a red line, as under pytest


def _init_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default=".", metavar="DIR", help="the project folder (default: .)")
    parser.add_argument("--force", action="store_true", help="overwrite files that are already there")


def _cmd_init(args: argparse.Namespace) -> int:
    """Copy the packaged thresholds.yaml and fixtures/ into DIR: a run from there uses them instead of the defaults."""
    from falserefusal.run.project import init_project

    written = init_project(args.dir, force=args.force)
    print(f"wrote {len(written)} files: " + ", ".join(str(p) for p in written))
    return 0


def _configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", metavar="RESULTS", help="a results.jsonl written by `falserefusal run` or pytest")
    parser.add_argument("--report-dir", metavar="DIR", help="where index.html goes (default: the folder of RESULTS)")
    parser.add_argument("--audit", metavar="FILE", help=next(o.help for o in OPTIONS if o.name == "audit"))


def _report_command(args: argparse.Namespace) -> str:
    return (
        f"falserefusal report {args.results}"
        + (f" --report-dir {args.report_dir}" if args.report_dir else "")
        + (f" --audit {args.audit}" if args.audit else "")
    )


def _cmd_report(args: argparse.Namespace) -> int:
    """Rebuild index.html from saved results: gates re-evaluated with the profile stored in the results header."""
    from falserefusal.detection.audit import load_audit
    from falserefusal.registry import make_detector
    from falserefusal.report import build_report
    from falserefusal.run.pipeline import outcomes_from_results
    from falserefusal.run.prepare import check_writable_folder
    from falserefusal.run.results import read_results, results_warnings

    results = Path(args.results)
    metadata, records = read_results(results)
    for warning in results_warnings(metadata, records, make_detector().version):
        print(f"falserefusal: warning: {results}: {warning}", file=sys.stderr)
    audit = load_audit(args.audit) if args.audit else None
    try:
        outcomes = outcomes_from_results(metadata, records, audit)
    except FalseRefusalError as error:
        raise FalseRefusalError(f"{results}: {error}") from None
    report_dir = Path(args.report_dir) if args.report_dir else results.parent
    check_writable_folder(report_dir, "--report-dir")
    path = build_report(metadata, records, outcomes, report_dir, command_line=_report_command(args), audit=audit)
    from falserefusal.gating.messages import format_verdict_counts

    print(format_verdict_counts(outcomes, (metadata.get("profile") or {}).get("inconclusive", "warn")))
    print(f"report: {path}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": (
        "run the suite (same options as the pytest plugin) and write results",
        lambda p: add_options(p.add_argument),
        _cmd_run,
    ),
    "init": (
        "copy the packaged thresholds.yaml and fixtures/ into a project folder for editing",
        _init_options,
        _cmd_init,
    ),
    "report": ("rebuild the HTML report from a saved results.jsonl, without a model", _configure_report, _cmd_report),
    "audit": (
        "audit the refusal detector: export answers for people to label, score their labels",
        _audit_options,
        _cmd_audit,
    ),
    "plan": ("request blocks per task each gate type needs (sample-size planning)", _plan_options, _cmd_plan),
    "simulate-release": (
        "simulate candidate-versus-baseline gating with scripted models: false fails, power, sequential savings",
        _simulate_release_options,
        _cmd_simulate_release,
    ),
    "simulate": (
        "validate the gates and the analysis on scripted models: false-fail rate, power, ranking, paired CI width",
        _simulate_options,
        _cmd_simulate,
    ),
    "bench": (
        "time the suite against naive batched model.generate on the same prompts",
        _add_bench_options,
        _cmd_bench,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="falserefusal", description="Persona false-refusal release gate for language models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, handler) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        configure(sub)
        sub.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except FalseRefusalError as error:
        print(f"falserefusal: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
