"""U-Net with an Xception-style encoder, the U-Net of Saraceno's "Image semantic
segmentation" report (2022), after the Keras example it builds on ("Image segmentation with
a U-Net-like architecture", F. Chollet, keras.io, 2019).

Read top-down (w = ``width``, 32 in the reference):

    entry   3x3/2 conv (w) - BN - ReLU                                          H/2   e0
    down i  for c in (2w, 4w, 8w):                                                     e1..e3
            ReLU - sep 3x3 (c) - BN - ReLU - sep 3x3 (c) - BN - max-pool 3x3/2
            + residual: 1x1/2 conv of the block input                          H/4, H/8, H/16
    up i    for c in (8w, 4w, 2w, w), input x (with ``skips``: concat[x, e_j], the encoder
            map at x's resolution, from the second up block on):
            ReLU - 3x3 transposed conv (c) - BN - ReLU - 3x3 transposed conv (c) - BN
            - up-sample x2 (nearest) + residual: 1x1 conv of the up-sampled block input
    head    3x3 conv to the classes (logits; the reference ends in a softmax)      H

"sep" is a depth-wise separable convolution (3x3 depth-wise without bias, then 1x1 with
bias, as Keras' SeparableConv2D); convs keep their Keras biases.

Interpretations:
- ``skips`` (default on) adds U-Net's encoder-decoder concatenations, which the Keras
  example lacks (it has only the residual shortcuts) but the report's "U-Net" and the
  U-Net-vs-SegNet comparison imply; ``skips=False`` is the Keras example exactly.
- Keras' stride-1 "same" Conv2DTranspose is a 3x3 transposed convolution with padding 1.
- Kaiming initialisation (Keras uses Glorot-uniform).

Implementation: an up block adds its shortcut before the nearest up-sampling (the same
function as the Keras order, see ``UpBlock.forward``), so its 1x1 shortcut conv runs at the
block's input resolution; counted MACs are those of this order (about 17% fewer than the
Keras order's at width 16, all in the up blocks' shortcuts).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench.models.common import check_input, init_weights


class SeparableConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1))


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), SeparableConv(cin, cout), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True), SeparableConv(cout, cout), nn.BatchNorm2d(cout),
            nn.MaxPool2d(3, stride=2, padding=1))
        self.residual = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.residual(x)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True), nn.ConvTranspose2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout))
        self.residual = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Keras: up(body(x)) + conv1x1(up(x)). Nearest up-sampling copies each pixel to a 2x2
        # block, and a 1x1 conv and a sum act pixel by pixel, so conv1x1(up(x)) = up(conv1x1(x))
        # and up(a) + up(b) = up(a + b): the same function with the 1x1 conv and the sum on a
        # quarter of the pixels and one up-sampling of cout channels instead of two (cin + cout)
        return F.interpolate(self.body(x) + self.residual(x), scale_factor=2, mode="nearest")


class UNetXception(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, skips: bool = True):
        super().__init__()
        w = width
        self.skips = skips
        self.entry = nn.Sequential(nn.Conv2d(in_channels, w, 3, stride=2, padding=1), nn.BatchNorm2d(w),
                                   nn.ReLU(inplace=True))
        enc = [w, 2 * w, 4 * w, 8 * w]
        self.down = nn.ModuleList(DownBlock(enc[i], enc[i + 1]) for i in range(3))
        dec = [8 * w, 4 * w, 2 * w, w]
        self.up = nn.ModuleList()
        cin = enc[-1]
        for i, c in enumerate(dec):
            skip = enc[3 - i] if (skips and i > 0) else 0     # e2, e1, e0 for up blocks 2..4
            self.up.append(UpBlock(cin + skip, c))
            cin = c
        self.head = nn.Conv2d(w, num_classes, 3, padding=1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 32, "unet_xception")
        enc = [self.entry(x)]
        for block in self.down:
            enc.append(block(enc[-1]))
        y = enc.pop()
        for i, block in enumerate(self.up):
            if self.skips and i > 0:
                y = torch.cat([y, enc.pop()], dim=1)
            y = block(y)
        return self.head(y)
