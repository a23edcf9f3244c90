"""A model of one's own: ``TinyNet(num_classes, width=8)``.

segbench calls it as ``TinyNet(num_classes=C, **params)`` (``params`` from the config) and its
forward must map images [N, 3, H, W] (float, normalised; H, W multiples of 32) to logits
[N, C, H, W] at the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TinyNet(nn.Module):
    """Two stride-2 conv blocks, a 1x1 classifier, bilinear up-sampling to the input's size."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(_block(3, width, 2), _block(width, 2 * width, 2), _block(2 * width, 2 * width, 1))
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
