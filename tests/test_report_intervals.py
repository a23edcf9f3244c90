"""Intervals in the figures and the cross-study table, fps with its spread over timing
repeats, and Pareto flags that count only differences beyond noise (issue 20)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segbench import stats
from segbench.cli import main
from segbench.errors import UserError
from segbench.report import cross, figures, tables

H, W = 32, 64
CLASSES = ["road", "car", "pole", "sky"]
TRAIN = {"epochs": 2, "batch_size": 4, "crop": [H, W], "optimizer": "adamw", "lr": 0.002}


# --------------------------------------------------------------------------- hand-built runs


def confusions(seed: int, accuracy: float, n_images: int = 30, jitter: float = 0.08) -> np.ndarray:
    """Per-image confusions int64 [N, C, C] (rows ground truth): every image has the same
    ground truth (so runs built here share their val images); a pixel of class c is right
    with probability ``accuracy`` (varied per image by ``jitter``), else predicted as c + 1."""
    gt = np.random.default_rng(0).integers(40, 200, size=(n_images, len(CLASSES)))  # the same for every run
    rng = np.random.default_rng(seed)
    conf = np.zeros((n_images, len(CLASSES), len(CLASSES)), dtype=np.int64)
    for i in range(n_images):
        p = float(np.clip(accuracy + jitter * rng.standard_normal(), 0.0, 1.0))
        for c in range(len(CLASSES)):
            right = rng.binomial(gt[i, c], p)
            conf[i, c, c] = right
            conf[i, c, (c + 1) % len(CLASSES)] = gt[i, c] - right
    return conf


def miou_by_hand(conf: np.ndarray) -> float:
    """mIoU of one confusion matrix [C, C], class by class (classes with union 0 skipped)."""
    ious = []
    for c in range(conf.shape[0]):
        tp = conf[c, c]
        union = conf[c, :].sum() + conf[:, c].sum() - tp
        if union:
            ious.append(tp / union)
    return float(np.mean(ious))


def write_profile(root: Path, model: str, fps: float, fps_std: float | None, macs: int, repeats: bool = True) -> Path:
    path = root / "profiles" / f"{model}-c{len(CLASSES)}-{H}x{W}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    prof = {"model": model, "arch": model, "input_size": [H, W], "params": 1_000_000, "macs": macs,
            "size_mb": 4.0, "fps": fps, "fps_batch": 1, "device": "cpu", "threads": 2, "warmup": 3,
            "iterations": 10, "channels_last": False}
    if repeats:  # a profile written before the repeats has none of these
        prof.update(fps_std=fps_std, fps_repeats=[fps] * 5, repeats=5)
    path.write_text(json.dumps(prof))
    return path


def write_run(root: Path, model: str, loss: str, seed: int, conf: np.ndarray | None, *, fps: float = 10.0,
              fps_std: float | None = 0.2, macs: int = 5_000_000_000, mIoU: float | None = None,
              dataset: str = "synthetic", repeats: bool = True) -> dict:
    """A run directory as evaluate writes it; ``conf`` None: an older run without per-image
    confusions (then ``mIoU`` gives its score)."""
    key = f"{dataset}/{model}/{loss}/s{seed}"
    d = root / "runs" / key
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({
        "run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed,
        "config": {"train": TRAIN}, "device": "cpu", "epochs": 2, "train_seconds": 3.0,
        "num_classes": len(CLASSES), "class_names": CLASSES,
    }))
    rows = ["epoch,train_loss,train_mIoU,train_aAcc,val_loss,val_mIoU,val_aAcc,lr,skipped_batches,epoch_seconds,time"]
    rows += [f"{e},1.0,0.3,0.6,1.1,0.3,0.5,0.001,0,0.6,{1_700_000_000 + e}" for e in (1, 2)]
    (d / "history.csv").write_text("\n".join(rows) + "\n")
    metrics = {"run_key": key, "aAcc": 0.8, "mAcc": 0.6, "mDice": 0.6, "IoU": [0.5] * len(CLASSES),
               "class_names": CLASSES, "num_images": 30, "input_size": [H, W]}
    if conf is None:
        metrics["mIoU"] = mIoU
    else:
        total = conf.sum(axis=0)
        metrics.update(mIoU=miou_by_hand(total), mIoU_ci95=list(stats.bootstrap_ci(conf)),
                       num_images=len(conf))
        np.save(d / "confusion.npy", total)
        np.save(d / "confusion_per_image.npy", conf)
    (d / "metrics.json").write_text(json.dumps(metrics))
    return {"run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed, "run_dir": str(d),
            "profile": str(write_profile(root, model, fps, fps_std, macs, repeats)), "groups": ["main"],
            "studies": ["demo", "cross_study"]}


def cells_of(line: str) -> list[str]:
    """The cells of a markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def row(table: pd.DataFrame, model: str, loss: str = "ce") -> pd.Series:
    return table.set_index(["model", "loss"]).loc[(model, loss)]


