"""The OpenAI-compatible backend's client side: retries and backoff, concurrency bound, error lines, identity.

The SDK's real HTTP client runs over a mock transport (requests never leave the process); the end-to-end tests
in tests/e2e run the same backend against a real llama.cpp server.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import httpx2  # the HTTP library under openai>=3
import openai._base_client
import pytest

from falserefusal.generation.backends import BackendOptions
from falserefusal.generation.backends.openai_compat import OpenAICompatibleBackend, brief
from falserefusal.generation.generator import Generator
from falserefusal.run.config import RunConfig, default_options
from falserefusal.run.prepare import prepare
from falserefusal.types import FalseRefusalError, GenerationRequest, Message

BASE = "http://server.test/v1"
OPTIONS = BackendOptions(base_url=BASE, api_key_env="FR_TEST_KEY", concurrency=4, timeout_s=5.0, max_retries=3)
MODELS = {"object": "list", "data": [
    {"id": "tiny", "object": "model", "created": 1700000000, "owned_by": "me", "permission": [{"id": "modelperm-x"}]},
    {"id": "other", "object": "model", "created": 1700000000, "owned_by": "me"},
]}


def answer(text: str | None, completion_tokens: int = 3, refusal: str | None = None, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "tiny-2025-01-01",
        "system_fingerprint": "fp_abc",
        "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text, "refusal": refusal}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": completion_tokens, "total_tokens": 10 + completion_tokens},
    }


class Server:
    """Answers /models from MODELS and /chat/completions from `chat`; counts and records every request."""

    def __init__(self, chat: Callable[[dict[str, Any], int], httpx2.Response]) -> None:
        self.chat = chat
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/models"):
            return httpx2.Response(200, json=MODELS)
        body = json.loads(request.content)
        with self.lock:
            self.calls.append(body)
            number = len(self.calls)
        return self.chat(body, number)


def backend(server: Server, model: str = "openai:tiny", options: BackendOptions = OPTIONS) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(model, options, http_client=httpx2.Client(transport=httpx2.MockTransport(server)))


def request(content: str) -> GenerationRequest:
    return GenerationRequest(case_id=content, messages=(Message("system", "You are a nurse."), Message("user", content)))


def echo(body: dict[str, Any], number: int) -> httpx2.Response:
    return httpx2.Response(200, json=answer("echo: " + body["messages"][-1]["content"]))


class SlowEcho:
    """Echoes after a short wait and records the most requests it ever had in flight at once."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any], number: int) -> httpx2.Response:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.05)  # long enough for every pool thread to start even on a loaded machine
        with self.lock:
            self.now -= 1
        return echo(body, number)


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FR_TEST_KEY", raising=False)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The SDK's backoff delays, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(openai._base_client.time, "sleep", recorded.append)
    return recorded


def test_greedy_requests_carry_the_budget_and_answers_come_back_in_order() -> None:
    server = Server(echo)
    model = backend(server)
    completions = model.generate([request(f"q{i}") for i in range(10)], max_new_tokens=32)
    assert [c.text for c in completions] == [f"echo: q{i}" for i in range(10)]
    assert all(c.n_tokens == 3 and c.finish_reason == "stop" for c in completions)
    sent = server.calls[1:]  # the first call is the 1-token probe at start-up
    assert all(b["temperature"] == 0 and b["max_tokens"] == 32 and b["model"] == "tiny" for b in sent)
    assert sent[0]["messages"] == [{"role": "system", "content": "You are a nurse."}, {"role": "user", "content": sent[0]["messages"][1]["content"]}]


def test_429_and_503_are_retried_with_growing_jittered_backoff(sleeps: list[float]) -> None:
    def flaky(body: dict[str, Any], number: int) -> httpx2.Response:
        if number in (2, 3):
            return httpx2.Response(429, json={"error": {"message": "slow down"}})
        if number == 4:
            return httpx2.Response(503, json={"error": {"message": "overloaded"}})
        return echo(body, number)

    server = Server(flaky)
    [completion] = backend(server).generate([request("q")], max_new_tokens=8)
    assert completion.text == "echo: q" and len(server.calls) == 5  # probe + 3 failures + success
    assert len(sleeps) == 3
    # exponential: 0.5 s, 1 s, 2 s, each shortened by up to 25 % of jitter
    for delay, nominal in zip(sleeps, (0.5, 1.0, 2.0)):
        assert 0.75 * nominal <= delay <= nominal


