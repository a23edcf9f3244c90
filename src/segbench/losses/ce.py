"""Pixel-wise cross-entropy with ignore index 255 and optional class weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench import IGNORE_INDEX


class CrossEntropy(nn.Module):
    def __init__(self, class_weights: list[float] | None = None, label_smoothing: float = 0.0,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", w, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.class_weights is not None and self.class_weights.numel() != logits.shape[1]:
            raise ValueError(
                f"ce: class_weights has {self.class_weights.numel()} entries but the model predicts "
                f"{logits.shape[1]} classes"
            )
        return F.cross_entropy(logits.float(), target.long(), weight=self.class_weights,
                               ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)
