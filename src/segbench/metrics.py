"""Segmentation metrics, following mmsegmentation's conventions (its ``IoUMetric``).

- The confusion matrix counts pixels whose label is not ``ignore_index``; rows are the
  ground truth, columns the prediction. It is accumulated over a whole split.
- IoU_c = TP / (TP + FP + FN); a class absent from both ground truth and prediction has
  IoU NaN and is skipped by the mean (``nanmean``).
- aAcc = sum(TP) / labelled pixels; mAcc = nanmean of per-class recall;
  Dice_c = 2 TP / (2 TP + FP + FN).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Return the int64 [C, C] confusion matrix of integer tensors of equal shape.

    One ``bincount`` over ``target * C + pred`` on the tensors' own device. Target values
    other than ``ignore_index`` must lie in [0, C); predictions outside [0, C) are an error.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("confusion_matrix takes integer class-index tensors, not scores")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target = target[keep]
    pred = pred[keep]
    if target.numel():
        bad_t = (target < 0) | (target >= num_classes)
        if bool(bad_t.any()):
            raise ValueError(
                f"target holds value {int(target[bad_t][0])} outside [0, {num_classes}) "
                f"and is not ignore_index={ignore_index}"
            )
        bad_p = (pred < 0) | (pred >= num_classes)
        if bool(bad_p.any()):
            raise ValueError(f"pred holds value {int(pred[bad_p][0])} outside [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def scores(confusion: torch.Tensor) -> dict:
    """mIoU, aAcc, mAcc, mDice (fractions in [0, 1]) and per-class ``IoU`` (NaN if absent)."""
    cm = torch.as_tensor(confusion, dtype=torch.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be square, got shape {tuple(cm.shape)}")
    tp = torch.diagonal(cm)
    gt = cm.sum(dim=1)  # TP + FN
    pr = cm.sum(dim=0)  # TP + FP
    union = gt + pr - tp
    iou = [float(t / u) if u > 0 else float("nan") for t, u in zip(tp, union)]
    acc = [float(t / g) if g > 0 else float("nan") for t, g in zip(tp, gt)]
    dice = [float(2 * t / (g + p)) if (g + p) > 0 else float("nan") for t, g, p in zip(tp, gt, pr)]
    total = float(cm.sum())
    return {
        "mIoU": _nanmean(iou),
        "aAcc": float(tp.sum()) / total if total > 0 else float("nan"),
        "mAcc": _nanmean(acc),
        "mDice": _nanmean(dice),
        "IoU": iou,
        "Acc": acc,
        "Dice": dice,
    }


# --- claim-specific metrics (issue 20): Boundary IoU, object-size recall, thin classes ---------------
#
# Boundary IoU follows Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
# Evaluation", CVPR 2021 (facts only; the code below is our own). Object sizes follow COCO's
# small / medium / large areas, scaled to the image. See docs/metrics.md.


def _check_labels(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int, what: str):
    """The checks ``confusion_matrix`` makes: equal shapes, integer dtypes, labelled target
    pixels in [0, C), predictions on labelled pixels in [0, C). Returns the bool mask of
    labelled pixels (target != ignore_index)."""
    if pred.shape != target.shape:
        raise ValueError(f"{what}: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError(f"{what} takes integer class-index tensors, not scores")
    valid = target != ignore_index
    if target.numel():
        for name, values in (("target", target), ("pred", pred)):
            low, high = torch.aminmax(torch.where(valid, values, 0))
            if low < 0 or high >= num_classes:
                bad = values[valid & ((values < 0) | (values >= num_classes))][0]
                extra = f" and is not ignore_index={ignore_index}" if name == "target" else ""
                raise ValueError(f"{what}: {name} holds value {int(bad)} outside [0, {num_classes}){extra}")
    return valid


def boundary_dilation(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """The band width d (pixels) of Boundary IoU for an image: max(1, round(ratio x diagonal)).

    ``round`` is Python's (halves to even), as in the Boundary IoU reference code.
    E.g. 100x100 -> round(2.83) = 3; 128x256 -> 6; 512x1024 -> 23; 1024x2048 -> 46.
    """
    return max(1, int(round(dilation_ratio * math.sqrt(height * height + width * width))))


def _window_reduce(x: torch.Tensor, k: int, dim: int, op) -> torch.Tensor:
    """``op`` (torch.maximum or torch.minimum) over every run of ``k`` consecutive entries
    along ``dim``: the result is ``k - 1`` shorter there, entry i covering x[i : i + k].

    The run length doubles each step (1, 2, 4, ... then the remainder), combining two
    shifted copies, so a window of k costs about log2(k) elementwise operations.
    """
    length = 1
    while length < k:
        step = min(length, k - length)
        n = x.shape[dim]
        x = op(x.narrow(dim, 0, n - step), x.narrow(dim, step, n - step))
        length += step
    return x


def _boundary_band(labels: torch.Tensor, d: int) -> torch.Tensor:
    """bool [B, H, W]: pixels whose (2d+1)x(2d+1) window, outside the image included, does
    not hold their own label alone. ``labels``: int16 [B, H, W], class indices or -1 ("no class").

    For a pixel of class c this is exactly "in the band of the mask (labels == c)": the mask
    minus its erosion by a 3x3 square d times, outside the image counting as background
    (the eroded mask keeps a pixel only if its whole window is c). One pass serves every
    class: the window holds a single label iff its maximum equals its minimum, with the
    image padded by d pixels of -1 (never a class). Extra memory: a few int16 copies of the
    padded batch, about 6 x 2 bytes x B (H + 2d) (W + 2d), whatever the number of classes.
    """
    padded = torch.nn.functional.pad(labels, (d, d, d, d), value=-1)
    k = 2 * d + 1
    high = _window_reduce(_window_reduce(padded, k, 1, torch.maximum), k, 2, torch.maximum)
    low = _window_reduce(_window_reduce(padded, k, 1, torch.minimum), k, 2, torch.minimum)
    return high != low


def boundary_iou_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    dilation_ratio: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class Boundary IoU counts: (intersection, union), two int64 tensors [C] on the
    input's device, summed over the batch.

    ``pred`` and ``target`` are integer class maps [B, H, W] or [H, W] of one image size
    (call it per image for images of different sizes, on the unpadded image). For each
    image, d = :func:`boundary_dilation` (H, W, dilation_ratio) pixels, and for each class c:

    - G = (target == c) (ignored pixels are never in G), P = (pred == c) (on all pixels);
    - the band of a mask is the mask minus its erosion by a 3x3 square d times (one
      (2d+1)x(2d+1) square); outside the image counts as background, so a mask touching
      the image edge has a band along it;
    - pixels where target == ignore_index are then removed from both bands;
    - intersection_c = |G_band ∩ P_band|, union_c = |G_band ∪ P_band| (pixels).

    BIoU_c = intersection_c / union_c over a split (NaN where union_c == 0), mBIoU = nanmean
    over classes, as for mIoU. Same input checks as :func:`confusion_matrix` (predictions
    on ignored pixels may hold anything; outside [0, C) they belong to no class). The
    erosions of all classes are done at once (:func:`_boundary_band`), so the cost does not
    grow with C.
    """
    if not 1 <= num_classes < 2**15 - 1:
        raise ValueError(f"boundary_iou_counts: num_classes must be in [1, 32766], got {num_classes}")
    valid = _check_labels(pred, target, num_classes, ignore_index, "boundary_iou_counts")
    if target.ndim == 2:
        pred, target, valid = pred.unsqueeze(0), target.unsqueeze(0), valid.unsqueeze(0)
    if target.ndim != 3:
        raise ValueError(f"boundary_iou_counts takes [B, H, W] or [H, W] maps, got shape {tuple(target.shape)}")
    d = boundary_dilation(target.shape[1], target.shape[2], dilation_ratio)
    # int16 class maps, -1 for "no class" (ignored target pixels, predictions outside [0, C))
    # (converted where the values are known to fit; any input dtype, uint8 included)
    target = torch.where(valid, target.to(torch.int16), -1)
    pred = torch.where((pred >= 0) & (pred < num_classes), pred.to(torch.int16), -1)
    g_band = _boundary_band(target, d) & valid
    p_band = _boundary_band(pred, d) & valid
    both = g_band & p_band & (pred == target)
    # one bincount each, pixels outside the band going to an extra bin C (cheaper than indexing)
    outside = torch.tensor(num_classes, dtype=torch.int16, device=target.device)
    g_count = torch.bincount(torch.where(g_band, target, outside).reshape(-1), minlength=num_classes + 1)
    p_count = torch.bincount(torch.where(p_band, pred, outside).reshape(-1), minlength=num_classes + 1)
    intersection = torch.bincount(torch.where(both, target, outside).reshape(-1), minlength=num_classes + 1)
    intersection = intersection[:num_classes]
    return intersection, g_count[:num_classes] + p_count[:num_classes] - intersection


