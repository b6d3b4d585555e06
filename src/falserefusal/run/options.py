"""The suite's options, defined once and shared by the pytest plugin and the command line."""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    name: str  # command-line name without dashes; the ini key is "falserefusal_" + name with "_" for "-"
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    kind: str = "value"  # value | list (repeatable, also comma-separated) | flag
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return "falserefusal_" + self.name.replace("-", "_")


def comma_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


OPTIONS: tuple[Option, ...] = (
    Option(
        "model",
        "model to test: hub id, local folder, .gguf file, openai:NAME (served) or scripted:SPEC; "
        "repeat to compare several (default: embedded SmolLM2-135M-Instruct)",
        kind="list",
        metavar="MODEL",
    ),
    Option(
        "baseline-model",
        "the previous checkpoint to compare --model with on the same cases (any --model form); "
        "adds the non-inferiority gates of the profile's `noninferiority` margins",
        metavar="MODEL",
    ),
    Option(
        "baseline-results",
        "instead of --baseline-model: a results.jsonl of an earlier run of the baseline model "
        "(same seed, tasks, cases and detector version)",
        metavar="PATH",
    ),
    Option("backend", "backend for models without a prefix: transformers | openai | scripted", default="transformers"),
    Option(
        "samples",
        "request blocks per task; each is asked under every persona and the baseline (default: the profile's samples)",
        type=int,
        metavar="N",
    ),
    Option("seed", "root seed of the Monte Carlo sampler (recorded in every result)", type=int, default=0, metavar="N"),
    Option("profile", "gating profile in thresholds.yaml (default: smoke for the embedded model, release otherwise)"),
    Option(
        "thresholds",
        "gating policy file (default: thresholds.yaml of the project when it has one, else the packaged one)",
        metavar="PATH",
    ),
    Option(
        "report-dir",
        "where results.jsonl, run.json and index.html go (a new run replaces the files of the last one there)",
        default="report",
        metavar="DIR",
    ),
    Option(
        "tasks",
        "comma-separated task ids to run, e.g. offensiveness,story or nli,nli_es,nli_de (default: all but the "
        "open-ended and translated ones, whose task file says default: false)",
        kind="list",
        metavar="IDS",
    ),
    Option(
        "personas",
        "comma-separated persona ids or dimensions (default: all); an intersection id (personas.yaml "
        "intersections:) also asks its markers",
        kind="list",
        metavar="IDS",
    ),
    Option(
        "intersections",
        "also ask every intersection of personas.yaml (with its markers) and, where the profile sets "
        "max_intersectional_excess, gate its compounding",
        kind="flag",
        default=False,
    ),
    Option(
        "persona-placement",
        "where the persona instruction goes: system | user (for templates without a system role)",
        default="system",
    ),
    Option(
        "fixtures-dir",
        "folder with personas.yaml and tasks/*.yaml (default: fixtures/ of the project when it has "
        "one, else the packaged one)",
        metavar="DIR",
    ),
    Option(
        "dataset",
        "replace a task's items: TASK=PATH.csv|PATH.jsonl|HUB_ID (repeatable)",
        kind="list",
        metavar="TASK=SRC",
    ),
    Option("refusal-rules", "YAML file of refusal detector rules (default: the packaged rules)", metavar="PATH"),
    Option(
        "detector",
        "refusal detector: rules (the packaged rule detector) or a name registered by a plugin (entry "
        "point group falserefusal.detectors, or the pytest_falserefusal_detectors hook)",
        default="rules",
        metavar="NAME",
    ),
    Option("device", "auto | cpu | cuda | cuda:N", default="auto"),
    Option("dtype", "auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16", default="auto"),
    Option("batch-size", "generation batch size (0: automatic)", type=int, default=16, metavar="N"),
    Option("max-new-tokens", "generation budget per answer", type=int, default=64, metavar="N"),
    Option("revision", "hub revision (branch, tag or commit) of --model", metavar="REV"),
    Option("trust-remote-code", "allow a hub model's custom code (off unless asked)", kind="flag", default=False),
    Option("no-progress", "hide the generation progress bar", kind="flag", default=False),
    Option(
        "cache-dir",
        "folder of the generation cache; a rerun generates only what is missing "
        "(default: pytest's cache dir, .falserefusal-cache for the command line)",
        metavar="DIR",
    ),
    Option("no-cache", "neither read nor write the generation cache", kind="flag", default=False),
    Option(
        "rescore",
        "re-label cached generations with the current refusal detector without calling the model "
        "(an error if any generation is missing)",
        kind="flag",
        default=False,
    ),
    Option(
        "audit",
        "a detector audit (the summary JSON of `falserefusal audit score`, or the labelled CSV): the report "
        "shows the detector's accuracy and the rates corrected for its error, and a profile with "
        "detector_correction: audit gates on the corrected rates",
        metavar="FILE",
    ),
    Option(
        "base-url",
        "OpenAI-compatible server for openai:NAME models, e.g. http://localhost:8000/v1 "
        "(default: $OPENAI_BASE_URL, else https://api.openai.com/v1)",
        metavar="URL",
    ),
    Option(
        "api-key-env",
        "environment variable that holds the served model's API key",
        default="OPENAI_API_KEY",
        metavar="NAME",
    ),
    Option("concurrency", "requests in flight at once to a served model", type=int, default=8, metavar="N"),
    Option(
        "request-timeout", "seconds to wait for one answer from a served model", type=float, default=120.0, metavar="S"
    ),
    Option(
        "max-retries",
        "retries of a served request after 429/5xx/connection errors (exponential backoff)",
        type=int,
        default=5,
        metavar="N",
    ),
)


