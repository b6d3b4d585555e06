"""run(config) -> results: the one path from options to gate outcomes that the plugin and the CLI share."""

from __future__ import annotations

import itertools
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from falserefusal.analysis import records_frame
from falserefusal.analysis.detector_audit import DetectorAudit
from falserefusal.audit import load_audit
from falserefusal.backends import DEFAULT_MODEL_NAME, Backend, BackendOptions, backend_for, check_hub_model, check_local_model, load_backend
from falserefusal.cache import CacheKey, Cached, GenerationCache
from falserefusal.cases import blocks_per_task, draw_cases, factorial_size, sampling_notes
from falserefusal.gates import GateOutcome, GateSpec, Profile, ci_failed, evaluate_gates, family_alpha, gate_specs, load_profile
from falserefusal.options import OPTIONS, resolve
from falserefusal.personas import load_personas, select_personas
from falserefusal.project import fixtures_path, thresholds_path
from falserefusal.registry import check_detector_name
from falserefusal.tasks import TaskSpec, dataset_notes, load_tasks
from falserefusal.refusal import decision_window_of
from falserefusal.scheduling import length_order, run_batches
from falserefusal.types import BASELINE_ID, Case, Completion, FalseRefusalError, GenerationRequest, Persona, PersonaPhrasing, Record, Verdict

