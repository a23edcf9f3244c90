"""Focal loss (Lin et al. 2017), a common comparison for pixel-wise losses.

    FL(x) = -alpha_{y} * (1 - p_y(x))^gamma * log p_y(x)

averaged over labelled pixels with the class weights' normalisation of cross-entropy,
sum_x FL(x) / sum_x alpha_{y(x)}, so that gamma = 0 gives exactly ``ce`` with the same
``class_weights`` (alpha = 1 for every class when they are not given).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench import IGNORE_INDEX
from segbench.losses.common import (
    check_class_weights,
    check_labels,
    check_number,
    check_weights_match,
    zero_loss,
)


class Focal(nn.Module):
    def __init__(self, gamma: float = 2.0, class_weights: list[float] | None = None,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.gamma = float(check_number("focal", "gamma", gamma, minimum=0))
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", check_class_weights("focal", class_weights), persistent=False)

    def pixel_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """alpha_y (1 - p_y)^gamma (-log p_y) per pixel, [N, H, W] (0 at ignore pixels)."""
        check_labels("focal", logits, labels, self.ignore_index)
        check_weights_match("focal", self.class_weights, logits.shape[1])
        valid = labels != self.ignore_index
        target = torch.where(valid, labels.long(), 0)
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1))[:, 0]
        # 1 - p_y as -expm1(log p_y) (accurate near p_y = 1); the clamp keeps d/dp finite for gamma < 1
        loss = -logp * (-torch.expm1(logp)).clamp_min(1e-12) ** self.gamma if self.gamma else -logp
        if self.class_weights is not None:
            loss = loss * self.class_weights[target]
        return loss * valid

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid = labels != self.ignore_index
        if not bool(valid.any()):
            return zero_loss(logits)
        if self.class_weights is None:
            norm = valid.sum()
        else:
            norm = (self.class_weights[torch.where(valid, labels.long(), 0)] * valid).sum()
        return self.pixel_losses(logits, labels).sum() / norm.clamp_min(1e-12)
