# segbench: two commands do all the set-up on a fresh machine.
#   make run    install into .venv and run the default pipeline (snakemake --cores all)
#   make test   install into .venv and run the test suite
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CORES   ?= all
export PATH := $(abspath $(BIN)):$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1
export MPLBACKEND := Agg

.PHONY: install run test test-fast lint dry-run mlflow-ui serve browser test-serve bench clean help paper-smoke

help:
	@echo "make run       install, then run the default pipeline (config.yaml) with snakemake --cores $(CORES)"
	@echo "make test      install, then run the test suite (unit + end-to-end); CI runs make paper-smoke after it"
	@echo "make paper-smoke  every job of workflow/configs/paper.yaml on CPU on miniature data (~11 min, ~9 GB in $(PAPER_SMOKE_DIR))"
	@echo "make dry-run   list the jobs of the default config"
	@echo "make lint      snakemake --lint"
	@echo "make mlflow-ui open the MLflow UI on $(RESULTS)/mlflow.db (http://127.0.0.1:5000); RESULTS=results/paper: paper.yaml's"
	@echo "make serve     web app segmenting uploads with the best run of STUDY (default unet_segnet), or RUN=dir"
	@echo "make browser   install Debian's chromium-headless-shell for the browser test (root, apt-get)"
	@echo "make run-local the local profile (workflow/profiles/default); make run-slurm: the SLURM profile"
	@echo "make mlflow-server / mlflow-server-stop   a shared MLflow server (scripts/mlflow_server.sh)"
	@echo "make test-slurm   the one-node SLURM test alone (root: installs slurm-wlm + munge)"
	@echo "make bench    the performance benchmarks (bench/run_all.py) with their targets; BENCH_ARGS=--quick: short"

# The stamp is rebuilt when the pins change; the CPU torch wheel must stay pinned.
$(VENV)/.installed: envs/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r envs/requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/snakemake --cores $(CORES)

dry-run: install
	$(BIN)/snakemake -n

lint: install
	$(BIN)/snakemake --lint

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# `make paper-smoke`: all jobs of workflow/configs/paper.yaml (every study, ablation and the
# cross study, paper-width models) on CPU, 2 cores, against miniature datasets and checkpoints
# in the publishers' layouts served on 127.0.0.1 (scripts/paper_smoke.py); results in
# $(PAPER_SMOKE_DIR), deleted at its next start. CI runs it after `make test`.
PAPER_SMOKE_DIR ?= /tmp/segbench-paper-smoke
paper-smoke: install
	$(BIN)/python scripts/paper_smoke.py --dir $(PAPER_SMOKE_DIR) --cores 2

# RESULTS: the config's `results:` folder (config.yaml: results; workflow/configs/paper.yaml: results/paper)
RESULTS ?= results
mlflow-ui: install
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the training runs; docs/mlflow.md)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(RESULTS)/mlflow.db --host 127.0.0.1 --port 5000

# `make serve` serves the best run of $(STUDY) by val mIoU; `make serve RUN=results/runs/...` a given run.
STUDY ?= unet_segnet
HOST  ?= 127.0.0.1
PORT  ?= 8000
serve: install
	$(BIN)/segbench serve $(if $(RUN),$(RUN),--study $(STUDY) --results $(RESULTS)) --host $(HOST) --port $(PORT)

browser:
	bash scripts/install_browser.sh

# `make bench`: every performance figure with its target (bench/run_all.py, about 5 min on
# 2 cores); BENCH_ARGS="--quick", "--only loader ops".
BENCH_ARGS ?=
bench: install
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

test-serve: install
	$(BIN)/python -m pytest tests/test_serve.py

# Clusters (docs/cluster.md). `make run-slurm`: the default config on SLURM, site settings
# from SEGBENCH_SLURM_* (workflow/profiles/slurm). `make mlflow-server`: a tracking server
# for the jobs (MLFLOW_HOST=0.0.0.0 for compute nodes); `make mlflow-server-stop` stops it.
# `make test-slurm`: the SLURM test alone (root; installs slurm-wlm and munge).
.PHONY: run-local run-slurm mlflow-server mlflow-server-stop test-slurm
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
run-local: install
	$(BIN)/snakemake --profile workflow/profiles/default

run-slurm: install
	$(BIN)/snakemake --profile workflow/profiles/slurm

mlflow-server: install
	bash scripts/mlflow_server.sh start --host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

mlflow-server-stop:
	bash scripts/mlflow_server.sh stop

test-slurm: install
	PYTHON=$(abspath $(BIN))/python bash scripts/test_slurm.sh

# results/ holds every config's folder (paper.yaml's results/paper too, with its downloads);
# the smoke's folder only if it is the smoke's (it holds the script's marker file)
clean:
	rm -rf results .snakemake
	if [ -f $(PAPER_SMOKE_DIR)/.segbench-paper-smoke ]; then rm -rf $(PAPER_SMOKE_DIR); fi
