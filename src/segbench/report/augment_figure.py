"""The U-Net vs SegNet report's Figure 6: one image through the training augmentations.

Panels: original, horizontal flip, blur, rain, snow (the transforms of
``segbench.data.transforms.augmentation_examples``, albumentations with ``p=1``: the
definitions ``train.augment`` trains with, ``segbench.data.transforms.AUGMENTATIONS``), and, when
a label is given, a second row with the label overlaid on each panel: the geometric
transform (flip) moves the label with the image, the photometric ones leave it as it is.
Every panel is seeded (``A.Compose(..., seed=seed)``), so one seed always gives the same
pixels.

Nothing here imports torch: albumentations imports its optional PyTorch transforms
(and torch) when torch is installed, which is kept from happening here (see
``_albumentations``). Drawing goes through a bare Agg canvas, never pyplot.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from segbench import IGNORE_INDEX  # noqa: E402
from segbench.report.figures import _RC, _figure, _lut, _save  # noqa: E402

#: the panels, in order, with their titles
PANELS = {
    "original": "original",
    "flip": "horizontal flip",
    "blur": "Gaussian blur",
    "rain": "rain",
    "snow": "snow",
}
#: transforms that move pixels (applied to the label too); the others change colours only
GEOMETRIC = ("flip",)
_PREPARE = "run the prepare step for this dataset first (`segbench prepare` or `snakemake`)"


def _albumentations():
    """albumentations, imported without ``albumentations.pytorch`` (which imports torch).

    ``albumentations/__init__`` imports its PyTorch transforms inside
    ``suppress(ImportError)``; a ``None`` entry in ``sys.modules`` makes that import fail,
    and it is removed again right after, so a later ``import albumentations.pytorch``
    works as usual. Where torch is already imported there is nothing to save.
    """
    if "albumentations" in sys.modules:
        return sys.modules["albumentations"]
    block = "torch" not in sys.modules and "albumentations.pytorch" not in sys.modules
    if block:
        sys.modules["albumentations.pytorch"] = None  # type: ignore[assignment]
    try:
        import albumentations as A
    finally:
        if block and "albumentations.pytorch" in sys.modules and sys.modules["albumentations.pytorch"] is None:
            del sys.modules["albumentations.pytorch"]
    return A


def _transforms() -> dict[str, Any]:
    _albumentations()
    from segbench.data.transforms import augmentation_examples as figure6

    return figure6()


# --------------------------------------------------------------------------- arrays


def augmentation_examples_arrays(image: np.ndarray, label: np.ndarray | None = None,
                                 seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``{panel: (image uint8 [H,W,3], label [H,W] or None)}`` for the panels of ``PANELS``,
    in order, "original" first. Each transform runs alone, with ``p=1``, seeded with
    ``seed``: the same seed gives the same pixels."""
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"augmentation_examples_arrays: image must be uint8 [H, W, 3], got "
                         f"{image.dtype} {list(image.shape)}")
    if label is not None:
        label = np.ascontiguousarray(label)
        if label.shape != image.shape[:2]:
            raise ValueError(f"augmentation_examples_arrays: label is {label.shape[1]}x{label.shape[0]} but the "
                             f"image is {image.shape[1]}x{image.shape[0]} (width x height)")
    A = _albumentations()
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {"original": (image, label)}
    for name, t in _transforms().items():
        pipe = A.Compose([t], seed=int(seed))
        res = pipe(image=image, mask=label) if label is not None else pipe(image=image)
        out[name] = (np.asarray(res["image"]), None if label is None else np.asarray(res["mask"]))
    return out


# --------------------------------------------------------------------------- files


def _read_label(path: Path) -> np.ndarray:
    from segbench.data.images import read_label

    if not path.is_file():
        raise FileNotFoundError(f"label {path} not found; {_PREPARE}")
    return read_label(path)


def _read_image(path: Path) -> np.ndarray:
    from segbench.data.images import ImageProblem, read_rgb

    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found; {_PREPARE}")
    try:
        return read_rgb(path)[0]
    except ImageProblem as e:
        raise ValueError(f"cannot use image {path}: {e}") from None


def _meta_near(path: Path) -> dict:
    """meta.json of the prepared dataset holding ``path`` (labels/{split}/x.png), or {}."""
    for parent in list(path.resolve().parents)[:4]:
        meta = parent / "meta.json"
        if meta.is_file():
            try:
                return json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
    return {}


