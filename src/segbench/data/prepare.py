"""Prepare a dataset for training and evaluation: :func:`prepare`, and the helpers the datasets share.

:func:`prepare` dispatches on the dataset source to the source's own module, each of which
reads its published on-disk layout: :mod:`segbench.data.cityscapes` (also the synthetic
scenes of :mod:`segbench.data.synthetic`, written in the Cityscapes layout),
:mod:`segbench.data.ade20k`, :mod:`segbench.data.voc` (PASCAL VOC 2012 + SBD) and
:mod:`segbench.data.bdd100k`; and a folder of one's own already in train ids,
:mod:`segbench.data.folder` (docs/extending.md). Each writes, as ``docs/outputs.md`` specifies, under ``out``:

* ``labels/{split}/*.png`` - the train ids (255 = ignore);
* ``meta.json`` - dataset, num_classes, class_names, palette, ignore_index, splits, source;
* ``manifest.csv`` - ``split,image,label`` and the source's extra columns; paths relative
  to ``out``. Images are not copied: ``image`` points into the dataset's root.

Every input is checked before anything is trusted, and all problems are reported together
in one :class:`~segbench.data.DataError`: a missing or empty split folder, an image without
its label (and the reverse), image / label size mismatch, a label that is not a single-channel
8-bit PNG or holds values the dataset does not define, and images that are empty, truncated,
corrupt or 16-bit (:func:`segbench.data.images.check_image`: a PNG's chunks and checksums are
read, a JPEG is decoded at 1/8 scale, so a damaged file is found here and not hours into
training). A greyscale or RGBA image is accepted with a warning (it is converted to RGB when
read). A file with the wrong extension (an image saved as ``.jpg`` where the layout names
``.png``) is reported as such. Each file is written atomically; an existing manifest is
removed first and the new one is written last, so a manifest exists only after a complete,
successful run.

The shared helpers: :func:`check_split_sizes` (split sizes against the published counts, a
warning instead of a failure with ``allow_partial``), :func:`pair_by_stem`,
:func:`read_png_ids`, :func:`image_size` with :class:`ImageNotes`, the messages'
:func:`found_instead` / :func:`other_extensions`, and :func:`write_prepared`, which checks
and converts every label and writes ``labels/``, ``meta.json`` and ``manifest.csv``.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segbench.data import DataError
from segbench.data.cityscapes_labels import IGNORE_INDEX
from segbench.data.images import ImageProblem, check_image
from segbench.io import atomic_path, write_json, write_text

__all__ = [
    "prepare",
    "PARTIAL_HINT",
    "Sample",
    "LabelError",
    "ImageNotes",
    "warn",
    "check_split_sizes",
    "pair_by_stem",
    "image_size",
    "found_instead",
    "other_extensions",
    "read_png_ids",
    "value_lut",
    "write_prepared",
]


def prepare(source: str, root: str | os.PathLike[str], out: str | os.PathLike[str], *, dataset: str | None = None,
            labels: str = "trainId", allow_partial: bool = False, progress: bool = True,
            **options: Any) -> dict[str, Any]:
    """Prepare a dataset of any source (``synthetic``, ``cityscapes``, ``ade20k``, ``voc``,
    ``bdd100k``, ``folder``) from ``root`` into ``out``; ``options`` go to the source's ``prepare``
    (VOC: ``trainaug``, ``sbd_root``). Real datasets are checked against their published
    split sizes; the synthetic one is not."""
    if source == "folder":  # a folder of one's own, already in train ids (segbench.data.folder)
        if options or allow_partial or labels != "trainId":
            raise ValueError("the folder source takes no options: its folder holds the class list and the splits")
        from segbench.data.folder import prepare_folder

        return prepare_folder(root, out, dataset=dataset or source, progress=progress)
    if source == "synthetic":  # the Cityscapes layout, without published split sizes
        if options:
            raise ValueError(f"the synthetic source takes no options, got {sorted(options)}")
        from segbench.data.cityscapes import prepare_cityscapes

        return prepare_cityscapes(root, out, label_set=labels, dataset=dataset or source, progress=progress)
    from segbench.data.download import source_module

    return source_module(source).prepare(root, out, dataset=dataset or source, labels=labels,
                                         allow_partial=allow_partial, progress=progress, **options)


# ====================================================================== shared helpers
MODE_NAMES = {
    "1": "1-bit", "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer",
    "F": "32-bit float", "LA": "2-channel (grey + alpha)", "RGB": "3-channel RGB", "RGBA": "4-channel RGBA",
}


def other_extensions(expected: Path) -> str:
    """`` (found NAME instead: ...)`` when a file of ``expected``'s name with another extension exists."""
    suffix = expected.suffix
    stem = expected.name[: -len(suffix)] if suffix else expected.name
    try:
        others = sorted(p for p in expected.parent.iterdir() if p.name != expected.name
                        and p.name.startswith(stem + ".") and "." not in p.name[len(stem) + 1:])
    except OSError:
        return ""
    if not others:
        return ""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix.lower(), suffix.lstrip(".").upper())
    return (f"; found {others[0].name} instead: the layout names {suffix} files - rename it if it is a {fmt} file, "
            f"else convert it to {fmt} (better: take the original file from the dataset's archive)")


