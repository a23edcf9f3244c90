"""ADE20K, the SceneParsing 2016 challenge release (Zhou et al., CVPR 2017): 150 classes.

The public archive ``ADEChallengeData2016.zip`` unpacks to::

    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_%08d.png   8-bit, 0..150
    ADEChallengeData2016/objectInfo150.txt, sceneCategories.txt

Annotation value 0 is "other objects" and is not scored; 1..150 are the classes. As in the
challenge's evaluation and mmsegmentation's ``reduce_zero_label``, 0 becomes 255 (ignore)
and every other value v becomes v - 1, giving train ids 0..149. A value above 150 is an
error naming the file. ``training`` becomes split ``train`` (20,210 images) and
``validation`` split ``val`` (2,000).

Class names follow ``objectInfo150.txt`` (first name of each entry, as mmsegmentation
lists them); the palette is a segbench choice (the PASCAL VOC colour map, a deterministic
set of distinct colours), ADE20K defines none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segbench import catalog
from segbench.data import DataError
from segbench.data.download import Archive

__all__ = ["ARCHIVES", "SPLIT_SIZES", "FOLDERS", "CLASSES", "find_root", "label_lut", "prepare"]

ARCHIVES: Mapping[str, Archive] = {
    "ADEChallengeData2016.zip": Archive(
        "ADEChallengeData2016.zip",
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        "7328b3957e407ddae1d3cbf487f149ef",
        "923 MB",
    ),
}
TOP = "ADEChallengeData2016"
#: segbench split -> ADE folder name
FOLDERS: Mapping[str, str] = {"train": "training", "val": "validation"}
#: published images per split and the number of classes (segbench.catalog)
SPLIT_SIZES: Mapping[str, int] = catalog.DATASET_SOURCES["ade20k"].splits
NUM_CLASSES = catalog.num_classes("ade20k")

# fmt: off
CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
# fmt: on


def find_root(root: str | os.PathLike[str]) -> Path:
    """The folder holding ``images/`` and ``annotations/``: ``root`` or ``root/ADEChallengeData2016``."""
    root_p = Path(root)
    for cand in (root_p, root_p / TOP):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir():
            return cand
    raise DataError(f"no ADE20K tree at {root_p}: expected {root_p}/images/ and {root_p}/annotations/ (or the "
                    f"same under {root_p}/{TOP}/), as ADEChallengeData2016.zip unpacks; point `root:` there, or "
                    "leave it empty to download the archive")


def label_lut():
    """reduce-zero-label: 0 -> 255, v -> v - 1 for 1..150; other values invalid (-1)."""
    from segbench.data.prepare import value_lut

    return value_lut({0: 255, **{v: v - 1 for v in range(1, NUM_CLASSES + 1)}})


def prepare(root: str | os.PathLike[str], out: str | os.PathLike[str], *, dataset: str = "ade20k",
            labels: str = "trainId", allow_partial: bool = False, progress: bool = True,
            splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:
    """Convert an ADE20K tree into ``out/{labels/, meta.json, manifest.csv}`` (150 classes)."""
    from segbench.data.prepare import (PARTIAL_HINT, Sample, check_split_sizes, pair_by_stem, read_png_ids,
                                       write_prepared)
    from segbench.data.voc import colormap

    if labels != "trainId":
        raise ValueError(f"ADE20K has one label set (trainId, 150 classes), got labels={labels!r}")
    base = find_root(root).absolute()
    problems: list[str] = []
    samples: dict[str, list[Sample]] = {}
    for split in splits:
        folder = FOLDERS[split]
        pairs = pair_by_stem(split, base / "images" / folder, "ADE_*.jpg", base / "annotations" / folder,
                             "ADE_*.png", problems)
        samples[split] = [Sample(split, stem, img, lab) for stem, img, lab in pairs]
    count_problems = check_split_sizes({s: len(v) for s, v in samples.items()}, SPLIT_SIZES, where=str(base),
                                       allow_partial=allow_partial)
    problems += count_problems
    return write_prepared(
        samples, out, dataset=dataset, source=str(base),
        read_label=lambda p: read_png_ids(p, "ADE20K class indices 0..150"),
        lut=label_lut(), valid=f"0..{NUM_CLASSES}", class_names=CLASSES,
        palette=colormap(NUM_CLASSES + 1)[1:].tolist(),
        problems=problems, header=f"ADE20K tree {base} cannot be prepared",
        hint="Each images/{training,validation}/ADE_*.jpg needs annotations/.../ADE_*.png of the same size "
             "holding 0..150. Fix or remove the files listed (re-extracting ADEChallengeData2016.zip helps), "
             "then run again." + (f" {PARTIAL_HINT}" if count_problems else ""),
        progress=progress,
    )
