"""Checked readers of the files in a run directory and of a profile (docs/outputs.md).

Every reader of a run file goes through here, so a damaged file (cut short by a full disk or
a copy, edited by hand, left over from an older run) stops the step with one clear message
instead of a raw ``JSONDecodeError`` or, worse, a silently shorter curve. Each reader checks
that its file is

* there, a regular file (not a directory), UTF-8 text where it is text;
* parseable and complete (a JSON document that ends, a CSV whose every line ends);
* holding the keys / columns readers use, of the right kind;
* consistent with the run's ``run.json``: the same ``run_key``, one history row per epoch
  1..``epochs``, per-class lists of ``num_classes``.

Otherwise it raises :class:`RunFileError` (a :class:`~segbench.errors.UserError`, so the
command line shows ``segbench STEP: error: MESSAGE``) whose message names the file, what is
wrong and the remedy: every one of these files is an output of the workflow, so deleting it
and running ``snakemake`` again recreates it from the step that writes it (:data:`PRODUCERS`).
A missing file raises :class:`RunFileMissing`, which is also a ``FileNotFoundError``.

Which step writes which file (the remedy names it):

=================  ==========  ==================================================
file               step        reader
=================  ==========  ==================================================
``run.json``       train       :func:`read_run`
``history.csv``    train       :func:`read_history`
``model.pt``       train       (needs torch: ``segbench.engine.evaluate.load_trained``)
``metrics.json``   evaluate    :func:`read_metrics`
``confusion.npy``  evaluate    :func:`read_confusion`
``samples.npz``    evaluate    :func:`read_samples`
per-image arrays   evaluate    :func:`read_per_image` (``PER_IMAGE``)
profile json       profile     :func:`read_profile`
=================  ==========  ==================================================

Imports neither torch nor pandas; numpy only inside :func:`read_confusion` and
:func:`read_samples`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from segbench.errors import UserError

#: the step of the workflow that writes each file (the profile json under any name: "profile")
PRODUCERS = {
    "run.json": "train",
    "history.csv": "train",
    "model.pt": "train",
    "metrics.json": "evaluate",
    "confusion.npy": "evaluate",
    "samples.npz": "evaluate",
    "confusion_per_image.npy": "evaluate",
    "boundary_per_image.npy": "evaluate",
    "segments_per_image.npy": "evaluate",
    "robustness.json": "robustness",
    "corrupted_iou_per_image.npy": "robustness",
    "profile": "profile",
}

#: the columns of history.csv, in order (as ``segbench.engine.train.HISTORY_COLUMNS`` writes them)
HISTORY_COLUMNS = ("epoch", "train_loss", "train_mIoU", "train_aAcc", "val_loss", "val_mIoU", "val_aAcc",
                   "lr", "skipped_batches", "epoch_seconds", "time")
#: history.csv columns left empty on an epoch without validation (``train.val_every`` > 1)
VAL_COLUMNS = ("val_loss", "val_mIoU", "val_aAcc")
#: history.csv columns holding whole numbers
INT_COLUMNS = ("epoch", "skipped_batches")

#: the keys of run.json every reader relies on (the train step writes more: docs/outputs.md)
RUN_KEYS = ("run_key", "dataset", "model", "loss", "seed", "config", "num_classes", "class_names", "epochs")
#: the keys of metrics.json every reader relies on
METRICS_KEYS = ("run_key", "mIoU", "aAcc", "mAcc", "mDice", "IoU", "class_names", "num_images", "input_size")
#: the scalar scores of metrics.json (fractions; NaN or null when undefined)
SCORES = ("mIoU", "aAcc", "mAcc", "mDice")
#: metrics.json's per-class lists: ``num_classes`` long each (when present; IoU always is)
PER_CLASS = ("IoU", "Acc", "Dice")
#: the keys of a profile json every reader relies on
PROFILE_KEYS = ("model", "input_size", "params", "macs", "size_mb", "fps")
#: the per-image arrays evaluation writes (docs/statistics.md), and their shapes past the
#: image axis N (C: num_classes): the confusion matrix of each val image (rows ground truth),
#: its Boundary IoU intersection and union per class, and its ground-truth segments and
#: recalled segments per size bin (small, medium, large)
PER_IMAGE = {
    "confusion_per_image.npy": ("C", "C"),
    "boundary_per_image.npy": (2, "C"),
    "segments_per_image.npy": (3, 2),
}
#: the arrays of samples.npz
SAMPLE_ARRAYS = ("images", "labels", "preds", "names")


class RunFileError(UserError):
    """A run file (or profile) that cannot be used: damaged, incomplete or inconsistent.

    ``path`` is the file; the message names it, says what is wrong and how to recreate it."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


