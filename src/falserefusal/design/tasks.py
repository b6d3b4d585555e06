"""Tasks, their items and prompt paraphrases: bundled YAML fixtures, local CSV/JSONL files, Hugging Face datasets."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from falserefusal.design.languages import DEFAULT_LANGUAGE, check_language
from falserefusal.design.personas import check_keys, read_yaml
from falserefusal.types import FORCING_LEVELS, FalseRefusalError, Item, Paraphrase, Task

_TASK_KEYS = {"id", "description", "labels", "fields", "paraphrases", "items", "dataset", "default"} | {
    "language",  # en (default) | es | de: the prompts' language; persona instructions are worded in it
    "label_words",  # label -> its words in that language, shown in prompts and read by the detector
}
_PARAPHRASE_KEYS = {"id", "forcing_level", "template"}
_DATASET_KEYS = {"source", "split", "columns", "label_map", "limit", "config"}


@dataclass(frozen=True)
class TaskSpec:
    """A task with everything needed to draw cases from it."""

    task: Task
    paraphrases: tuple[Paraphrase, ...]
    items: tuple[Item, ...]
    source: str  # where the items came from (file path or dataset id), for the run metadata
    dropped: tuple[int, int] = (0, 0)  # dataset rows left out for a label outside the task's labels, of rows read
    default: bool = True  # run without --tasks; open-ended tasks say `default: false` and run only when named


#: a dataset may lose at most this share of its rows to labels outside the task's: SNLI's unlabelled "-1" rows are
#: 1.6% of its validation split (0.1% of train); losing more than a tenth points to a wrong label_map or label
#: column, and the items kept would be the ones whose labels happen to match, not the dataset
MAX_DROPPED_SHARE = 0.10


def dataset_notes(tasks: Sequence[TaskSpec]) -> tuple[str, ...]:
    """One line per task whose dataset lost rows to labels outside the task's (the run prints and records it)."""
    return tuple(
        f"task {spec.task.id}: {spec.dropped[0]} of {spec.dropped[1]} rows of {spec.source} have a label outside "
        f"{format_labels(spec.task.labels)} and are left out"
        for spec in tasks
        if spec.dropped[0]
    )


def format_labels(labels: Sequence[str]) -> str:
    return ", ".join(labels)


def render_prompt(task: Task, paraphrase: Paraphrase, item: Item) -> str:
    return paraphrase.template.format(**item.fields, labels=format_labels(task.shown_labels))


def load_task_file(path: Path) -> TaskSpec:
    """Read one task YAML: labels, fields, paraphrases and either inline items or a `dataset:` source.

    A task without labels (`labels: []` or none) is open-ended: its items have no label and its templates no {labels}.
    """
    data = check_keys(path, "the task", read_yaml(path), _TASK_KEYS, {"id", "fields", "paraphrases"})
    if not isinstance(data.get("default", True), bool):
        raise FalseRefusalError(
            f"{path}: default must be true or false; "
            "fix: write `default: false` to run the task only when --tasks names it"
        )
    labels = tuple(str(label) for label in data.get("labels") or ())
    task = Task(
        id=str(data["id"]),
        labels=labels,
        fields=tuple(str(f) for f in data["fields"]),
        description=str(data.get("description", "")),
        language=check_language(str(path), data.get("language", DEFAULT_LANGUAGE)),
        label_words=label_words_of(path, labels, data.get("label_words")),
    )
    paraphrases = []
    for index, entry in enumerate(data["paraphrases"] or []):
        entry = check_keys(path, f"paraphrase #{index + 1}", entry, _PARAPHRASE_KEYS, _PARAPHRASE_KEYS)
        if entry["forcing_level"] not in FORCING_LEVELS:
            raise FalseRefusalError(
                f"{path}: paraphrase '{entry['id']}' has forcing_level '{entry['forcing_level']}'; "
                f"use one of {', '.join(FORCING_LEVELS)}"
            )
        paraphrases.append(Paraphrase(str(entry["id"]), task.id, str(entry["forcing_level"]), str(entry["template"])))
    if not paraphrases:
        raise FalseRefusalError(f"{path}: task '{task.id}' has no paraphrases; fix: add at least one")
    if "items" in data and "dataset" in data:
        raise FalseRefusalError(f"{path}: give either items or dataset, not both")
    if "dataset" in data:
        dataset = check_keys(path, "dataset", data["dataset"], _DATASET_KEYS, {"source"})
        source = str(dataset["source"])
        if not _looks_like_hub_id(source):
            source = str((path.parent / source).resolve()) if not Path(source).is_absolute() else source
        items, dropped = load_dataset_items(
            task,
            source,
            dataset.get("columns"),
            dataset.get("label_map"),
            dataset.get("split", "validation"),
            dataset.get("limit"),
            dataset.get("config"),
        )
    else:
        source, dropped = str(path), (0, 0)
        items = tuple(_item_from_entry(path, task, index, entry) for index, entry in enumerate(data.get("items") or []))
    spec = TaskSpec(task, tuple(paraphrases), items, source, dropped, bool(data.get("default", True)))
    validate_task(spec, str(path))
    return spec


