"""Per-study tables: one row per run, read from the run directories and the profiles.

Inputs follow docs/outputs.md: a run directory holds ``run.json``, ``history.csv``,
``metrics.json`` (and ``samples.npz``); a profile json holds params, MACs, fps and size.
Nothing here imports torch or mlflow.

``summary.csv`` holds raw numbers (metrics as fractions in [0, 1], params and MACs as
counts, fps, MB); ``summary.md`` is the readable version (metrics in %, params in M,
MACs in G), with a mean ± std table when a (dataset, model, loss) has several seeds.

Uncertainty (docs/statistics.md): each run's mIoU comes with its 95% interval
(metrics.json's ``mIoU_ci95``, a bootstrap over the run's val images); a seed aggregate
with several seeds gets an interval that resamples seeds and images together
(:func:`seeds_interval`, from the runs' ``confusion_per_image.npy``). The claim-specific
metrics (``mBIoU``, ``thin_mIoU``, small-object recall) are columns when some run has them;
a run evaluated by an older segbench shows "—" there, never an error.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from segbench import runfiles
from segbench.io import write_text

#: the metrics of metrics.json shown in the tables (fractions in [0, 1])
METRICS = ("mIoU", "aAcc", "mAcc", "mDice")
#: the cost columns, from the profile
COSTS = ("params", "MACs", "fps", "MB")
KEYS = ("dataset", "model", "loss", "seed")
#: metrics.json's claim-specific metrics (fractions; NaN for a run evaluated without them):
#: Boundary IoU, IoU over the thin classes, recall of small / medium / large segments
EXTRA_METRICS = ("mBIoU", "thin_mIoU", "recall_small", "recall_medium", "recall_large")
#: the 95% interval of each run's mIoU (metrics.json's ``mIoU_ci95``; NaN when absent)
CI_COLUMNS = ("mIoU_ci_low", "mIoU_ci_high")
#: columns of summary.csv, in order
SUMMARY_COLUMNS = (*KEYS, *METRICS, *CI_COLUMNS, *EXTRA_METRICS, *COSTS, "run_key")
#: the per-image confusions (int64 [N, C, C]) of a run (docs/outputs.md)
CONFUSION_PER_IMAGE = "confusion_per_image.npy"

RunLike = Mapping[str, Any] | str | os.PathLike


# --------------------------------------------------------------------------- reading
# Every run file is read through segbench.runfiles, which checks it (parseable, complete,
# consistent with run.json) and raises RunFileError naming the file and the remedy; a
# missing file raises RunFileMissing, also a FileNotFoundError.


def run_file(run: Mapping[str, Any], name: str) -> Path:
    """Path of ``name`` in the run's directory; FileNotFoundError (:class:`RunFileMissing`)
    naming the file and the step that writes it when it is not there."""
    path = Path(run["run_dir"]) / name
    if not path.is_file():
        runfiles.read_bytes(path)  # raises: missing, or a directory in its place
    return path


def as_run(run: RunLike) -> dict:
    """Normalise a run given as a dict (see ``collect_runs``) or as a run directory.

    For a bare directory the keys are read from its ``run.json``.
    """
    if isinstance(run, Mapping):
        out = dict(run)
        if "run_dir" not in out:
            raise ValueError(f"run {out.get('run_key', out)!r} has no 'run_dir'")
        if "run_key" not in out:
            if all(k in out for k in KEYS):
                out["run_key"] = "{dataset}/{model}/{loss}/s{seed}".format(**out)
            else:
                out["run_key"] = str(out["run_dir"])
        if not all(k in out for k in KEYS):
            info = runfiles.read_run(out["run_dir"])
            for k in KEYS:
                out.setdefault(k, info[k])
        return out
    run_dir = Path(run)
    info = runfiles.read_run(run_dir)
    out = {k: info[k] for k in KEYS}
    out["run_key"] = info["run_key"]
    out["run_dir"] = str(run_dir)
    return out


def read_run_json(run: Mapping[str, Any]) -> dict:
    """The run's run.json, checked (:func:`segbench.runfiles.read_run`)."""
    return runfiles.read_run(run["run_dir"])


