"""Building blocks shared by several models."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, bias: bool = False) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def check_input(x: torch.Tensor, multiple: int = 32, name: str = "model") -> None:
    """Fail clearly on inputs the network cannot map back to their own resolution."""
    if x.ndim != 4:
        raise ValueError(f"{name} expects a [N, C, H, W] batch, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"{name} needs input sides that are multiples of {multiple}, got {h}x{w}; "
            f"crop or pad to e.g. {h - h % multiple or multiple}x{w - w % multiple or multiple}"
        )
