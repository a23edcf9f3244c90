"""A study's whole report: what ``segbench report`` (one Snakemake job per study) writes.

- every study: ``tables/summary.{csv,md}`` and the figures of ``figures.build_study_report``;
- a study of a paper: the paper's tables in its form, our figures beside the published
  ones (``paper.write_paper_tables``), and its claims table (``claims.write_claims``); for
  the U-Net vs SegNet report also its Figure 6, the augmentation examples (``augment_figure``);
- every study: the robustness table (``robustness.write_robustness``; a note when the runs
  were not evaluated on corrupted images);
- the cross study: the cross-study table and the accuracy-cost Pareto figures (``cross``).

Every file it writes is declared in advance by ``outputs.study_outputs``; a mismatch is an
error here rather than a Snakemake "missing output" later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from segbench.report.outputs import AUGMENTATIONS, study_outputs


def build_report(study: Mapping[str, Any], runs: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike,
                 augment_data: str | os.PathLike | None = None) -> list[Path]:
    """Write the report of ``study`` (``Plan.study_spec``) over ``runs`` under ``out_dir``."""
    from segbench.report.figures import build_study_report

    runs = [dict(r) for r in runs]
    out_dir = Path(out_dir)
    name = study["name"]
    written = build_study_report(name, runs, out_dir)
    if study.get("paper"):
        from segbench.report.paper import write_paper_tables

        written += write_paper_tables(dict(study), runs, out_dir)
        from segbench.report.claims import write_claims

        written += write_claims(dict(study), runs, out_dir)
    from segbench.report.robustness import write_robustness

    written += write_robustness(runs, out_dir, title=f"study {name}")
    if study.get("paper") == "unet_segnet":
        if not augment_data:
            raise ValueError(f"study {name}: the augmentation figure needs a prepared dataset "
                             "(--augment-data results/data/<dataset>)")
        from segbench.report.augment_figure import augmentation_examples, pick_example

        image, label = pick_example(augment_data, split="val")
        written.append(augmentation_examples(image, out_dir / AUGMENTATIONS, label_path=label, seed=0))
    if study.get("cross"):
        from segbench.report.cross import build_cross_report

        written += build_cross_report(runs, out_dir, title="Cross study: every method, same data, same protocol")
    from segbench.report.html import write_html_tables

    # every markdown table also as HTML: what `snakemake --report` shows in its viewer
    written += write_html_tables([p for p in written if Path(p).suffix == ".md"])
    expected = {out_dir / p for p in study_outputs(study, runs)}
    missing = sorted(str(p) for p in expected if not p.is_file())
    if missing:
        raise RuntimeError(f"study {name}: the report did not write {', '.join(missing)}, which the "
                           "workflow declares (segbench.report.outputs.study_outputs); this is a bug")
    return [Path(p) for p in dict.fromkeys(written)]
