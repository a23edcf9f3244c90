# Per-study tables and figures from the runs' files.


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
        out=lambda w, output: os.path.dirname(os.path.dirname(output.md)),
    log:
        "results/logs/report/{study}.log",
    benchmark:
        "results/benchmarks/report/{study}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    shell:
        "python -m segbench report {wildcards.study} --runs {params.runs:q} --out {params.out} > {log} 2>&1"
