"""MobileNet v1 (Howard et al., arXiv 1704.04861, Table 1), as the Keras encoder of the
keras-segmentation package builds it: a 3x3/2 conv, then depth-wise separable blocks
(3x3 depth-wise - BN - ReLU6 - 1x1 - BN - ReLU6), convs without bias.

``width_mult`` is MobileNet's alpha (1.0: 32, 64, 128, ..., 1024 channels). ``levels``
returns the maps at strides 2, 4, 8, 16 (f1..f4) and, with ``stride32``, 32 (f5).
"""

from __future__ import annotations

import torch
from torch import nn

# (channels, stride) of the 13 separable blocks; the level ends after the marked indices
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1))
LEVEL_ENDS = (0, 2, 4, 10, 12)


def _ch(c: int, alpha: float) -> int:
    return max(int(c * alpha), 1)


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class MobileNetV1(nn.Module):
    def __init__(self, width_mult: float = 1.0, in_channels: int = 3, stride32: bool = True):
        super().__init__()
        c0 = _ch(32, width_mult)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c0),
                                  nn.ReLU6(inplace=True))
        n = len(BLOCKS) if stride32 else LEVEL_ENDS[3] + 1
        cin, blocks = c0, []
        for c, s in BLOCKS[:n]:
            blocks.append(DepthwiseSeparable(cin, _ch(c, width_mult), s))
            cin = _ch(c, width_mult)
        self.blocks = nn.ModuleList(blocks)
        self.level_ends = [e for e in LEVEL_ENDS if e < n]
        self.channels = [_ch(BLOCKS[e][0], width_mult) for e in self.level_ends]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        levels = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.level_ends:
                levels.append(x)
        return levels
