# Per-study tables and figures from the runs' files.


def _report_runs(w):
    return [
        {"run_key": r.key, "dataset": r.dataset, "model": r.model, "loss": r.loss, "seed": r.seed,
         "run_dir": r.dir, "profile": PLAN.profile_path(r)}
        for r in study_runs(w.study)
    ]


def _report_inputs(w):
    files = []
    for r in study_runs(w.study):
        files += [f"{r.dir}/{f}" for f in ("run.json", "history.csv", "metrics.json", "samples.npz")]
        files.append(PLAN.profile_path(r))
    return files


rule report:
    input:
        _report_inputs,
    output:
        csv="results/studies/{study}/tables/summary.csv",
        md="results/studies/{study}/tables/summary.md",
        curves="results/studies/{study}/figures/curves.png",
        speed="results/studies/{study}/figures/speed_accuracy.png",
    params:
        runs=lambda w: json.dumps(_report_runs(w)),
        out="results/studies/{study}",
    log:
        "results/logs/report/{study}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "{SEGBENCH} report {wildcards.study} --runs {params.runs:q} --out {params.out} > {log} 2>&1"
