"""Dilated ResNet-50/101 (He et al., CVPR 2016) as DeepLabV3 uses it (Chen et al. 2017, Sec. 3.2).

Layout (torchvision's ResNet "v1.5", whose DeepLabV3-ResNet101 has 58.63M parameters with
21 classes and no auxiliary head, torchvision's ``deeplabv3_resnet101``):

    stem   7x7/2 conv (``width`` channels) - BN - ReLU - 3x3/2 max-pool         H/4
    layer1 bottlenecks x n1, width*4 channels                                  H/4
    layer2 bottlenecks x n2, width*8, first block stride 2                     H/8
    layer3 bottlenecks x n3, width*16, stride 2 or dilation 2 (OS 8)           H/16 | H/8
    layer4 bottlenecks x n4, width*32, stride 2 or dilation (OS 8 and 16)      H/16 | H/8

Bottleneck: 1x1 (reduce) - 3x3 (stride/dilation) - 1x1 (expand x4), BN after each, ReLU,
identity or 1x1-conv-BN projection shortcut. depths: 50 = (3, 4, 6, 3), 101 = (3, 4, 23, 3).

Interpretations:
- ``output_stride`` 16 replaces layer4's stride by dilation 2; 8 replaces layer3's by 2 and
  layer4's by 4 ("atrous" ResNet, DeepLabV3 Sec. 3.1).
- Every block of a dilated layer uses the layer's rate (torchvision gives the first block
  the previous rate; the difference is one 3x3 conv per layer).
- ``multi_grid`` (DeepLabV3 Sec. 3.2, "Multi-grid Method") multiplies layer4's rate per
  block: (1, 2, 4) is the paper's best and the PAC authors' setting; (1, 1, 1) is
  torchvision's. Parameter counts do not depend on it.
- ``width`` scales every layer (64 in the paper); the expansion stays 4.
"""

from __future__ import annotations

import torch
from torch import nn

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class DilatedResNet(nn.Module):
    """Returns the layer4 feature (``out_channels`` = width*32) at ``output_stride``."""

    def __init__(self, depth: int = 101, output_stride: int = 16, width: int = 64, in_channels: int = 3,
                 multi_grid: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        blocks = DEPTHS[depth]
        if len(multi_grid) != blocks[3]:
            raise ValueError(f"multi_grid needs one factor per layer4 block ({blocks[3]}), got {list(multi_grid)}")
        self.output_stride = output_stride
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        # (stride, dilation) per layer
        if output_stride == 16:
            plan = [(1, 1), (2, 1), (2, 1), (1, 2)]
        else:
            plan = [(1, 1), (2, 1), (1, 2), (1, 4)]
        cin = width
        layers = []
        for i, (n, (stride, rate)) in enumerate(zip(blocks, plan)):
            planes = width * 2**i
            grid = multi_grid if i == 3 else (1,) * n
            layer = []
            for j in range(n):
                layer.append(Bottleneck(cin, planes, stride if j == 0 else 1, rate * grid[j]))
                cin = planes * Bottleneck.expansion
            layers.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = cin
        self.low_channels = width * Bottleneck.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)
