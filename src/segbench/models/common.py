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


def init_weights(module: nn.Module) -> None:
    """The repository's random-initialisation scheme (a ``pretrained`` backbone is loaded over it
    afterwards, models/pretrained.py).

    Convolutions: Kaiming-normal, fan-out, ReLU gain (He et al. 2015, torchvision's ResNet
    scheme); biases 0. Linear layers: truncated normal, std 0.02. Batch/layer/group norms:
    weight 1, bias 0. Modules that initialise themselves differently (e.g. VAN's layer scale)
    do it after calling this.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def upsample_like(x: torch.Tensor, size, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``size`` (a no-op when it already has that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def count_parameters(model: nn.Module, inference_only: bool = True) -> int:
    """Parameters of ``model``; with ``inference_only``, without the train-only modules a
    model lists in ``train_only_modules`` (e.g. the embedding head of the FRM models, used
    by ``forward_train`` and never by ``forward``)."""
    skip = tuple(f"{name}." for name in getattr(model, "train_only_modules", ())) if inference_only else ()
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))