def drop_stale_labels(out: Path, written: Mapping[str, set], pattern: str) -> None:
    """Remove the labels under ``out/labels/<split>/`` matching ``pattern`` that an earlier
    run left and this one did not write (``written``: split -> paths written)."""
    for split, paths in written.items():
        for p in (out / "labels" / split).glob(pattern):
            if p not in paths:
                p.unlink()


def found_instead(folder: Path, pattern: str) -> str:
    """`` (found N files with another extension, e.g. NAME: ...)`` for a pattern that matched nothing."""
    suffix = Path(pattern).suffix
    if not suffix:
        return ""
    others = sorted(folder.glob(pattern[: -len(suffix)] + ".*"))
    if not others:
        return ""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix.lower(), suffix.lstrip(".").upper())
    return (f" (found {len(others):,} file(s) with another extension instead, e.g. {others[0]}: the layout names "
            f"{suffix} files - rename them if they are {fmt} files, else convert them to {fmt}; better, take the "
            "original files from the dataset's archive)")


class ImageNotes:
    """Images accepted with a conversion (greyscale, RGBA ...): one warning per kind."""

    def __init__(self) -> None:
        self.by_note: dict[str, list[Path]] = {}

    def add(self, note: str | None, path: Path) -> None:
        if note:
            self.by_note.setdefault(note, []).append(path)

    def warn(self) -> None:
        for note, paths in self.by_note.items():
            more = f" (and {len(paths) - 1:,} more)" if len(paths) > 1 else ""
            warn(f"{len(paths):,} image(s) are {note}, e.g. {paths[0]}{more}; nothing to do unless that is "
                 "unexpected for this dataset")


def image_size(img: Path, problems: list[str], notes: ImageNotes) -> tuple[int, int] | None:
    """(width, height) of a usable image, or None (problem appended)."""
    try:
        size, note = check_image(img)
    except ImageProblem as e:
        problems.append(f"{img}: {e}")
        return None
    except Exception as e:  # noqa: BLE001 - any unreadable file is a data problem
        problems.append(f"{img}: cannot read image ({e.__class__.__name__}: {e})")
        return None
    notes.add(note, img)
    return size


NOT_PNG = ("label file is {fmt} data, not PNG{named}: lossy compression changes the ids at every edge; use the "
            "original PNG label from the dataset's archive")


PARTIAL_HINT = (
    "An incomplete copy: re-extract the archives (or delete the extracted folder so that the workflow "
    "downloads and extracts them again). To benchmark on a subset on purpose, pass --allow-partial "
    "(config: the dataset's `allow_partial: true`)."
)


class LabelError(Exception):
    """A label file that cannot be used; the message says why (the caller adds the path)."""


@dataclass(frozen=True)
class Sample:
    """One image and its label file, before conversion."""

    split: str
    #: output file name without extension, unique within the split
    stem: str
    image: Path
    label: Path
    #: values of the extra manifest columns, in order
    extra: tuple[str, ...] = ()


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def check_split_sizes(found: Mapping[str, int], expected: Mapping[str, int], *, where: str,
                      allow_partial: bool = False) -> list[str]:
    """Problems for splits that have fewer samples than published (warnings with ``allow_partial``).

    A split with more samples than published only warns. Splits without a published count
    are not checked.
    """
    problems = []
    for split, n in found.items():
        want = expected.get(split)
        if want is None:
            continue
        if n < want:
            msg = f"split '{split}': {n:,} of the {want:,} published samples found in {where} ({want - n:,} missing)"
            if allow_partial:
                warn(f"{msg}; going on with a partial copy (allow_partial)")
            else:
                problems.append(msg)
        elif n > want:
            warn(f"split '{split}': {n:,} samples found in {where}, more than the {want:,} published")
    return problems


def pair_by_stem(split: str, img_dir: Path, img_pattern: str, lab_dir: Path, lab_pattern: str,
                 problems: list[str]) -> list[tuple[str, Path, Path]]:
    """[(stem, image, label)] for files of the two folders that share a stem; problems appended
    for a missing or empty folder and for an image without a label or the reverse."""
    ok = True
    for folder in (img_dir, lab_dir):
        if not folder.is_dir():
            problems.append(f"split '{split}': folder {folder} is missing")
            ok = False
    if not ok:
        return []
    images = {p.stem: p for p in sorted(img_dir.glob(img_pattern))}
    labels = {p.stem: p for p in sorted(lab_dir.glob(lab_pattern))}
    if not images:
        problems.append(f"split '{split}': no {img_pattern} files in {img_dir}{found_instead(img_dir, img_pattern)}")
    if not labels:
        problems.append(f"split '{split}': no {lab_pattern} files in {lab_dir}{found_instead(lab_dir, lab_pattern)}")
    if not images or not labels:
        return []
    pairs = []
    for stem, img in images.items():
        if stem in labels:
            pairs.append((stem, img, labels[stem]))
        else:
            want = lab_dir / (stem + Path(lab_pattern).suffix)
            problems.append(f"{img}: image without a label file (expected {want}){other_extensions(want)}")
    for stem, lab in labels.items():
        if stem not in images:
            want = img_dir / (stem + Path(img_pattern).suffix)
            problems.append(f"{lab}: label without an image (expected {want}){other_extensions(want)}")
    return pairs


