# Training: one job per run key. The run's resolved spec is a param, so changing one
# model's (or loss's, or dataset's) entry reruns exactly the runs that use it.


rule train:
    input:
        manifest="results/data/{dataset}/manifest.csv",
        meta="results/data/{dataset}/meta.json",
    output:
        model=f"{RUN_DIR}/model.pt",
        history=f"{RUN_DIR}/history.csv",
        run=f"{RUN_DIR}/run.json",
    params:
        spec=run_spec_json,
        data=lambda w, input: os.path.dirname(input.manifest),
        out=lambda w, output: os.path.dirname(output.run),
    log:
        "results/logs/train/{dataset}/{model}/{loss}/s{seed}.log",
    threads: lambda w: min(PLAN.train_spec(w.dataset, w.model)["threads"], workflow.cores)
    resources:
        mem_mb=6000,
        runtime=600,
        gpu=1,
    conda:
        ENV
    shell:
        "python -m segbench train --spec {params.spec:q} --data {params.data} --out {params.out} "
        "--threads {threads} > {log} 2>&1"
