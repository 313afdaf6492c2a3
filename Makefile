# The two commands a fresh machine needs are `make serve` and `make test`; each one
# bootstraps .venv in the project root first (Python 3.11+, pip; no network beyond PyPI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv system-deps check-deploy compose-test test lint typecheck pytest serve default-model bench-train bench-serve bench-accuracy clean

# Pinned by requirements/compile.py: CI, the images and this venv install the same versions.
$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# Programs the deployment tests run for real: Prometheus (and promtool), docker-compose, and for
# the compose test a Docker engine (docker.io, iptables) and debootstrap (its base image).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v docker-compose >/dev/null \
	    || ! command -v dockerd >/dev/null || ! command -v iptables >/dev/null || ! command -v debootstrap >/dev/null; then \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
	    prometheus docker-compose docker.io iptables debootstrap; \
	fi

venv: $(STAMP)

# checkov in a venv of its own (it pins packaging and networkx below what the project uses), from
# its own lock (requirements/compile.py --tool checkov).
CHECKOV := $(VENV)/checkov
$(CHECKOV)/.installed: requirements/checkov.txt
	test -x $(CHECKOV)/bin/python || $(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV)/bin/python -m pip install -q -r requirements/checkov.txt
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv system-deps
	$(BIN)/pytest

# Deployment files: compose (and its CI override), Prometheus config and rules (with their unit
# tests), Dockerfiles, Kubernetes manifests. checkov lints the Dockerfiles and the manifests
# (offline: --skip-download); it has no Docker Compose framework, so compose is checked by
# docker-compose config and tests/deploy/test_files.py, and run by compose-test. The checks it
# skips are marked where they apply, each with its reason (checkov:skip in the Dockerfiles,
# checkov.io/skip annotations in the manifests). tests/deploy/test_k8s.py validates the manifests
# against the Kubernetes schemas.
CI_COMPOSE_ENV := MLA_CI_BASE_IMAGE=mla-ci/debian:bookworm MLA_CI_MODELS=/tmp MLA_CI_MODEL_NAME=tiny
check-deploy: venv system-deps $(CHECKOV)/.installed
	docker-compose -f docker-compose.yml config -q
	docker-compose -f docker-compose.yml --profile cpu config -q
	$(CI_COMPOSE_ENV) docker-compose -f docker-compose.yml -f docker/ci/compose.ci.yml --profile cpu config -q
	promtool check config docker/prometheus/prometheus.yml
	promtool check rules docker/prometheus/alerts.yml
	promtool test rules docker/prometheus/alerts.test.yml
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.train docker/ci/nginx.Dockerfile docker/ci/prometheus.Dockerfile
	$(CHECKOV)/bin/checkov --quiet --compact --skip-download --framework dockerfile kubernetes kustomize \
	  --directory docker --directory deploy/k8s

# The deployment run for real (tests/deploy/compose): the CPU image built offline, the compose
# stack up with two replicas behind nginx plus Prometheus, real requests, teardown. Starts
# dockerd when none is running (and stops it); skipped, with the reason printed, where no Docker
# engine can run. MLA_REQUIRE_DOCKER=1 makes that a failure.
compose-test: venv system-deps
	$(BIN)/pytest --compose tests/deploy/compose -v -s -p no:cacheprovider

# Everything CI runs: lint, types, deployment checks, the whole test suite, the compose stack.
test: lint typecheck check-deploy pytest compose-test

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

# MLA vs joint vs unimodal on real spoken + handwritten digits (about 45 minutes on 2 cores).
bench-accuracy: venv
	$(BIN)/python -m benchmarks.avdigits.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
