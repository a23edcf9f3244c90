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
