"""The cross-study report: every method (model, loss) of the studies on the same data under
the same protocol, which none of the four papers offers.

Input: the cross study's runs, as dicts in the format ``tables.collect_runs`` reads
(``run_key, dataset, model, loss, seed, run_dir, profile``; extra keys are tolerated and
``studies``, the studies a run belongs to, is used). Written under ``out_dir``:

* ``tables/cross_study.csv`` — raw numbers, one row per (dataset, model, loss): seeds,
  ``{mIoU,aAcc,mAcc,mDice}_{mean,std}`` (fractions, sample std over seeds, NaN for one seed),
  ``mIoU_ci_low`` / ``mIoU_ci_high`` (the 95% bootstrap interval of the mean mIoU: over the
  val images for one seed, over images and seeds for several; NaN when a run has no
  per-image confusions), params, MACs (counts), fps (images/s, the profile's mean over its
  repeats) and ``fps_std`` (their sample std; NaN when the profile has none), MB, studies
  (``;``-separated), and the booleans ``pareto_macs`` / ``pareto_fps``: on the noise-aware
  Pareto front of (max mIoU, min MACs) and of (max mIoU, max fps) within its dataset. Rows
  are in dataset order (first appearance), then by mIoU descending.
* ``tables/cross_study.md`` — the readable version (metrics in %, mean ± std, the interval,
  fps ± std; "—" where a run or profile predates intervals and repeats).
* ``figures/pareto_macs.png`` / ``figures/pareto_fps.png`` — mIoU against MACs and
  against fps (log x), one panel per dataset, intervals as error bars, the front as a step line.

Pareto front that respects the noise (:func:`noise_pareto_mask`): method j *dominates*
method i when

(a) j's mIoU is higher beyond noise and j's cost (MACs, fps) is not worse beyond noise, or
(b) j's cost is better beyond noise and j's mean mIoU is at least i's

(and, in both, j's mean mIoU is at least i's); the front is the methods no other method
dominates. So every "better" that puts a method off the front is a difference beyond
noise, and a method is never put off by one with a lower mean mIoU. "Beyond noise":

* mIoU: the 95% interval of the paired difference j − i excludes 0
  (:func:`segbench.stats.bootstrap_delta_seeds` on the two methods' per-image confusions:
  the same resampled val images for both, their seeds resampled too). When either method
  has no per-image confusions (runs evaluated by an older segbench) or they are not on the
  same val images, the two means are compared as they are (the noise is unknown);
* MACs: exact counts, any difference;
* fps: a difference larger than :data:`FPS_NOISE_STDS` (2) times the larger of the two
  profiles' standard deviations over their repeats, or, when either profile has no spread,
  larger than :data:`FPS_NOISE_RELATIVE` (5%) of the higher fps.

Without noise (every difference counted) this is the usual Pareto front (:func:`pareto_mask`).
Two methods whose differences are all inside the noise (two models 0.3 fps apart whose mIoU
intervals overlap) never dominate each other, so both stay on the front; a method that is
clearly better in mIoU and only slower inside the noise does put the other off. With MACs,
exact, the front methods rise in mean mIoU as their MACs rise. A method with a NaN
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

from segbench import stats
from segbench.io import write_text
# the cross study's file names live in outputs.py, which the Snakefile imports without matplotlib
from segbench.report.outputs import (
    CROSS_FIGURE_FPS as FIGURE_FPS,
    CROSS_FIGURE_MACS as FIGURE_MACS,
    CROSS_TABLE_CSV as TABLE_CSV,
    CROSS_TABLE_MD as TABLE_MD,
    expected_cross_outputs,
)
from segbench.report.figures import (
    _RC,
    _colours,
    _device_note,
    _figure,
    _place_labels,
    _save,
    cost_limits,
    interval_yerr,
    log_axis,
    miou_limits,
    spread_xerr,
    with_fps_std,
)
from segbench.report.tables import (
    _context_line,
    _fmt_costs,
    _markdown,
    _pct_pm,
    ci_note,
    collect_runs,
    group_interval,
    pct_interval,
    per_image,
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
    "mIoU_ci_low", "mIoU_ci_high",
    "params", "MACs", "fps", "fps_std", "MB", "studies", "pareto_macs", "pareto_fps",
)
#: an fps difference is noise unless larger than this many times the larger of the two
#: profiles' standard deviations over their repeats
FPS_NOISE_STDS = 2.0
#: ... or, when a profile has no spread (written before repeats), than this fraction of the higher fps
FPS_NOISE_RELATIVE = 0.05
#: bootstrap resamples and generator seed of the paired mIoU comparisons
N_BOOT, BOOT_SEED = 2000, 0
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


def noise_pareto_mask(means: Sequence[float], acc_order: np.ndarray, cost_order: np.ndarray,
                      valid: Sequence[bool] | None = None) -> np.ndarray:
    """Boolean mask of the methods on the Pareto front when only differences beyond noise count.

    ``means``: the methods' mean mIoU. ``acc_order[j, i]`` and ``cost_order[j, i]`` are +1
    when method j is better than method i beyond noise in that objective (higher mIoU; fewer
    MACs or higher fps), -1 when worse beyond noise, 0 when the difference is inside the
    noise (antisymmetric; diagonal 0). j dominates i iff ``means[j] >= means[i]`` and either
    (a) ``acc_order[j, i] > 0`` and ``cost_order[j, i] >= 0`` or (b) ``cost_order[j, i] > 0``;
    a method is on the front iff no valid method dominates it. ``valid`` (default all):
    methods with every objective known; the others are off the front and dominate nothing.
    """
    acc, cost = np.asarray(acc_order), np.asarray(cost_order)
    m = np.asarray(means, dtype=float)
    n = len(m)
    if acc.shape != (n, n) or cost.shape != (n, n):
        raise ValueError(f"noise_pareto_mask: orders must be {n} x {n} for {n} means (got {acc.shape}, {cost.shape})")
    ok = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    not_lower = m[:, None] >= m[None, :]  # [j, i]: j's mean mIoU at least i's
    dominates = not_lower & (((acc > 0) & (cost >= 0)) | (cost > 0)) & ok[:, None]
    return ok & ~dominates.any(axis=0)


def _sign(d: float) -> int:
    return int(d > 0) - int(d < 0)


def _same_images(runs: Sequence[np.ndarray]) -> bool:
    """Whether per-image confusions [N, C, C] are of the same val images in the same order:
    one shape, and the same ground-truth pixels per image and class (the row sums, which the
    predictions do not change)."""
    first = runs[0]
    return all(r.shape == first.shape and np.array_equal(r.sum(axis=2), first.sum(axis=2)) for r in runs[1:])


def miou_orders(means: Sequence[float], confusions: Sequence[list[np.ndarray] | None]) -> tuple[np.ndarray, np.ndarray]:
    """(order, tested) of n methods' mIoU: ``order[j, i]`` +1 / -1 / 0 as
    :func:`noise_pareto_mask` takes it, ``tested[j, i]`` True where it comes from the paired
    bootstrap (:func:`segbench.stats.bootstrap_delta_seeds` on ``confusions[j]`` and
    ``confusions[i]``, each a list of per-image confusions, one per seed: beyond noise when
    the 95% interval of the difference excludes 0), False where the ``means`` (fractions)
    are compared as they are (a method without per-image confusions, or other images)."""
    n = len(means)
    order = np.zeros((n, n), dtype=int)
    tested = np.zeros((n, n), dtype=bool)
    for j in range(n):
        for i in range(j + 1, n):
            a, b = confusions[j], confusions[i]
            if a is not None and b is not None and _same_images([*a, *b]):
                d = stats.bootstrap_delta_seeds(a, b, n_boot=N_BOOT, seed=BOOT_SEED)
                o = 1 if d["low"] > 0 else -1 if d["high"] < 0 else 0
                tested[j, i] = tested[i, j] = True
            else:
                o = _sign(means[j] - means[i]) if np.isfinite(means[j]) and np.isfinite(means[i]) else 0
            order[j, i], order[i, j] = o, -o
    return order, tested


def fps_orders(fps: Sequence[float], fps_std: Sequence[float]) -> np.ndarray:
    """``order[j, i]`` (+1 j faster beyond noise, -1 slower, 0 inside) of throughputs ``fps``
    (images/s) with their spreads ``fps_std`` (NaN: unknown): the noise is
    :data:`FPS_NOISE_STDS` x the larger std, or :data:`FPS_NOISE_RELATIVE` x the higher fps
    when either std is unknown."""
    n = len(fps)
    order = np.zeros((n, n), dtype=int)
    for j in range(n):
        for i in range(n):
            if i == j or not (np.isfinite(fps[j]) and np.isfinite(fps[i])):
                continue
            if np.isfinite(fps_std[j]) and np.isfinite(fps_std[i]):
                noise = FPS_NOISE_STDS * max(fps_std[j], fps_std[i])
            else:
                noise = FPS_NOISE_RELATIVE * max(fps[j], fps[i])
            d = fps[j] - fps[i]
            order[j, i] = 1 if d > noise else -1 if d < -noise else 0
    return order


def macs_orders(macs: Sequence[float]) -> np.ndarray:
    """``order[j, i]`` +1 when j needs fewer MACs than i, -1 more, 0 equal (exact counts)."""
    n = len(macs)
    order = np.zeros((n, n), dtype=int)
    for j in range(n):
        for i in range(n):
            if np.isfinite(macs[j]) and np.isfinite(macs[i]):
                order[j, i] = _sign(macs[i] - macs[j])
    return order


# --------------------------------------------------------------------------- table


def _studies_of(run: Any) -> list[str]:
    studies = run.get("studies") if isinstance(run, Mapping) else None
    if isinstance(studies, str):
        studies = [studies]
    return [str(s) for s in (studies or []) if str(s) != CROSS_STUDY]


def collect_cross_runs(runs: Iterable[Any], datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """``tables.collect_runs`` plus a ``studies`` column (the run's studies but the cross
    study itself) and ``fps_std`` (:func:`segbench.report.figures.with_fps_std`), restricted
    to ``datasets`` when given. Raises the FileNotFoundError of ``collect_runs`` for a
    missing file, ValueError for no runs."""
    runs = list(runs)
    if not runs:
        raise ValueError(_EMPTY)
    df = with_fps_std(collect_runs(runs), runs)
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
    ``CROSS_COLUMNS``; mean and sample std (n - 1) over seeds, the mIoU's 95% interval
    (:func:`segbench.report.tables.group_interval`), costs of the first seed, noise-aware
    Pareto flags within each dataset (module docstring); datasets in order of appearance,
    then mIoU descending (ties: fewer MACs first)."""
    if df.empty:
        raise ValueError(_EMPTY)
    if "studies" not in df.columns:
        df = df.assign(studies=[[] for _ in range(len(df))])
    if "fps_std" not in df.columns:
        df = df.assign(fps_std=math.nan)
    g = df.groupby(["dataset", "model", "loss"], sort=False)
    out = g.agg(
        seeds=("seed", "size"),
        **{f"{m}_{s}": (m, s) for m in CROSS_METRICS for s in ("mean", "std")},
        params=("params", "first"), MACs=("MACs", "first"), fps=("fps", "first"),
        fps_std=("fps_std", "first"), MB=("MB", "first"),
        studies=("studies", lambda s: ";".join(dict.fromkeys(x for lst in s for x in lst))),
    ).reset_index()
    groups = [sub for _, sub in g]  # in the order of ``out``'s rows
    intervals = [group_interval(sub) for sub in groups]
    out["mIoU_ci_low"] = [lo for lo, _ in intervals]
    out["mIoU_ci_high"] = [hi for _, hi in intervals]
    confusions = [_confusions(sub) for sub in groups]
    out["pareto_macs"] = False
    out["pareto_fps"] = False
    for _, idx in out.groupby("dataset", sort=False).groups.items():
        sub = out.loc[idx]
        means = sub["mIoU_mean"].to_numpy(dtype=float)
        acc, _ = miou_orders(means, [confusions[i] for i in idx])
        has_miou = np.isfinite(means)
        macs, fps = sub["MACs"].to_numpy(dtype=float), sub["fps"].to_numpy(dtype=float)
        fps_order = fps_orders(fps, sub["fps_std"].to_numpy(dtype=float))
        out.loc[idx, "pareto_macs"] = noise_pareto_mask(means, acc, macs_orders(macs), has_miou & np.isfinite(macs))
        out.loc[idx, "pareto_fps"] = noise_pareto_mask(means, acc, fps_order, has_miou & np.isfinite(fps))
    rank = {d: i for i, d in enumerate(dict.fromkeys(out["dataset"]))}
    out = out.assign(_ds=out["dataset"].map(rank), _miou=-out["mIoU_mean"].fillna(-np.inf))
    out = out.sort_values(["_ds", "_miou", "MACs", "model", "loss"], kind="stable", na_position="last")
    out = out.drop(columns=["_ds", "_miou"]).reset_index(drop=True)
    out["pareto_macs"] = out["pareto_macs"].astype(bool)
    out["pareto_fps"] = out["pareto_fps"].astype(bool)
    out["seeds"] = out["seeds"].astype(int)
    return out.loc[:, list(CROSS_COLUMNS)]


