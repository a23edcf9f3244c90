"""PASCAL VOC 2012 segmentation (Everingham et al.) and its SBD augmentation (Hariharan et al., ICCV 2011).

``VOCtrainval_11-May-2012.tar`` unpacks to::

    VOCdevkit/VOC2012/JPEGImages/{name}.jpg
    VOCdevkit/VOC2012/SegmentationClass/{name}.png            palette PNG: 0 background, 1..20, 255 border
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt   1,464 / 1,449 / 2,913 names

and SBD's ``benchmark.tgz`` to::

    benchmark_RELEASE/dataset/cls/{name}.mat    MATLAB struct GTcls, field Segmentation: 0..20
    benchmark_RELEASE/dataset/img/{name}.jpg
    benchmark_RELEASE/dataset/{train,val}.txt   8,498 / 2,857 names

VOC labels are read as raw palette indices (never through RGB): the index *is* the class,
and 255 (the border drawn around objects) stays 255, ignored. The SBD labels come from the
``GTcls.Segmentation`` array of each ``.mat`` file (read with scipy).

``trainaug`` (10,582 images) is VOC train ∪ SBD train ∪ SBD val minus VOC val, the usual
"VOC aug" training set. Its label is VOC's own PNG where VOC has one (finer, with the
border) and the SBD ``.mat`` otherwise; the manifest's ``origin`` column says which.
Images are read from ``JPEGImages`` (which holds every SBD image), else from SBD's ``img/``.
With ``trainaug=False`` the train split is VOC's own 1,464 images. The val split is always
VOC val (1,449).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segbench import catalog
from segbench.data import DataError
from segbench.data.download import Archive

__all__ = ["ARCHIVES", "SPLIT_SIZES", "TRAINAUG_SIZE", "CLASSES", "PALETTE", "colormap", "archives_needed",
           "find_voc", "find_sbd", "trainaug_names", "read_sbd_label", "prepare"]

ARCHIVES: Mapping[str, Archive] = {
    "VOCtrainval_11-May-2012.tar": Archive(
        "VOCtrainval_11-May-2012.tar",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "6cd6e144f989b92b3379bac3b3de84fd",
        "1.9 GB",
    ),
    "benchmark.tgz": Archive(
        "benchmark.tgz",
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        "82b4d87ceb2ed10f6038a1cba92111cb",
        "1.4 GB",
    ),
}
VOC_ARCHIVE, SBD_ARCHIVE = "VOCtrainval_11-May-2012.tar", "benchmark.tgz"
#: published images per split, of trainaug, and the number of classes (segbench.catalog)
SPLIT_SIZES: Mapping[str, int] = catalog.DATASET_SOURCES["voc"].splits
TRAINAUG_SIZE: int = catalog.DATASET_SOURCES["voc"].trainaug
NUM_CLASSES = catalog.num_classes("voc")
CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (VOCdevkit's ``labelcolormap``): [n, 3] uint8."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


PALETTE: tuple[tuple[int, int, int], ...] = tuple(tuple(int(v) for v in c) for c in colormap(NUM_CLASSES))


def archives_needed(trainaug: bool = True) -> list[str]:
    return [VOC_ARCHIVE, SBD_ARCHIVE] if trainaug else [VOC_ARCHIVE]


def find_voc(root: str | os.PathLike[str]) -> Path:
    """The ``VOC2012`` folder: ``root`` itself, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``."""
    root_p = Path(root)
    for cand in (root_p, root_p / "VOC2012", root_p / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    raise DataError(f"no PASCAL VOC 2012 tree at {root_p}: expected VOCdevkit/VOC2012/{{JPEGImages,"
                    "SegmentationClass,ImageSets/Segmentation} as VOCtrainval_11-May-2012.tar unpacks; point "
                    "`root:` at the folder holding VOCdevkit/, or leave it empty to download the archives")


def find_sbd(root: str | os.PathLike[str]) -> Path:
    """SBD's ``dataset`` folder: ``root``, ``root/dataset`` or ``root/benchmark_RELEASE/dataset``."""
    root_p = Path(root)
    for cand in (root_p, root_p / "dataset", root_p / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir():
            return cand
    raise DataError(f"no SBD tree at {root_p}: expected benchmark_RELEASE/dataset/{{cls/*.mat,train.txt,val.txt}} "
                    "as benchmark.tgz unpacks; put it beside VOCdevkit/ or name it with `sbd_root:` "
                    "(--sbd-root), or set `trainaug: false` (--no-trainaug) to train on VOC train only")


def _read_list(path: Path, problems: list[str]) -> list[str]:
    if not path.is_file():
        problems.append(f"split list {path} is missing")
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def trainaug_names(voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str],
                   sbd_val: Iterable[str]) -> list[str]:
    """VOC train ∪ SBD train ∪ SBD val minus VOC val, sorted."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def read_voc_label(path: Path) -> np.ndarray:
    from segbench.data.prepare import read_png_ids

    return read_png_ids(path, "VOC class indices (0..20, 255 border)")


def read_sbd_label(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/*.mat`` file, as uint8."""
    import scipy.io

    from segbench.data.prepare import LabelError

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # noqa: BLE001 - scipy raises several types for a broken file
        raise LabelError(f"cannot read MATLAB file ({e.__class__.__name__}: {e})") from None
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise LabelError("no GTcls.Segmentation in this .mat file; expected an SBD dataset/cls/*.mat file")
    seg = np.asarray(seg)
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.number):
        raise LabelError(f"GTcls.Segmentation is a {seg.dtype} array of shape {seg.shape}; expected a 2-D "
                         "array of class indices")
    if seg.size and (seg.min() < 0 or seg.max() > 255 or not np.array_equal(seg, np.round(seg))):
        raise LabelError(f"GTcls.Segmentation holds values outside 0..255 (min {seg.min()}, max {seg.max()})")
    return seg.astype(np.uint8)


