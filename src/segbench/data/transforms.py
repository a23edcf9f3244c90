"""Albumentations pipelines: random scale, crop, flip and photometric changes for
training; none for validation (the model sees the val image as it is).

Normalisation (ImageNet mean/std) and the HWC -> CHW conversion happen in the dataset.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from segbench import IGNORE_INDEX  # noqa: E402


def train_transform(spec: dict) -> A.Compose:
    """The training augmentation of a resolved ``train`` spec (see the config schema)."""
    h, w = spec["crop"]
    lo, hi = spec["scale"]
    ops: list = []
    if (lo, hi) != (1.0, 1.0):
        ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    ops += [
        A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
        A.RandomCrop(height=h, width=w),
    ]
    if spec.get("hflip", True):
        ops.append(A.HorizontalFlip(p=0.5))
    if spec.get("photometric", True):
        ops += [
            A.ColorJitter(brightness=(0.75, 1.25), contrast=(0.75, 1.25), saturation=(0.75, 1.25),
                          hue=(-0.03, 0.03), p=0.8),
            A.GaussianBlur(blur_limit=(3, 5), p=0.1),
        ]
    return A.Compose(ops)


def augmentation_examples() -> dict[str, A.BasicTransform]:
    """The augmentations of the U-Net vs SegNet report's Figure 6, one at a time."""
    return {
        "flip": A.HorizontalFlip(p=1.0),
        "blur": A.GaussianBlur(blur_limit=(5, 7), p=1.0),
        "rain": A.RandomRain(p=1.0),
        "snow": A.RandomSnow(p=1.0),
    }
