"""Pixel-wise cross-entropy with ignore index 255 and optional class weights.

With ``class_weights`` w the loss is torch's weighted mean over labelled pixels,
sum_p w[y_p] * CE_p / sum_p w[y_p] (tests/test_losses.py checks it by hand).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench import IGNORE_INDEX
from segbench.losses.common import check_class_weights, check_number, check_weights_match, zero_loss


class CrossEntropy(nn.Module):
    def __init__(self, class_weights: list[float] | None = None, label_smoothing: float = 0.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        check_number("ce", "label_smoothing", label_smoothing, minimum=0)
        if label_smoothing > 1:
            raise ValueError(f"loss 'ce': label_smoothing={label_smoothing!r} is not allowed; expected a number "
                             "in [0, 1]")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", check_class_weights("ce", class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_weights_match("ce", self.class_weights, logits.shape[1])
        if not bool((target != self.ignore_index).any()):
            return zero_loss(logits)  # torch's mean over no pixel would be NaN
        return F.cross_entropy(logits.float(), target.long(), weight=self.class_weights,
                               ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)
