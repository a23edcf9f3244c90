# MLflow: one job creates the store and the experiments before any run is logged (a fresh
# sqlite store written by parallel jobs dies in a migration race), then each run directory
# is logged (idempotently: a tag holds the run key), then each study's tables and figures.


rule mlflow_init:
    output:
        "results/mlflow/init.json",
    params:
        studies=" ".join(f"--study {s}" for s in PLAN.studies),
        uri=TRACKING_URI,
    log:
        "results/logs/mlflow/init.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m segbench track-init {params.studies} --tracking-uri {params.uri:q} "
        "--artifact-root results/mlartifacts --out {output} > {log} 2>&1"


rule track_run:
    input:
        init="results/mlflow/init.json",
        run=f"{RUN_DIR}/run.json",
        history=f"{RUN_DIR}/history.csv",
        metrics=f"{RUN_DIR}/metrics.json",
        profile=lambda w: PLAN.profile_path(run_of(w)),
    output:
        "results/mlflow/runs/{dataset}/{model}/{loss}/s{seed}.json",
    params:
        studies=lambda w: " ".join(f"--study {s}" for s in PLAN.studies_of(run_of(w))),
        uri=TRACKING_URI,
        run_dir=lambda w, input: os.path.dirname(input.run),
    log:
        "results/logs/mlflow/runs/{dataset}/{model}/{loss}/s{seed}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m segbench track {params.run_dir} {params.studies} --tracking-uri {params.uri:q} "
        "--profile {input.profile} --out {output} > {log} 2>&1"


rule track_study:
    input:
        init="results/mlflow/init.json",
        runs=lambda w: [f"results/mlflow/runs/{r.key}.json" for r in study_runs(w.study)],
        report="results/studies/{study}/tables/summary.md",
    output:
        "results/mlflow/studies/{study}.json",
    params:
        uri=TRACKING_URI,
        dir=lambda w, input: os.path.dirname(os.path.dirname(input.report)),
    log:
        "results/logs/mlflow/studies/{study}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m segbench track-study {wildcards.study} --dir {params.dir} "
        "--tracking-uri {params.uri:q} --out {output} > {log} 2>&1"
