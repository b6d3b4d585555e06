"""prepare(config) -> Suite: read fixtures and thresholds, validate every option, draw the cases; loads no model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from falserefusal import registry
from falserefusal.analysis.detector_audit import DetectorAudit
from falserefusal.design.languages import load_translations
from falserefusal.design.personas import Intersection, load_intersections, load_personas, select_conditions
from falserefusal.design.sampler import blocks_per_task, draw_cases, factorial_size, sampling_notes
from falserefusal.design.tasks import TaskSpec, dataset_notes, load_tasks
from falserefusal.detection.audit import load_audit
from falserefusal.gating.kinds import GateSpec, gate_specs
from falserefusal.gating.profile import Profile, load_profile
from falserefusal.generation.backends import BackendOptions, check_hub_model, check_local_model
from falserefusal.generation.cache import GenerationCache
from falserefusal.generation.generator import _rescore_keys, cached_for_rescore
from falserefusal.generation.models import ModelRef, model_labels, model_refs
from falserefusal.registry import check_detector_name
from falserefusal.run.config import RunConfig
from falserefusal.run.project import fixtures_path, thresholds_path
from falserefusal.run.results import read_results
from falserefusal.types import Case, FalseRefusalError, Persona, PersonaPhrasing, Record


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
    custom_weight: float = 0.0  # alpha weight of the custom gate families (gating.custom), fixed at collection
    factorial: Mapping[str, int] = field(default_factory=dict)  # task -> distinct request blocks (the population)
    notes: tuple[str, ...] = ()  # e.g. --samples capped at a task's factorial: shown by both front ends
    intersections: tuple[Intersection, ...] = ()  # asked intersections (their conditions are also in `personas`)

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
    registry.check_backend(config.backend)  # validates --backend, even when every model's prefix picks its own
    refs = model_refs(config.models, config.backend)
    models = tuple(ref.name for ref in refs)
    if not config.models and config.backend != "transformers":
        example = (
            "scripted:base=0.05 (see falserefusal.generation.backends.scripted)"
            if config.backend == "scripted"
            else "openai:NAME"
        )
        raise FalseRefusalError(
            f"--backend {config.backend}: no --model given, and the default model (the embedded "
            f"SmolLM2 GGUF) runs on transformers; fix: name the model, e.g. --model {example}"
        )
    check_detector_name(config.detector)
    if config.refusal_rules:  # a missing rules file or a bad regex: a usage error now, not a failed gate mid-run
        config.refusal_detector()
    if len(set(models)) != len(models):
        raise FalseRefusalError(f"--model: the same model is given twice ({', '.join(models)}); fix: give each once")
    profile_name = config.profile or ("smoke" if [ref.source for ref in refs] == ["default"] else "release")
    profile = load_profile(thresholds_path(config.thresholds, config.root), profile_name)
    samples = config.samples if config.samples is not None else profile.samples
    fixtures = fixtures_path(config.fixtures, config.root)
    catalogue, phrasings = load_personas(fixtures / "personas.yaml")  # every persona of the file
    declared = load_intersections(fixtures / "personas.yaml", catalogue)
    personas, intersections = select_conditions(
        catalogue, declared, config.personas, config.intersections, str(fixtures / "personas.yaml")
    )
    tasks = load_tasks(fixtures, config.tasks, _parse_datasets(config.datasets))
    options = config.backend_options
    if options.batch_size < 0 or options.max_new_tokens < 1:
        raise FalseRefusalError("--batch-size must be >= 0 and --max-new-tokens >= 1")
    for ref in refs:
        _check_model_exists(ref, options)
    check_writable_folder(config.path(config.report_dir), "--report-dir")  # before hours of generation, not after
    if config.rescore and not config.use_cache:
        raise FalseRefusalError(
            "--rescore: it re-labels cached generations, and --no-cache turns the cache off; fix: drop one of them"
        )
    notes = sampling_notes(tasks, phrasings, samples) + dataset_notes(tasks)  # printed, and kept in the results header
    samples = max(blocks_per_task(tasks, phrasings, samples).values())  # blocks are drawn once each: no repeats
    translations = load_translations(fixtures / "personas.yaml", catalogue, phrasings)
    cases = draw_cases(tasks, personas, phrasings, samples, config.seed, config.persona_placement, translations)
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
    markers = {i.id: i.of for i in intersections}
    gates = gate_specs(profile, models, [t.task.id for t in tasks], [p.id for p in personas], baseline, markers)
    audit = load_audit(config.path(config.audit)) if config.audit else None
    if audit is not None and profile.detector_correction == "audit":
        assert config.audit is not None  # the audit was loaded from it
        check_audit_covers(audit, models, [t.task.id for t in tasks], config.audit, config.refusal_detector().version)
    return Suite(
        config,
        tuple(models),
        profile,
        samples,
        tasks,
        personas,
        phrasings,
        tuple(cases),
        tuple(gates),
        baseline,
        saved,
        audit,
        factorial={t.task.id: factorial_size(t, phrasings) for t in tasks},
        notes=notes,
        intersections=intersections,
    )


def check_writable_folder(folder: Path, option: str) -> None:
    """Create `folder` if needed and write a probe file in it: an unwritable place (or one under a regular file) is a
    usage error now rather than a traceback after the run."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".falserefusal-probe-"):
            pass
    except OSError as error:
        raise FalseRefusalError(
            f"{option} {folder}: cannot write there ({error.strerror or type(error).__name__}); "
            f"fix: pass a folder you can write to as {option}"
        ) from None


