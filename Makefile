# The two commands a fresh machine needs are `make serve` and `make test`; each one
# bootstraps .venv in the project root first (Python 3.11+, pip; no network beyond PyPI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the service's closure only (no torch): what `make serve` needs
SERVE_STAMP := $(VENV)/.installed-serve

.PHONY: venv clients serve-deps serve-lock locks system-deps check-deploy compose-test test check lint typecheck pytest recipe-test serve default-model screenshots bench-train bench-serve bench-clips bench-accuracy bench-robustness bench-calibration bench-espeak bench-audio-voices fuzz soak bench-edge bench-ood bench-ablation clean

# Locked by uv (`make locks`, requirements/README.md), with every file's hash: CI, the images and
# this venv install the same versions, and pip refuses any file but the one locked.
$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(call drop-other-ort,$(if $(CUDA_WHEELS),onnxruntime,onnxruntime-gpu))
	$(BIN)/python -m pip install -q --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP) $(SERVE_STAMP)

# `make serve` installs the service alone (no torch) from the lock for this machine: ONNX Runtime's
# CUDA build where its wheels exist (Linux x86-64) and an NVIDIA driver is loaded, its CPU build
# everywhere else (macOS, Linux without a GPU). `make -s serve-lock` prints the choice. uv, pinned
# with its hashes in requirements/uv.txt, installs the lock: seconds on a warm cache.
CUDA_WHEELS := $(shell [ "$$(uname -s)-$$(uname -m)" = Linux-x86_64 ] && echo yes)
NVIDIA_DRIVER := $(shell { [ -e /proc/driver/nvidia/version ] || nvidia-smi -L >/dev/null 2>&1; } && echo yes)
SERVE_LOCK := requirements/$(if $(and $(CUDA_WHEELS),$(NVIDIA_DRIVER)),serve,serve-cpu).txt
UV := $(BIN)/uv pip install -q --python $(BIN)/python
# The two builds install the same `onnxruntime` package and must never share a venv: where the build
# named is installed, both go, and the lock installed next brings back the one it pins.
drop-other-ort = if $(BIN)/python -c "import importlib.metadata as m; m.distribution('$(1)')" 2>/dev/null; then \
	$(BIN)/python -m pip uninstall -q -y onnxruntime onnxruntime-gpu; fi

$(SERVE_STAMP): pyproject.toml $(SERVE_LOCK) requirements/uv.txt requirements/build.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements/uv.txt
	$(call drop-other-ort,$(if $(filter %/serve.txt,$(SERVE_LOCK)),onnxruntime,onnxruntime-gpu))
	$(UV) --require-hashes -r $(SERVE_LOCK)
	$(UV) --no-deps --build-constraints requirements/build.txt -e .
	touch $(SERVE_STAMP)

serve-deps: $(SERVE_STAMP)

serve-lock:
	@echo $(SERVE_LOCK)

# Regenerate every lock in requirements/ with uv from pyproject.toml, keeping the pins they hold
# (requirements/compile.py --upgrade moves them).
locks: venv
	$(BIN)/python requirements/compile.py

# Programs the tests run for real: Prometheus (and promtool), docker-compose; for the compose
# test a Docker engine (docker.io, iptables) and debootstrap (its base image); Debian's Chromium
# (with a font) that Playwright drives for the page's tests (Playwright downloads no browser);
# espeak-ng, whose voices speak the digits the default model is tested on; flite, a second synthesiser the
# dataset builder can speak digits with (--flite-voices).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v docker-compose >/dev/null \
	    || ! command -v dockerd >/dev/null || ! command -v iptables >/dev/null || ! command -v debootstrap >/dev/null \
	    || ! command -v chromium >/dev/null || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
	    || ! command -v espeak-ng >/dev/null || ! command -v flite >/dev/null; then \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
	    prometheus docker-compose docker.io iptables debootstrap chromium fonts-dejavu-core espeak-ng flite; \
	fi

venv: $(STAMP)

