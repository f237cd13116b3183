# Two commands on a fresh clone: `make demo` and `make test`. Each builds .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e ".[test]"
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	@$(BIN)/baton demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/step_overhead.py
	$(BIN)/python bench/policy_overhead.py
	$(BIN)/python bench/audit_verify.py
	$(BIN)/python bench/sealing.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/agent_loop.py

# The tests marked `semantic`, with the real sentence model, in a venv of their own: the
# semantic extra pulls in PyTorch (several GB). For a CPU-only PyTorch (far smaller), run
# make test-semantic SEMANTIC_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
SEMANTIC_VENV := .venv-semantic
SEMANTIC_PIP_ARGS ?=

.PHONY: test-semantic
test-semantic:
	@test -x $(SEMANTIC_VENV)/bin/python || $(PYTHON) -m venv $(SEMANTIC_VENV)
	@$(SEMANTIC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SEMANTIC_VENV)/bin/python -m pip install --quiet $(SEMANTIC_PIP_ARGS) -e ".[test,semantic]"
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(SEMANTIC_VENV)/bin/python -m pytest -q -m semantic

clean:
	rm -rf $(VENV) .baton .pytest_cache .mypy_cache .ruff_cache .hypothesis
