# Validation of the config, the plan of runs, and the helpers every rule uses.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

SRC = str(Path(workflow.basedir) / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
# jobs run `python -m segbench` from this checkout, whatever environment executes them
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from segbench.config import ConfigError, validate_config
from segbench.plan import Plan, Run

try:
    CFG = validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
except ConfigError as e:
    raise WorkflowError(str(e)) from None

PLAN = Plan(CFG)
SEGBENCH = "python -m segbench"
ENV = "../../envs/segbench.yaml"
RUN_DIR = "results/runs/{dataset}/{model}/{loss}/s{seed}"
MLFLOW = CFG["mlflow"]["enabled"]
TRACKING_URI = CFG["mlflow"]["tracking_uri"] or "sqlite:///results/mlflow.db"


wildcard_constraints:
    dataset="[A-Za-z0-9][A-Za-z0-9_.-]*",
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    loss="[A-Za-z0-9][A-Za-z0-9_.-]*",
    seed=r"\d+",
    study="[A-Za-z0-9][A-Za-z0-9_.-]*",


def run_of(w) -> Run:
    return PLAN.find_run(w.dataset, w.model, w.loss, w.seed)


def run_spec_json(w) -> str:
    return json.dumps(PLAN.run_spec(run_of(w)), sort_keys=True)


def study_runs(study):
    return PLAN.studies[study]


def all_outputs():
    out = [f"results/studies/{s}/tables/summary.md" for s in PLAN.studies]
    if MLFLOW:
        out += [f"results/mlflow/studies/{s}.json" for s in PLAN.studies]
    return out
