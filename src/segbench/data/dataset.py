"""A torch Dataset over a prepared manifest (``results/data/{dataset}/manifest.csv``).

Each item is ``(image [3,H,W] float32 normalised, label [H,W] int64, index)``. Images are
decoded with Pillow as RGB (:func:`segbench.data.images.read_rgb`: greyscale and RGBA are
converted with a note, 16-bit images refused); labels must be single-channel uint8 PNGs in
train ids, and, when the prepared folder's ``meta.json`` is there, hold only ids below its
``num_classes`` or its ``ignore_index``. A file that cannot be read, or that breaks these
rules, fails with its path and what to do; it never becomes a black image.

Training order and augmentation (:class:`GlobalBatchSampler`, :meth:`SegmentationDataset.set_epoch`):
one permutation of the train split per epoch, drawn from (seed, epoch), cut into global
batches; with N processes each takes its slice of every global batch. Each sample's
augmentation is drawn from its own stream seeded by (seed, epoch, sample index)
(:func:`sample_seed`), so the global batches and their pixels are the same whatever the
number of processes and DataLoader workers.
"""

from __future__ import annotations

import csv
import json
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segbench.data import DataError
from segbench.data.images import ImageProblem, read_rgb

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


from segbench.data.images import PREPARE_AGAIN as _PREPARE_AGAIN, read_label  # noqa: E402,F401 (re-exported)


def read_manifest(manifest: str | Path, split: str) -> list[dict]:
    manifest = Path(manifest)
    if not manifest.exists():
        raise DataError(f"manifest {manifest} does not exist: run `segbench prepare` (or snakemake) first")
    base = manifest.parent
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("split", "image", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"manifest {manifest} has no column {', '.join(map(repr, missing))} (columns: "
                            f"{', '.join(reader.fieldnames or []) or 'none'}); it was not written by "
                            f"`segbench prepare`: {_PREPARE_AGAIN}")
        rows = [r for r in reader if r["split"] == split]
    if not rows:
        raise DataError(f"manifest {manifest} has no rows for split '{split}': the dataset's {split} split was "
                        f"empty or missing when it was prepared; check the dataset's root (a '{split}' folder "
                        f"with images and labels) and {_PREPARE_AGAIN}")
    for r in rows:
        r["image"] = str(base / r["image"])
        r["label"] = str(base / r["label"])
    return rows


_NOTED: set[str] = set()


def read_image(path: str) -> np.ndarray:
    """uint8 [H, W, 3]; a greyscale or RGBA image is converted (noted once per kind and process)."""
    try:
        rgb, note = read_rgb(path)
    except ImageProblem as e:
        raise DataError(f"cannot use image {path}: {e}") from None
    if note and note not in _NOTED:
        _NOTED.add(note)
        print(f"note: image {path} is {note} (said once per kind of image)", file=sys.stderr, flush=True)
    return rgb


