"""The `falserefusal` command line: a second thin front end over the runner (exit 1 = a gate failed, 2 = usage)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from falserefusal.options import OPTIONS, add_options, resolve
from falserefusal.types import FalseRefusalError


def _cmd_run(args: argparse.Namespace) -> int:
    from falserefusal.runner import RunConfig, format_rate_table, run, RESULTS_FILE

    values = {option.name: resolve(option, getattr(args, option.dest)) for option in OPTIONS}
    result = run(RunConfig.from_options(values, root="."))
    print(format_rate_table(result.records))
    failed = [o for o in result.outcomes if not o.passed]
    print(f"gates: {len(result.outcomes) - len(failed)} passed, {len(failed)} failed")
    for outcome in failed:
        print("  " + outcome.message)
    print(f"results: {result.suite.config.path(result.suite.config.report_dir) / RESULTS_FILE}")
    return 1 if failed else 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": ("run the suite (same options as the pytest plugin) and write results", lambda p: add_options(p.add_argument), _cmd_run),
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
