"""The per-study report, on hand-written run directories in the formats of docs/outputs.md."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest

try:
    import segbench  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from segbench.report import figures, tables  # noqa: E402

CLASSES = ["road", "car", "person", "sky"]
PALETTE = [[128, 64, 128], [0, 0, 142], [220, 20, 60], [70, 130, 180]]
H, W, K = 24, 48, 3

# Two seeds of unet/ce: mean and sample std (n - 1) worked out by hand below.
#   mIoU 0.5123, 0.5323 -> mean 0.5223, std |a - b| / sqrt(2) = 0.02 / 1.41421 = 0.014142
#   aAcc 0.8000, 0.8400 -> mean 0.8200, std 0.028284
RUNS = {
    ("unet", "ce", 0): dict(mIoU=0.5123, aAcc=0.80, mAcc=0.61, mDice=0.655,
                            IoU=[0.70, 0.50, float("nan"), 0.3369]),
    ("unet", "ce", 1): dict(mIoU=0.5323, aAcc=0.84, mAcc=0.63, mDice=0.675,
                            IoU=[0.72, 0.52, float("nan"), 0.3569]),
    ("fastscnn", "dice", 0): dict(mIoU=0.4012, aAcc=0.75, mAcc=0.55, mDice=0.52,
                                  IoU=[0.60, 0.31, 0.12, 0.5748]),
}
PROFILES = {
    "unet": dict(arch="unet", params=31040000, macs=54_200_000_000, size_mb=124.16, fps=12.345),
    "fastscnn": dict(arch="fastscnn", params=1_140_000, macs=910_000_000, size_mb=4.58, fps=87.66),
}


def _profile(root: Path, model: str, dataset: str, classes: int) -> Path:
    path = root / "profiles" / f"{model}-c{classes}-{H}x{W}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        p = PROFILES[model]
        path.write_text(json.dumps({
            "model": model, "arch": p["arch"], "num_classes": classes, "input_size": [H, W],
            "params": p["params"], "macs": p["macs"], "size_mb": p["size_mb"], "fps": p["fps"],
            "fps_batch": 1, "device": "cpu", "threads": 2, "warmup": 3, "iterations": 10,
        }))
    return path


def make_run(root: Path, dataset: str, model: str, loss: str, seed: int, m: dict,
             classes: list[str] = CLASSES, epochs: int = 4) -> dict:
    key = f"{dataset}/{model}/{loss}/s{seed}"
    d = root / "runs" / key
    d.mkdir(parents=True)
    c = len(classes)
    (d / "run.json").write_text(json.dumps({
        "run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed,
        "config": {"epochs": epochs}, "config_hash": "abc123", "num_classes": c,
        "class_names": classes, "palette": PALETTE[:c], "device": "cpu", "epochs": epochs,
        "train_seconds": 12.5, "resumed_from_epoch": None,
    }))
    rows = ["epoch,train_loss,train_mIoU,train_aAcc,val_loss,val_mIoU,val_aAcc,lr,skipped_batches,epoch_seconds,time"]
    rng = np.random.default_rng(seed + len(model))
    for e in range(1, epochs + 1):
        f = e / epochs
        rows.append(
            f"{e},{1.6 - 0.9 * f + 0.05 * rng.random():.4f},{0.2 + 0.35 * f:.4f},{0.5 + 0.35 * f:.4f},"
            f"{1.7 - 0.8 * f:.4f},{0.15 + m['mIoU'] * f * 0.7:.4f},{0.45 + 0.35 * f:.4f},"
            f"{0.01 * (1 - f) + 1e-4:.6f},0,3.1,{1_700_000_000 + 3 * e}"
        )
    (d / "history.csv").write_text("\n".join(rows) + "\n")
    (d / "metrics.json").write_text(json.dumps({
        "run_key": key, "mIoU": m["mIoU"], "aAcc": m["aAcc"], "mAcc": m["mAcc"], "mDice": m["mDice"],
        "IoU": m["IoU"], "class_names": classes, "num_images": 10, "input_size": [H, W],
    }))  # json.dumps writes NaN for the absent class, as the evaluate step does
    yy, xx = np.mgrid[0:H, 0:W]
    labels = np.stack([((xx // 12 + yy // 12 + k) % c) for k in range(K)]).astype(np.uint8)
    labels[:, :3, :] = 255
    preds = labels.copy()
    preds[preds == 255] = 0
    preds[:, H // 2 :, : W // 3] = (seed + len(model)) % c
    images = (np.stack([labels] * 3, axis=-1) * 40 + 30).astype(np.uint8)
    np.savez(d / "samples.npz", images=images, labels=labels, preds=preds,
             names=np.array([f"{dataset}_city_{k:06d}_leftImg8bit.png" for k in range(K)]))
    return {"run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed,
            "run_dir": str(d), "profile": str(_profile(root, model, dataset, c))}


@pytest.fixture
def runs(tmp_path):
    return [make_run(tmp_path, "synthetic", mo, lo, s, m) for (mo, lo, s), m in RUNS.items()]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_collect_runs_reads_every_file(runs):
    df = tables.collect_runs(runs)
    assert len(df) == 3
    for col in ("dataset", "model", "loss", "seed", "mIoU", "aAcc", "mAcc", "mDice",
                "params", "MACs", "fps", "MB", "run_key", "run_dir"):
        assert col in df.columns
    r = df.set_index("run_key").loc["synthetic/unet/ce/s0"]
    assert (r["dataset"], r["model"], r["loss"], r["seed"]) == ("synthetic", "unet", "ce", 0)
    assert r["mIoU"] == 0.5123 and r["aAcc"] == 0.80 and r["mAcc"] == 0.61 and r["mDice"] == 0.655
    assert r["params"] == 31040000 and r["MACs"] == 54_200_000_000
    assert r["fps"] == 12.345 and r["MB"] == 124.16
    assert r["epochs"] == 4 and r["eval_size"] == f"{H}x{W}" and r["threads"] == 2


def test_tables_csv_and_markdown(runs, tmp_path):
    df = tables.collect_runs(runs)
    csv, md = tables.write_tables(df, tmp_path / "out" / "tables")
    assert csv.name == "summary.csv" and md.name == "summary.md"

    back = pd.read_csv(csv)
    assert list(back.columns) == list(tables.SUMMARY_COLUMNS)
    assert list(back["run_key"]) == [r["run_key"] for r in runs]  # the order given
    row = back.iloc[0]
    assert row["mIoU"] == pytest.approx(0.5123) and row["params"] == 31040000
    assert row["MACs"] == 54_200_000_000 and row["MB"] == pytest.approx(124.16)

    text = md.read_text()
    first = text.splitlines()[0]
    assert "synthetic" in first and f"{H}x{W}" in first and "cpu, 2 threads" in first
    assert "Metrics in %" in text and "fractions" in text
    line = next(l for l in text.splitlines() if "| unet" in l and "| 0 " in l)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["synthetic", "unet", "ce", "0", "51.23", "80.00", "61.00", "65.50",
                     "31.04M", "54.20G", "12.3", "124.2"]
    fast = next(l for l in text.splitlines() if "| fastscnn" in l)
    assert "1.14M" in fast and "0.91G" in fast and "87.7" in fast and "4.6" in fast


def test_mean_std_over_seeds(runs, tmp_path):
    df = tables.collect_runs(runs)
    agg = tables.aggregate_seeds(df).set_index(["model", "loss"])
    unet = agg.loc[("unet", "ce")]
    assert unet["seeds"] == 2
    assert unet["mIoU_mean"] == pytest.approx(0.5223)
    assert unet["mIoU_std"] == pytest.approx(0.02 / math.sqrt(2))
    assert unet["aAcc_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert math.isnan(agg.loc[("fastscnn", "dice"), "mIoU_std"])
    _, md = tables.write_tables(df, tmp_path / "t")
    text = md.read_text()
    assert "Mean ± std over seeds" in text
    assert "52.23 ± 1.41" in text and "82.00 ± 2.83" in text
    # a single seed per group: no aggregate table
    assert tables.aggregate_seeds(df[df["seed"] == 0]) is None
    _, md1 = tables.write_tables(df[df["seed"] == 0], tmp_path / "t1")
    assert "±" not in md1.read_text()


def test_study_report_writes_valid_pngs(runs, tmp_path):
    out = tmp_path / "studies" / "demo"
    written = figures.build_study_report("demo", runs, out)
    expected = [out / p for p in figures.expected_outputs(["synthetic"])]
    assert sorted(written) == sorted(expected)
    for p in expected:
        assert p.is_file() and p.stat().st_size > 0, p
    for p in (out / "figures").glob("*.png"):
        w, h = png_size(p)
        assert 400 <= w <= 4000 and 200 <= h <= 3000, (p.name, w, h)
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    first = (out / "tables" / "summary.md").read_text().splitlines()[0]
    assert "demo" in first and "synthetic" in first and f"{H}x{W}" in first


def test_study_report_several_datasets(runs, tmp_path):
    other = make_run(tmp_path, "toy", "unet", "ce", 0, dict(
        mIoU=0.45, aAcc=0.7, mAcc=0.5, mDice=0.55, IoU=[0.4, 0.5, float("nan")]),
        classes=["a", "b", "c"])
    out = tmp_path / "studies" / "mixed"
    written = figures.build_study_report("mixed", [runs[0], runs[2], other], out)
    names = {p.name for p in written}
    assert {"per_class_iou_synthetic.png", "per_class_iou_toy.png",
            "qualitative_synthetic.png", "qualitative_toy.png"} <= names
    assert "qualitative.png" not in names
    first = (out / "tables" / "summary.md").read_text().splitlines()[0]
    assert "mixed" in first and "Datasets" in first and "synthetic" in first and "toy" in first
    assert sorted(written) == sorted(out / p for p in figures.expected_outputs(["synthetic", "toy"]))
    for p in written:
        assert p.is_file() and p.stat().st_size > 0


def test_figures_accept_run_directories(runs, tmp_path):
    dirs = [r["run_dir"] for r in runs]
    p = figures.training_curves(dirs, tmp_path / "c.png")
    assert png_size(p)[0] > 400
    p = figures.qualitative_grid(dirs[:2], tmp_path / "q.png", palette=PALETTE, max_samples=2)
    assert png_size(p)[1] > 100


def test_missing_metrics_names_file_run_and_step(runs, tmp_path):
    Path(runs[1]["run_dir"], "metrics.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        tables.collect_runs(runs)
    msg = str(e.value)
    assert "metrics.json" in msg and "synthetic/unet/ce/s1" in msg
    assert "segbench evaluate" in msg and "snakemake" in msg
    out = tmp_path / "studies" / "broken"
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        figures.build_study_report("broken", runs, out)
    assert not out.exists() or not any(out.rglob("*")), "nothing is written when an input is missing"


def test_missing_profile_and_samples(runs, tmp_path):
    Path(runs[0]["profile"]).unlink()
    with pytest.raises(FileNotFoundError, match="segbench profile"):
        tables.collect_runs(runs[:1])
    Path(runs[2]["run_dir"], "samples.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"fastscnn.*samples\.npz"):
        figures.build_study_report("x", runs[2:], tmp_path / "x")


def test_report_does_not_import_torch_or_mlflow():
    src = Path(__file__).resolve().parents[1] / "src"
    code = (
        f"import sys; sys.path.insert(0, {str(src)!r}); "
        "import segbench.report.tables, segbench.report.figures; "
        "bad = [m for m in ('torch', 'mlflow', 'matplotlib.pyplot') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- curves and scale


def _set_losses(run: dict, train: list[float], val: list[float]) -> None:
    """Give the run's history.csv these train and val losses per epoch (other columns kept)."""
    path = Path(run["run_dir"], "history.csv")
    head, *rows = path.read_text().splitlines()
    cols = head.split(",")
    out = [head]
    for row, t, v in zip(rows, train, val, strict=True):
        cells = row.split(",")
        cells[cols.index("train_loss")], cells[cols.index("val_loss")] = str(t), str(v)
        out.append(",".join(cells))
    path.write_text("\n".join(out) + "\n")


