"""The transformers backend: hub ids, local folders and .gguf files, greedy decoding in left-padded batches."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from transformers import StoppingCriteria, StoppingCriteriaList

from falserefusal.generation.backends import DEFAULT_MODEL_NAME, BackendOptions, StopWhen, default_model_path
from falserefusal.types import Completion, FalseRefusalError, GenerationRequest

log = logging.getLogger(__name__)

#: CPU batch size for --batch-size 0: SmolLM2 fp32 on 2 cores gives 5.0 prompts/s at 16 and 5.6 at 64
CPU_BATCH_SIZE = 16
#: GPU batch sizes stay within this (beyond it a step is compute-bound and latency per batch only grows)
MAX_AUTO_BATCH_SIZE = 256


class DecidedRows(StoppingCriteria):
    """Per-row stopping: a row stops once `stop_when(text so far, request)` says its verdict is settled.

    Cheap enough to run every step: only rows still generating are decoded (a few dozen tokens each, on the
    host copy of the new column), and rows ended by EOS or already decided are skipped. `every` > 1 checks
    every that many tokens (for fast GPU steps); a row then stops up to every-1 tokens later, still decided.
    """

    def __init__(
        self,
        tokenizer: Any,
        requests: Sequence[GenerationRequest],
        prompt_length: int,
        stop_when: StopWhen,
        every: int = 1,
    ) -> None:
        self.tokenizer = tokenizer
        self.every = max(1, every)
        self.requests = list(requests)
        self.prompt_length = prompt_length
        self.stop_when = stop_when
        self.eos = tokenizer.eos_token_id
        self.tokens: list[list[int]] = [[] for _ in self.requests]
        self.ended = [False] * len(self.requests)  # EOS (generate itself stops those rows)
        self.decided_at: list[int | None] = [None] * len(self.requests)  # generated tokens when decided

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        new = input_ids[:, -1].tolist()  # one host sync per step; generate syncs once per step anyway
        for row, token in enumerate(new):
            if self.ended[row] or self.decided_at[row] is not None:
                continue
            if token == self.eos:
                self.ended[row] = True
                continue
            self.tokens[row].append(token)
            if len(self.tokens[row]) % self.every:
                continue
            # a byte-level token may end inside a UTF-8 character: drop the partial character, keep a true prefix
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True).lstrip().rstrip("\ufffd")
            if self.stop_when(text, self.requests[row]):
                self.decided_at[row] = len(self.tokens[row])
        done = [at is not None for at in self.decided_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_cache_dir() -> Path:
    """Where dequantised copies of GGUF files live (parsing a GGUF in Python takes ~18 s; the copy loads in ~2 s)."""
    root = os.environ.get("FALSEREFUSAL_MODEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "falserefusal", "converted"
    )
    return Path(root)


class TransformersBackend:
    """A causal LM under its chat template. fp32 on CPU (batch-invariant outputs); bf16 on GPU."""

    name = "transformers"
    stop_check_every = 1  # tokens between decided-early checks of a row (see DecidedRows)

    def __init__(self, model: str, options: BackendOptions) -> None:
        self.model = model or DEFAULT_MODEL_NAME
        self.options = options
        self._identity: dict[str, Any] = {"backend": self.name, "model": self.model}
        import torch  # heavy: imported only when this backend is used

        self.torch = torch
        self.device = self._pick_device(options.device)
        self.dtype = self._pick_dtype(options.dtype)
        self.tokenizer, self.lm = self._load()
        self.tokenizer.padding_side = "left"  # decoder-only batches must be left-padded
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm.eval()
        if self.device.startswith("cuda"):
            # a GPU step is fast: decoding every unfinished row each token cost 1.29x raw generate at batch 256
            # (Llama-3.1-8B shape, H200), every 4 tokens 1.06x (scripts/gpu_bench.py)
            self.stop_check_every = 4
        template = getattr(self.tokenizer, "chat_template", None) or ""
        if not template:
            raise FalseRefusalError(
                f"--model {self.model}: the tokenizer has no chat template; fix: use an instruct/chat model"
            )
        self._identity.update(
            chat_template_sha256=hashlib.sha256(template.encode("utf-8")).hexdigest()[:16],
            dtype=str(self.dtype).removeprefix("torch."),
            device=str(self.device),
        )

    # ----- loading -----------------------------------------------------------------------------------------------
    def _pick_device(self, device: str) -> str:
        if device == "auto":
            return "cuda" if self.torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not self.torch.cuda.is_available():
            raise FalseRefusalError(f"--device {device}: CUDA is not available on this machine; fix: --device cpu")
        return device

    def _pick_dtype(self, dtype: str) -> Any:
        torch = self.torch
        if dtype == "auto":
            if self.device.startswith("cuda"):
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float32  # CPU bf16 is fast on AMX but not batch-invariant: labels flip with batch size
        choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in choices:
            raise FalseRefusalError(f"--dtype {dtype}: use one of auto, {', '.join(choices)}")
        if self.device == "cpu" and dtype != "float32":
            warnings.warn(
                f"--dtype {dtype} on CPU: outputs change with batch size; use float32 for a reproducible gate",
                stacklevel=2,
            )
        return choices[dtype]

    def _load_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dtype": self.dtype, "trust_remote_code": self.options.trust_remote_code}
        if self.device.startswith("cuda"):
            # "auto" spreads a large model over the GPUs this process sees (one per xdist worker when pinned)
            kwargs["device_map"] = "auto" if self.device == "cuda" else {"": self.device}
        return kwargs

    def _load(self) -> tuple[Any, Any]:
        if self.model == DEFAULT_MODEL_NAME:
            return self._load_gguf(default_model_path())
        path = Path(self.model).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FalseRefusalError(f"--model {self.model}: GGUF file not found; fix: check the path")
            return self._load_gguf(path)
        if path.is_dir():
            self._identity["folder"] = str(path.resolve())
            self._identity["weights_sha256"] = _folder_fingerprint(path)
            return self._from_pretrained(str(path), {})
        if self.model.startswith((".", "/", "~")):
            raise FalseRefusalError(f"--model {self.model}: no such file or folder; fix: check the path")
        revision = self.options.revision
        self._identity["revision"] = revision or "main"
        self._identity["commit"] = _hub_commit(self.model, revision)
        return self._from_pretrained(self.model, {"revision": revision} if revision else {})

    def _from_pretrained(self, source: str, extra: dict[str, Any]) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.options.trust_remote_code, **extra)
            lm = AutoModelForCausalLM.from_pretrained(source, **self._load_kwargs(), **extra)
        except OSError as error:
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise FalseRefusalError(
                f"--model {self.model}: cannot load ({first}); fix: check the id, your network/HF_TOKEN, or pass a "
                "local folder or .gguf"
            ) from None
        except ValueError as error:
            if "trust_remote_code" in str(error):
                raise FalseRefusalError(
                    f"--model {self.model}: needs custom code; fix: review it, then pass --trust-remote-code"
                ) from None
            raise
        if not self.device.startswith("cuda"):
            # transformers wraps PreTrainedModel.to, and its stubs lose the bound self
            lm = lm.to(self.device)  # type: ignore[arg-type]
        return tokenizer, lm

    def _load_gguf(self, path: Path) -> tuple[Any, Any]:
        """Load a GGUF (dequantised), reusing a converted safetensors copy keyed by the file's hash."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        sha = file_sha256(path)
        self._identity.update(gguf_file=path.name, file_sha256=sha)
        converted = converted_cache_dir() / sha[:24]
        if (converted / "config.json").is_file() and any(converted.glob("*.safetensors")):
            try:
                return self._from_pretrained(str(converted), {})
            except Exception as error:  # a half-written copy: fall back to the GGUF and rewrite it
                log.warning("converted copy %s unusable (%s); reconverting", converted, error)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **self._load_kwargs())
        try:
            self._save_converted(tokenizer, lm, converted)
        except OSError as error:  # a read-only cache only costs load time
            log.warning("cannot cache converted model at %s: %s", converted, error)
        if not self.device.startswith("cuda"):
            # transformers wraps PreTrainedModel.to, and its stubs lose the bound self
            lm = lm.to(self.device)  # type: ignore[arg-type]
        return tokenizer, lm

    @staticmethod
    def _save_converted(tokenizer: Any, lm: Any, target: Path) -> None:
        # save_pretrained refuses a GGUF-loaded model while it still carries its quantizer
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        staging = target.with_name(target.name + f".tmp{os.getpid()}")
        lm.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        staging.replace(target) if not target.exists() else None

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    # ----- generation --------------------------------------------------------------------------------------------
    def render(self, request: GenerationRequest) -> str:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # jinja2 TemplateError: e.g. "System role not supported"
            raise FalseRefusalError(
                f"--model {self.model}: its chat template rejects this chat ({error}); fix: --persona-placement user"
            ) from None

    def prompt_lengths(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Prompt length of each request in tokens, for bucketing (padding is paid per token, not per character)."""
        texts = [self.render(r) for r in requests]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def auto_batch_size(self, requests: Sequence[GenerationRequest], max_new_tokens: int) -> int:
        """Batch size for --batch-size 0: CPU 16 (throughput flattens beyond it); GPU from free memory, then a probe."""
        if not self.device.startswith("cuda"):
            return CPU_BATCH_SIZE
        torch = self.torch
        longest = max(self.prompt_lengths(requests), default=1) + max_new_tokens
        free, _ = torch.cuda.mem_get_info(self.lm.device)
        size = pick_batch_size(free, kv_bytes_per_token(self.lm.config, self.dtype), longest, self.lm.config)
        probe = list(requests[:1]) * size  # the longest rows come last after bucketing; any row sizes the KV cache
        while size > 1:
            try:
                self._generate_ids(self._batch(probe, pad_to=longest - max_new_tokens), 2, None, probe)
                break
            except torch.cuda.OutOfMemoryError:
                self.release_memory()
                size //= 2
                probe = probe[:size]
        self.release_memory()
        log.info("automatic batch size %d (%.1f GiB free)", size, free / 2**30)
        return size

    def release_memory(self) -> None:
        """After a CUDA out-of-memory: give the cached blocks back so a smaller batch can fit."""
        if self.torch.cuda.is_available():
            self.torch.cuda.empty_cache()

    def _batch(self, requests: Sequence[GenerationRequest], pad_to: int | None = None) -> Any:
        texts = [self.render(r) for r in requests]
        padding: Any = "max_length" if pad_to else True
        return self.tokenizer(
            texts, return_tensors="pt", padding=padding, max_length=pad_to, add_special_tokens=False
        ).to(self.lm.device)

    def _generate_ids(
        self, batch: Any, max_new_tokens: int, stop_when: StopWhen | None, requests: Sequence[GenerationRequest]
    ) -> tuple[Any, "DecidedRows | None"]:
        torch = self.torch
        criteria = None
        extra: dict[str, Any] = {}
        if stop_when is not None:
            criteria = DecidedRows(
                self.tokenizer, requests, batch["input_ids"].shape[1], stop_when, self.stop_check_every
            )
            extra["stopping_criteria"] = StoppingCriteriaList([criteria])
        with torch.inference_mode():
            output = self.lm.generate(
                **batch,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
                **extra,
            )
        return output, criteria

    def generate(
        self, requests: Sequence[GenerationRequest], max_new_tokens: int, stop_when: StopWhen | None = None
    ) -> list[Completion]:
        batch = self._batch(requests)
        prompt_length = batch["input_ids"].shape[1]
        output, criteria = self._generate_ids(batch, max_new_tokens, stop_when, requests)
        completions = []
        eos = self.tokenizer.eos_token_id
        for index, row in enumerate(output[:, prompt_length:].tolist()):
            decided = criteria.decided_at[index] if criteria is not None else None
            if decided is not None:
                n_tokens, reason = decided, "decided"
            elif eos in row:
                n_tokens, reason = row.index(eos) + 1, "stop"
            else:
                n_tokens, reason = len(row), "length"
            text = self.tokenizer.decode(row[:n_tokens], skip_special_tokens=True).strip()
            completions.append(Completion(text=text, n_tokens=n_tokens, finish_reason=reason))
        return completions

    def close(self) -> None:
        del self.lm
        if self.torch.cuda.is_available():
            self.torch.cuda.empty_cache()


def kv_bytes_per_token(config: Any, dtype: Any) -> int:
    """KV-cache bytes one token of one row takes: keys and values of every layer."""
    heads = getattr(config, "num_attention_heads", 32)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize


def pick_batch_size(free_bytes: int, kv_per_token: int, sequence_length: int, config: Any) -> int:
    """Largest power of two whose KV cache plus per-row activations (logits over the vocabulary, hidden states
    of a prefill) fit in 70% of free memory; the probe and OOM halving correct the estimate."""
    vocab = getattr(config, "vocab_size", 32000)
    hidden = getattr(config, "hidden_size", 4096)
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    per_row = kv_per_token * sequence_length + 4 * vocab * 2 + 4 * sequence_length * (hidden * 4 + intermediate * 2)
    size = 1
    while size * 2 <= MAX_AUTO_BATCH_SIZE and size * 2 * per_row <= 0.7 * free_bytes:
        size *= 2
    return size


def _folder_fingerprint(path: Path) -> str:
    """Hash of weight file names and sizes: cheap, and changes when the checkpoint does."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*")):
        if file.suffix in {".safetensors", ".bin", ".json", ".model"}:
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _hub_commit(model: str, revision: str | None) -> str | None:
    """The exact commit a hub id resolves to (for the record); None when offline."""
    try:
        from huggingface_hub import model_info

        return model_info(model, revision=revision).sha
    except Exception:
        return None
