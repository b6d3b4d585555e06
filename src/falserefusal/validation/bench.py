"""The performance benchmark: the suite path against a naive batched `model.generate` on the same prompts.

(a) naive: the rendered prompts in batches, `model.generate` with a fixed `max_new_tokens` (rows end only at
    EOS, and the batch runs until its last row ends), then nothing else;
(b) suite: sampler -> backend (length buckets, decided-early stopping) -> detector -> gates -> results file.

Both run in one process on one loaded model, alternating a/b over rounds so that drift on a shared machine
hits both. Verdicts of (b) are compared case by case with the detector's reading of (a)'s full outputs.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

from falserefusal.types import Case, FalseRefusalError, Record

DEFAULT_CASES = 320


@dataclass(frozen=True)
class BenchSettings:
    cases: int = DEFAULT_CASES
    rounds: int = 3
    batch_size: int = 16
    max_new_tokens: int = 64
    seed: int = 0
    model: str | None = None  # None: the embedded SmolLM2
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float  # process CPU time: less sensitive than wall time to other load on a shared machine


@dataclass(frozen=True)
class NaiveRun:
    timing: Timing
    texts: tuple[str, ...]
    row_tokens: tuple[int, ...]  # generated tokens per row, up to and including EOS
    decode_steps: int  # sum over batches of (steps the batch ran x rows): what the model computed


def pick_cases(cases: Sequence[Case], n: int) -> list[Case]:
    """n cases spread evenly over the tasks (the sampler lists them task by task), in suite order."""
    by_task: dict[str, list[Case]] = {}
    for case in cases:
        by_task.setdefault(case.task, []).append(case)
    picked: list[Case] = []
    rank = 0
    while len(picked) < n and any(rank < len(group) for group in by_task.values()):
        picked.extend(group[rank] for group in by_task.values() if rank < len(group))
        rank += 1
    chosen = {c.case_id for c in picked[:n]}
    return [case for case in cases if case.case_id in chosen]


def _timed(function: Any) -> tuple[Any, Timing]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, Timing(time.perf_counter() - wall, time.process_time() - cpu)


def naive_generate(backend: Any, prompts: Sequence[str], batch_size: int, max_new_tokens: int) -> NaiveRun:
    """What a harness without the suite would do: batches in the given order, fixed budget, no early stop."""
    torch = backend.torch
    tokenizer, lm = backend.tokenizer, backend.lm
    eos = tokenizer.eos_token_id

    def work() -> tuple[list[str], list[int], int]:
        texts, tokens, steps = [], [], 0
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False
            ).to(lm.device)
            with torch.inference_mode():
                output = lm.generate(
                    **batch,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            new = output[:, batch["input_ids"].shape[1] :]
            steps += new.shape[0] * new.shape[1]
            for row in new.tolist():
                n = row.index(eos) + 1 if eos in row else len(row)
                tokens.append(n)
                texts.append(tokenizer.decode(row[:n], skip_special_tokens=True).strip())
        return texts, tokens, steps

    (texts, tokens, steps), timing = _timed(work)
    return NaiveRun(timing, tuple(texts), tuple(tokens), steps)


def suite_path(config: Any, generator: Any, case_ids: set[str], report_dir: str) -> tuple[list[Record], Timing]:
    """The suite as `falserefusal run` does it (falserefusal.run.pipeline.Run), on the benchmark's cases: per family
    generate and decide the gates, then the results file; the loaded model is shared with the naive path."""
    from falserefusal.run.pipeline import Run
    from falserefusal.run.prepare import prepare

    def work() -> list[Record]:
        suite = prepare(replace(config, report_dir=report_dir))
        suite = replace(suite, cases=tuple(c for c in suite.cases if c.case_id in case_ids))
        run = Run(suite.config, suite=suite, generator=generator)
        run.run_all()
        if run.stopped is not None:
            raise run.stopped
        return run.finish().records

    return _timed(work)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_bench(
    settings: BenchSettings, report_dir: str | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Time naive vs suite on the same prompts; returns the JSON-ready result (see the module docstring)."""
    from falserefusal.generation.generator import Generator, request_for
    from falserefusal.generation.models import model_refs
    from falserefusal.run.config import RunConfig, default_options
    from falserefusal.run.prepare import prepare
    from falserefusal.run.results import package_versions

    if settings.cases < 1 or settings.rounds < 1 or settings.batch_size < 1 or settings.max_new_tokens < 1:
        raise FalseRefusalError("bench: --cases, --rounds, --batch-size and --max-new-tokens must be >= 1")
    values = default_options()
    workdir = report_dir or tempfile.mkdtemp(prefix="falserefusal-bench-")
    values.update(
        {
            "samples": 1,
            "seed": settings.seed,
            "batch-size": settings.batch_size,
            "max-new-tokens": settings.max_new_tokens,
            "no-progress": True,
            "report-dir": workdir,
            "no-cache": True,  # every round generates: a cache hit would time nothing
            "device": settings.device,
            "dtype": settings.dtype,
            "model": [settings.model] if settings.model else [],
        }
    )
    config = RunConfig.from_options(values)
    if model_refs(config.models, config.backend)[0].kind != "transformers":
        raise FalseRefusalError(
            "bench: times model.generate, so it needs the transformers backend; fix: drop the scripted:/openai: model"
        )
    per_sample = len(prepare(config).cases)
    config = replace(config, samples=math.ceil(settings.cases / per_sample))
    suite = prepare(config)
    cases = pick_cases(suite.cases, settings.cases)
    case_ids = {c.case_id for c in cases}

    generator = Generator(config)
    model = suite.models[0]
    (backend, load) = _timed(lambda: generator.backend(model))
    prompts = [backend.render(request_for(case)) for case in cases]
    naive_runs: list[NaiveRun] = []
    suite_runs: list[tuple[list[Record], Timing]] = []
    load_avg = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    try:
        for number in range(1, settings.rounds + 1):
            naive_runs.append(naive_generate(backend, prompts, settings.batch_size, settings.max_new_tokens))
            suite_runs.append(suite_path(config, generator, case_ids, workdir))
            if log is not None:
                log(
                    f"round {number}/{settings.rounds}: naive {naive_runs[-1].timing.wall_s:.1f} s, "
                    f"suite {suite_runs[-1][1].wall_s:.1f} s"
                )
            load_avg += [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    finally:
        generator.close()

    naive, (records, _) = naive_runs[-1], suite_runs[-1]
    by_id = {r.case.case_id: r for r in records}
    detector = generator.detector
    agree = rule_agree = prefix = 0
    for case, text in zip(cases, naive.texts):
        record = by_id[case.case_id]
        verdict = detector.detect(text, case.labels)
        agree += (verdict.refused, verdict.label) == (record.refused, record.parsed_label)
        rule_agree += verdict.rule == record.rule
        prefix += text.startswith(record.response)
    ratios = [s.wall_s / n.timing.wall_s for n, (_, s) in zip(naive_runs, suite_runs)]
    cpu_ratios = [s.cpu_s / n.timing.cpu_s for n, (_, s) in zip(naive_runs, suite_runs)]
    suite_wall = statistics.median(s.wall_s for _, s in suite_runs)
    naive_wall = statistics.median(n.timing.wall_s for n in naive_runs)
    n = len(cases)
    reasons: dict[str, int] = {}
    for record in records:
        reasons[record.finish_reason] = reasons.get(record.finish_reason, 0) + 1
    import torch

    return {
        "overhead_ratio": statistics.median(ratios),
        "overhead_ratio_range": [min(ratios), max(ratios)],
        "overhead_ratio_cpu": statistics.median(cpu_ratios),
        "cases_per_s": n / suite_wall,
        "cases_per_s_naive": n / naive_wall,
        "generated_tokens_per_case_naive": sum(naive.row_tokens) / n,
        "generated_tokens_per_case": sum(r.n_tokens for r in records) / n,
        "decode_steps_per_case_naive": naive.decode_steps / n,
        "verdict_agreement": agree / n,
        "rule_agreement": rule_agree / n,
        "prefix_agreement": prefix / n,
        "finish_reasons": reasons,
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": {
            "naive": [r.timing.wall_s for r in naive_runs],
            "suite": [s.wall_s for _, s in suite_runs],
            "load": load.wall_s,
        },
        "cpu_s": {"naive": [r.timing.cpu_s for r in naive_runs], "suite": [s.cpu_s for _, s in suite_runs]},
        "settings": {
            **asdict(settings),
            "model": model,
            "cases": n,
            "decision_window": detector.decision_window,
            "detector_version": detector.version,
            "dtype": backend.identity().get("dtype"),
            "device": backend.identity().get("device"),
            "batch_size_used": generator.batch_sizes.get(model),
        },
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1m": load_avg,
        },
        "versions": package_versions(),
    }


