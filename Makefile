# The two commands a fresh machine needs are `make serve` and `make test`; each one
# bootstraps .venv in the project root first (Python 3.11+, pip; no network beyond PyPI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest serve bench-train clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,serve,dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

# Everything CI runs: lint, types, the whole test suite.
test: lint typecheck pytest

serve: venv
	$(BIN)/mla serve

# Method x modality-subset accuracy of mla, joint and unimodal on the demo data.
bench-train: venv
	$(BIN)/python -m benchmarks.train_demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
