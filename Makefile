# The two commands a fresh machine needs are `make serve` and `make test`; each one
# bootstraps .venv in the project root first (Python 3.11+, pip; no network beyond PyPI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest serve default-model bench-train bench-serve clean

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

# The embedded default model: trained on the demo data and exported, once; reused afterwards.
DEFAULT_MODEL := models/default/1/manifest.json
HOST ?= 127.0.0.1
PORT ?= 8000

$(DEFAULT_MODEL): | $(STAMP)
	@echo "Building the default model (demo data, MLA, small encoder): a few minutes, once."
	$(BIN)/mla train --data demo --method mla --out runs/default --epochs 10 --workers 2
	$(BIN)/mla export runs/default --out models --name default --version 1

default-model: $(DEFAULT_MODEL)

serve: venv $(DEFAULT_MODEL)
	$(BIN)/mla serve --model models/default --host $(HOST) --port $(PORT)

# Method x modality-subset accuracy of mla, joint and unimodal on the demo data.
bench-train: venv
	$(BIN)/python -m benchmarks.train_demo

# The service under load against a naive torch server and raw ONNX Runtime.
bench-serve: venv $(DEFAULT_MODEL)
	$(BIN)/python -m benchmarks.serve_load

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