def format_bench(result: dict[str, Any]) -> str:
    """The benchmark as a short table for the terminal."""
    s, m = result["settings"], result["machine"]
    low, high = result["overhead_ratio_range"]
    rows = [
        ("wall time suite / naive (median, range)", f"{result['overhead_ratio']:.2f}  ({low:.2f}-{high:.2f})"),
        ("CPU time suite / naive (median)", f"{result['overhead_ratio_cpu']:.2f}"),
        ("cases/s suite | naive", f"{result['cases_per_s']:.2f} | {result['cases_per_s_naive']:.2f}"),
        (
            "generated tokens/case suite | naive",
            f"{result['generated_tokens_per_case']:.1f} | {result['generated_tokens_per_case_naive']:.1f}",
        ),
        ("naive decode steps/case (batch runs to its longest row)", f"{result['decode_steps_per_case_naive']:.1f}"),
        (
            "verdict agreement (refused, label) | rule | prefix",
            f"{result['verdict_agreement']:.3f} | {result['rule_agreement']:.3f} | {result['prefix_agreement']:.3f}",
        ),
        ("finish reasons (suite)", ", ".join(f"{k} {v}" for k, v in sorted(result["finish_reasons"].items()))),
        ("peak RSS", f"{result['peak_rss_mb']:.0f} MB"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(
        f"settings: {s['cases']} cases, {s['rounds']} rounds, batch {s['batch_size']}, max_new_tokens "
        f"{s['max_new_tokens']}, window {s['decision_window']} chars, {s['model']} ({s['dtype']}, {s['device']})"
    )
    versions = ", ".join(
        f"{k} {v}" for k, v in result["versions"].items() if k in ("torch", "transformers", "falserefusal")
    )
    lines.append(
        f"machine: {m['cpu']}, {m['cpus']} CPUs, torch threads {m['torch_threads']}, "
        f"load {', '.join(f'{x:.1f}' for x in m['load_average_1m'])}; {versions}"
    )
    return "\n".join(lines)
