"""Per-study figures: training curves, speed vs accuracy, per-class IoU, qualitative grid.

Every figure is drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot, no
global backend switch) and written atomically as a PNG. Nothing here imports torch or
mlflow. ``build_study_report`` writes a study's tables and figures in one call.

Accuracy against cost (here and in the cross study's Pareto figures) draws each method's
95% mIoU interval as a vertical bar and the spread of fps over the profile's timing repeats
as a horizontal one, on axes that are not zoomed onto noise: log cost axes spanning at
least a factor :data:`MIN_COST_RATIO`, mIoU axes at least :data:`MIN_MIOU_SPAN` points.
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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from segbench import runfiles
from segbench.io import atomic_path
from segbench.report.outputs import expected_outputs  # noqa: F401 (re-exported)
from segbench.report.tables import (
    RunLike,
    as_run,
    collect_runs,
    read_history,
    read_metrics,
    read_run_json,
    run_label,
    write_tables,
)

DPI = 120
IGNORE_INDEX = 255
_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return path


def _colours(n: int) -> list:
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(x) for x in np.linspace(0.05, 0.95, n)]


def _runs(runs: Iterable[RunLike]) -> list[dict]:
    out = [as_run(r) for r in runs]
    if not out:
        raise ValueError("no runs to plot")
    return out


def _multi_dataset(runs: Sequence[Mapping[str, Any]]) -> bool:
    return len({r["dataset"] for r in runs}) > 1


# --------------------------------------------------------------------------- curves

#: how the curves name a loss type (``losses.<name>.type``); another type shows as itself
LOSS_NAMES = {"ce": "CE", "dice": "Dice", "focal": "focal", "bal": "BAL", "ce_contrastive": "CE + contrastive"}
#: what validation measures of a loss whose training adds a term on the model's training-only
#: embeddings (``needs_embeddings`` in segbench.catalog): validation has no embeddings, so the
#: loss is called without them and that term is left out
VAL_LOSS_NAMES = {"ce_contrastive": "CE only"}
#: the columns of the curves figure: (kind, history column(s), scale, y label)
_COLUMNS = (
    ("train loss", ("train_loss",), 1.0, "train loss"),
    ("val loss", ("val_loss",), 1.0, "val loss"),
    ("mIoU", ("train_mIoU", "val_mIoU"), 100.0, "mIoU (%)"),
    ("pixel accuracy", ("train_aAcc", "val_aAcc"), 100.0, "pixel accuracy (%)"),
)
_STYLE = {"train": "--", "val": "-"}


def _loss_type(run: Mapping[str, Any]) -> str:
    """The run's loss type: its ``loss_spec`` (as given, else run.json's config), else the
    loss name."""
    spec = run.get("loss_spec")
    if not isinstance(spec, Mapping):
        spec = (read_run_json(run).get("config") or {}).get("loss")
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    return str(kind or run["loss"])


def loss_functions(loss: str, kind: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """((id, name) of what the train loss measures, (id, name) of what the val loss measures)
    for loss ``loss`` (its config name) of type ``kind``. Equal ids: the same function, so
    train and val panels of the loss share their y-axis; a loss with a training-only term
    (FRM's CE + contrastive) gets two, named apart."""
    from segbench.catalog import LOSSES

    name = LOSS_NAMES.get(kind, kind.rpartition(":")[2])  # a loss of the user's: mypkg.losses:my_loss
    entry = LOSSES.get(kind)
    if entry is not None and entry.needs_embeddings:
        val = VAL_LOSS_NAMES.get(kind, f"{name} without its embedding term")
        return (f"{loss}:train", name), (f"{loss}:val", val)
    return (loss, name), (loss, name)


def _limits(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, list[int]]:
    """y-limits of an axis shared by ``series`` ((epochs, values) each) that the first epoch
    does not squash: the range of the epochs after each series' first, widened to take in a
    first value at most that range's width away from it (so the axis at most triples); a
    first value further out is left outside. Returns (low, high, indices of the series whose
    first value is outside)."""
    later = [v[1:] for _, v in series if len(v) > 1]
    later = np.concatenate(later) if later else np.concatenate([v for _, v in series])
    lo, hi = float(np.min(later)), float(np.max(later))
    span = hi - lo if hi > lo else max(abs(hi) * 0.1, 1e-3)
    outside = []
    low, high = lo, hi
    for i, (_, v) in enumerate(series):
        if len(v) > 1 and not lo - span <= v[0] <= hi + span:
            outside.append(i)
        else:
            low, high = min(low, float(v[0])), max(high, float(v[0]))
    lo, hi = low, high
    outside = [i for i in outside if not lo <= series[i][1][0] <= hi]  # inside once others widened it
    pad = 0.08 * (hi - lo if hi > lo else span)
    return lo - pad, hi + pad, outside


def _curve_rows(runs: Sequence[dict], multi: bool) -> list[dict]:
    """One row per (dataset, model, loss), in the order first given, with its seeds' runs
    and histories and what its train and val losses measure."""
    rows: dict[tuple, dict] = {}
    for run in runs:
        key = (run["dataset"], run["model"], run["loss"])
        if key not in rows:
            (train_id, train_name), (val_id, val_name) = loss_functions(run["loss"], _loss_type(run))
            head = f"{run['model']} / {run['loss']}"
            rows[key] = dict(label=f"{run['dataset']}: {head}" if multi else head, loss=run["loss"],
                             seeds=[], hists=[], train_id=train_id, train_name=train_name,
                             val_id=val_id, val_name=val_name)
        rows[key]["seeds"].append(str(run["seed"]))
        rows[key]["hists"].append(read_history(run))
    return list(rows.values())


def curves_figure(runs: Iterable[RunLike], title: str | None = None) -> Figure:
    """The training curves as small multiples: one row per (dataset, model, loss) (its seeds
    as lines of one colour), four columns: train loss, val loss, mIoU and pixel accuracy per
    epoch (train dashed, val solid). The colour is the loss trained with, the same in every
    panel. Each loss panel's y-label names what it measures (FRM's train loss includes the
    contrastive term, its val loss does not); loss panels of one function share their
    y-limits, as do all mIoU and all accuracy panels. y-limits come from the epochs after the
    first: an epoch-1 value far outside them is drawn as a triangle at the edge with its value.
    """
    runs = _runs(runs)
    rows = _curve_rows(runs, _multi_dataset(runs))
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    colour_of = dict(zip(losses, _colours(len(losses))))
    max_epochs = max(len(h) for r in rows for h in r["hists"])
    marker = "o" if max_epochs <= 30 else None
    n = len(rows)
    row_h = 1.45 if n <= 12 else 1.2
    split = any(r["train_id"] != r["val_id"] for r in rows)
    with matplotlib.rc_context(_RC):
        fig = _figure(12.0, row_h * n + 1.3 + (0.2 if split else 0))
        axes = fig.subplots(n, len(_COLUMNS), sharex=True, squeeze=False)
        groups: dict[str, list] = {}  # y-limit group -> [(ax, colour, epochs, values)]
        for i, row in enumerate(rows):
            colour = colour_of[row["loss"]]
            for j, (kind, cols, scale, ylabel) in enumerate(_COLUMNS):
                ax = axes[i, j]
                if kind == "train loss":
                    group, fn, ylabel = row["train_id"], row["train_name"], f"train loss\n{row['train_name']}"
                elif kind == "val loss":
                    group, fn, ylabel = row["val_id"], row["val_name"], f"val loss\n{row['val_name']}"
                else:
                    group, fn = kind, None
                for col in cols:
                    split_name = col.split("_")[0]
                    for hist in row["hists"]:
                        e, v = hist["epoch"].to_numpy(dtype=float), hist[col].to_numpy(dtype=float) * scale
                        keep = np.isfinite(v)  # epochs not validated are NaN; a diverged loss inf
                        e, v = e[keep], v[keep]
                        if not len(v):
                            continue
                        line, = ax.plot(e, v, linestyle=_STYLE[split_name], color=colour, marker=marker,
                                        markersize=2.5, linewidth=1.3, alpha=0.8 if split_name == "train" else 1.0,
                                        label=f"{split_name} {fn or kind}")
                        line.set_gid(group if fn else None)  # the loss function a loss line measures
                        groups.setdefault(group, []).append((ax, colour, e, v))
                ax.set_ylabel(ylabel)
                ax.grid(True, alpha=0.3)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if i == n - 1:
                    ax.set_xlabel("epoch")
            seeds = ", ".join(f"s{s}" for s in row["seeds"])
            axes[i, 0].annotate(f"{row['label']}  ({seeds})", (0, 1), xycoords="axes fraction",
                                xytext=(0, 4), textcoords="offset points", ha="left", va="bottom",
                                fontsize=8.5, fontweight="bold", annotation_clip=False)
        marked = False
        for members in groups.values():
            lo, hi, outside = _limits([(e, v) for _, _, e, v in members])
            marked = marked or bool(outside)
            for ax in dict.fromkeys(ax for ax, *_ in members):
                ax.set_ylim(lo, hi)
            for k in outside:
                ax, colour, e, v = members[k]
                above = v[0] > hi
                y = hi if above else lo
                ax.plot([e[0]], [y], marker="^" if above else "v", color=colour, markersize=6,
                        linestyle="", clip_on=False, zorder=5, gid="first-epoch-outside")
                ax.annotate(f"{v[0]:.3g}", (e[0], y), xytext=(5, -3 if above else 3), textcoords="offset points",
                            ha="left", va="top" if above else "bottom", fontsize=7, color=colour)
        handles = [Line2D([], [], color=colour_of[l], linewidth=2.5, label=f"loss {l}") for l in losses]
        handles += [Line2D([], [], color="0.3", linestyle="--", label="train"),
                    Line2D([], [], color="0.3", linestyle="-", label="val")]
        if marked:
            handles.append(Line2D([], [], color="0.3", marker="^", linestyle="",
                                  label="epoch 1 beyond the axis (value shown)"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
        note = "one row per model / loss (its seeds as lines); y-limits from the epochs after the first"
        if split:
            note += ("; CE + contrastive: the contrastive term needs the training-only embedding head, "
                     "so the val loss is CE alone")
        fig.suptitle((title + "\n" if title else "") + textwrap.fill(note, 150), fontsize=9)
        return fig


def training_curves(runs: Iterable[RunLike], path: str | os.PathLike, title: str | None = None) -> Path:
    """:func:`curves_figure` of ``runs``, written to ``path`` (PNG)."""
    fig = curves_figure(runs, title)
    with matplotlib.rc_context(_RC):
        return _save(fig, path)


# --------------------------------------------------------------------------- speed / accuracy


_LABEL_BOX = dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.75)


def _place_labels(fig: Figure, ax, points: list[tuple[float, float, str, Any]]) -> None:
    """Annotate points with labels that neither overlap each other nor leave the axes.

    Greedy: labels start up-right of their point (left of it near the right edge), then,
    lowest first, each is pushed up past any label already placed that it overlaps; a
    moved label gets a thin leader line to its point.
    """
    if not points:
        return
    fig.draw_without_rendering()  # settle the layout so display coordinates are final
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    ax_box = ax.get_window_extent(renderer)
    anns, offsets = [], []
    for x, y, text, colour in points:
        ann = ax.annotate(text, (x, y), xytext=(5, 4), textcoords="offset points",
                          fontsize=8, color=colour, ha="left", va="bottom", bbox=_LABEL_BOX, zorder=5)
        offset = (5, 4)
        if ann.get_window_extent(renderer).x1 > ax_box.x1:
            offset = (-5, 4)
            ann.xyann = offset
            ann.set_horizontalalignment("right")
        anns.append(ann)
        offsets.append(offset)
    boxes = [a.get_window_extent(renderer) for a in anns]
    order = sorted(range(len(anns)), key=lambda i: (boxes[i].y0, boxes[i].x0))
    placed: list = []
    for i in order:
        b = boxes[i]
        dy, moved = 0.0, True
        while moved:
            moved = False
            for p in placed:
                if b.x0 < p.x1 and b.x1 > p.x0 and b.y0 + dy < p.y1 and b.y1 + dy > p.y0:
                    dy = p.y1 - b.y0 + 1.0
                    moved = True
        placed.append(b.translated(0, dy))
        if dy > 0:
            ann = anns[i]
            props = dict(text=ann.get_text(), xy=ann.xy, textcoords="offset points",
                         xytext=(offsets[i][0], offsets[i][1] + dy / px_per_pt),
                         fontsize=8, color=ann.get_color(), va="bottom",
                         ha=ann.get_horizontalalignment(), bbox=_LABEL_BOX, zorder=5)
            ann.remove()
            ax.annotate(**props, arrowprops=dict(arrowstyle="-", color="0.6", lw=0.6,
                                                 shrinkA=0, shrinkB=4))
    # make room at the top for labels pushed upwards
    top = max(b.y1 for b in placed)
    if top > ax_box.y1 - 2:
        lo, hi = ax.get_ylim()
        extra = (top - ax_box.y1 + 6) / max(ax_box.height, 1.0)
        ax.set_ylim(lo, hi + (hi - lo) * extra)


def _device_note(df: pd.DataFrame) -> str:
    notes = []
    if "device" not in df.columns:
        return ""
    cols = [c for c in ("device", "threads", "profile_size") if c in df.columns]
    for vals in df[cols].drop_duplicates().itertuples(index=False):
        d = dict(zip(cols, vals))
        if d.get("device") is None or pd.isna(d.get("device")):
            continue
        note = str(d["device"])
        thr = d.get("threads")
        if thr is not None and not pd.isna(thr):
            note += f", {int(thr)} thread{'s' if int(thr) != 1 else ''}"
        if d.get("profile_size"):
            note += f", input {d['profile_size']}"
        notes.append(note)
    return "; ".join(dict.fromkeys(notes))


# --------------------------------------------------------------------------- intervals and axes

#: a mIoU axis spans at least this many points (%), so that differences inside the noise of
#: a small val set do not fill the panel; wider when the intervals need it
MIN_MIOU_SPAN = 10.0
#: a cost axis (fps, MACs; log scale) spans at least this ratio, a factor 2 either side of
#: the data's geometric middle: a 0.3-fps difference at 10 fps stays a small step
MIN_COST_RATIO = 4.0


def with_fps_std(df: pd.DataFrame, runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``df`` (``collect_runs(runs)``: one row per run, in the order of ``runs``) plus a column
    ``fps_std``: the sample standard deviation of fps over the profile's repeats (images per
    second; :mod:`segbench.profiling`), NaN when unknown (a profile written before repeats,
    or with one repeat). A value that is not a number >= 0 is a RunFileError naming the file."""
    if len(df) != len(runs):
        raise ValueError(f"with_fps_std: {len(df)} rows for {len(runs)} runs")
    spreads = []
    for run in runs:
        prof = runfiles.read_profile(run["profile"])
        v = prof.get("fps_std")
        ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and not v < 0)
        if not ok:
            raise runfiles.damaged(run["profile"], f"says fps_std={v!r}, not a number >= 0", "profile")
        spreads.append(math.nan if v is None else float(v))
    return df.assign(fps_std=spreads)


def method_points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, loss) of a ``collect_runs`` frame, in order of appearance:
    ``seeds``; ``mIoU`` (mean over seeds, fraction) with ``mIoU_std`` (sample std over seeds,
    NaN for one) and ``mIoU_low`` / ``mIoU_high``, its 95% bootstrap interval
    (:func:`segbench.report.tables.group_interval`: over images for one seed, over images and
    seeds for several; NaN when a run has no per-image confusions); ``fps`` and ``fps_std``
    (images/s, the profile's mean and spread over its repeats; NaN std when unknown or the
    column is absent), ``MACs`` (count)."""
    from segbench.report.tables import group_interval

    if "fps_std" not in df.columns:
        df = df.assign(fps_std=math.nan)
    rows = []
    for (ds, model, loss), g in df.groupby(["dataset", "model", "loss"], sort=False):
        low, high = group_interval(g)
        rows.append(dict(dataset=ds, model=model, loss=loss, seeds=len(g), mIoU=g["mIoU"].mean(),
                         mIoU_std=g["mIoU"].std(), mIoU_low=low, mIoU_high=high,
                         fps=g["fps"].iloc[0], fps_std=g["fps_std"].iloc[0], MACs=g["MACs"].iloc[0]))
    return pd.DataFrame(rows)


def miou_limits(values: Iterable[float], min_span: float = MIN_MIOU_SPAN) -> tuple[float, float]:
    """y-limits (points) of a mIoU axis: the range of ``values`` (means and interval ends,
    in points; NaN ignored) with 8% room either side, widened about its middle to at least
    ``min_span`` points, and kept inside [0, 100] when it fits."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 100.0)
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    if lo < 0 and hi - lo <= 100:
        lo, hi = 0.0, hi - lo
    if hi > 100 and hi - lo <= 100:
        lo, hi = lo - (hi - 100), 100.0
    return lo, hi


def cost_limits(values: Iterable[float], min_ratio: float = MIN_COST_RATIO) -> tuple[float, float]:
    """x-limits of a log cost axis: the range of the positive ``values`` (error-bar ends
    included) with a factor 1.3 of room either side (for markers and labels), widened
    geometrically about its middle to span at least ``min_ratio``."""
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype=float)
    lo, hi = (float(v.min()) / 1.3, float(v.max()) * 1.3) if v.size else (1.0, 10.0)
    if hi / lo < min_ratio:
        mid = math.sqrt(lo * hi)
        lo, hi = mid / math.sqrt(min_ratio), mid * math.sqrt(min_ratio)
    return lo, hi


def log_axis(ax, limits: tuple[float, float]) -> None:
    """A log x-axis over ``limits`` with plain numbers as tick labels: every decade, and
    1-2-5 (1-2-3-5-7 under a decade and a half) when the axis spans less than 30x."""
    ratio = limits[1] / limits[0]
    subs = (1.0,) if ratio >= 30 else (1.0, 2.0, 5.0) if ratio >= 12 else (1.0, 2.0, 3.0, 5.0, 7.0)
    ax.set_xscale("log")
    ax.set_xlim(*limits)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def interval_yerr(mean: float, low: float, high: float) -> np.ndarray | None:
    """The asymmetric vertical error bar [[below], [above]] in points of a mIoU ``mean`` with
    its interval [``low``, ``high``] (fractions); None when the interval is unknown (NaN)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return 100 * np.array([[max(mean - low, 0.0)], [max(high - mean, 0.0)]])


def spread_xerr(std: float) -> float | None:
    """The horizontal error bar of fps (±1 std over the profile's repeats), None when unknown."""
    return float(std) if np.isfinite(std) else None


def speed_accuracy(df: pd.DataFrame, path: str | os.PathLike, title: str | None = None) -> Path:
    """mIoU against fps and against MACs (G), one point per (dataset, model, loss).

    ``df``: ``collect_runs`` rows, with ``fps_std`` (:func:`with_fps_std`) when known. Each
    point is the mean over seeds; its vertical bar is the 95% bootstrap interval of the mIoU
    (:func:`method_points`; none when a run lacks per-image confusions), its horizontal bar
    on the fps panel ±1 std of fps over the profile's repeats (none when unknown). Both x
    axes are log scale and span at least a factor :data:`MIN_COST_RATIO`; the mIoU axis at
    least :data:`MIN_MIOU_SPAN` points (:func:`miou_limits`), so noise is not zoomed onto.
    Colour = model, marker = loss; points are labelled ``model / loss``. The profile's
    device and threads go in the title.
    """
    need = {"dataset", "model", "loss", "mIoU", "fps", "MACs"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"speed_accuracy: table lacks columns {sorted(missing)}")
    pts = method_points(df)
    multi = pts["dataset"].nunique() > 1
    models = list(dict.fromkeys(pts["model"]))
    losses = list(dict.fromkeys(pts["loss"]))
    colour_of = dict(zip(models, _colours(len(models))))
    markers = "os^Dvp*hX<>"
    marker_of = {l: markers[i % len(markers)] for i, l in enumerate(losses)}
    ylim = miou_limits(100 * pd.concat([pts["mIoU"], pts["mIoU_low"], pts["mIoU_high"]]))
    with matplotlib.rc_context(_RC):
        fig = _figure(12.0, 5.0)
        axes = fig.subplots(1, 2, sharey=True)
        all_labels = []
        for ax, (col, scale, xlabel) in zip(
            axes, (("fps", 1.0, "throughput (fps, batch 1, log scale)"), ("MACs", 1e9, "MACs per image (G, log scale)"))
        ):
            labels, xs = [], []
            for _, p in pts.iterrows():
                x, y = p[col] / scale, 100 * p["mIoU"]
                if not (np.isfinite(x) and np.isfinite(y) and x > 0):
                    continue
                c = colour_of[p["model"]]
                xerr = spread_xerr(p["fps_std"]) if col == "fps" else None
                yerr = interval_yerr(p["mIoU"], p["mIoU_low"], p["mIoU_high"])
                ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt=marker_of[p["loss"]], color=c,
                            markersize=7, capsize=3, elinewidth=1, markeredgecolor="white", markeredgewidth=0.6)
                text = f"{p['model']} / {p['loss']}"
                if multi:
                    text = f"{p['dataset']}: {text}"
                labels.append((x, y, text, c))
                xs += [x] if xerr is None else [x - xerr, x + xerr]
            log_axis(ax, cost_limits(xs))
            ax.set_ylim(*ylim)
            ax.set_xlabel(xlabel)
            ax.grid(True, alpha=0.3, which="both")
            all_labels.append(labels)  # placed once the layout is known
        axes[0].set_ylabel("mIoU (%)")
        head = title or "Accuracy vs cost"
        note = _device_note(df)
        caption = ("mean over seeds; vertical bars: 95% bootstrap interval of mIoU, horizontal: ±1 std of fps "
                   "over the profile's repeats (no bar: not recorded)")
        fig.suptitle(head + (f"\nfps measured on {note}" if note else "") + "\n" + caption, fontsize=9.5)
        for ax, labels in zip(axes, all_labels):
            _place_labels(fig, ax, labels)
        return _save(fig, path)


# --------------------------------------------------------------------------- per-class IoU


def per_class_iou(runs: Iterable[RunLike], path: str | os.PathLike, title: str | None = None) -> Path:
    """Heat map of per-class IoU (%), runs x classes, plus a mIoU column; NaN cells grey."""
    runs = _runs(runs)
    metrics = [read_metrics(r) for r in runs]
    names = metrics[0].get("class_names") or [str(i) for i in range(len(metrics[0]["IoU"]))]
    for r, m in zip(runs, metrics):
        theirs = m.get("class_names") or [str(i) for i in range(len(m["IoU"]))]
        if list(theirs) != list(names) or len(m["IoU"]) != len(names):
            raise ValueError(
                f"per_class_iou: run {r['run_key']} has classes {theirs} but "
                f"{runs[0]['run_key']} has {names}; plot one dataset at a time"
            )
    multi = _multi_dataset(runs)
    iou = np.array([m["IoU"] + [m["mIoU"]] for m in metrics], dtype=float) * 100
    cols = list(names) + ["mIoU"]
    row_labels = [run_label(r, multi) for r in runs]
    n_rows, n_cols = iou.shape
    label_in = 0.065 * max(len(s) for s in row_labels)
    class_in = 0.07 * max(len(s) for s in cols)
    width = max(6.0, 0.5 * n_cols + label_in + 1.6)
    height = max(2.2, 0.36 * n_rows + class_in * 0.75 + 1.2)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    with matplotlib.rc_context(_RC):
        fig = _figure(width, height)
        ax = fig.subplots()
        im = ax.imshow(np.ma.masked_invalid(iou), cmap=cmap, vmin=0, vmax=100, aspect="auto",
                       interpolation="nearest")
        for i in range(n_rows):
            for j in range(n_cols):
                v = iou[i, j]
                if np.isnan(v):
                    continue
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 55 else "black",
                        fontweight="bold" if j == n_cols - 1 else "normal")
        ax.axvline(n_cols - 1.5, color="white", linewidth=3)
        ax.set_xticks(range(n_cols), cols, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n_rows), row_labels)
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
        cb = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.01, fraction=0.04)
        cb.set_label("IoU (%)")
        head = title or "Per-class IoU (%) — grey: class absent from ground truth and prediction"
        ax.set_title(textwrap.fill(head, max(30, int(width * 72 / 6.5))))
        return _save(fig, path)


