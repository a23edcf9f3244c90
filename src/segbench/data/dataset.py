"""A torch Dataset over a prepared manifest (``results/data/{dataset}/manifest.csv``).

Each item is ``(image [3,H,W] float32 normalised, label [H,W] int64, index)``. Images are
decoded with Pillow as RGB; labels must be single-channel uint8 PNGs in train ids.
A file that cannot be read fails with its path; it never becomes a black image.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segbench.data import DataError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


def read_manifest(manifest: str | Path, split: str) -> list[dict]:
    manifest = Path(manifest)
    if not manifest.exists():
        raise DataError(f"manifest {manifest} does not exist: run `segbench prepare` (or snakemake) first")
    base = manifest.parent
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    if not rows:
        raise DataError(f"manifest {manifest} has no rows for split '{split}'")
    for r in rows:
        r["image"] = str(base / r["image"])
        r["label"] = str(base / r["label"])
    return rows


def read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}; re-extract or remove the file and rerun prepare") from None


def read_label(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise DataError(f"label {path} has mode {im.mode}; expected a single-channel uint8 PNG of train ids")
            return np.asarray(im)
    except OSError as e:
        raise DataError(f"cannot read label {path}: {e}; rerun `segbench prepare`") from None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    x = (image.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class SegmentationDataset(torch.utils.data.Dataset):
    def __init__(self, manifest: str | Path, split: str, transform=None):
        self.rows = read_manifest(manifest, split)
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, index: int) -> str:
        return Path(self.rows[index]["image"]).name

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.rows[index]
        image, label = read_image(row["image"]), read_label(row["label"])
        if image.shape[:2] != label.shape:
            raise DataError(f"image {row['image']} is {image.shape[1]}x{image.shape[0]} but its label "
                            f"{row['label']} is {label.shape[1]}x{label.shape[0]}")
        return image, label

    def __getitem__(self, index: int):
        image, label = self.raw(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        return to_tensor(image), torch.from_numpy(np.array(label, dtype=np.int64)), index


def seed_worker(worker_id: int) -> None:
    """Seed numpy, random and the worker's albumentations pipeline from torch's per-worker
    seed, which the DataLoader derives from its generator: the same generator seed gives
    the same augmentations, whatever the worker count's timing."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def pad_collate(batch, multiple: int = 32, ignore_index: int = 255):
    """Collate val samples of different sizes (ADE20K, VOC): pad each image at the bottom and
    right to the batch's largest size rounded up to ``multiple`` (zeros after
    normalisation) and each label with ``ignore_index``, so the padding is never scored.
    The logits at labelled pixels are those of the padded input, as in mmsegmentation's
    whole-image inference with size_divisor."""
    h = max(img.shape[-2] for img, _, _ in batch)
    w = max(img.shape[-1] for img, _, _ in batch)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=batch[0][0].dtype)
    labels = torch.full((len(batch), h, w), ignore_index, dtype=torch.int64)
    for i, (img, lab, _) in enumerate(batch):
        images[i, :, : img.shape[-2], : img.shape[-1]] = img
        labels[i, : lab.shape[-2], : lab.shape[-1]] = lab
    return images, labels, torch.tensor([idx for _, _, idx in batch])
