"""Albumentations pipelines: random scale, crop and flip for training, plus the named
augmentations a config asks for (``train.augment``) and, only on request, a photometric
jitter; none for validation (the model sees the val image as it is).

The training transform of a resolved ``train`` spec, in order:

1. random rescale by a factor in ``train.scale`` = [lo, hi] (image bilinear, label nearest):
   drawn uniformly from the interval, or, with ``train.scale_step`` = s, uniformly from the
   finite set {lo, lo + s, ..., hi} (the PAC paper's "0.5 to 2.0 in steps of 0.25": 7 values);
   none when the range is [1, 1];
2. pad (image 0, label 255) to the crop size where needed, then a random crop;
3. horizontal flip with probability 0.5 (``train.hflip``, or ``flip`` in ``train.augment``:
   the same flip, applied once even when both ask for it);
4. the other named augmentations of ``train.augment``, in the order of :data:`AUGMENTATIONS`
   (not the order listed), each applied independently with its training probability;
5. ``train.photometric`` (default false): brightness/contrast/saturation/hue jitter (p 0.8)
   and a light blur (p 0.1). No paper describes it; it is off unless a config asks for it.

Named augmentations (:data:`AUGMENTATIONS`) are those of the U-Net vs SegNet report
(Saraceno 2022): flips, blur, rain and snow, through albumentations; its Figure 6 shows them
and its data generator applies them in training. The report gives the transforms but no
parameters or probabilities; ours (interpretations):

=========  ===========================================  ========  ================
name       albumentations transform                     training  Figure 6 panel
=========  ===========================================  ========  ================
``flip``   ``HorizontalFlip``                           p 0.5     p 1
``blur``   ``GaussianBlur(blur_limit=(5, 7))``          p 0.25    p 1
``rain``   ``RandomRain()`` (library defaults)          p 0.25    p 1
``snow``   ``RandomSnow()`` (library defaults)          p 0.25    p 1
=========  ===========================================  ========  ================

p 0.5 for the flip is the usual choice (and ``hflip``'s); 0.25 for each weather/blur effect
leaves 42% of the crops (0.75^3) without any of them and 16% with two or more, so the
network still sees many clean images like the val images (never augmented). The same
definitions draw the report's Figure 6 (:func:`augmentation_examples`, with p 1), so the
figure shows exactly what training applies. Only ``flip`` moves pixels (and the label); the
others change colours only.

Every random decision of a pipeline (factor, crop position, each transform's "apply?") is
drawn from one stream seeded by ``set_random_seed`` (:class:`Pipeline`), so the decisions
are independent of each other and a seed gives the same pixels.

Normalisation (ImageNet mean/std) and the HWC -> CHW conversion happen in the dataset.
"""

from __future__ import annotations

import os
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from segbench import IGNORE_INDEX  # noqa: E402
from segbench.config import scale_steps  # noqa: E402  (shared with the config check)

#: the named augmentations of ``train.augment`` and of Figure 6: name -> (the transform
#: built with probability p, the probability training uses). The config schema lists the
#: same names (``train.augment``; a test checks that they agree).
AUGMENTATIONS: dict[str, tuple[Callable[[float], A.BasicTransform], float]] = {
    "flip": (lambda p: A.HorizontalFlip(p=p), 0.5),
    "blur": (lambda p: A.GaussianBlur(blur_limit=(5, 7), p=p), 0.25),
    "rain": (lambda p: A.RandomRain(p=p), 0.25),
    "snow": (lambda p: A.RandomSnow(p=p), 0.25),
}


class SteppedRandomScale(A.RandomScale):
    """``RandomScale`` with the factor drawn uniformly from a finite set of ``scales``
    (seeded like every albumentations transform, by its Compose)."""

    def __init__(self, scales, interpolation: int = cv2.INTER_LINEAR, mask_interpolation: int = cv2.INTER_NEAREST,
                 p: float = 1.0):
        super().__init__(scale_limit=(min(scales) - 1.0, max(scales) - 1.0), interpolation=interpolation,
                         mask_interpolation=mask_interpolation, p=p)
        self.scales = tuple(float(s) for s in scales)

    def get_params(self) -> dict[str, float]:
        return {"scale": self.py_random.choice(self.scales)}


class Pipeline(A.Compose):
    """``A.Compose`` whose transforms draw from one shared random stream.

    albumentations 2's ``Compose.set_random_seed(seed)`` (the trainer's per-epoch and
    per-worker seeding) seeds every child transform with the same seed, so each replays the
    same sequence: the flip (p 0.5) then fires exactly when the rescale factor falls in the
    lower half of its range, and blur, rain and snow (p 0.25 each) start in lockstep. Here
    the children share the Compose's generators (``set_random_state``) and each takes the
    next numbers of one stream: independent draws, as documented above, and still the same
    pixels for the same seed."""

    def set_random_seed(self, seed: int | None) -> None:
        super().set_random_seed(seed)
        self.set_random_state(self.random_generator, self.py_random)


def check_augment(names) -> list[str]:
    """``train.augment`` as a list of known names; ValueError naming the key otherwise."""
    if names is None:
        return []
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"train.augment={names!r} is not allowed; expected a list of names out of "
                         f"{', '.join(AUGMENTATIONS)}")
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"train.augment: {', '.join(map(repr, unknown))} is not a known augmentation; "
                         f"allowed values: {', '.join(AUGMENTATIONS)}")
    return list(names)


def train_transform(spec: dict) -> A.Compose:
    """The training augmentation of a resolved ``train`` spec (see the module docstring and
    the config schema)."""
    h, w = spec["crop"]
    lo, hi = spec["scale"]
    augment = check_augment(spec.get("augment"))
    ops: list = []
    step = spec.get("scale_step")
    if step is not None:
        scales = scale_steps(lo, hi, step)
        if scales != [1.0]:
            ops.append(SteppedRandomScale(scales))
    elif (lo, hi) != (1.0, 1.0):
        ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    ops += [
        A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
        A.RandomCrop(height=h, width=w),
    ]
    if spec.get("hflip", True) or "flip" in augment:
        make, p = AUGMENTATIONS["flip"]
        ops.append(make(p))
    for name, (make, p) in AUGMENTATIONS.items():
        if name != "flip" and name in augment:
            ops.append(make(p))
    if spec.get("photometric", False):
        ops += [
            A.ColorJitter(brightness=(0.75, 1.25), contrast=(0.75, 1.25), saturation=(0.75, 1.25),
                          hue=(-0.03, 0.03), p=0.8),
            A.GaussianBlur(blur_limit=(3, 5), p=0.1),
        ]
    return Pipeline(ops)


def augmentation_examples() -> dict[str, A.BasicTransform]:
    """The augmentations of the U-Net vs SegNet report's Figure 6, one at a time: the
    definitions training uses (:data:`AUGMENTATIONS`), with p 1."""
    return {name: make(1.0) for name, (make, _) in AUGMENTATIONS.items()}