RESULTS_FILE = "results.jsonl"
#: version of the results.jsonl layout, in its header; a file without one was written before this was recorded
RESULTS_SCHEMA = 1
#: the generation cache's folder when neither --cache-dir nor pytest's cache dir gives one (the CLI)
DEFAULT_CACHE_DIR = ".falserefusal-cache"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on, as the user gave it (see `falserefusal.options`)."""

    models: tuple[str, ...] = ()
    backend: str = "transformers"
    samples: int | None = None
    seed: int = 0
    profile: str | None = None
    thresholds: str | None = None  # None: the project's thresholds.yaml, else the packaged one (falserefusal.project)
    report_dir: str = "report"
    tasks: tuple[str, ...] = ()
    personas: tuple[str, ...] = ()
    persona_placement: str = "system"
    fixtures: str | None = None  # None: the project's fixtures/, else the packaged ones
    datasets: tuple[str, ...] = ()
    refusal_rules: str | None = None
    detector: str = "rules"  # --detector: the built-in rule detector or a registered one (falserefusal.registry)
    backend_options: BackendOptions = field(default_factory=BackendOptions)
    progress: bool = True
    cache_dir: str | None = None  # None: DEFAULT_CACHE_DIR (the plugin passes pytest's cache dir)
    use_cache: bool = True
    rescore: bool = False  # label cached generations with the current detector; never call the model
    root: str = "."  # relative paths resolve against this (pytest's rootdir, or the working directory)
    baseline_model: str | None = None  # the checkpoint the candidates are compared with (non-inferiority gates)
    baseline_results: str | None = None  # or a saved results.jsonl of it
    audit: str | None = None  # a detector audit file (falserefusal.audit.load_audit)

    @classmethod
    def from_options(cls, values: Mapping[str, Any], root: str = ".") -> "RunConfig":
        """Build from resolved option values keyed by option name ("batch-size" ...)."""
        v = dict(values)
        backend_options = BackendOptions(
            device=v["device"],
            dtype=v["dtype"],
            batch_size=v["batch-size"],
            max_new_tokens=v["max-new-tokens"],
            trust_remote_code=bool(v["trust-remote-code"]),
            revision=v.get("revision"),
            base_url=v.get("base-url"),
            api_key_env=v.get("api-key-env") or "OPENAI_API_KEY",
            concurrency=v.get("concurrency", 8),
            timeout_s=v.get("request-timeout", 120.0),
            max_retries=v.get("max-retries", 5),
        )
        return cls(
            models=tuple(v["model"]),
            backend=v["backend"],
            samples=v["samples"],
            seed=v["seed"],
            profile=v["profile"],
            thresholds=v["thresholds"],
            report_dir=v["report-dir"],
            tasks=tuple(v["tasks"]),
            personas=tuple(v["personas"]),
            persona_placement=v["persona-placement"],
            fixtures=v["fixtures-dir"],
            datasets=tuple(v["dataset"]),
            refusal_rules=v["refusal-rules"],
            detector=v.get("detector") or "rules",
            backend_options=backend_options,
            progress=not v["no-progress"],
            cache_dir=v.get("cache-dir"),
            use_cache=not v.get("no-cache"),
            rescore=bool(v.get("rescore")),
            root=root,
            baseline_model=v.get("baseline-model"),
            baseline_results=v.get("baseline-results"),
            audit=v.get("audit"),
        )

    def path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(self.root) / path

    def cache_path(self) -> Path:
        return self.path(self.cache_dir or DEFAULT_CACHE_DIR)

    def refusal_detector(self) -> Any:
        """The run's detector: --detector (rules, or one registered by a plugin) over --refusal-rules, and any wrapper
        a plugin registered (falserefusal.registry)."""
        from falserefusal.registry import make_detector

        return make_detector(self.detector, self.path(self.refusal_rules) if self.refusal_rules else None)


def default_options() -> dict[str, Any]:
    return {option.name: resolve(option, None) for option in OPTIONS}


@dataclass(frozen=True)
class Suite:
    """A resolved run: models, profile, tasks, personas and every case, before any model is loaded."""

    config: RunConfig
    models: tuple[str, ...]
    profile: Profile
    samples: int
    tasks: tuple[TaskSpec, ...]
    personas: tuple[Persona, ...]
    phrasings: tuple[PersonaPhrasing, ...]
    cases: tuple[Case, ...]
    gates: tuple[GateSpec, ...]
    baseline: str | None = None  # baseline model of the non-inferiority gates
    baseline_records: Mapping[str, Record] | None = None  # case id -> saved record, with --baseline-results
    audit: DetectorAudit | None = None  # --audit: the detector's audited error (report panel, corrected gates)
    custom_weight: float = 0.0  # alpha weight of the custom gate families (falserefusal.custom), fixed at collection
    factorial: Mapping[str, int] = field(default_factory=dict)  # task -> distinct request blocks (the population)
    notes: tuple[str, ...] = ()  # e.g. --samples capped at a task's factorial: shown by both front ends

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(spec.task.id for spec in self.tasks)

    @property
    def n_families(self) -> float:
        """Families alpha is split over: each (model, task) counts 1, custom gate families their weight."""
        return len(self.models) * len(self.tasks) + self.custom_weight

    def cases_for(self, task: str) -> list[Case]:
        return [case for case in self.cases if case.task == task]

    @property
    def conditions(self) -> int:
        """Cases per request block: the baseline condition and every persona."""
        return len(self.personas) + 1

    @property
    def all_models(self) -> tuple[str, ...]:
        """The gated models, then the baseline model (whose records are written but not gated)."""
        return self.models + ((self.baseline,) if self.baseline else ())

    def model_label(self, model: str) -> str | None:
        """Short name used in gate ids, only when several models share a run."""
        return model_labels(self.models).get(model) if len(self.models) > 1 else None


def model_labels(models: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for index, model in enumerate(models):
        label = model.split("name=")[1].split(",")[0] if "name=" in model else Path(model.rstrip("/")).name
        label = label.removesuffix(".gguf").replace(":", "_") or f"model{index}"
        if label in labels.values():
            label = f"{label}-{index}"
        labels[model] = label
    return labels


def _parse_datasets(entries: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for entry in entries:
        task, sep, source = entry.partition("=")
        if not sep or not task or not source:
            raise FalseRefusalError(f"--dataset {entry}: expected TASK=PATH_OR_HUB_ID, e.g. nli=data/snli.jsonl")
        overrides[task] = source
    return overrides


def prepare(config: RunConfig) -> Suite:
    """Read fixtures and thresholds, validate every option and draw the cases. Loads no model."""
    models = config.models or (DEFAULT_MODEL_NAME,)
    backend_for("", config.backend)  # validates --backend, even when every model's prefix picks its own
    for model in models:
        backend_for(model, config.backend)
    if not config.models and config.backend != "transformers":
        example = "scripted:base=0.05 (see falserefusal.backends.scripted)" if config.backend == "scripted" else "openai:NAME"
        raise FalseRefusalError(f"--backend {config.backend}: no --model given, and the default model (the embedded "
                                f"SmolLM2 GGUF) runs on transformers; fix: name the model, e.g. --model {example}")
    check_detector_name(config.detector)
    if config.refusal_rules:  # a missing rules file or a bad regex: a usage error now, not a failed gate mid-run
        config.refusal_detector()
    if len(set(models)) != len(models):
        raise FalseRefusalError(f"--model: the same model is given twice ({', '.join(models)}); fix: give each once")
    profile_name = config.profile or ("smoke" if models == (DEFAULT_MODEL_NAME,) else "release")
    profile = load_profile(thresholds_path(config.thresholds, config.root), profile_name)
    samples = config.samples if config.samples is not None else profile.samples
    fixtures = fixtures_path(config.fixtures, config.root)
    personas, phrasings = load_personas(fixtures / "personas.yaml")
    personas = select_personas(personas, config.personas, str(fixtures / "personas.yaml"))
    tasks = load_tasks(fixtures, config.tasks, _parse_datasets(config.datasets))
    options = config.backend_options
    if options.batch_size < 0 or options.max_new_tokens < 1:
        raise FalseRefusalError("--batch-size must be >= 0 and --max-new-tokens >= 1")
    for model in models:
        _check_model_exists(model, config.backend, options)
    check_writable_folder(config.path(config.report_dir), "--report-dir")  # before hours of generation, not after
    if config.rescore and not config.use_cache:
        raise FalseRefusalError("--rescore: it re-labels cached generations, and --no-cache turns the cache off; fix: drop one of them")
    notes = sampling_notes(tasks, phrasings, samples) + dataset_notes(tasks)  # printed, and kept in the results header
    samples = max(blocks_per_task(tasks, phrasings, samples).values())  # blocks are drawn once each: no repeats
    cases = draw_cases(tasks, personas, phrasings, samples, config.seed, config.persona_placement)
    if config.use_cache:
        cache = GenerationCache(config.cache_path())  # a corrupt or foreign file is a usage error now, not mid-run
        try:
            for model in models if config.rescore else ():  # a missing generation too
                for spec in tasks:
                    label = f"{model_labels(models)[model]} {spec.task.id}"
                    cached_for_rescore(cache, config, model, [c for c in cases if c.task == spec.task.id], label)
            for model in () if config.rescore else (*models, *filter(None, [config.baseline_model])):
                # every cached row this run may read passes its checksum, or the run stops here, before any generation
                cache.get_for_rescore(*_rescore_keys(config, model, cases))
        finally:
            cache.close()
    baseline, saved = _prepare_baseline(config, models, [t.task.id for t in tasks], cases)
    gates = gate_specs(profile, models, [t.task.id for t in tasks], [p.id for p in personas], baseline)
    audit = load_audit(config.path(config.audit)) if config.audit else None
    if audit is not None and profile.detector_correction == "audit":
        check_audit_covers(audit, models, [t.task.id for t in tasks], config.audit, config.refusal_detector().version)
    return Suite(config, tuple(models), profile, samples, tasks, personas, phrasings, tuple(cases), tuple(gates),
                 baseline, saved, audit, factorial={t.task.id: factorial_size(t, phrasings) for t in tasks}, notes=notes)


def check_writable_folder(folder: Path, option: str) -> None:
    """Create `folder` if needed and write a probe file in it: an unwritable place (or one under a regular file) is a
    usage error now rather than a traceback after the run."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".falserefusal-probe-"):
            pass
    except OSError as error:
        raise FalseRefusalError(f"{option} {folder}: cannot write there ({error.strerror or type(error).__name__}); "
                                f"fix: pass a folder you can write to as {option}") from None


