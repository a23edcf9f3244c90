"""The run a study serves: its best by val mIoU (no torch, no Flask: the CLI checks this first)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from segbench import runfiles


def best_run_of_study(study: str, results: str | Path = "results") -> tuple[Path, list[dict]]:
    """The run directory of ``study`` with the highest val mIoU, and every candidate seen.

    The study's runs are the ``run_key`` column of ``results/studies/{study}/tables/summary.csv``;
    each run's val mIoU is read from ``results/runs/{run_key}/metrics.json``. A run without
    model.pt or metrics.json is a candidate without a score; one whose run.json or
    metrics.json is damaged, or belongs to another run, stops the lookup with a
    :class:`~segbench.runfiles.RunFileError` naming the file (:mod:`segbench.runfiles`).
    """
    results = Path(results)
    table = results / "studies" / study / "tables" / "summary.csv"
    if not table.exists():
        known = sorted(p.name for p in (results / "studies").glob("*") if p.is_dir())
        raise FileNotFoundError(f"{table} does not exist: run the study's report first (snakemake); "
                                f"studies with results: {', '.join(known) or 'none'}")
    with open(table, newline="", encoding="utf-8") as f:
        keys = [row["run_key"] for row in csv.DictReader(f) if row.get("run_key")]
    if not keys:
        raise FileNotFoundError(f"{table} lists no runs (column run_key)")
    candidates = []
    for key in dict.fromkeys(keys):
        run_dir = results / "runs" / key
        miou = None
        if (run_dir / "metrics.json").exists() and (run_dir / "model.pt").exists():
            info = runfiles.read_run(run_dir)
            if info["run_key"] != key:
                raise runfiles.damaged(run_dir / "run.json", f"says run_key {info['run_key']!r} but {table} "
                                       f"lists it as the run {key!r} (a copied or moved run directory)")
            value = runfiles.read_metrics(run_dir, info)["mIoU"]
            if value is not None and math.isfinite(value):
                miou = float(value)
        candidates.append({"run_key": key, "run_dir": str(run_dir), "mIoU": miou})
    scored = [c for c in candidates if c["mIoU"] is not None]
    if not scored:
        raise FileNotFoundError(f"no run of study {study!r} has both model.pt and a finite mIoU in metrics.json "
                                f"under {results / 'runs'}: train and evaluate them first")
    best = max(scored, key=lambda c: c["mIoU"])  # the first in the table's order on a tie
    return Path(best["run_dir"]), candidates
