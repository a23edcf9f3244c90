"""Corrupted val copies (segbench.data.corruptions) and the robustness evaluation
(segbench.engine.robustness): determinism, severities, formulas, and the contract of
robustness.json and corrupted_iou_per_image.npy on a tiny trained run."""

import hashlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, tiny_run_spec
from segbench.cli import main
from segbench.data.corruptions import CORRUPTIONS, PARAMETERS, SEVERITIES, corrupt
from segbench.data.synthetic import render
from segbench.errors import UserError

#: corruptions that draw random numbers (the others are a fixed function of the pixels)
RANDOM = ("rain", "snow", "fog", "gaussian_noise", "motion_blur")


def scenes(n=3, height=128, width=256):
    """Synthetic val scenes at the default config's size: (image, key) pairs."""
    return [(render(0, "val", i, height, width)[0], f"scene{i}.png") for i in range(n)]


# ------------------------------------------------------------------ the corruptions
def test_same_key_gives_the_same_bytes_and_another_key_other_draws():
    (image, key), = scenes(1)
    for name in CORRUPTIONS:
        first = corrupt(image, name, 3, key)
        again = corrupt(image.copy(), name, 3, key)
        assert first.tobytes() == again.tobytes(), name
        other = corrupt(image, name, 3, "another.png")
        if name in RANDOM:
            assert not np.array_equal(first, other), f"{name}: the key does not seed its random draws"
        else:
            assert np.array_equal(first, other), f"{name}: a deterministic corruption depends on the key"


def _digest(image, names, key):
    return hashlib.sha256(b"".join(corrupt(image, n, s, key).tobytes() for n in names for s in (1, 5))).hexdigest()


def test_another_process_gives_the_same_pixels():
    """No state of the process (Python's salted hash, global random seeds) enters the pixels."""
    (image, key), = scenes(1, 64, 128)
    code = ("import sys, numpy as np, random; sys.path.insert(0, 'src'); sys.path.insert(0, 'tests');"
            "np.random.seed(123); random.seed(7);"
            "from test_corruptions import _digest, scenes; (im, k), = scenes(1, 64, 128);"
            f"print(_digest(im, {list(RANDOM)!r}, k))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "random", "NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == _digest(image, RANDOM, key)


def test_every_severity_distorts_more_than_the_one_before():
    """Mean absolute difference to the clean image, over three scenes, rises with the severity
    for every corruption (at the default 128x256 size)."""
    images = scenes(3)
    for name in CORRUPTIONS:
        err = [np.mean([np.abs(corrupt(im, name, s, key).astype(np.int64) - im).mean() for im, key in images])
               for s in SEVERITIES]
        assert err[0] > 0.5, f"{name} severity 1 barely changes the image ({err[0]:.2f} grey levels)"
        assert all(a < b for a, b in zip(err, err[1:])), f"{name}: {np.round(err, 2)}"


def test_shape_and_dtype_are_kept_and_the_input_untouched():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # odd sizes
    before = image.copy()
    for name in CORRUPTIONS:
        for s in (1, 5):
            out = corrupt(image, name, s, "odd.png")
            assert out.shape == image.shape and out.dtype == np.uint8, name
    assert np.array_equal(image, before)


@pytest.mark.parametrize("name, severity, said", [
    ("haze", 1, "'haze'"), ("Rain", 1, "'Rain'"), ("rain", 0, "0"), ("rain", 6, "6"), ("rain", "3", "'3'"),
    ("rain", True, "True"), ("rain", 2.0, "2.0"),
])
def test_a_bad_name_or_severity_is_named_with_the_valid_ones(name, severity, said):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(UserError) as e:
        corrupt(image, name, severity, "k")
    assert said in str(e.value)
    assert ("jpeg" in str(e.value)) if name != "rain" else ("1, 2, 3, 4, 5" in str(e.value))


def test_brightness_and_contrast_follow_their_formulas_by_hand():
    # brightness, severity 2: + 0.2 x 255 = + 51 grey levels, clipped at 255
    image = np.array([[[0, 100, 250]]], dtype=np.uint8)
    assert corrupt(image, "brightness", 2, "k").tolist() == [[[51, 151, 255]]]
    # contrast, severity 1 (factor 0.6) about each channel's mean: red 0/200 -> mean 100 -> 40/160;
    # green 30/90 -> mean 60 -> 42/78; blue constant 50 stays 50
    image = np.array([[[0, 30, 50], [200, 90, 50]]], dtype=np.uint8)
    assert corrupt(image, "contrast", 1, "k").tolist() == [[[40, 42, 50], [160, 78, 50]]]
    assert PARAMETERS["brightness"]["2"] == {"delta": 0.2} and PARAMETERS["contrast"]["1"] == {"factor": 0.6}


def test_jpeg_is_a_round_trip_at_the_severitys_quality():
    """Against Pillow's libjpeg at the same quality (an independent encoder call), and the
    file gets smaller as the quality drops with the severity."""
    (image, key), = scenes(1)
    sizes = []
    for s in SEVERITIES:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=PARAMETERS["jpeg"][str(s)]["quality"])
        sizes.append(len(buf.getvalue()))
        pil = np.asarray(Image.open(buf).convert("RGB")).astype(np.int64)
        assert np.abs(corrupt(image, "jpeg", s, key) - pil).mean() < 0.5
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes


