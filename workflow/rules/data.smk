# Datasets: generate (synthetic) or read an existing copy, then prepare into
# results/data/{dataset}/manifest.csv + train-id label PNGs.


rule generate_synthetic:
    output:
        directory("results/data/{dataset}/raw"),
    params:
        args=_generate_params,
    log:
        "results/logs/generate/{dataset}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m segbench generate {output} {params.args} > {log} 2>&1"


rule prepare:
    input:
        unpack(_prepare_input),
    output:
        manifest="results/data/{dataset}/manifest.csv",
        meta="results/data/{dataset}/meta.json",
    params:
        source=lambda w: PLAN.dataset(w.dataset)["source"],
        root=_prepare_root,
        labels=lambda w: PLAN.dataset(w.dataset)["labels"],
        out=lambda w, output: os.path.dirname(output.manifest),
    log:
        "results/logs/prepare/{dataset}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m segbench prepare {params.source} --root {params.root:q} --out {params.out} "
        "--labels {params.labels} --name {wildcards.dataset} > {log} 2>&1"
