# Validation of the config, the plan of runs, and the helpers every rule uses.
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
    CFG = validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
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


def run_spec_json(w) -> str:
    return json.dumps(PLAN.run_spec(run_of(w)), sort_keys=True)


def study_runs(study):
    return PLAN.studies[study]


def all_outputs():
    from segbench.report.outputs import study_outputs

    # every file of every study's report (a file deleted by hand is made again)
    out = [f"{RESULTS}/studies/{s}/{rel}" for s in PLAN.studies
           for rel in study_outputs(PLAN.study_spec(s), report_runs(s))]
    if MLFLOW:
        out += [f"{RESULTS}/mlflow/studies/{s}.json" for s in PLAN.studies]
    return out


def _generate_params(w):
    g = PLAN.dataset(w.dataset)["generate"]
    return f"--seed {g['seed']} --train {g['train']} --val {g['val']} --height {g['height']} --width {g['width']}"


# -- data: a real dataset either lives at `root:` (read in place) or is downloaded once per
# source into <results>/downloads/{source}/ and extracted into <results>/raw/{source}/
from segbench.data.download import SOURCES as DOWNLOAD_SOURCES, archives_of  # noqa: E402

ARCHIVE_NAMES = sorted({a for s in DOWNLOAD_SOURCES for a in archives_of(s)})


def _downloads(ds) -> bool:
    return ds["source"] != "synthetic" and not ds.get("root")


def _source_entries(source):
    """The dataset entries that download `source`, in config order."""
    return [ds for ds in CFG["datasets"].values() if ds["source"] == source and _downloads(ds)]


def _download_setting(source, key):
    """A `download:` setting of a source; the first entry that sets it wins."""
    for ds in _source_entries(source):
        value = (ds.get("download") or {}).get(key)
        if value:
            return value
    return None


def source_archives(source):
    """The archives a source needs (VOC needs SBD's only for trainaug)."""
    if source == "voc":
        from segbench.data.voc import archives_needed

        return archives_needed(any(ds.get("trainaug", True) for ds in _source_entries(source)))
    return list(archives_of(source))


def _archives(w):
    return [f"{RESULTS}/downloads/{w.source}/{a}" for a in source_archives(w.source)]


def _verified(w):
    return [f"{p}.verified" for p in _archives(w)]


def _download_args(w):
    if w.source == "cityscapes":
        args = []
        if _download_setting("cityscapes", "site"):
            args.append(f"--site {shlex.quote(_download_setting('cityscapes', 'site'))}")
        if _download_setting("cityscapes", "credentials"):  # a file name; the login itself never passes here
            args.append(f"--credentials {shlex.quote(_download_setting('cityscapes', 'credentials'))}")
        return " ".join(args)
    url = (_download_setting(w.source, "urls") or {}).get(w.archive)
    return f"--url {shlex.quote(f'{w.archive}={url}')}" if url else ""


def _verify_args(w):
    md5 = (_download_setting(w.source, "md5") or {}).get(w.archive)
    return f"--md5 {md5}" if md5 else ""


def datasets_regex(synthetic):
    """A wildcard constraint matching exactly the configured dataset names of one kind."""
    names = [n for n, ds in CFG["datasets"].items() if (ds["source"] == "synthetic") == synthetic]
    return "|".join(re.escape(n) for n in names) or "(?!)"


def _prepare_input(w):
    ds = PLAN.dataset(w.dataset)
    if ds["source"] == "synthetic":
        return {"raw": f"{RESULTS}/data/{w.dataset}/raw"}
    return {"raw": f"{RESULTS}/raw/{ds['source']}"} if _downloads(ds) else {}


def _prepare_root(w):
    ds = PLAN.dataset(w.dataset)
    if ds["source"] == "synthetic":
        return f"{RESULTS}/data/{w.dataset}/raw"
    return f"{RESULTS}/raw/{ds['source']}" if _downloads(ds) else ds["root"]


def _prepare_options(w):
    ds = PLAN.dataset(w.dataset)
    opts = []
    if ds.get("allow_partial"):
        opts.append("--allow-partial")
    if ds["source"] == "voc":
        if not ds.get("trainaug", True):
            opts.append("--no-trainaug")
        if ds.get("sbd_root") and not _downloads(ds):
            opts.append(f"--sbd-root {shlex.quote(ds['sbd_root'])}")
    return " ".join(opts)


def report_runs(study):
    """The study's runs as `segbench report --runs` takes them (keys, paths, groups, specs)."""
    return [PLAN.report_run(study, r) for r in study_runs(study)]


