"""The ``folder`` dataset source: a dataset of your own, already in train ids (docs/extending.md).

A config entry ``{source: folder, root: /data/mydata}`` names a folder holding

* a class list: ``classes.csv`` with a ``name`` column, one row per class in train-id order
  (row 1 is id 0), and optionally ``r``, ``g``, ``b`` columns (0-255) giving each class's
  colour; or a ``meta.json`` with ``class_names`` (and optionally ``palette``), as
  ``segbench prepare`` writes it;
* the images and labels of the ``train`` and ``val`` splits, either as
  ``images/{split}/NAME.(png|jpg)`` + ``labels/{split}/NAME.png``, or as a ``manifest.csv``
  with the columns ``split,image,label`` (paths relative to the folder);
* labels: single-channel 8-bit PNGs holding the train ids 0..C-1 and 255 for pixels that
  are not scored (C = the number of classes of the class list).

:func:`read_class_list` and :func:`count_split` read only the class list and the file
names (the config check and the plan call them at start-up, without numpy or Pillow);
:func:`prepare_folder` checks every image and label (as the other sources' preparation
does) and writes the prepared layout under ``out``: ``labels/`` (a checked copy),
``meta.json`` and ``manifest.csv``, whose images point into the folder (not copied).
``segbench prepare folder --root ... --out ... --name ...`` runs it (the workflow's
``prepare_folder`` rule).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from segbench.data import DataError
from segbench.errors import UserError

__all__ = ["SPLITS", "IMAGE_SUFFIXES", "read_class_list", "count_split", "eval_size", "prepare_folder"]

#: the splits a folder must have (the pipeline trains on train and evaluates on val)
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: the most classes: ids 0..254, 255 is the ignore index
MAX_CLASSES = 255
LAYOUT = ("images/{train,val}/NAME.png|jpg + labels/{train,val}/NAME.png, or a manifest.csv "
          "(split,image,label), and a classes.csv (docs/extending.md)")


def _folder(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"dataset folder {root} {what}; give the folder holding {LAYOUT}")
    return root


def read_class_list(root: str | Path) -> tuple[list[str], list[list[int]] | None]:
    """(class names in train-id order, their [r, g, b] colours or None) of a folder's
    ``classes.csv`` or ``meta.json``; DataError naming the file and what to fix."""
    root = _folder(root)
    csv_path, meta_path = root / "classes.csv", root / "meta.json"
    if csv_path.is_file() and meta_path.is_file():
        raise DataError(f"{root} has both classes.csv and meta.json: keep one class list (delete the other)")
    if csv_path.is_file():
        names, palette = _read_classes_csv(csv_path)
        where = csv_path
    elif meta_path.is_file():
        names, palette = _read_meta_json(meta_path)
        where = meta_path
    else:
        raise DataError(f"{root} has no class list: write {csv_path} with a `name` column, one row per class in "
                        "train-id order (optional r,g,b columns for its colour)")
    if not 1 <= len(names) <= MAX_CLASSES:
        raise DataError(f"{where}: {len(names)} classes; give 1 to {MAX_CLASSES} (train ids 0..254; 255 is "
                        "the ignore index)")
    bad = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        raise DataError(f"{where}: class {bad[0]} has no name; give every class a name")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{where}: class name {twice[0]!r} is given twice; class names must differ")
    return names, palette


def _read_classes_csv(path: Path) -> tuple[list[str], list[list[int]] | None]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the class list ({e.__class__.__name__}: {e}); write it as UTF-8 "
                        "CSV with a `name` column") from None
    if "name" not in columns:
        raise DataError(f"{path}: no `name` column (columns: {', '.join(columns) or 'none'}); the first line must "
                        "be the header, e.g. `name,r,g,b` or `name`")
    colour = [c for c in ("r", "g", "b") if c in columns]
    if colour and len(colour) < 3:
        raise DataError(f"{path}: give all three colour columns r,g,b or none (found {', '.join(colour)})")
    names = [row["name"] for row in rows]
    if not colour:
        return names, None
    palette = []
    for i, row in enumerate(rows):
        try:
            rgb = [int(row[c]) for c in ("r", "g", "b")]
        except ValueError:
            raise DataError(f"{path}: line {i + 2} ({row['name']}): r, g, b must be whole numbers 0-255, got "
                            f"{row['r']!r}, {row['g']!r}, {row['b']!r}") from None
        if not all(0 <= v <= 255 for v in rgb):
            raise DataError(f"{path}: line {i + 2} ({row['name']}): r, g, b must be 0-255, got {rgb}")
        palette.append(rgb)
    return names, palette


def _read_meta_json(path: Path) -> tuple[list[str], list[list[int]] | None]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not readable JSON ({e.__class__.__name__}: {e}); fix it, or replace it by a "
                        "classes.csv") from None
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if not isinstance(names, list):
        raise DataError(f"{path}: no `class_names` list; give the class names in train-id order")
    palette = meta.get("palette")
    if palette is not None:
        ok = isinstance(palette, list) and len(palette) == len(names) and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette)
        if not ok:
            raise DataError(f"{path}: `palette` must be one [r, g, b] (0-255) per class name ({len(names)}); "
                            "fix it or remove it")
    return names, palette


def _manifest_rows(root: Path) -> list[dict[str, str]] | None:
    """The rows of the folder's manifest.csv, or None when it has none."""
    path = root / "manifest.csv"
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("split", "image", "label") if c not in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read it ({e.__class__.__name__}: {e}); write it as UTF-8 CSV with the "
                        "columns split,image,label") from None
    if missing:
        raise DataError(f"{path}: no column {', '.join(map(repr, missing))}; its header must be split,image,label "
                        "(paths relative to the folder)")
    return rows


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def count_split(root: str | Path, split: str) -> int:
    """The images of ``split`` in a folder (its manifest's rows, else its images/{split}/ files);
    DataError when there are none."""
    root = _folder(root)
    rows = _manifest_rows(root)
    if rows is not None:
        n = sum(1 for r in rows if r["split"] == split)
        if not n:
            raise DataError(f"{root / 'manifest.csv'}: no rows for split '{split}'; the pipeline needs train "
                            "and val rows")
        return n
    folder = root / "images" / split
    if not folder.is_dir():
        raise DataError(f"{folder} is missing: the folder source needs {LAYOUT}")
    n = len(_images(folder))
    if not n:
        raise DataError(f"{folder} holds no .png or .jpg image; put the {split} images there")
    return n


