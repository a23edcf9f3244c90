"""The robustness table of a study: each run's mIoU on corrupted copies of its val images.

Reads each run's ``robustness.json`` (written by the robustness job when the config sets
``eval.corruptions``): ``{"clean_mIoU", "corruptions": {name: {"1": mIoU, ...}},
"mean_corrupted_mIoU", "relative", "severities", "parameters"}`` (fractions). Writes
``<study>/tables/robustness.csv`` and ``robustness.md`` for every study (``write_robustness``):

- CSV, one row per run: ``dataset, model, loss, seed, run_key, clean_mIoU,
  mean_corrupted_mIoU, relative`` (mean corrupted / clean), then per corruption ``<name>``
  (its mean over severities) and ``<name>_s<severity>`` (fractions); a run without
  robustness.json has NaN there;
- markdown: the same in % (per corruption the mean over severities), or, when no run has
  robustness.json, a line saying robustness was not evaluated and how to switch it on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from segbench import runfiles
from segbench.io import write_text

if TYPE_CHECKING:
    import pandas as pd

ROBUSTNESS_CSV = "tables/robustness.csv"
ROBUSTNESS_MD = "tables/robustness.md"
ROBUSTNESS_JSON = "robustness.json"
KEYS = ("dataset", "model", "loss", "seed", "run_key")
NOT_EVALUATED = ("Robustness was not evaluated for these runs: set `eval.corruptions` in the config "
                 "(docs/configuration.md) and run `snakemake` again; the robustness job then evaluates each "
                 "final model on corrupted copies of its val images.")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_robustness(run_dir: str | os.PathLike) -> dict | None:
    """A run's robustness.json, checked; None when the run has none (robustness not evaluated).
    A file that is damaged or lacks a key is a RunFileError naming the file and the remedy."""
    path = Path(run_dir) / ROBUSTNESS_JSON
    if not path.exists():
        return None
    r = runfiles.read_json_object(path, "robustness")
    for key in ("clean_mIoU", "corruptions", "mean_corrupted_mIoU", "relative"):
        if key not in r:
            raise runfiles.damaged(path, f"has no key {key!r}", "robustness")
    if not isinstance(r["corruptions"], Mapping) or not r["corruptions"]:
        raise runfiles.damaged(path, "says corruptions is not {name: {severity: mIoU}}", "robustness")
    for name, by_severity in r["corruptions"].items():
        if not isinstance(by_severity, Mapping) or not all(v is None or _number(v) for v in by_severity.values()):
            raise runfiles.damaged(path, f"says corruptions.{name}={by_severity!r}, not {{severity: mIoU}}",
                                   "robustness")
    for key in ("clean_mIoU", "mean_corrupted_mIoU", "relative"):
        if not (r[key] is None or _number(r[key])):
            raise runfiles.damaged(path, f"says {key}={r[key]!r}, not a number", "robustness")
    return r


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def build_robustness(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``df`` (``collect_runs``): the CSV columns of the module docstring."""
    import numpy as np
    import pandas as pd

    recs = []
    for _, run in df.iterrows():
        rec = {k: run[k] for k in KEYS}
        r = read_robustness(run["run_dir"])
        rec.update(clean_mIoU=math.nan, mean_corrupted_mIoU=math.nan, relative=math.nan)
        if r is not None:
            rec.update(clean_mIoU=_f(r["clean_mIoU"]), mean_corrupted_mIoU=_f(r["mean_corrupted_mIoU"]),
                       relative=_f(r["relative"]))
            for name, by_severity in r["corruptions"].items():
                values = [_f(by_severity[s]) for s in sorted(by_severity, key=int)]
                rec[name] = float(np.nanmean(values)) if any(not math.isnan(v) for v in values) else math.nan
                for s in sorted(by_severity, key=int):
                    rec[f"{name}_s{s}"] = _f(by_severity[s])
        recs.append(rec)
    return pd.DataFrame(recs)


def corruption_names(raw: pd.DataFrame) -> list[str]:
    """The corruptions of the table, in the order of the first run that has them."""
    fixed = {*KEYS, "clean_mIoU", "mean_corrupted_mIoU", "relative"}
    return [c for c in raw.columns if c not in fixed and not _is_severity_column(c, raw.columns)]


def _is_severity_column(col: str, columns) -> bool:
    """Whether ``col`` is ``<corruption>_s<severity>`` of a corruption column in ``columns``."""
    stem, _, sev = col.rpartition("_s")
    return bool(stem) and sev.isdigit() and stem in columns


def robustness_markdown(raw: pd.DataFrame, title: str | None = None) -> str:
    from segbench.report.tables import _markdown

    lines = [f"# Robustness{f' — {title}' if title else ''}", ""]
    if raw["mean_corrupted_mIoU"].isna().all():
        return "\n".join(lines + [NOT_EVALUATED, ""])
    names = corruption_names(raw)
    rows = []
    pct = lambda v: "—" if v is None or math.isnan(v) else f"{100 * v:.2f}"  # noqa: E731
    for _, r in raw.iterrows():
        row = {"dataset": str(r["dataset"]), "model": str(r["model"]), "loss": str(r["loss"]), "seed": str(r["seed"])}
        row.update({f"{n} (%)": pct(r.get(n, math.nan)) for n in names})
        row["mean corrupted (%)"] = pct(r["mean_corrupted_mIoU"])
        row["clean (%)"] = pct(r["clean_mIoU"])
        row["corrupted / clean"] = "—" if math.isnan(r["relative"]) else f"{r['relative']:.3f}"
        rows.append(row)
    import pandas as pd

    lines += ["mIoU on corrupted copies of the val images, in %: each corruption's column is the mean over its "
              "severities (robustness.csv has each severity); mean corrupted = the mean over corruptions and "
              "severities; corrupted / clean = mean corrupted mIoU / clean mIoU.", "",
              _markdown(pd.DataFrame(rows), 4), ""]
    lacking = [r["run_key"] for _, r in raw.iterrows() if math.isnan(r["mean_corrupted_mIoU"])]
    if lacking:
        lines += [f"- “—”: no robustness.json for {', '.join(lacking)}. {NOT_EVALUATED}", ""]
    return "\n".join(lines)


def write_robustness(runs: list[dict], out_dir: str | os.PathLike, title: str | None = None) -> list[Path]:
    """Write ``tables/robustness.csv`` and ``tables/robustness.md`` under ``out_dir``."""
    from segbench.report.tables import collect_runs

    raw = build_robustness(collect_runs(runs))
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / ROBUSTNESS_CSV, out_dir / ROBUSTNESS_MD
    write_text(csv_path, raw.round(9).to_csv(index=False, lineterminator="\n"))
    write_text(md_path, robustness_markdown(raw, title))
    return [csv_path, md_path]


__all__ = ["ROBUSTNESS_CSV", "ROBUSTNESS_MD", "build_robustness", "read_robustness", "write_robustness"]