def rule_safe(name):
    return re.sub(r"\W", "_", name)


def augment_dataset(study):
    """The dataset whose first validation image the augmentation figure shows (U-Net vs
    SegNet report, Figure 6), or None for a study that has no such figure."""
    spec = PLAN.study_spec(study)
    return PLAN.studies[study][0].dataset if spec["paper"] == "unet_segnet" and PLAN.studies[study] else None


# -- the fork server (segbench.forkserver): torch, mlflow and matplotlib imported once for all
# local jobs of this invocation. Started by onstart (Snakefile), stopped by onsuccess/onerror,
# and it exits by itself when this Snakemake process is gone.
FORKSERVER = {}


def start_forkserver():
    import shutil
    import subprocess
    import tempfile

    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    if not CFG["forkserver"] or not workflow.executor_plugin.common_settings.local_exec:
        return
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return  # jobs run another interpreter
    python = shutil.which("python")  # the interpreter the jobs' `python -m segbench` runs
    if python is None:
        return
    folder = tempfile.mkdtemp(prefix="segbench-fs-")  # mode 0700: only this user can connect
    sock = os.path.join(folder, "fs.sock")
    log = Path(RESULTS, "logs", "forkserver.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": SRC + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
           "NO_ALBUMENTATIONS_UPDATE": "1", "MPLBACKEND": "Agg"}
    with open(log, "a") as f:
        proc = subprocess.Popen([python, "-m", "segbench.forkserver", "--socket", sock, "--parent", str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # Ctrl-C reaches the jobs' clients, which forward it
    FORKSERVER.update(proc=proc, folder=folder)
    os.environ["SEGBENCH_FORKSERVER"] = sock  # every job inherits it
    os.environ["SEGBENCH_FORKSERVER_PID"] = str(proc.pid)  # jobs wait for it while it imports
    print(f"fork server for torch/mlflow steps: pid {proc.pid}, log {log}", file=sys.stderr)


def stop_forkserver():
    import shutil
    import signal
    import subprocess

    proc = FORKSERVER.pop("proc", None)
    os.environ.pop("SEGBENCH_FORKSERVER", None)
    os.environ.pop("SEGBENCH_FORKSERVER_PID", None)
    if proc is None:
        return
    proc.send_signal(signal.SIGTERM)  # stops listening; exits once its running jobs are done
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(FORKSERVER.pop("folder"), ignore_errors=True)


# -- the order jobs start in (Snakemake runs the highest priority first among those ready):
# data (everything waits on it; it needs no fork server, which imports meanwhile), profiles
# (each takes every core: run while two cores are free together, i.e. before the trainings),
# the creation of the MLflow store (locally it too takes every core, see the rule), the
# trainings, longest first (segbench.schedule: the last to finish is then a short one), and
# the short steps that no training waits for (evaluations, MLflow, reports): results_priority.
PRIORITY_DATA = 100000
PRIORITY_PROFILE = 50000
PRIORITY_STEP = 10000  # above any training's (segbench.schedule.HIGH)
PRIORITY_FILL = 0  # below any training's (segbench.schedule.LOW)
# A local run whose trainings are estimated to take less than this per core (in seconds on the
# reference machine; the default config: about 450) keeps its results for the end
RESULTS_AT_END_BELOW = 3600
_SCHEDULE = {}


def _schedule():
    if not _SCHEDULE:
        from segbench.schedule import priorities, train_costs

        costs = train_costs(PLAN, ".snakemake/segbench/train_macs.json")
        threads = {r.key: PLAN.train_spec(r.dataset, r.model)["threads"] for r in PLAN.runs}
        _SCHEDULE.update(priorities=priorities(costs),
                         per_core=sum(c * threads[k] for k, c in costs.items()) / max(1, workflow.cores))
    return _SCHEDULE


def train_priority(w):
    if workflow.dryrun or not workflow.local_exec:
        return 0  # no order to choose (a dry run) or the cluster's scheduler chooses it
    return _schedule()["priorities"][run_of(w).key]


def results_priority(w=None):
    """Evaluations, MLflow steps and reports. In a short local run (the default config's), they
    come after every training has started: they then fill the slots that the last trainings
    leave idle (with 13 trainings of 36-133 s on 2 slots, one ends up to half a minute before
    the other). In a long run (RESULTS_AT_END_BELOW) that idle end is a negligible share, and
    each run's results come as soon as it is trained."""
    if workflow.dryrun or not workflow.local_exec or _schedule()["per_core"] >= RESULTS_AT_END_BELOW:
        return PRIORITY_STEP
    return PRIORITY_FILL