#: COCO's object-area thresholds (pixels) and the image size they are defined at.
COCO_SMALL_AREA, COCO_LARGE_AREA = 32 * 32, 96 * 96
COCO_REFERENCE_PIXELS = 640 * 480

SIZE_BINS = ("small", "medium", "large")
#: one sentence for reports and metrics.json: how the size bins are defined
SIZE_BINS_RULE = ("segments (8-connected components of one class) binned by area: small < t_small <= medium "
                  "< t_large <= large, with t_small = 32^2 and t_large = 96^2 pixels (COCO's) scaled by the "
                  "image's H x W / (640 x 480); recalled when >= 50% of their pixels are predicted as their class")


def size_thresholds(height: int, width: int) -> tuple[float, float]:
    """(t_small, t_large) in pixels for an image of ``height`` x ``width``: COCO's 32^2 and
    96^2 pixels at 640x480, scaled by (H x W) / (640 x 480), so a bin holds the same share
    of the image at every resolution. A segment of area a is small if a < t_small, medium
    if t_small <= a < t_large, large if a >= t_large.
    E.g. 128x256 -> (109.2, 983.0); 512x512 -> (873.8, 7864.3); 512x1024 -> (1747.6, 15728.6).
    """
    scale = height * width / COCO_REFERENCE_PIXELS
    return COCO_SMALL_AREA * scale, COCO_LARGE_AREA * scale


