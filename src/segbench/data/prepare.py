"""Prepare a Cityscapes tree (real or synthetic) for training and evaluation.

Reads the Cityscapes on-disk layout (Cordts et al., CVPR 2016; ``cityscapesscripts``)::

    {root}/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png   RGB image
    {root}/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png     8-bit label ids 0..33

and writes, as ``docs/outputs.md`` specifies, under ``out``:

* ``labels/{split}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png`` - the 19 train ids
  (``label_set="trainId"``), or ``..._gtFine_labelCategoryIds.png`` - the 7 scored
  categories (``label_set="category"``); 255 = ignore. The conversion follows the label
  table in :mod:`segbench.data.cityscapes_labels`.
* ``meta.json`` - dataset, num_classes, class_names, palette, ignore_index, splits, source.
* ``manifest.csv`` - ``split,image,label,city``; paths relative to ``out``. Images are not
  copied: ``image`` points into ``root``.

Every input is checked before anything is trusted, and all problems are reported together
in one :class:`~segbench.data.DataError`: a missing or empty split folder, an image without
its label (and the reverse), image / label size mismatch, a label PNG that is not
single-channel 8-bit PNG, label values that are not Cityscapes label ids (0..33), and images
that are empty, truncated, corrupt or 16-bit (:func:`segbench.data.images.check_image`: a
PNG's chunks and checksums are read, a JPEG is decoded at 1/8 scale, so a damaged file is
found here and not hours into training). A greyscale or RGBA image is accepted with a
warning (it is converted to RGB when read). A file with the wrong extension (an image
saved as ``.jpg`` where the layout names ``.png``) is reported as such.

Each file is written atomically; an existing manifest is removed first and the new one is
written last, so a manifest exists only after a complete, successful run.

The other datasets (ADE20K, PASCAL VOC 2012 + SBD, BDD100K) live in their own modules and
share the helpers at the end of this file: :func:`check_split_sizes` (split sizes against
the published counts, a warning instead of a failure with ``allow_partial``),
:func:`pair_by_stem`, :func:`read_png_ids` and :func:`write_prepared`, which checks and
converts every label and writes ``labels/``, ``meta.json`` and ``manifest.csv`` as above.
:func:`prepare` dispatches on the dataset source.
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
from segbench.data.images import ImageProblem, check_image
from segbench.data.cityscapes_labels import (
    CATEGORY_CLASSES,
    CATEGORY_PALETTE,
    IGNORE_INDEX,
    TRAIN_CLASSES,
    TRAIN_PALETTE,
    VALID_IDS,
    id_to_category_lut,
    id_to_train_id_lut,
)
from segbench.io import atomic_path, write_json, write_text

__all__ = [
    "prepare",
    "prepare_cityscapes",
    "IMAGE_SUFFIX",
    "LABEL_SUFFIX",
    "OUTPUT_SUFFIX",
    "PARTIAL_HINT",
    "Sample",
    "LabelError",
    "warn",
    "check_split_sizes",
    "pair_by_stem",
    "read_png_ids",
    "value_lut",
    "write_prepared",
]

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
#: suffix of the converted label files, per label set
OUTPUT_SUFFIX = {"trainId": "_gtFine_labelTrainIds.png", "category": "_gtFine_labelCategoryIds.png"}
MANIFEST_COLUMNS = ("split", "image", "label", "city")
_MAX_ID = max(VALID_IDS)
_MODE_NAMES = {
    "1": "1-bit", "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer",
    "F": "32-bit float", "LA": "2-channel (grey + alpha)", "RGB": "3-channel RGB", "RGBA": "4-channel RGBA",
}


def _other_extensions(expected: Path) -> str:
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


def _found_instead(folder: Path, pattern: str) -> str:
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


class _Notes:
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


def _image_size(img: Path, problems: list[str], notes: _Notes) -> tuple[int, int] | None:
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


_NOT_PNG = ("label file is {fmt} data, not PNG{named}: lossy compression changes the ids at every edge; use the "
            "original PNG label from the dataset's archive")


def _find(folder: Path, suffix: str) -> dict[str, Path]:
    """stem -> file for every ``{city}/{stem}{suffix}`` in ``folder``."""
    found: dict[str, Path] = {}
    for p in sorted(folder.glob(f"*/*{suffix}")):
        found.setdefault(f"{p.parent.name}/{p.name[: -len(suffix)]}", p)
    return found


def _scan_split(root: Path, split: str, problems: list[str]) -> list[tuple[str, str, Path, Path]]:
    """Pair images and labels of one split: [(city, stem, image, label)], problems appended."""
    img_dir = root / "leftImg8bit" / split
    lab_dir = root / "gtFine" / split
    ok = True
    for folder, suffix in ((img_dir, IMAGE_SUFFIX), (lab_dir, LABEL_SUFFIX)):
        if not folder.is_dir():
            problems.append(f"split '{split}': folder {folder} is missing")
            ok = False
    if not ok:
        return []
    images = _find(img_dir, IMAGE_SUFFIX)
    labels = _find(lab_dir, LABEL_SUFFIX)
    if not images:
        problems.append(f"split '{split}': no {{city}}/*{IMAGE_SUFFIX} files in {img_dir}"
                        f"{_found_instead(img_dir, '*/*' + IMAGE_SUFFIX)}")
    if not labels:
        problems.append(f"split '{split}': no {{city}}/*{LABEL_SUFFIX} files in {lab_dir}"
                        f"{_found_instead(lab_dir, '*/*' + LABEL_SUFFIX)}")
    if not images or not labels:
        return []
    pairs = []
    for key, img in images.items():
        city, stem = key.split("/", 1)
        lab = labels.get(key)
        if lab is None:
            want = lab_dir / city / (stem + LABEL_SUFFIX)
            problems.append(f"{img}: image without a label file (expected {want}){_other_extensions(want)}")
        else:
            pairs.append((city, stem, img, lab))
    for key, lab in labels.items():
        if key not in images:
            city, stem = key.split("/", 1)
            want = img_dir / city / (stem + IMAGE_SUFFIX)
            problems.append(f"{lab}: label without an image (expected {want}){_other_extensions(want)}")
    seen: dict[str, str] = {}
    for city, stem, img, _ in pairs:
        if stem in seen:
            problems.append(f"{img}: file name {stem} also exists in city '{seen[stem]}' of split '{split}'; "
                            "output labels of a split share one folder, so names must be unique")
        seen[stem] = city
    return pairs


def _check_pair(img: Path, lab: Path, problems: list[str], notes: _Notes) -> np.ndarray | None:
    """The label ids of a valid pair, or None (problems appended)."""
    img_size = _image_size(img, problems, notes)
    if img_size is None:
        return None
    try:
        with Image.open(lab) as lb:
            lab_size, mode = lb.size, lb.mode
            if lb.format != "PNG":
                problems.append(f"{lab}: " + _NOT_PNG.format(fmt=lb.format, named=" (named .png)"))
                return None
            if mode not in ("L", "P"):
                what = _MODE_NAMES.get(mode, f"mode {mode}")
                problems.append(f"{lab}: label PNG is {what} (mode {mode}); expected single-channel 8-bit "
                                "(mode L) holding Cityscapes label ids - use the *_gtFine_labelIds.png files, "
                                "not *_color.png or *_instanceIds.png")
                return None
            arr = np.asarray(lb)
    except Exception as e:  # noqa: BLE001
        problems.append(f"{lab}: cannot read label ({e.__class__.__name__}: {e})")
        return None
    if lab_size != img_size:
        problems.append(f"{lab}: label size {lab_size[0]}x{lab_size[1]} differs from image {img.name} "
                        f"size {img_size[0]}x{img_size[1]} (width x height)")
        return None
    counts = np.bincount(arr.ravel(), minlength=256)
    bad = np.nonzero(counts[_MAX_ID + 1:])[0] + _MAX_ID + 1
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        word = "id" if bad.size == 1 else "ids"
        problems.append(f"{lab}: contains label {word} {shown} (valid ids: 0..{_MAX_ID}); "
                        "is this a labelIds file from gtFine?")
        return None
    return arr


def prepare_cityscapes(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    label_set: str = "trainId",
    splits: Sequence[str] = ("train", "val"),
    dataset: str = "cityscapes",
    progress: bool = True,
    expected: Mapping[str, int] | None = None,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Convert the Cityscapes tree at ``root`` into ``out/{labels/, meta.json, manifest.csv}``.

    ``label_set`` is ``"trainId"`` (19 classes) or ``"category"`` (7 categories); ``dataset``
    is the name recorded in ``meta.json``. ``expected`` (split -> published number of
    images, e.g. :data:`segbench.data.cityscapes.SPLIT_SIZES`) turns on the split-size
    check, a warning only with ``allow_partial``. Returns the ``meta.json`` content. Raises
    :class:`DataError` listing every problem found in the input (nothing is written to
    the manifest then), and ``ValueError`` for a bad argument.
    """
    if label_set not in OUTPUT_SUFFIX:
        raise ValueError(f"label_set must be one of {sorted(OUTPUT_SUFFIX)}, got {label_set!r}")
    if isinstance(splits, str) or not splits:
        raise ValueError(f"splits must be a non-empty sequence of split names, got {splits!r}")
    root_p = Path(root).absolute()
    out_p = Path(out).absolute()
    if not root_p.is_dir():
        raise DataError(f"Cityscapes root {root_p} does not exist or is not a folder; point it at the folder "
                        "that holds leftImg8bit/ and gtFine/")
    manifest_path = out_p / "manifest.csv"
    meta_path = out_p / "meta.json"
    manifest_path.unlink(missing_ok=True)  # a manifest must only ever describe a complete run
    meta_path.unlink(missing_ok=True)

    if label_set == "trainId":
        lut, names, palette = id_to_train_id_lut(), TRAIN_CLASSES, TRAIN_PALETTE
    else:
        lut, names, palette = id_to_category_lut(), CATEGORY_CLASSES, CATEGORY_PALETTE
    suffix = OUTPUT_SUFFIX[label_set]

    problems: list[str] = []
    notes = _Notes()
    pairs_by_split = {split: _scan_split(root_p, split, problems) for split in splits}
    count_problems = check_split_sizes({s: len(p) for s, p in pairs_by_split.items()}, expected or {},
                                       where=str(root_p), allow_partial=allow_partial)
    problems += count_problems
    rows: list[tuple[str, str, str, str]] = []
    written: dict[str, set[Path]] = {split: set() for split in splits}
    for split, pairs in pairs_by_split.items():
        it: Any = pairs
        if progress:
            from tqdm import tqdm

            it = tqdm(pairs, desc=f"prepare {split}", unit="img")
        for city, stem, img, lab in it:
            ids = _check_pair(img, lab, problems, notes)
            if ids is None or problems:  # once anything is wrong, only keep checking
                continue
            dst = out_p / "labels" / split / f"{stem}{suffix}"
            with atomic_path(dst) as tmp:
                Image.fromarray(lut[ids]).save(tmp, format="PNG")
            written[split].add(dst)
            rows.append((split, Path(os.path.relpath(img, out_p)).as_posix(),
                         Path(os.path.relpath(dst, out_p)).as_posix(), city))
    notes.warn()
    if problems:
        raise DataError.from_problems(
            f"Cityscapes tree {root_p} cannot be prepared",
            problems,
            "Each leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png needs gtFine/{split}/{city}/"
            "{stem}_gtFine_labelIds.png of the same size holding label ids 0..33. Fix or remove the files "
            "listed (re-extracting the archives helps for a real copy), then run again."
            + (f" {PARTIAL_HINT}" if count_problems else ""),
        )

    # drop converted labels of this label set that an earlier run left and this one did not write
    for split in splits:
        for p in (out_p / "labels" / split).glob(f"*{suffix}"):
            if p not in written[split]:
                p.unlink()

    meta: dict[str, Any] = {
        "dataset": dataset,
        "num_classes": len(names),
        "class_names": list(names),
        "palette": [list(c) for c in palette],
        "ignore_index": IGNORE_INDEX,
        "splits": {split: len(written[split]) for split in splits},
        "source": str(root_p),
    }
    write_json(meta_path, meta)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    write_text(manifest_path, buf.getvalue())  # last: its presence means the run completed
    return meta


