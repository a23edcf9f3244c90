# Evaluation of each run's final model, and one profile per (model, classes, input size).


def protocol_args(e: dict) -> str:
    """The config's evaluation protocol as `segbench evaluate/robustness` arguments (docs/metrics.md)."""
    args = f"--mode {e['mode']} --scales {','.join(str(s) for s in e['scales'])}"
    if e["crop"]:
        args += f" --crop {e['crop'][0]}x{e['crop'][1]}"
    if e["stride"]:
        args += f" --stride {e['stride'][0]}x{e['stride'][1]}"
    return args + (" --flip" if e["flip"] else "")


#: a param of the evaluate and robustness jobs: changing the protocol reruns them, not training
EVAL_PROTOCOL = protocol_args(CFG["eval"])


rule evaluate:
    input:
        model=f"{RUN_DIR}/model.pt",
        run=f"{RUN_DIR}/run.json",
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
    output:
        metrics=f"{RUN_DIR}/metrics.json",
        confusion=f"{RUN_DIR}/confusion.npy",
        samples=f"{RUN_DIR}/samples.npz",
        # per val image: confusion, Boundary IoU counts, segments per size (docs/statistics.md)
        per_image=[f"{RUN_DIR}/{name}" for name in PER_IMAGE_FILES],
    params:
        data=lambda w, input: os.path.dirname(input.manifest),
        run_dir=lambda w, input: os.path.dirname(input.run),
        batch=CFG["eval"]["batch_size"],
        samples=CFG["eval"]["samples"],
        protocol=EVAL_PROTOCOL,
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/{{model}}/{{loss}}/s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{dataset}}/{{model}}/{{loss}}/s{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=60,
        gpu=1,
    conda:
        ENV
    shell:
        "python -m segbench evaluate {params.run_dir} --data {params.data} --batch-size {params.batch} "
        "--samples {params.samples} {params.protocol} --threads {threads} > {log} 2>&1"


rule profile:
    output:
        f"{RESULTS}/profiles/{{model}}-c{{classes}}-{{height}}x{{width}}.json",
    params:
        spec=lambda w: json.dumps(PLAN.model_spec(w.model), sort_keys=True),
        channels_last=lambda w: str(PLAN.profile_channels_last(w.model)).lower(),
        warmup=CFG["profile"]["warmup"],
        iterations=CFG["profile"]["iterations"],
        repeats=CFG["profile"]["repeats"],
    log:
        f"{RESULTS}/logs/profile/{{model}}-c{{classes}}-{{height}}x{{width}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/profile/{{model}}-c{{classes}}-{{height}}x{{width}}.tsv"
    wildcard_constraints:
        classes=r"\d+",
        height=r"\d+",
        width=r"\d+",
    # locally all cores: timings are taken with nothing else running. On a cluster (and
    # inside a cluster job, whose --cores is the whole node) profile.threads of the config.
    threads: lambda w: CFG["profile"]["threads"] if workflow.non_local_exec or workflow.remote_exec else workflow.cores
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=1,
    conda:
        ENV
    shell:
        "python -m segbench profile --model-spec {params.spec:q} --classes {wildcards.classes} "
        "--size {wildcards.height}x{wildcards.width} --warmup {params.warmup} "
        "--iterations {params.iterations} --repeats {params.repeats} --channels-last {params.channels_last} --threads {threads} "
        "--out {output} > {log} 2>&1"


# Robustness (eval.corruptions; docs/robustness.md): the final model on corrupted copies of the
# val images, a job of its own so that the clean metrics never wait for it. Changing the
# corruptions or severities reruns these jobs only (they are params).
from segbench.data.corruptions import CORRUPTIONS, SEVERITIES

#: eval.corruptions; while it is null no target asks for robustness.json, and one asked for by
#: hand gets every corruption at every severity
ROBUSTNESS = CFG["eval"]["corruptions"] or {"names": list(CORRUPTIONS), "severities": list(SEVERITIES)}


rule robustness:
    input:
        model=f"{RUN_DIR}/model.pt",
        run=f"{RUN_DIR}/run.json",
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
    output:
        robustness=f"{RUN_DIR}/robustness.json",
        counts=f"{RUN_DIR}/corrupted_iou_per_image.npy",
    params:
        data=lambda w, input: os.path.dirname(input.manifest),
        run_dir=lambda w, input: os.path.dirname(input.run),
        batch=CFG["eval"]["batch_size"],
        names=",".join(ROBUSTNESS["names"]),
        severities=",".join(map(str, ROBUSTNESS["severities"])),
        protocol=EVAL_PROTOCOL,
    log:
        f"{RESULTS}/logs/robustness/{{dataset}}/{{model}}/{{loss}}/s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/robustness/{{dataset}}/{{model}}/{{loss}}/s{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=240,
        gpu=1,
    conda:
        ENV
    shell:
        "python -m segbench robustness {params.run_dir} --data {params.data} --corruptions {params.names} "
        "--severities {params.severities} --batch-size {params.batch} {params.protocol} --threads {threads} > {log} 2>&1"