def segment_recall_counts(pred, target, num_classes: int, ignore_index: int = 255, bins=None) -> torch.Tensor:
    """Ground-truth segments and those recalled, per size bin, for ONE image [H, W]:
    int64 tensor [3, 2] (CPU); rows small / medium / large (:data:`SIZE_BINS`), column 0 the
    number of segments, column 1 the number recalled.

    - A segment is a connected component of one class's ground-truth mask (target == c;
      ignored pixels belong to none), 8-connectivity (diagonal neighbours connect). Every
      component counts, however small.
    - It is recalled when at least half of its pixels are predicted as its class (pixel
      recall >= 0.5; exactly half counts).
    - It is binned by its area with ``bins`` = (t_small, t_large) pixels, by default
      :func:`size_thresholds` (H, W).

    Recall of a bin over a split = sum of column 1 / sum of column 0 (undefined without
    segments). ``pred``/``target`` may be tensors (any device) or numpy arrays; the work is
    done with scipy.ndimage.label on CPU numpy arrays, within each class's bounding box.
    """
    from scipy import ndimage

    pred_t, target_t = torch.as_tensor(pred), torch.as_tensor(target)
    _check_labels(pred_t, target_t, num_classes, ignore_index, "segment_recall_counts")
    if target_t.ndim != 2:
        raise ValueError(f"segment_recall_counts takes one image [H, W], got shape {tuple(target_t.shape)}")
    p = pred_t.cpu().numpy()
    t = target_t.cpu().numpy().astype(np.int64)
    t_small, t_large = size_thresholds(*t.shape) if bins is None else (float(bins[0]), float(bins[1]))
    if not 0 <= t_small <= t_large:
        raise ValueError(f"segment_recall_counts: bins must be (t_small, t_large) with 0 <= t_small <= t_large, "
                         f"got {bins!r}")
    counts = np.zeros((3, 2), dtype=np.int64)
    shifted = np.where(t == ignore_index, 0, t + 1)  # 0 = ignored; class c -> c + 1
    eight = np.ones((3, 3), dtype=bool)
    for c, box in enumerate(ndimage.find_objects(shifted, max_label=num_classes)):
        if box is None:  # class absent
            continue
        components, n = ndimage.label(shifted[box] == c + 1, structure=eight)
        area = np.bincount(components.ravel(), minlength=n + 1)[1:]
        hits = np.bincount(components[p[box] == c], minlength=n + 1)[1:]
        size_bin = (area >= t_small).astype(np.int64) + (area >= t_large)
        counts[:, 0] += np.bincount(size_bin, minlength=3)
        counts[:, 1] += np.bincount(size_bin[2 * hits >= area], minlength=3)
    return torch.from_numpy(counts)


#: Thin classes, matched by exact (case-insensitive) class name. A class is "thin" when its
#: objects are mostly narrow parts a few pixels wide (poles, limbs, frames, legs, stems), so
#: that most of their pixels lie near a boundary; the issue's list is pole, traffic light,
#: traffic sign, person, rider, bicycle and their counterparts on other datasets.
#:
#: ========================  ==========================================================
#: dataset                   thin classes (its own names)
#: ========================  ==========================================================
#: Cityscapes, BDD100K,      pole, traffic light, traffic sign, person, rider, bicycle,
#: synthetic (train ids)     motorcycle (the synthetic scenes draw all but motorcycle,
#:                           whose IoU is then NaN and skipped)
#: Cityscapes categories     object (= pole, traffic light, traffic sign), human
#:                           (= person, rider): categories made of thin classes only
#: ADE20K                    pole, streetlight, traffic light, signboard (traffic
#:                           signs), person, bicycle, minibike (motorbikes); no rider
#: PASCAL VOC                person, bicycle, motorbike, bottle (narrow), chair (legs),
#:                           pottedplant (stems, leaves); VOC has no poles or signs
#: ========================  ==========================================================
#:
#: Names match across datasets (ADE20K's "chair" and "bottle" count too, its "armchair" and
#: "swivel chair" do not); a folder dataset with one of these names gets it as well.
THIN_CLASSES: tuple[str, ...] = (
    "pole", "traffic light", "traffic sign", "person", "rider", "bicycle", "motorcycle",  # Cityscapes
    "object", "human",  # Cityscapes categories
    "streetlight", "signboard", "minibike",  # ADE20K (besides pole, traffic light, person, bicycle)
    "motorbike", "bottle", "chair", "pottedplant",  # PASCAL VOC (besides person, bicycle)
)


def thin_class_indices(class_names) -> list[int]:
    """Indices (ascending) of the classes of ``class_names`` that are in :data:`THIN_CLASSES`
    (exact names, case-insensitive, surrounding spaces ignored); [] if none."""
    thin = {name.lower() for name in THIN_CLASSES}
    return [i for i, name in enumerate(class_names) if str(name).strip().lower() in thin]
