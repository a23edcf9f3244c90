"""Small file helpers shared by every step: atomic writes and JSON I/O.

Every result file is written to a temporary file in the same directory (``.<name>.*.tmp``),
flushed to disk (fsync) and renamed into place (``os.replace``, atomic on POSIX), so a killed
job never leaves a half-written file under a real name that a rerun would trust. A kill
between the write and the rename leaves only the temporary file, which the next writer of
the same file removes (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


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
