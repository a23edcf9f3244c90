"""Deep Aggregation Pyramid Pooling Module (DDRNet, Hong et al., arXiv 2101.06085),
as in the authors' code (github.com/ydhongHIT/DDRNet):

    scale0 = BN-ReLU-1x1(x)
    scale_i = BN-ReLU-1x1(pool_i(x)),  pool_1..4 = AvgPool(5,2,2), (9,4,4), (17,8,8), global
    y_0 = scale0;  y_i = BN-ReLU-3x3( upsample(scale_i) + y_{i-1} )      (hierarchical fusion)
    out = BN-ReLU-1x1( concat[y_0..y_4] ) + BN-ReLU-1x1(x)               (compression + shortcut)

``branch`` channels per branch (DDRNet-23: 128), ``cout`` output channels.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models.common import upsample_like


def _bn_relu_conv(cin: int, cout: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, k, padding=k // 2, bias=False))


class DAPPM(nn.Module):
    POOLS = ((5, 2, 2), (9, 4, 4), (17, 8, 8))

    def __init__(self, cin: int, branch: int, cout: int):
        super().__init__()
        self.scale0 = _bn_relu_conv(cin, branch)
        self.scales = nn.ModuleList(
            [nn.Sequential(nn.AvgPool2d(k, s, p), *_bn_relu_conv(cin, branch)) for k, s, p in self.POOLS]
            + [nn.Sequential(nn.AdaptiveAvgPool2d(1), *_bn_relu_conv(cin, branch))])
        self.process = nn.ModuleList(_bn_relu_conv(branch, branch, 3) for _ in self.scales)
        self.compression = _bn_relu_conv(branch * (len(self.scales) + 1), cout)
        self.shortcut = _bn_relu_conv(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.scale0(x)]
        for scale, process in zip(self.scales, self.process):
            ys.append(process(upsample_like(scale(x), x.shape[-2:]) + ys[-1]))
        return self.compression(torch.cat(ys, dim=1)) + self.shortcut(x)
