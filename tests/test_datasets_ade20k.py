"""ADE20K: a miniature ADEChallengeData2016.zip in the real layout, served on 127.0.0.1,
downloaded, verified, extracted and prepared; reduce-zero-label checked pixel by pixel."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from datasets_support import FileServer, jpg, md5, png, zip_bytes
from PIL import Image

from segbench.cli import main
from segbench.data import DataError
from segbench.data.ade20k import prepare

NAME = "ADEChallengeData2016.zip"
ALL = np.arange(151, dtype=np.uint8)  # 0 ("other") and the 150 classes


def _annotation(i: int) -> np.ndarray:
    return np.stack([np.roll(ALL, 7 * i), ALL[::-1], np.zeros(151, np.uint8)])  # 3 x 151


def _archive(extra: dict[str, bytes] | None = None) -> bytes:
    files = {
        "ADEChallengeData2016/objectInfo150.txt": b"Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n",
        "ADEChallengeData2016/sceneCategories.txt": b"ADE_train_00000001 airport_terminal\n",
    }
    for i, (folder, name) in enumerate([("training", "ADE_train_00000001"), ("training", "ADE_train_00000002"),
                                        ("validation", "ADE_val_00000001")]):
        files[f"ADEChallengeData2016/images/{folder}/{name}.jpg"] = jpg(3, 151, seed=i)
        files[f"ADEChallengeData2016/annotations/{folder}/{name}.png"] = png(_annotation(i))
    files.update(extra or {})
    return zip_bytes(files)


ARCHIVE = _archive()


@pytest.fixture
def server():
    s = FileServer().start()
    s.files["/ADEchallenge/" + NAME] = ARCHIVE
    yield s
    s.stop()


def test_download_verify_extract_prepare(server, tmp_path, capsys):
    dl, raw, out = tmp_path / "downloads", tmp_path / "raw", tmp_path / "data"
    server.cuts["/ADEchallenge/" + NAME] = [4000]  # one dropped connection, resumed
    assert main(["download", "ade20k", "--dir", str(dl), "--url", f"{NAME}={server.url('/ADEchallenge/' + NAME)}",
                 "--quiet"]) == 0
    assert [r["range"] for r in server.requests] == [None, "bytes=4000-"]
    assert main(["verify", str(dl / NAME), "--source", "ade20k", "--md5", md5(ARCHIVE), "--quiet"]) == 0
    assert main(["extract", str(dl / NAME), "--to", str(raw), "--quiet"]) == 0
    assert main(["prepare", "ade20k", "--root", str(raw), "--out", str(out), "--allow-partial", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "split 'train': 2 of the 20,210 published samples" in err and "(20,208 missing)" in err

    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["split"], Path(r["label"]).name) for r in rows] == [
        ("train", "ADE_train_00000001.png"), ("train", "ADE_train_00000002.png"), ("val", "ADE_val_00000001.png")]
    for i, r in enumerate(rows):
        src = _annotation(i)
        got = np.asarray(Image.open(out / r["label"]))
        assert got.dtype == np.uint8 and got.shape == src.shape
        for (y, x), v in np.ndenumerate(src):  # 0 -> 255 (ignored), v -> v - 1
            assert got[y, x] == (255 if v == 0 else v - 1), (r["label"], y, x, v)
        assert (out / r["image"]).is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_classes"] == 150 == len(meta["class_names"]) == len(meta["palette"])
    assert meta["class_names"][0] == "wall" and meta["class_names"][149] == "flag"
    assert meta["splits"] == {"train": 2, "val": 1} and meta["ignore_index"] == 255
    assert len({tuple(c) for c in meta["palette"]}) == 150


def test_checksum_failure_against_published_md5(server, tmp_path, capsys):
    dl = tmp_path / "downloads"
    main(["download", "ade20k", "--dir", str(dl), "--url", f"{NAME}={server.url('/ADEchallenge/' + NAME)}",
          "--quiet"])
    assert main(["verify", str(dl / NAME), "--source", "ade20k", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"checksum mismatch for {NAME}: expected MD5 7328b3957e407ddae1d3cbf487f149ef, got {md5(ARCHIVE)}" in err
    assert not (dl / NAME).exists()


def test_incomplete_copy_fails_naming_split_and_count(tmp_path):
    (tmp_path / NAME).write_bytes(ARCHIVE)
    main(["extract", str(tmp_path / NAME), "--to", str(tmp_path / "raw"), "--quiet"])
    with pytest.raises(DataError) as e:
        prepare(tmp_path / "raw", tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "split 'train': 2 of the 20,210 published samples" in msg and "(20,208 missing)" in msg
    assert "split 'val': 1 of the 2,000" in msg and "--allow-partial" in msg
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_bad_values_and_missing_label_are_named(tmp_path):
    bad = _annotation(0)
    bad[1, 5] = 151
    archive = _archive({
        "ADEChallengeData2016/annotations/training/ADE_train_00000002.png": png(bad),
        "ADEChallengeData2016/images/validation/ADE_val_00000002.jpg": jpg(3, 151),
    })
    (tmp_path / NAME).write_bytes(archive)
    main(["extract", str(tmp_path / NAME), "--to", str(tmp_path / "raw"), "--quiet"])
    with pytest.raises(DataError) as e:
        prepare(tmp_path / "raw", tmp_path / "out", allow_partial=True, progress=False)
    msg = str(e.value)
    assert "ADE_train_00000002.png: contains value 151 (valid: 0..150)" in msg
    assert "ADE_val_00000002.jpg: image without a label file" in msg
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_root_may_be_the_parent_or_the_tree(tmp_path):
    (tmp_path / NAME).write_bytes(ARCHIVE)
    main(["extract", str(tmp_path / NAME), "--to", str(tmp_path / "raw"), "--quiet"])
    a = prepare(tmp_path / "raw", tmp_path / "a", allow_partial=True, progress=False)
    b = prepare(tmp_path / "raw" / "ADEChallengeData2016", tmp_path / "b", allow_partial=True, progress=False)
    assert a["splits"] == b["splits"] == {"train": 2, "val": 1}
    with pytest.raises(DataError, match="no ADE20K tree at"):
        prepare(tmp_path, tmp_path / "c", progress=False)
