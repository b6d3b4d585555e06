"""RunConfig: everything a run depends on, as the user gave it (resolved options), and where its paths point."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from falserefusal.generation.backends import BackendOptions
from falserefusal.run.options import OPTIONS, resolve

#: the generation cache's folder when neither --cache-dir nor pytest's cache dir gives one (the CLI)
DEFAULT_CACHE_DIR = ".falserefusal-cache"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on, as the user gave it (see `falserefusal.run.options`)."""

    models: tuple[str, ...] = ()
    backend: str = "transformers"
    samples: int | None = None
    seed: int = 0
    profile: str | None = None
    thresholds: str | None = None  # None: the project's thresholds.yaml, else the packaged one (run.project)
    report_dir: str = "report"
    tasks: tuple[str, ...] = ()
    personas: tuple[str, ...] = ()
    intersections: bool = False  # --intersections: every declared intersection, with its markers
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
    audit: str | None = None  # a detector audit file (falserefusal.detection.audit.load_audit)

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
            intersections=bool(v.get("intersections")),
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