# checkov in a venv of its own (it pins packaging and networkx below what the project uses), from
# its own lock (requirements/checkov.txt, `make locks`).
CHECKOV := $(VENV)/checkov
$(CHECKOV)/.installed: requirements/checkov.txt
	test -x $(CHECKOV)/bin/python || $(PYTHON) -m venv $(CHECKOV)
	$(CHECKOV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV)/bin/python -m pip install -q --require-hashes -r requirements/checkov.txt
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# The Open Inference Protocol's real clients (tritonclient, KServe's InferenceRESTClient) in a venv of their own, from
# their own lock (requirements/clients.txt, `make locks`): tests/service/test_inference_protocol.py runs them.
CLIENTS := $(VENV)/clients
$(CLIENTS)/.installed: requirements/clients.txt
	test -x $(CLIENTS)/bin/python || $(PYTHON) -m venv $(CLIENTS)
	$(CLIENTS)/bin/python -m pip install -q --upgrade pip
	$(CLIENTS)/bin/python -m pip install -q --require-hashes -r requirements/clients.txt
	touch $@

clients: $(CLIENTS)/.installed

# The peers (LitServe, BentoML) in a venv of their own, from their own lock (requirements/peers.txt, `make locks`):
# benchmarks/peers/ serves the same graphs, decoding and answer with each, for `make bench-serve` to compare
# (tests/benchmarks/test_peers.py checks their answers against ours).
PEERS := $(VENV)/peers
$(PEERS)/.installed: requirements/peers.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q --require-hashes -r requirements/peers.txt
	touch $@


# Every test but the recipe's retraining (marker `recipe`, about 12 minutes of training), which
# recipe-test runs on its own; `make test` runs both.
pytest: venv system-deps $(CLIENTS)/.installed $(PEERS)/.installed
	$(BIN)/pytest -m "not recipe"

recipe-test: venv system-deps
	$(BIN)/pytest -m recipe -p no:cacheprovider

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

# The docs site (mkdocs.yml: MkDocs Material, docs/) built into site/, which git ignores. --strict fails
# the build on a broken link, a missing anchor or a page left out of the nav.
.PHONY: docs
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Everything CI runs: lint, types, the docs, deployment checks, the whole test suite (the recipe's retraining
# last, on its own: run beside the rest, both are CPU-bound on 2 cores and each took twice as long), the
# compose stack.
test: lint typecheck docs check-deploy pytest recipe-test compose-test

# The fast loop before a commit: lint, types, the docs site and the tests that need no root, no Docker engine, no browser,
# no server and no training (numpy, the manifest contract, fusion, calibration, OOD, the import graph, the docs' tables
# and links).
CHECK_TESTS := tests/common tests/training/test_layering.py tests/training/test_crossfit.py \
	tests/benchmarks/test_readme.py tests/test_docs.py tests/benchmarks/test_ablation.py \
	tests/service/test_settings.py tests/service/test_direct.py tests/service/test_heap.py tests/service/test_batching.py tests/service/test_protocol.py tests/deploy/test_locks.py
check: lint typecheck docs
	$(BIN)/pytest -q -m "not slow" $(CHECK_TESTS)

# The embedded default model (models/default/10, committed; see models/default/README.md): MLA on AV-digits,
# real spoken (FSDD) and handwritten (MNIST) digits from ../shared/data, its training split joined by digits
# spoken by espeak-ng and by flite in random voices (docs/decisions/2026-12-07-flite-voices.md); calibrated on
# validation and on out-of-fold predictions of its four training speakers (four more trainings, one per speaker
# held out, two at a time). Rebuilt only when it is missing. Each run serves its last epoch
# (docs/decisions/2026-12-07-last-epoch.md); the voice's detector has a digit-or-not probe beside its kNN, fitted
# against spoken words that are not digits (docs/decisions/2026-12-07-outlier-probe.md); its video frames are
# augmented in training (docs/decisions/2026-12-07-video-augmentation.md); a modality's temperature is fitted only where
# it pays on held-out speakers (docs/decisions/2026-12-08-temperature-per-modality.md). (Version 4 added outlier exposure to the
# training and was withdrawn: docs/decisions/2026-12-06-version-4-withdrawn.md.)
DEFAULT_MODEL := models/default/10/manifest.json
HOST ?= 127.0.0.1
PORT ?= 8000
RECIPE := --method mla --seed 0 --epochs 30 --owm-alpha 10 --augment audio --augment video --keep last

$(DEFAULT_MODEL):
	@echo "Building the default model from ../shared/data (AV-digits + espeak-ng and flite voices, MLA, 30 epochs, 5 trainings): ~60 min, once."
	$(MAKE) venv
	@{ command -v espeak-ng >/dev/null && command -v flite >/dev/null; } || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends espeak-ng flite; }
	manifest=$$($(BIN)/python -m benchmarks.avdigits.build --synthetic-voices 150 --flite-voices 100) && \
	$(BIN)/mla train --data csv:$$manifest $(RECIPE) --out runs/default && \
	$(BIN)/python -m training.crossfit --data csv:$$manifest --out runs/crossfit --parallel 2 -- $(RECIPE) && \
	outliers=$$($(BIN)/python -m benchmarks.avdigits.outliers) && \
	$(BIN)/mla export runs/default --out models --name default --version 10 --crossfit runs/crossfit --outliers csv:$$outliers