# --------------------------------------------------------------------------- qualitative


def _lut(palette: Sequence[Sequence[int]] | None, n_classes: int) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)  # 255 (ignore) and unknown ids: black
    if palette is None or len(palette) == 0:
        cmap = matplotlib.colormaps["tab20"]
        palette = [[int(255 * c) for c in cmap(i % 20)[:3]] for i in range(n_classes)]
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[:255]
    lut[: len(pal)] = np.clip(pal, 0, 255).astype(np.uint8)
    lut[IGNORE_INDEX] = 0
    return lut


def load_samples(run: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """samples.npz of a run, checked (:func:`segbench.runfiles.read_samples`): images
    [K,H,W,3], labels [K,H,W], preds [K,H,W], names [K]."""
    return runfiles.read_samples(run["run_dir"])


def _short(name: str, width: int = 18) -> str:
    """A sample name without its extension and Cityscapes suffix, wrapped at ``_``."""
    stem = Path(name).name
    for suffix in (".png", ".jpg", "_leftImg8bit", "_gtFine_labelIds"):
        stem = stem.removesuffix(suffix)
    lines: list[str] = []
    for part in stem.split("_"):
        if lines and len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += "_" + part
        else:
            lines.extend(textwrap.wrap(part, width) or [""])
    return "\n".join(lines[:4]) or name


def qualitative_grid(
    runs: Iterable[RunLike],
    path: str | os.PathLike,
    palette: Sequence[Sequence[int]] | None = None,
    max_samples: int = 4,
    title: str | None = None,
    all_seeds: bool = False,
) -> Path:
    """Rows = samples; columns = image, ground truth, each run's prediction.

    Unless ``all_seeds``, only the first run given of each (model, loss) is shown (other
    seeds add width, not information).

    Label maps are coloured with ``palette`` (default: the first run's run.json palette),
    255 (ignore) in black. Samples are matched by name across runs (all runs must be of one
    dataset and hold the same samples). A legend lists the classes that appear.
    """
    runs = _runs(runs)
    if _multi_dataset(runs):
        raise ValueError("qualitative_grid: runs span several datasets; plot one dataset at a time")
    if not all_seeds:
        firsts: dict = {}
        for r in runs:
            firsts.setdefault((r["model"], r["loss"]), r)
        runs = list(firsts.values())
    info = read_run_json(runs[0])
    class_names = list(info.get("class_names") or [])
    if palette is None:
        palette = info.get("palette")
    samples = [load_samples(r) for r in runs]
    names = list(samples[0]["names"][:max_samples])
    if not names:
        raise ValueError(f"qualitative_grid: run {runs[0]['run_key']} has no samples")
    preds = []
    for r, s in zip(runs, samples):
        index = {n: i for i, n in enumerate(s["names"])}
        lacking = [n for n in names if n not in index]
        if lacking:
            raise ValueError(
                f"qualitative_grid: run {r['run_key']} has no sample {lacking[0]!r} "
                f"(runs of one dataset must share their samples; re-run `segbench evaluate`)"
            )
        preds.append([s["preds"][index[n]] for n in names])
    images = samples[0]["images"][: len(names)]
    labels = samples[0]["labels"][: len(names)]
    n_classes = len(class_names) or int(max(
        [int(labels[labels != IGNORE_INDEX].max(initial=0))]
        + [int(np.max(p)) for pr in preds for p in pr]
    )) + 1
    lut = _lut(palette, n_classes)
    try:
        metrics = [read_metrics(r) for r in runs]
    except (FileNotFoundError, ValueError):
        metrics = [None] * len(runs)

    h, w = images.shape[1:3]
    n_rows, n_cols = len(names), 2 + len(runs)
    cell_w = min(2.4, 20.0 / n_cols)
    cell_h = cell_w * h / w
    col_titles = ["image", "ground truth"] + [
        f"{r['model']}\n{r['loss']}\ns{r['seed']}"
        + (f" · mIoU {100 * m['mIoU']:.1f}%" if m is not None and np.isfinite(m["mIoU"]) else "")
        for r, m in zip(runs, metrics)
    ]
    present = set(np.unique(labels).tolist())
    for pr in preds:
        for p in pr:
            present |= set(np.unique(p).tolist())
    present = sorted(c for c in present if c != IGNORE_INDEX and c < n_classes)
    legend_rows = math.ceil(len(present) / max(1, min(len(present), 2 * n_cols))) if present else 0
    with matplotlib.rc_context(_RC):
        fig = _figure(cell_w * n_cols + 1.3, cell_h * n_rows + 0.75 + 0.22 * legend_rows + (0.3 if title else 0))
        axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
        for i in range(n_rows):
            cells = [images[i], lut[labels[i]]] + [lut[pr[i]] for pr in preds]
            for j, cell in enumerate(cells):
                ax = axes[i, j]
                ax.imshow(cell, interpolation="nearest" if j else "antialiased")
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if i == 0:
                    ax.set_title(col_titles[j], fontsize=8 if cell_w >= 1.6 else 7)
            axes[i, 0].set_ylabel(_short(names[i]), rotation=0, ha="right", va="center", fontsize=7)
        if present:
            handles = [
                Patch(facecolor=lut[c] / 255.0, edgecolor="0.5", linewidth=0.4,
                      label=class_names[c] if c < len(class_names) else str(c))
                for c in present
            ]
            handles.append(Patch(facecolor="black", label="ignore (255)"))
            fig.legend(handles=handles, loc="outside lower center",
                       ncols=min(len(handles), 2 * n_cols), frameon=False, fontsize=7,
                       handlelength=1.2, columnspacing=1.0)
        if title:
            fig.suptitle(title)
        return _save(fig, path)


# --------------------------------------------------------------------------- study


def build_study_report(study: str, runs: Iterable[RunLike], out_dir: str | os.PathLike) -> list[Path]:
    """Write a study's tables and figures under ``out_dir``; return the written paths.

    ``tables/summary.{csv,md}``, ``figures/curves.png``, ``figures/speed_accuracy.png``,
    and ``figures/per_class_iou.png`` + ``figures/qualitative.png`` — one of each per
    dataset, suffixed ``_{dataset}``, when the runs span several datasets. Every input
    file is checked before anything is written.
    """
    out_dir = Path(out_dir)
    runs = _runs(runs)
    df = collect_runs(runs)  # checks run.json, history.csv, metrics.json and profiles
    for r in runs:
        load_samples(r)  # and samples.npz, before anything is written
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    figs = out_dir / "figures"
    written = write_tables(df, out_dir / "tables", title=f"Study `{study}`")
    written.append(training_curves(runs, figs / "curves.png", title=f"Study {study}: training curves"))
    written.append(speed_accuracy(with_fps_std(df, runs), figs / "speed_accuracy.png",
                                  title=f"Study {study}: accuracy vs cost"))
    for ds in datasets:
        sub = [r for r in runs if r["dataset"] == ds]
        suffix = "" if len(datasets) == 1 else f"_{ds}"
        written.append(per_class_iou(sub, figs / f"per_class_iou{suffix}.png",
                                     title=f"Study {study}, {ds}: per-class IoU (%) — grey: class absent"))
        written.append(qualitative_grid(sub, figs / f"qualitative{suffix}.png",
                                        title=f"Study {study}, {ds}: validation samples"))
    return written


__all__ = [
    "build_study_report",
    "curves_figure",
    "expected_outputs",
    "cost_limits",
    "load_samples",
    "loss_functions",
    "method_points",
    "miou_limits",
    "per_class_iou",
    "qualitative_grid",
    "speed_accuracy",
    "training_curves",
    "with_fps_std",
]
