"""PASCAL VOC 2012 + SBD: a miniature VOCtrainval tar and benchmark.tgz in the real layouts,
served on 127.0.0.1, downloaded, verified, extracted and prepared. Checks trainaug's set
arithmetic, raw palette indices with the 255 border, and labels read from SBD's .mat files."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from datasets_support import FileServer, jpg, md5, png, tar_bytes
from PIL import Image

from segbench.cli import main
from segbench.data import DataError
from segbench.data.voc import colormap, prepare, trainaug_names

VOC, SBD = "VOCtrainval_11-May-2012.tar", "benchmark.tgz"
H, W = 6, 8
VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2007_000039", "2008_000002", "2007_000033"]  # one also in VOC train, one in VOC val
SBD_VAL = ["2008_000003"]
TRAINAUG = ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]


def _voc_label(name: str) -> np.ndarray:
    """Class indices with a 255 border around an object, as VOC draws them."""
    k = sum(map(ord, name)) % 20 + 1
    lab = np.zeros((H, W), np.uint8)
    lab[1:5, 2:7] = 255
    lab[2:4, 3:6] = k
    lab[0, 0] = (k % 20) + 1
    return lab


def _sbd_label(name: str) -> np.ndarray:
    k = sum(map(ord, name)) % 20 + 1
    lab = np.zeros((H, W), np.uint8)
    lab[:, 4:] = k
    lab[0, :2] = 15
    return lab


def _mat(seg: np.ndarray) -> bytes:
    """A cls/*.mat file as SBD ships it: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
    buf = io.BytesIO()
    boundaries = np.empty((20, 1), dtype=object)  # a cell of sparse edge maps, one per class
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix((seg == k + 1).astype(float))
    gt = {"Segmentation": seg, "Boundaries": boundaries,
          "CategoriesPresent": np.unique(seg[seg > 0]).astype(np.uint8)}
    scipy.io.savemat(buf, {"GTcls": gt})
    return buf.getvalue()


def _voc_palette(shuffled: bool) -> list[int]:
    cmap = colormap(256)
    if shuffled:  # colours that lie about the class: only the raw indices are right
        cmap = cmap[::-1].copy()
    return cmap.ravel().tolist()


def _archives(rgb_label: str | None = None) -> dict[str, bytes]:
    voc: dict[str, bytes] = {}
    base = "VOCdevkit/VOC2012"
    for i, name in enumerate(sorted(set(VOC_TRAIN + VOC_VAL + ["2008_000002", "2007_000033"]))):
        voc[f"{base}/JPEGImages/{name}.jpg"] = jpg(H, W, seed=i)
    for i, name in enumerate(VOC_TRAIN + VOC_VAL):
        lab = _voc_label(name)
        voc[f"{base}/SegmentationClass/{name}.png"] = (
            png(colormap(256)[lab]) if name == rgb_label else png(lab, palette=_voc_palette(shuffled=i % 2 == 1)))
        voc[f"{base}/SegmentationObject/{name}.png"] = png(lab, palette=_voc_palette(False))
        voc[f"{base}/Annotations/{name}.xml"] = b"<annotation/>"
    lists = f"{base}/ImageSets/Segmentation"
    voc[f"{lists}/train.txt"] = "\n".join(VOC_TRAIN).encode() + b"\n"
    voc[f"{lists}/val.txt"] = "\n".join(VOC_VAL).encode() + b"\n"
    voc[f"{lists}/trainval.txt"] = "\n".join(VOC_TRAIN + VOC_VAL).encode() + b"\n"
    sbd: dict[str, bytes] = {"benchmark_RELEASE/README": b"SBD\n"}
    ds = "benchmark_RELEASE/dataset"
    for i, name in enumerate(SBD_TRAIN + SBD_VAL):
        sbd[f"{ds}/cls/{name}.mat"] = _mat(_sbd_label(name))
        sbd[f"{ds}/inst/{name}.mat"] = _mat(_sbd_label(name))
        sbd[f"{ds}/img/{name}.jpg"] = jpg(H, W, seed=10 + i)
    sbd[f"{ds}/train.txt"] = "\n".join(SBD_TRAIN).encode() + b"\n"
    sbd[f"{ds}/val.txt"] = "\n".join(SBD_VAL).encode() + b"\n"
    return {VOC: tar_bytes(voc), SBD: tar_bytes(sbd, "w:gz")}


ARCHIVES = _archives()


@pytest.fixture
def server():
    s = FileServer().start()
    for name, data in ARCHIVES.items():
        s.files[f"/voc/{name}"] = data
    yield s
    s.stop()


def _rows(out) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_trainaug_is_the_published_set_arithmetic():
    assert trainaug_names(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL) == TRAINAUG


def test_download_verify_extract_prepare(server, tmp_path, capsys):
    dl, raw, out = tmp_path / "downloads", tmp_path / "raw", tmp_path / "data"
    server.cuts[f"/voc/{VOC}"] = [10_000]
    urls = [a for n in ARCHIVES for a in ("--url", f"{n}={server.url('/voc/' + n)}")]
    assert main(["download", "voc", "--dir", str(dl), *urls, "--quiet"]) == 0
    assert [r["range"] for r in server.requests_for(f"/voc/{VOC}")] == [None, "bytes=10000-"]
    for n, data in ARCHIVES.items():
        assert main(["verify", str(dl / n), "--source", "voc", "--md5", md5(data), "--quiet"]) == 0
    assert main(["extract", str(dl / VOC), str(dl / SBD), "--to", str(raw), "--quiet"]) == 0
    assert main(["prepare", "voc", "--root", str(raw), "--out", str(out), "--allow-partial", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "split 'train': 4 of the 10,582 published samples" in err
    assert "split 'val': 2 of the 1,449 published samples" in err

    rows = _rows(out)
    train = [r for r in rows if r["split"] == "train"]
    assert [r["label"].split("/")[-1][:-4] for r in train] == TRAINAUG
    assert [r["origin"] for r in train] == ["voc", "voc", "sbd", "sbd"]
    assert [r["label"].split("/")[-1][:-4] for r in rows if r["split"] == "val"] == VOC_VAL
    for r in rows:
        name = r["label"].split("/")[-1][:-4]
        want = _voc_label(name) if r["origin"] == "voc" else _sbd_label(name)
        got = np.asarray(Image.open(out / r["label"]))
        np.testing.assert_array_equal(got, want)  # raw indices; the border stays 255
        if r["origin"] == "voc":
            assert (got == 255).sum() == 14
    # 2008_000003 is only in SBD's img/ in this miniature: the image falls back to it
    assert next(r for r in rows if "2008_000003" in r["label"])["image"].endswith("dataset/img/2008_000003.jpg")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_classes"] == 21 and meta["class_names"][0] == "background"
    assert meta["class_names"][20] == "tvmonitor" and meta["palette"][1] == [128, 0, 0]
    assert meta["splits"] == {"train": 4, "val": 2}


def test_voc_train_only_without_sbd(tmp_path):
    (tmp_path / VOC).write_bytes(ARCHIVES[VOC])
    main(["extract", str(tmp_path / VOC), "--to", str(tmp_path / "raw"), "--quiet"])
    meta = prepare(tmp_path / "raw", tmp_path / "out", trainaug=False, allow_partial=True, progress=False)
    assert meta["splits"] == {"train": 2, "val": 2}
    assert [r["label"].split("/")[-1][:-4] for r in _rows(tmp_path / "out") if r["split"] == "train"] == VOC_TRAIN
    with pytest.raises(DataError, match="no SBD tree at"):
        prepare(tmp_path / "raw", tmp_path / "out2", allow_partial=True, progress=False)


def test_rgb_label_and_missing_mat_are_refused(tmp_path):
    archives = _archives(rgb_label="2007_000042")
    for n, data in archives.items():
        (tmp_path / n).write_bytes(data)
    main(["extract", str(tmp_path / VOC), str(tmp_path / SBD), "--to", str(tmp_path / "raw"), "--quiet"])
    (tmp_path / "raw/benchmark_RELEASE/dataset/cls/2008_000002.mat").unlink()
    with pytest.raises(DataError) as e:
        prepare(tmp_path / "raw", tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "2007_000042.png: label PNG is 3-channel RGB (mode RGB)" in msg and "colour-converted" in msg
    assert "2008_000002 is listed but" in msg and "cls/2008_000002.mat is missing" in msg
    assert "split 'train': 3 of the 10,582 published samples" in msg
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_bad_mat_value_named(tmp_path):
    raw = tmp_path / "raw"
    for n, data in ARCHIVES.items():
        (tmp_path / n).write_bytes(data)
    main(["extract", str(tmp_path / VOC), str(tmp_path / SBD), "--to", str(raw), "--quiet"])
    bad = _sbd_label("2008_000003")
    bad[3, 3] = 40
    (raw / "benchmark_RELEASE/dataset/cls/2008_000003.mat").write_bytes(_mat(bad))
    with pytest.raises(DataError) as e:
        prepare(raw, tmp_path / "out", allow_partial=True, progress=False)
    assert "2008_000003.mat: contains value 40 (valid: 0..20 and 255)" in str(e.value)