def _confusions(g: pd.DataFrame) -> list[np.ndarray] | None:
    """The per-image confusions of a group's runs (one per seed), None when a run has none."""
    arrays = [per_image(r) for _, r in g.iterrows()]
    return None if any(a is None for a in arrays) else arrays


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


def _fps_pm(fps: float, std: float) -> str:
    """fps with its spread over the profile's repeats: "10.0 ± 0.3"; "10.0 ± —" when unknown."""
    if fps is None or math.isnan(fps):
        return "n/a"
    return f"{fps:.1f} ± " + ("—" if std is None or math.isnan(std) else f"{std:.1f}")


def format_cross(table: pd.DataFrame) -> pd.DataFrame:
    """The cross-study table as strings: metrics in % (mean ± std), the mIoU's 95% interval
    ("—" when unknown), params M, MACs G, fps ± std."""
    rows = []
    for _, r in table.iterrows():
        row = {k: str(r[k]) for k in ("dataset", "model", "loss")}
        row["studies"] = ", ".join(s for s in str(r["studies"]).split(";") if s) or "–"
        row["seeds"] = str(int(r["seeds"]))
        for m in CROSS_METRICS:
            row[f"{m} (%)"] = _pct_pm(r[f"{m}_mean"], r[f"{m}_std"])
            if m == "mIoU":
                row["mIoU 95% CI (%)"] = pct_interval(r["mIoU_ci_low"], r["mIoU_ci_high"])
        row.update(_fmt_costs(r))
        row["fps"] = _fps_pm(r["fps"], r["fps_std"])
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
        "`mIoU 95% CI`: the 95% bootstrap interval of the mIoU (of the mean over seeds: images "
        "and seeds resampled). fps: mean ± standard deviation over the profile's timing repeats.",
        "",
        "**Pareto MACs** / **Pareto fps**: on the Pareto front of its dataset, counting only "
        "differences beyond noise: a method is off the front only when another has a higher mIoU "
        "beyond noise at MACs (fps) not worse beyond noise, or better MACs (fps) beyond noise at a "
        "mean mIoU at least as high. A mIoU difference "
        "is beyond noise when the 95% interval of the paired difference (same resampled val images, "
        "seeds resampled) excludes 0; MACs are exact; an fps difference is beyond noise when it "
        f"exceeds {FPS_NOISE_STDS:g} x the larger of the two standard deviations (or "
        f"{100 * FPS_NOISE_RELATIVE:g}% of the higher fps when a profile has none). Methods whose "
        "differences are all inside the noise are both on the front (figures `pareto_macs.png`, "
        "`pareto_fps.png`).",
        "",
        _markdown(format_cross(table), 4),
        "",
    ]
    if n_seeds and n_seeds[0] < 2 and n_seeds[-1] >= 2:
        lines += ["Methods with one seed show no ± (their std is undefined).", ""]
    unknown_ci = [f"{r.model} / {r.loss}" for r in table.itertuples()
                  if not (np.isfinite(r.mIoU_ci_low) and np.isfinite(r.mIoU_ci_high))]
    if unknown_ci:
        lines += [f"— no interval: {', '.join(dict.fromkeys(unknown_ci))} (runs evaluated without per-image "
                  "confusions, by an older segbench: run `segbench evaluate` again); their mIoU is compared "
                  "to others' as it is for the Pareto flags.", ""]
    if not np.isfinite(table["fps_std"].to_numpy(dtype=float)).all():
        lines += ["fps ± —: a profile without timing repeats (an older segbench, or one repeat: "
                  "`profile.repeats`).", ""]
    lines += [ci_note(), ""]
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

    One point per method (mean over seeds; the seeds as faint dots beside it when there are
    several). Vertical bar: the mIoU's 95% interval (``table``'s ``mIoU_ci_low/high``);
    horizontal bar (fps): ±1 std over the profile's repeats; no bar where unknown. Colour =
    model, marker = loss; methods on the noise-aware front (``table``'s flag, module
    docstring) have a black edge, the others are faded. The dashed step line is the outline
    of the front: through the front methods that no other front method beats on the means
    (front methods tied with it inside the noise lie under it, their intervals reaching it).
    The axes are not zoomed onto noise: x spans at least a factor 4, y at least 10 points
    (:func:`segbench.report.figures.cost_limits`, :func:`~segbench.report.figures.miou_limits`).
    Points are labelled ``model / loss``.
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
        fig = _figure(6.6 * ncols + 0.4, 4.9 * nrows + 1.1)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        for ax in axes[n:]:
            ax.set_visible(False)
        to_label = []
        for ax, ds in zip(axes, datasets):
            pts = table[table["dataset"] == ds]
            seeds = df[df["dataset"] == ds]
            labels, xs, ys = [], [], []
            for _, p in pts.iterrows():
                xv, yv = p[x] / spec["scale"], 100 * p["mIoU_mean"]
                if not (np.isfinite(xv) and np.isfinite(yv) and xv > 0):
                    continue
                c = colour_of[p["model"]]
                front = bool(p[spec["flag"]])
                if p["seeds"] > 1:
                    seed_y = 100 * seeds[(seeds["model"] == p["model"]) & (seeds["loss"] == p["loss"])]["mIoU"]
                    # beside the error bar (a few % to the right on the log axis), not on it
                    ax.scatter(np.full(len(seed_y), xv * 1.06), seed_y.to_numpy(dtype=float), s=12, color=c,
                               alpha=0.45, linewidths=0, zorder=2)
                    ys += list(seed_y)
                yerr = interval_yerr(p["mIoU_mean"], p["mIoU_ci_low"], p["mIoU_ci_high"])
                xerr = spread_xerr(p["fps_std"]) if x == "fps" else None
                ax.errorbar(xv, yv, yerr=yerr, xerr=xerr, fmt=marker_of[p["loss"]], color=c,
                            markersize=8 if front else 6.5, capsize=3, elinewidth=1,
                            alpha=1.0 if front else 0.55, zorder=4 if front else 3,
                            markeredgecolor="black" if front else "white",
                            markeredgewidth=0.9 if front else 0.6)
                labels.append((xv, yv, f"{p['model']} / {p['loss']}", c))
                xs += [xv] if xerr is None else [xv - xerr, xv + xerr]
                ys += [yv] if yerr is None else [yv - yerr[0, 0], yv + yerr[1, 0]]
            log_axis(ax, cost_limits(xs))
            ax.set_ylim(*miou_limits(ys))
            # the front's outline, a step line to the axis edge through the front methods
            # that no other front method beats on the means
            fr = pts[pts[spec["flag"]].astype(bool)]
            fx = (fr[x] / spec["scale"]).to_numpy(dtype=float)
            fy = (100 * fr["mIoU_mean"]).to_numpy(dtype=float)
            keep = np.isfinite(fx) & np.isfinite(fy) & (fx > 0)
            fx, fy = fx[keep], fy[keep]
            outline = pareto_mask(fx, fy, maximize_x=spec["maximize"])
            fx, fy = fx[outline], fy[outline]
            if len(fx):
                o = np.lexsort((fy, fx))
                fx, fy = fx[o], fy[o]
                x0, x1 = ax.get_xlim()
                if spec["maximize"]:  # fps: better to the right; the front falls left to right
                    sx, sy = np.r_[x0, fx], np.r_[fy[0], fy]
                else:  # MACs: better to the left; the front rises left to right
                    sx, sy = np.r_[fx, x1], np.r_[fy, fy[-1]]
                ax.step(sx, sy, where=spec["step"], color="0.25", linewidth=1.3, linestyle="--", zorder=1)
            ax.set_xlabel(spec["xlabel"])
            ax.set_ylabel("mIoU (%)" + (" — mean over seeds" if several else ""))
            ax.grid(True, alpha=0.3, which="both")
            if n > 1:
                ax.set_title(ds)
            to_label.append((ax, labels))
        handles = [
            Line2D([], [], color="0.25", linestyle="--", label=f"Pareto front (higher mIoU, {spec['better']})"),
            Line2D([], [], color="0.4", marker="o", linestyle="", markeredgecolor="black",
                   label="on the front (not beaten beyond noise)"),
            Line2D([], [], color="0.4", marker="o", linestyle="", markeredgecolor="white", alpha=0.55,
                   label="dominated"),
        ]
        if several:
            handles.append(Line2D([], [], color="0.4", marker="o", linestyle="", markersize=3, alpha=0.4,
                                  label="single seeds"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2 * ncols), frameon=False)
        note = _device_note(df)
        caption = "colour: model, marker: loss. "
        caption += "Bars: 95% bootstrap interval of mIoU"
        caption += ", ±1 std of fps over the timing repeats" if x == "fps" else ""
        caption += " (no bar: not recorded). "
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
    "fps_orders",
    "macs_orders",
    "miou_orders",
    "noise_pareto_mask",
    "pareto_figure",
    "pareto_mask",
    "write_cross_tables",
]
