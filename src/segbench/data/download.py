"""Get dataset archives from their source: resumable download, MD5 check, safe extraction.

The three steps the Snakemake rules chain before ``prepare`` (``segbench download``,
``segbench verify``, ``segbench extract``); each dataset module (:mod:`.cityscapes`,
:mod:`.ade20k`, :mod:`.voc`, :mod:`.bdd100k`) lists its archives as :class:`Archive`
records with the official URL and the published MD5.

* :func:`download` fetches a URL into ``{dest}.part`` and renames it to ``dest`` once the
  whole file is there. A cut connection is resumed with an HTTP ``Range`` request, within
  the same call (``retries`` times) and across calls: the ``.part`` file is kept, so running
  the same command again continues where it stopped. A server that ignores ``Range``
  (answers 200) makes it start over; one that answers 416 for a complete ``.part`` ends it.
* :func:`verify` compares a file's MD5 with the expected one; on a mismatch it deletes
  the file (a re-run downloads it anew) and fails showing both checksums.
* :func:`extract` unpacks ``.zip``, ``.tar``, ``.tgz``/``.tar.gz`` archives after checking
  every member first: absolute paths, ``..`` components, links whose target leaves the
  folder, and special files (devices, FIFOs) are refused, and nothing is written then.
  It also checks that the file system has room for the unpacked size before it starts.

Every long step shows a progress bar in bytes (off with ``progress=False`` or
``SEGBENCH_NO_PROGRESS=1``). Problems raise :class:`~segbench.data.DataError` naming the
file, URL or member and saying what to do. ``requests`` is imported only when downloading.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import os
import shutil
import stat
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from segbench.catalog import DOWNLOADABLE
from segbench.data import DataError

__all__ = [
    "Archive",
    "SOURCES",
    "source_module",
    "archives_of",
    "progress_bar",
    "human_bytes",
    "free_bytes",
    "check_free_space",
    "download",
    "download_part",
    "md5sum",
    "verify",
    "expected_md5",
    "archive_members",
    "unsafe_members",
    "extract",
]

CHUNK = 1 << 20
#: the datasets that can be downloaded (segbench.catalog); each is a module ``segbench.data.{source}``
SOURCES = DOWNLOADABLE
#: room kept free on top of an archive's unpacked size
_DISK_MARGIN = 64 << 20


@dataclass(frozen=True)
class Archive:
    """One file a dataset is published as."""

    name: str
    #: official URL; None where the file sits behind a login (Cityscapes)
    url: str | None
    #: published MD5; None where the site serves it at download time (Cityscapes)
    md5: str | None
    #: published size, for messages
    size: str


def source_module(source: str):
    """The module of a downloadable dataset (``segbench.data.{source}``)."""
    if source not in SOURCES:
        raise ValueError(f"unknown dataset source {source!r}; downloadable sources: {', '.join(SOURCES)}")
    return importlib.import_module(f"segbench.data.{source}")


def archives_of(source: str) -> dict[str, Archive]:
    """Archive name -> :class:`Archive` of a downloadable source."""
    return dict(source_module(source).ARCHIVES)


# ------------------------------------------------------------------ progress, disk space
def progress_bar(total: int | None, desc: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar in bytes: live on a terminal, a line every 10 s in a log file."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, mininterval=0.2 if tty else 10.0, dynamic_ncols=tty,
                disable=not enabled or os.environ.get("SEGBENCH_NO_PROGRESS") == "1")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_free_space(path: str | os.PathLike[str], need: int, what: str) -> None:
    """Fail unless ``need`` bytes (plus a margin) fit on the file system of ``path``."""
    free = free_bytes(path)
    if need + _DISK_MARGIN > free:
        raise DataError(
            f"not enough disk space for {what}: it needs {human_bytes(need)} in {Path(path).absolute()}, "
            f"but only {human_bytes(free)} is free there; free some space (or point results/ at a larger "
            "disk, or set the dataset's `root:` to a copy you already have) and run again"
        )


# ------------------------------------------------------------------ download
class _Incomplete(Exception):
    """The server closed the response before the announced length."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of a ``Content-Range: bytes a-b/total`` (or ``bytes */total``) header."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    first = int(span.split("-")[0]) if span and span != "*" else None
    return first, (int(total) if total.strip().isdigit() else None)