def check_audit_covers(audit: DetectorAudit, models: Sequence[str], tasks: Sequence[str], where: str,
                       detector_version: str) -> None:
    """Gates on corrected rates need an audit of this detector, of every gated model and task: say what differs."""
    audited = audit.source.get("detector_version")
    if audited and audited != detector_version:
        raise FalseRefusalError(f"--audit {where}: audits detector {audited}, this run reads answers with {detector_version}, "
                                "and the profile gates on rates corrected by the audit; fix: export and label a run of this "
                                "detector (or --rescore the audited run and audit that)")
    labelled = {(s.model, s.task) for s in audit.strata if s.n}
    missing = [f"{model} / {task}" for model in models for task in tasks if (model, task) not in labelled]
    if missing:
        raise FalseRefusalError(f"--audit {where}: labels no answer of {', '.join(missing)}, and the profile gates on rates "
                                "corrected by the audit (detector_correction: audit); fix: export and label that run, or "
                                "use a profile without detector_correction")


def _prepare_baseline(
    config: RunConfig, models: Sequence[str], task_ids: Sequence[str], cases: Sequence[Case]
) -> tuple[str | None, dict[str, Record] | None]:
    """The baseline model's name, and its saved records when reused from --baseline-results (checked first)."""
    if config.baseline_model and config.baseline_results:
        raise FalseRefusalError("--baseline-model and --baseline-results: give one; fix: drop one of them")
    if config.baseline_model:
        baseline = config.baseline_model
        backend_for(baseline, config.backend)
        if baseline in models:
            raise FalseRefusalError(f"--baseline-model {baseline}: also given as --model; fix: compare two different models")
        _check_model_exists(baseline, config.backend, config.backend_options)
        return baseline, None
    if not config.baseline_results:
        return None, None
    path = config.path(config.baseline_results)
    metadata, records = read_results(path)
    detector = config.refusal_detector()
    return check_baseline_results(str(path), metadata, records, models, config.seed, task_ids, cases, detector.version)


def check_baseline_results(
    where: str,
    metadata: Mapping[str, Any],
    records: Sequence[Record],
    models: Sequence[str],
    seed: int,
    task_ids: Sequence[str],
    cases: Sequence[Case],
    detector_version: str,
) -> tuple[str, dict[str, Record]]:
    """A saved run is a valid baseline only for the same seed, tasks, detector version and cases; say what differs."""
    saved_models = list(metadata.get("models") or sorted({r.model for r in records}))
    if len(saved_models) != 1:
        raise FalseRefusalError(
            f"--baseline-results {where}: holds {len(saved_models)} gated models ({', '.join(saved_models)}); "
            "fix: pass the results of a run of the baseline model alone"
        )
    baseline = saved_models[0]
    if baseline in models:
        raise FalseRefusalError(f"--baseline-results {where}: its model {baseline} is also given as --model; fix: compare two different models")
    differences = []
    if metadata.get("seed") != seed:
        differences.append(f"seed differs (saved {metadata.get('seed')}, this run {seed}; fix: --seed {metadata.get('seed')})")
    if sorted(metadata.get("tasks") or []) != sorted(task_ids):
        differences.append(f"task set differs (saved {','.join(sorted(metadata.get('tasks') or [])) or 'none'}, "
                           f"this run {','.join(sorted(task_ids))})")
    saved_versions = {r.detector_version for r in records if r.model == baseline} | (
        {metadata["detector_version"]} if metadata.get("detector_version") else set())
    if saved_versions != {detector_version}:
        differences.append(f"detector version differs (saved {', '.join(sorted(saved_versions)) or 'none'}, this run {detector_version}; "
                           "fix: same --refusal-rules and falserefusal version)")
    by_case = {r.case.case_id: r for r in records if r.model == baseline}
    if not differences:
        missing = [c.case_id for c in cases if c.case_id not in by_case]
        changed = [c.case_id for c in cases if c.case_id in by_case and by_case[c.case_id].case != c]
        if missing:
            differences.append(f"cases differ: {len(missing)} of this run's {len(cases)} cases are not in it (e.g. {missing[0]}; "
                               "fewer --samples or other --personas there)")
        if changed:
            differences.append(f"cases differ: {len(changed)} cases have other prompts (e.g. {changed[0]}; fixtures, "
                               "--dataset or --persona-placement changed)")
    if differences:
        raise FalseRefusalError(f"--baseline-results {where}: not the same cases as this run: {'; '.join(differences)}; "
                                "fix: rerun the baseline with this run's options, or use --baseline-model")
    return baseline, by_case


def _check_model_exists(model: str, backend: str, options: BackendOptions) -> None:
    """Fail before any generation on a local path that is not there, a hub id that cannot be reached, or a
    served model whose server is down, refuses the key or does not serve it."""
    revision = options.revision
    if backend_for(model, backend) == "openai":
        from falserefusal.backends.openai_compat import check_served_model

        return check_served_model(model, options)
    if backend_for(model, backend) != "transformers" or model == DEFAULT_MODEL_NAME:
        return
    path = Path(model).expanduser()
    if path.exists():
        return check_local_model(model, path, options.trust_remote_code)
    if model.startswith((".", "/", "~")) or model.endswith(".gguf") or model.count("/") > 1:
        raise FalseRefusalError(f"--model {model}: no such file or folder; fix: check the path, or give a hub id")
    check_hub_model(model, revision)