def _read_label(path: Path) -> np.ndarray:
    return read_sbd_label(path) if path.suffix == ".mat" else read_voc_label(path)


def prepare(root: str | os.PathLike[str], out: str | os.PathLike[str], *, dataset: str = "voc",
            labels: str = "trainId", allow_partial: bool = False, progress: bool = True, trainaug: bool = True,
            sbd_root: str | os.PathLike[str] | None = None, splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:
    """Convert VOC 2012 (+ SBD for ``trainaug``) into ``out/{labels/, meta.json, manifest.csv}`` (21 classes)."""
    from segbench.data.prepare import PARTIAL_HINT, Sample, check_split_sizes, value_lut, warn, write_prepared

    if labels != "trainId":
        raise ValueError(f"PASCAL VOC has one label set (trainId, 21 classes), got labels={labels!r}")
    voc = find_voc(root).absolute()
    sbd = find_sbd(sbd_root if sbd_root else (voc.parent.parent if voc.parent.name == "VOCdevkit" else root)) \
        if trainaug else None
    problems: list[str] = []
    lists = voc / "ImageSets" / "Segmentation"
    voc_split = {s: _read_list(lists / f"{s}.txt", problems) for s in ("train", "val")}
    names = dict(voc_split)
    if sbd is not None:
        sbd = sbd.absolute()
        sbd_lists = [_read_list(sbd / f"{s}.txt", problems) for s in ("train", "val")]
        names["train"] = trainaug_names(voc_split["train"], voc_split["val"], *sbd_lists)
    expected = {**SPLIT_SIZES, **({"train": TRAINAUG_SIZE} if sbd is not None else {})}

    samples: dict[str, list[Sample]] = {}
    for split in splits:
        items, skipped = [], 0
        for name in names[split]:
            png = voc / "SegmentationClass" / f"{name}.png"
            image = voc / "JPEGImages" / f"{name}.jpg"
            if sbd is not None and not image.is_file() and (sbd / "img" / f"{name}.jpg").is_file():
                image = sbd / "img" / f"{name}.jpg"
            if split == "train" and sbd is not None and not png.is_file():
                label, origin = sbd / "cls" / f"{name}.mat", "sbd"
            else:
                label, origin = png, "voc"
            missing = [p for p in (image, label) if not p.is_file()]
            if missing:
                skipped += 1
                if not allow_partial:
                    problems.append(f"split '{split}': {name} is listed but {', '.join(map(str, missing))} "
                                    f"{'is' if len(missing) == 1 else 'are'} missing")
                continue
            items.append(Sample(split, name, image, label, (origin,)))
        if skipped and allow_partial:
            warn(f"split '{split}': {skipped:,} listed image(s) have no image or label file; skipped (allow_partial)")
        samples[split] = items
    count_problems = check_split_sizes({s: len(v) for s, v in samples.items()}, expected, where=str(voc),
                                       allow_partial=allow_partial)
    problems += count_problems
    where = f"{voc}" + (f" + SBD {sbd}" if sbd is not None else "")
    return write_prepared(
        samples, out, dataset=dataset, source=where, read_label=_read_label,
        lut=value_lut({**{v: v for v in range(NUM_CLASSES)}, 255: 255}), valid="0..20 and 255",
        class_names=CLASSES, palette=PALETTE, problems=problems, extra_columns=("origin",),
        header=f"PASCAL VOC tree {where} cannot be prepared",
        hint="Every listed name needs JPEGImages/{name}.jpg and a label of the same size: "
             "SegmentationClass/{name}.png (palette indices 0..20, 255 border) or, for SBD-only trainaug images, "
             "SBD's cls/{name}.mat. Fix or remove the files listed (re-extracting the archives helps), then run "
             "again." + (f" {PARTIAL_HINT}" if count_problems else ""),
        progress=progress,
    )
