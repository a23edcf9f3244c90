"""BDD100K semantic segmentation, the 10K images (Yu et al., CVPR 2020).

``bdd100k_images_10k.zip`` and ``bdd100k_sem_seg_labels_trainval.zip`` unpack into one tree::

    bdd100k/images/10k/{train,val,test}/{name}.jpg          1280x720 RGB
    bdd100k/labels/sem_seg/masks/{train,val}/{name}.png     8-bit, already the 19 Cityscapes trainIds, 255 ignore
    bdd100k/labels/sem_seg/{colormaps,polygons,rles}/...    (not used)

The masks need no conversion: values 0..18 and 255 are copied as they are, anything else is
an error naming the file. Splits: train 7,000, val 1,000 (test has no public labels). The
class names and colours are Cityscapes' 19 training classes.

The official files are released under the BDD100K licence (https://doc.bdd100k.com/license.html);
downloading them means accepting it. They were first offered on the login portal
bdd-data.berkeley.edu and are now public on the ETH host used below; the URLs can be
overridden per archive (``download.urls``), the MD5s are the published ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segbench import catalog
from segbench.data import DataError
from segbench.data.cityscapes_labels import TRAIN_CLASSES, TRAIN_PALETTE
from segbench.data.download import Archive

__all__ = ["ARCHIVES", "SPLIT_SIZES", "find_root", "prepare"]

_HOST = "https://dl.cv.ethz.ch/bdd100k/data"
ARCHIVES: Mapping[str, Archive] = {
    "bdd100k_images_10k.zip": Archive(
        "bdd100k_images_10k.zip", f"{_HOST}/bdd100k_images_10k.zip", "08f26aecceda982568063d3d5873378e", "1.1 GB"),
    "bdd100k_sem_seg_labels_trainval.zip": Archive(
        "bdd100k_sem_seg_labels_trainval.zip", f"{_HOST}/bdd100k_sem_seg_labels_trainval.zip",
        "9a2968dde3345eeb689cffb1e26f9c78", "419 MB"),
}
#: published images per split and the number of classes (segbench.catalog)
SPLIT_SIZES: Mapping[str, int] = catalog.DATASET_SOURCES["bdd100k"].splits
NUM_CLASSES = catalog.num_classes("bdd100k")
IMAGE_SIZE = (1280, 720)  # width x height
LICENCE_NOTE = "BDD100K is released under the BDD100K licence (https://doc.bdd100k.com/license.html); " \
               "downloading it means accepting its terms"


def find_root(root: str | os.PathLike[str]) -> Path:
    """The ``bdd100k`` folder (holding ``images/10k`` and ``labels/sem_seg/masks``): ``root`` or ``root/bdd100k``."""
    root_p = Path(root)
    for cand in (root_p, root_p / "bdd100k"):
        if (cand / "images" / "10k").is_dir() and (cand / "labels" / "sem_seg" / "masks").is_dir():
            return cand
    raise DataError(f"no BDD100K tree at {root_p}: expected images/10k/{{train,val}}/*.jpg and "
                    "labels/sem_seg/masks/{train,val}/*.png (or the same under bdd100k/), as the two archives "
                    "unpack; point `root:` there, or leave it empty to download them")


def prepare(root: str | os.PathLike[str], out: str | os.PathLike[str], *, dataset: str = "bdd100k",
            labels: str = "trainId", allow_partial: bool = False, progress: bool = True,
            splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:
    """Check and copy the BDD100K masks into ``out/{labels/, meta.json, manifest.csv}`` (19 classes)."""
    from segbench.data.prepare import (PARTIAL_HINT, Sample, check_split_sizes, pair_by_stem, read_png_ids,
                                       value_lut, write_prepared)

    if labels != "trainId":
        raise ValueError(f"BDD100K has one label set (trainId, 19 classes), got labels={labels!r}")
    base = find_root(root).absolute()
    problems: list[str] = []
    samples: dict[str, list[Sample]] = {}
    for split in splits:
        pairs = pair_by_stem(split, base / "images" / "10k" / split, "*.jpg",
                             base / "labels" / "sem_seg" / "masks" / split, "*.png", problems)
        samples[split] = [Sample(split, stem, img, lab) for stem, img, lab in pairs]
    count_problems = check_split_sizes({s: len(v) for s, v in samples.items()}, SPLIT_SIZES, where=str(base),
                                       allow_partial=allow_partial)
    problems += count_problems
    return write_prepared(
        samples, out, dataset=dataset, source=str(base),
        read_label=lambda p: read_png_ids(p, "train ids 0..18 and 255 (labels/sem_seg/masks)"),
        lut=value_lut({**{v: v for v in range(NUM_CLASSES)}, 255: 255}), valid="0..18 and 255",
        class_names=TRAIN_CLASSES, palette=TRAIN_PALETTE, problems=problems,
        header=f"BDD100K tree {base} cannot be prepared",
        hint="Each images/10k/{split}/{name}.jpg needs labels/sem_seg/masks/{split}/{name}.png of the same size "
             "holding train ids 0..18 or 255 (the masks, not the colormaps). Fix or remove the files listed "
             "(re-extracting the archives helps), then run again." + (f" {PARTIAL_HINT}" if count_problems else ""),
        progress=progress,
    )
