# MLflow: one job creates the store and the experiments before any run is logged (a fresh
# sqlite store written by parallel jobs dies in a migration race), then each run directory
# is logged (idempotently: a tag holds the run key) into each study citing it, its model
# only into its home study (the first citing it), then each study's tables and figures into
# the study's run, under which the study's runs are nested. What the UI shows: docs/mlflow.md.
#
# MLflow is a view of the files, so its failure never fails the pipeline: a track job whose
# store is down or broken writes its record with status "skipped" (why, and how to sync
# later) and exits 0; tables and figures come from the files all the same. The record's
# `round` is a param of its job (tracking.record_round): a skipped record raises it, so the
# next `snakemake` reruns exactly the skipped track jobs (Snakemake's params trigger), and
# `segbench sync` logs everything at once and marks the records logged.
import time

from segbench.tracking import damaged_stores, is_server, read_record, record_round, study_note, RECORD_SKIPPED

# when this snakemake started: a damaged store a track job moves aside from now on is reported
TRACK_STARTED = time.time()

# new experiments keep their artifacts beside a local store; a tracking server stores them
# where `mlflow server --artifacts-destination` says (scripts/mlflow_server.sh)
TRACK_ARTIFACTS = "" if is_server(TRACKING_URI) else f"--artifact-root {RESULTS}/mlartifacts"


# The record of each track job. (The `round` params below take only wildcards: Snakemake
# leaves params computed from input/output out of its params trigger.)
INIT_RECORD = f"{RESULTS}/mlflow/init.json"
RUN_RECORD = f"{RESULTS}/mlflow/runs/{{dataset}}/{{model}}/{{loss}}/s{{seed}}.json"
STUDY_RECORD = f"{RESULTS}/mlflow/studies/{{study}}.json"


rule mlflow_init:
    output:
        INIT_RECORD,
    params:
        studies=" ".join(f"--study {s}" for s in PLAN.studies),
        uri=TRACKING_URI,
        artifacts=TRACK_ARTIFACTS,
        round=lambda w: record_round(INIT_RECORD),
    log:
        f"{RESULTS}/logs/mlflow/init.log",
    benchmark:
        f"{RESULTS}/benchmarks/mlflow/init.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m segbench track-init {params.studies} --tracking-uri {params.uri:q} {params.artifacts} "
        "--on-error skip --round {params.round} --out {output} > {log} 2>&1"


rule track_run:
    input:
        init=INIT_RECORD,
        run=f"{RUN_DIR}/run.json",
        history=f"{RUN_DIR}/history.csv",
        metrics=f"{RUN_DIR}/metrics.json",
        profile=lambda w: PLAN.profile_path(run_of(w)),
    output:
        RUN_RECORD,
    params:
        studies=lambda w: " ".join(f"--study {s}" for s in PLAN.studies_of(run_of(w))),
        uri=TRACKING_URI,
        model="" if CFG["mlflow"]["log_models"] else "--no-model",
        run_dir=lambda w, input: os.path.dirname(input.run),
        round=lambda w: record_round(RUN_RECORD.format(dataset=w.dataset, model=w.model, loss=w.loss, seed=w.seed)),
    log:
        f"{RESULTS}/logs/mlflow/runs/{{dataset}}/{{model}}/{{loss}}/s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/mlflow/runs/{{dataset}}/{{model}}/{{loss}}/s{{seed}}.tsv"
    threads: 1
    resources:
        # torch, mlflow and matplotlib (450 MB with a tiny model), plus the model logged in its
        # home study: rebuilt and pickled, twice its size (a ResNet-101 DeepLabV3: 240 MB)
        mem_mb=3000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m segbench track {params.run_dir} {params.studies} --tracking-uri {params.uri:q} "
        "--profile {input.profile} {params.model} --on-error skip --round {params.round} --out {output} > {log} 2>&1"


rule track_study:
    input:
        init=INIT_RECORD,
        runs=lambda w: [f"{RESULTS}/mlflow/runs/{r.key}.json" for r in study_runs(w.study)],
        report=f"{RESULTS}/studies/{{study}}/tables/summary.md",
    output:
        STUDY_RECORD,
    params:
        uri=TRACKING_URI,
        dir=lambda w, input: os.path.dirname(os.path.dirname(input.report)),
        # the experiment's description (training scale included): a changed one reruns this job
        note=lambda w: json.dumps(study_note(PLAN, w.study)),
        # mlflow.register_best: the study's best model as registered model segbench-<study>
        register="--register-best" if CFG["mlflow"]["register_best"] else "",
        round=lambda w: record_round(STUDY_RECORD.format(study=w.study)),
    log:
        f"{RESULTS}/logs/mlflow/studies/{{study}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/mlflow/studies/{{study}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m segbench track-study {wildcards.study} --dir {params.dir} --note {params.note:q} {params.register} "
        "--tracking-uri {params.uri:q} --on-error skip --round {params.round} --out {output} > {log} 2>&1"


def mlflow_reminder():
    """After a successful run: a reminder when MLflow is behind the files."""
    if MLFLOW:
        damaged = damaged_stores(TRACKING_URI, since=TRACK_STARTED)
        if damaged:
            print(f"\nMLflow: the store of {TRACKING_URI} was damaged; a track step moved it aside to "
                  f"{os.path.abspath(damaged[-1])} and made a fresh one, which holds only the steps logged since. Run "
                  "`segbench sync` to log every run directory and study into it again.", file=sys.stderr)
        records = [INIT_RECORD] + [STUDY_RECORD.format(study=s) for s in PLAN.studies] + [
            RUN_RECORD.format(dataset=r.dataset, model=r.model, loss=r.loss, seed=r.seed) for r in PLAN.runs]
        skipped = [p for p in records if (read_record(p) or {}).get("status") == RECORD_SKIPPED]
        if skipped:
            print(f"\nMLflow ({TRACKING_URI}) was skipped for {len(skipped)} track step(s), e.g. "
                  f"{skipped[0]}: {(read_record(skipped[0]) or {}).get('reason', '?')}\n"
                  "The results are complete on disk. Once the store is reachable, run snakemake "
                  "again (it retries exactly these steps) or `segbench sync`.", file=sys.stderr)
