# Datasets: generate (synthetic), or read an existing copy (`root:`), or
# download -> verify -> extract once per source; then prepare each dataset entry into
# <results>/data/{dataset}/manifest.csv + train-id label PNGs. See docs/datasets.md.


rule generate_synthetic:
    priority: PRIORITY_DATA
    output:
        directory(f"{RESULTS}/data/{{dataset}}/raw"),
    params:
        args=_generate_params,
    log:
        f"{RESULTS}/logs/generate/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/generate/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m segbench generate {output} {params.args} > {log} 2>&1"


# Resumable: a cut download keeps <results>/downloads/{source}/{archive}.part (Cityscapes:
# .partial/{archive}) and the next run continues it. Cityscapes' login comes from the
# environment or the file named by download.credentials; it never appears in a command or log.
rule download_archive:
    priority: PRIORITY_DATA
    output:
        f"{RESULTS}/downloads/{{source}}/{{archive}}",
    wildcard_constraints:
        source="|".join(DOWNLOAD_SOURCES),
        archive="|".join(re.escape(a) for a in ARCHIVE_NAMES),
    params:
        args=_download_args,
        dir=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/download/{{source}}/{{archive}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/{{source}}/{{archive}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=24 * 60,
    conda:
        ENV
    shell:
        "python -m segbench download {wildcards.source} --archive {wildcards.archive} --dir {params.dir} "
        "{params.args} --no-input > {log} 2>&1"


# A mismatch deletes the archive (the next run downloads it again) and shows both MD5s.
rule verify_archive:
    priority: PRIORITY_DATA
    input:
        f"{RESULTS}/downloads/{{source}}/{{archive}}",
    output:
        f"{RESULTS}/downloads/{{source}}/{{archive}}.verified",
    wildcard_constraints:
        source="|".join(DOWNLOAD_SOURCES),
        archive="|".join(re.escape(a) for a in ARCHIVE_NAMES),
    params:
        md5=_verify_args,
    log:
        f"{RESULTS}/logs/verify/{{source}}/{{archive}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/verify/{{source}}/{{archive}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m segbench verify {input:q} --source {wildcards.source} {params.md5} --out {output:q} "
        "> {log} 2>&1"


# Refuses absolute paths, '..' and links leading out; checks the free space first.
rule extract_archives:
    priority: PRIORITY_DATA
    input:
        archives=_archives,
        verified=_verified,
    output:
        directory(f"{RESULTS}/raw/{{source}}"),
    wildcard_constraints:
        source="|".join(DOWNLOAD_SOURCES),
    log:
        f"{RESULTS}/logs/extract/{{source}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{source}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m segbench extract {input.archives:q} --to {output:q} > {log} 2>&1"


# The synthetic dataset (generated above).
rule prepare:
    priority: PRIORITY_DATA
    input:
        unpack(_prepare_input),
    output:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    wildcard_constraints:
        dataset=datasets_regex(synthetic=True),
    params:
        source=lambda w: PLAN.dataset(w.dataset)["source"],
        root=_prepare_root,
        labels=lambda w: PLAN.dataset(w.dataset)["labels"],
        out=lambda w, output: os.path.dirname(output.manifest),
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m segbench prepare {params.source} --root {params.root:q} --out {params.out} "
        "--labels {params.labels} --name {wildcards.dataset} > {log} 2>&1"


# A real dataset, from `root:` or from <results>/raw/{source}; split sizes are checked
# against the published counts unless `allow_partial: true`.
rule prepare_dataset:
    priority: PRIORITY_DATA
    input:
        unpack(_prepare_input),
    output:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    wildcard_constraints:
        dataset=datasets_regex(synthetic=False),
    params:
        source=lambda w: PLAN.dataset(w.dataset)["source"],
        root=_prepare_root,
        labels=lambda w: PLAN.dataset(w.dataset)["labels"],
        options=_prepare_options,
        out=lambda w, output: os.path.dirname(output.manifest),
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    conda:
        ENV
    shell:
        "python -m segbench prepare {params.source} --root {params.root:q} --out {params.out} "
        "--labels {params.labels} --name {wildcards.dataset} {params.options} > {log} 2>&1"
