# The two commands a fresh machine needs are `make serve` and `make test`; each one
# bootstraps .venv in the project root first (Python 3.11+, pip; no network beyond PyPI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv system-deps check-deploy test lint typecheck pytest serve default-model screenshots bench-train bench-serve bench-accuracy clean

# Pinned by requirements/compile.py: CI, the images and this venv install the same versions.
$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# Programs the tests run for real: Prometheus (and promtool), docker-compose, and Debian's Chromium
# (with a font) that Playwright drives for the page's tests; Playwright downloads no browser.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v docker-compose >/dev/null \
	    || ! command -v chromium >/dev/null || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
	    prometheus docker-compose chromium fonts-dejavu-core; \
	fi

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv system-deps
	$(BIN)/pytest

# Deployment files: compose, Prometheus config and rules (with their unit tests), Dockerfiles.
check-deploy: venv system-deps
	docker-compose -f docker-compose.yml config -q
	docker-compose -f docker-compose.yml --profile cpu config -q
	promtool check config docker/prometheus/prometheus.yml
	promtool check rules docker/prometheus/alerts.yml
	promtool test rules docker/prometheus/alerts.test.yml
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.train

# Everything CI runs: lint, types, deployment checks, the whole test suite.
test: lint typecheck check-deploy pytest

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

# The page's screenshots in docs/ (desktop and phone width): the default model served, the digit
# spoken by espeak-ng and drawn on the page's pad. Rerun whenever the page or the default model changes.
screenshots: venv system-deps $(DEFAULT_MODEL)
	@command -v espeak-ng >/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends espeak-ng; }
	$(BIN)/python -m tests.browser --model models/default --out docs

# Method x modality-subset accuracy of mla, joint and unimodal on the demo data.
bench-train: venv
	$(BIN)/python -m benchmarks.train_demo

# The service under load against a naive torch server and raw ONNX Runtime.
bench-serve: venv $(DEFAULT_MODEL)
	$(BIN)/python -m benchmarks.serve_load

# MLA vs joint vs unimodal on real spoken + handwritten digits (about 45 minutes on 2 cores).
bench-accuracy: venv
	$(BIN)/python -m benchmarks.avdigits.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