#: what a failed request's message suggests for a wrong URL (datasets' default)
DATASET_URL_HINT = "a dataset's `download.urls` in the config overrides the official one"


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    session: Any = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``{dest}.part`` with HTTP Range.

    Returns ``dest``. An existing ``dest`` counts as downloaded (it is not fetched again;
    :func:`verify` checks it). After ``retries`` failed resumptions within this call the
    ``.part`` file is kept and :class:`DataError` says to run again to resume.
    """
    dest = Path(dest)
    if dest.exists():
        print(f"{dest} is already downloaded")
        return dest
    part = download_part(url, dest, session=session, progress=progress, retries=retries, timeout=timeout,
                         backoff=backoff)
    os.replace(part, dest)
    print(f"downloaded {dest} ({human_bytes(dest.stat().st_size)})")
    return dest


def download_part(
    url: str,
    dest: str | os.PathLike[str],
    *,
    session: Any = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    url_hint: str = DATASET_URL_HINT,
) -> Path:
    """The loop of :func:`download` without the final rename: fetch ``url`` into
    ``{dest}.part`` (resumed with HTTP Range, within this call and across calls) and return
    that complete ``.part`` file, for a caller that checks it before moving it to ``dest``
    (:func:`segbench.weights.fetch_weights`). ``url_hint`` says, in the message of an HTTP
    error, where a user sets another URL.
    """
    import requests
    import urllib3

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    http = session or requests.Session()
    total: int | None = None
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"}  # the archive's own bytes, never re-encoded
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with http.get(url, stream=True, headers=headers, timeout=timeout, allow_redirects=True) as r:
                if r.status_code == 416 and have:
                    _, total = _content_range(r.headers.get("Content-Range"))
                    if total == have:  # the part was already complete
                        break
                    print(f"{part}: the server refused to resume at byte {have}; starting over", file=sys.stderr)
                    part.unlink()
                    continue
                if r.status_code >= 400:
                    if r.status_code >= 500 and attempt < retries:
                        raise _Incomplete(f"server error {r.status_code} {r.reason}")
                    raise DataError(
                        f"downloading {url} failed: the server answered {r.status_code} {r.reason}; check the URL "
                        f"({url_hint}) and that the file is still published there"
                    )
                if r.status_code == 206:
                    first, total = _content_range(r.headers.get("Content-Range"))
                    if first != have:
                        part.unlink(missing_ok=True)
                        raise _Incomplete(f"server resumed at byte {first}, not {have}")
                    mode = "ab"
                    if have:
                        print(f"resuming {dest.name} at {human_bytes(have)}", file=sys.stderr)
                else:  # 200: the whole file (a server that ignores Range sends it from the start)
                    if have:
                        print(f"{url}: the server does not resume downloads; starting over", file=sys.stderr)
                    have, mode = 0, "wb"
                    length = r.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                if total is not None:
                    check_free_space(dest.parent, total - have, f"downloading {dest.name}")
                try:
                    with open(part, mode) as f, progress_bar(total, dest.name, progress, initial=have) as bar:
                        for chunk in r.raw.stream(CHUNK, decode_content=False):
                            f.write(chunk)
                            bar.update(len(chunk))
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    raise _disk_full(e, f"downloading {dest.name} (the partial file {part} is kept and "
                                        "resumed)", dest.parent) from None
            size = part.stat().st_size
            if total is not None and size != total:
                raise _Incomplete(f"connection closed at {size} of {total} bytes")
            break
        except (requests.RequestException, urllib3.exceptions.HTTPError, _Incomplete) as e:
            size = part.stat().st_size if part.exists() else 0
            if attempt >= retries:
                of = f" of {human_bytes(total)}" if total else ""
                raise DataError(
                    f"downloading {url} was interrupted after {human_bytes(size)}{of} ({e.__class__.__name__}: {e}); "
                    f"the partial file {part} is kept: run the same command again to resume"
                ) from None
            attempt += 1
            print(f"{dest.name}: connection lost at {human_bytes(size)} ({e.__class__.__name__}); "
                  f"resuming (attempt {attempt}/{retries})", file=sys.stderr)
            time.sleep(backoff * 2 ** (attempt - 2) if attempt > 1 else 0)  # at once, then 1, 2, 4 ... s
    return part


# ------------------------------------------------------------------ verify
def file_digest(path: str | os.PathLike[str], algorithm: str, *, progress: bool = True) -> str:
    """The hex digest (``hashlib`` ``algorithm``: md5, sha256) of a file, read in chunks."""
    path = Path(path)
    h = hashlib.new(algorithm)
    with open(path, "rb") as f, progress_bar(path.stat().st_size, f"{algorithm} {path.name}", progress) as bar:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def md5sum(path: str | os.PathLike[str], *, progress: bool = True) -> str:
    return file_digest(path, "md5", progress=progress)


def expected_md5(archive: str | os.PathLike[str], source: str | None = None, override: str | None = None) -> str:
    """The MD5 an archive must have: ``override``, else the source's published one, else the
    ``{archive}.md5`` file a download left beside it (Cityscapes serves its MD5s at download time)."""
    path = Path(archive)
    if override:
        return override.strip().lower()
    if source:
        known = archives_of(source).get(path.name)
        if known is not None and known.md5:
            return known.md5
    side = path.with_name(path.name + ".md5")
    if side.exists():
        return side.read_text(encoding="utf-8").split()[0].lower()
    where = f" of source '{source}'" if source else ""
    raise DataError(f"no expected MD5 known for {path}{where}: pass --md5 HEX (config: the dataset's "
                    f"`download.md5: {{{path.name}: HEX}}`), or download it again with `segbench download`")


def verify(path: str | os.PathLike[str], expected: str, *, progress: bool = True) -> str:
    """Check ``path`` against the ``expected`` MD5; on a mismatch delete it and fail."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: download it first (`segbench download`)")
    actual = md5sum(path, progress=progress)
    if actual != expected.lower():
        path.unlink()
        raise DataError(
            f"checksum mismatch for {path.name}: expected MD5 {expected.lower()}, got {actual}. The file was "
            "deleted; run the download again. If the new copy fails too, the file at the source differs from "
            "the published one: check the URL and the expected MD5 (a dataset's `download.md5` in the config)"
        )
    return actual