@pytest.fixture
def loss_runs(runs, tmp_path):
    """unet/ce (two seeds), fastscnn/dice, unet/ce_contrastive (FRM's loss) and fastscnn/bal,
    whose first epoch's train loss (25) is far above the rest (9 .. 8.2)."""
    frm = make_run(tmp_path, "synthetic", "unet", "ce_contrastive", 0, RUNS[("unet", "ce", 0)])
    frm["loss_spec"] = {"type": "ce_contrastive"}
    bal = make_run(tmp_path, "synthetic", "fastscnn", "bal", 0, RUNS[("fastscnn", "dice", 0)])
    bal["loss_spec"] = {"type": "bal"}
    every = [*runs, frm, bal]
    for run, train, val in zip(every, (
            [1.3, 1.2, 1.0, 0.9], [1.25, 1.15, 1.0, 0.95], [0.9, 0.8, 0.75, 0.7], [8.6, 7.3, 7.0, 6.8],
            [25.0, 9.0, 8.5, 8.2]), (
            [1.35, 1.25, 1.1, 1.0], [1.3, 1.2, 1.1, 1.05], [0.92, 0.85, 0.8, 0.78], [1.5, 1.15, 0.97, 0.9],
            [9.5, 9.2, 9.0, 8.8])):
        _set_losses(run, train, val)
    return every


