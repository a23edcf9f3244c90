# segbench: datasets -> training -> evaluation -> profiles -> MLflow -> study reports.
# The default run:   snakemake --cores all          (config.yaml, embedded synthetic data)
# Another config:    snakemake --cores all --configfile workflow/configs/paper.yaml
import os

from snakemake.utils import min_version

min_version("9.0")


# config.yaml unless --configfile names another: that file is then the whole config (not
# merged over config.yaml, whose scaled-down widths would leak into a paper-scale run)
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



report: "workflow/report/workflow.rst"


# every job learns this snakemake's pid: training stops when it is gone (engine/train.py;
# in a SLURM job, the job's own snakemake re-reads this file and puts its own pid)
os.environ["SEGBENCH_WORKFLOW_PID"] = str(os.getpid())


def forward_sigterm_to_trainers():
    """A SIGTERM to this snakemake also goes to its running trainers, which checkpoint at their
    next step and stop (engine/train.py); then snakemake's own handler starts no new job and
    exits. `snakemake` again resumes them (docs/cluster.md)."""
    import signal

    import psutil

    previous = signal.getsignal(signal.SIGTERM)  # snakemake's: finish running jobs, start no more

    def handler(signum, frame):
        for child in psutil.Process().children(recursive=True):
            try:
                if child.cmdline()[1:4] == ["-m", "segbench", "train"]:
                    child.send_signal(signum)
            except psutil.Error:
                pass
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


onstart:
    forward_sigterm_to_trainers()


include: "workflow/rules/common.smk"


# every training logs live into MLflow (engine/train.py, docs/mlflow.md): the store and each
# run's home study reach the train jobs as this variable, not as params, so adding a study or
# moving the store never retrains (a SLURM job re-reads this file and sets it too)
from segbench.tracking import LIVE_ENV, is_server, live_env

if MLFLOW:
    os.environ[LIVE_ENV] = live_env(TRACKING_URI, None if is_server(TRACKING_URI) else f"{RESULTS}/mlartifacts",
                                    {r.key: PLAN.studies_of(r)[0] for r in PLAN.runs})
else:
    os.environ.pop(LIVE_ENV, None)


include: "workflow/rules/data.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_outputs(),
    default_target: True


onsuccess:
    mlflow_reminder()