# ------------------------------------------------------------------ extract
@dataclass(frozen=True)
class Member:
    name: str
    size: int
    kind: str  # "file", "dir", "symlink", "hardlink", "special"
    link: str = ""


def _archive_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")):
        return "tar"
    raise DataError(f"{path}: unknown archive type; expected .zip, .tar, .tgz or .tar.gz")


def archive_members(path: str | os.PathLike[str]) -> list[Member]:
    """Every member of a zip or tar archive, with its size and kind."""
    path = Path(path)
    try:
        if _archive_kind(path) == "zip":
            out = []
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        out.append(Member(info.filename, 0, "symlink", zf.read(info).decode("utf-8", "replace")))
                    elif info.is_dir():
                        out.append(Member(info.filename, 0, "dir"))
                    else:
                        out.append(Member(info.filename, info.file_size, "file"))
            return out
        with tarfile.open(path, "r:*") as tf:
            out = []
            for m in tf.getmembers():
                kind = ("file" if m.isreg() else "dir" if m.isdir() else "symlink" if m.issym()
                        else "hardlink" if m.islnk() else "special")
                out.append(Member(m.name, m.size if m.isreg() else 0, kind, m.linkname))
            return out
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path} is not a readable archive ({e.__class__.__name__}: {e}); delete it and "
                        "download it again") from None


def _outside(target: Path, path: str) -> bool:
    resolved = os.path.normpath(os.path.join(target, path))
    return resolved != str(target) and not resolved.startswith(str(target) + os.sep)


def unsafe_members(members: list[Member], target: str | os.PathLike[str]) -> list[str]:
    """Why each unsafe member may not be extracted into ``target`` (empty when all are safe)."""
    target = Path(os.path.abspath(target))
    problems = []
    for m in members:
        name = m.name.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            problems.append(f"{m.name!r}: absolute path")
        elif ".." in parts:
            problems.append(f"{m.name!r}: path with '..' leads outside the target folder")
        elif m.kind == "special":
            problems.append(f"{m.name!r}: device, FIFO or other special file")
        elif m.kind == "symlink":
            link = m.link.replace("\\", "/")
            if link.startswith("/") or _outside(target, os.path.join(os.path.dirname(name), link)):
                problems.append(f"{m.name!r}: symbolic link to {m.link!r} points outside the target folder")
        elif m.kind == "hardlink":
            link = m.link.replace("\\", "/")
            if link.startswith("/") or ".." in PurePosixPath(link).parts or _outside(target, link):
                problems.append(f"{m.name!r}: hard link to {m.link!r} points outside the target folder")
    return problems


