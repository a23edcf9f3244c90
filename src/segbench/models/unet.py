"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015), as in the field's PyTorch reference.

Contracting path: ``depth`` steps of (2x2 max-pool, two 3x3 conv-BN-ReLU), channels
doubling from ``width`` (64 in the paper, 64..1024). Expanding path: up-sample (2x2
transposed convolution halving the channels, or bilinear), concatenate the skip feature,
two 3x3 conv-BN-ReLU; a 1x1 convolution to the classes.

Interpretations (those of the widely used PyTorch reference, milesial/Pytorch-UNet, whose
parameter counts are 31.04M with transposed convolutions, 17.26M bilinear, 2 classes):
- 'same' padding, so the output has the input's resolution (the paper crops valid convs);
- batch normalisation after every convolution (not in the 2015 paper), convs without bias;
- with ``bilinear=True`` the deepest level and every decoder level except the last have
  half the channels, and the first conv of each decoder block halves its input.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench.models.common import check_input


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) x 2."""

    def __init__(self, cin: int, cout: int, mid: int | None = None):
        mid = mid or cout
        super().__init__(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    """Up-sample ``x``, concatenate the skip feature, DoubleConv."""

    def __init__(self, cin: int, cout: int, bilinear: bool):
        super().__init__()
        self.bilinear = bilinear
        if bilinear:
            self.up = None
            self.conv = DoubleConv(cin, cout, mid=cin // 2)
        else:
            self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.bilinear:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        else:
            x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, depth: int = 4, bilinear: bool = False):
        super().__init__()
        self.depth = depth
        self.input_multiple = max(32, 2**depth)    # the repository's contract: sides multiples of 32
        factor = 2 if bilinear else 1
        chans = [width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, chans[0])
        self.downs = nn.ModuleList(
            Down(chans[i], chans[i + 1] // (factor if i == depth - 1 else 1)) for i in range(depth)
        )
        self.ups = nn.ModuleList(
            Up(chans[i + 1], chans[i] // (factor if i > 0 else 1), bilinear) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(chans[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_multiple, "unet")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)
