"""Feature Refinement Module (Wang, Guo, Wang, Zheng, Qi, arXiv 2412.08670).

    F1, F2, F3, F4 (backbone stages, strides 4..32)
    Fc  = concat[avgpool(F1), avgpool(F2), avgpool(F3), F4]   all at H/32, C = sum of dims
    Fd  = Fc + DNL(Fc)                                         disentangled non-local block
    Ff  = Fd + FFN(Fd),  FFN = 1x1 (C -> ffn_ratio*C) -> dw 3x3 -> ReLU -> 1x1 (-> C)
    out = 1x1 conv (C -> ``cout``) + BN + ReLU                 "cut the channels"

DNL (Yin et al., ECCV 2020), the paper's Eq.:
    w(x_i, x_j) = softmax_j((q_i - mu_q)^T (k_j - mu_k)) + softmax_j(m_j)
    y_i = sum_j w(x_i, x_j) g(x_j)
with q, k, g 1x1 convs to C/``reduction`` (C/4) channels, m a 1x1 conv to one channel (the
unary term), mu_q, mu_k the means of q and k over the positions; y goes back to C by a
1x1 conv + BN (as mmseg's non-local blocks) and is added to the input.

Interpretations (the paper gives no code):
- pooling F1..F3 to H/32 is an average pool with kernel = stride = 8, 4, 2;
- the pairwise logits are scaled by 1/sqrt(C/reduction) (mmseg's ``use_scale``); mmseg's extra
  temperature (0.05) is not used;
- g has C/reduction channels like q and k (mmseg's DNL uses C/2 for g); the paper names no
  normalisation inside the FFN and none is added;
- ``ffn_ratio`` 0.25, i.e. the FFN's hidden width is C/4, the DNL's inner width: the paper's
  FFN "expands" but gives no ratio, and with C = 1024 (VAN-b1) even a hidden width of C
  costs 2.1M parameters, more than the paper's whole FRM-vs-PPM difference (16.48M - 15.23M
  = 1.25M). With C/4 the model has 16.22M parameters (paper 16.48M); docs/models.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def pool_to(x: torch.Tensor, size) -> torch.Tensor:
    """Average-pool ``x`` to ``size`` (a whole-number fraction of its own)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    fh, fw = x.shape[-2] // size[0], x.shape[-1] // size[1]
    if fh * size[0] == x.shape[-2] and fw * size[1] == x.shape[-1]:
        return F.avg_pool2d(x, (fh, fw))
    return F.adaptive_avg_pool2d(x, size)


class DisentangledNonLocal(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        inner = max(channels // reduction, 1)
        self.inner = inner
        self.q = nn.Conv2d(channels, inner, 1)
        self.k = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.m = nn.Conv2d(channels, 1, 1)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q = self.q(x).flatten(2)                        # [N, C', HW]
        k = self.k(x).flatten(2)
        g = self.g(x).flatten(2).transpose(1, 2)        # [N, HW, C']
        q = q - q.mean(dim=2, keepdim=True)             # whitening: subtract the means over positions
        k = k - k.mean(dim=2, keepdim=True)
        pairwise = torch.softmax(torch.bmm(q.transpose(1, 2), k) / math.sqrt(self.inner), dim=-1)  # [N, HW, HW]
        unary = torch.softmax(self.m(x).flatten(2), dim=-1)                                        # [N, 1, HW]
        y = torch.bmm(pairwise, g) + torch.bmm(unary, g)                                           # [N, HW, C']
        y = y.transpose(1, 2).reshape(n, self.inner, h, w)
        return x + self.out(y)


class FFN(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.dw(self.fc1(x))))


class FRM(nn.Module):
    """Takes the four stage features, returns ``cout`` channels at the last one's size."""

    def __init__(self, dims: tuple[int, ...], cout: int, reduction: int = 4, ffn_ratio: float = 0.25):
        super().__init__()
        channels = sum(dims)
        self.dnl = DisentangledNonLocal(channels, reduction)
        self.ffn = FFN(channels, max(int(round(channels * ffn_ratio)), 1))
        self.cut = nn.Sequential(nn.Conv2d(channels, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[-1].shape[-2:]
        x = torch.cat([pool_to(f, size) for f in feats], dim=1)
        return self.cut(self.ffn(self.dnl(x)))
