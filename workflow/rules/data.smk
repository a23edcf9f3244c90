# Datasets: generate (synthetic) or read an existing copy, then prepare into
# results/data/{dataset}/manifest.csv + train-id label PNGs.


def _generate_params(w):
    g = PLAN.dataset(w.dataset)["generate"]
    return f"--seed {g['seed']} --train {g['train']} --val {g['val']} --height {g['height']} --width {g['width']}"


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
        "{SEGBENCH} generate {output} {params.args} > {log} 2>&1"


def _prepare_input(w):
    ds = PLAN.dataset(w.dataset)
    return {"raw": f"results/data/{w.dataset}/raw"} if ds["source"] == "synthetic" else {}


def _prepare_root(w):
    ds = PLAN.dataset(w.dataset)
    return f"results/data/{w.dataset}/raw" if ds["source"] == "synthetic" else ds["root"]


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
        out=lambda w: f"results/data/{w.dataset}",
    log:
        "results/logs/prepare/{dataset}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    shell:
        "{SEGBENCH} prepare {params.source} --root {params.root:q} --out {params.out} "
        "--labels {params.labels} > {log} 2>&1"