def request_for(case: Case) -> GenerationRequest:
    return GenerationRequest(
        case_id=case.case_id,
        messages=case.messages,
        factors={
            "task": case.task,
            "persona": case.persona,
            "forcing_level": case.forcing_level,
            "paraphrase": case.paraphrase_id,
            "item": case.item_id,
            "block": case.block_id,
            "labels": "|".join(case.labels),
        },
    )


class Generator:
    """Holds loaded backends, the detector and the generation cache; turns cases into records, batch by batch."""

    def __init__(self, config: RunConfig, progress_position: int = 0) -> None:
        self.config = config
        self.detector = config.refusal_detector()
        self.backends: dict[str, Backend] = {}
        self.timings: dict[str, float] = {"load_s": 0.0, "generate_s": 0.0}
        self.batch_sizes: dict[str, int] = {}  # per model: the batch size in use (after automatic pick or halving)
        self.progress_position = progress_position
        self.cache = GenerationCache(config.cache_path()) if config.use_cache else None
        #: generations served from the cache and generations the model was asked for (its calls, counted in cases)
        self.cache_counts: dict[str, int] = {"hits": 0, "generated": 0}
        self.cached_identities: dict[str, dict[str, Any]] = {}  # --rescore: identities read from the cache

    def backend(self, model: str) -> Backend:
        if model not in self.backends:
            started = time.perf_counter()
            try:
                self.backends[model] = load_backend(model, self.config.backend, self.config.backend_options, self.config.seed)
            except (OSError, ValueError, RuntimeError, ImportError) as error:  # what prepare() could not foresee
                first = (str(error).strip().splitlines() or [""])[0][:200]
                raise FalseRefusalError(f"--model {model}: cannot load ({type(error).__name__}: {first}); fix: check that "
                                        "it is a chat model that transformers can load") from None
            self.timings["load_s"] += time.perf_counter() - started
        return self.backends[model]

    def identities(self) -> dict[str, dict[str, Any]]:
        return {**self.cached_identities, **{model: backend.identity() for model, backend in self.backends.items()}}

    def cache_stats(self) -> dict[str, Any]:
        return {"enabled": self.cache is not None, "path": str(self.cache.path) if self.cache else None,
                "rescore": self.config.rescore, **self.cache_counts}

    def generate(self, model: str, cases: Sequence[Case], label: str = "") -> list[Record]:
        """Answer every case with the model (or the cache) and label the answers; batches are bucketed by prompt
        length (tokens where the backend can count them) and each generated batch is committed to the cache before
        the next one starts. A row stops as soon as the detector's verdict on it is settled (`is_decided`), so
        short answers free their batch; on out-of-memory a batch is retried at half the size."""
        kind = backend_for(model, self.config.backend)
        requests = [request_for(case) for case in cases]
        options = self.config.backend_options
        if not self.config.rescore:
            self.backend(model)  # loading is timed as load_s, not generate_s
        started = time.perf_counter()
        if self.config.rescore:
            assert self.cache is not None  # prepare() refuses --rescore with --no-cache
            found = cached_for_rescore(self.cache, self.config, model, cases, label)
            completions = {i: cached.completion for i, cached in enumerate(found)}
            self.cached_identities[model] = found[0].identity if found else {}
            from_cache = set(completions)
            self.cache_counts["hits"] += len(from_cache)
            # an answer cut short where an older detector had decided may not be decided under this one
            self.cache_counts["undecided"] = self.cache_counts.get("undecided", 0) + sum(
                c.completion.finish_reason == "decided" and not self.detector.is_decided(c.completion.text, case.labels)
                for c, case in zip(found, cases)
            )
        else:
            backend = self.backend(model)
            identity = backend.identity()
            detector = self.detector
            decoding = decoding_settings(self.config, detector.version)
            keys = [CacheKey.of(kind, model, identity, request, decoding) for request in requests]
            completions = {}
            if self.cache is not None:
                found = self.cache.get(keys)
                completions = {i: found[key.key] for i, key in enumerate(keys) if key.key in found}
            from_cache = set(completions)
            self.cache_counts["hits"] += len(from_cache)
            size = options.batch_size or self._auto_batch_size(model, backend, requests)
            at_least = getattr(backend, "min_batch_size", 1)  # a served model needs enough requests to fill its slots
            size = max(size, at_least)
            # similar lengths in a batch waste less padding; the order of records is restored afterwards. The batches
            # are fixed before the cache is read, so a resumed run batches its missing cases as the first run would have
            lengths = getattr(backend, "prompt_lengths", None)
            order = length_order(lengths(requests) if lengths else [sum(len(m.content) for m in c.messages) for c in cases])
            batches = [order[start : start + size] for start in range(0, len(order), size)]
            labels = {case.case_id: case.labels for case in cases}

            def stop_when(text: str, request: GenerationRequest) -> bool:
                return detector.is_decided(text, labels[request.case_id])

            with _progress(len(cases), label or model, self.config.progress, self.progress_position, len(from_cache)) as bar:

                def done(chunk: Sequence[int], answers: Sequence[Completion]) -> None:
                    answers = [answer.storable() for answer in answers]  # a lone surrogate cannot be stored
                    if self.cache is not None:
                        self.cache.put(kind, model, identity, [(keys[i], answer) for i, answer in zip(chunk, answers)])
                    completions.update(zip(chunk, answers))
                    self.cache_counts["generated"] += len(chunk)
                    bar.update(len(chunk))

                for batch in batches:
                    todo = [i for i in batch if i not in completions]
                    if todo:
                        _, size = run_batches(
                            todo,
                            size,
                            lambda chunk: backend.generate([requests[i] for i in chunk], options.max_new_tokens, stop_when),
                            on_oom=getattr(backend, "release_memory", None),
                            done=done,
                        )
            self.batch_sizes[model] = size
        self.timings["generate_s"] += time.perf_counter() - started
        # one call for the batch: the learned layer scores all answers in one matrix product
        verdicts = self.detector.detect_many([completions[i].text for i in range(len(cases))], [case.labels for case in cases])
        return [self._record(model, kind, cases[i], completions[i], verdicts[i], i in from_cache) for i in range(len(cases))]

    def _record(self, model: str, kind: str, case: Case, completion: Completion, verdict: Verdict, cached: bool) -> Record:
        return Record(
            case=case,
            model=model,
            backend=kind,
            response=completion.text,
            n_tokens=completion.n_tokens,
            finish_reason=completion.finish_reason,
            refused=verdict.refused,
            rule=verdict.rule,
            parsed_label=verdict.label,
            detector_version=self.detector.version,
            cached=cached,
            outcome=verdict.outcome,
        )

    def _auto_batch_size(self, model: str, backend: Backend, requests: Sequence[GenerationRequest]) -> int:
        """--batch-size 0: the backend's pick (GPU: from free memory), found once per model."""
        if model not in self.batch_sizes:
            pick = getattr(backend, "auto_batch_size", None)
            self.batch_sizes[model] = pick(requests, self.config.backend_options.max_new_tokens) if pick else 16
        return self.batch_sizes[model]

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self.backends.clear()
        if self.cache is not None:
            self.cache.close()
            self.cache = None


