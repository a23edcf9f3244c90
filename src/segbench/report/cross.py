"""The cross-study report: every method (model, loss) of the studies on the same data under
the same protocol, which none of the four papers offers.

Input: the cross study's runs, as dicts in the format ``tables.collect_runs`` reads
(``run_key, dataset, model, loss, seed, run_dir, profile``; extra keys are tolerated and
``studies``, the studies a run belongs to, is used). Written under ``out_dir``:

* ``tables/cross_study.csv`` — raw numbers, one row per (dataset, model, loss): seeds,
  ``{mIoU,aAcc,mAcc,mDice}_{mean,std}`` (fractions, sample std over seeds, NaN for one seed),
  params, MACs (counts), fps, MB, studies (``;``-separated), and the booleans
  ``pareto_macs`` / ``pareto_fps``: on the Pareto front of (max mIoU, min MACs) and of
  (max mIoU, max fps) within its dataset. Rows are in dataset order (first appearance),
  then by mIoU descending.
* ``tables/cross_study.md`` — the readable version (metrics in %, mean ± std).
* ``figures/pareto_macs.png`` / ``figures/pareto_fps.png`` — mIoU against MACs and
  against fps (log x), one panel per dataset, the front as a step line.

Pareto front: a point is on it iff no other point is at least as good in both objectives
and strictly better in one; equal points therefore both stay on it. A point with a NaN
objective is neither on the front nor dominates anything.

Nothing here imports torch or mlflow; matplotlib goes through a bare Agg canvas.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from segbench.io import write_text
# the cross study's file names live in outputs.py, which the Snakefile imports without matplotlib
from segbench.report.outputs import (
    CROSS_FIGURE_FPS as FIGURE_FPS,
    CROSS_FIGURE_MACS as FIGURE_MACS,
    CROSS_TABLE_CSV as TABLE_CSV,
    CROSS_TABLE_MD as TABLE_MD,
    expected_cross_outputs,
)
from segbench.report.figures import _RC, _colours, _device_note, _figure, _place_labels, _save
from segbench.report.tables import (
    _context_line,
    _fmt_costs,
    _markdown,
    _pct_pm,
    collect_runs,
)

#: the pseudo-study of the cross study (``segbench.config.CROSS_STUDY``); not listed as a
#: study a method "comes from"
CROSS_STUDY = "cross_study"
#: metrics of the cross-study table (fractions in [0, 1])
CROSS_METRICS = ("mIoU", "aAcc", "mAcc", "mDice")
#: columns of cross_study.csv, in order
CROSS_COLUMNS = (
    "dataset", "model", "loss", "seeds",
    *(f"{m}_{s}" for m in CROSS_METRICS for s in ("mean", "std")),
    "params", "MACs", "fps", "MB", "studies", "pareto_macs", "pareto_fps",
)
_EMPTY = ("the cross study has no runs: set `cross_study.datasets` in the config (the datasets every "
          "method is compared on) or leave the cross study out")
#: keys of the training protocol shown in the table's header, with how to write them
_PROTOCOL = (
    ("epochs", lambda v: f"{v} epochs"),
    ("batch_size", lambda v: f"batch {v}"),
    ("crop", lambda v: "crop " + "x".join(str(x) for x in v) if isinstance(v, (list, tuple)) else f"crop {v}"),
    ("scale", lambda v: "scale " + "-".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else f"scale {v}"),
    ("optimizer", lambda v: str(v)),
    ("lr", lambda v: f"lr {v:g}" if isinstance(v, (int, float)) else f"lr {v}"),
)


# --------------------------------------------------------------------------- Pareto


def pareto_mask(x: Sequence[float], y: Sequence[float], maximize_x: bool = True,
                maximize_y: bool = True) -> np.ndarray:
    """Boolean mask of the points on the Pareto front of two objectives.

    A point is on the front iff no other point is at least as good in both objectives and
    strictly better in one (equal points both stay on it). NaN points are off the front and
    dominate nothing. O(n log n): sweep the points from best to worst x, keeping the best y
    of the strictly better x values seen so far.
    """
    a = np.asarray(x, dtype=float) * (1.0 if maximize_x else -1.0)
    b = np.asarray(y, dtype=float) * (1.0 if maximize_y else -1.0)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pareto_mask: x and y must be 1-d of one length (got {a.shape} and {b.shape})")
    mask = np.zeros(a.shape, dtype=bool)
    ok = np.flatnonzero(np.isfinite(a) & np.isfinite(b))
    order = ok[np.lexsort((-b[ok], -a[ok]))]  # a descending, then b descending
    best_b = -np.inf  # best b among points of strictly larger a
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and a[order[j]] == a[order[i]]:
            j += 1
        group = order[i:j]
        top = b[group[0]]  # the group's largest b
        if top > best_b:
            mask[group[b[group] == top]] = True
        best_b = max(best_b, top)
        i = j
    return mask


# --------------------------------------------------------------------------- table


def _studies_of(run: Any) -> list[str]:
    studies = run.get("studies") if isinstance(run, Mapping) else None
    if isinstance(studies, str):
        studies = [studies]
    return [str(s) for s in (studies or []) if str(s) != CROSS_STUDY]


def collect_cross_runs(runs: Iterable[Any], datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """``tables.collect_runs`` plus a ``studies`` column (the run's studies but the cross
    study itself), restricted to ``datasets`` when given. Raises the FileNotFoundError of
    ``collect_runs`` for a missing file, ValueError for no runs."""
    runs = list(runs)
    if not runs:
        raise ValueError(_EMPTY)
    df = collect_runs(runs)
    df["studies"] = [_studies_of(r) for r in runs]
    if datasets is not None:
        datasets = list(dict.fromkeys(datasets))
        lacking = [d for d in datasets if d not in set(df["dataset"])]
        if lacking:
            raise ValueError(f"the cross study has no runs on dataset(s) {', '.join(lacking)} of "
                             f"`cross_study.datasets` (runs given on: {', '.join(dict.fromkeys(df['dataset']))})")
        df = df[df["dataset"].isin(datasets)].copy()
        df["dataset"] = pd.Categorical(df["dataset"], categories=datasets, ordered=True)
        df = df.sort_values("dataset", kind="stable")
        df["dataset"] = df["dataset"].astype(str)
        df = df.reset_index(drop=True)
    return df


def cross_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, loss) of a ``collect_cross_runs`` frame: columns
    ``CROSS_COLUMNS``; mean and sample std (n - 1) over seeds, costs of the first seed,
    Pareto flags within each dataset; datasets in order of appearance, then mIoU descending
    (ties: fewer MACs first)."""
    if df.empty:
        raise ValueError(_EMPTY)
    if "studies" not in df.columns:
        df = df.assign(studies=[[] for _ in range(len(df))])
    g = df.groupby(["dataset", "model", "loss"], sort=False)
    out = g.agg(
        seeds=("seed", "size"),
        **{f"{m}_{s}": (m, s) for m in CROSS_METRICS for s in ("mean", "std")},
        params=("params", "first"), MACs=("MACs", "first"), fps=("fps", "first"), MB=("MB", "first"),
        studies=("studies", lambda s: ";".join(dict.fromkeys(x for lst in s for x in lst))),
    ).reset_index()
    out["pareto_macs"] = False
    out["pareto_fps"] = False
    for _, idx in out.groupby("dataset", sort=False).groups.items():
        sub = out.loc[idx]
        out.loc[idx, "pareto_macs"] = pareto_mask(sub["MACs"], sub["mIoU_mean"], maximize_x=False)
        out.loc[idx, "pareto_fps"] = pareto_mask(sub["fps"], sub["mIoU_mean"], maximize_x=True)
    rank = {d: i for i, d in enumerate(dict.fromkeys(out["dataset"]))}
    out = out.assign(_ds=out["dataset"].map(rank), _miou=-out["mIoU_mean"].fillna(-np.inf))
    out = out.sort_values(["_ds", "_miou", "MACs", "model", "loss"], kind="stable", na_position="last")
    out = out.drop(columns=["_ds", "_miou"]).reset_index(drop=True)
    out["pareto_macs"] = out["pareto_macs"].astype(bool)
    out["pareto_fps"] = out["pareto_fps"].astype(bool)
    out["seeds"] = out["seeds"].astype(int)
    return out.loc[:, list(CROSS_COLUMNS)]