def _overlay(image: np.ndarray, label: np.ndarray, lut: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    colour = lut[label].astype(np.float32)
    out = image.astype(np.float32)
    m = label != IGNORE_INDEX
    out[m] = (1 - alpha) * out[m] + alpha * colour[m]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def augmentation_examples(image_path: str | os.PathLike, path: str | os.PathLike,
                          label_path: str | os.PathLike | None = None, seed: int = 0,
                          palette: Sequence[Sequence[int]] | None = None) -> Path:
    """Draw the augmentation examples of ``image_path`` into the PNG ``path``.

    One row of panels (original, horizontal flip, blur, rain, snow); with ``label_path`` a
    second row with the (transformed) label overlaid, coloured with ``palette`` (default:
    the prepared dataset's meta.json palette, else tab20) and a legend of its classes.
    """
    image_path = Path(image_path)
    image = _read_image(image_path)
    label = None
    meta: dict = {}
    if label_path is not None:
        label_path = Path(label_path)
        label = _read_label(label_path)
        if label.shape != image.shape[:2]:
            raise ValueError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label {label_path} "
                             f"is {label.shape[1]}x{label.shape[0]} (width x height)")
        meta = _meta_near(label_path)
    panels = augmentation_examples_arrays(image, label, seed=seed)
    class_names = list(meta.get("class_names") or [])
    if palette is None:
        palette = meta.get("palette")
    n_classes = len(class_names) or (int(label[label != IGNORE_INDEX].max(initial=0)) + 1 if label is not None else 1)
    lut = _lut(palette, n_classes)

    h, w = image.shape[:2]
    n_cols, n_rows = len(panels), 1 if label is None else 2
    cell_w = 2.6
    cell_h = cell_w * h / w
    present = []
    if label is not None:
        present = sorted(int(c) for c in np.unique(label) if c != IGNORE_INDEX and c < max(n_classes, 1))
    legend_rows = math.ceil(len(present) / 10) if present else 0
    with matplotlib.rc_context(_RC):
        fig = _figure(cell_w * n_cols + 0.6, cell_h * n_rows + 0.9 + 0.22 * legend_rows)
        axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
        for j, (name, (img, lab)) in enumerate(panels.items()):
            cells = [img] if lab is None else [img, _overlay(img, lab, lut)]
            for i, cell in enumerate(cells):
                ax = axes[i, j]
                ax.imshow(cell, interpolation="antialiased")
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
            kind = "geometric: label moves" if name in GEOMETRIC else ("photometric: label unchanged"
                                                                     if name != "original" else "")
            axes[0, j].set_title(PANELS.get(name, name) + (f"\n({kind})" if kind and label is not None else ""))
        if n_rows == 2:
            axes[0, 0].set_ylabel("image")
            axes[1, 0].set_ylabel("label overlay")
        if present:
            handles = [Patch(facecolor=lut[c] / 255.0, edgecolor="0.5", linewidth=0.4,
                             label=class_names[c] if c < len(class_names) else str(c)) for c in present]
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 10), frameon=False,
                       fontsize=7, handlelength=1.2, columnspacing=1.0)
        fig.suptitle(f"Training augmentations (as in the U-Net vs SegNet report, Figure 6): {image_path.name}, "
                     f"seed {seed}")
        return _save(fig, path)


def pick_example(prepared_dataset_dir: str | os.PathLike, split: str = "val") -> tuple[Path, Path]:
    """(image, label) of the first sample of ``split`` in a prepared dataset directory.

    The prepared layout (docs/outputs.md) is ``manifest.csv`` (``split,image,label``, paths
    relative to the directory) with ``labels/{split}/``; a directory without a manifest may
    hold ``images/{split}/`` and ``labels/{split}/`` paired by file stem. No pair:
    FileNotFoundError naming the directory and the prepare step.
    """
    root = Path(prepared_dataset_dir)
    manifest = root / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"split", "image", "label"} <= set(reader.fieldnames or []):
                raise ValueError(f"{manifest} has no split,image,label columns; it was not written by the prepare "
                                 f"step: {_PREPARE}")
            row = next((r for r in reader if r["split"] == split), None)
        if row is None:
            raise FileNotFoundError(f"{manifest} has no {split} samples: no {split} image/label pair in {root}; "
                                    f"{_PREPARE}")
        image, label = root / row["image"], root / row["label"]
        lacking = [str(p) for p in (image, label) if not p.is_file()]
        if lacking:
            raise FileNotFoundError(f"{manifest} lists {' and '.join(lacking)}, which do(es) not exist; {_PREPARE}")
        return image, label
    from segbench.data.prepare import pair_by_stem

    problems: list[str] = []
    img_dir, lab_dir = root / "images" / split, root / "labels" / split
    pairs = []
    if img_dir.is_dir() and lab_dir.is_dir():
        pairs = pair_by_stem(split, img_dir, "*.*", lab_dir, "*.png", problems)
    if not pairs:
        raise FileNotFoundError(f"no {split} image/label pair in {root} (no manifest.csv, nor images/{split}/ and "
                                f"labels/{split}/ with files of the same stem); {_PREPARE}")
    _, image, label = pairs[0]
    return image, label


__all__ = ["PANELS", "augmentation_examples", "augmentation_examples_arrays", "pick_example"]