def test_a_retry_after_header_sets_the_delay(sleeps: list[float]) -> None:
    def limited(body: dict[str, Any], number: int) -> httpx2.Response:
        if number == 2:
            return httpx2.Response(429, headers={"retry-after-ms": "1500"}, json={"error": {"message": "later"}})
        return echo(body, number)

    backend(Server(limited)).generate([request("q")], max_new_tokens=8)
    assert sleeps == [1.5]


def test_persistent_5xx_fails_after_max_retries_with_one_line(sleeps: list[float]) -> None:
    server = Server(lambda body, number: echo(body, number) if number == 1 else httpx2.Response(500, json={"error": {"message": "CUDA out of\nmemory"}}))
    model = backend(server)
    with pytest.raises(FalseRefusalError) as caught:
        model.generate([request("q")], max_new_tokens=8)
    message = str(caught.value)
    assert len(server.calls) == 1 + 4 and len(sleeps) == 3
    assert "\n" not in message and "HTTP 500 after 4 tries: CUDA out of memory" in message and "fix:" in message


def test_connection_errors_are_retried_then_name_the_base_url(sleeps: list[float]) -> None:
    attempts = []

    def refuse(request: httpx2.Request) -> httpx2.Response:
        attempts.append(request.url.path)
        raise httpx2.ConnectError("connection refused", request=request)

    with pytest.raises(FalseRefusalError) as caught:
        OpenAICompatibleBackend("openai:tiny", replace(OPTIONS, max_retries=2), http_client=httpx2.Client(transport=httpx2.MockTransport(refuse)))
    assert len(attempts) == 3 and len(sleeps) == 2
    assert str(caught.value).startswith(f"--base-url {BASE}: cannot connect") and "3 tries" in str(caught.value)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_names_the_key_variable_and_is_not_retried(status: int, sleeps: list[float]) -> None:
    server = Server(lambda body, number: httpx2.Response(status, json={"error": {"message": "Incorrect API key provided"}}))
    with pytest.raises(FalseRefusalError) as caught:
        backend(server)
    message = str(caught.value)
    assert len(server.calls) == 1 and sleeps == []
    assert f"{status} Incorrect API key provided ($FR_TEST_KEY is not set)" in message
    assert "fix: export FR_TEST_KEY=" in message and "--api-key-env" in message


def test_the_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FR_TEST_KEY", "sk-secret")
    seen = []

    def check(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers["authorization"])
        return httpx2.Response(200, json=MODELS) if request.url.path.endswith("/models") else httpx2.Response(200, json=answer("ok"))

    OpenAICompatibleBackend("openai:tiny", OPTIONS, http_client=httpx2.Client(transport=httpx2.MockTransport(check)))
    assert set(seen) == {"Bearer sk-secret"}


def test_the_hosted_api_without_a_key_fails_before_any_request() -> None:
    with pytest.raises(FalseRefusalError, match=r"^--api-key-env FR_TEST_KEY: the variable is not set; fix: export FR_TEST_KEY="):
        OpenAICompatibleBackend("openai:gpt-4o", replace(OPTIONS, base_url=None), http_client=httpx2.Client(transport=httpx2.MockTransport(Server(echo))))


def test_an_unknown_model_lists_the_served_ones() -> None:
    with pytest.raises(FalseRefusalError) as caught:
        backend(Server(echo), model="openai:tiyn")
    assert str(caught.value) == (f"--model openai:tiyn: {BASE} does not serve 'tiyn'; fix: use openai:NAME with one of: tiny, other")


