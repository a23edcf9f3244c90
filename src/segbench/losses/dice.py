"""Multi-class soft Dice loss, the loss of GraDNet (Jia, Li, Li 2022, Eq. 1).

GraDNet's Eq. 1 is the Dice coefficient of two sets, dice(p, t) = 2|y_p ∩ y_t| / (|y_p| + |y_t|).
Its soft, multi-class form over the labelled pixels P of the whole batch::

    p_c(x) = softmax(logits)(x)_c,   t_c(x) = [label(x) == c]
    D_c    = (2 * sum_{x in P} p_c t_c + s) / (sum_{x in P} p_c + sum_{x in P} t_c + s)
    loss   = 1 - mean_c D_c      (mean over all C classes)

Interpretations: softmax probabilities stand for the predicted set (the paper thresholds
nothing); the sums run over the whole batch (Eq. 1 is over sets, not per image); ignore
pixels are left out of every sum; a class absent from the batch still counts (with the
smoothing s, default 1, its D_c = s / (sum p_c + s) penalises probability spent on it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench import IGNORE_INDEX
from segbench.losses.common import check_labels, check_number, zero_loss


class Dice(nn.Module):
    def __init__(self, smooth: float = 1.0, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.smooth = float(check_number("dice", "smooth", smooth, minimum=0))
        self.ignore_index = ignore_index

    def per_class(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """D_c for every class, [C]."""
        check_labels("dice", logits, labels, self.ignore_index)
        valid = (labels != self.ignore_index).unsqueeze(1)  # [N, 1, H, W]
        probs = F.softmax(logits.float(), dim=1) * valid
        onehot = F.one_hot(torch.where(valid[:, 0], labels.long(), 0), logits.shape[1]).permute(0, 3, 1, 2)
        onehot = onehot.to(probs.dtype) * valid
        inter = (probs * onehot).sum(dim=(0, 2, 3))
        card = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        return (2.0 * inter + self.smooth) / (card + self.smooth).clamp_min(1e-12)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not bool((labels != self.ignore_index).any()):
            return zero_loss(logits)
        return 1.0 - self.per_class(logits, labels).mean()