default-model: $(DEFAULT_MODEL)

serve: $(SERVE_STAMP) $(DEFAULT_MODEL)
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

# The service under load against a naive torch server: req/s, latency, first minute against steady
# state, and the server's CPU per request over the in-process cost of the same work. Load from wrk (C).
bench-serve: venv $(DEFAULT_MODEL) $(PEERS)/.installed
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends wrk; }
	$(BIN)/python -m benchmarks.serve_load
	$(BIN)/python -m benchmarks.readme

# Video decoding cost against clip length (5 to 60 s, 480p and 1080p H.264), key-frame seeking against the scan.
bench-clips: venv
	$(BIN)/python -m benchmarks.clip_length
	$(BIN)/python -m benchmarks.readme

# Hostile and mutated uploads plus schemathesis against a live server (about 5 minutes; CI runs
# a short form in tests/benchmarks/test_fuzz.py). Fails on any answer >= 500 but 503, a hang,
# a file left behind or RSS over its bound; failing inputs are kept under runs/fuzz/.
fuzz: venv $(DEFAULT_MODEL)
	$(BIN)/python -m benchmarks.fuzz --requests 12000 --seconds 300 --still-requests 3000

# 20,000 valid requests at concurrency 16: RSS growth and errors; starvation and worker-kill figures.
soak: venv $(DEFAULT_MODEL)
	$(BIN)/python -m benchmarks.soak
	$(BIN)/python -m benchmarks.readme

# The HTTP edge attacked: 300 MiB of headers on one connection (431 early, RSS flat, a /healthz
# client's p99 beside it) and 4000 slowloris connections beside real /v1/predict traffic (~2.5 min).
bench-edge: venv $(DEFAULT_MODEL)
	$(BIN)/python -m benchmarks.edge

# MLA vs joint vs the unimodal ensemble on real spoken + handwritten digits (about 45 minutes on 2 cores).
bench-accuracy: venv
	$(BIN)/python -m benchmarks.avdigits.run --dataset avdigits
	$(BIN)/python -m benchmarks.avdigits.run --dataset aitdigits
	$(BIN)/python -m benchmarks.avdigits.run --dataset aitdigits-image-text

# Fusion rules under corrupted audio and video, on the models bench-accuracy trained.
bench-robustness: venv
	$(BIN)/python -m benchmarks.avdigits.robustness

# The default model's calibration as a client sees it: AV-digits test pairs through a running mla serve.
# The out-of-fold predictions the default model's calibration rests on (4 trainings of the recipe, two at a time: ~45 min here).
runs/crossfit/oof.npz: | venv
	manifest=$$($(BIN)/python -m benchmarks.avdigits.build --synthetic-voices 150 --flite-voices 100) && \
	$(BIN)/python -m training.crossfit --data csv:$$manifest --out runs/crossfit --parallel 2 -- $(RECIPE)

bench-ablation: venv $(DEFAULT_MODEL) runs/crossfit/oof.npz
	$(BIN)/python -m benchmarks.avdigits.ablation
	$(BIN)/python -m benchmarks.readme

bench-calibration: venv $(DEFAULT_MODEL)
	$(BIN)/python -m benchmarks.avdigits.service_calibration

# Real speech no one here recorded: digits spoken by espeak-ng, audio only, to the default model.
bench-espeak: venv system-deps $(DEFAULT_MODEL)
	$(BIN)/python -m benchmarks.espeak_digits

# Does the audio branch learn a voice it never heard (synthetic voices, --audio-augment), and is it calibrated then?
bench-audio-voices: venv system-deps
	$(BIN)/python -m benchmarks.avdigits.audio_voices

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Out-of-distribution inputs (issue 27): how the default model answers speech that is not digits, faces, letters,
# noise, tones, photographs...: AUROC and FPR@95TPR per detector (OpenOOD v1.5), and the share the service answers.
# Its photographs and faces come from scikit-image's bundled data (the dev pins carry it).
bench-ood: venv system-deps $(DEFAULT_MODEL)
	$(BIN)/python -m benchmarks.ood.run