def _protocol(df: pd.DataFrame) -> str:
    """The sentence on the training protocol: shared by every run (the point of the cross
    study), and which it is when run.json says; a warning when the runs' protocols differ."""
    base = ("All methods were trained with the same protocol on the same data and evaluated the same "
            "way, a comparison none of the papers offers (each reports its own methods under its own "
            "protocol)")
    protos = []
    for t in df.get("train", pd.Series([{}] * len(df))):
        t = t if isinstance(t, Mapping) else {}
        protos.append(tuple((k, str(t[k])) for k, _ in _PROTOCOL if k in t))
    distinct = list(dict.fromkeys(protos))
    if len(distinct) > 1:
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in p) or "unknown" for p in distinct)
        return (f"**Warning:** the runs' training protocols differ ({shown}); the comparison below "
                "is not under one protocol. Re-run the cross study with one `train` config.")
    t = next((x for x in df.get("train", []) if isinstance(x, Mapping)), {})
    parts = [fmt(t[k]) for k, fmt in _PROTOCOL if k in t]
    return base + (f": {', '.join(parts)}." if parts else ".")


def _yes(v: Any) -> str:
    return "yes" if bool(v) else ""


def format_cross(table: pd.DataFrame) -> pd.DataFrame:
    """The cross-study table as strings: metrics in % (mean ± std), params M, MACs G."""
    rows = []
    for _, r in table.iterrows():
        row = {k: str(r[k]) for k in ("dataset", "model", "loss")}
        row["studies"] = ", ".join(s for s in str(r["studies"]).split(";") if s) or "–"
        row["seeds"] = str(int(r["seeds"]))
        row.update({f"{m} (%)": _pct_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in CROSS_METRICS})
        row.update(_fmt_costs(r))
        row["Pareto MACs"] = _yes(r["pareto_macs"])
        row["Pareto fps"] = _yes(r["pareto_fps"])
        rows.append(row)
    return pd.DataFrame(rows)


