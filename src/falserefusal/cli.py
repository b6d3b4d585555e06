"""The `falserefusal` command line: a second thin front end over the runner (exit 1 = a gate failed, 2 = usage)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from falserefusal.options import OPTIONS, add_options, resolve
from falserefusal.types import FalseRefusalError


def _cmd_run(args: argparse.Namespace) -> int:
    from falserefusal.runner import RunConfig, cache_summary, format_rate_table, run, RESULTS_FILE

    values = {option.name: resolve(option, getattr(args, option.dest)) for option in OPTIONS}
    result = run(RunConfig.from_options(values, root="."))
    print(format_rate_table(result.records))
    failed = [o for o in result.outcomes if not o.passed]
    print(f"gates: {len(result.outcomes) - len(failed)} passed, {len(failed)} failed")
    for outcome in failed:
        print("  " + outcome.message)
    print(cache_summary(result.metadata["cache"]))
    report_dir = result.suite.config.path(result.suite.config.report_dir)
    print(f"results: {report_dir / RESULTS_FILE}")
    from falserefusal.report import build_report

    print(f"report: {build_report(result.metadata, result.records, result.outcomes, report_dir)}")
    return 1 if failed else 0


def _configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", metavar="RESULTS", help="a results.jsonl written by `falserefusal run` or pytest")
    parser.add_argument("--report-dir", metavar="DIR", help="where index.html goes (default: the folder of RESULTS)")


def _report_command(args: argparse.Namespace) -> str:
    return f"falserefusal report {args.results}" + (f" --report-dir {args.report_dir}" if args.report_dir else "")


def _cmd_report(args: argparse.Namespace) -> int:
    """Rebuild index.html from saved results: gates re-evaluated with the profile stored in the results header."""
    from falserefusal.report import build_report
    from falserefusal.runner import outcomes_from_results, read_results

    results = Path(args.results)
    metadata, records = read_results(results)
    outcomes = outcomes_from_results(metadata, records)
    report_dir = Path(args.report_dir) if args.report_dir else results.parent
    path = build_report(metadata, records, outcomes, report_dir, command_line=_report_command(args))
    failed = [o for o in outcomes if not o.passed]
    print(f"gates: {len(outcomes) - len(failed)} passed, {len(failed)} failed")
    print(f"report: {path}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": ("run the suite (same options as the pytest plugin) and write results", lambda p: add_options(p.add_argument), _cmd_run),
    "report": ("rebuild the HTML report from a saved results.jsonl, without a model", _configure_report, _cmd_report),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="falserefusal", description="Persona false-refusal release gate for language models.")
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