def read_metrics(run: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> dict:
    """metrics.json, checked against run.json (``info``, read when None), with ``None``
    scores and IoUs (if any) turned into NaN."""
    m = dict(runfiles.read_metrics(run["run_dir"], info))
    for k in METRICS:
        m[k] = _float(m[k])
    m["IoU"] = [float("nan") if v is None else float(v) for v in m["IoU"]]
    return m


def read_history(run: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """history.csv, checked against run.json (``info``, read when None): one row per epoch,
    the columns of docs/outputs.md; val columns NaN on epochs without validation."""
    rows = runfiles.read_history(run["run_dir"], info)
    h = pd.DataFrame(rows, columns=list(runfiles.HISTORY_COLUMNS))
    for col in runfiles.VAL_COLUMNS:
        h[col] = h[col].astype(float)
    return h


def read_profile(run: Mapping[str, Any]) -> dict:
    if not run.get("profile"):
        raise ValueError(f"run {run['run_key']}: no profile path given")
    return runfiles.read_profile(run["profile"])


def run_label(row: Mapping[str, Any], with_dataset: bool = False) -> str:
    """``model / loss / s{seed}`` (prefixed by the dataset when asked)."""
    label = f"{row['model']} / {row['loss']} / s{row['seed']}"
    return f"{row['dataset']}: {label}" if with_dataset else label


def _size(v: Any) -> str | None:
    if v is None:
        return None
    try:
        h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        return str(v)
    return f"{h}x{w}"


def collect_runs(runs: Iterable[RunLike]) -> pd.DataFrame:
    """One row per run: keys, metrics (fractions), costs, and where they came from.

    Each run is a dict with ``run_key, dataset, model, loss, seed, run_dir, profile`` (the
    report rule's ``--runs``). Columns: dataset, model, loss, seed, mIoU, aAcc, mAcc, mDice,
    params, MACs, fps, MB, run_key, run_dir, then context: epochs (rows of history.csv),
    train_seconds, eval_size and profile_size ("HxW"), device, threads (of the profile),
    train_device (of run.json); and, as objects, groups (the run's ``groups``: "main"
    and/or the study's ablation names; ["main"] when not given), model_spec, loss_spec,
    dataset_spec (as given, else the ones resolved in run.json's config, else None) and
    train (the training protocol of run.json: epochs, crop, batch_size, ...). Every file is
    checked (:mod:`segbench.runfiles`): a missing one raises FileNotFoundError, a damaged or
    inconsistent one RunFileError, each naming the file and the step that writes it.
    """
    rows = []
    for spec in runs:
        run = as_run(spec)
        key = run["run_key"]
        info = read_run_json(run)
        for k in KEYS:
            if k in info and str(info[k]) != str(run[k]):
                raise ValueError(
                    f"run {key}: run.json in {run['run_dir']} says {k}={info[k]!r}, "
                    f"expected {run[k]!r} (stale run directory?)"
                )
        hist = read_history(run, info)
        metrics = read_metrics(run, info)
        prof = read_profile(run)
        row = {k: run[k] for k in KEYS}
        row["seed"] = int(row["seed"]) if str(row["seed"]).isdigit() else row["seed"]
        row.update({k: _float(metrics[k]) for k in METRICS})
        row.update(claim_metrics(metrics, Path(run["run_dir"]) / "metrics.json"))
        row.update(
            params=_num(prof.get("params")),
            MACs=_num(prof.get("macs")),
            fps=_float(prof.get("fps")),
            MB=_float(prof.get("size_mb")),
        )
        row.update(
            run_key=key,
            run_dir=str(run["run_dir"]),
            epochs=len(hist),
            train_seconds=_float(info.get("train_seconds")),
            eval_size=_size(metrics.get("input_size")),
            eval_protocol=eval_protocol_words(metrics.get("eval_protocol")),
            profile_size=_size(prof.get("input_size")),
            device=prof.get("device"),
            threads=prof.get("threads"),
            train_device=info.get("device"),
            groups=list(run.get("groups") or ["main"]),
            model_spec=_spec(run, info, "model"),
            loss_spec=_spec(run, info, "loss"),
            dataset_spec=_spec(run, info, "dataset"),
            train=_train_protocol(info),
            num_images=int(metrics["num_images"]),
            class_names=list(metrics["class_names"]),
        )
        rows.append(row)
    if not rows:
        raise ValueError("no runs to report")
    return pd.DataFrame(rows)


def claim_metrics(metrics: Mapping[str, Any], path: str | os.PathLike) -> dict:
    """The interval and claim-specific metrics of a metrics.json (``path``, for errors):
    ``mIoU_ci_low/high``, ``mBIoU``, ``thin_mIoU``, ``recall_{small,medium,large}`` as
    fractions (NaN where the file has no such key or a null: an older evaluation, no thin
    class, no segment in a bin) and ``thin_classes`` (list of class names; [] when absent).
    A key present with a value of the wrong shape is a RunFileError naming the file."""
    out: dict[str, Any] = {}
    ci = metrics.get("mIoU_ci95")
    if ci is None:
        out["mIoU_ci_low"] = out["mIoU_ci_high"] = math.nan
    elif isinstance(ci, list) and len(ci) == 2 and all(v is None or isinstance(v, (int, float)) for v in ci):
        out["mIoU_ci_low"], out["mIoU_ci_high"] = _float(ci[0]), _float(ci[1])
    else:
        raise runfiles.damaged(path, f"says mIoU_ci95={ci!r}, not [low, high]")
    for key in ("mBIoU", "thin_mIoU"):
        v = metrics.get(key)
        if not (v is None or isinstance(v, (int, float))):
            raise runfiles.damaged(path, f"says {key}={v!r}, not a number")
        out[key] = _float(v)
    recall = metrics.get("size_recall") or {}
    if not isinstance(recall, Mapping):
        raise runfiles.damaged(path, f"says size_recall={recall!r}, not {{\"small\": r, \"medium\": r, \"large\": r}}")
    for size in ("small", "medium", "large"):
        v = recall.get(size)
        if not (v is None or isinstance(v, (int, float))):
            raise runfiles.damaged(path, f"says size_recall.{size}={v!r}, not a number")
        out[f"recall_{size}"] = _float(v)
    thin = metrics.get("thin_classes") or []
    if not (isinstance(thin, list) and all(isinstance(c, str) for c in thin)):
        raise runfiles.damaged(path, f"says thin_classes={thin!r}, not a list of class names")
    out["thin_classes"] = list(thin)
    return out


def per_image(run: Mapping[str, Any], name: str = CONFUSION_PER_IMAGE):
    """One of a run's per-image arrays (``confusion_per_image.npy``, ``boundary_per_image.npy``,
    ``segments_per_image.npy``), checked by :func:`segbench.runfiles.read_per_image`; None when
    the run was evaluated without it (an older segbench). ``run``: a row of ``collect_runs``
    or a run dict with ``run_dir``."""
    info = runfiles.read_run(run["run_dir"])
    metrics = runfiles.read_metrics(run["run_dir"], info)
    return runfiles.read_per_image(run["run_dir"], name, info, metrics)


def _spec(run: Mapping[str, Any], info: Mapping[str, Any], kind: str) -> dict | None:
    """The run's ``{kind}_spec`` as given, else the one resolved into run.json's config
    (without its ``name``), else None."""
    given = run.get(f"{kind}_spec")
    if given is not None:
        return dict(given)
    resolved = (info.get("config") or {}).get(kind)
    if isinstance(resolved, Mapping):
        return {k: v for k, v in resolved.items() if k != "name"}
    return None


def _train_protocol(info: Mapping[str, Any]) -> dict:
    """The training protocol of run.json: its ``train`` key, else ``config.train``."""
    train = info.get("train")
    if not isinstance(train, Mapping):
        train = (info.get("config") or {}).get("train")
    return dict(train) if isinstance(train, Mapping) else {}


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _num(v: Any) -> float | int:
    if v is None:
        return float("nan")
    f = float(v)
    return int(f) if f.is_integer() else f


# --------------------------------------------------------------------------- tables


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """The comparison table: one row per run, raw numbers, in the order the runs were given.

    Columns ``SUMMARY_COLUMNS`` (metrics as fractions, params/MACs as counts).
    """
    return df.loc[:, list(SUMMARY_COLUMNS)].reset_index(drop=True)


def aggregate_seeds(df: pd.DataFrame) -> pd.DataFrame | None:
    """Mean and sample std (ddof=1) over seeds per (dataset, model, loss).

    Returns None unless some (dataset, model, loss) has several seeds. Columns: dataset,
    model, loss, seeds (count), ``{metric}_mean`` / ``{metric}_std`` for each metric (std
    NaN for a single seed), and the costs (those of the first seed; they do not depend on
    the seed).
    """
    groups = df.groupby(["dataset", "model", "loss"], sort=False)
    if not (groups.size() > 1).any():
        return None
    extra = [m for m in EXTRA_METRICS if m in df.columns]
    out = groups.agg(
        seeds=("seed", "size"),
        **{f"{m}_{s}": (m, s) for m in (*METRICS, *extra) for s in ("mean", "std")},
        **{c: (c, "first") for c in COSTS},
    )
    return out.reset_index()


def seeds_interval(per_image_runs: list, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (fractions) of the mean over seeds of the mIoU of one
    method with several seeds, over images and seeds (:func:`segbench.stats.bootstrap_ci_seeds`).
    ``per_image_runs``: one int [N, C, C] per-image confusion array per seed, on the same N images."""
    from segbench import stats

    return stats.bootstrap_ci_seeds(per_image_runs, stats.miou, n_boot=n_boot, seed=seed, level=level)


def group_interval(g: pd.DataFrame) -> tuple[float, float]:
    """The mIoU interval (fractions) of one (dataset, model, loss) group of ``collect_runs``
    rows: the run's own ``mIoU_ci95`` for one seed, :func:`seeds_interval` over the seeds'
    per-image confusions for several; (NaN, NaN) when a run lacks what it needs."""
    if len(g) == 1:
        return float(g.iloc[0]["mIoU_ci_low"]), float(g.iloc[0]["mIoU_ci_high"])
    arrays = [per_image(r) for _, r in g.iterrows()]
    if any(a is None for a in arrays) or len({a.shape for a in arrays}) != 1:
        return math.nan, math.nan
    return seeds_interval(arrays)


def ci_note() -> str:
    """The line under every table with an interval: the method, and where it is described."""
    from segbench import stats

    return stats.CI_METHOD


# --------------------------------------------------------------------------- formatting


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def _pct_pm(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if std is None or math.isnan(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def pct_interval(low: float, high: float) -> str:
    """``[49.10, 52.30]`` (fractions shown in %), or "—" when the interval is not known."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "—"
    return f"[{100 * low:.2f}, {100 * high:.2f}]"


def _pct_or_dash(v: float) -> str:
    return "—" if v is None or math.isnan(v) else f"{100 * v:.2f}"


#: the claim-specific columns of the markdown tables: (metric, header)
_EXTRA_HEADERS = (("mBIoU", "mBIoU (%)"), ("thin_mIoU", "thin mIoU (%)"), ("recall_small", "small recall (%)"))


def _present(df: pd.DataFrame, col: str) -> bool:
    """Whether some run has ``col`` (a run evaluated by an older segbench has NaN)."""
    return col in df.columns and bool(df[col].notna().any())


def _scaled(v: float, scale: float, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    x = v / scale
    return f"{x:.3g}{unit}" if 0 < abs(x) < 0.01 else f"{x:.2f}{unit}"


def _one(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.1f}"


def _fmt_costs(row: Mapping[str, Any]) -> dict:
    return {
        "params": _scaled(row["params"], 1e6, "M"),
        "MACs": _scaled(row["MACs"], 1e9, "G"),
        "fps": _one(row["fps"]),
        "MB": _one(row["MB"]),
    }


def _markdown(table: pd.DataFrame, n_text: int) -> str:
    align = ("left",) * n_text + ("right",) * (table.shape[1] - n_text)
    # disable_numparse keeps "51.20" from becoming 51.2
    return table.to_markdown(index=False, disable_numparse=True, colalign=align)


def _groups_of(df: pd.DataFrame) -> list[list[str]]:
    return [list(g) if isinstance(g, (list, tuple)) else ["main"]
            for g in (df["groups"] if "groups" in df.columns else [["main"]] * len(df))]


def has_ablations(df: pd.DataFrame) -> bool:
    """Whether some run belongs to one of the study's ablations (a group other than "main")."""
    return any(g != "main" for groups in _groups_of(df) for g in groups)


def ablation_label(groups: Iterable[str]) -> str:
    """The ``ablation`` cell of a run: "—" for a run of the main matrix only, else its groups
    ("bal_grid", or "main, bal_grid" for a run that is in both)."""
    groups = list(groups) or ["main"]
    return "—" if groups == ["main"] else ", ".join(groups)


def format_summary(df: pd.DataFrame) -> pd.DataFrame:
    """The per-run table as strings: metrics in % (2 decimals), params M, MACs G; an
    ``ablation`` column after ``seed`` when some run belongs to an ablation."""
    rows = []
    marks = [ablation_label(g) for g in _groups_of(df)] if has_ablations(df) else None
    for i, (_, r) in enumerate(summary_table(df).iterrows()):
        row = {k: str(r[k]) for k in KEYS}
        if marks is not None:
            row["ablation"] = marks[i]
        row.update({f"{m} (%)": _pct(r[m]) for m in METRICS})
        if _present(df, "mIoU_ci_low"):
            row["mIoU 95% CI (%)"] = pct_interval(r["mIoU_ci_low"], r["mIoU_ci_high"])
        for m, header in _EXTRA_HEADERS:
            if _present(df, m):
                row[header] = _pct_or_dash(r[m])
        row.update(_fmt_costs(r))
        rows.append(row)
    return pd.DataFrame(rows)


def format_aggregate(agg: pd.DataFrame, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """The mean ± std table as strings (metrics in %); with ``df`` (the runs) and some run in
    an ablation, an ``ablation`` column as in :func:`format_summary`."""
    marks = None
    if df is not None and has_ablations(df):
        marks = {}
        for (ds, model, loss), groups in zip(df[["dataset", "model", "loss"]].itertuples(index=False),
                                             _groups_of(df)):
            marks.setdefault((ds, model, loss), ablation_label(groups))
    rows = []
    for _, r in agg.iterrows():
        row = {k: str(r[k]) for k in ("dataset", "model", "loss")}
        if marks is not None:
            row["ablation"] = marks.get((r["dataset"], r["model"], r["loss"]), "—")
        row["seeds"] = str(int(r["seeds"]))
        row.update({f"{m} (%)": _pct_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS})
        if df is not None and _present(df, "mIoU_ci_low"):
            g = df[(df["dataset"] == r["dataset"]) & (df["model"] == r["model"]) & (df["loss"] == r["loss"])]
            row["mIoU 95% CI (%)"] = pct_interval(*group_interval(g))
        for m, header in _EXTRA_HEADERS:
            if df is not None and _present(df, m):
                row[header] = _pct_pm(r[f"{m}_mean"], r[f"{m}_std"]).replace("n/a", "—")
        row.update(_fmt_costs(r))
        rows.append(row)
    return pd.DataFrame(rows)


def eval_protocol_words(p: Mapping[str, Any] | None) -> str:
    """metrics.json's ``eval_protocol`` in words; an evaluation written before it was
    whole-image, one scale (docs/metrics.md#evaluation-protocols)."""
    if not p:
        return "whole image, single scale"
    words = ("whole image" if p.get("mode", "whole") == "whole" else
             f"slide {p['crop'][0]}x{p['crop'][1]}, stride {p['stride'][0]}x{p['stride'][1]}")
    scales = list(p.get("scales") or [1.0])
    words += ", single scale" if scales == [1.0] else f", scales {', '.join(f'{s:g}' for s in scales)}"
    return words + (", flip" if p.get("flip") else "")


def _context_line(df: pd.DataFrame) -> str:
    """Datasets, and the input sizes accuracy and cost were measured at."""
    parts = []
    for ds, g in df.groupby("dataset", sort=False):
        evals = sorted({s for s in g["eval_size"] if s})
        profs = sorted({s for s in g["profile_size"] if s})
        if evals and evals == profs:
            sizes = f"input size {', '.join(evals)} (HxW)"
        else:
            sizes = (
                f"evaluated at {', '.join(evals) or 'n/a'}, "
                f"profiled at {', '.join(profs) or 'n/a'} (HxW)"
            )
        sizes += f"; evaluated {' / '.join(sorted(set(g['eval_protocol'])))}"
        parts.append(f"**{ds}** — {sizes}")
    devices = []
    for dev, thr in df[["device", "threads"]].drop_duplicates().itertuples(index=False):
        if dev is None or (isinstance(dev, float) and math.isnan(dev)):
            continue
        t = "" if thr is None or pd.isna(thr) else f", {int(thr)} thread{'s' if int(thr) != 1 else ''}"
        devices.append(f"{dev}{t}")
    line = "Dataset" + ("s" if len(parts) > 1 else "") + ": " + "; ".join(parts) + "."
    if devices:
        line += f" Speed (fps, batch 1) measured on {'; '.join(devices)}."
    return line


def _hxw(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v)
    return str(v)


def protocol_words(train: Any) -> str:
    """The training scale of one run's protocol: epochs, crop, batch, optimizer and lr."""
    t = train if isinstance(train, Mapping) else {}
    parts = []
    if t.get("epochs") is not None:
        parts.append(f"{t['epochs']} epochs")
    if t.get("crop") is not None:
        parts.append(f"crop {_hxw(t['crop'])}")
    if t.get("batch_size") is not None:
        devices = int(t.get("devices") or 1)
        parts.append(f"batch {t['batch_size']}"
                     + (f" ({devices} devices x {t['batch_size'] // devices})" if devices > 1 else ""))
    if t.get("optimizer"):
        parts.append(f"{t['optimizer']}" + (f" lr {t['lr']:g}" if isinstance(t.get("lr"), (int, float)) else ""))
    return ", ".join(parts)


def _model_words(model: str, spec: Any) -> str:
    """``unet (width 16)``: a model and the parameters that set its size (its config's
    ``params``), or just its name when they are not known."""
    params = spec.get("params") if isinstance(spec, Mapping) else None
    if not isinstance(params, Mapping) or not params:
        return model if not isinstance(spec, Mapping) else f"{model} (default params)"
    return f"{model} ({', '.join(f'{k} {_hxw(v)}' for k, v in params.items())})"


def scale_line(df: pd.DataFrame) -> str:
    """The training scale the numbers were measured at, in one line: epochs, crop, batch and
    optimizer (per model when they differ), each model's size parameters (widths), seeds."""
    by_protocol: dict[str, list[str]] = {}
    for model, g in df.groupby("model", sort=False):
        words = protocol_words(g.iloc[0]["train"] if "train" in g.columns else None)
        by_protocol.setdefault(words, []).append(str(model))
    if list(by_protocol) == [""]:
        protocol = "protocol not recorded in run.json"
    elif len(by_protocol) == 1:
        protocol = next(iter(by_protocol))
    else:
        protocol = "; ".join(f"{w or 'protocol not recorded'} ({', '.join(m)})" for w, m in by_protocol.items())
    models = [_model_words(str(m), g.iloc[0]["model_spec"] if "model_spec" in g.columns else None)
              for m, g in df.groupby("model", sort=False)]
    seeds = ", ".join(dict.fromkeys(str(s) for s in df["seed"]))
    return f"**Training scale:** {protocol}. **Models:** {'; '.join(models)}. **Seeds:** {seeds}."


_ABLATION_NOTE = ("`ablation`: the study's ablations (config `studies.<study>.ablations`) a run belongs to; "
                  "— marks a run of the study's main matrix only, `main, <ablation>` one in both.")


def summary_markdown(df: pd.DataFrame, title: str | None = None) -> str:
    """summary.md: a first line with the dataset(s), input sizes and device; under it the
    training scale (:func:`scale_line`); the per-run table (with an ``ablation`` column when
    some run belongs to an ablation); and, when some (dataset, model, loss) has several
    seeds, a mean ± std table."""
    first = _context_line(df)
    if title:
        first = f"**{title}** · {first}"
    ablations = has_ablations(df)
    lines = [
        first,
        "",
        scale_line(df),
        "",
        "Metrics in % (2 decimals; `summary.csv` holds them as fractions in [0, 1]). "
        "params in millions (M), MACs in 10^9 multiply-accumulates (G) per image, "
        "fps at batch 1, MB = fp32 weights in 10^6 bytes." + (" " + _ABLATION_NOTE if ablations else ""),
        "",
        _markdown(format_summary(df), len(KEYS) + ablations),
        "",
    ]
    agg = aggregate_seeds(df)
    if agg is not None:
        lines += [
            "## Mean ± std over seeds",
            "",
            "Sample standard deviation (n - 1); metrics in %."
            + (" The mIoU interval of a row with several seeds resamples seeds and images together."
               if _present(df, "mIoU_ci_low") else ""),
            "",
            _markdown(format_aggregate(agg, df), 3 + ablations + 1),
            "",
        ]
    extras = [h for m, h in _EXTRA_HEADERS if _present(df, m)]
    if _present(df, "mIoU_ci_low") or extras:
        lines += [f"- {ci_note()}" if _present(df, "mIoU_ci_low") else "",
                  *([f"- {', '.join(extras)}: Boundary IoU, mIoU over the dataset's thin classes and recall "
                     "of small ground-truth segments (docs/metrics.md); “—”: a run evaluated without them."]
                    if extras else []), ""]
    else:
        lines += ["- No interval: these runs were evaluated without per-image statistics (an older segbench); "
                  "run `snakemake` again to re-evaluate them.", ""]
    return "\n".join(lines)


def write_tables(df: pd.DataFrame, out_dir: str | os.PathLike, title: str | None = None) -> list[Path]:
    """Write ``summary.csv`` (raw numbers) and ``summary.md`` into ``out_dir``, atomically."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    write_text(csv_path, summary_table(df).to_csv(index=False, lineterminator="\n"))
    write_text(md_path, summary_markdown(df, title))
    return [csv_path, md_path]


__all__ = [
    "COSTS",
    "METRICS",
    "SUMMARY_COLUMNS",
    "aggregate_seeds",
    "as_run",
    "collect_runs",
    "format_aggregate",
    "format_summary",
    "has_ablations",
    "scale_line",
    "read_history",
    "read_metrics",
    "read_profile",
    "read_run_json",
    "run_file",
    "run_label",
    "summary_markdown",
    "summary_table",
    "write_tables",
]
