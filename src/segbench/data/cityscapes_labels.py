"""The Cityscapes label table, as data.

The facts follow ``cityscapesscripts/helpers/labels.py`` (Cordts et al., "The Cityscapes
Dataset for Semantic Urban Scene Understanding", CVPR 2016): 34 label ids (0..33) are
written into ``*_gtFine_labelIds.png``; 19 of them are trained and evaluated (``trainId``
0..18, everything else 255 = ignore); ``license plate`` (id -1) is never drawn into the
label images. The ids are grouped into 8 categories (``catId`` 0..7); ``void`` (0) is
ignored, leaving 7 scored categories.

Category label maps (``id_to_category_lut``) follow the official category-level
evaluation (``evalPixelLevelSemanticLabeling``): a pixel is scored at category level only
when its label id is scored at class level (``ignoreInEval`` False), so e.g. ``parking``
(flat) and ``guard rail`` (construction) stay 255. Pass ``include_ignored_ids=True`` to map
every non-void id to its category instead.

``CATEGORY_PALETTE`` is a segbench choice (cityscapesscripts defines no category colours):
each category takes the colour of its most common class.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "Label",
    "LABELS",
    "ID_TO_LABEL",
    "NAME_TO_LABEL",
    "VALID_IDS",
    "IGNORE_INDEX",
    "TRAIN_CLASSES",
    "TRAIN_PALETTE",
    "CATEGORY_CLASSES",
    "CATEGORY_PALETTE",
    "id_to_train_id_lut",
    "id_to_category_lut",
    "colorize",
]

IGNORE_INDEX = 255


class Label(NamedTuple):
    name: str
    id: int
    train_id: int  # 255 = not trained / ignored; -1 for the license plate
    category: str
    cat_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# fmt: off
LABELS: tuple[Label, ...] = (
    #     name                    id  trainId  category        catId  hasInst  ignoreInEval  color
    Label("unlabeled",             0, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("ego vehicle",           1, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("rectification border",  2, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("out of roi",            3, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("static",                4, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("dynamic",               5, 255, "void",         0, False, True,  (111, 74, 0)),
    Label("ground",                6, 255, "void",         0, False, True,  (81, 0, 81)),
    Label("road",                  7,   0, "flat",         1, False, False, (128, 64, 128)),
    Label("sidewalk",              8,   1, "flat",         1, False, False, (244, 35, 232)),
    Label("parking",               9, 255, "flat",         1, False, True,  (250, 170, 160)),
    Label("rail track",           10, 255, "flat",         1, False, True,  (230, 150, 140)),
    Label("building",             11,   2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall",                 12,   3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence",                13,   4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail",           14, 255, "construction", 2, False, True,  (180, 165, 180)),
    Label("bridge",               15, 255, "construction", 2, False, True,  (150, 100, 100)),
    Label("tunnel",               16, 255, "construction", 2, False, True,  (150, 120, 90)),
    Label("pole",                 17,   5, "object",       3, False, False, (153, 153, 153)),
    Label("polegroup",            18, 255, "object",       3, False, True,  (153, 153, 153)),
    Label("traffic light",        19,   6, "object",       3, False, False, (250, 170, 30)),
    Label("traffic sign",         20,   7, "object",       3, False, False, (220, 220, 0)),
    Label("vegetation",           21,   8, "nature",       4, False, False, (107, 142, 35)),
    Label("terrain",              22,   9, "nature",       4, False, False, (152, 251, 152)),
    Label("sky",                  23,  10, "sky",          5, False, False, (70, 130, 180)),
    Label("person",               24,  11, "human",        6, True,  False, (220, 20, 60)),
    Label("rider",                25,  12, "human",        6, True,  False, (255, 0, 0)),
    Label("car",                  26,  13, "vehicle",      7, True,  False, (0, 0, 142)),
    Label("truck",                27,  14, "vehicle",      7, True,  False, (0, 0, 70)),
    Label("bus",                  28,  15, "vehicle",      7, True,  False, (0, 60, 100)),
    Label("caravan",              29, 255, "vehicle",      7, True,  True,  (0, 0, 90)),
    Label("trailer",              30, 255, "vehicle",      7, True,  True,  (0, 0, 110)),
    Label("train",                31,  16, "vehicle",      7, True,  False, (0, 80, 100)),
    Label("motorcycle",           32,  17, "vehicle",      7, True,  False, (0, 0, 230)),
    Label("bicycle",              33,  18, "vehicle",      7, True,  False, (119, 11, 32)),
    Label("license plate",        -1,  -1, "vehicle",      7, False, True,  (0, 0, 142)),
)
# fmt: on

ID_TO_LABEL: dict[int, Label] = {lab.id: lab for lab in LABELS}
NAME_TO_LABEL: dict[str, Label] = {lab.name: lab for lab in LABELS}

#: the ids that may appear in a ``*_gtFine_labelIds.png`` (0..33)
VALID_IDS: tuple[int, ...] = tuple(sorted(lab.id for lab in LABELS if lab.id >= 0))

_TRAINED = sorted((lab for lab in LABELS if 0 <= lab.train_id < 255), key=lambda lab: lab.train_id)
assert [lab.train_id for lab in _TRAINED] == list(range(19))

#: the 19 training classes, in trainId order
TRAIN_CLASSES: tuple[str, ...] = tuple(lab.name for lab in _TRAINED)
#: their colours, ``TRAIN_PALETTE[trainId] = (r, g, b)``
TRAIN_PALETTE: tuple[tuple[int, int, int], ...] = tuple(lab.color for lab in _TRAINED)

#: the 7 scored categories; category index = catId - 1 (void, catId 0, is ignored)
CATEGORY_CLASSES: tuple[str, ...] = (
    "flat", "construction", "object", "nature", "sky", "human", "vehicle",
)
CATEGORY_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),  # flat: road
    (70, 70, 70),  # construction: building
    (153, 153, 153),  # object: pole
    (107, 142, 35),  # nature: vegetation
    (70, 130, 180),  # sky
    (220, 20, 60),  # human: person
    (0, 0, 142),  # vehicle: car
)
assert all(CATEGORY_CLASSES[lab.cat_id - 1] == lab.category for lab in LABELS if lab.cat_id > 0)


def id_to_train_id_lut() -> np.ndarray:
    """Lookup table ``lut[label_id] -> trainId`` (np.uint8, length 256; unknown ids -> 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in _TRAINED:
        lut[lab.id] = lab.train_id
    return lut


def id_to_category_lut(*, include_ignored_ids: bool = False) -> np.ndarray:
    """Lookup table ``lut[label_id] -> category index`` 0..6 (np.uint8, length 256).

    Void ids and unknown ids map to 255. By default ids that are ignored at class level
    (``ignoreInEval``, e.g. parking, guard rail, caravan) also map to 255, as in the
    official category-level evaluation; ``include_ignored_ids=True`` maps them to their
    category.
    """
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in LABELS:
        if lab.id < 0 or lab.cat_id == 0:
            continue
        if lab.ignore_in_eval and not include_ignored_ids:
            continue
        lut[lab.id] = lab.cat_id - 1
    return lut


def colorize(label_ids: np.ndarray) -> np.ndarray:
    """Colour a map of Cityscapes label *ids* with the official colours (uint8 [H, W, 3])."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for lab in LABELS:
        if lab.id >= 0:
            lut[lab.id] = lab.color
    return lut[np.asarray(label_ids, dtype=np.uint8)]
