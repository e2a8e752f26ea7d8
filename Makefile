# Every target bootstraps .venv when it is missing (plain pip; the torch builds pinned here
# are the ones found on this project's machines — elsewhere install your own torch first
# and run `pip install -e .[dev,interop]`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup train test test-fast test-all eval bench clean-logs help

help:
	@echo "make setup      create .venv and install mematte[dev,interop]"
	@echo "make train      train the tiny ViTMatte on synthetic data (CPU, minutes); ARGS='key=value ...'"
	@echo "make test       full test suite (slow tests included)"
	@echo "make test-fast  pytest -m 'not slow' (< 5 min)"
	@echo "make bench      memory/latency benchmark of full-resolution inference (experiments/results)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev,interop]"
	@touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean-logs:
	rm -rf logs

# Peak memory / latency benchmark → experiments/results/bench_<device>.{csv,md,png}
# (≈ 50 min on a 2-core CPU with ARGS=threads=1; finished points are reused on a rerun).
# On a GPU: make bench ARGS=device=cuda
bench: $(STAMP)
	$(BIN)/python bench.py $(ARGS)