class RunFileMissing(RunFileError, FileNotFoundError):
    """A run file that does not exist (also a ``FileNotFoundError``)."""

    def __str__(self) -> str:  # OSError would print its errno fields instead
        return str(self.args[0])


# --------------------------------------------------------------------------- messages


def producer(path: str | os.PathLike) -> str:
    """The workflow step that writes ``path``: train, evaluate or profile (by the file's name)."""
    return PRODUCERS.get(Path(path).name, "profile")


def remedy(path: str | os.PathLike, step: str | None = None) -> str:
    """What to do about a damaged ``path``: delete it and let snakemake recreate it."""
    step = step or producer(path)
    return (f"it is an output of the workflow's {step} step: delete it and run `snakemake` again, "
            f"which recreates it (by hand: `segbench {step}`)")


def damaged(path: str | os.PathLike, problem: str, step: str | None = None) -> RunFileError:
    """A :class:`RunFileError` saying ``{path} {problem}; {remedy}``."""
    return RunFileError(f"{path} {problem}; {remedy(path, step)}", path)


def missing(path: str | os.PathLike, step: str | None = None) -> RunFileMissing:
    """A :class:`RunFileMissing` for ``path``, naming the step that writes it."""
    step = step or producer(path)
    return RunFileMissing(f"{path} is missing; it is written by the workflow's {step} step: "
                          f"run `snakemake` (by hand: `segbench {step}`)", path)


# --------------------------------------------------------------------------- low level


def read_bytes(path: str | os.PathLike, step: str | None = None) -> bytes:
    """The bytes of ``path``; :class:`RunFileMissing` if absent, :class:`RunFileError` if it is a
    directory, empty or unreadable."""
    path = Path(path)
    if not path.exists():
        raise missing(path, step)
    if path.is_dir():
        raise RunFileError(f"{path} is a directory, not a file; remove it (`rm -r {path}`) and run "
                           f"`snakemake` again, whose {step or producer(path)} step writes the file", path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise damaged(path, f"cannot be read ({e.strerror or e})", step) from None
    if not data.strip():
        raise damaged(path, "is empty", step)
    return data


def read_text(path: str | os.PathLike, step: str | None = None) -> str:
    """The UTF-8 text of ``path`` (checked as :func:`read_bytes`, then decoded)."""
    data = read_bytes(path, step)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            raise damaged(path, "is truncated: it stops inside a UTF-8 character", step) from None
        raise damaged(path, f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})", step) from None


def read_json_object(path: str | os.PathLike, step: str | None = None) -> dict:
    """The JSON object in ``path``; :class:`RunFileError` naming the line of a parse error, or
    saying the file is truncated when the document stops before it is complete."""
    text = read_text(path, step)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        end = text.rstrip()
        # every writer ends the object with "}": a document that stops early is cut short
        if e.pos >= len(end) or not end.endswith("}") or e.msg.startswith("Unterminated string"):
            line = end.count("\n") + 1
            raise damaged(path, f"is truncated: its JSON stops at line {line} "
                                "before the document is complete", step) from None
        raise damaged(path, f"is not JSON: {e.msg} at line {e.lineno} column {e.colno}", step) from None
    if not isinstance(obj, dict):
        raise damaged(path, f"holds a JSON {type(obj).__name__}, not an object", step)
    return obj