def test_parameters_cover_every_corruption_and_severity_as_json():
    assert list(PARAMETERS) == list(CORRUPTIONS)
    assert all(list(PARAMETERS[n]) == [str(s) for s in SEVERITIES] for n in CORRUPTIONS)
    assert json.loads(json.dumps(PARAMETERS)) == PARAMETERS


# ------------------------------------------------------------------ the robustness evaluation
def _iou_counts(conf):
    """Intersection and union per class of a [C, C] confusion, written out class by class."""
    c = conf.shape[0]
    tp = [int(conf[k, k]) for k in range(c)]
    union = [int(conf[k, :].sum() + conf[:, k].sum() - conf[k, k]) for k in range(c)]
    return np.array([tp, union], dtype=np.int64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    """A 4-epoch tiny run (the fewest that leave a model whose predictions depend on the
    image: mIoU about 0.03), trained and evaluated with the command line."""
    spec = tiny_run_spec(epochs=4)
    run_dir = tmp_path_factory.mktemp("robust") / "run"
    assert main(["train", "--spec", json.dumps(spec), "--data", str(tiny_dataset), "--out", str(run_dir),
                 "--threads", "1", "--quiet"]) == 0
    assert main(["evaluate", str(run_dir), "--data", str(tiny_dataset), "--threads", "1", "--quiet"]) == 0
    return run_dir


def test_robustness_files_follow_the_contract(trained, tiny_dataset, tmp_path):
    from segbench.data.dataset import SegmentationDataset
    from segbench.engine.robustness import evaluate_corruptions

    names, severities = ["gaussian_noise", "contrast"], [1, 5]
    result = evaluate_corruptions(trained, tiny_dataset, corruptions=names, severities=severities, threads=1,
                                  progress=False)
    on_disk = json.loads((trained / "robustness.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert list(on_disk["corruptions"]) == names and on_disk["severities"] == severities
    assert all(list(per) == ["1", "5"] for per in on_disk["corruptions"].values())
    assert on_disk["parameters"] == {n: {s: PARAMETERS[n][s] for s in ("1", "5")} for n in names}

    conf = np.load(trained / "corrupted_iou_per_image.npy")
    ds = SegmentationDataset(tiny_dataset / "manifest.csv", "val", None)
    metrics = json.loads((trained / "metrics.json").read_text())
    c = len(metrics["class_names"])
    assert conf.dtype == np.int64 and conf.shape == (2, 2, len(ds), 2, c)  # [K, S, N, (TP, union), C]
    labelled = [int((ds.raw(i)[1] != 255).sum()) for i in range(len(ds))]
    for k, name in enumerate(names):
        for j, s in enumerate(severities):
            tp, union = conf[k, j, :, 0], conf[k, j, :, 1]
            # sum of unions = 2 x labelled pixels - sum of TP: one image per slot, every labelled pixel
            assert ((union.sum(-1) + tp.sum(-1)) // 2).tolist() == labelled
            iou = [t / u for t, u in zip(tp.sum(0), union.sum(0)) if u > 0]
            assert on_disk["corruptions"][name][str(s)] == pytest.approx(np.mean(iou), abs=1e-12)
    # the clean mIoU is evaluate's own, and the summary is the mean of the table
    assert on_disk["clean_mIoU"] == metrics["mIoU"] > 0
    values = [v for per in on_disk["corruptions"].values() for v in per.values()]
    assert on_disk["mean_corrupted_mIoU"] == pytest.approx(np.mean(values), abs=1e-12)
    assert on_disk["relative"] == pytest.approx(np.mean(values) / metrics["mIoU"], abs=1e-12)
    # a corruption changes the predictions: no slot equals the clean confusion
    clean = np.load(trained / "confusion.npy")
    assert all(not np.array_equal(conf[k, j].sum(0), _iou_counts(clean)) for k in range(2) for j in range(2))

    # independent check: write the corrupted val images to a copy of the dataset (PNG is lossless)
    # and let `segbench evaluate` score them: its confusion is the slot's sum over images
    # (the manifest points into the raw folder beside the prepared one: copy both)
    for k, name in enumerate(names):
        shutil.copytree(tiny_dataset.parent, tmp_path / name)
        data_copy, run_copy = tmp_path / name / tiny_dataset.name, tmp_path / f"run-{name}"
        run_copy.mkdir()
        for f in ("model.pt", "run.json"):
            shutil.copy(trained / f, run_copy / f)
        for i, row in enumerate(SegmentationDataset(data_copy / "manifest.csv", "val", None).rows):
            image = np.asarray(Image.open(row["image"]).convert("RGB"))
            Image.fromarray(corrupt(image, name, 5, ds.name(i))).save(row["image"])
        assert main(["evaluate", str(run_copy), "--data", str(data_copy), "--threads", "1", "--quiet"]) == 0
        assert np.array_equal(_iou_counts(np.load(run_copy / "confusion.npy")), conf[k, 1].sum(0)), name

    # a rerun writes the same numbers
    evaluate_corruptions(trained, tiny_dataset, corruptions=names, severities=severities, threads=1,
                         progress=False)
    assert np.array_equal(np.load(trained / "corrupted_iou_per_image.npy"), conf)


@pytest.mark.parametrize("kwargs, said", [
    ({"corruptions": ["haze"]}, "'haze'"),
    ({"severities": [0]}, "0"),
    ({"corruptions": []}, "at least one corruption"),
    ({"corruptions": ["fog", "fog"]}, "fog is listed more than once"),
])
def test_robustness_refuses_bad_lists_before_loading_anything(tmp_path, kwargs, said):
    from segbench.engine.robustness import evaluate_corruptions

    with pytest.raises(UserError, match=said):
        evaluate_corruptions(tmp_path / "no-run", tmp_path / "no-data", **kwargs, progress=False)


def test_the_documented_table_is_the_parameters():
    """docs/robustness.md's parameter table has one row per corruption, written from PARAMETERS."""
    doc = (ROOT / "docs" / "robustness.md").read_text(encoding="utf-8")
    for name in CORRUPTIONS:
        cells = [", ".join(f"{k} {v}" for k, v in PARAMETERS[name][str(s)].items()) for s in SEVERITIES]
        assert f"| `{name}` | " + " | ".join(cells) + " |" in doc, name