def label_words_of(path: Path, labels: tuple[str, ...], entry: Any) -> tuple[tuple[str, ...], ...]:
    """`label_words:` (label -> its words in the task's language, the first shown in prompts): every label, no other."""
    if entry is None:
        return ()
    if not isinstance(entry, dict) or set(map(str, entry)) != set(labels):
        raise FalseRefusalError(
            f"{path}: label_words must map each of the labels ({format_labels(labels)}) to its words; fix the keys"
        )
    by_label = {str(key): value for key, value in entry.items()}
    words = []
    for label in labels:
        value = by_label[label]
        listed = [str(w).strip() for w in (value if isinstance(value, list) else [value])]
        if not listed or not all(listed):
            raise FalseRefusalError(f"{path}: label_words.{label} needs at least one non-empty word; fix the entry")
        words.append(tuple(listed))
    return tuple(words)


def _item_from_entry(path: Path | str, task: Task, index: int, entry: Any) -> Item:
    required = {"label", *task.fields} if task.labels else set(task.fields)
    entry = check_keys(Path(path), f"item #{index + 1}", entry, {"id", "label", *task.fields}, required)
    if not task.labels and "label" in entry:
        raise FalseRefusalError(
            f"{path}: item #{index + 1} has a label but task '{task.id}' has none; "
            "fix: list the task's labels, or drop the item's label for an open-ended task"
        )
    label = str(entry["label"]) if task.labels else ""  # an open-ended item has no label
    if task.labels and label not in task.labels:
        raise FalseRefusalError(
            f"{path}: item #{index + 1} has label '{label}', not one of {format_labels(task.labels)}"
        )
    item_id = str(entry.get("id") or f"{task.id}-{index + 1:05d}")
    return Item(task=task.id, id=item_id, fields={f: str(entry[f]) for f in task.fields}, label=label)


def validate_task(spec: TaskSpec, source: str) -> None:
    """Every template must format with every item; ids must be unique; there must be items."""
    if not spec.items:
        raise FalseRefusalError(f"{source}: task '{spec.task.id}' has no items; fix: add items or a dataset source")
    for kind, ids in (("item", [i.id for i in spec.items]), ("paraphrase", [p.id for p in spec.paraphrases])):
        if len(set(ids)) != len(ids):
            raise FalseRefusalError(f"{source}: duplicate {kind} ids in task '{spec.task.id}'; fix: make them unique")
    for paraphrase in spec.paraphrases:
        if not spec.task.labels and "{labels}" in paraphrase.template:
            raise FalseRefusalError(
                f"{source}: paraphrase '{paraphrase.id}' uses {{labels}} but task '{spec.task.id}' has no labels; "
                "fix: add labels or drop {labels} from the template"
            )
        try:
            render_prompt(spec.task, paraphrase, spec.items[0])
        except (KeyError, IndexError, ValueError) as error:
            raise FalseRefusalError(
                f"{source}: paraphrase '{paraphrase.id}' uses an unknown placeholder {error}; "
                f"available: {', '.join(spec.task.fields)}, labels"
            ) from None


def _looks_like_hub_id(source: str) -> bool:
    return Path(source).suffix.lower() not in {".csv", ".jsonl", ".json"} and not Path(source).exists()


