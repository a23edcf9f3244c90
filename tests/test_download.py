"""download / verify / extract: resuming over HTTP Range after a cut connection, checksum
failures, unsafe archives and the free-space check, against a local server on 127.0.0.1."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from datasets_support import FileServer, md5, tar_bytes, zip_bytes

from segbench.cli import main
from segbench.data import DataError
from segbench.data import download as dl

DATA = os.urandom(300_000)


@pytest.fixture
def server():
    s = FileServer().start()
    s.files["/files/archive.zip"] = DATA
    yield s
    s.stop()


def test_plain_download(server, tmp_path):
    dest = dl.download(server.url("/files/archive.zip"), tmp_path / "a.zip", progress=False)
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "a.zip.part").exists()
    assert server.requests_for("/files/archive.zip")[0]["range"] is None
    # an existing file is not fetched again
    dl.download(server.url("/files/archive.zip"), dest, progress=False)
    assert len(server.requests_for("/files/archive.zip")) == 1


def test_resumes_after_cut_connection_within_one_call(server, tmp_path):
    server.cuts["/files/archive.zip"] = [100_000, 50_000]
    dest = dl.download(server.url("/files/archive.zip"), tmp_path / "a.zip", progress=False, backoff=0)
    assert dest.read_bytes() == DATA
    ranges = [r["range"] for r in server.requests_for("/files/archive.zip")]
    assert ranges == [None, "bytes=100000-", "bytes=150000-"]


def test_resumes_across_runs(server, tmp_path, capsys):
    """A run that dies (no retries left) keeps the .part; the same command run again resumes it."""
    server.cuts["/files/archive.zip"] = [120_000]
    args = ["download", "ade20k", "--dir", str(tmp_path), "--retries", "0", "--quiet",
            "--url", f"ADEChallengeData2016.zip={server.url('/files/archive.zip')}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "interrupted after 117.2 KB of 293.0 KB" in err and "run the same command again to resume" in err
    part = tmp_path / "ADEChallengeData2016.zip.part"
    assert part.stat().st_size == 120_000 and not (tmp_path / "ADEChallengeData2016.zip").exists()

    assert main(args) == 0
    assert (tmp_path / "ADEChallengeData2016.zip").read_bytes() == DATA and not part.exists()
    assert [r["range"] for r in server.requests_for("/files/archive.zip")] == [None, "bytes=120000-"]


def test_server_ignoring_range_starts_over(server, tmp_path):
    server.cuts["/files/archive.zip"] = [70_000]
    server.ignore_range.add("/files/archive.zip")
    dest = dl.download(server.url("/files/archive.zip"), tmp_path / "a.zip", progress=False, backoff=0)
    assert dest.read_bytes() == DATA


def test_complete_part_answered_416(server, tmp_path):
    (tmp_path / "a.zip.part").write_bytes(DATA)
    dest = dl.download(server.url("/files/archive.zip"), tmp_path / "a.zip", progress=False)
    assert dest.read_bytes() == DATA
    assert server.requests_for("/files/archive.zip")[0]["range"] == f"bytes={len(DATA)}-"


def test_http_error_names_url(server, tmp_path):
    with pytest.raises(DataError) as e:
        dl.download(server.url("/files/missing.zip"), tmp_path / "m.zip", progress=False)
    assert "/files/missing.zip" in str(e.value) and "404" in str(e.value) and "download.urls" in str(e.value)


def test_download_checks_free_space(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "free_bytes", lambda path: 1000)
    with pytest.raises(DataError, match="not enough disk space for downloading a.zip"):
        dl.download(server.url("/files/archive.zip"), tmp_path / "a.zip", progress=False)


# ------------------------------------------------------------------ verify
def test_verify_mismatch_deletes_and_shows_both(tmp_path, capsys):
    f = tmp_path / "ADEChallengeData2016.zip"
    f.write_bytes(b"not the real archive")
    rc = main(["verify", str(f), "--source", "ade20k", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "expected MD5 7328b3957e407ddae1d3cbf487f149ef" in err and f"got {md5(b'not the real archive')}" in err
    assert "deleted" in err and not f.exists()


def test_verify_ok_with_override_and_stamp(tmp_path):
    f = tmp_path / "benchmark.tgz"
    f.write_bytes(b"mini")
    stamp = tmp_path / "benchmark.tgz.verified"
    assert main(["verify", str(f), "--source", "voc", "--md5", md5(b"mini"), "--out", str(stamp), "--quiet"]) == 0
    assert stamp.read_text() == f"{md5(b'mini')}  benchmark.tgz\n" and f.exists()


def test_published_checksums_are_the_reference_ones():
    got = {name: a.md5 for s in dl.SOURCES for name, a in dl.archives_of(s).items()}
    assert got == {
        "gtFine_trainvaltest.zip": None, "leftImg8bit_trainvaltest.zip": None,  # served by the site
        "ADEChallengeData2016.zip": "7328b3957e407ddae1d3cbf487f149ef",
        "VOCtrainval_11-May-2012.tar": "6cd6e144f989b92b3379bac3b3de84fd",
        "benchmark.tgz": "82b4d87ceb2ed10f6038a1cba92111cb",
        "bdd100k_images_10k.zip": "08f26aecceda982568063d3d5873378e",
        "bdd100k_sem_seg_labels_trainval.zip": "9a2968dde3345eeb689cffb1e26f9c78",
    }


# ------------------------------------------------------------------ extract
def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ok = tarfile.TarInfo("data/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        member.size = len(data) if member.isreg() else 0
        tf.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return buf.getvalue()


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("case,build,why", [
    ("zip_dotdot", lambda: zip_bytes({"data/ok.txt": b"ok", "../evil.txt": b"x"}), "'..'"),
    ("zip_nested_dotdot", lambda: zip_bytes({"data/../../evil.txt": b"x"}), "'..'"),
    ("zip_absolute", lambda: zip_bytes({"/tmp/evil.txt": b"x"}), "absolute path"),
    ("tar_dotdot", lambda: _tar_with(tarfile.TarInfo("../evil.txt"), b"x"), "'..'"),
    ("tar_absolute", lambda: _tar_with(tarfile.TarInfo("/tmp/evil.txt"), b"x"), "absolute path"),
    ("tar_symlink_out", lambda: _tar_with(_link("data/link", "../../outside")), "points outside"),
    ("tar_symlink_abs", lambda: _tar_with(_link("data/link", "/etc")), "points outside"),
    ("tar_hardlink_out", lambda: _tar_with(_link("data/hard", "../outside", tarfile.LNKTYPE)), "hard link"),
    ("tar_device", lambda: _tar_with(_link("data/dev", "", tarfile.CHRTYPE)), "special file"),
])
def test_extract_refuses_unsafe_members(tmp_path, case, build, why):
    suffix = ".zip" if case.startswith("zip") else ".tgz"
    archive = tmp_path / f"evil{suffix}"
    archive.write_bytes(build())
    target = tmp_path / "deep" / "target"
    with pytest.raises(DataError) as e:
        dl.extract([archive], target, progress=False)
    msg = str(e.value)
    assert "refusing to extract" in msg and why in msg and archive.name in msg
    assert not target.exists(), "nothing is written when a member is unsafe"
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


def test_extract_zip_and_tgz_with_inner_link(tmp_path):
    z = tmp_path / "a.zip"
    z.write_bytes(zip_bytes({"top/a/x.txt": b"hello", "top/b.bin": bytes(range(256))}))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("top/c/y.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
        tf.addfile(_link("top/c/link.txt", "y.txt"))
    t = tmp_path / "b.tgz"
    t.write_bytes(buf.getvalue())
    counts = dl.extract([z, t], tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert (out / "top/a/x.txt").read_bytes() == b"hello" and (out / "top/b.bin").read_bytes() == bytes(range(256))
    assert (out / "top/c/y.txt").read_text() == "abc" and (out / "top/c/link.txt").read_text() == "abc"
    assert counts["b.tgz"] == 2


def test_extract_checks_free_space(tmp_path, monkeypatch):
    z = tmp_path / "a.tar"
    z.write_bytes(tar_bytes({"big/file.bin": b"\0" * 200_000}))
    monkeypatch.setattr(dl, "free_bytes", lambda path: 100_000)
    with pytest.raises(DataError) as e:
        dl.extract([z], tmp_path / "out", progress=False)
    assert "not enough disk space for extracting a.tar" in str(e.value) and "195.3 KB" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_extract_reports_broken_archive(tmp_path):
    z = tmp_path / "broken.zip"
    z.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="broken.zip is not a readable archive"):
        dl.extract([z], tmp_path / "out", progress=False)


def test_zip_symlink_out_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("top/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "../../../etc/passwd")
    z = tmp_path / "l.zip"
    z.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="symbolic link"):
        dl.extract([z], tmp_path / "out", progress=False)
    assert not Path(tmp_path / "out").exists()
