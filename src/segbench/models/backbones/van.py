"""Visual Attention Network (Guo, Lu, Liu, Cheng, Hu, arXiv 2202.09741), the backbone of
the FRM paper ("VAN-S" = VAN-b1), laid out as the authors' VAN-Segmentation code.

Four stages at strides 4, 8, 16, 32. Each stage:

    overlapping patch embedding: conv k x k / s (7x7/4 for stage 1, 3x3/2 after) + BN
    blocks x depth:  x = x + ls1 * Attention(BN(x));  x = x + ls2 * MLP(BN(x))
        Attention = 1x1 -> GELU -> LKA -> 1x1, plus its own shortcut
        LKA (large-kernel attention) = (1x1 (dw-dilated 7x7, d=3 (dw 5x5 (u)))) * u
        MLP = 1x1 (x mlp_ratio) -> dw 3x3 -> GELU -> 1x1
        ls1, ls2: per-channel layer scale initialised to 0.01; stochastic depth ``drop_path``
    LayerNorm (eps 1e-6) over channels

Configurations (VAN-Classification, Guo et al., arXiv 2202.09741): b0 dims 32, 64, 160, 256, depths 3, 3, 5, 2;
b1 dims 64, 128, 320, 512, depths 2, 2, 4, 2 (13.35M parameters without classifier);
b2 the b1 dims with depths 3, 3, 12, 3; MLP ratios 8, 8, 4, 4.

``width`` replaces the first stage's dims, the others keeping the ratios 1 : 2 : 5 : 8
(exact for b0 = 32 and b1/b2 = 64), so a CPU config can shrink the same network.
Initialisation: Kaiming (fan-out) for convs as the authors' ``_init_weights`` (normal with
std sqrt(2 / fan_out)), norms 1/0, layer scale 0.01. The VAN-FPN models' ``pretrained`` option fills this
backbone from VAN-Classification's ImageNet checkpoints (models/pretrained.py).
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models.common import DropPath, init_weights

VARIANTS = {
    "b0": {"dims": (32, 64, 160, 256), "depths": (3, 3, 5, 2)},
    "b1": {"dims": (64, 128, 320, 512), "depths": (2, 2, 4, 2)},
    "b2": {"dims": (64, 128, 320, 512), "depths": (3, 3, 12, 3)},
}
MLP_RATIOS = (8, 8, 4, 4)
DIM_RATIOS = (1, 2, 5, 8)


class LargeKernelAttention(nn.Module):
    """LKA: depth-wise 5x5 -> depth-wise 7x7 dilation 3 -> 1x1; the result gates the input."""

    def __init__(self, dim: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.dw_dilated = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.pw = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pw(self.dw_dilated(self.dw(x)))


class SpatialAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.lka = LargeKernelAttention(dim)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_out(self.lka(self.act(self.proj_in(x))))


class ConvMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dw(self.fc1(x))))


class VANBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMLP(dim, dim * mlp_ratio)
        self.layer_scale1 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))
        self.layer_scale2 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale2 * self.mlp(self.norm2(x)))


class PatchEmbed(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm2d(cout))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an [N, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class VAN(nn.Module):
    """Returns the four stage outputs [F1 (H/4), F2 (H/8), F3 (H/16), F4 (H/32)]."""

    def __init__(self, variant: str = "b1", width: int | None = None, in_channels: int = 3, drop_path: float = 0.1):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"VAN variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        cfg = VARIANTS[variant]
        dims = cfg["dims"] if width is None else tuple(width * r for r in DIM_RATIOS)
        depths = cfg["depths"]
        self.dims = dims
        n = sum(depths)  # stochastic depth grows linearly with the block index
        rates = [drop_path * i / max(n - 1, 1) for i in range(n)]
        self.stages = nn.ModuleList()
        cin, k = in_channels, 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            self.stages.append(nn.Sequential(
                PatchEmbed(cin, dim, 7 if i == 0 else 3, 4 if i == 0 else 2),
                *[VANBlock(dim, MLP_RATIOS[i], rates[k + j]) for j in range(depth)],
                ChannelLayerNorm(dim, eps=1e-6)))
            cin, k = dim, k + depth
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
