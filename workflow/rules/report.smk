# Per-study tables and figures from the runs' files: one rule per study (report_<study>),
# because each study declares its own files (one per dataset, the paper's tables, the
# cross study's Pareto figures). Every file flagged report() appears in
# `snakemake --report report.html`, with its caption from workflow/report/.
from segbench.report.outputs import study_output_kind, study_outputs

REPORT_CAPTIONS = "../report"  # relative to this file: workflow/report/


def rule_safe(name):
    return re.sub(r"\W", "_", name)


def augment_dataset(study):
    """The dataset whose first validation image the augmentation figure shows (U-Net vs
    SegNet report, Figure 6), or None for a study that has no such figure."""
    spec = PLAN.study_spec(study)
    return PLAN.studies[study][0].dataset if spec["paper"] == "unet_segnet" and PLAN.studies[study] else None


def _caption(kind):
    return f"{REPORT_CAPTIONS}/{kind}.rst"


def _report_flag(study, rel):
    """The declared output for `rel` (relative to the study's folder), with its caption."""
    path = f"{RESULTS}/studies/{study}/{rel}"
    kind = study_output_kind(rel)
    if kind is None:
        return path
    return report(path, caption=_caption(kind), category=f"Study {study}",
                  subcategory="tables" if rel.startswith("tables/") else "figures",
                  labels={"study": study, "file": os.path.basename(rel)})


def _report_rule_inputs(study):
    def inputs(w):
        files = []
        for r in study_runs(study):
            files += [f"{PLAN.run_dir(r)}/{f}" for f in ("run.json", "history.csv", "metrics.json", "samples.npz")]
            files += [f"{PLAN.run_dir(r)}/{f}" for f in PER_IMAGE_FILES]
            if CFG["eval"]["corruptions"]:  # the robustness table and the augmentation claim
                files += [f"{PLAN.run_dir(r)}/{f}" for f in ROBUSTNESS_FILES]
            files.append(PLAN.profile_path(r))
        aug = augment_dataset(study)
        if aug:
            files.append(f"{RESULTS}/data/{aug}/manifest.csv")
        return sorted(set(files))

    return inputs


# What `segbench report` needs to know of a study (its spec and its runs) goes to it in two
# JSON files rather than as params: the Snakemake report shows each file's job params, and
# JSON there is an unreadable wall of escaped quotes. This rule's params hold the JSON, so a
# config change rewrites the files (Snakemake's params trigger) and so reruns the report.
REPORT_INPUTS = f"{RESULTS}/studies/{{study}}/report_inputs"


rule report_inputs:
    output:
        spec=f"{REPORT_INPUTS}/study.json",
        runs=f"{REPORT_INPUTS}/runs.json",
    params:
        spec=lambda w: json.dumps(PLAN.study_spec(w.study), indent=1) + "\n",
        runs=lambda w: json.dumps(report_runs(w.study), indent=1) + "\n",
    localrule: True
    run:
        from segbench.io import write_text

        write_text(output.spec, params.spec)
        write_text(output.runs, params.runs)


for _study in PLAN.studies:

    rule:
        name:
            f"report_{rule_safe(_study)}"
        input:
            _report_rule_inputs(_study),
            spec=REPORT_INPUTS.format(study=_study) + "/study.json",
            runs=REPORT_INPUTS.format(study=_study) + "/runs.json",
        output:
            [_report_flag(_study, rel) for rel in study_outputs(PLAN.study_spec(_study), report_runs(_study))],
        params:
            study=_study,
            out=f"{RESULTS}/studies/{_study}",
            augment=(f"--augment-data {RESULTS}/data/{augment_dataset(_study)}" if augment_dataset(_study) else ""),
        log:
            f"{RESULTS}/logs/report/{_study}.log",
        benchmark:
            f"{RESULTS}/benchmarks/report/{_study}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=10,
        conda:
            ENV
        shell:
            "python -m segbench report {params.study} --study-spec @{input.spec} --runs @{input.runs} "
            "--out {params.out} {params.augment} > {log} 2>&1"