def _inside(target: Path, name: str) -> Path:
    """The destination of member ``name``, checked again against links made on disk."""
    dst = target / name
    real = os.path.realpath(dst.parent)
    if real != str(target) and not real.startswith(str(target) + os.sep):
        raise DataError(f"archive member {name!r} would be written through a link outside {target}; refused")
    return dst


def _copy(src, dst: Path, bar) -> None:
    try:
        with open(dst, "wb") as out:
            for block in iter(lambda: src.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    except BaseException:
        dst.unlink(missing_ok=True)  # never leave a half-written member that looks complete
        raise


def _disk_full(e: OSError, what: str, where: Path) -> DataError:
    try:
        free = human_bytes(shutil.disk_usage(where if where.exists() else where.parent).free)
    except OSError:
        free = "unknown"
    return DataError(f"the disk filled up while {what} (no space left on device in {where}; {free} free now); "
                     "free some space (or point results/ at a larger disk) and run the same command again")


def _extract_one(path: Path, target: Path, bar) -> None:
    if _archive_kind(path) == "zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                dst = _inside(target, info.filename)
                if info.is_dir():
                    dst.mkdir(parents=True, exist_ok=True)
                elif stat.S_ISLNK(mode):
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.unlink(missing_ok=True)
                    os.symlink(zf.read(info).decode("utf-8"), dst)
                else:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src:
                        _copy(src, dst, bar)
        return
    with tarfile.open(path, "r:*") as tf:
        for m in tf:
            _inside(target, m.name)
            if m.isreg():
                dst = target / m.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None
                with src:
                    _copy(src, dst, bar)
                os.chmod(dst, 0o644 | (m.mode & 0o111))
            else:  # directories and (already checked) links; the 'data' filter checks them once more
                tf.extract(m, target, filter="data")


def extract(archives: list[str | os.PathLike[str]], target: str | os.PathLike[str], *,
            progress: bool = True) -> dict[str, int]:
    """Unpack ``archives`` into ``target`` after checking every member and the free space.

    Returns ``{archive name: number of members}``. Nothing is written when a member is
    unsafe (see :func:`unsafe_members`) or the disk is too small.
    """
    target = Path(os.path.abspath(target))
    paths = [Path(a) for a in archives]
    members: dict[Path, list[Member]] = {}
    problems: list[str] = []
    for p in paths:
        if not p.is_file():
            raise DataError(f"archive {p} does not exist: download and verify it first")
        members[p] = archive_members(p)
        problems += [f"{p.name}: {why}" for why in unsafe_members(members[p], target)]
    if problems:
        raise DataError.from_problems(
            f"refusing to extract into {target}: unsafe archive members",
            problems,
            "An archive from the official source never contains these. Delete the archive, check its URL and "
            "MD5, and download it again.",
        )
    need = sum(m.size for ms in members.values() for m in ms)
    check_free_space(target, need, f"extracting {', '.join(p.name for p in paths)}")
    target.mkdir(parents=True, exist_ok=True)
    with progress_bar(need, "extract", progress) as bar:
        for p in paths:
            print(f"extracting {p.name} ({len(members[p])} members) into {target}", file=sys.stderr)
            try:
                _extract_one(p, target, bar)
            except DataError:
                raise
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise _disk_full(e, f"extracting {p.name}", target) from None
                if not e.errno:  # a read error inside the archive's data
                    raise _damaged(p, target, e) from None
                raise
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, ValueError) as e:
                raise _damaged(p, target, e) from None
    return {p.name: len(members[p]) for p in paths}


def _damaged(archive: Path, target: Path, e: BaseException) -> DataError:
    return DataError(f"{archive} is damaged: {e.__class__.__name__}: {e}. The files extracted into {target} so far "
                     "are incomplete. Delete the archive (and that folder) and download it again; `segbench verify` "
                     "checks its MD5")