def _data_lines(ax):
    return [l for l in ax.lines if l.get_gid() != "first-epoch-outside"]


def test_curves_are_small_multiples_with_one_loss_per_axis(loss_runs, tmp_path):
    fig = figures.curves_figure(loss_runs, title="Study demo: training curves")
    # one row per model / loss (unet/ce's two seeds share a row), four panels each
    axes = np.array(fig.axes).reshape(-1, 4)
    assert axes.shape == (4, 4)
    labels = [[ax.get_ylabel() for ax in row] for row in axes]
    assert [r[0] for r in labels] == ["train loss\nCE", "train loss\nDice", "train loss\nCE + contrastive",
                                      "train loss\nBAL"]
    # FRM's val loss has no contrastive term, and its panel says so
    assert [r[1] for r in labels] == ["val loss\nCE", "val loss\nDice", "val loss\nCE only", "val loss\nBAL"]
    assert {r[2] for r in labels} == {"mIoU (%)"} and {r[3] for r in labels} == {"pixel accuracy (%)"}
    # no axis holds two loss functions; FRM's train and val losses are two
    for row in axes:
        for ax in row[:2]:
            assert len({l.get_gid() for l in _data_lines(ax)}) == 1, ax.get_ylabel()
    frm_train, frm_val = ({l.get_gid() for l in _data_lines(ax)} for ax in axes[2, :2])
    assert frm_train != frm_val
    assert len(_data_lines(axes[0, 0])) == 2  # a line per seed
    # one colour per loss, the same in every panel of its row, different between losses
    colours = [{matplotlib.colors.to_hex(l.get_color()) for ax in row for l in _data_lines(ax)} for row in axes]
    assert all(len(c) == 1 for c in colours) and len(set.union(*colours)) == 4
    # shared axes: every mIoU panel alike; CE's train and val panels alike (one function),
    # FRM's not
    assert len({axes[i, 2].get_ylim() for i in range(4)}) == 1
    assert axes[0, 0].get_ylim() == axes[0, 1].get_ylim()
    assert axes[2, 0].get_ylim() != axes[2, 1].get_ylim()
    # BAL's first epoch (25) does not squash its axis: it is marked at the top with its value
    lo, hi = axes[3, 0].get_ylim()
    assert 9.0 <= hi < 12 and lo <= 8.2
    assert [l.get_gid() for l in axes[3, 0].lines].count("first-epoch-outside") == 1
    assert "25" in [t.get_text() for t in axes[3, 0].texts]
    # a first epoch near the rest stays inside the limits, unmarked
    lo, hi = axes[0, 0].get_ylim()
    assert lo <= 0.9 and hi >= 1.35 and all(l.get_gid() != "first-epoch-outside" for l in axes[0, 0].lines)
    path = figures.training_curves(loss_runs, tmp_path / "curves.png")
    w, h = png_size(path)
    assert 1000 <= w <= 2000 and 600 <= h <= 1500, (w, h)
    # a diverged epoch (inf, as history.csv writes it) is left out of the curve and the limits
    _set_losses(loss_runs[2], [0.9, float("inf"), 0.75, 0.7], [0.92, 0.85, float("nan"), 0.78])
    dice = np.array(figures.curves_figure(loss_runs).axes).reshape(-1, 4)[1]
    assert [len(l.get_xdata()) for l in _data_lines(dice[0])] == [3]
    assert all(np.isfinite(dice[0].get_ylim())) and dice[0].get_ylim()[1] < 1.0


