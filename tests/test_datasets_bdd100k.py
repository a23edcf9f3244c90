"""BDD100K: miniature bdd100k_images_10k.zip and bdd100k_sem_seg_labels_trainval.zip in the
real layout, served on 127.0.0.1, downloaded, verified, extracted and prepared; the masks
are already train ids and must come out unchanged, 255 included."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from datasets_support import FileServer, jpg, md5, png, zip_bytes
from PIL import Image

from segbench.cli import main
from segbench.data import DataError
from segbench.data.bdd100k import prepare

IMAGES, LABELS = "bdd100k_images_10k.zip", "bdd100k_sem_seg_labels_trainval.zip"
H, W = 9, 16  # 1280x720 scaled down
NAMES = {"train": ["0004a4c0-d4dff0ad", "00054602-3bf57337"], "val": ["7d2f7975-e0c1c5a7"],
         "test": ["ac517380-00000000"]}
VALUES = np.array(list(range(19)) + [255], np.uint8)


def _mask(i: int) -> np.ndarray:
    return np.resize(np.roll(VALUES, 3 * i), (H, W))


def _archives(bad_value: int | None = None) -> dict[str, bytes]:
    images, labels = {}, {}
    k = 0
    for split, names in NAMES.items():
        for name in names:
            images[f"bdd100k/images/10k/{split}/{name}.jpg"] = jpg(H, W, seed=k)
            if split != "test":
                mask = _mask(k)
                if bad_value is not None and k == 1:
                    mask[4, 4] = bad_value
                labels[f"bdd100k/labels/sem_seg/masks/{split}/{name}.png"] = png(mask)
                labels[f"bdd100k/labels/sem_seg/colormaps/{split}/{name}.png"] = png(np.zeros((H, W, 3)))
            k += 1
    labels["bdd100k/labels/sem_seg/polygons/sem_seg_train.json"] = b"[]"
    labels["bdd100k/labels/sem_seg/polygons/sem_seg_val.json"] = b"[]"
    return {IMAGES: zip_bytes(images), LABELS: zip_bytes(labels)}


ARCHIVES = _archives()


@pytest.fixture
def server():
    s = FileServer().start()
    for name, data in ARCHIVES.items():
        s.files[f"/bdd100k/data/{name}"] = data
    yield s
    s.stop()


def test_download_verify_extract_prepare(server, tmp_path, capsys):
    dl, raw, out = tmp_path / "downloads", tmp_path / "raw", tmp_path / "data"
    server.cuts[f"/bdd100k/data/{IMAGES}"] = [2500]
    urls = [a for n in ARCHIVES for a in ("--url", f"{n}={server.url('/bdd100k/data/' + n)}")]
    assert main(["download", "bdd100k", "--dir", str(dl), *urls, "--quiet"]) == 0
    assert [r["range"] for r in server.requests_for(f"/bdd100k/data/{IMAGES}")] == [None, "bytes=2500-"]
    for n, data in ARCHIVES.items():
        assert main(["verify", str(dl / n), "--source", "bdd100k", "--md5", md5(data), "--quiet"]) == 0
    assert main(["extract", str(dl / IMAGES), str(dl / LABELS), "--to", str(raw), "--quiet"]) == 0
    assert main(["prepare", "bdd100k", "--root", str(raw), "--out", str(out), "--allow-partial", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "BDD100K licence" in err and "split 'train': 2 of the 7,000 published samples" in err

    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["split"], r["label"].split("/")[-1][:-4]) for r in rows] == [
        ("train", NAMES["train"][0]), ("train", NAMES["train"][1]), ("val", NAMES["val"][0])]
    for i, r in enumerate(rows):
        got = np.asarray(Image.open(out / r["label"]))
        np.testing.assert_array_equal(got, _mask(i))
        assert (got == 255).any()
        assert r["image"].endswith(f"bdd100k/images/10k/{r['split']}/{r['label'].split('/')[-1][:-4]}.jpg")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_classes"] == 19 and meta["class_names"][0] == "road" and meta["class_names"][18] == "bicycle"
    assert meta["splits"] == {"train": 2, "val": 1}


def test_checksum_failure_and_value_outside_train_ids(server, tmp_path, capsys):
    dl = tmp_path / "downloads"
    main(["download", "bdd100k", "--dir", str(dl), "--archive", LABELS,
          "--url", f"{LABELS}={server.url('/bdd100k/data/' + LABELS)}", "--quiet"])
    assert main(["verify", str(dl / LABELS), "--source", "bdd100k", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"expected MD5 9a2968dde3345eeb689cffb1e26f9c78, got {md5(ARCHIVES[LABELS])}" in err
    assert not (dl / LABELS).exists()

    bad = _archives(bad_value=19)
    for n, data in bad.items():
        (tmp_path / n).write_bytes(data)
    main(["extract", str(tmp_path / IMAGES), str(tmp_path / LABELS), "--to", str(tmp_path / "raw"), "--quiet"])
    with pytest.raises(DataError) as e:
        prepare(tmp_path / "raw", tmp_path / "out", allow_partial=True, progress=False)
    assert f"{NAMES['train'][1]}.png: contains value 19 (valid: 0..18 and 255)" in str(e.value)
