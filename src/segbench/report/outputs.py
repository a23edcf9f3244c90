"""The files a study's report writes, known before any run exists (the Snakefile declares
them), and which caption (workflow/report/<kind>.rst) each gets in `snakemake --report`.

Light on purpose: the Snakefile imports this at start-up (no torch, pandas or matplotlib).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

#: the U-Net vs SegNet report's Figure 6, for studies of that paper
AUGMENTATIONS = "figures/augmentations.png"

#: the cross study's own table and Pareto figures (segbench.report.cross)
CROSS_TABLE_CSV = "tables/cross_study.csv"
CROSS_TABLE_MD = "tables/cross_study.md"
CROSS_FIGURE_MACS = "figures/pareto_macs.png"
CROSS_FIGURE_FPS = "figures/pareto_fps.png"

#: every study of a paper: its claims, each with our Δ, interval and verdict (segbench.report.claims)
CLAIMS_TABLES = ["tables/claims.csv", "tables/claims.md"]
#: every study: mIoU under corruptions, or a note that robustness was not evaluated (segbench.report.robustness)
ROBUSTNESS_TABLES = ["tables/robustness.csv", "tables/robustness.md"]


def expected_cross_outputs() -> list[str]:
    """Paths, relative to the cross study's folder, that ``cross.build_cross_report`` writes."""
    return [CROSS_TABLE_CSV, CROSS_TABLE_MD, CROSS_FIGURE_MACS, CROSS_FIGURE_FPS]


def expected_outputs(datasets: Sequence[str]) -> list[str]:
    """Paths, relative to a study's folder, that ``figures.build_study_report`` writes."""
    datasets = list(dict.fromkeys(datasets))
    out = ["tables/summary.csv", "tables/summary.md", "figures/curves.png", "figures/speed_accuracy.png"]
    suffixes = [""] if len(datasets) <= 1 else [f"_{d}" for d in datasets]
    out += [f"figures/per_class_iou{s}.png" for s in suffixes]
    out += [f"figures/qualitative{s}.png" for s in suffixes]
    return out


def study_outputs(study: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Paths, relative to ``results/studies/<study>/``, that ``segbench report`` writes for
    the study ``study`` (``Plan.study_spec``) over ``runs`` (``Plan.report_run`` dicts)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    out = list(expected_outputs(datasets))
    if study.get("paper"):
        from segbench.report.paper import expected_paper_outputs

        out += [p for p in expected_paper_outputs(study, runs) if p not in out]
        out += CLAIMS_TABLES
    out += ROBUSTNESS_TABLES
    if study.get("paper") == "unet_segnet":
        out.append(AUGMENTATIONS)
    if study.get("cross"):
        out += [p for p in expected_cross_outputs() if p not in out]
    # each markdown table also as HTML (report.html.write_html_tables)
    out += [p[:-3] + ".html" for p in out if p.endswith(".md")]
    return out


def study_output_kind(rel: str) -> str | None:
    """The caption (workflow/report/<kind>.rst) of a report file, or None for a file left
    out of the Snakemake report: its viewer shows HTML and images, so each table is there as
    HTML (the CSV and markdown beside it hold the same numbers)."""
    name = os.path.basename(rel)
    stem, ext = os.path.splitext(name)
    if ext not in (".html", ".png"):
        return None
    if stem == "paper_tables":
        return None  # the same tables as paper_<table>.html
    if stem.startswith("paper_"):
        return "paper_table"
    for kind in ("summary", "claims", "robustness", "cross_study", "curves", "speed_accuracy", "per_class_iou", "qualitative",
                 "pareto_macs", "pareto_fps", "augmentations"):
        if stem == kind or stem.startswith(kind + "_"):
            return kind
    return "other"
