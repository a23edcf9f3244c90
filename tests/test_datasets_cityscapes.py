"""Cityscapes: login + download through cityscapesscripts' downloader against a stand-in for
the site on 127.0.0.1, verify, extract and prepare a miniature copy in the real layout.

Label conversion is checked pixel by pixel against cityscapesscripts' own label table
(``cityscapesscripts.helpers.labels``), not segbench's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from datasets_support import CityscapesSite, md5, png, zip_bytes
from PIL import Image

from segbench.cli import main
from segbench.data import DataError
from segbench.data import cityscapes as cs

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "tester@example.org", "s3cret-Pa55word"
# (split, city, seq): one image per city, names as the dataset writes them
FRAMES = [("train", "aachen", 0), ("train", "bremen", 12), ("val", "frankfurt", 5), ("test", "berlin", 7)]
IDS = np.arange(34, dtype=np.uint8)


def _label(i: int) -> np.ndarray:
    """Every label id 0..33 appears (those mapped to 255 too), in a different order per image; 32x272."""
    rows = np.stack([np.roll(IDS, i), np.roll(IDS, -i)[::-1], IDS, np.full(34, 26, np.uint8)])
    return np.kron(rows, np.ones((8, 8), np.uint8))


def _archives() -> dict[str, bytes]:
    gt, img = {}, {}
    for i, (split, city, seq) in enumerate(FRAMES):
        stem = f"{city}_{seq:06d}_000019"
        lab = _label(i) if split != "test" else np.zeros((32, 272), np.uint8)  # test labels are all 0 (hidden)
        gt[f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"] = png(lab)
        gt[f"gtFine/{split}/{city}/{stem}_gtFine_instanceIds.png"] = png(lab)
        gt[f"gtFine/{split}/{city}/{stem}_gtFine_color.png"] = png(np.zeros((32, 272, 3)))
        gt[f"gtFine/{split}/{city}/{stem}_gtFine_polygons.json"] = b'{"imgHeight": 32, "imgWidth": 272}'
        noise = np.random.default_rng(i).integers(0, 256, (32, 272, 3))  # incompressible: ~100 KB in all
        img[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = png(noise)
    for files in (gt, img):
        files["README"] = b"The Cityscapes Dataset\n"
        files["license.txt"] = b"licence terms\n"
    return {"gtFine_trainvaltest.zip": zip_bytes(gt), "leftImg8bit_trainvaltest.zip": zip_bytes(img)}


ARCHIVES = _archives()


@pytest.fixture
def site():
    s = CityscapesSite(USER, PASSWORD)
    for name, data in ARCHIVES.items():
        s.add_package(name, data)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    """No credentials anywhere: no environment variables, an empty data dir for csDownload's file."""
    monkeypatch.delenv(cs.ENV_USERNAME, raising=False)
    monkeypatch.delenv(cs.ENV_PASSWORD, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def _all_bytes_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_download_verify_extract_prepare(site, no_login, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(cs.ENV_USERNAME, USER)
    monkeypatch.setenv(cs.ENV_PASSWORD, PASSWORD)
    results = tmp_path / "results"
    dl, raw, out = results / "downloads" / "cityscapes", results / "raw" / "cityscapes", results / "data" / "cs"
    dl.mkdir(parents=True)
    # a cut connection in the middle of the image archive: resumed with a Range request
    assert len(ARCHIVES["leftImg8bit_trainvaltest.zip"]) > 20_000
    site.cuts[site.file_path("leftImg8bit_trainvaltest.zip")] = [10_500]

    assert main(["download", "cityscapes", "--dir", str(dl), "--site", site.base, "--no-input", "--quiet"]) == 0
    for name, data in ARCHIVES.items():
        assert (dl / name).read_bytes() == data
        assert (dl / f"{name}.md5").read_text().split()[0] == md5(data)
    ranges = [r["range"] for r in site.requests_for(site.file_path("leftImg8bit_trainvaltest.zip"))]
    # cityscapesscripts writes 1 KiB chunks: the partial file ends at the last whole chunk
    assert ranges == [None, "bytes=10240-"]
    assert not (dl / ".partial").exists()
    assert site.login_posts[0]["submit"] == ["Login"]

    for name in ARCHIVES:
        assert main(["verify", str(dl / name), "--source", "cityscapes", "--out", str(dl / f"{name}.verified"),
                     "--quiet"]) == 0
    assert main(["extract", *(str(dl / n) for n in ARCHIVES), "--to", str(raw), "--quiet"]) == 0
    assert (raw / "gtFine/test/berlin/berlin_000007_000019_gtFine_labelIds.png").is_file()

    for labels, column in (("trainId", "trainId"), ("category", "categoryId")):
        assert main(["prepare", "cityscapes", "--root", str(raw), "--out", str(out / labels), "--labels", labels,
                     "--name", "cs", "--allow-partial", "--quiet"]) == 0
        with open(out / labels / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["split"], r["city"]) for r in rows] == [("train", "aachen"), ("train", "bremen"),
                                                          ("val", "frankfurt")]
        for r in rows:
            i = next(k for k, fr in enumerate(FRAMES) if fr[1] == r["city"])
            src = _label(i)
            if column == "trainId":
                want = np.vectorize(lambda v: id2label[int(v)].trainId if id2label[int(v)].trainId in range(19)
                                    else 255)(src)
            else:  # scored only where the class is scored, as the official category evaluation
                want = np.vectorize(lambda v: id2label[int(v)].categoryId - 1
                                    if id2label[int(v)].categoryId > 0 and not id2label[int(v)].ignoreInEval
                                    else 255)(src)
            got = np.asarray(Image.open(out / labels / r["label"]))
            np.testing.assert_array_equal(got, want)
            assert (got == 255).any() and (got != 255).any()
            assert (out / labels / r["image"]).resolve() == (raw / "leftImg8bit" / r["split"] / r["city"] /
                                                             Path(r["image"]).name).resolve()
        meta = json.loads((out / labels / "meta.json").read_text())
        assert meta["splits"] == {"train": 2, "val": 1} and meta["dataset"] == "cs"
        assert meta["num_classes"] == (19 if labels == "trainId" else 7)

    captured = capsys.readouterr()
    assert "train': 2 of the 2,975 published samples" in captured.err and "allow_partial" in captured.err
    for secret in (USER, PASSWORD):
        assert secret not in captured.out + captured.err
        assert secret.encode() not in _all_bytes_under(results), "credentials must never be written under results/"


def test_split_sizes_checked_against_published_counts(site, tmp_path, capsys):
    raw = tmp_path / "raw"
    for name, data in ARCHIVES.items():
        (tmp_path / name).write_bytes(data)
    main(["extract", *(str(tmp_path / n) for n in ARCHIVES), "--to", str(raw), "--quiet"])
    assert main(["prepare", "cityscapes", "--root", str(raw), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "split 'train': 2 of the 2,975 published samples found" in err and "(2,973 missing)" in err
    assert "split 'val': 1 of the 500 published samples found" in err and "(499 missing)" in err
    assert "--allow-partial" in err and "allow_partial: true" in err
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_missing_credentials_fail_at_once_without_prompt(site, tmp_path):
    """Non-interactive: no terminal on stdin (it stays open, so a prompt would hang until the timeout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSCAPES_")}
    env.update(PYTHONPATH=str(ROOT / "src"), XDG_DATA_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"),
               SEGBENCH_NO_PROGRESS="1")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "segbench", "download", "cityscapes", "--dir", str(tmp_path),
                             "--site", site.base], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert time.monotonic() - t0 < 30
    assert "no Cityscapes login found" in err
    assert "CITYSCAPES_USERNAME" in err and "CITYSCAPES_PASSWORD" in err
    assert "download.credentials" in err and "root:" in err
    assert site.requests == [], "nothing goes over the network without a login"


def test_credentials_sources_and_precedence(tmp_path, no_login, monkeypatch):
    with pytest.raises(DataError, match="no Cityscapes login found"):
        cs.find_credentials()
    stored = tmp_path / "xdg" / "cityscapesscripts" / "credentials.json"
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps({"username": "stored", "password": "p0"}))
    stored.chmod(0o600)
    assert cs.find_credentials().username == "stored"
    monkeypatch.setenv(cs.ENV_USERNAME, "env-user")
    with pytest.raises(DataError, match="CITYSCAPES_USERNAME is set but CITYSCAPES_PASSWORD is not"):
        cs.find_credentials()
    monkeypatch.setenv(cs.ENV_PASSWORD, "p1")
    assert cs.find_credentials().username == "env-user"
    named = tmp_path / "login.json"
    named.write_text(json.dumps({"username": "file-user", "password": "p2"}))
    named.chmod(0o600)
    creds = cs.find_credentials(named)
    assert (creds.username, creds.password) == ("file-user", "p2")
    assert "p2" not in repr(creds) + str(creds) and "file-user" not in repr(creds) + str(creds)
    with pytest.raises(DataError, match="does not exist"):
        cs.find_credentials(tmp_path / "nope.json")
    named.write_text('{"username": "file-user", "password": ')
    with pytest.raises(DataError) as e:
        cs.find_credentials(named)
    assert "file-user" not in str(e.value), "a broken file's content is never quoted"


def test_wrong_password_is_refused_without_echo(site, tmp_path, no_login):
    bad = tmp_path / "login.json"
    bad.write_text(json.dumps({"username": USER, "password": "wrong-password-123"}))
    bad.chmod(0o600)
    with pytest.raises(DataError) as e:
        cs.download(["gtFine_trainvaltest.zip"], tmp_path, credentials_file=bad, site=site.base, progress=False)
    assert "refused the login" in str(e.value)
    assert "wrong-password-123" not in str(e.value) and USER not in str(e.value)
    assert not (tmp_path / "gtFine_trainvaltest.zip").exists()


def test_site_checksum_mismatch_deletes_and_shows_both(tmp_path, monkeypatch, no_login):
    s = CityscapesSite(USER, PASSWORD)
    s.add_package("gtFine_trainvaltest.zip", ARCHIVES["gtFine_trainvaltest.zip"], md5="0" * 32)
    s.start()
    try:
        monkeypatch.setenv(cs.ENV_USERNAME, USER)
        monkeypatch.setenv(cs.ENV_PASSWORD, PASSWORD)
        with pytest.raises(DataError) as e:
            cs.download(["gtFine_trainvaltest.zip"], tmp_path, site=s.base, progress=False)
    finally:
        s.stop()
    msg = str(e.value)
    assert f"expected MD5 {'0' * 32}" in msg and f"got {md5(ARCHIVES['gtFine_trainvaltest.zip'])}" in msg
    assert not (tmp_path / "gtFine_trainvaltest.zip").exists()
    assert not (tmp_path / ".partial" / "gtFine_trainvaltest.zip").exists()


def test_interrupted_download_resumes_on_next_run(site, tmp_path, monkeypatch, no_login):
    monkeypatch.setenv(cs.ENV_USERNAME, USER)
    monkeypatch.setenv(cs.ENV_PASSWORD, PASSWORD)
    path = site.file_path("gtFine_trainvaltest.zip")
    site.cuts[path] = [3000]
    with pytest.raises(DataError, match="run the same command again to resume"):
        cs.download(["gtFine_trainvaltest.zip"], tmp_path, site=site.base, retries=0, progress=False)
    assert (tmp_path / ".partial" / "gtFine_trainvaltest.zip").stat().st_size == 2048
    assert not (tmp_path / "gtFine_trainvaltest.zip").exists()
    cs.download(["gtFine_trainvaltest.zip"], tmp_path, site=site.base, retries=0, progress=False)
    assert (tmp_path / "gtFine_trainvaltest.zip").read_bytes() == ARCHIVES["gtFine_trainvaltest.zip"]
    assert [r["range"] for r in site.requests_for(path)] == [None, "bytes=2048-"]