def to_tensor(image: np.ndarray) -> torch.Tensor:
    x = (image.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def _any_invalid(label: np.ndarray, valid: np.ndarray) -> bool:
    """Whether a uint8 label holds a value ``valid`` marks False (about 1 ms for 2 MP)."""
    if valid[: int(label.max()) + 1].all():
        return False
    import cv2

    return cv2.countNonZero(cv2.LUT(np.ascontiguousarray(label), (~valid).astype(np.uint8))) > 0


class SegmentationDataset(torch.utils.data.Dataset):
    def __init__(self, manifest: str | Path, split: str, transform=None):
        self.rows = read_manifest(manifest, split)
        self.split = split
        self.transform = transform
        #: (seed, epoch) of the augmentation streams (:meth:`set_epoch`); None: the transform's own stream
        self.epoch_key: tuple[int, int] | None = None
        self.meta_path = Path(manifest).parent / "meta.json"
        #: label value -> valid?, from meta.json (None: not checked)
        self.valid_ids: np.ndarray | None = None
        self.num_classes: int | None = None
        if self.meta_path.is_file():
            try:
                meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
                self.num_classes = int(meta["num_classes"])
                ignore = int(meta.get("ignore_index", 255))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise DataError(f"{self.meta_path} is not a readable meta.json ({e.__class__.__name__}: {e}): "
                                f"{_PREPARE_AGAIN}") from None
            valid = np.zeros(256, dtype=bool)
            valid[: min(self.num_classes, 256)] = True
            if 0 <= ignore < 256:
                valid[ignore] = True
            self.valid_ids = valid

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Draw each sample's augmentation of epoch ``epoch`` from its own stream seeded by
        ``sample_seed(seed, epoch, index)``, independent of the process and worker that loads
        it (set before the epoch's DataLoader iterator starts: workers get a copy then)."""
        self.epoch_key = (int(seed), int(epoch))

    def name(self, index: int) -> str:
        return Path(self.rows[index]["image"]).name

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.rows[index]
        image, label = read_image(row["image"]), read_label(row["label"])
        if image.shape[:2] != label.shape:
            raise DataError(f"image {row['image']} is {image.shape[1]}x{image.shape[0]} but its label "
                            f"{row['label']} is {label.shape[1]}x{label.shape[0]} (width x height): one of them "
                            f"was replaced after preparation, which checks every pair; {_PREPARE_AGAIN}")
        if self.valid_ids is not None and label.dtype == np.uint8 and _any_invalid(label, self.valid_ids):
            present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
            bad = present[~self.valid_ids[present]]
            if bad.size:
                shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
                raise DataError(f"label {row['label']} contains id{'s' if bad.size > 1 else ''} {shown}, but "
                                f"{self.meta_path} says {self.num_classes} classes (ids 0..{self.num_classes - 1}, "
                                f"plus the ignore index): the label does not belong to this prepared dataset; "
                                f"{_PREPARE_AGAIN}")
        return image, label

    def __getitem__(self, index: int):
        image, label = self.raw(index)
        if self.transform is not None:
            if self.epoch_key is not None and hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(sample_seed(*self.epoch_key, index))
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        return to_tensor(image), torch.from_numpy(np.array(label, dtype=np.int64)), index


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed (below 2**32) of sample ``index``'s augmentation in epoch ``epoch`` of a run
    with seed ``seed``: numpy's SeedSequence hash of the three numbers, so nearby
    (seed, epoch, index) give unrelated streams."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class GlobalBatchSampler(torch.utils.data.Sampler):
    """The training batches of one process out of ``world_size`` (``rank``), as the
    DataLoader's ``batch_sampler``.

    Epoch by epoch (:meth:`set_epoch`), one permutation of the ``n`` sample indices is drawn
    with a torch generator seeded by ``epoch_seed``, the same in every process; it is cut into
    ``n // batch_size`` global batches of ``batch_size`` (the last, incomplete one dropped),
    and global batch k is the k-th step of every process: process ``rank`` takes its slice
    ``[rank * b, (rank + 1) * b)`` of it, ``b = batch_size / world_size``. So the global
    batches, and each sample's place in them, are the same whatever ``world_size``."""

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0):
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} does not divide into {world_size} equal shares")
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.per_rank = batch_size // world_size
        self.epoch_seed = 0

    def set_epoch(self, epoch_seed: int) -> None:
        self.epoch_seed = int(epoch_seed)

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.epoch_seed)
        order = torch.randperm(self.n, generator=g).tolist()
        for k in range(len(self)):
            start = k * self.batch_size + self.rank * self.per_rank
            yield order[start: start + self.per_rank]


def seed_worker(worker_id: int) -> None:
    """Seed numpy, random and the worker's albumentations pipeline from torch's per-worker
    seed, which the DataLoader derives from its generator. (A training dataset re-seeds its
    pipeline for every sample, :meth:`SegmentationDataset.set_epoch`; this covers any other
    random draw in a worker.)"""
    # SIGTERM to the job's process group (SLURM signals every process of a job step) is the
    # trainer's to handle (it checkpoints, then ends its workers); torch's worker would die of it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