def _require(path: Path, obj: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    absent = [k for k in keys if k not in obj]
    if absent:
        raise damaged(path, f"is missing key {', '.join(map(repr, absent))} (incomplete or from an older version)")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _run_json(run_dir: Path, run: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return read_run(run_dir) if run is None else run


# --------------------------------------------------------------------------- run.json


def read_run(run_dir: str | os.PathLike) -> dict:
    """``run_dir/run.json`` (written by train), checked: the :data:`RUN_KEYS`, ``run_key`` equal to
    ``{dataset}/{model}/{loss}/s{seed}``, ``epochs`` and ``num_classes`` positive whole numbers,
    ``class_names`` a list of ``num_classes`` and ``config`` an object. Returned unchanged."""
    path = Path(run_dir) / "run.json"
    info = read_json_object(path)
    _require(path, info, RUN_KEYS)
    for k in ("epochs", "num_classes"):
        if not isinstance(info[k], int) or isinstance(info[k], bool) or info[k] < 1:
            raise damaged(path, f"says {k}={info[k]!r}, not a whole number above 0")
    if not isinstance(info["class_names"], list) or len(info["class_names"]) != info["num_classes"]:
        raise damaged(path, f"has {_count(info['class_names'])} class_names but num_classes={info['num_classes']}")
    if not isinstance(info["config"], dict):
        raise damaged(path, f"has a config that is a {type(info['config']).__name__}, not an object")
    key = "{dataset}/{model}/{loss}/s{seed}".format(**info)
    if info["run_key"] != key:
        raise damaged(path, f"says run_key {info['run_key']!r} but its dataset/model/loss/seed make {key!r}")
    return info


def _count(v: Any) -> str:
    """``3`` for a list of 3; ``a str, not a list of,`` for anything else (message wording)."""
    return str(len(v)) if isinstance(v, list) else f"a {type(v).__name__}, not a list of,"


# --------------------------------------------------------------------------- history.csv


def read_history(run_dir: str | os.PathLike, run: Mapping[str, Any] | None = None) -> list[dict]:
    """``run_dir/history.csv`` (written by train) as one dict per epoch, checked against run.json.

    ``run`` is the run's run.json as :func:`read_run` returns it (read from ``run_dir`` when
    None). The header must be exactly :data:`HISTORY_COLUMNS`; every line must end (the writer
    ends each with a newline, so a cut file is caught at any byte); there must be one row per
    epoch 1..``run["epochs"]``, in order, without gaps or repeats (fewer rows: truncated).
    Values: ``epoch`` and ``skipped_batches`` int, the others float (``nan``/``inf`` allowed);
    the :data:`VAL_COLUMNS` may be empty on an epoch that was not validated, read as None.
    """
    run_dir = Path(run_dir)
    info = _run_json(run_dir, run)
    path = run_dir / "history.csv"
    text = read_text(path)
    if not text.endswith("\n"):
        raise damaged(path, "is truncated: its last line does not end (the train step ends every line)")
    lines = list(csv.reader(io.StringIO(text)))
    header = tuple(lines[0])
    if header != HISTORY_COLUMNS:
        raise damaged(path, f"has the columns {','.join(header)!r}, not the documented "
                            f"{','.join(HISTORY_COLUMNS)!r}")
    rows = []
    for n, fields in enumerate(lines[1:], start=2):  # n: the line number in the file
        if len(fields) != len(HISTORY_COLUMNS):
            raise damaged(path, f"line {n} has {len(fields)} fields, not {len(HISTORY_COLUMNS)}")
        row = {}
        for col, value in zip(HISTORY_COLUMNS, fields):
            row[col] = _history_value(path, n, col, value)
        expected = len(rows) + 1
        if row["epoch"] != expected:
            raise damaged(path, f"line {n} is epoch {row['epoch']}, expected epoch {expected} "
                                "(one row per epoch from 1, in order)")
        rows.append(row)
    epochs = info["epochs"]
    if len(rows) != epochs:
        what = "is truncated: it has" if len(rows) < epochs else "has"
        raise damaged(path, f"{what} {len(rows)} rows but run.json says {epochs} epochs")
    return rows


def _history_value(path: Path, n: int, col: str, value: str) -> int | float | None:
    if value.strip() == "":
        if col in VAL_COLUMNS:
            return None
        raise damaged(path, f"line {n}: column {col} is empty")
    try:
        return int(value) if col in INT_COLUMNS else float(value)
    except ValueError:
        kind = "a whole number" if col in INT_COLUMNS else "a number"
        raise damaged(path, f"line {n}: column {col} is {value!r}, not {kind}") from None


# --------------------------------------------------------------------------- metrics.json


def read_metrics(run_dir: str | os.PathLike, run: Mapping[str, Any] | None = None) -> dict:
    """``run_dir/metrics.json`` (written by evaluate), checked against run.json.

    ``run`` as for :func:`read_history`. Checks the :data:`METRICS_KEYS`; ``run_key`` equal to
    run.json's; the :data:`SCORES` numbers (NaN) or null; each of :data:`PER_CLASS` present a
    list of ``num_classes`` numbers or nulls, as ``class_names``; ``input_size`` ``[H, W]``.
    Returned unchanged (null scores stay None: the callers decide what they mean).
    """
    run_dir = Path(run_dir)
    info = _run_json(run_dir, run)
    path = run_dir / "metrics.json"
    m = read_json_object(path)
    _require(path, m, METRICS_KEYS)
    if m["run_key"] != info["run_key"]:
        raise damaged(path, f"says run_key {m['run_key']!r} but run.json says {info['run_key']!r} "
                            "(a stale or copied file)")
    for k in SCORES:
        if not (m[k] is None or _is_number(m[k])):
            raise damaged(path, f"says {k}={m[k]!r}, not a number")
    c = info["num_classes"]
    for k in (*PER_CLASS, "class_names"):
        if k not in m:
            continue
        v = m[k]
        if not isinstance(v, list) or len(v) != c:
            raise damaged(path, f"has {_count(v)} {k} values but run.json says num_classes={c}")
        if k != "class_names" and not all(x is None or _is_number(x) for x in v):
            raise damaged(path, f"has a {k} value that is not a number: {v!r}")
    size = m["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size)):
        raise damaged(path, f"says input_size={size!r}, not [H, W]")
    return m


# --------------------------------------------------------------------------- confusion.npy, samples.npz


def read_confusion(run_dir: str | os.PathLike, run: Mapping[str, Any] | None = None):
    """``run_dir/confusion.npy`` (written by evaluate): an integer ``[C, C]`` numpy array, C =
    run.json's ``num_classes`` (``run`` as for :func:`read_history`)."""
    import numpy as np

    run_dir = Path(run_dir)
    info = _run_json(run_dir, run)
    path = run_dir / "confusion.npy"
    read_bytes(path)  # missing / directory / empty
    try:
        conf = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise damaged(path, f"is not a readable .npy array (truncated or damaged: {_first_line(e)})") from None
    c = info["num_classes"]
    if conf.shape != (c, c) or conf.dtype.kind not in "iu":
        raise damaged(path, f"holds a {conf.dtype} array of shape {list(conf.shape)}, not the int64 "
                            f"[{c}, {c}] of run.json's num_classes")
    return conf


def read_per_image(run_dir: str | os.PathLike, name: str, run: Mapping[str, Any] | None = None,
                   metrics: Mapping[str, Any] | None = None):
    """One of evaluation's per-image arrays (:data:`PER_IMAGE`): a non-negative integer numpy
    array [N, ...] with N = metrics.json's ``num_images`` (``metrics`` when given) and C =
    run.json's ``num_classes``. ``None`` when the file is absent (a run evaluated by an older
    segbench: its tables show no interval)."""
    import numpy as np

    run_dir = Path(run_dir)
    path = run_dir / name
    if not path.exists():
        return None
    info = _run_json(run_dir, run)
    if path.is_dir():  # (not read_bytes: ADE20K's confusions are hundreds of MB)
        raise RunFileError(f"{path} is a directory, not a file; remove it (`rm -r {path}`) and run "
                           f"`snakemake` again, whose {producer(path)} step writes the file", path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise damaged(path, f"is not a readable .npy array (truncated or damaged: {_first_line(e)})") from None
    c = info["num_classes"]
    tail = tuple(c if d == "C" else d for d in PER_IMAGE[name])
    n = (metrics or {}).get("num_images")
    if arr.ndim != 1 + len(tail) or tuple(arr.shape[1:]) != tail or arr.dtype.kind not in "iu":
        want = ", ".join(["N", *map(str, tail)])
        raise damaged(path, f"holds a {arr.dtype} array of shape {list(arr.shape)}, not the int64 [{want}] "
                            f"of run.json's num_classes {c}")
    if n is not None and arr.shape[0] != int(n):
        raise damaged(path, f"holds {arr.shape[0]} images, but metrics.json says num_images {n}")
    if arr.size and int(arr.min()) < 0:
        raise damaged(path, "holds negative counts")
    return arr


def read_samples(run_dir: str | os.PathLike) -> dict:
    """``run_dir/samples.npz`` (written by evaluate): ``images`` uint8 [K,H,W,3], ``labels`` and
    ``preds`` uint8 [K,H,W], ``names`` [K] (returned as a numpy array of str)."""
    import zipfile

    import numpy as np

    path = Path(run_dir) / "samples.npz"
    read_bytes(path)
    out = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            absent = [k for k in SAMPLE_ARRAYS if k not in z.files]
            if absent:
                raise damaged(path, f"is missing array {', '.join(map(repr, absent))}")
            for k in SAMPLE_ARRAYS:
                out[k] = z[k]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise damaged(path, f"is not a readable .npz archive (truncated or damaged: {_first_line(e)})") from None
    k = len(out["names"])
    shapes = {name: list(a.shape) for name, a in out.items()}
    ok = (out["images"].ndim == 4 and out["images"].shape[3] == 3
          and out["labels"].ndim == 3 and out["preds"].shape == out["labels"].shape
          and out["images"].shape[:3] == out["labels"].shape and len(out["labels"]) == k)
    if not ok:
        raise damaged(path, f"has arrays of shapes {shapes}, not images [K,H,W,3], labels and preds [K,H,W], "
                            "names [K]")
    out["names"] = np.asarray([str(n) for n in out["names"]])
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


# --------------------------------------------------------------------------- profile


def read_profile(path: str | os.PathLike) -> dict:
    """A profile json (``results/profiles/*.json``, written by profile): the :data:`PROFILE_KEYS`,
    ``params``/``macs``/``size_mb``/``fps`` numbers (or null), ``input_size`` ``[H, W]``."""
    path = Path(path)
    prof = read_json_object(path, "profile")
    absent = [k for k in PROFILE_KEYS if k not in prof]
    if absent:
        raise damaged(path, f"is missing key {', '.join(map(repr, absent))} (incomplete or from an older "
                            "version)", "profile")
    for k in ("params", "macs", "size_mb", "fps"):
        v = prof[k]
        if not (v is None or _is_number(v)) or (_is_number(v) and not math.isnan(v) and v < 0):
            raise damaged(path, f"says {k}={v!r}, not a number", "profile")
    size = prof["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size)):
        raise damaged(path, f"says input_size={size!r}, not [H, W]", "profile")
    return prof


__all__ = [
    "HISTORY_COLUMNS",
    "METRICS_KEYS",
    "PRODUCERS",
    "PROFILE_KEYS",
    "RUN_KEYS",
    "RunFileError",
    "RunFileMissing",
    "damaged",
    "missing",
    "producer",
    "read_bytes",
    "read_confusion",
    "read_history",
    "read_json_object",
    "read_metrics",
    "read_profile",
    "read_run",
    "read_samples",
    "read_text",
    "remedy",
]
