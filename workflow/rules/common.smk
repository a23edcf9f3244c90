# Validation of the config, the plan of runs, and the helpers every rule uses.
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

SRC = str(Path(workflow.basedir) / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
# jobs run `python -m segbench` from this checkout, whatever environment executes them
shell.prefix(f"export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}} NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg; ")

from segbench.config import ConfigError, validate_config
from segbench.plan import Plan, Run

try:
    CFG = validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
except ConfigError as e:
    raise WorkflowError(str(e)) from None

PLAN = Plan(CFG)
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


def _generate_params(w):
    g = PLAN.dataset(w.dataset)["generate"]
    return f"--seed {g['seed']} --train {g['train']} --val {g['val']} --height {g['height']} --width {g['width']}"


def _prepare_input(w):
    ds = PLAN.dataset(w.dataset)
    return {"raw": f"results/data/{w.dataset}/raw"} if ds["source"] == "synthetic" else {}


def _prepare_root(w):
    ds = PLAN.dataset(w.dataset)
    return f"results/data/{w.dataset}/raw" if ds["source"] == "synthetic" else ds["root"]


def _report_runs(w):
    return [
        {"run_key": r.key, "dataset": r.dataset, "model": r.model, "loss": r.loss, "seed": r.seed,
         "run_dir": r.dir, "profile": PLAN.profile_path(r)}
        for r in study_runs(w.study)
    ]


def _report_inputs(w):
    files = []
    for r in study_runs(w.study):
        files += [f"{r.dir}/{f}" for f in ("run.json", "history.csv", "metrics.json", "samples.npz")]
        files.append(PLAN.profile_path(r))
    return files
