"""Atrous Spatial Pyramid Pooling (DeepLabV3, Chen et al. 2017, Sec. 3.3 and Fig. 5).

Five parallel branches on the backbone feature, each ending in BN + ReLU:
a 1x1 conv, three 3x3 convs with atrous ``rates`` (6, 12, 18 at output stride 16; doubled
at 8), and image pooling (global average -> 1x1 conv -> bilinear back to the map).
They are concatenated and projected by a 1x1 conv (+ BN + ReLU) to ``channels`` (256).
Dropout 0.5 after the projection, as torchvision's reference (not in the paper's text;
``dropout=0`` puts none there).
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models.common import conv_bn_relu, upsample_like


class ImagePooling(nn.Sequential):
    """Global average pooling -> 1x1 conv -> BN -> ReLU, broadcast back to the input's size."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, cout, k=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_like(super().forward(x), x.shape[-2:])


class ASPP(nn.Module):
    def __init__(self, cin: int, channels: int = 256, rates: tuple[int, ...] = (6, 12, 18), dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, channels, k=1)]
            + [conv_bn_relu(cin, channels, k=3, dilation=r) for r in rates]
            + [ImagePooling(cin, channels)])
        self.project = nn.Sequential(*conv_bn_relu(len(self.branches) * channels, channels, k=1),
                                     nn.Dropout(dropout) if dropout > 0 else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))
