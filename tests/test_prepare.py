"""prepare_cityscapes: label conversion, manifest, meta.json and input validation.

The conversion is checked pixel by pixel against tables written out by hand from the
cityscapesscripts label table, not against segbench's own lookup tables.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.data import DataError
from segbench.data.cityscapes import prepare_cityscapes
from segbench.data.synthetic import generate

# label id -> trainId (cityscapesscripts labels.py), 255 = ignored
TRAIN_ID = {0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2,
            12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
            24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18}
# label id -> category index (flat, construction, object, nature, sky, human, vehicle); void and
# the ids ignored in evaluation (parking, rail track, guard rail, bridge, tunnel, polegroup,
# caravan, trailer) are 255, as in the official category-level evaluation
CATEGORY = {**{i: 255 for i in range(34)}, 7: 0, 8: 0, 11: 1, 12: 1, 13: 1, 17: 2, 19: 2, 20: 2, 21: 3,
            22: 3, 23: 4, 24: 5, 25: 5, 26: 6, 27: 6, 28: 6, 31: 6, 32: 6, 33: 6}

ALL_IDS = np.arange(34, dtype=np.uint8)


def _write(root: Path, split: str, city: str, n: int, label: np.ndarray, image_size: tuple[int, int] | None = None,
           *, with_image: bool = True, with_label: bool = True) -> tuple[Path, Path]:
    stem = f"{city}_{n:06d}_000019"
    img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    lab = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
    h, w = label.shape[:2]
    if image_size is not None:
        w, h = image_size
    if with_image:
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(img)
    if with_label:
        lab.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(lab)
    return img, lab


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny valid tree: every label id 0..33 appears, in train and val."""
    root = tmp_path / "cityscapes"
    grid = np.stack([ALL_IDS, ALL_IDS[::-1]])  # 2 x 34
    _write(root, "train", "aachen", 0, grid)
    _write(root, "train", "bremen", 3, grid[::-1].copy())
    _write(root, "val", "lindau", 1, grid)
    return root


