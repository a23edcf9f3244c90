# ImageNet-pretrained backbones (a model's `params.pretrained`, segbench.weights): a registered
# name is a file in the config's `weights.dir` (default ~/.cache/segbench/weights, shared by
# every config), downloaded once by fetch_weights before the trainings that need it. A path
# of the user's is used as it is. Training never downloads.
from segbench.weights import ENV as WEIGHTS_ENV, REGISTRY as WEIGHTS  # noqa: E402

WEIGHTS_DIR = CFG["weights"]["dir"]  # `~` expanded by the config check
WEIGHTS_LOGS = f"{RESULTS}/logs/weights"
# Every job (local ones, and cluster jobs, which parse this file again) finds the registered
# files where fetch_weights puts them. Set here rather than in the train rule's command, so
# that changing the folder does not change every training's command (Snakemake would rerun
# them all); a pretrained run still reruns when its file's path changes (its input).
os.environ[WEIGHTS_ENV] = WEIGHTS_DIR
_WEIGHTS_BY_FILE = {entry.file: name for name, entry in WEIGHTS.items()}


def pretrained_input(w):
    """The checkpoint file a run's model starts from: [] without `params.pretrained`, the
    registered file in WEIGHTS_DIR (fetch_weights makes it), or the user's file, which must exist."""
    source = (CFG["models"][w.model].get("params") or {}).get("pretrained")
    if not source:
        return []
    if source in WEIGHTS:
        return [os.path.join(WEIGHTS_DIR, WEIGHTS[source].file)]
    path = os.path.expanduser(source)
    if not os.path.isfile(path):
        raise WorkflowError(f"config key 'models.{w.model}.params.pretrained': the checkpoint {source!r} does not "
                            f"exist (looked for {os.path.abspath(path)}); give the path of an existing file (relative "
                            f"to the working directory) or a registered name ({', '.join(WEIGHTS)})")
    return [path]


def _fetch_weights_args(w):
    name = _WEIGHTS_BY_FILE[w.file]
    source = (CFG["weights"].get("sources") or {}).get(name) or {}
    args = [shlex.quote(name), "--dir", shlex.quote(WEIGHTS_DIR)]
    if source.get("url"):
        args += ["--url", shlex.quote(source["url"])]
    if source.get("sha256"):
        args += ["--sha256", source["sha256"]]
    return " ".join(args)


# Resumable: a cut download keeps {file}.part beside the target and the next run continues it
# (HTTP Range); the SHA-256 (full, or torchvision's published prefix) is checked before the
# file is moved into place; a mismatch deletes the .part and names both hashes.
rule fetch_weights:
    output:
        f"{WEIGHTS_DIR}/{{file}}",
    wildcard_constraints:
        file="|".join(re.escape(f) for f in _WEIGHTS_BY_FILE),
    params:
        args=_fetch_weights_args,
    log:
        f"{WEIGHTS_LOGS}/{{file}}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    conda:
        ENV
    shell:
        "python -m segbench fetch-weights {params.args} > {log} 2>&1"