# --------------------------------------------------------------------------- fps with repeats


def test_profile_json_has_the_repeats_and_fps_is_their_mean(tmp_path):
    out = tmp_path / "p.json"
    spec = json.dumps({"arch": "unet", "params": {"width": 4}})
    assert main(["profile", "--model-spec", spec, "--classes", "3", "--size", "32x64", "--out", str(out),
                 "--warmup", "0", "--iterations", "2", "--threads", "1", "--channels-last", "false"]) == 0
    p = json.loads(out.read_text())
    assert p["repeats"] == 5 and len(p["fps_repeats"]) == 5  # the default number of repeats
    assert all(v > 0 for v in p["fps_repeats"])
    assert p["fps"] == pytest.approx(statistics.fmean(p["fps_repeats"]), rel=1e-12)
    assert p["fps_std"] == pytest.approx(float(np.std(p["fps_repeats"], ddof=1)), rel=1e-9)

    from segbench.profiling import profile_model

    one = profile_model("unet", {"width": 4}, 3, (32, 64), warmup=0, iterations=1, repeats=1, threads=1,
                        channels_last=False)
    assert len(one["fps_repeats"]) == 1 and one["fps"] == one["fps_repeats"][0] and one["fps_std"] is None
    with pytest.raises(UserError, match="repeats"):
        profile_model("unet", {"width": 4}, 3, (32, 64), repeats=0)


# --------------------------------------------------------------------------- the cross table


def test_cross_table_interval_equals_an_independent_stats_call(tmp_path):
    a0, a1, b0 = confusions(1, 0.8), confusions(2, 0.8), confusions(3, 0.6)
    runs = [write_run(tmp_path, "unet", "ce", 0, a0), write_run(tmp_path, "unet", "ce", 1, a1),
            write_run(tmp_path, "segnet", "ce", 0, b0, fps=5.0, fps_std=0.1)]
    table = cross.cross_table(cross.collect_cross_runs(runs))
    seg = row(table, "segnet")  # one seed: the bootstrap over its images
    assert (seg["mIoU_ci_low"], seg["mIoU_ci_high"]) == pytest.approx(stats.bootstrap_ci(b0), abs=1e-12)
    assert seg["mIoU_mean"] == pytest.approx(miou_by_hand(b0.sum(axis=0)))
    unet = row(table, "unet")  # two seeds: images and seeds resampled
    assert (unet["mIoU_ci_low"], unet["mIoU_ci_high"]) == pytest.approx(tables.seeds_interval([a0, a1]), abs=1e-12)
    assert unet["mIoU_ci_low"] < unet["mIoU_mean"] < unet["mIoU_ci_high"]
    assert (unet["fps"], unet["fps_std"], seg["fps_std"]) == (10.0, 0.2, 0.1)
    md = cross.cross_markdown(table, cross.collect_cross_runs(runs))
    cells = cells_of(next(l for l in md.splitlines() if "| segnet " in l))
    assert f"[{100 * seg['mIoU_ci_low']:.2f}, {100 * seg['mIoU_ci_high']:.2f}]" in cells and "5.0 ± 0.1" in cells
    assert stats.CI_METHOD in md


