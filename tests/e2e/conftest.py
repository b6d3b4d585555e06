"""End-to-end fixtures: a real OpenAI-compatible server (llama.cpp's, from llama-cpp-python[server]) on loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

#: what `make test` runs to build the server (a source build; GGML_NATIVE=OFF: the native build crashed on AMX CPUs)
INSTALL_SERVER = 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install "llama-cpp-python[server]==0.3.36"  (or: make test)'
ALLOW_SKIP = "FALSEREFUSAL_ALLOW_SKIP_SERVER"
SERVED_NAME = "smollm2"
API_KEY = "sk-falserefusal-e2e"  # the server requires it, so the auth-failure path is real too
KEY_ENV = "FALSEREFUSAL_E2E_KEY"


@dataclass(frozen=True)
class LocalServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # served name, as in `--model openai:NAME`
    key_env: str  # environment variable holding the key (set in this process's environment)
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(process: subprocess.Popen[bytes], base_url: str, log: Path, timeout_s: float = 120.0) -> None:
    request = urllib.request.Request(base_url + "/models", headers={"Authorization": f"Bearer {API_KEY}"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama.cpp server exited with {process.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if SERVED_NAME in {m["id"] for m in json.load(response)["data"]}:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, ValueError):
            pass
        time.sleep(0.25)
    pytest.fail(f"llama.cpp server did not list {SERVED_NAME} within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}", pytrace=False)


@pytest.fixture
def closed_base_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/v1"


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """llama.cpp's OpenAI-compatible server serving the embedded SmolLM2 GGUF; stopped at the end of the session."""
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get(ALLOW_SKIP) == "1":
            pytest.skip(f"llama-cpp-python[server] is not installed and {ALLOW_SKIP}=1")
        pytest.fail(f"llama-cpp-python[server] is not installed; fix: {INSTALL_SERVER}; "
                    f"or set {ALLOW_SKIP}=1 to skip the served-model tests", pytrace=False)
    from falserefusal.generation.backends import default_model_path

    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()), "--model_alias", SERVED_NAME,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(min(os.cpu_count() or 1, 4)),
               "--api_key", API_KEY, "--verbose", "False"]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    previous = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = API_KEY  # subprocess runs of the suite inherit it
    try:
        _wait_until_serving(process, base_url, log)
        yield LocalServer(base_url, SERVED_NAME, KEY_ENV, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if previous is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = previous