def test_report_summary_states_scale_and_marks_ablations(runs, tmp_path):
    """`segbench report`: summary.md's line under the title gives the training scale; rows of
    an ablation are marked in an `ablation` column, explained under the table."""
    from segbench.cli import main

    train = {"epochs": 4, "crop": [H, W], "batch_size": 2, "optimizer": "adamw", "lr": 0.002}
    for run in runs:
        path = Path(run["run_dir"], "run.json")
        info = json.loads(path.read_text())
        info["config"] = {"train": train}
        path.write_text(json.dumps(info))
    runs[0]["model_spec"] = runs[1]["model_spec"] = {"arch": "unet", "params": {"width": 16}}
    runs[1]["groups"] = ["main", "widths"]
    runs[2]["model_spec"], runs[2]["groups"] = {"arch": "fastscnn"}, ["widths"]
    spec = {"name": "demo", "paper": None, "cross": False,
            "ablations": {"widths": {"table": None, "description": ""}}}
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    out = tmp_path / "studies" / "demo"
    assert main(["report", "demo", "--runs", f"@{tmp_path / 'runs.json'}", "--study-spec", json.dumps(spec),
                 "--out", str(out)]) == 0
    lines = (out / "tables" / "summary.md").read_text().splitlines()
    assert lines[0].startswith("**Study `demo`**")
    assert lines[2] == ("**Training scale:** 4 epochs, crop 24x48, batch 2, adamw lr 0.002. "
                        "**Models:** unet (width 16); fastscnn (default params). **Seeds:** 0, 1.")
    assert "`ablation`: the study's ablations" in "\n".join(lines)
    header = next(l for l in lines if l.startswith("| dataset"))
    assert [c.strip() for c in header.strip("|").split("|")][:6] == [
        "dataset", "model", "loss", "seed", "ablation", "mIoU (%)"]
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines if l.startswith("| synthetic")]
    assert [r[4] for r in rows[:3]] == ["—", "main, widths", "widths"]
    # the mean ± std table marks them too (unet/ce: its first seed's groups)
    assert [r[3] for r in rows[3:]] == ["—", "widths"]
    html = (out / "tables" / "summary.html").read_text()
    assert "main, widths" in html and "Training scale:" in html