def load_dataset_items(
    task: Task,
    source: str,
    columns: Mapping[str, str] | None = None,
    label_map: Mapping[Any, str] | None = None,
    split: str = "validation",
    limit: int | None = None,
    config: str | None = None,
) -> tuple[tuple[Item, ...], tuple[int, int]]:
    """Items from a local .csv/.jsonl file or a Hugging Face `datasets` id, renaming columns to the task's fields,
    with (rows left out for their label, rows read).

    `columns` maps task field (and "label", optionally "id") to the source column; `label_map` maps raw label
    values (e.g. SNLI's 0/1/2) to the task's labels. Rows whose label is unmapped (SNLI's -1) are left out and
    counted; more than MAX_DROPPED_SHARE of them is an error.
    """
    columns = dict(columns or {})
    rows: list[Mapping[str, Any]]
    suffix = Path(source).suffix.lower()
    if suffix == ".csv":
        rows = _read_local(source, lambda f: list(csv.DictReader(f)))
    elif suffix in {".jsonl", ".json"}:
        rows = _read_local(source, lambda f: [json.loads(line) for line in f if line.strip()])
    else:
        rows = _read_hub(source, split, config)
    mapping = {field: columns.get(field, field) for field in (*task.fields, *(("label",) if task.labels else ()))}
    labels = {str(k): str(v) for k, v in (label_map or {}).items()}
    items: list[Item] = []
    outside: list[str] = []  # labels of the rows left out
    read = 0
    for row_number, row in enumerate(rows):
        read += 1
        missing = [col for col in mapping.values() if col not in row]
        if missing:
            raise FalseRefusalError(
                f"{source}: row {row_number + 1} has no column(s) {', '.join(missing)}; "
                f"fix: map them with dataset.columns (present: {', '.join(map(str, row))})"
            )
        raw_label = str(row[mapping["label"]]) if task.labels else ""
        label = labels.get(raw_label, raw_label)
        if task.labels and label not in task.labels:
            outside.append(raw_label)  # unlabelled or out-of-scheme rows (e.g. SNLI's -1) are not usable items
            continue
        item_id = str(row[columns["id"]]) if "id" in columns else f"{task.id}-{row_number + 1:05d}"
        items.append(Item(task=task.id, id=item_id, fields={f: str(row[mapping[f]]) for f in task.fields}, label=label))
        if limit is not None and len(items) >= int(limit):
            break
    if not items:
        raise FalseRefusalError(
            f"{source}: no row has a label in {format_labels(task.labels)}; fix: set dataset.label_map"
        )
    if len(outside) > MAX_DROPPED_SHARE * read:
        raise FalseRefusalError(
            f"{source}: {len(outside)} of {read} rows have a label outside {format_labels(task.labels)} (e.g. "
            f"{outside[0]!r}), more than {MAX_DROPPED_SHARE:.0%}: a wrong label_map or label column?; fix: map the "
            "labels with dataset.label_map (or the column with dataset.columns), or remove those rows"
        )
    return tuple(items), (len(outside), read)


def _read_local(source: str, parse: Any) -> list[Mapping[str, Any]]:
    try:
        with open(source, encoding="utf-8", newline="") as handle:
            return parse(handle)
    except FileNotFoundError:
        raise FalseRefusalError(f"{source}: dataset file not found; fix: check the path") from None
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as error:
        raise FalseRefusalError(
            f"{source}: cannot parse ({error}); fix: one JSON object per line, or a CSV with a header"
        ) from None


def _read_hub(dataset_id: str, split: str, config: str | None) -> list[Mapping[str, Any]]:
    try:
        import datasets  # optional: only needed for hub datasets
    except ImportError:
        raise FalseRefusalError(
            f"{dataset_id}: loading a Hugging Face dataset needs the `datasets` package; fix: pip install datasets"
        ) from None
    try:
        return list(datasets.load_dataset(dataset_id, config, split=split))
    except Exception as error:  # the hub raises many types: connection, 404, auth
        raise FalseRefusalError(
            f"{dataset_id}: cannot load from the Hugging Face hub ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160]}); "
            "fix: check the id and network, or point dataset.source at a local .csv/.jsonl"
        ) from None


def load_tasks(
    fixtures_dir: Path, wanted: Sequence[str] | None = None, overrides: Mapping[str, str] | None = None
) -> tuple[TaskSpec, ...]:
    """The tasks under fixtures_dir/tasks (sorted by id) that `wanted` names, else those not marked `default: false`;
    with dataset overrides."""
    task_dir = fixtures_dir / "tasks"
    files = sorted(task_dir.glob("*.yaml"))
    if not files:
        raise FalseRefusalError(
            f"{task_dir}: no task files (*.yaml); fix: point --fixtures-dir at a folder with tasks/"
        )
    specs = {spec.task.id: spec for spec in map(load_task_file, files)}
    for task_id, source in (overrides or {}).items():
        if task_id not in specs:
            raise FalseRefusalError(f"--dataset {task_id}=...: unknown task; known: {', '.join(sorted(specs))}")
        old = specs[task_id]
        items, dropped = load_dataset_items(old.task, source)
        specs[task_id] = TaskSpec(old.task, old.paraphrases, items, source, dropped, old.default)
        validate_task(specs[task_id], source)
    if wanted:
        unknown = [t for t in wanted if t not in specs]
        if unknown:
            raise FalseRefusalError(f"--tasks: unknown task {', '.join(unknown)}; known: {', '.join(sorted(specs))}")
        return tuple(specs[t] for t in sorted(set(wanted)))
    # without --tasks: the tasks marked default (all but the open-ended ones); all of them if none is
    chosen = [t for t in sorted(specs) if specs[t].default] or sorted(specs)
    return tuple(specs[t] for t in chosen)
