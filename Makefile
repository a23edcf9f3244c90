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

.PHONY: install run test test-fast lint dry-run mlflow-ui clean help

help:
	@echo "make run       install, then run the default pipeline (config.yaml) with snakemake --cores $(CORES)"
	@echo "make test      install, then run the test suite (unit + end-to-end)"
	@echo "make dry-run   list the jobs of the default config"
	@echo "make lint      snakemake --lint"
	@echo "make mlflow-ui open the MLflow UI on results/mlflow.db (http://127.0.0.1:5000)"

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

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf results .snakemake