# --------------------------------------------------------------------------- Pareto flags and noise


def test_two_models_inside_the_noise_are_both_on_the_front(tmp_path):
    # the case: b is 0.3 fps faster and a little better on the means, both inside the noise
    a, b = confusions(12, 0.75), confusions(112, 0.76)
    worse = confusions(13, 0.45)  # clearly worse and slower
    runs = [write_run(tmp_path, "a", "ce", 0, a, fps=10.0, fps_std=0.2),
            write_run(tmp_path, "b", "ce", 0, b, fps=10.3, fps_std=0.2),
            write_run(tmp_path, "worse", "ce", 0, worse, fps=5.0, fps_std=0.2, macs=9_000_000_000)]
    table = cross.cross_table(cross.collect_cross_runs(runs))
    ra, rb = row(table, "a"), row(table, "b")
    # the set-up: their intervals overlap, and the plain Pareto rule would drop a
    assert ra["mIoU_mean"] < rb["mIoU_mean"] and ra["mIoU_ci_high"] > rb["mIoU_ci_low"]
    assert not stats.bootstrap_delta(b, a)["low"] > 0
    plain = cross.pareto_mask(table["fps"], table["mIoU_mean"])
    assert dict(zip(table["model"], plain))["a"] is np.False_
    # noise-aware: both on either front; the worse, slower, costlier one off both
    flags = table.set_index("model")[["pareto_fps", "pareto_macs"]]
    assert flags.loc["a"].tolist() == [True, True] and flags.loc["b"].tolist() == [True, True]
    assert flags.loc["worse"].tolist() == [False, False]
    md = cross.cross_markdown(table, cross.collect_cross_runs(runs))
    assert "beyond noise" in md and "2 x the larger" in md


def test_a_difference_beyond_the_noise_still_dominates(tmp_path):
    same = confusions(21, 0.75)
    better, lower = confusions(22, 0.9), confusions(23, 0.74)
    runs = [write_run(tmp_path, "a", "ce", 0, same, fps=10.0, fps_std=0.05),
            write_run(tmp_path, "b", "ce", 0, same, fps=10.3, fps_std=0.05),  # a's mIoU, 0.3 fps = 6 std faster
            write_run(tmp_path, "c", "ce", 0, better, fps=10.0, fps_std=0.2, macs=6_000_000_000),
            write_run(tmp_path, "d", "ce", 0, lower, fps=20.0, fps_std=0.2, macs=4_000_000_000)]
    table = cross.cross_table(cross.collect_cross_runs(runs)).set_index("model")
    assert table.loc["c", "mIoU_ci_low"] > table.loc["b", "mIoU_ci_high"]  # the set-up: c clearly better
    assert table.loc["d", "mIoU_mean"] < table.loc["a", "mIoU_mean"]
    # fps: b is a's mIoU, faster beyond the noise; c is clearly better, slower only inside the noise
    # (0.3 fps < 2 x 0.2): a and b are off; d, twice as fast, is lower in mIoU: on
    assert table["pareto_fps"].to_dict() == {"c": True, "b": False, "a": False, "d": True}
    # MACs: c costs more: a and b (tied) stay on; d costs less but scores lower than a: on
    assert table["pareto_macs"].to_dict() == {"c": True, "b": True, "a": True, "d": True}


def test_without_noise_the_rule_is_the_plain_pareto_front():
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(1, 12))
        y = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.random(n)
        x = rng.integers(0, 4, n).astype(float) if trial % 3 else rng.random(n)
        acc = np.sign(y[:, None] - y[None, :]).astype(int)  # [j, i]: j better than i
        cost = np.sign(x[:, None] - x[None, :]).astype(int)
        assert (cross.noise_pareto_mask(y, acc, cost) == cross.pareto_mask(x, y)).all(), (x, y)


