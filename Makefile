# Every target bootstraps .venv when it is missing (plain pip; the torch builds pinned here
# are the ones found on this project's machines — elsewhere install your own torch first
# and run `pip install -e .[dev,interop,notebooks,hpc]`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup train test test-fast test-all eval bench sweep report clean-logs help

help:
	@echo "make setup      create .venv and install mematte[dev,interop,notebooks,hpc]"
	@echo "make train      train the tiny ViTMatte on synthetic data (CPU, minutes); ARGS='key=value ...'"
	@echo "make test       full test suite (slow tests included)"
	@echo "make test-fast  pytest -m 'not slow' (< 5 min)"
	@echo "make bench      memory/latency benchmark of full-resolution inference (experiments/results)"
	@echo "make sweep      every ablation sweep (conf/sweep/, 25 jobs) at the tiny CPU scale (~7 min on 2 cores)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[dev,interop,notebooks,hpc]"
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

# Every ablation sweep of conf/sweep/ (25 jobs) with the tiny model on synthetic data
# (experiment=tiny_sweep), on the CPU: 7 min on 2 shared cores, 0.7 GB of logs. Like the
# paper's ablations, each MEMatte student starts from, and is distilled from, a trained
# ViTMatte: a tiny one trained here first (SWEEP_TEACHER, kept and reused while
# conf/experiment/tiny_sweep.yaml is unchanged; its best checkpoint by validation SAD).
# Results: logs/train/multiruns/<sweep>_<date>_<time>/<job>/{metrics.json,.hydra/overrides.yaml}.
# SWEEPS='ablation_router ...' picks sweeps; ARGS='key=value ...' goes to every sweep job.
SWEEPS ?= ablation_router ablation_ltrm ablation_keep_ratio ablation_objective ablation_distill ablation_no_ltrm
SWEEP_ARGS ?= experiment=tiny_sweep
SWEEP_TEACHER ?= logs/train/runs/sweep_teacher
# ViTMatte teacher steps (the students train trainer.max_steps of tiny_sweep.yaml)
SWEEP_TEACHER_STEPS ?= 60
# `sweep=` once conf/train.yaml lists the sweep group in its defaults, `+sweep=` before
SWEEP_KEY := $(shell grep -qE '^[[:space:]]*-[[:space:]]*sweep:' conf/train.yaml && echo sweep || echo +sweep)

# metrics.json marks a finished run
$(SWEEP_TEACHER)/metrics.json: conf/experiment/tiny_sweep.yaml | $(STAMP)
	rm -rf $(SWEEP_TEACHER)
	$(BIN)/python train.py $(SWEEP_ARGS) trainer.max_steps=$(SWEEP_TEACHER_STEPS) \
		trainer.val_check_interval=$(SWEEP_TEACHER_STEPS) test=false tags=[tiny_sweep,teacher] \
		hydra.run.dir=$(SWEEP_TEACHER)

sweep: $(SWEEP_TEACHER)/metrics.json | $(STAMP)
	@set -e; start=$$(date +%s); \
	teacher=$$(ls $(SWEEP_TEACHER)/checkpoints/best-step*.ckpt | tail -n 1); \
	for s in $(SWEEPS); do \
		echo "== $$s (teacher: $$teacher)"; \
		$(BIN)/python train.py -m $(SWEEP_ARGS) $(SWEEP_KEY)=$$s init_from=$$teacher teacher.ckpt=$$teacher $(ARGS); \
	done; \
	echo "sweeps done in $$(( $$(date +%s) - start )) s: logs/train/multiruns/<sweep>_<date>_<time>/<job>/metrics.json"

# Ablation tables and plots from the sweep folders (or the W&B API: ARGS='--wandb ENTITY/PROJECT'),
# written to experiments/report/ and between the report markers of experiments/RESULTS.md
report: $(STAMP)
	$(BIN)/python -m mematte.report $(ARGS)