def check_audit_covers(
    audit: DetectorAudit, models: Sequence[str], tasks: Sequence[str], where: str, detector_version: str
) -> None:
    """Gates on corrected rates need an audit of this detector, of every gated model and task: say what differs."""
    audited = audit.source.get("detector_version")
    if audited and audited != detector_version:
        raise FalseRefusalError(
            f"--audit {where}: audits detector {audited}, this run reads answers with {detector_version}, "
            "and the profile gates on rates corrected by the audit; fix: export and label a run of this "
            "detector (or --rescore the audited run and audit that)"
        )
    labelled = {(s.model, s.task) for s in audit.strata if s.n}
    missing = [f"{model} / {task}" for model in models for task in tasks if (model, task) not in labelled]
    if missing:
        raise FalseRefusalError(
            f"--audit {where}: labels no answer of {', '.join(missing)}, and the profile gates on rates "
            "corrected by the audit (detector_correction: audit); fix: export and label that run, or "
            "use a profile without detector_correction"
        )


def _prepare_baseline(
    config: RunConfig, models: Sequence[str], task_ids: Sequence[str], cases: Sequence[Case]
) -> tuple[str | None, dict[str, Record] | None]:
    """The baseline model's name, and its saved records when reused from --baseline-results (checked first)."""
    if config.baseline_model and config.baseline_results:
        raise FalseRefusalError("--baseline-model and --baseline-results: give one; fix: drop one of them")
    if config.baseline_model:
        baseline = config.baseline_model
        ref = ModelRef.of(baseline, config.backend)
        if baseline in models:
            raise FalseRefusalError(
                f"--baseline-model {baseline}: also given as --model; fix: compare two different models"
            )
        _check_model_exists(ref, config.backend_options)
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
        raise FalseRefusalError(
            f"--baseline-results {where}: its model {baseline} is also given as --model; fix: compare two different "
            "models"
        )
    differences = []
    if metadata.get("seed") != seed:
        differences.append(
            f"seed differs (saved {metadata.get('seed')}, this run {seed}; fix: --seed {metadata.get('seed')})"
        )
    if sorted(metadata.get("tasks") or []) != sorted(task_ids):
        differences.append(
            f"task set differs (saved {','.join(sorted(metadata.get('tasks') or [])) or 'none'}, "
            f"this run {','.join(sorted(task_ids))})"
        )
    saved_versions = {r.detector_version for r in records if r.model == baseline} | (
        {metadata["detector_version"]} if metadata.get("detector_version") else set()
    )
    if saved_versions != {detector_version}:
        differences.append(
            f"detector version differs (saved {', '.join(sorted(saved_versions)) or 'none'}, this run "
            f"{detector_version}; fix: same --refusal-rules and falserefusal version)"
        )
    by_case = {r.case.case_id: r for r in records if r.model == baseline}
    if not differences:
        missing = [c.case_id for c in cases if c.case_id not in by_case]
        changed = [c.case_id for c in cases if c.case_id in by_case and by_case[c.case_id].case != c]
        if missing:
            differences.append(
                f"cases differ: {len(missing)} of this run's {len(cases)} cases are not in it (e.g. {missing[0]}; "
                "fewer --samples or other --personas there)"
            )
        if changed:
            differences.append(
                f"cases differ: {len(changed)} cases have other prompts (e.g. {changed[0]}; fixtures, "
                "--dataset or --persona-placement changed)"
            )
    if differences:
        raise FalseRefusalError(
            f"--baseline-results {where}: not the same cases as this run: {'; '.join(differences)}; "
            "fix: rerun the baseline with this run's options, or use --baseline-model"
        )
    return baseline, by_case


def _check_model_exists(ref: ModelRef, options: BackendOptions) -> None:
    """Fail before any generation on a local path that is not there, a hub id that cannot be reached, or a
    served model whose server is down, refuses the key or does not serve it."""
    if ref.source == "served":
        from falserefusal.generation.backends.openai_compat import check_served_model

        return check_served_model(ref.name, options)
    if ref.source in ("file", "folder"):
        path = Path(ref.name).expanduser()
        if not path.exists():
            raise FalseRefusalError(
                f"--model {ref.name}: no such file or folder; fix: check the path, or give a hub id"
            )
        return check_local_model(ref.name, path, options.trust_remote_code)
    if ref.source == "hub":
        check_hub_model(ref.name, options.revision)