def cross_markdown(table: pd.DataFrame, df: pd.DataFrame, title: str | None = None) -> str:
    """cross_study.md: a first line with the data, input sizes and the speed device; the
    protocol sentence; the table."""
    first = _context_line(df)
    if title:
        first = f"**{title}** · {first}"
    n_seeds = sorted(set(int(s) for s in table["seeds"]))
    lines = [
        first,
        "",
        _protocol(df),
        "",
        "One row per method (model / loss) and dataset, best mIoU first. Metrics in % (2 decimals; "
        "`cross_study.csv` holds them as fractions in [0, 1]) as mean ± sample standard deviation "
        "(n - 1) over the seeds (`seeds` column; a single value for one seed). params in millions "
        "(M), MACs in 10^9 multiply-accumulates (G) per image, fps at batch 1, MB = fp32 weights in "
        "10^6 bytes. `studies`: the studies the method's runs belong to.",
        "",
        "**Pareto MACs** / **Pareto fps**: on the Pareto front of its dataset — no other method has "
        "a mIoU at least as high at no more MACs (at no lower fps) and is strictly better in one of "
        "the two (figures `pareto_macs.png`, `pareto_fps.png`).",
        "",
        _markdown(format_cross(table), 4),
        "",
    ]
    if n_seeds and n_seeds[0] < 2 and n_seeds[-1] >= 2:
        lines += ["Methods with one seed show no ± (their std is undefined).", ""]
    return "\n".join(lines)


