# Every target bootstraps .venv when it is missing (plain pip; the torch builds pinned here
# are the ones found on this project's machines — elsewhere install your own torch first
# and run `pip install -e .[dev,interop,notebooks,hpc,docs]`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup train test test-fast test-all eval bench ablate ablate-teacher sweep report clean-logs help

help:
	@echo "make setup      create .venv and install mematte[dev,interop,notebooks,hpc,docs]"
	@echo "make train      train the tiny ViTMatte on synthetic data (CPU, minutes); ARGS='key=value ...'"
	@echo "make test       full test suite (slow tests included)"
	@echo "make test-fast  pytest -m 'not slow' (< 5 min)"
	@echo "make bench      memory/latency benchmark of full-resolution inference (experiments/results)"
	@echo "make ablate     the CPU ablation protocol: teacher, every sweep x 2 seeds, baselines (< 60 min on 2 cores)"
	@echo "make report     ablation tables and plots into experiments/RESULTS.md"
	@echo "make notebooks  re-execute notebooks/*.ipynb in place, outputs kept (tiny model, CPU, < 1 min)"
	@echo "make docs       build the documentation site (MkDocs, --strict) into site/"
	@echo "make gpu-check  on a GPU machine: CUDA tests, CUDA benchmark, training throughput (< 8 min) into GPU_CHECK_OUT=DIR"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev,interop,notebooks,hpc,docs]"
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

# The notebooks are committed with their outputs (a web view shows them): rerun them top to
# bottom in place after changing them or what they show (notebooks/execute.py: this venv's
# Python as the kernel, no per-cell timings saved). NOTEBOOKS='demo.ipynb' picks some.
NOTEBOOKS ?=
.PHONY: notebooks
notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py $(NOTEBOOKS)

# Peak memory / latency benchmark → experiments/results/bench_<device>.{csv,md,png}
# (≈ 50 min on a 2-core CPU with ARGS=threads=1; finished points are reused on a rerun).
# On a GPU: make bench ARGS=device=cuda
bench: $(STAMP)
	$(BIN)/python bench.py $(ARGS)

# The CPU-scale ablation protocol (tiny ViT on synthetic data, experiment=ablate_cpu): a tiny
# ViTMatte teacher trained from scratch first (ABLATE_DIR/teacher, reused while its configs are
# unchanged), then in ABLATE_LANES parallel one-thread lanes every sweep of ABLATE_SWEEPS — each
# setting with 2 seeds, every MEMatte student initialised from and distilled from the teacher,
# as in the paper — and the training-free baselines (pymatting's closed-form, large-kernel and
# KNN matting, and filling the unknown region with 0.5) on the same val/test splits
# (experiments/ablate.sh). Then `make report` writes the tables into experiments/RESULTS.md.
# Measured on this 2-core machine from a fresh clone: 49.6 min (teacher 22.5, the rest 27.0).
# Paper scale, same sweeps and report: python train.py -m experiment=mematte_s_c1k sweep=S \
#   trainer=ddp_8gpu hydra/launcher=slurm init_from=VITMATTE teacher.ckpt=VITMATTE
ABLATE_DIR ?= logs/ablate
# (ablation_keep_ratio, BATR's target 0.1–0.75, adds ~4 min: ABLATE_SWEEPS="... ablation_keep_ratio")
ABLATE_SWEEPS ?= ablation_router ablation_ltrm ablation_topk_keep ablation_objective ablation_distill
ABLATE_LANES ?= 2

# metrics.json marks a finished run
$(ABLATE_DIR)/teacher/metrics.json: conf/experiment/ablate_cpu.yaml conf/experiment/ablate_cpu_teacher.yaml | $(STAMP)
	rm -rf $(ABLATE_DIR)/teacher
	$(BIN)/python train.py experiment=ablate_cpu_teacher hydra.run.dir=$(ABLATE_DIR)/teacher

ablate-teacher: $(ABLATE_DIR)/teacher/metrics.json

ablate: $(ABLATE_DIR)/teacher/metrics.json | $(STAMP)
	PYTHON=$(BIN)/python ABLATE_DIR=$(ABLATE_DIR) ABLATE_SWEEPS="$(ABLATE_SWEEPS)" \
		ABLATE_LANES=$(ABLATE_LANES) ARGS="$(ARGS)" bash experiments/ablate.sh

# the former name of `make ablate`
sweep: ablate

# Ablation tables and plots from the sweep folders (or the W&B API: ARGS='--wandb ENTITY/PROJECT'),
# written to experiments/report/ and between the report markers of experiments/RESULTS.md
report: $(STAMP)
	$(BIN)/python -m mematte.report $(ARGS)

# GPU evidence in one run (< 8 min on one GPU): CUDA tests, the CUDA benchmark (bf16 and fp32)
# and training throughput → GPU_CHECK_OUT (default: $OUT if set, else gpu_check_out/). Makes its
# own .venv (make setup when a registry answers, else from the machine's CUDA torch); see
# experiments/gpu_check.sh.
GPU_CHECK_OUT ?=
.PHONY: gpu-check
gpu-check:
	bash experiments/gpu_check.sh $(GPU_CHECK_OUT)

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link, a missing page
# or a docstring mkdocstrings cannot read is an error, as in tests/test_docs.py.
# Preview while editing: $(BIN)/mkdocs serve
.PHONY: docs
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
