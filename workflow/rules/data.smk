# Datasets: generate (synthetic), or read an existing copy (`root:`), or
# download -> verify -> extract once per source; then prepare each dataset entry into
# <results>/data/{dataset}/manifest.csv + train-id label PNGs. See docs/datasets.md; a
# folder of your own (`source: folder`) is checked and prepared by prepare_folder
# (docs/extending.md).

from segbench.data.download import SOURCES as DOWNLOAD_SOURCES, archives_of

ARCHIVE_NAMES = sorted({a for s in DOWNLOAD_SOURCES for a in archives_of(s)})


def _generate_params(w):
    g = PLAN.dataset(w.dataset)["generate"]
    return f"--seed {g['seed']} --train {g['train']} --val {g['val']} --height {g['height']} --width {g['width']}"


def _downloads(ds) -> bool:
    return ds["source"] not in ("synthetic", "folder") and not ds.get("root")


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


def _dataset_kind(ds):
    return ds["source"] if ds["source"] in ("synthetic", "folder") else "real"


def datasets_regex(kind):
    """A wildcard constraint matching exactly the configured dataset names of one kind:
    synthetic, folder or real (the published sources)."""
    names = [n for n, ds in CFG["datasets"].items() if _dataset_kind(ds) == kind]
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


rule generate_synthetic:
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
    input:
        unpack(_prepare_input),
    output:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    wildcard_constraints:
        dataset=datasets_regex("synthetic"),
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
    input:
        unpack(_prepare_input),
    output:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    wildcard_constraints:
        dataset=datasets_regex("real"),
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


# A folder of your own (`source: folder`, `root:`): every image and label is checked, the
# labels are copied, the images are referenced where they are. See docs/extending.md.
rule prepare_folder:
    output:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    wildcard_constraints:
        dataset=datasets_regex("folder"),
    params:
        root=lambda w: PLAN.dataset(w.dataset)["root"],
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
        "python -m segbench prepare folder --root {params.root:q} --out {params.out} --name {wildcards.dataset} "
        "> {log} 2>&1"