# ====================================================================== shared helpers
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
        problems.append(f"split '{split}': no {img_pattern} files in {img_dir}{_found_instead(img_dir, img_pattern)}")
    if not labels:
        problems.append(f"split '{split}': no {lab_pattern} files in {lab_dir}{_found_instead(lab_dir, lab_pattern)}")
    if not images or not labels:
        return []
    pairs = []
    for stem, img in images.items():
        if stem in labels:
            pairs.append((stem, img, labels[stem]))
        else:
            want = lab_dir / (stem + Path(lab_pattern).suffix)
            problems.append(f"{img}: image without a label file (expected {want}){_other_extensions(want)}")
    for stem, lab in labels.items():
        if stem not in images:
            want = img_dir / (stem + Path(img_pattern).suffix)
            problems.append(f"{lab}: label without an image (expected {want}){_other_extensions(want)}")
    return pairs


def read_png_ids(path: Path, what: str = "label ids") -> np.ndarray:
    """The raw 8-bit values of a single-channel (L) or palette (P) PNG: palette indices are
    read as they are, never converted through RGB."""
    with Image.open(path) as im:
        if im.format != "PNG":
            raise LabelError(_NOT_PNG.format(fmt=im.format, named=f" (named {path.suffix})" if path.suffix else ""))
        if im.mode not in ("L", "P"):
            mode = _MODE_NAMES.get(im.mode, f"mode {im.mode}")
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
    notes = _Notes()
    for split, items in samples.items():
        it: Any = items
        if progress and os.environ.get("SEGBENCH_NO_PROGRESS") != "1":
            from tqdm import tqdm

            it = tqdm(items, desc=f"prepare {split}", unit="img", mininterval=0.2 if sys.stderr.isatty() else 10.0)
        for s in it:
            img_size = _image_size(s.image, problems, notes)
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
    for split in samples:  # drop labels an earlier run left and this one did not write
        for p in (out_p / "labels" / split).glob("*.png"):
            if p not in written[split]:
                p.unlink()
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


# ====================================================================== dispatch
def prepare(source: str, root: str | os.PathLike[str], out: str | os.PathLike[str], *, dataset: str | None = None,
            labels: str = "trainId", allow_partial: bool = False, progress: bool = True,
            **options: Any) -> dict[str, Any]:
    """Prepare a dataset of any source (``synthetic``, ``cityscapes``, ``ade20k``, ``voc``,
    ``bdd100k``) from ``root`` into ``out``; ``options`` go to the source's ``prepare``
    (VOC: ``trainaug``, ``sbd_root``). Real datasets are checked against their published
    split sizes; the synthetic one is not."""
    if source == "synthetic":
        if options:
            raise ValueError(f"the synthetic source takes no options, got {sorted(options)}")
        return prepare_cityscapes(root, out, label_set=labels, dataset=dataset or source, progress=progress)
    from segbench.data.download import source_module

    return source_module(source).prepare(root, out, dataset=dataset or source, labels=labels,
                                         allow_partial=allow_partial, progress=progress, **options)
