"""FPN decoder as in SFNet (Li et al., ECCV 2020; the authors' ``UperNetHead``), the FRM
paper's decoder.

    top  = context module output at H/32 (``dim`` channels: FRM, PPM or DAPPM)
    for F3, F2, F1 (H/16, H/8, H/4):
        lateral_i = 1x1 conv (+ bias) - BN - ReLU (F_i -> dim)
        top       = lateral_i + upsample(top)          (or SFNet's flow-aligned upsample)
        P_i       = 3x3 conv - BN - ReLU (top)
    fused = 3x3 conv - BN - ReLU( concat[P1, up(P2), up(P3), up(top at H/32)] )   H/4, dim

The classifier (1x1 conv) and, in training, the embedding head read ``fused``.

``flow_align`` (default on) replaces the plain bilinear up-sampling of ``top`` by SFNet's
Flow Alignment Module (1x1 reductions of both maps to dim/2, a 3x3 conv predicting a
2-channel flow, ``grid_sample``), as SFNet's ``UperNetAlignHead``. The FRM paper says "FPN
(as in SFNet)"; with the alignment the PPM and DAPPM models have exactly the paper's
15.23M and 15.98M parameters (without it 15.17M and 15.92M), so the paper's decoder had it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench.models.common import conv_bn_relu, upsample_like


class FlowAlign(nn.Module):
    """SFNet's FAM: warp the coarse map onto the fine one with a learned flow field."""

    def __init__(self, dim: int):
        super().__init__()
        self.down_fine = nn.Conv2d(dim, dim // 2, 1, bias=False)
        self.down_coarse = nn.Conv2d(dim, dim // 2, 1, bias=False)
        self.flow = nn.Conv2d(2 * (dim // 2), 2, 3, padding=1, bias=False)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        n, _, h, w = fine.shape
        c = upsample_like(self.down_coarse(coarse), (h, w), align_corners=True)
        flow = self.flow(torch.cat([c, self.down_fine(fine)], dim=1))             # [N, 2, h, w] in pixels
        ys = torch.linspace(-1.0, 1.0, h, device=fine.device, dtype=fine.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=fine.device, dtype=fine.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)    # [h, w, 2] as (x, y)
        norm = torch.tensor([w, h], device=fine.device, dtype=fine.dtype)
        grid = grid.unsqueeze(0) + flow.permute(0, 2, 3, 1) / norm
        return F.grid_sample(coarse, grid, mode="bilinear", align_corners=True)


class FPNDecoder(nn.Module):
    def __init__(self, in_dims: tuple[int, ...], dim: int = 128, flow_align: bool = False):
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)) for c in in_dims)
        self.smooth = nn.ModuleList(conv_bn_relu(dim, dim, 3) for _ in in_dims)
        self.align = nn.ModuleList(FlowAlign(dim) for _ in in_dims) if flow_align else None
        self.fuse = conv_bn_relu(dim * (len(in_dims) + 1), dim, 3)

    def forward(self, feats: list[torch.Tensor], top: torch.Tensor) -> torch.Tensor:
        pyramid = [top]
        for i in reversed(range(len(feats))):
            lateral = self.lateral[i](feats[i])
            if self.align is not None:
                up = self.align[i](lateral, top)
            else:
                up = upsample_like(top, lateral.shape[-2:])
            top = lateral + up
            pyramid.append(self.smooth[i](top))
        pyramid.reverse()                                   # [P1 (H/4), P2, P3, context (H/32)]
        size = pyramid[0].shape[-2:]
        return self.fuse(torch.cat([pyramid[0]] + [upsample_like(p, size) for p in pyramid[1:]], dim=1))
