"""Helpers shared by the losses: option checks that name the key and the allowed values,
and the per-pixel cross-entropy that every weighted loss starts from."""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import torch
from torch.nn import functional as F


def check_choice(loss: str, key: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise ValueError(f"loss '{loss}': {key}={value!r} is not allowed; allowed values: "
                         f"{', '.join(map(str, allowed))}")
    return value


def check_number(loss: str, key: str, value: Any, *, minimum: float | None = None,
                 greater_than: float | None = None, integer: bool = False, odd: bool = False) -> Any:
    rule = ("an odd integer" if odd else "an integer") if integer else "a number"
    if minimum is not None:
        rule += f" >= {minimum}"
    if greater_than is not None:
        rule += f" > {greater_than}"
    ok = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (greater_than is None or value > greater_than)
    ok = ok and (not odd or value % 2 == 1)
    if not ok:
        raise ValueError(f"loss '{loss}': {key}={value!r} is not allowed; expected {rule}")
    return value


def check_class_weights(loss: str, weights: Sequence[float] | None) -> torch.Tensor | None:
    """``None`` (or an empty list) means unweighted; otherwise non-negative, not all zero."""
    if weights is None or len(weights) == 0:
        return None
    if not all(isinstance(w, numbers.Real) and not isinstance(w, bool) and w >= 0 for w in weights):
        raise ValueError(f"loss '{loss}': class_weights={list(weights)!r} is not allowed; expected a list of "
                         "numbers >= 0, one per class")
    if sum(weights) <= 0:
        raise ValueError(f"loss '{loss}': class_weights are all zero; give at least one positive weight")
    return torch.tensor([float(w) for w in weights], dtype=torch.float32)


def check_weights_match(loss: str, weights: torch.Tensor | None, num_classes: int) -> None:
    if weights is not None and weights.numel() != num_classes:
        raise ValueError(f"{loss}: class_weights has {weights.numel()} entries but the model predicts "
                         f"{num_classes} classes")


def check_labels(loss: str, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> None:
    """Shapes agree and every label is a class id or the ignore index (error names the value)."""
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0] \
            or logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"{loss}: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match; "
                         "expected logits [N, C, H, W] and labels [N, H, W]")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= logits.shape[1]))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(f"{loss}: label value {value} is neither a class id (0..{logits.shape[1] - 1}) nor "
                         f"the ignore index {ignore_index}")


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy per pixel, [N, H, W] float32; 0 at ignore pixels."""
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="none")


def zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero that is still connected to the graph (a batch with no labelled pixel)."""
    return sum(t.float().sum() * 0.0 for t in tensors)