def read_png_ids(path: Path, what: str = "label ids") -> np.ndarray:
    """The raw 8-bit values of a single-channel (L) or palette (P) PNG: palette indices are
    read as they are, never converted through RGB."""
    with Image.open(path) as im:
        if im.format != "PNG":
            raise LabelError(NOT_PNG.format(fmt=im.format, named=f" (named {path.suffix})" if path.suffix else ""))
        if im.mode not in ("L", "P"):
            mode = MODE_NAMES.get(im.mode, f"mode {im.mode}")
            raise LabelError(f"label PNG is {mode} (mode {im.mode}); expected single-channel 8-bit or palette "
                             f"indices holding {what} - use the label files from the original archive, not a "
                             "colour-converted copy")
        return np.asarray(im)


def value_lut(mapping: Mapping[int, int]) -> np.ndarray:
    """A lookup table value -> output id (int16, length 256); values not in ``mapping`` are -1 (invalid)."""
    lut = np.full(256, -1, dtype=np.int16)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def write_prepared(
    samples: Mapping[str, Sequence[Sample]],
    out: str | os.PathLike[str],
    *,
    dataset: str,
    source: str,
    read_label: Callable[[Path], np.ndarray],
    lut: np.ndarray,
    valid: str,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    problems: list[str],
    header: str,
    hint: str,
    extra_columns: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Check and convert every sample's label, then write ``labels/``, ``meta.json``, ``manifest.csv``.

    ``read_label(path)`` returns the raw values (or raises :class:`LabelError`); ``lut``
    (see :func:`value_lut`) maps them to train ids, -1 marking a value that may not occur
    (``valid`` describes the allowed ones for the message). Images are checked with
    :func:`segbench.data.images.check_image` (not fully decoded). Problems found before
    (``problems``) and during the pass are raised together as one :class:`DataError` with ``header`` and ``hint``; nothing is written to
    the manifest then. Labels are written as ``labels/{split}/{stem}.png``; the manifest
    has ``split,image,label`` and the ``extra_columns``, paths relative to ``out``.
    """
    out_p = Path(out).absolute()
    manifest_path, meta_path = out_p / "manifest.csv", out_p / "meta.json"
    manifest_path.unlink(missing_ok=True)  # a manifest must only ever describe a complete run
    meta_path.unlink(missing_ok=True)
    rows: list[tuple[str, ...]] = []
    written: dict[str, set[Path]] = {split: set() for split in samples}
    notes = ImageNotes()
    for split, items in samples.items():
        it: Any = items
        if progress and os.environ.get("SEGBENCH_NO_PROGRESS") != "1":
            from tqdm import tqdm

            it = tqdm(items, desc=f"prepare {split}", unit="img", mininterval=0.2 if sys.stderr.isatty() else 10.0)
        for s in it:
            img_size = image_size(s.image, problems, notes)
            if img_size is None:
                continue
            try:
                ids = read_label(s.label)
            except LabelError as e:
                problems.append(f"{s.label}: {e}")
                continue
            except Exception as e:  # noqa: BLE001
                problems.append(f"{s.label}: cannot read label ({e.__class__.__name__}: {e})")
                continue
            if ids.ndim != 2 or (ids.shape[1], ids.shape[0]) != img_size:
                shape = "x".join(map(str, ids.shape[::-1]))
                problems.append(f"{s.label}: label size {shape} differs from image {s.image.name} size "
                                f"{img_size[0]}x{img_size[1]} (width x height)")
                continue
            present = np.nonzero(np.bincount(ids.ravel(), minlength=256))[0]
            bad = present[lut[present] < 0]
            if bad.size:
                shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
                problems.append(f"{s.label}: contains value{'s' if bad.size > 1 else ''} {shown} "
                                f"(valid: {valid})")
                continue
            if problems:  # once anything is wrong, only keep checking
                continue
            dst = out_p / "labels" / split / f"{s.stem}.png"
            with atomic_path(dst) as tmp:
                Image.fromarray(lut[ids].astype(np.uint8)).save(tmp, format="PNG")
            written[split].add(dst)
            rows.append((split, Path(os.path.relpath(s.image, out_p)).as_posix(),
                         Path(os.path.relpath(dst, out_p)).as_posix(), *s.extra))
    notes.warn()
    if problems:
        raise DataError.from_problems(header, problems, hint)
    drop_stale_labels(out_p, written, "*.png")
    meta: dict[str, Any] = {
        "dataset": dataset,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "palette": [[int(v) for v in c] for c in palette],
        "ignore_index": IGNORE_INDEX,
        "splits": {split: len(written[split]) for split in samples},
        "source": source,
    }
    write_json(meta_path, meta)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("split", "image", "label", *extra_columns))
    writer.writerows(rows)
    write_text(manifest_path, buf.getvalue())  # last: its presence means the run completed
    return meta