def cache_summary(stats: Mapping[str, Any]) -> str:
    """One line for the terminal: what came from the cache and what the model was asked for."""
    if not stats.get("enabled"):
        return "cache: off (--no-cache)"
    verb = "re-labelled from" if stats.get("rescore") else "from"
    line = f"cache: {stats.get('hits', 0)} generations {verb} {stats.get('path')}, {stats.get('generated', 0)} generated"
    if stats.get("undecided"):
        line += (f"; {stats['undecided']} of them were cut short when an earlier detector had decided and this one has"
                 " not (their labels may change with more text; fix: rerun without --rescore to regenerate them)")
    return line


def decoding_settings(config: RunConfig, detector_version: str | None = None) -> dict[str, Any]:
    """Every setting besides the model and the request that changes the text a backend returns: part of the
    cache key. An early-stop policy goes under "stop", with the detector version that drives it (its rules and
    decision window decide where a row stops)."""
    stop = {"policy": "decided", "detector": detector_version} if detector_version else None
    return {"max_new_tokens": config.backend_options.max_new_tokens, "stop": stop}


def _rescore_keys(config: RunConfig, model: str, cases: Sequence[Case]) -> tuple[str, str, list[CacheKey]]:
    """(backend, model, keys) to find a model's cached generations of `cases` by request alone, whatever its identity."""
    kind = backend_for(model, config.backend)
    return kind, model, [CacheKey.of(kind, model, {}, request_for(case), decoding_settings(config)) for case in cases]