def test_orders_by_hand():
    # fps: 0.3 apart; noise 2 x 0.2 = 0.4 -> inside; 2 x 0.1 = 0.2 -> beyond; no std: 5% of 10.3
    assert cross.fps_orders([10.0, 10.3], [0.2, 0.2]).tolist() == [[0, 0], [0, 0]]
    assert cross.fps_orders([10.0, 10.3], [0.1, 0.05]).tolist() == [[0, -1], [1, 0]]
    assert cross.fps_orders([10.0, 10.3], [0.1, np.nan]).tolist() == [[0, 0], [0, 0]]
    assert cross.fps_orders([10.0, 11.0], [np.nan, np.nan]).tolist() == [[0, -1], [1, 0]]
    assert cross.macs_orders([5.0, 5.0, 9.0]).tolist() == [[0, 0, 1], [0, 0, 1], [-1, -1, 0]]
    good, bad = confusions(31, 0.9), confusions(32, 0.5)
    order, tested = cross.miou_orders([0.8, 0.4, 0.6], [[good], [bad], None])
    assert order.tolist() == [[0, 1, 1], [-1, 0, -1], [-1, 1, 0]]
    assert tested.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    same, _ = cross.miou_orders([0.8, 0.8], [[good], [good]])
    assert same.tolist() == [[0, 0], [0, 0]]


# --------------------------------------------------------------------------- figures and old runs


def test_axes_are_not_zoomed_onto_noise():
    lo, hi = figures.miou_limits([50.0, 50.3])
    assert hi - lo == pytest.approx(figures.MIN_MIOU_SPAN) and lo < 50.0 and hi > 50.3
    lo, hi = figures.miou_limits([20.0, 70.0])  # wide data keeps its own range
    assert lo < 20.0 and hi > 70.0 and hi - lo < 60
    assert figures.miou_limits([1.0, 2.0]) == (0.0, pytest.approx(figures.MIN_MIOU_SPAN))  # not below 0
    lo, hi = figures.cost_limits([10.0, 10.3])
    assert hi / lo == pytest.approx(figures.MIN_COST_RATIO) and lo < 10.0 and hi > 10.3
    lo, hi = figures.cost_limits([1.0, 80.0])
    assert lo < 1.0 and hi > 80.0 and hi / lo < 150  # the data's 80x and some room


def test_old_runs_and_profiles_still_render(tmp_path):
    runs = [write_run(tmp_path, "unet", "ce", 0, confusions(41, 0.8)),
            write_run(tmp_path, "old", "ce", 0, None, mIoU=0.85, fps=20.0, repeats=False),
            write_run(tmp_path, "old", "ce", 1, None, mIoU=0.87, fps=20.0, repeats=False)]
    out = tmp_path / "cross"
    written = cross.build_cross_report(runs, out)
    assert all(p.stat().st_size > 0 for p in written)
    t = pd.read_csv(out / "tables" / "cross_study.csv").set_index("model")
    assert np.isnan(t.loc["old", "mIoU_ci_low"]) and np.isnan(t.loc["old", "fps_std"])
    assert np.isfinite(t.loc["unet", "mIoU_ci_low"]) and t.loc["unet", "fps_std"] == 0.2
    md = (out / "tables" / "cross_study.md").read_text()
    cells = cells_of(next(l for l in md.splitlines() if "| old " in l))
    assert "—" in cells and "20.0 ± —" in cells and "no interval: old / ce" in md
    # the old method is faster and better on the means: compared as it is, it dominates unet
    assert not t.loc["unet", "pareto_fps"] and t.loc["old", "pareto_fps"]
    df = figures.with_fps_std(tables.collect_runs(runs), runs)
    assert figures.speed_accuracy(df, tmp_path / "sa.png").stat().st_size > 0
    pts = figures.method_points(df).set_index("model")
    assert np.isnan(pts.loc["old", "mIoU_low"]) and pts.loc["unet", "mIoU_low"] < pts.loc["unet", "mIoU"]
    # a damaged spread names the file
    Path(runs[0]["profile"]).write_text(json.dumps({**json.loads(Path(runs[0]["profile"]).read_text()),
                                                    "fps_std": "fast"}))
    with pytest.raises(Exception, match=r"unet-c4-32x64\.json.*fps_std"):
        cross.collect_cross_runs(runs)
