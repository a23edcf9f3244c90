"""Multi-class soft Dice loss, the loss of GraDNet (Jia, Li, Li 2022, Eq. 1).

GraDNet's Eq. 1 is the Dice coefficient of two sets, dice(p, t) = 2|y_p ∩ y_t| / (|y_p| + |y_t|).
Its soft, multi-class form over the labelled pixels P of the whole batch::

    p_c(x) = softmax(logits)(x)_c,   t_c(x) = [label(x) == c]
    D_c    = (2 * sum_{x in P} p_c t_c + s) / (sum_{x in P} p_c + sum_{x in P} t_c + s)
    loss   = 1 - mean_{c : denominator_c > 0} D_c      (0 when no class has one)

Interpretations: softmax probabilities stand for the predicted set (the paper thresholds
nothing); the sums run over the whole batch (Eq. 1 is over sets, not per image); ignore
pixels are left out of every sum. A class absent from the labels still counts as long as
its denominator is positive: with the smoothing s (default 1) it always is, and its
D_c = s / (sum p_c + s) penalises probability spent on it. With ``smooth: 0`` a class with
no predicted probability and no labelled pixel has D_c = 0/0: Eq. 1 is undefined for two
empty sets, and scoring it 0 would make a perfect prediction lose 1/C per absent class, so
such a class is left out of the mean (as mIoU leaves out a class absent from both
prediction and ground truth); if every class is, the loss is 0.
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
        """D_c for every class, [C]; NaN for a class whose denominator is 0 (only possible
        with ``smooth`` 0: nothing predicted, nothing labelled)."""
        num, den = self._terms(logits, labels)
        return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.nan)

    def _terms(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Numerator and denominator of D_c for every class, [C] each."""
        check_labels("dice", logits, labels, self.ignore_index)
        valid = (labels != self.ignore_index).unsqueeze(1)  # [N, 1, H, W]
        probs = F.softmax(logits.float(), dim=1) * valid
        onehot = F.one_hot(torch.where(valid[:, 0], labels.long(), 0), logits.shape[1]).permute(0, 3, 1, 2)
        onehot = onehot.to(probs.dtype) * valid
        inter = (probs * onehot).sum(dim=(0, 2, 3))
        card = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        return 2.0 * inter + self.smooth, card + self.smooth

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not bool((labels != self.ignore_index).any()):
            return zero_loss(logits)
        num, den = self._terms(logits, labels)
        counted = den > 0
        if not bool(counted.any()):
            return zero_loss(logits)
        # the 0/0 classes are masked out before dividing: no NaN reaches the gradient
        dice = num[counted] / den[counted]
        return 1.0 - dice.mean()