def eval_size(root: str | Path) -> tuple[int, int]:
    """[height, width] of the folder's first val image, each rounded up to a multiple of 32
    (the size its val images are evaluated and profiled at; a config's ``eval_size`` overrides it)."""
    from PIL import Image

    root = _folder(root)
    rows = _manifest_rows(root)
    if rows is not None:
        first = next(root / r["image"] for r in rows if r["split"] == "val")
    else:
        first = _images(root / "images" / "val")[0]
    try:
        with Image.open(first) as im:
            w, h = im.size
    except OSError as e:
        raise DataError(f"{first}: cannot read image ({e.__class__.__name__}: {e}); replace it") from None
    return -(-h // 32) * 32, -(-w // 32) * 32


def default_palette(n: int) -> list[list[int]]:
    """PASCAL VOC's colour map: n distinct colours (class 0 black)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


def _samples(root: Path, problems: list[str]):
    from segbench.data.prepare import Sample, pair_by_stem

    rows = _manifest_rows(root)
    samples: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    if rows is not None:
        seen: dict[tuple[str, str], str] = {}
        for i, r in enumerate(rows):
            if r["split"] not in samples:
                continue  # other splits (test) are not used
            image, label = root / r["image"], root / r["label"]
            stem = Path(r["label"]).stem
            if (r["split"], stem) in seen:
                problems.append(f"{root / 'manifest.csv'}: line {i + 2}: label name {Path(r['label']).name} is used "
                                f"twice in split '{r['split']}' (also by {seen[(r['split'], stem)]}); give every "
                                "label of a split its own file name")
                continue
            seen[(r["split"], stem)] = r["label"]
            for path, what in ((image, "image"), (label, "label")):
                if not path.is_file():
                    problems.append(f"{root / 'manifest.csv'}: line {i + 2}: {what} {path} does not exist")
            samples[r["split"]].append(Sample(r["split"], stem, image, label))
        return samples
    for split in SPLITS:
        for stem, image, label in pair_by_stem(split, root / "images" / split, "*.*", root / "labels" / split,
                                               "*.png", problems):
            samples[split].append(Sample(split, stem, image, label))
    return samples


def prepare_folder(root: str | Path, out: str | Path, *, dataset: str = "folder", progress: bool = True) -> dict[str, Any]:
    """Check a dataset folder (every image and label) and write the prepared layout into
    ``out``; returns meta.json's content. DataError lists every problem found."""
    from segbench.data.cityscapes_labels import IGNORE_INDEX
    from segbench.data.prepare import read_png_ids, value_lut, write_prepared

    root = _folder(root)
    names, palette = read_class_list(root)
    for split in SPLITS:
        count_split(root, split)
    problems: list[str] = []
    samples = _samples(root, problems)
    n = len(names)
    lut = value_lut({**{i: i for i in range(n)}, IGNORE_INDEX: IGNORE_INDEX})
    return write_prepared(
        samples, out, dataset=dataset, source="folder",
        read_label=lambda p: read_png_ids(p, what="train ids"), lut=lut,
        valid=f"train ids 0..{n - 1} of the {n} classes of the class list, and {IGNORE_INDEX} (ignore)",
        class_names=names, palette=palette or default_palette(n), problems=problems,
        header=f"dataset folder {root} cannot be used",
        hint=f"Fix the files named above; the layout: {LAYOUT}.", progress=progress)
