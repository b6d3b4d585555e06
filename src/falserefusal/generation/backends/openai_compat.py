"""The OpenAI-compatible backend: chat completions from a served model (vLLM, SGLang, TGI, llama.cpp, hosted APIs).

Greedy (temperature 0), max_tokens = the generation budget, at most `--concurrency` requests in flight. The
`openai` SDK (imported only when this backend is used) retries 408/409/429/5xx and connection errors with
exponential backoff and jitter, honouring the server's Retry-After; every failure that survives the retries
becomes one FalseRefusalError line that names the option to fix.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

from falserefusal.generation.backends import BackendOptions, StopWhen
from falserefusal.types import Completion, FalseRefusalError, GenerationRequest

PREFIX = "openai:"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: model-card fields that change between two calls to /v1/models (vLLM stamps `created` per call and gives
#: permissions random ids), so they stay out of the identity the cache keys on
VOLATILE_CARD_FIELDS = {"created", "permission", "permissions"}


def served_name(model: str) -> str:
    """`openai:NAME` or a bare NAME given with --backend openai -> the name the server knows."""
    return model.removeprefix(PREFIX)


def resolve_base_url(options: BackendOptions) -> str:
    return (options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def brief(text: object, limit: int = 200) -> str:
    """Server text for a one-line error: whitespace collapsed, control characters dropped, truncated."""
    flat = re.sub(r"\s+", " ", "".join(ch for ch in str(text) if ch.isprintable() or ch.isspace())).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class OpenAICompatibleBackend:
    """A model behind an OpenAI-compatible /v1/chat/completions endpoint."""

    name = "openai"

    def __init__(self, model: str, options: BackendOptions, http_client: Any = None) -> None:
        """`http_client` (an httpx.Client) is for tests that put a mock transport under the SDK."""
        self.model = model
        self.served = served_name(model)
        self.options = options
        self.base_url = resolve_base_url(options)
        _check_options(options)
        try:
            import openai  # optional dependency: only this backend needs it
        except ImportError:
            raise FalseRefusalError(
                f"--model {model}: served models need the openai package; fix: pip install 'falserefusal[openai]'"
            ) from None
        self.openai = openai
        key = os.environ.get(options.api_key_env, "")
        if not key and self.base_url == DEFAULT_BASE_URL:
            raise FalseRefusalError(
                f"--api-key-env {options.api_key_env}: the variable is not set; fix: export "
                f"{options.api_key_env}=<your key>"
            )
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=key or "no-key",  # local servers (vLLM, llama.cpp) accept any key unless started with one
            timeout=options.timeout_s,
            max_retries=options.max_retries,
            http_client=http_client,
        )
        self._pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="falserefusal-openai")
        # a batch (the unit of a cache commit) waits for its slowest answer, so it holds several requests per slot:
        # --concurrency 64 then really keeps 64 in flight, whatever --batch-size says
        self.min_batch_size = 4 * options.concurrency
        self._identity: dict[str, Any] = {
            "backend": self.name,
            "model": self.model,
            "base_url": self.base_url,
            "served_model": self.served,
            "temperature": 0.0,
        }
        self._identity["model_card"] = self._model_card()
        probe = self._create([{"role": "user", "content": "Hi"}], max_tokens=1)
        # a hosted alias ("gpt-4o") resolves to a dated snapshot; the fingerprint names the serving configuration
        self._identity["response_model"] = getattr(probe, "model", None)
        self._identity["system_fingerprint"] = getattr(probe, "system_fingerprint", None)

    # ----- checks and errors ----------------------------------------------------------------------------------------
    def _model_card(self) -> dict[str, Any] | None:
        """The server's /v1/models entry for this model; a clear error when it serves other models only."""
        try:
            cards = list(self.client.models.list())
        except self.openai.NotFoundError:
            return None  # some gateways do not list models; the first completion will tell
        except self.openai.APIError as error:
            raise self.explain(error) from None
        names = [card.id for card in cards]
        if self.served not in names:
            raise FalseRefusalError(self._unknown_model_message(names))
        card = next(card for card in cards if card.id == self.served).model_dump(exclude_unset=True)
        return {
            key: value
            for key, value in card.items()
            if key not in VOLATILE_CARD_FIELDS and not isinstance(value, (list, dict))
        }

    def _unknown_model_message(self, names: Sequence[str] | None) -> str:
        served = ", ".join(brief(n, 80) for n in names[:20]) if names else "none listed"
        more = f" (+{len(names) - 20} more)" if names and len(names) > 20 else ""
        return (
            f"--model {self.model}: {self.base_url} does not serve '{self.served}'; fix: use openai:NAME with one of: "
            f"{served}{more}"
        )

    def explain(self, error: Exception) -> FalseRefusalError:
        """One line for a failure that survived the SDK's retries: what happened and which option fixes it."""
        openai = self.openai
        tries = f"{self.options.max_retries + 1} tr{'y' if self.options.max_retries == 0 else 'ies'}"
        where = f"--model {self.model} at {self.base_url}"
        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            env = self.options.api_key_env
            state = "is not set" if not os.environ.get(env) else "holds a key the server rejects"
            return FalseRefusalError(
                f"{where}: {error.status_code} {brief(_server_message(error), 120)} (${env} {state}); "
                f"fix: export {env}=<a valid key>, or name the variable that holds it with --api-key-env"
            )
        if isinstance(error, openai.NotFoundError):
            try:
                names: list[str] | None = [card.id for card in self.client.models.list()]
            except Exception:
                names = None
            if names is not None and self.served not in names:
                return FalseRefusalError(self._unknown_model_message(names))
            hint = "" if self.base_url.endswith("/v1") else " (OpenAI-compatible servers usually end in /v1)"
            return FalseRefusalError(f"{where}: 404 {brief(_server_message(error), 120)}; fix: check --base-url{hint}")
        if isinstance(error, openai.APITimeoutError):
            return FalseRefusalError(
                f"{where}: no answer within --request-timeout {self.options.timeout_s:g}s ({tries}); "
                "fix: raise --request-timeout, lower --concurrency, or check the server"
            )
        if isinstance(error, openai.APIConnectionError):
            cause = brief(error.__cause__ or error, 120)
            return FalseRefusalError(
                f"--base-url {self.base_url}: cannot connect ({cause}; {tries}); fix: start the server or correct "
                "--base-url"
            )
        if isinstance(error, openai.RateLimitError):
            return FalseRefusalError(
                f"{where}: rate-limited (429) after {tries}: {brief(_server_message(error), 120)}; "
                "fix: lower --concurrency or raise --max-retries"
            )
        if isinstance(error, openai.APIStatusError):
            fix = (
                "check the server's log"
                if error.status_code >= 500
                else "check --max-new-tokens against the model's context and the server's options"
            )
            retried = f" after {tries}" if error.status_code >= 500 else ""
            return FalseRefusalError(
                f"{where}: HTTP {error.status_code}{retried}: {brief(_server_message(error))}; fix: {fix}"
            )
        return FalseRefusalError(f"{where}: {type(error).__name__}: {brief(error)}")

    # ----- generation ----------------------------------------------------------------------------------------------
    def _create(self, messages: list[dict[str, str]], max_tokens: int) -> Any:
        try:
            return self.client.chat.completions.create(
                model=self.served,
                # openai's stubs want per-role TypedDicts; plain {"role", "content"} dicts are what it sends
                messages=messages,  # type: ignore[arg-type]
                temperature=0.0,
                max_tokens=max_tokens,
                n=1,
                stream=False,
            )
        except self.openai.APIError as error:
            raise self.explain(error) from None

    def complete(self, request: GenerationRequest, max_new_tokens: int) -> Completion:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        response = self._create(messages, max_new_tokens)
        if not response.choices:
            raise FalseRefusalError(
                f"--model {self.model} at {self.base_url}: a response without choices for {request.case_id}"
            )
        choice = response.choices[0]
        # a hosted model's built-in refusal comes as `refusal` with no content: that text is what we detect
        text = choice.message.content or getattr(choice.message, "refusal", None) or ""
        usage = getattr(response, "usage", None)
        n_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(text=text.strip(), n_tokens=n_tokens, finish_reason=choice.finish_reason or "stop")

    def generate(
        self, requests: Sequence[GenerationRequest], max_new_tokens: int, stop_when: StopWhen | None = None
    ) -> list[Completion]:
        """At most --concurrency requests in flight; results in request order; the first failure stops the batch."""
        futures: list[Future[Completion]] = [self._pool.submit(self.complete, r, max_new_tokens) for r in requests]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()  # requests not yet sent are dropped; those in flight finish or time out
            raise

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


def _check_options(options: BackendOptions) -> None:
    if options.concurrency < 1:
        raise FalseRefusalError(f"--concurrency {options.concurrency}: must be at least 1")
    if options.timeout_s <= 0:
        raise FalseRefusalError(f"--request-timeout {options.timeout_s:g}: must be more than 0 seconds")
    if options.max_retries < 0:
        raise FalseRefusalError(f"--max-retries {options.max_retries}: must be 0 or more")


def _server_message(error: Any) -> str:
    """The `error.message` of an OpenAI-style error body, else the SDK's own message."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return getattr(error, "message", None) or str(error)


def check_served_model(model: str, options: BackendOptions) -> None:
    """Before any generation: is the server up, does it take the key and serve the model? One clear line if not."""
    OpenAICompatibleBackend(model, options).close()
