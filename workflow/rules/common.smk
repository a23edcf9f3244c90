# The config (loaded, checked against the schema), the plan of runs it defines, and the
# paths and plan look-ups every stage uses. A stage's own helpers live in its .smk file.
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

SRC = str(Path(workflow.basedir) / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
# jobs run `python -m segbench` from this checkout, whatever environment executes them
shell.prefix(f"export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}} NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg; ")

from segbench.config import ConfigError, read_yaml, validate_config
from segbench.plan import Plan, Run

try:
    for _f in workflow.configfiles:  # Snakemake's YAML reader keeps the last of duplicate keys
        read_yaml(_f)
    CFG = validate_config(config)  # against the schema of the package (segbench/schemas/)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

PLAN = Plan(CFG)
ENV = "../../envs/segbench.yaml"
# Every path a rule reads or writes is under this folder: the config's `results:` (config.yaml:
# results, workflow/configs/paper.yaml: results/paper), relative to the working directory.
RESULTS = PLAN.results
RUN_DIR = f"{RESULTS}/runs/{{dataset}}/{{model}}/{{loss}}/s{{seed}}"
MLFLOW = CFG["mlflow"]["enabled"]
TRACKING_URI = CFG["mlflow"]["tracking_uri"] or f"sqlite:///{RESULTS}/mlflow.db"


wildcard_constraints:
    dataset="[A-Za-z0-9][A-Za-z0-9_.-]*",
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    loss="[A-Za-z0-9][A-Za-z0-9_.-]*",
    seed=r"\d+",
    study="[A-Za-z0-9][A-Za-z0-9_.-]*",


def run_of(w) -> Run:
    return PLAN.find_run(w.dataset, w.model, w.loss, w.seed)


def study_runs(study):
    return PLAN.studies[study]


def report_runs(study):
    """The study's runs as `segbench report --runs` takes them (keys, paths, groups, specs)."""
    return [PLAN.report_run(study, r) for r in study_runs(study)]


def all_outputs():
    from segbench.report.outputs import study_outputs

    # every file of every study's report (a file deleted by hand is made again)
    out = [f"{RESULTS}/studies/{s}/{rel}" for s in PLAN.studies
           for rel in study_outputs(PLAN.study_spec(s), report_runs(s))]
    if MLFLOW:
        out += [f"{RESULTS}/mlflow/studies/{s}.json" for s in PLAN.studies]
    return out
