"""The command line's tools beside `run`: plan, simulate, simulate-release, bench and audit (options and commands)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _plan_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--base-rate",
        type=float,
        required=True,
        help="refusal rate of the reference condition (no persona, baseline model)",
    )
    add("--mde", type=float, required=True, help="the truth beyond each gate's limit to detect, e.g. 0.04")
    add("--power", type=float, default=0.8, help="chance of failing such a gate (default: 0.8)")
    add("--alpha", type=float, default=0.05, help="suite-wide false-fail rate (default: 0.05)")
    # counts, not ids (as --tasks / --personas of `run` are): --n-personas / --n-tasks; the short names stay accepted
    add("--n-personas", "--personas", dest="personas", type=int, default=15, help="personas per block (default: 15)")
    add("--n-tasks", "--tasks", dest="tasks", type=int, default=3, help="number of tasks (default: 3)")
    add("--models", type=int, default=1, help="candidate models in one run (default: 1)")
    add("--no-baseline", action="store_true", help="plan a run without --baseline-model (no non-inferiority gates)")
    add(
        "--correlation",
        type=float,
        default=0.64,
        help="correlation of two conditions' answers to one request (default: 0.64, the scripted backend's rho=0.8)",
    )
    add(
        "--model-correlation",
        type=float,
        default=0.0,
        help="correlation of the candidate's and the baseline model's answers to one case (default: 0, independent)",
    )
    add("--rate-limit", type=float, default=None, help="the refusal-rate gate's limit (default: --base-rate)")
    add("--disparity-limit", type=float, default=0.02, help="the persona disparity gate's tolerance (default: 0.02)")
    add("--margin", type=float, default=0.03, help="non-inferiority margin per task (default: 0.03)")
    add("--persona-margin", type=float, default=0.03, help="non-inferiority margin per task x persona (default: 0.03)")
    add(
        "--pass-effect",
        type=float,
        default=0.0,
        help="the true disparity / difference below the tolerance that should PASS (default: 0)",
    )
    add(
        "--pass-rate",
        type=float,
        default=None,
        help="the true refusal rate below the rate limit that should PASS (default: --base-rate)",
    )
    add(
        "--item-sd",
        type=float,
        default=0.0,
        help="per-item heterogeneity of the disparity rows (log-scale sd of an item's factor; default: 0, none)",
    )
    add("--items", type=int, default=66, help="dataset items per task (default: 66, the bundled tasks)")
    add(
        "--non-answer-limit",
        type=float,
        default=None,
        help="plan a non-answer-rate gate with this limit (a profile's max_non_answer_rate; default: none, off)",
    )
    add(
        "--non-answer-rate",
        type=float,
        default=0.0,
        help="the true non-answer rate below --non-answer-limit that should PASS (default: 0)",
    )
    excess_help = "plan this many intersectional_excess gates per task (count them in --n-personas too; default: 0)"
    add("--intersections", type=int, default=0, help=excess_help)
    add("--excess-limit", type=float, default=0.05, help="their max_intersectional_excess (default: 0.05)")
    add("--json", action="store_true", help="print the plan as one JSON object")


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from falserefusal.validation.planning import format_plan, plan

    result = plan(
        args.base_rate,
        args.mde,
        args.power,
        args.alpha,
        args.personas,
        args.tasks,
        args.models,
        not args.no_baseline,
        args.correlation,
        args.model_correlation,
        args.rate_limit,
        args.disparity_limit,
        args.margin,
        args.persona_margin,
        args.pass_effect,
        args.pass_rate,
        args.item_sd,
        args.items,
        args.non_answer_limit,
        args.non_answer_rate,
        args.intersections,
        args.excess_limit,
    )
    print(json.dumps(result.to_dict()) if args.json else format_plan(result))
    return 0


def _simulate_release_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--replicates", type=int, default=200, help="seeds of the two scripted models (default: 200)")
    add("--samples", type=int, default=None, help="request blocks per task (default: the profile's)")
    add("--profile", default="release-sequential", help="profile in thresholds.yaml (default: release-sequential)")
    add("--base-rate", type=float, default=0.05, help="both models' refusal rate (default: 0.05)")
    add(
        "--clear-rate",
        type=float,
        default=0.02,
        help="both models' refusal rate in the clear-pass scenario (default: 0.02)",
    )
    add("--effect", type=float, default=0.05, help="the candidate's extra refusals under --persona (default: 0.05)")
    add("--persona", default="muslim", help="persona with the planted effect (default: muslim)")
    add("--rho", type=float, default=0.8, help="scripted models' within-request correlation parameter (default: 0.8)")
    add("--tasks", default="", help="comma-separated task ids (default: all)")
    add(
        "--workers",
        "--jobs",
        dest="workers",
        type=int,
        default=1,
        help="processes (default: 1; --jobs is the same, as in simulate)",
    )
    add("--json", action="store_true", help="also print one JSON object on the last line")


def _cmd_simulate_release(args: argparse.Namespace) -> int:
    import json

    from falserefusal.run.options import comma_list
    from falserefusal.validation.release_simulation import (
        ReleaseSimulation,
        format_release_simulation,
        simulate_release,
    )

    result = simulate_release(
        ReleaseSimulation(
            replicates=args.replicates,
            samples=args.samples,
            base_rate=args.base_rate,
            clear_rate=args.clear_rate,
            effect=args.effect,
            persona=args.persona,
            rho=args.rho,
            profile=args.profile,
            tasks=tuple(comma_list(args.tasks)),
            workers=args.workers,
        )
    )
    print(format_release_simulation(result))
    if args.json:
        print(json.dumps(result))
    return 0


def _simulate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicates", type=int, default=None, help="seeds to simulate (default: 200; --quick: 20)")
    parser.add_argument("--seed", type=int, default=0, help="root seed; replicate seeds derive from it (default: 0)")
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="request blocks per task (default: the profile's samples in thresholds.yaml)",
    )
    parser.add_argument("--rho", type=float, default=0.8, help="scripted within-block correlation (default: 0.8)")
    parser.add_argument("--profile", default="release", help="gating profile in thresholds.yaml (default: release)")
    parser.add_argument(
        "--thresholds",
        default=None,
        metavar="PATH",
        help="gating policy file (default: ./thresholds.yaml, else the packaged one)",
    )
    parser.add_argument(
        "--fixtures-dir",
        default=None,
        metavar="DIR",
        help="folder with personas.yaml and tasks/ (default: ./fixtures, else the packaged one)",
    )
    parser.add_argument(
        "--jobs",
        "--workers",
        dest="jobs",
        type=int,
        default=0,
        metavar="N",
        help="worker processes (default: every CPU; --workers is the same, as in simulate-release)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small, fast run (for tests): 20 replicates of 120 blocks"
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the summary as one JSON object on the last line"
    )
    parser.add_argument(
        "--item-sd",
        type=float,
        default=0.5,
        help="per-item heterogeneity of the gate scenarios' scripted models (item_sd=; default: 0.5)",
    )
    parser.add_argument("--no-ranking", action="store_true", help="skip the ranking (sensitivity) scenario: gates only")
    parser.add_argument("--no-budget-search", action="store_true", help="do not search the budget reaching 80%% power")
    parser.add_argument(
        "--sensitivity",
        action="store_true",
        help="check the sensitivity section instead: CI coverage of the planted index per factor and "
        "persona distinguishable when a persona gate fails (200 blocks per task unless --samples)",
    )


def _cmd_simulate_sensitivity(args: argparse.Namespace) -> int:
    import json

    from falserefusal.validation.sensitivity import (
        QUICK,
        SensitivitySettings,
        format_sensitivity_summary,
        simulate_sensitivity,
    )

    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    values.update({name: getattr(args, name) for name in ("replicates", "samples") if getattr(args, name) is not None})
    summary = simulate_sensitivity(
        SensitivitySettings(
            **values,
            seed=args.seed,
            rho=args.rho,
            profile=args.profile,
            thresholds=args.thresholds,
            fixtures=args.fixtures_dir,
            jobs=args.jobs,
        )
    )
    print(format_sensitivity_summary(summary))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    import json

    if args.sensitivity:
        return _cmd_simulate_sensitivity(args)
    from falserefusal.validation.simulation import simulate
    from falserefusal.validation.simulation_plan import QUICK, SimulationSettings
    from falserefusal.validation.simulation_summary import format_summary

    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    for name in ("replicates", "samples"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.no_budget_search:
        values["find_budget"] = False
    settings = SimulationSettings(
        **values,
        seed=args.seed,
        rho=args.rho,
        profile=args.profile,
        thresholds=args.thresholds,
        fixtures=args.fixtures_dir,
        jobs=args.jobs,
        item_sd=args.item_sd,
        ranking=not args.no_ranking,
    )
    summary = simulate(settings)
    print(format_summary(summary))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


def _add_bench_options(parser: argparse.ArgumentParser) -> None:
    from falserefusal.validation.bench import DEFAULT_CASES, BenchSettings

    d = BenchSettings()
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--cases", type=int, default=DEFAULT_CASES, help=f"cases from the sampler (default: {DEFAULT_CASES})"
    )
    parser.add_argument("--rounds", type=int, default=d.rounds, help=f"naive/suite alternations (default: {d.rounds})")
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"batch size of both paths (default: {d.batch_size})"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=d.max_new_tokens,
        help=f"token budget of both paths (default: {d.max_new_tokens})",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="sampler seed (default: 0)")
    parser.add_argument("--model", default=None, help="transformers model (default: embedded SmolLM2)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16"
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from falserefusal.validation.bench import BenchSettings, format_bench, run_bench

    settings = BenchSettings(
        cases=args.cases,
        rounds=args.rounds,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
    )
    result = run_bench(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, sort_keys=True) if args.json else format_bench(result))
    return 0


def _audit_options(parser: argparse.ArgumentParser) -> None:
    from falserefusal.detection.audit import DEFAULT_PER_STRATUM

    actions = parser.add_subparsers(dest="audit_command", required=True)
    export = actions.add_parser(
        "export",
        help="a stratified sample of a run's answers as CSV for people to label",
        description="Write a stratified sample (model x task x persona x detector outcome) of "
        "RESULTS as CSV for people to label R/P/C/N, and its strata sizes beside it.",
    )
    export.add_argument("results", metavar="RESULTS", help="a results.jsonl written by `falserefusal run` or pytest")
    export.add_argument(
        "--per-stratum",
        type=int,
        default=DEFAULT_PER_STRATUM,
        metavar="N",
        help=f"answers drawn per stratum (default: {DEFAULT_PER_STRATUM})",
    )
    export.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the draw (default: 0)")
    export.add_argument("--out", metavar="FILE", help="the CSV to write (default: audit.csv beside RESULTS)")
    export.set_defaults(audit_handler=_cmd_audit_export)
    score = actions.add_parser(
        "score",
        help="sensitivity, specificity and agreement of the detector on the labelled CSV",
        description="Check the labels of an exported audit CSV, print the detector's accuracy "
        "with 95%% intervals and write the audit summary JSON that --audit reads.",
    )
    score.add_argument("labels", metavar="LABELS", help="the CSV of `audit export` with human_label filled in")
    score.add_argument("--out", metavar="FILE", help="the summary JSON to write (default: LABELS with .json)")
    score.add_argument("--json", action="store_true", help="print the summary as one JSON object instead of the table")
    score.set_defaults(audit_handler=_cmd_audit_score)


def _cmd_audit(args: argparse.Namespace) -> int:
    return int(args.audit_handler(args))


def _cmd_audit_export(args: argparse.Namespace) -> int:
    from falserefusal.detection.audit import export_audit

    out, sidecar, sample = export_audit(
        Path(args.results), Path(args.out) if args.out else None, args.per_stratum, args.seed
    )
    print(
        f"{len(sample.rows)} answers from {len(sample.sampled)} strata of {sum(sample.sizes.values())} to label: {out}"
    )
    print(f"strata sizes (sampling weights): {sidecar}")
    print(f"fill in human_label (R, P, C or N) and note, then: falserefusal audit score {out}")
    return 0


def _cmd_audit_score(args: argparse.Namespace) -> int:
    import json

    from falserefusal.detection.audit import format_audit, score_labels

    audit, out = score_labels(Path(args.labels), Path(args.out) if args.out else None)
    if args.json:
        print(json.dumps(json.loads(out.read_text(encoding="utf-8")), sort_keys=True))
    else:
        print(format_audit(audit))
        print(f"audit summary: {out} (pass it as --audit to `falserefusal run` / `report` or pytest)")
    return 0
