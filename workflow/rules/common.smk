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
        read_yaml(_f)  # its errors name the file
    try:
        CFG = validate_config(config)  # against the schema of the package (segbench/schemas/)
    except ConfigError as e:  # name the file(s) the config came from, as `segbench check-config` does
        raise ConfigError(f"{' + '.join(map(str, workflow.configfiles)) or 'the config'}: {e}") from None
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


PER_IMAGE_FILES = ("confusion_per_image.npy", "boundary_per_image.npy", "segments_per_image.npy")
RUN_FILES = ("model.pt", "history.csv", "run.json", "metrics.json", "confusion.npy", "samples.npz") + PER_IMAGE_FILES
#: what the robustness job writes into a run's folder when eval.corruptions is set
ROBUSTNESS_FILES = ("robustness.json", "corrupted_iou_per_image.npy")


def all_outputs():
    """Every file a user relies on, so that one deleted by hand is made again (Snakemake does
    not recreate a missing file that is only an input of jobs whose outputs are up to date):
    each dataset's prepared manifest and meta.json, each run's files, each profile, each
    study's report and, with MLflow, each track record. Downloaded archives are left out: once
    extracted and prepared they may be deleted to save space."""
    from segbench.report.outputs import study_outputs

    out = [f"{RESULTS}/studies/{s}/{rel}" for s in PLAN.studies
           for rel in study_outputs(PLAN.study_spec(s), report_runs(s))]
    out += [f"{RESULTS}/data/{d}/{f}" for d in sorted({r.dataset for r in PLAN.runs})
            for f in ("manifest.csv", "meta.json")]
    out += [f"{PLAN.run_dir(r)}/{f}" for r in PLAN.runs for f in RUN_FILES]
    if CFG["eval"]["corruptions"]:
        out += [f"{PLAN.run_dir(r)}/{f}" for r in PLAN.runs for f in ROBUSTNESS_FILES]
    out += sorted({PLAN.profile_path(r) for r in PLAN.runs})
    if MLFLOW:
        out += [INIT_RECORD] + [f"{RESULTS}/mlflow/runs/{r.key}.json" for r in PLAN.runs]
        out += [f"{RESULTS}/mlflow/studies/{s}.json" for s in PLAN.studies]
    return out