def add_options(add: Callable[..., Any], prefix: str = "--") -> None:
    """Register every option through `add` (pytest's group.addoption or argparse's add_argument)."""
    for option in OPTIONS:
        flags = [prefix + option.name]
        if option.kind == "flag":
            add(*flags, dest=option.dest, action="store_true", default=None, help=option.help)
        elif option.kind == "list":
            add(*flags, dest=option.dest, action="append", default=None, metavar=option.metavar, help=option.help)
        else:
            add(
                *flags,
                dest=option.dest,
                default=None,
                metavar=option.metavar or option.name.upper().replace("-", "_"),
                help=option.help + _default_note(option),
            )


def _default_note(option: Option) -> str:
    return f" (default: {option.default})" if option.default is not None and "default" not in option.help else ""


def resolve(option: Option, given: Any, ini: Any = None) -> Any:
    """Command line, then ini (pyproject's [tool.pytest.ini_options]), then the default; converted to the type."""
    raw = given if given not in (None, []) else (ini if ini not in (None, "", []) else None)
    if raw is None:
        return option.default if option.kind != "list" else []
    if option.kind == "flag":
        return raw if isinstance(raw, bool) else str(raw).strip().lower() in {"1", "true", "yes", "on"}
    if option.kind == "list":
        values = raw if isinstance(raw, list) else str(raw).split()
        items: list[str] = []
        for value in values:
            items.extend(comma_list(value) if option.name != "model" else [value])
        return items
    try:
        return option.type(raw)
    except (TypeError, ValueError):
        from falserefusal.types import FalseRefusalError

        kind = {"int": "a whole number", "float": "a number"}.get(option.type.__name__, option.type.__name__)
        example = option.default if option.default is not None else 1
        raise FalseRefusalError(
            f"--{option.name} {raw}: not {kind}; fix: give e.g. --{option.name} {example}"
        ) from None


#: config files pytest reads, in its order within one folder, with where its settings sit (pytest.ini always counts)
CONFIG_FILES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pytest.ini", ("pytest",)),
    (".pytest.ini", ("pytest",)),
    ("pytest.toml", ("pytest",)),
    (".pytest.toml", ("pytest",)),
    ("pyproject.toml", ("tool", "pytest", "ini_options")),
    ("tox.ini", ("pytest",)),
    ("setup.cfg", ("tool:pytest",)),
)


def project_settings(start: str | Path = ".") -> tuple[dict[str, Any], Path | None]:
    """The falserefusal_* settings the pytest plugin would read, for the command line: from the first config file
    pytest would pick in `start` or a folder above it (pytest.ini, pyproject.toml's [tool.pytest.ini_options],
    tox.ini's [pytest], setup.cfg's [tool:pytest]), keyed by option dest; and that file. Relative paths in them and
    on the command line then resolve against the file's folder, as in pytest."""
    from falserefusal.types import FalseRefusalError

    folder = Path(start).resolve()
    for directory in (folder, *folder.parents):
        for name, section in CONFIG_FILES:
            path = directory / name
            if not path.is_file():
                continue
            table = _config_table(path, section)
            if table is None:
                continue
            settings = {key: value for key, value in table.items() if str(key).startswith("falserefusal_")}
            known = {option.dest for option in OPTIONS}
            unknown = sorted(set(settings) - known)
            if unknown:
                raise FalseRefusalError(
                    f"{path}: {unknown[0]} is not a falserefusal option; fix: use one of "
                    f"falserefusal_<option> with <option> from `falserefusal run --help` ('_' for '-')"
                )
            return settings, path
    return {}, None


def _config_table(path: Path, section: tuple[str, ...]) -> dict[str, Any] | None:
    """The settings table of one config file, or None when the file holds no pytest section (pytest skips it then)."""
    from falserefusal.types import FalseRefusalError

    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
                import tomli as tomllib  # type: ignore[no-redef]
            table: Any = tomllib.loads(text)
            for key in section:
                table = table.get(key) if isinstance(table, dict) else None
            if path.name == "pyproject.toml" and table is None:  # pytest 9 also reads [tool.pytest] itself
                table = tomllib.loads(text).get("tool", {}).get("pytest")
                table = {k: v for k, v in table.items() if k != "ini_options"} if isinstance(table, dict) else None
            return dict(table) if isinstance(table, dict) else ({} if path.stem.lstrip(".") == "pytest" else None)
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(text, source=str(path))
        if parser.has_section(section[0]):
            return dict(parser.items(section[0]))
        return {} if path.name in ("pytest.ini", ".pytest.ini") else None
    except (OSError, UnicodeDecodeError, ValueError, configparser.Error) as error:
        raise FalseRefusalError(
            f"{path}: cannot read it ({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
            "fix: repair the file (pytest reads it too)"
        ) from None