def test_a_404_from_chat_completions_also_lists_the_served_models() -> None:
    def no_models(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/models"):
            return httpx2.Response(404, json={"error": {"message": "not found"}}) if no_models.hidden else httpx2.Response(200, json=MODELS)
        no_models.hidden = False  # type: ignore[attr-defined]
        return httpx2.Response(404, json={"error": {"message": "The model `tiyn` does not exist"}})

    no_models.hidden = True  # type: ignore[attr-defined]
    with pytest.raises(FalseRefusalError, match="does not serve 'tiyn'; fix: use openai:NAME with one of: tiny, other"):
        OpenAICompatibleBackend("openai:tiyn", OPTIONS, http_client=httpx2.Client(transport=httpx2.MockTransport(no_models)))


def test_at_most_concurrency_requests_are_in_flight() -> None:
    slow = SlowEcho()
    model = backend(Server(slow), options=replace(OPTIONS, concurrency=3))
    completions = model.generate([request(f"q{i}") for i in range(12)], max_new_tokens=8)
    assert [c.text for c in completions] == [f"echo: q{i}" for i in range(12)]
    assert slow.peak == 3


def test_the_runner_sends_a_served_model_batches_that_fill_every_slot() -> None:
    slow = SlowEcho()
    root = str(Path(__file__).resolve().parents[2])
    suite = prepare(RunConfig(samples=2, tasks=("nli",), root=root, progress=False))  # 32 cases
    options = replace(OPTIONS, concurrency=6, batch_size=2)
    generator = Generator(RunConfig(models=("openai:tiny",), backend_options=options, root=root, progress=False,
                                    use_cache=False))
    generator.backends["openai:tiny"] = backend(Server(slow), options=options)
    records = generator.generate("openai:tiny", suite.cases_for("nli"))
    assert len(records) == 32 and generator.batch_sizes["openai:tiny"] == 24  # 4 requests per slot, not --batch-size 2
    assert slow.peak == 6


def test_identity_holds_what_the_server_reports_without_volatile_fields() -> None:
    identity = backend(Server(echo)).identity()
    assert identity["base_url"] == BASE and identity["served_model"] == "tiny" and identity["model"] == "openai:tiny"
    assert identity["model_card"] == {"id": "tiny", "object": "model", "owned_by": "me"}  # no created, no permission ids
    assert identity["response_model"] == "tiny-2025-01-01" and identity["system_fingerprint"] == "fp_abc"


def test_a_hosted_refusal_without_content_is_the_response_text() -> None:
    server = Server(lambda body, number: httpx2.Response(200, json=answer(None, refusal="I can't help with that.", completion_tokens=6)))
    [completion] = backend(server).generate([request("q")], max_new_tokens=8)
    assert completion.text == "I can't help with that." and completion.n_tokens == 6


@pytest.mark.parametrize("field, value, flag", [("concurrency", 0, "--concurrency 0"), ("timeout_s", 0.0, "--request-timeout 0"),
                                                 ("max_retries", -1, "--max-retries -1")])
def test_bad_settings_are_rejected(field: str, value: Any, flag: str) -> None:
    with pytest.raises(FalseRefusalError, match=f"^{flag}: must"):
        backend(Server(echo), options=replace(OPTIONS, **{field: value}))


def test_options_reach_the_backend_settings() -> None:
    values = default_options() | {"base-url": "http://h:8000/v1", "api-key-env": "VLLM_KEY", "concurrency": 32,
                                  "request-timeout": 9.5, "max-retries": 1}
    options = RunConfig.from_options(values).backend_options
    assert (options.base_url, options.api_key_env, options.concurrency, options.timeout_s, options.max_retries) == (
        "http://h:8000/v1", "VLLM_KEY", 32, 9.5, 1)
    assert default_options()["concurrency"] == 8 and default_options()["api-key-env"] == "OPENAI_API_KEY"


def test_server_text_in_errors_is_one_printable_line() -> None:
    assert brief("a\n\tb\x1b[31mc") == "a b[31mc"
    assert len(brief("x" * 500)) == 200
