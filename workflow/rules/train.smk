# Training: one job per run key. The run's resolved spec is a param, so changing one
# model's (or loss's, or dataset's) entry reruns exactly the runs that use it.
#
# With MLflow enabled, a training logs live into its run's home study (params at its start,
# each epoch's metrics as it ends, system metrics, status RUNNING then FINISHED, FAILED or
# KILLED; docs/mlflow.md). Where to is no param of this rule (a changed tracking URI or a new
# study citing the run must never retrain it): the Snakefile sets $SEGBENCH_MLFLOW_LIVE, JSON
# {"tracking_uri", "artifact_root", "home": {run key: home study}} (tracking.live_env), which
# `segbench train` reads (its --tracking-uri/--study, for use by hand, win). Best effort: a
# store that is down never fails or slows training, and the track step (track.smk) fills in
# whatever live logging missed.


def train_runtime(w) -> int:
    """The training job's time limit in minutes. Locally nothing enforces it: 600. On a cluster
    a rule of thumb from the run's cost estimate (segbench.cost.train_runtime_minutes: twice
    the estimated GPU time + 15 min, 2 h to 2 days); SEGBENCH_SLURM_SET="train:runtime=..."
    overrides it."""
    if not (workflow.non_local_exec or workflow.remote_exec):
        return 600
    from segbench.cost import run_costs, train_runtime_minutes

    (cost,) = run_costs(PLAN, runs=[run_of(w)])  # this run's models only, on the meta device
    return train_runtime_minutes(cost)


def run_spec_json(w) -> str:
    return json.dumps(PLAN.run_spec(run_of(w)), sort_keys=True)


rule train:
    input:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
        # the ImageNet checkpoint of params.pretrained, if any (weights.smk; jobs get SEGBENCH_WEIGHTS there)
        weights=pretrained_input,
    output:
        model=f"{RUN_DIR}/model.pt",
        history=f"{RUN_DIR}/history.csv",
        run=f"{RUN_DIR}/run.json",
    params:
        spec=run_spec_json,
        data=lambda w, input: os.path.dirname(input.manifest),
        out=lambda w, output: os.path.dirname(output.run),
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{model}}/{{loss}}/s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{dataset}}/{{model}}/{{loss}}/s{{seed}}.tsv"
    # train.threads of the config; Snakemake caps it at --cores locally (no workflow.cores
    # here: a cluster run has none). On SLURM a GPU job gets cpus_per_gpu CPUs per GPU
    # instead (workflow/profiles/slurm): torch uses `threads` of them, the DataLoader
    # workers the rest (engine/train.py).
    # N x train.threads for train.devices processes
    threads: lambda w: PLAN.train_spec(w.dataset, w.model)["threads"] * PLAN.train_spec(w.dataset, w.model)["devices"]
    resources:
        # a retry (profiles: retries 1) gets twice the memory
        mem_mb=lambda w, attempt: 6000 * attempt,
        runtime=train_runtime,
        # one GPU per process of the run (train.devices: DistributedDataParallel on one node)
        gpu=lambda w: PLAN.train_spec(w.dataset, w.model)["devices"],
    conda:
        ENV
    shell:
        # exec: the trainer is snakemake's own child, so a SIGTERM (SLURM's warning, or snakemake's
        # own, forwarded by the Snakefile) reaches it and no shell dies around it while it checkpoints
        "exec python -m segbench train --spec {params.spec:q} --data {params.data} --out {params.out} "
        "--threads {threads} > {log} 2>&1"
