"""The cross-study report (table + Pareto figures) and the augmentation figure, on
hand-written run directories in the formats of docs/outputs.md."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segbench.report import augment_figure, cross

H, W = 32, 64
TRAIN = {"epochs": 5, "batch_size": 4, "crop": [H, W], "scale": [0.75, 1.5], "optimizer": "adamw", "lr": 0.002}

# (dataset, model, loss, seed) -> (mIoU, aAcc, mAcc), chosen so the means, stds and fronts
# are easy to check by hand.
METRICS = {
    ("synthetic", "unet", "ce", 0): (0.50, 0.80, 0.60),
    ("synthetic", "unet", "ce", 1): (0.54, 0.84, 0.64),
    ("synthetic", "unet", "dice", 0): (0.48, 0.78, 0.58),
    ("synthetic", "fastscnn", "ce", 0): (0.40, 0.70, 0.50),
    ("synthetic", "fastscnn", "ce", 1): (0.42, 0.74, 0.52),
    ("synthetic", "segnet", "ce", 0): (0.45, 0.75, 0.55),
    ("synthetic", "gradnet", "dice", 0): (0.47, 0.77, 0.57),
    ("toy", "unet", "ce", 0): (0.60, 0.90, 0.70),
    ("toy", "fastscnn", "ce", 0): (0.30, 0.60, 0.40),
}
# model -> (params, MACs, fps, MB)
PROFILES = {
    "unet": (31_000_000, 50_000_000_000, 10.0, 124.0),
    "fastscnn": (1_100_000, 1_000_000_000, 80.0, 4.4),
    "segnet": (29_000_000, 60_000_000_000, 5.0, 116.0),
    "gradnet": (2_000_000, 5_000_000_000, 8.0, 8.0),
}
STUDIES = {
    ("unet", "ce"): ["unet_segnet", "gradnet", "cross_study"],
    ("unet", "dice"): ["gradnet", "cross_study"],
    ("segnet", "ce"): ["unet_segnet", "cross_study"],
    ("gradnet", "dice"): ["gradnet", "cross_study"],
}  # fastscnn/ce: no `studies` key at all


def make_profile(root: Path, model: str) -> Path:
    path = root / "profiles" / f"{model}-{H}x{W}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        params, macs, fps, mb = PROFILES[model]
        path.write_text(json.dumps({
            "model": model, "input_size": [H, W], "params": params, "macs": macs, "size_mb": mb,
            "fps": fps, "fps_batch": 1, "device": "cpu", "threads": 2, "warmup": 3, "iterations": 10,
        }))
    return path


def make_run(root: Path, dataset: str, model: str, loss: str, seed: int, m: tuple, train=TRAIN) -> dict:
    key = f"{dataset}/{model}/{loss}/s{seed}"
    d = root / "runs" / key
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({
        "run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed,
        "config": {"train": train}, "device": "cpu", "epochs": train["epochs"], "train_seconds": 3.0,
        "num_classes": 3, "class_names": ["a", "b", "c"],
    }))
    rows = ["epoch,train_loss,train_mIoU,train_aAcc,val_loss,val_mIoU,val_aAcc,lr,skipped_batches,epoch_seconds,time"]
    rows += [f"{e},{1.5 - 0.2 * e:.3f},0.3,0.6,{1.6 - 0.2 * e:.3f},{m[0] * e / 5:.4f},0.5,0.001,0,0.6,{1_700_000_000 + e}"
             for e in range(1, train["epochs"] + 1)]
    (d / "history.csv").write_text("\n".join(rows) + "\n")
    (d / "metrics.json").write_text(json.dumps({
        "run_key": key, "mIoU": m[0], "aAcc": m[1], "mAcc": m[2], "mDice": m[0] + 0.1, "IoU": [m[0]] * 3,
        "class_names": ["a", "b", "c"], "num_images": 4, "input_size": [H, W],
    }))
    run = {"run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed,
           "run_dir": str(d), "profile": str(make_profile(root, model)), "groups": ["main"],
           "model_spec": {"arch": model}, "loss_spec": {"type": loss}}
    if (model, loss) in STUDIES:
        run["studies"] = STUDIES[(model, loss)]
    return run


@pytest.fixture
def runs(tmp_path):
    return [make_run(tmp_path, *k, m) for k, m in METRICS.items()]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def png_pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


# --------------------------------------------------------------------------- Pareto


def brute_force_front(x, y, maximize_x, maximize_y) -> np.ndarray:
    sx, sy = (1 if maximize_x else -1), (1 if maximize_y else -1)
    n = len(x)
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if not (np.isfinite(x[i]) and np.isfinite(y[i])):
            continue
        dominated = False
        for j in range(n):
            if j == i or not (np.isfinite(x[j]) and np.isfinite(y[j])):
                continue
            ge = sx * x[j] >= sx * x[i] and sy * y[j] >= sy * y[i]
            gt = sx * x[j] > sx * x[i] or sy * y[j] > sy * y[i]
            if ge and gt:
                dominated = True
                break
        out[i] = not dominated
    return out


@pytest.mark.parametrize("maximize_x", [True, False])
@pytest.mark.parametrize("maximize_y", [True, False])
def test_pareto_matches_brute_force_on_random_points(maximize_x, maximize_y):
    rng = np.random.default_rng(1234)
    for trial in range(300):
        n = int(rng.integers(1, 25))
        if trial % 2:  # few distinct values: many ties
            x = rng.integers(0, 5, n).astype(float)
            y = rng.integers(0, 5, n).astype(float)
        else:
            x, y = rng.random(n), rng.random(n)
        if trial % 7 == 0:
            x[rng.integers(0, n)] = np.nan
        got = cross.pareto_mask(x, y, maximize_x=maximize_x, maximize_y=maximize_y)
        want = brute_force_front(x, y, maximize_x, maximize_y)
        assert got.dtype == bool and (got == want).all(), (x, y, got, want)


def test_pareto_hand_made_with_ties():
    #          A       A'      B       C       D         E         F        G (NaN)
    x = [1.0, 1.0, 2.0, 0.0, 0.5, 1.0, 2.0, np.nan]
    y = [1.0, 1.0, 0.0, 2.0, 0.5, 0.5, 0.0, 5.0]
    # A and A' are equal: both on the front; B and F equal: both on; C on (best y);
    # D dominated by A; E dominated by A (same x, lower y); G has a NaN: off.
    assert cross.pareto_mask(x, y).tolist() == [True, True, True, True, False, False, True, False]
    # minimise x, maximise y (MACs): C (x 0, y 2) dominates everything else
    assert cross.pareto_mask(x, y, maximize_x=False).tolist() == [False] * 3 + [True] + [False] * 4
    assert cross.pareto_mask([], []).tolist() == []
    assert cross.pareto_mask([3.0], [1.0]).tolist() == [True]


# --------------------------------------------------------------------------- table


def test_cross_table_csv_by_hand(runs, tmp_path):
    out = tmp_path / "studies" / "cross_study"
    written = cross.build_cross_report(runs, out, title="Cross study")
    assert sorted(written) == sorted(out / p for p in cross.expected_cross_outputs())
    assert cross.expected_cross_outputs() == ["tables/cross_study.csv", "tables/cross_study.md",
                                              "figures/pareto_macs.png", "figures/pareto_fps.png"]
    t = pd.read_csv(out / "tables" / "cross_study.csv", keep_default_na=False, na_values=[""])
    assert list(t.columns) == list(cross.CROSS_COLUMNS)
    # sorted by dataset (in order of appearance), then mIoU descending
    assert [(r.dataset, r.model, r.loss) for r in t.itertuples()] == [
        ("synthetic", "unet", "ce"), ("synthetic", "unet", "dice"), ("synthetic", "gradnet", "dice"),
        ("synthetic", "segnet", "ce"), ("synthetic", "fastscnn", "ce"),
        ("toy", "unet", "ce"), ("toy", "fastscnn", "ce"),
    ]
    r = t.set_index(["dataset", "model", "loss"])
    u = r.loc[("synthetic", "unet", "ce")]
    assert u["seeds"] == 2
    assert u["mIoU_mean"] == pytest.approx(0.52) and u["mIoU_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert u["aAcc_mean"] == pytest.approx(0.82) and u["aAcc_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert u["mAcc_mean"] == pytest.approx(0.62) and u["mAcc_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert u["mDice_mean"] == pytest.approx(0.62) and u["mDice_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert u["params"] == 31_000_000 and u["MACs"] == 50_000_000_000 and u["fps"] == 10.0 and u["MB"] == 124.0
    assert u["studies"] == "unet_segnet;gradnet"  # the cross study itself is not listed
    f = r.loc[("synthetic", "fastscnn", "ce")]
    assert f["seeds"] == 2 and f["mIoU_mean"] == pytest.approx(0.41)
    assert f["mIoU_std"] == pytest.approx(0.02 / math.sqrt(2))
    assert pd.isna(f["studies"])  # no `studies` given: empty cell
    s = r.loc[("synthetic", "segnet", "ce")]
    assert s["seeds"] == 1 and s["mIoU_mean"] == pytest.approx(0.45) and pd.isna(s["mIoU_std"])
    # fronts worked out by hand:
    #   MACs: fastscnn 1G/41%, gradnet 5G/47%, unet/ce 50G/52% on; unet/dice (50G, 48%) and
    #         segnet (60G, 45%) dominated by unet/ce
    #   fps:  fastscnn 80/41%, unet/ce 10/52% on; gradnet (8, 47%) dominated by unet/ce
    macs = {k: bool(v) for k, v in r["pareto_macs"].items()}
    fps = {k: bool(v) for k, v in r["pareto_fps"].items()}
    assert macs == {
        ("synthetic", "unet", "ce"): True, ("synthetic", "unet", "dice"): False,
        ("synthetic", "gradnet", "dice"): True, ("synthetic", "segnet", "ce"): False,
        ("synthetic", "fastscnn", "ce"): True, ("toy", "unet", "ce"): True, ("toy", "fastscnn", "ce"): True,
    }
    assert fps == {**macs, ("synthetic", "gradnet", "dice"): False}
    # and the flags agree with the brute force, dataset by dataset
    for ds, g in t.groupby("dataset"):
        assert (g["pareto_macs"].to_numpy() == brute_force_front(
            g["MACs"].to_numpy(float), g["mIoU_mean"].to_numpy(float), False, True)).all()
        assert (g["pareto_fps"].to_numpy() == brute_force_front(
            g["fps"].to_numpy(float), g["mIoU_mean"].to_numpy(float), True, True)).all()


def test_cross_markdown(runs, tmp_path):
    out = tmp_path / "cross"
    cross.build_cross_report(runs, out, title="Cross study")
    text = (out / "tables" / "cross_study.md").read_text()
    lines = text.splitlines()
    first = lines[0]
    assert "Cross study" in first and "synthetic" in first and "toy" in first
    assert f"{H}x{W}" in first and "cpu, 2 threads" in first
    assert "same protocol on the same data" in text and "none of the papers" in text
    assert "5 epochs" in text and "batch 4" in text and f"crop {H}x{W}" in text
    row = next(l for l in lines if l.startswith("| synthetic") and "| unet " in l and "| ce " in l)
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in next(l for l in lines if l.startswith("| dataset")).strip("|").split("|")]
    # mDice as in the summaries; the mIoU's interval beside it
    assert header[5:10] == ["mIoU (%)", "mIoU 95% CI (%)", "aAcc (%)", "mAcc (%)", "mDice (%)"]
    # mDice of each run is its mIoU + 0.1: 0.60 and 0.64 -> 62.00 ± 2.83; these runs have no
    # per-image confusions and the profiles no repeats: "—" for the interval and the fps spread
    assert cells == ["synthetic", "unet", "ce", "unet_segnet, gradnet", "2", "52.00 ± 2.83", "—", "82.00 ± 2.83",
                     "62.00 ± 2.83", "62.00 ± 2.83", "31.00M", "50.00G", "10.0 ± —", "124.0", "yes", "yes"]
    assert "no interval: unet / ce" in text and "fps ± —" in text
    seg = next(l for l in lines if "| segnet " in l)
    cells = [c.strip() for c in seg.strip("|").split("|")]
    assert cells[4:6] == ["1", "45.00"] and cells[-2:] == ["", ""]


def test_different_protocols_are_flagged(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "unet", "ce", 0, (0.5, 0.8, 0.6)),
            make_run(tmp_path, "synthetic", "segnet", "ce", 0, (0.4, 0.7, 0.5), train={**TRAIN, "epochs": 50})]
    out = tmp_path / "cross"
    cross.build_cross_report(runs, out)
    text = (out / "tables" / "cross_study.md").read_text()
    assert "protocols differ" in text and "epochs=5" in text and "epochs=50" in text


def test_ties_in_the_table_both_on_the_front(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "unet", "ce", 0, (0.5, 0.8, 0.6)),
            make_run(tmp_path, "synthetic", "unet", "dice", 0, (0.5, 0.8, 0.6)),
            make_run(tmp_path, "synthetic", "segnet", "ce", 0, (0.5, 0.8, 0.6))]
    df = cross.collect_cross_runs(runs)
    t = cross.cross_table(df).set_index(["model", "loss"])
    # unet/ce and unet/dice: same MACs, fps and mIoU -> both on; segnet: more MACs, fewer fps
    assert t["pareto_macs"].to_dict() == {("unet", "ce"): True, ("unet", "dice"): True, ("segnet", "ce"): False}
    assert t["pareto_fps"].to_dict() == t["pareto_macs"].to_dict()


def test_datasets_argument_orders_and_restricts(runs, tmp_path):
    out = tmp_path / "cross"
    cross.build_cross_report(runs, out, datasets=["toy", "synthetic"])
    t = pd.read_csv(out / "tables" / "cross_study.csv")
    assert list(dict.fromkeys(t["dataset"])) == ["toy", "synthetic"]
    cross.build_cross_report(runs, tmp_path / "c2", datasets=["toy"])
    assert set(pd.read_csv(tmp_path / "c2" / "tables" / "cross_study.csv")["dataset"]) == {"toy"}
    with pytest.raises(ValueError, match="cityscapes"):
        cross.build_cross_report(runs, tmp_path / "c3", datasets=["cityscapes"])


# --------------------------------------------------------------------------- figures


def test_pareto_figures_are_valid_pngs(runs, tmp_path):
    out = tmp_path / "cross"
    cross.build_cross_report(runs, out)
    for name in ("pareto_macs.png", "pareto_fps.png"):
        p = out / "figures" / name
        w, h = png_size(p)
        assert 800 <= w <= 4000 and 400 <= h <= 3000, (name, w, h)  # two dataset panels
        px = png_pixels(p)
        assert px.std() > 0, f"{name} is blank"
        assert (px < 128).mean() > 0.002, f"{name} has almost nothing drawn"
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    # one dataset: one panel, narrower
    one = [r for r in runs if r["dataset"] == "synthetic"]
    cross.build_cross_report(one, tmp_path / "one")
    w1, _ = png_size(tmp_path / "one" / "figures" / "pareto_macs.png")
    w2, _ = png_size(out / "figures" / "pareto_macs.png")
    assert 400 <= w1 < w2


# --------------------------------------------------------------------------- bad input


def test_missing_file_names_file_and_step_and_writes_nothing(runs, tmp_path):
    Path(runs[2]["run_dir"], "metrics.json").unlink()
    out = tmp_path / "cross"
    with pytest.raises(FileNotFoundError) as e:
        cross.build_cross_report(runs, out)
    msg = str(e.value)
    assert "metrics.json" in msg and "synthetic/unet/dice/s0" in msg and "segbench evaluate" in msg
    assert not out.exists() or not any(out.rglob("*")), "nothing is written when an input is missing"
    Path(runs[0]["profile"]).unlink()
    with pytest.raises(FileNotFoundError, match="segbench profile"):
        cross.build_cross_report(runs[:1], out)


def test_empty_run_list(tmp_path):
    with pytest.raises(ValueError, match=r"cross study has no runs.*cross_study\.datasets"):
        cross.build_cross_report([], tmp_path / "cross")
    assert not (tmp_path / "cross").exists()


def test_no_torch_or_pyplot_imported():
    src = Path(__file__).resolve().parents[1] / "src"
    code = (
        f"import sys; sys.path.insert(0, {str(src)!r}); "
        "import numpy as np; "
        "import segbench.report.cross, segbench.report.augment_figure as a; "
        "a.augmentation_examples_arrays(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8)); "
        "bad = [m for m in ('torch', 'mlflow', 'matplotlib.pyplot') if m in sys.modules]; "
        "assert not bad, bad; "
        "import albumentations.pytorch"  # still importable afterwards
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})


# --------------------------------------------------------------------------- augmentation figure


def scene(h: int = 64, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    from segbench.data.synthetic import render

    image, ids = render(0, "val", 0, height=h, width=w)
    label = (ids % 7).astype(np.uint8)
    label[:4] = 255
    return image, label


def test_augmentation_arrays():
    image, label = scene()
    a = augment_figure.augmentation_examples_arrays(image, label, seed=3)
    b = augment_figure.augmentation_examples_arrays(image, label, seed=3)
    assert list(a) == ["original", "flip", "blur", "rain", "snow"]
    for k in a:  # the same seed gives the same pixels
        assert np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1]), k
        assert a[k][0].shape == image.shape and a[k][0].dtype == np.uint8
    assert np.array_equal(a["original"][0], image)
    assert np.array_equal(a["flip"][0], np.fliplr(image))
    assert np.array_equal(a["flip"][1], np.fliplr(label))  # geometric: the label moves too
    for k in ("blur", "rain", "snow"):  # photometric: the label is unchanged
        assert np.array_equal(a[k][1], label), k
        assert not np.array_equal(a[k][0], image), f"{k} did not change the image"
    c = augment_figure.augmentation_examples_arrays(image, label, seed=4)
    assert not np.array_equal(a["rain"][0], c["rain"][0]), "the seed does not reach the rain"
    no_label = augment_figure.augmentation_examples_arrays(image, seed=3)
    assert all(v[1] is None for v in no_label.values())
    assert np.array_equal(no_label["rain"][0], a["rain"][0])
    with pytest.raises(ValueError, match="label"):
        augment_figure.augmentation_examples_arrays(image, label[:10])


def _save_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_augmentation_figure(tmp_path):
    image, label = scene()
    img_p = _save_png(tmp_path / "img.png", image)
    lab_p = _save_png(tmp_path / "lab.png", label)
    one = augment_figure.augmentation_examples(img_p, tmp_path / "fig" / "one.png", seed=0)
    two = augment_figure.augmentation_examples(lab_p.parent / "img.png", tmp_path / "fig" / "two.png",
                                               label_path=lab_p, seed=0)
    w1, h1 = png_size(one)
    w2, h2 = png_size(two)
    assert 600 <= w1 <= 3000 and 150 <= h1 < h2 <= 2000, (w1, h1, w2, h2)
    assert png_pixels(one).std() > 0 and png_pixels(two).std() > 0
    again = augment_figure.augmentation_examples(img_p, tmp_path / "fig" / "again.png", seed=0)
    assert np.array_equal(png_pixels(one), png_pixels(again))
    with pytest.raises(FileNotFoundError, match="prepare"):
        augment_figure.augmentation_examples(tmp_path / "nope.png", tmp_path / "x.png")


def test_pick_example_from_prepared_dataset(tiny_dataset, tmp_path):
    image, label = augment_figure.pick_example(tiny_dataset, split="val")
    with open(tiny_dataset / "manifest.csv", newline="") as f:
        first = next(r for r in csv.DictReader(f) if r["split"] == "val")
    assert image == tiny_dataset / first["image"] and label == tiny_dataset / first["label"]
    assert image.is_file() and label.is_file()
    meta = json.loads((tiny_dataset / "meta.json").read_text())
    out = augment_figure.augmentation_examples(image, tmp_path / "aug.png", label_path=label)
    assert png_size(out)[0] > 600 and png_pixels(out).std() > 0
    assert meta["palette"]  # the figure's colours come from here


def test_pick_example_images_labels_layout(tmp_path):
    image, label = scene(32, 32)
    root = tmp_path / "prepared"
    _save_png(root / "images" / "val" / "b.jpg", image)
    _save_png(root / "images" / "val" / "a.png", image)
    _save_png(root / "labels" / "val" / "a.png", label)
    _save_png(root / "labels" / "val" / "b.png", label)
    assert augment_figure.pick_example(root) == (root / "images" / "val" / "a.png", root / "labels" / "val" / "a.png")


def test_pick_example_without_pairs(tmp_path):
    empty = tmp_path / "results" / "data" / "nothing"
    empty.mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as e:
        augment_figure.pick_example(empty)
    assert str(empty) in str(e.value) and "prepare" in str(e.value)
    (empty / "manifest.csv").write_text("split,image,label\ntrain,a.png,b.png\n")
    with pytest.raises(FileNotFoundError, match=r"no val samples.*prepare"):
        augment_figure.pick_example(empty)
