"""The Generator: loaded backends, the detector and the generation cache; cases in, labelled records out."""

from __future__ import annotations

import time
from typing import Any, Sequence

from falserefusal import registry
from falserefusal.generation.backends import Backend, Capabilities
from falserefusal.generation.cache import Cached, CachedBackend, CacheKey, GenerationCache
from falserefusal.generation.models import ModelRef
from falserefusal.generation.scheduling import length_order, run_batches
from falserefusal.run.config import RunConfig
from falserefusal.types import Case, Completion, FalseRefusalError, GenerationRequest, Record, Verdict


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
        self.refs: dict[str, ModelRef] = {}
        self.timings: dict[str, float] = {"load_s": 0.0, "generate_s": 0.0}
        self.batch_sizes: dict[str, int] = {}  # per model: the batch size in use (after automatic pick or halving)
        self.progress_position = progress_position
        self.cache = GenerationCache(config.cache_path()) if config.use_cache else None
        #: generations served from the cache and generations the model was asked for (its calls, counted in cases)
        self.cache_counts: dict[str, int] = {"hits": 0, "generated": 0}
        self.cached_identities: dict[str, dict[str, Any]] = {}  # --rescore: identities read from the cache

    def ref(self, model: str) -> ModelRef:
        """The model's reference (its backend kind), resolved once per model."""
        if model not in self.refs:
            self.refs[model] = ModelRef.of(model, self.config.backend)
        return self.refs[model]

    def backend(self, model: str) -> Backend:
        if model not in self.backends:
            started = time.perf_counter()
            try:
                self.backends[model] = registry.load_backend(
                    model, self.ref(model).kind, self.config.backend_options, self.config.seed
                )
            except (OSError, ValueError, RuntimeError, ImportError) as error:  # what prepare() could not foresee
                first = (str(error).strip().splitlines() or [""])[0][:200]
                raise FalseRefusalError(
                    f"--model {model}: cannot load ({type(error).__name__}: {first}); fix: check that "
                    "it is a chat model that transformers can load"
                ) from None
            self.timings["load_s"] += time.perf_counter() - started
        return self.backends[model]

    def identities(self) -> dict[str, dict[str, Any]]:
        return {**self.cached_identities, **{model: backend.identity() for model, backend in self.backends.items()}}

    def cache_stats(self) -> dict[str, Any]:
        return {
            "enabled": self.cache is not None,
            "path": str(self.cache.path) if self.cache else None,
            "rescore": self.config.rescore,
            **self.cache_counts,
        }

    def generate(self, model: str, cases: Sequence[Case], label: str = "") -> list[Record]:
        """Answer every case with the model (or the cache) and label the answers; batches are bucketed by prompt
        length (tokens where the backend can count them) and each generated batch is committed to the cache before
        the next one starts. A row stops as soon as the detector's verdict on it is settled (`is_decided`), so
        short answers free their batch; on out-of-memory a batch is retried at half the size."""
        kind = self.ref(model).kind
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
            detector = self.detector
            caching = CachedBackend(backend, self.cache, kind, model, decoding_settings(self.config, detector.version))
            completions = caching.stored(requests)
            from_cache = set(completions)
            self.cache_counts["hits"] += len(from_cache)
            capabilities = Capabilities.of(backend)
            size = options.batch_size or self._auto_batch_size(model, capabilities, requests)
            size = max(size, capabilities.min_batch_size)  # a served model needs enough requests to fill its slots
            # similar lengths in a batch waste less padding; the order of records is restored afterwards. The batches
            # are fixed before the cache is read, so a resumed run batches its missing cases as the first run would have
            lengths = capabilities.prompt_lengths
            order = length_order(
                lengths(requests) if lengths else [sum(len(m.content) for m in c.messages) for c in cases]
            )
            batches = [order[start : start + size] for start in range(0, len(order), size)]
            labels = {case.case_id: case.labels for case in cases}

            def stop_when(text: str, request: GenerationRequest) -> bool:
                return detector.is_decided(text, labels[request.case_id])

            with _progress(
                len(cases), label or model, self.config.progress, self.progress_position, len(from_cache)
            ) as bar:

                def done(chunk: Sequence[int], answers: Sequence[Completion]) -> None:
                    completions.update(zip(chunk, answers))  # already committed to the cache by `caching`
                    self.cache_counts["generated"] += len(chunk)
                    bar.update(len(chunk))

                for batch in batches:
                    todo = [i for i in batch if i not in completions]
                    if todo:
                        _, size = run_batches(
                            todo,
                            size,
                            lambda chunk: caching.generate(
                                [requests[i] for i in chunk], options.max_new_tokens, stop_when
                            ),
                            on_oom=capabilities.release_memory,
                            done=done,
                        )
            self.batch_sizes[model] = size
        self.timings["generate_s"] += time.perf_counter() - started
        # one call for the batch: the learned layer scores all answers in one matrix product
        verdicts = self.detector.detect_many(
            [completions[i].text for i in range(len(cases))], [case.labels for case in cases]
        )
        return [
            self._record(model, kind, cases[i], completions[i], verdicts[i], i in from_cache) for i in range(len(cases))
        ]

    def _record(
        self, model: str, kind: str, case: Case, completion: Completion, verdict: Verdict, cached: bool
    ) -> Record:
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

    def _auto_batch_size(self, model: str, capabilities: Capabilities, requests: Sequence[GenerationRequest]) -> int:
        """--batch-size 0: the backend's pick (GPU: from free memory), found once per model."""
        if model not in self.batch_sizes:
            pick = capabilities.auto_batch_size
            self.batch_sizes[model] = pick(requests, self.config.backend_options.max_new_tokens) if pick else 16
        return self.batch_sizes[model]

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self.backends.clear()
        if self.cache is not None:
            self.cache.close()
            self.cache = None


def decoding_settings(config: RunConfig, detector_version: str | None = None) -> dict[str, Any]:
    """Every setting besides the model and the request that changes the text a backend returns: part of the
    cache key. An early-stop policy goes under "stop", with the detector version that drives it (its rules and
    decision window decide where a row stops)."""
    stop = {"policy": "decided", "detector": detector_version} if detector_version else None
    return {"max_new_tokens": config.backend_options.max_new_tokens, "stop": stop}


def _rescore_keys(config: RunConfig, model: str, cases: Sequence[Case]) -> tuple[str, str, list[CacheKey]]:
    """(backend, model, keys) to find a model's cached generations of `cases` by request only, whatever its identity."""
    kind = ModelRef.of(model, config.backend).kind
    return kind, model, [CacheKey.of(kind, model, {}, request_for(case), decoding_settings(config)) for case in cases]


def cached_for_rescore(
    cache: GenerationCache, config: RunConfig, model: str, cases: Sequence[Case], label: str
) -> list[Cached]:
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

    return tqdm(
        total=total,
        initial=cached,
        desc=f"generating {label}",
        unit="case",
        position=position,
        leave=True,
        dynamic_ncols=True,
        postfix={"cached": cached},
    )


def generation_stopped(error: FalseRefusalError, generator: "Generator") -> FalseRefusalError:
    """The error of a model that broke off mid-run (a server went away, memory ran out at batch size 1)."""
    resumes = generator.cache is not None and generator.cache_counts.get("generated", 0) > 0  # this run committed some
    kept = "; finished batches are in the generation cache, so a rerun resumes" if resumes else ""
    return FalseRefusalError(f"generation stopped: {error}{kept}")