def write_cross_tables(table: pd.DataFrame, df: pd.DataFrame, out_dir: str | os.PathLike,
                       title: str | None = None) -> list[Path]:
    """Write ``tables/cross_study.csv`` and ``tables/cross_study.md`` under ``out_dir``."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / TABLE_CSV, out_dir / TABLE_MD
    write_text(csv_path, table.to_csv(index=False, lineterminator="\n"))
    write_text(md_path, cross_markdown(table, df, title))
    return [csv_path, md_path]


# --------------------------------------------------------------------------- figures

_AXES = {
    "MACs": dict(flag="pareto_macs", scale=1e9, maximize=False, step="post",
                 xlabel="MACs per image (G, log scale)", better="fewer MACs"),
    "fps": dict(flag="pareto_fps", scale=1.0, maximize=True, step="pre",
                xlabel="throughput (fps, batch 1, log scale)", better="higher fps"),
}


def _eval_note(df: pd.DataFrame) -> str:
    parts = []
    for ds, g in df.groupby("dataset", sort=False):
        sizes = sorted({s for s in g["eval_size"] if s}) if "eval_size" in g else []
        parts.append(f"{ds} at {', '.join(sizes)}" if sizes else str(ds))
    return "; ".join(parts)


def pareto_figure(table: pd.DataFrame, df: pd.DataFrame, path: str | os.PathLike, x: str = "MACs",
                  title: str | None = None) -> Path:
    """mIoU (%) against MACs (``x="MACs"``) or fps (``x="fps"``), log x, one panel per dataset.

    One point per method (mean over seeds, ±1 std error bar and the seeds as faint dots when
    there are several); colour = model, marker = loss; the Pareto front (``table``'s flag)
    as a step line over a lightly shaded dominated region; points labelled ``model / loss``.
    """
    if x not in _AXES:
        raise ValueError(f"pareto_figure: x must be one of {sorted(_AXES)}, not {x!r}")
    spec = _AXES[x]
    datasets = list(dict.fromkeys(table["dataset"]))
    models = list(dict.fromkeys(table["model"]))
    losses = list(dict.fromkeys(table["loss"]))
    colour_of = dict(zip(models, _colours(len(models))))
    markers = "os^Dvp*hX<>"
    marker_of = {l: markers[i % len(markers)] for i, l in enumerate(losses)}
    several = bool((table["seeds"] > 1).any())
    n = len(datasets)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    with matplotlib.rc_context(_RC):
        fig = _figure(6.6 * ncols + 0.4, 4.9 * nrows + 0.9)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax in axes[n:]:
            ax.set_visible(False)
        to_label = []
        for ax, ds in zip(axes, datasets):
            pts = table[table["dataset"] == ds]
            seeds = df[df["dataset"] == ds]
            labels = []
            for _, p in pts.iterrows():
                xv, yv = p[x] / spec["scale"], 100 * p["mIoU_mean"]
                if not (np.isfinite(xv) and np.isfinite(yv) and xv > 0):
                    continue
                c = colour_of[p["model"]]
                front = bool(p[spec["flag"]])
                if p["seeds"] > 1:
                    ys = seeds[(seeds["model"] == p["model"]) & (seeds["loss"] == p["loss"])]["mIoU"]
                    # beside the error bar (a few % to the right on the log axis), not on it
                    ax.scatter(np.full(len(ys), xv * 1.06), 100 * ys.to_numpy(dtype=float), s=12, color=c,
                               alpha=0.45, linewidths=0, zorder=2)
                yerr = 100 * p["mIoU_std"] if p["seeds"] > 1 and np.isfinite(p["mIoU_std"]) else None
                ax.errorbar(xv, yv, yerr=yerr, fmt=marker_of[p["loss"]], color=c,
                            markersize=8 if front else 6.5, capsize=3, elinewidth=1,
                            alpha=1.0 if front else 0.55, zorder=4 if front else 3,
                            markeredgecolor="black" if front else "white",
                            markeredgewidth=0.9 if front else 0.6)
                labels.append((xv, yv, f"{p['model']} / {p['loss']}", c))
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.margins(x=0.12, y=0.12)
            # the front, as a step line bounding the dominated region, to the axis edge
            fr = pts[pts[spec["flag"]].astype(bool)]
            fx = (fr[x] / spec["scale"]).to_numpy(dtype=float)
            fy = (100 * fr["mIoU_mean"]).to_numpy(dtype=float)
            keep = np.isfinite(fx) & np.isfinite(fy) & (fx > 0)
            fx, fy = fx[keep], fy[keep]
            if len(fx):
                o = np.lexsort((fy, fx))
                fx, fy = fx[o], fy[o]
                x0, x1 = ax.get_xlim()
                y0, _ = ax.get_ylim()
                if spec["maximize"]:  # fps: better to the right; the front falls left to right
                    sx, sy = np.r_[x0, fx], np.r_[fy[0], fy]
                else:  # MACs: better to the left; the front rises left to right
                    sx, sy = np.r_[fx, x1], np.r_[fy, fy[-1]]
                ax.step(sx, sy, where=spec["step"], color="0.25", linewidth=1.3, linestyle="--", zorder=1)
                ax.fill_between(sx, sy, y0, step=spec["step"], color="0.5", alpha=0.08, linewidth=0, zorder=0)
                ax.set_xlim(x0, x1)
                ax.set_ylim(bottom=y0)
            ax.set_xlabel(spec["xlabel"])
            ax.set_ylabel("mIoU (%)" + (" — mean ± std over seeds" if several else ""))
            ax.grid(True, alpha=0.3, which="major")
            if n > 1:
                ax.set_title(ds)
            to_label.append((ax, labels))
        handles = [
            Line2D([], [], color="0.25", linestyle="--", label=f"Pareto front (higher mIoU, {spec['better']})"),
            Line2D([], [], color="0.4", marker="o", linestyle="", markeredgecolor="black",
                   label="on the front"),
            Line2D([], [], color="0.4", marker="o", linestyle="", markeredgecolor="white", alpha=0.55,
                   label="dominated"),
        ]
        if several:
            handles.append(Line2D([], [], color="0.4", marker="o", linestyle="", markersize=3, alpha=0.4,
                                  label="single seeds"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
        note = _device_note(df)
        caption = "colour: model, marker: loss. "
        caption += f"fps measured on {note}. " if note else ""
        caption += f"mIoU on the val split of {_eval_note(df)} (HxW)."
        head = title or ("Cross study: accuracy vs " + ("MACs" if x == "MACs" else "throughput"))
        width_chars = max(40, int(fig.get_figwidth() * 72 / 5.2))  # about 5.2 pt a character at 9.5 pt
        fig.suptitle(textwrap.fill(head, width_chars) + "\n" + textwrap.fill(caption, width_chars),
                     fontsize=9.5)
        for ax, labels in to_label:
            _place_labels(fig, ax, labels)
        return _save(fig, path)


# --------------------------------------------------------------------------- report


def build_cross_report(runs: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike,
                       title: str | None = None, datasets: Sequence[str] | None = None) -> list[Path]:
    """Write the cross-study table and Pareto figures under ``out_dir``; return the paths
    (``expected_cross_outputs`` relative to ``out_dir``).

    ``datasets`` (default: those of the runs, in order) restricts and orders the datasets.
    Every input file is read before anything is written: a missing one raises the
    FileNotFoundError of ``collect_runs`` (naming the file, the run and the step); no runs
    raises ValueError naming ``cross_study.datasets``.
    """
    out_dir = Path(out_dir)
    df = collect_cross_runs(runs, datasets)
    table = cross_table(df)
    written = write_cross_tables(table, df, out_dir, title)
    head = title or "Cross study"
    written.append(pareto_figure(table, df, out_dir / FIGURE_MACS, x="MACs", title=f"{head}: mIoU vs MACs"))
    written.append(pareto_figure(table, df, out_dir / FIGURE_FPS, x="fps", title=f"{head}: mIoU vs throughput"))
    return written


__all__ = [
    "CROSS_COLUMNS",
    "build_cross_report",
    "collect_cross_runs",
    "cross_markdown",
    "cross_table",
    "expected_cross_outputs",
    "format_cross",
    "pareto_figure",
    "pareto_mask",
    "write_cross_tables",
]
