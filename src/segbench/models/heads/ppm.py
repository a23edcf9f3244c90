"""Pyramid Pooling Module (PSPNet, Zhao et al., CVPR 2017), as SFNet's ``PSPModule`` builds it
(the FRM paper's decoder is SFNet's FPN; its PPM ablation row, Table 2, replaces FRM by it).

    x -> for each bin s in (1, 2, 3, 6): adaptive avg-pool to s x s -> 1x1 conv -> BN
      -> bilinear back to x's size;  concat [pooled..., x] -> 1x1 conv -> BN -> ReLU -> dropout 0.1

Interpretation: SFNet's 1x1 bottleneck (PSPNet and mmseg use a 3x3, which would add
1.8M parameters and put the model 12% above the paper's 15.23M).
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models.common import upsample_like


class PPM(nn.Module):
    def __init__(self, cin: int, cout: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
            for b in bins)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(cin + len(bins) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Dropout2d(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        priors = [upsample_like(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.bottleneck(torch.cat(priors + [x], dim=1))
