"""Pyramid Atrous Convolution (Yu, "Semantic Image Segmentation with Pyramid Atrous
Convolution and Boundary-aware Loss", POSTECH; Sec. 3.3, Fig. 6, Table 2).

One 3x3 filter bank ``weight`` [C_out, C_in, 3, 3] is applied at several atrous ``rates``
(one ``F.conv2d`` per rate, all reading the same tensor), so the module has the
parameters of a single 3x3 convolution whatever the number of rates. The per-rate
outputs are merged:

- ``merge="sum"``: summed (the paper's best, Table 2 last row), then BN + ReLU;
- ``merge="concat"``: concatenated along channels, BN + ReLU, then "squeezed by a 1x1
  convolution" to C_out (+ BN + ReLU).

``variant="reference"`` reproduces the authors' public TF code (``multi_conv2d``): the
output is (plain 3x3 conv + sum of the atrous convs over ``rates``) / len(rates), i.e. the
rate-1 term counted twice, then BN + ReLU; only the summed form exists there.

Interpretations: no bias on the shared filter (BN follows); in the concat form each rate's
output gets its own BN statistics before the 1x1 (a BN on the concatenation), so that the
1x1 does not collapse into a linear combination of the rates.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PyramidAtrousConv(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (1, 3, 5, 7, 9), merge: str = "sum",
                 variant: str = "paper"):
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if not rates or min(rates) < 1:
            raise ValueError(f"PAC rates must be positive integers, got {list(rates)}")
        if merge not in ("sum", "concat"):
            raise ValueError(f"PAC merge must be 'sum' or 'concat', got {merge!r}")
        if variant not in ("paper", "reference"):
            raise ValueError(f"PAC variant must be 'paper' or 'reference', got {variant!r}")
        if variant == "reference" and merge != "sum":
            raise ValueError("PAC variant 'reference' (the authors' TF code) only sums the rates; use merge='sum'")
        self.rates, self.merge, self.variant = rates, merge, variant
        # the one shared filter bank
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if merge == "sum":
            self.post = nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        else:
            self.post = nn.Sequential(
                nn.BatchNorm2d(cout * len(rates)), nn.ReLU(inplace=True),
                nn.Conv2d(cout * len(rates), cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def atrous(self, x: torch.Tensor, rate: int) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=rate, dilation=rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.atrous(x, r) for r in self.rates]
        if self.merge == "concat":
            return self.post(torch.cat(outs, dim=1))
        y = outs[0]
        for o in outs[1:]:
            y = y + o
        if self.variant == "reference":
            plain = outs[self.rates.index(1)] if 1 in self.rates else self.atrous(x, 1)
            y = (plain + y) / len(self.rates)
        return self.post(y)