def _read_manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("label_set,table,suffix,n", [
    ("trainId", TRAIN_ID, "_gtFine_labelTrainIds.png", 19),
    ("category", CATEGORY, "_gtFine_labelCategoryIds.png", 7),
])
def test_conversion_manifest_and_meta(tree: Path, tmp_path: Path, label_set: str, table: dict[int, int],
                                      suffix: str, n: int) -> None:
    out = tmp_path / "prepared"
    meta = prepare_cityscapes(tree, out, label_set=label_set, progress=False)

    rows = _read_manifest(out)
    with open(out / "manifest.csv", encoding="utf-8") as f:
        assert f.readline().strip() == "split,image,label,city"
    assert [(r["split"], r["city"]) for r in rows] == [("train", "aachen"), ("train", "bremen"), ("val", "lindau")]
    assert rows[0]["image"] == os.path.relpath(tree / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", out)
    assert rows[0]["label"] == f"labels/train/aachen_000000_000019{suffix}"
    assert rows[2]["label"] == f"labels/val/lindau_000001_000019{suffix}"
    for r in rows:
        assert not os.path.isabs(r["image"]) and not os.path.isabs(r["label"])
        src = np.asarray(Image.open(tree / "gtFine" / r["split"] / r["city"] /
                                    Path(r["image"]).name.replace("_leftImg8bit", "_gtFine_labelIds")))
        with Image.open(out / r["label"]) as im:
            assert im.mode == "L"
            got = np.asarray(im)
        want = np.vectorize(table.__getitem__)(src)
        np.testing.assert_array_equal(got, want)
    assert not (out / "leftImg8bit").exists(), "images are referenced, not copied"

    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk == meta
    assert set(meta) == {"dataset", "num_classes", "class_names", "palette", "ignore_index", "splits", "source"}
    assert meta["num_classes"] == n == len(meta["class_names"]) == len(meta["palette"])
    assert meta["ignore_index"] == 255
    assert meta["splits"] == {"train": 2, "val": 1}
    assert Path(meta["source"]) == tree.absolute()
    if label_set == "trainId":
        assert meta["class_names"][0] == "road" and meta["class_names"][13] == "car"
        assert meta["class_names"][18] == "bicycle"
        assert meta["palette"][0] == [128, 64, 128] and meta["palette"][13] == [0, 0, 142]
    else:
        assert meta["class_names"] == ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
    assert not list(out.rglob("*.tmp")), "no temporary files left"


def test_synthetic_tree_round_trip(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    generate(raw, seed=3, splits={"train": 3, "val": 2}, height=48, width=96, progress=False)
    out = tmp_path
    meta = prepare_cityscapes(raw, out, progress=False)
    assert meta["splits"] == {"train": 3, "val": 2}
    rows = _read_manifest(out)
    assert len(rows) == 5
    lut = np.array([TRAIN_ID.get(i, 255) for i in range(256)], np.uint8)
    for r in rows:
        img = out / r["image"]
        assert img.is_file() and img.resolve().is_relative_to(raw.resolve())
        src = img.parent.parent.parent.parent / "gtFine" / r["split"] / r["city"] / img.name.replace(
            "_leftImg8bit.png", "_gtFine_labelIds.png")
        np.testing.assert_array_equal(np.asarray(Image.open(out / r["label"])), lut[np.asarray(Image.open(src))])


def _error(root: Path, out: Path) -> str:
    with pytest.raises(DataError) as e:
        prepare_cityscapes(root, out, progress=False)
    assert not (out / "manifest.csv").exists() and not (out / "meta.json").exists()
    return str(e.value)


def test_unknown_label_id(tree: Path, tmp_path: Path) -> None:
    bad = np.full((2, 34), 7, np.uint8)
    bad[1, 5] = 200
    _, lab = _write(tree, "val", "lindau", 2, bad)
    msg = _error(tree, tmp_path / "out")
    assert lab.name in msg and "200" in msg and "0..33" in msg


def test_image_without_label(tree: Path, tmp_path: Path) -> None:
    img, lab = _write(tree, "train", "aachen", 7, np.zeros((2, 34), np.uint8), with_label=False)
    msg = _error(tree, tmp_path / "out")
    assert img.name in msg and lab.name in msg  # names the image and the label it expected


def test_label_without_image(tree: Path, tmp_path: Path) -> None:
    _, lab = _write(tree, "train", "aachen", 8, np.zeros((2, 34), np.uint8), with_image=False)
    assert lab.name in _error(tree, tmp_path / "out")


def test_size_mismatch(tree: Path, tmp_path: Path) -> None:
    _, lab = _write(tree, "train", "bremen", 9, np.full((2, 34), 7, np.uint8), image_size=(40, 20))
    msg = _error(tree, tmp_path / "out")
    assert lab.name in msg and "34x2" in msg and "40x20" in msg


def test_multichannel_and_16bit_labels(tree: Path, tmp_path: Path) -> None:
    _, rgb = _write(tree, "train", "aachen", 10, np.full((2, 34, 3), 7, np.uint8))
    lab16 = tree / "gtFine/val/lindau/lindau_000011_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((2, 34), 7, np.uint16)).save(lab16)
    _write(tree, "val", "lindau", 11, np.zeros((2, 34), np.uint8), with_label=False)
    msg = _error(tree, tmp_path / "out")
    assert rgb.name in msg and lab16.name in msg


def test_missing_split_and_all_problems_together(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_cityscapes(tree, out, progress=False)  # a good run first: its manifest must not survive a bad one
    assert (out / "manifest.csv").exists()
    bad = np.full((2, 34), 250, np.uint8)
    _, lab = _write(tree, "train", "aachen", 12, bad)
    img, _ = _write(tree, "train", "bremen", 13, bad, with_label=False)
    with pytest.raises(DataError) as e:
        prepare_cityscapes(tree, out, splits=("train", "val", "test"), progress=False)
    msg = str(e.value)
    assert lab.name in msg and img.name in msg and "test" in msg
    assert len(e.value.problems) == 4  # 250 ids, missing label, no leftImg8bit/test, no gtFine/test
    assert not (out / "manifest.csv").exists()


def test_bad_arguments(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        prepare_cityscapes(tree, tmp_path / "out", label_set="instance", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        prepare_cityscapes(tmp_path / "nowhere", tmp_path / "out", progress=False)
