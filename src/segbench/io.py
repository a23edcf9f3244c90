"""Small file helpers shared by every step: atomic writes and JSON I/O.

Every result file is written to a temporary file in the same directory (``.<name>.*.tmp``),
flushed to disk (fsync) and renamed into place (``os.replace``, atomic on POSIX), so a killed
job never leaves a half-written file under a real name that a rerun would trust. A kill
between the write and the rename leaves only the temporary file, which the next writer of
the same file removes (:func:`remove_stale_temps`). The file gets the mode any file the user
writes gets (0666 less the umask), not the 0600 of a bare temporary file, so colleagues and
an ``mlflow server`` running as another user can read the results a shared umask allows.

Temporary folders (:func:`owned_tempdir`) carry their owner's pid in the name, so the next
segbench process removes those whose owner was killed before it could clean up.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else by the
    set-and-restore idiom."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a file the user creates gets: 0666 less the umask (e.g. 0644, or 0664 under a
    shared project's umask 002). For files made by tools that choose their own (sqlite: 0644)."""
    return 0o666 & ~_umask()


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a directory entry table) to disk; best effort for directories
    (some file systems refuse to open or fsync one)."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; if the block succeeds, fsync it and rename it
    onto ``path`` (then fsync the directory). If the block raises, the temporary file is
    removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes it 0600
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_path` left beside ``path``; return them.

    Only for a writer that owns ``path`` exclusively (a Snakemake job and its outputs)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def owned_tempdir(prefix: str) -> Path:
    """A fresh temporary folder ``<tmp>/<prefix><pid>-<random>`` for this process; the caller
    removes it when done. First, the folders of the same prefix that this user's killed
    processes left (their pid no longer runs) are removed, with a note on stderr."""
    base = Path(tempfile.gettempdir())
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[^/]+$")
    for old in base.glob(f"{glob.escape(prefix)}*"):
        m = pattern.match(old.name)
        try:
            mine = old.is_dir() and not old.is_symlink() and old.stat().st_uid == os.getuid()
        except OSError:
            continue
        if m and mine and not _pid_alive(int(m.group(1))):
            shutil.rmtree(old, ignore_errors=True)
            if not old.exists():
                print(f"segbench: removed {old}, left by process {m.group(1)} which is gone", file=sys.stderr)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base))