def cached_for_rescore(cache: GenerationCache, config: RunConfig, model: str, cases: Sequence[Case], label: str) -> list[Cached]:
    """--rescore: the cached generation of every case, found without loading the model; a missing one is an error."""
    kind, _, keys = _rescore_keys(config, model, cases)
    requests = [request_for(case) for case in cases]
    found, missing = cache.get_for_rescore(kind, model, keys)
    if missing:
        absent = [r.case_id for r, k in zip(requests, keys) if k.request_key not in found]
        raise FalseRefusalError(
            f"--rescore: {missing} of {len(requests)} generations of {label or model} are not in the cache "
            f"{cache.path} (e.g. {', '.join(absent[:3])}); fix: run once without --rescore to generate them"
        )
    return [found[key.request_key] for key in keys]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(total: int, label: str, enabled: bool, position: int, cached: int = 0) -> Any:
    """One bar per process (pytest-xdist worker N draws on line N): cases/s and ETA count generated cases only."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=cached, desc=f"generating {label}", unit="case", position=position, leave=True,
                dynamic_ncols=True, postfix={"cached": cached})


def canonical_order(suite: Suite, records: Iterable[Record]) -> list[Record]:
    """Records in (model, case) order of the suite, whatever process or order produced them."""
    model_rank = {m: i for i, m in enumerate(suite.all_models)}
    case_rank = {c.case_id: i for i, c in enumerate(suite.cases)}
    return sorted(records, key=lambda r: (model_rank.get(r.model, len(model_rank)), case_rank.get(r.case.case_id, 0)))


def run_metadata(
    suite: Suite, identities: Mapping[str, Any], timings: Mapping[str, float], detector_version: str,
    cache: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    config = suite.config
    return {
        "cache": dict(cache or {}),  # hits and generated cases of this run: volatile, in run.json only
        "kind": "run",
        "schema": RESULTS_SCHEMA,
        "seed": config.seed,
        "samples": suite.samples,
        "sampling": {
            "design": "seeded permutation of each task's item x paraphrase x phrasing factorial, without replacement",
            "factorial": dict(suite.factorial),
            "blocks": {task: min(suite.samples, size) for task, size in suite.factorial.items()},
            "notes": list(suite.notes),
        },
        "profile": {**suite.profile.to_dict(), "source": project_path(suite.profile.source, config.root)},
        "models": list(suite.models),
        "model_identities": {model: {k: project_path(v, config.root) if k == "folder" else v for k, v in dict(identity).items()}
                             for model, identity in identities.items()},
        "backend": config.backend,
        "backend_options": asdict(config.backend_options),
        "tasks": list(suite.task_ids),
        "task_sources": {spec.task.id: project_path(spec.source, config.root) for spec in suite.tasks},
        "personas": [p.id for p in suite.personas],
        "persona_placement": config.persona_placement,
        "baseline": "no persona turn: the model's own default chat (a template may add its default system prompt)",
        "n_cases": len(suite.cases) * len(suite.models),
        "baseline_model": suite.baseline,
        "baseline_results": config.baseline_results and project_path(str(config.path(config.baseline_results)), config.root),
        "detector_version": detector_version,
        "decision_window": decision_window_of(detector_version),
        "versions": package_versions(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
        "timings": dict(timings),
        "command": rerunnable_command(sys.argv),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def rerunnable_command(argv: Sequence[str], prefix: str | None = None) -> str:
    """The command a user can type again: `pytest ...`, `python -m pytest ...`, `falserefusal ...` rather than the
    script path in argv[0] (a site-packages `__main__.py` or a venv's bin/pytest); arguments shell-quoted.
    `prefix` replaces argv[0] when the caller knows better (the plugin passes pytest's own invocation)."""
    if prefix is None:
        script = Path(argv[0]) if argv else Path("")
        if script.name == "__main__.py":
            prefix = f"python -m {script.parent.name}"
        else:
            prefix = script.name.removesuffix(".exe") or "python"
    return " ".join([prefix, *map(shlex.quote, argv[1:])])


def replaced_results_line(report_dir: Path) -> str:
    """The terminal's note that a run's files replaced an earlier run's in the same folder (see README "The report")."""
    return (f"note: replaced the previous run's {RESULTS_FILE}, {RUN_FILE} and index.html in {report_dir} "
            "(pass --report-dir to keep both)")


def project_path(value: str, root: str) -> str:
    """A path as the results header stores it: relative to the project's folder (its config file's, for pytest and
    `falserefusal run` alike) when inside it, package-relative for the packaged defaults, else as given; so the same
    run from two checkouts writes the same bytes. Hub ids and other non-paths pass through unchanged."""
    path = Path(value)
    if not path.is_absolute():
        return value
    import falserefusal

    for base, prefix in ((Path(root).resolve(), ""), (Path(falserefusal.__file__).resolve().parent, "falserefusal/")):
        try:
            return prefix + path.resolve().relative_to(base).as_posix()
        except ValueError:
            continue
    return value


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("falserefusal", "torch", "transformers", "gguf", "numpy", "pandas", "scipy", "statsmodels", "pytest"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


#: metadata that differs between two runs of the same configuration; kept out of results.jsonl (which is
#: byte-identical for the same seed and settings) and written to run.json beside it
VOLATILE_KEYS = ("timings", "finished_at", "command", "cache")
RUN_FILE = "run.json"


def write_results(path: Path, metadata: Mapping[str, Any], records: Sequence[Record]) -> None:
    """results.jsonl: a header line with the run's settings, then one line per generation; plus run.json.

    Both are written atomically. Whether a generation came from the cache is a property of this run, not of
    the result, so `cached` stays out of results.jsonl (run.json counts cache hits).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {k: v for k, v in metadata.items() if k not in VOLATILE_KEYS}
    staging = path.with_suffix(path.suffix + ".tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(header, sort_keys=True) + "\n")
        for record in records:
            line = record.to_dict()
            line.pop("cached", None)
            handle.write(json.dumps(line, sort_keys=True) + "\n")
    staging.replace(path)
    run_file = path.with_name(RUN_FILE)
    staging = run_file.with_suffix(".tmp")
    staging.write_text(json.dumps(dict(metadata), sort_keys=True, indent=2), encoding="utf-8")
    staging.replace(run_file)


def read_results(path: Path) -> tuple[dict[str, Any], list[Record]]:
    """The metadata (header, plus run.json beside it when present) and the records of a results.jsonl file."""
    if not path.is_file():
        raise FalseRefusalError(f"{path}: results file not found; fix: run the suite first, or check the path")
    metadata: dict[str, Any] = {}
    records: list[Record] = []
    fix = "fix: pass a results.jsonl written by falserefusal run or pytest"
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    if data.get("kind") == "run":
                        metadata = data
                    else:
                        _check_field_types(data)
                        records.append(Record.from_dict(data))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
                    raise FalseRefusalError(f"{path}:{number}: not a falserefusal results line ({error}); {fix}") from None
    except UnicodeDecodeError as error:
        raise FalseRefusalError(f"{path}: not UTF-8 text (byte {error.start}), so not a results file; {fix}") from None
    if not metadata and not records:
        raise FalseRefusalError(f"{path}: empty; {fix}")
    if not metadata:
        raise FalseRefusalError(f"{path}: no header line (the first line, with \"kind\": \"run\"); {fix}")
    schema = metadata.get("schema")
    if schema is not None and (not isinstance(schema, int) or schema > RESULTS_SCHEMA):
        raise FalseRefusalError(f"{path}: results schema {schema!r}, newer than this falserefusal reads ({RESULTS_SCHEMA}); "
                                "fix: upgrade falserefusal")
    run_file = path.with_name(RUN_FILE)
    if run_file.is_file():
        try:
            extra = json.loads(run_file.read_text(encoding="utf-8"))
            if extra.get("seed") == metadata.get("seed"):  # only the run.json of this same run
                metadata = {**extra, **metadata, "schema": schema}  # the schema is the header's
        except json.JSONDecodeError:
            pass  # run.json is informational; a broken one loses timings only
    return metadata, records


#: the type of every results-line field the gates and the report read: a string "false" for `refused` would count
#: as a refusal, so types are checked, not coerced (n_tokens: int, not bool)
_FIELD_TYPES = {"model": str, "backend": str, "response": str, "n_tokens": int, "finish_reason": str, "refused": bool,
                "rule": str, "detector_version": str, "outcome": str}
_CASE_FIELD_TYPES = {"case_id": str, "block_id": str, "seed": int, "task": str, "item_id": str, "paraphrase_id": str,
                     "forcing_level": str, "persona": str, "persona_dimension": str, "phrasing_id": str, "gold_label": str}


def _check_field_types(data: Mapping[str, Any]) -> None:
    from falserefusal.types import OUTCOMES

    for fields_, where in ((_FIELD_TYPES, data), (_CASE_FIELD_TYPES, data.get("case"))):
        if not isinstance(where, Mapping):
            raise ValueError("case is not an object")
        for name, kind in fields_.items():
            if name in where and type(where[name]) is not kind:
                raise ValueError(f"{name} is {json.dumps(where[name])}, not a JSON {_JSON_NAMES[kind]}")
    if data.get("outcome") not in (None, "", *OUTCOMES):
        raise ValueError(f"outcome {json.dumps(data.get('outcome'))} is not one of {', '.join(OUTCOMES)}")


_JSON_NAMES = {str: "string", int: "integer", bool: "true/false"}


def results_warnings(metadata: Mapping[str, Any], records: Sequence[Record], current_detector: str) -> list[str]:
    """What a reader of a saved results file should know: it predates the schema, or another detector labelled it."""
    notes = []
    if metadata.get("schema") is None:
        notes.append("no results schema in its header (written by an earlier falserefusal); read as schema "
                     f"{RESULTS_SCHEMA}, which may miss fields it lacks")
    versions = sorted({r.detector_version for r in records})
    if versions and versions != [current_detector]:
        notes.append(f"labelled by detector {', '.join(versions)}, not this falserefusal's {current_detector}: the gates "
                     "use the saved labels; fix: rerun with --rescore to label the cached answers with this detector")
    return notes


@dataclass
class RunResult:
    suite: Suite
    records: list[Record]
    outcomes: list[GateOutcome]
    metadata: dict[str, Any]

    @property
    def passed(self) -> bool:
        """No gate fails CI: no FAIL, and no INCONCLUSIVE under the profile's `inconclusive: fail`."""
        return not any(ci_failed(outcome, self.suite.profile.inconclusive) for outcome in self.outcomes)


def evaluate(suite: Suite, records: Sequence[Record]) -> list[GateOutcome]:
    """The gate outcomes of finished records."""
    return decide_gates(suite.gates, records, suite.profile, suite.n_families, suite.samples, suite.factorial, suite.audit)


def with_population(frame: pd.DataFrame, factorial: Mapping[str, int] | None) -> pd.DataFrame:
    """The analysis frame with column `population`: each row's task factorial size (the gates' finite population
    for the "these items" interval); absent when the sizes are unknown (results written before 0.2)."""
    if factorial:
        frame["population"] = frame["task"].map(dict(factorial))
    return frame


def decide_gates(
    gates: Sequence[GateSpec], records: Sequence[Record], profile: Profile, n_families: int, samples: int,
    factorial: Mapping[str, int] | None = None, audit: DetectorAudit | None = None,
) -> list[GateOutcome]:
    """Gates of the families present in `records`; a sequential profile replays its looks on the saved prefixes.
    With an `audit`, a profile of `detector_correction: audit` gates on rates corrected for detector error."""
    from falserefusal.sequential import SequentialDesign, run_sequential

    frame = with_population(records_frame(records), factorial)
    present = {(r.model, r.case.task) for r in records}
    specs = [spec for spec in gates if spec.family in present]
    design = SequentialDesign.from_profile(profile.sequential)
    if design is None:
        return evaluate_gates(frame, specs, profile, n_families, audit)
    frame["block_index"] = frame["block"].map(block_index)
    outcomes: list[GateOutcome] = []
    for family in dict.fromkeys(spec.family for spec in specs):
        family_specs = [spec for spec in specs if spec.family == family]
        rows = frame[frame["task"] == family[1]]
        result = run_sequential(lambda n: rows[rows["block_index"] < n], family_specs,
                                family_alpha(profile, n_families), design, samples)
        outcomes.extend(result.outcomes)
    return outcomes


def block_index(block_id: str) -> int:
    """The position of a request block in its task ("nli-b00012" -> 12)."""
    return int(block_id.rsplit("-b", 1)[1])


@dataclass
class FamilyRun:
    """One (model, task) family: its new records (candidate, and baseline model ones not yet emitted) and outcomes."""

    records: list[Record]
    outcomes: list[GateOutcome]
    blocks_used: int
    budget: int


class BaselineSource:
    """The baseline model's records for given cases: generated once (shared by candidates) or read from a saved run."""

    def __init__(self, suite: Suite, generator: "Generator") -> None:
        self.suite, self.generator = suite, generator
        self.known: dict[str, Record] = {}

    def records_for(self, cases: Sequence[Case]) -> tuple[list[Record], list[Record]]:
        """(records for these cases, the ones this source had not handed out before)."""
        suite = self.suite
        todo = [c for c in cases if c.case_id not in self.known]
        if todo and suite.baseline_records is not None:
            fresh = [suite.baseline_records[c.case_id] for c in todo]
        elif todo:
            fresh = self.generator.generate(suite.baseline or "", todo, f"baseline {todo[0].task}")
        else:
            fresh = []
        self.known.update({r.case.case_id: r for r in fresh})
        return [self.known[c.case_id] for c in cases], fresh


def run_family(generator: "Generator", suite: Suite, model: str, task: str, baseline: BaselineSource | None = None) -> FamilyRun:
    """Generate one family (with the baseline model's answers to the same cases) and decide its gates.

    A sequential profile generates round by round and stops once every gate is settled; otherwise the whole
    budget is generated at once. Both plugin and CLI come through here.
    """
    from falserefusal.sequential import SequentialDesign, run_sequential

    cases = suite.cases_for(task)
    per_block = suite.conditions
    label = f"{model_labels(suite.models)[model]} {task}"
    specs = [spec for spec in suite.gates if spec.family == (model, task)]
    records: list[Record] = []
    emitted: list[Record] = []
    have = 0

    def fetch(blocks: int) -> pd.DataFrame:
        nonlocal have
        if blocks > have:
            chunk = cases[have * per_block : blocks * per_block]
            fresh = generator.generate(model, chunk, label)
            records.extend(fresh)
            emitted.extend(fresh)
            if baseline is not None:
                paired, new = baseline.records_for(chunk)
                records.extend(paired)
                emitted.extend(new)
            have = blocks
        return with_population(records_frame(records), suite.factorial)

    design = SequentialDesign.from_profile(suite.profile.sequential)
    if design is None:
        outcomes = evaluate_gates(fetch(suite.samples), specs, suite.profile, suite.n_families, suite.audit)
        return FamilyRun(emitted, outcomes, suite.samples, suite.samples)
    result = run_sequential(fetch, specs, family_alpha(suite.profile, suite.n_families), design, suite.samples)
    return FamilyRun(emitted, result.outcomes, result.blocks_used, suite.samples)


def budget_usage(suite: Suite, records: Sequence[Record]) -> dict[str, Any]:
    """Request blocks generated per gated (model, task) family versus the fixed budget (sequential runs stop early)."""
    blocks: dict[str, set[str]] = {}
    for record in records:
        if record.model in suite.models:
            blocks.setdefault(f"{record.model}|{record.case.task}", set()).add(record.case.block_id)
    used = {family: len(ids) for family, ids in blocks.items()}
    budget = suite.samples * len(used)
    return {
        "sequential": dict(suite.profile.sequential),
        "blocks_per_family": used,
        "blocks_used": sum(used.values()),
        "blocks_budget": budget,
        "cases_used": sum(used.values()) * suite.conditions,
        "cases_budget": budget * suite.conditions,
    }


def format_usage(usage: Mapping[str, Any]) -> str:
    """One line: cases used versus the fixed budget."""
    share = usage["cases_used"] / usage["cases_budget"] if usage["cases_budget"] else 1.0
    return (f"sequential stop: {usage['cases_used']} of {usage['cases_budget']} cases per model "
            f"({100 * share:.0f}% of the fixed budget; {usage['blocks_used']} of {usage['blocks_budget']} request blocks)")


def outcomes_from_results(metadata: Mapping[str, Any], records: Sequence[Record],
                          audit: DetectorAudit | None = None) -> list[GateOutcome]:
    """Gate outcomes recomputed from a saved results file: its header's profile, models, tasks and personas (and,
    with `audit`, a profile of `detector_correction: audit` decides on the corrected rates)."""
    try:
        known = {f.name for f in fields(Profile)}
        profile = Profile(**{k: v for k, v in metadata["profile"].items() if k in known})
        models, tasks, personas = list(metadata["models"]), list(metadata["tasks"]), list(metadata["personas"])
    except (KeyError, TypeError) as error:
        raise FalseRefusalError(
            f"results header: lacks the run's profile, models, tasks or personas ({error}); "
            "fix: pass a results.jsonl written by falserefusal run or pytest"
        ) from None
    specs = gate_specs(profile, models, tasks, personas, metadata.get("baseline_model"))
    from falserefusal.custom import CustomAccounting, outcome_from_dict

    custom = metadata.get("custom_gates") or {}  # custom gates (pytest markers) keep their alpha and outcomes
    n_families = len(models) * len(tasks) + CustomAccounting.from_dict(custom.get("accounting")).weight
    outcomes = decide_gates(specs, records, profile, n_families, int(metadata.get("samples") or profile.samples),
                            (metadata.get("sampling") or {}).get("factorial"), audit)
    return outcomes + [outcome_from_dict(o) for o in custom.get("outcomes", [])]


def generation_stopped(error: FalseRefusalError, generator: "Generator") -> FalseRefusalError:
    """The error of a model that broke off mid-run (a server went away, memory ran out at batch size 1)."""
    resumes = generator.cache is not None and generator.cache_counts.get("generated", 0) > 0  # this run committed some
    kept = "; finished batches are in the generation cache, so a rerun resumes" if resumes else ""
    return FalseRefusalError(f"generation stopped: {error}{kept}")


def run(config: RunConfig) -> RunResult:
    """Generate every case with every model, evaluate the gates, write results (the front ends add the report).
    A model that breaks off mid-run raises `generation_stopped` after the finished families' results are written."""
    suite = prepare(config)
    generator = Generator(config)
    records: list[Record] = []
    outcomes: list[GateOutcome] = []
    stopped: FalseRefusalError | None = None
    try:
        baseline = BaselineSource(suite, generator) if suite.baseline else None
        for model, spec in itertools.product(suite.models, suite.tasks):
            try:
                family = run_family(generator, suite, model, spec.task.id, baseline)
            except FalseRefusalError as error:
                stopped = generation_stopped(error, generator)
                break
            records.extend(family.records)
            outcomes.extend(family.outcomes)
        identities = generator.identities()
        cache_stats = generator.cache_stats()
    finally:
        generator.close()
    records = canonical_order(suite, records)
    metadata = run_metadata(suite, identities, generator.timings, generator.detector.version, cache_stats)
    metadata["budget"] = budget_usage(suite, records)
    if records or stopped is None:  # a run that made nothing leaves an earlier results file alone
        write_results(config.path(config.report_dir) / RESULTS_FILE, metadata, records)
    if stopped is not None:
        raise stopped
    return RunResult(suite, records, outcomes, metadata)


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
    table = frame.pivot_table(index="persona", columns=["model", "task"] if several else "task", values="refused",
                              aggfunc=["mean", "count"])
    order = [BASELINE_ID] + sorted(p for p in table.index if p != BASELINE_ID)
    table = table.reindex(order)
    return table["mean"], table["count"]


def non_answer_line(records: Sequence[Record]) -> str:
    """One line on answers read as non-answers (loops, echoes, gibberish): how many, and the cell with the most."""
    table, counts = rate_table(records, "non_answer")
    if table.empty:
        return "non-answers: none"
    total = int(sum(r.outcome == "non_answer" for r in records))
    line = f"non-answers (not refusals; loops, echoes, gibberish): {total} of {len(records)} ({100 * total / len(records):.1f}%)"
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
