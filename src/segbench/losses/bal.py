"""Boundary-aware loss (BAL) of Yu, "Semantic Image Segmentation with Pyramid Atrous
Convolution and Boundary-aware Loss" (POSTECH): cross-entropy weighted per pixel by a map
E_G that peaks on class boundaries.

The paper (section on BAL, Table 1)::

    E_i = 1 where |l_i (*) f_E| > 0,    f_E = [[1, -0.5], [-0.5, 0]]    (l_i: one-hot label of class i)
    E_G = sum_i (E_i (*) f_G) + beta
    BAL = 1/n * sum_{x,y} E_G(x, y) * CE(x, y)

    gaussian  f_G(x, y) = exp(-((x - xc)^2 + (y - yc)^2) / (n * sigma)),  n = kernel size
    linear    f_L(x, y) = n - (|x - xc| + |y - yc|)
    both normalised to [0, 1]; the edge image is downsampled by `down`, convolved and
    upsampled back.

Two variants, side by side (also in docs/losses.md):

=====================  =========================================  ==========================================
step                   ``variant: paper`` (the text)               ``variant: reference`` (authors' TF code)
=====================  =========================================  ==========================================
ignore pixels (255)    excluded: they create no edges               mapped to class 0 first, so the border of an
                                                                    ignore region *is* an edge
edge image             sum_i E_i (2 on a two-class boundary)        same
downsampling           area average over down x down blocks         sum over 4x4 blocks (two stride-2 2x2
                       (an anti-aliased bilinear reduction)         all-ones convolutions); `down` = block size
kernel                 gaussian exp(-r^2 / (n sigma)) or linear     gaussian only: exp(-r^2 / (h sigma)),
                       n - |dx| - |dy|; min-max normalised to       h = n // 2 (17 for n = 35), normalised to
                       [0, 1] (peak 1, lowest tap 0)                sum 1
convolution            zero padding, at 1/down resolution           same
upsampling             bilinear (align_corners=False)               bilinear (align_corners=True, as TF1's
                                                                    resize_bilinear was called)
weight                 E_G = conv + beta                            clip(1.5 * conv + beta, 0, 4)
loss                   sum(E_G * CE) / (number of labelled pixels)  same (TF's SUM_BY_NONZERO_WEIGHTS with
                                                                    weight 0 on ignore pixels)
=====================  =========================================  ==========================================

Interpretations taken where the paper is vague (the same in both variants unless stated):

- f_E is applied as a correlation anchored at the pixel's top-left, as the authors' code
  does (the pixel, its right and its lower neighbour): E_i(p) = 1 iff class i occurs among
  those three pixels and they do not all have the same class. The edge is therefore the
  last row / column of pixels *before* a boundary, and a boundary between two classes
  gives E = 2 (one per class). The image border is padded by replication: it is no edge.
  On a straight boundary E_G is symmetric about the edge row at down 1, and about the
  centre of the down x down block holding it at down 2 and 4 (within down/2 pixels).
- Ignore pixels (paper variant): only labelled pixels are compared, so a class next to an
  ignore region makes no edge; E_G is 0 at ignore pixels (they carry no loss).
- The kernel size n is counted at the 1/down resolution (as in the authors' code, where
  a 35-tap kernel runs at 1/4 resolution, i.e. spans 140 input pixels).
- "Bilinearly downsampled" is read as an anti-aliased reduction: a plain bilinear resize
  by 4 samples 2 of every 4 rows and would skip one-pixel edges; the area average keeps
  each edge pixel's mass (1/down of it on a straight line).
- "Normalised to [0, 1]" is read as min-max: (f - min f) / (max f - min f).

Cost: the edge image is computed on labels (no one-hot), and E_G is a single-channel
convolution (sum_i (E_i (*) f) = (sum_i E_i) (*) f) at 1/down resolution, done as a sum
of separable passes (the kernel's singular value decomposition: rank 1 for the reference
gaussian, 2 for the min-max-normalised ones). bench/bench_bal.py measures it against a
DeepLabV3-ResNet50 training step.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from segbench import IGNORE_INDEX
from segbench.losses.common import (
    check_choice,
    check_labels,
    check_number,
    pixel_cross_entropy,
    zero_loss,
)

VARIANTS = ("paper", "reference")
KERNELS = ("gaussian", "linear")
DOWNS = (1, 2, 4)
# authors' code: weight = clip(EDGE_MULTIPLIER * gaussian_edge + remain_rate, 0, MAX_WEIGHT)
REFERENCE_EDGE_MULTIPLIER = 1.5
REFERENCE_MAX_WEIGHT = 4.0


# ----------------------------------------------------------------------------- kernels


@functools.lru_cache(maxsize=64)
def _kernel_f64(variant: str, kernel: str, size: int, sigma: float) -> torch.Tensor:
    h = size // 2
    d = torch.arange(-h, h + 1, dtype=torch.float64)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    if variant == "reference":
        g = torch.exp(-(dx**2 + dy**2) / (max(h, 1) * sigma))
        return g / g.sum()
    if kernel == "gaussian":
        f = torch.exp(-(dx**2 + dy**2) / (size * sigma))
    else:
        f = size - (dx.abs() + dy.abs())
    lo, hi = f.min(), f.max()
    return (f - lo) / (hi - lo) if hi > lo else torch.ones_like(f)


def bal_kernel(kernel: str = "gaussian", size: int = 35, sigma: float = 3.0, variant: str = "paper") -> torch.Tensor:
    """The 2-D kernel f_G / f_L (float64, size x size) of a variant."""
    return _kernel_f64(variant, kernel, int(size), float(sigma)).clone()


@functools.lru_cache(maxsize=64)
def _separable_terms(variant: str, kernel: str, size: int, sigma: float) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(column, row) vector pairs whose outer products sum to the kernel (exact up to float64)."""
    k = _kernel_f64(variant, kernel, size, sigma)
    u, s, vh = torch.linalg.svd(k)
    terms = []
    for r in range(len(s)):
        if s[r] <= 1e-9 * s[0]:
            break
        a = math.sqrt(float(s[r]))
        terms.append(((u[:, r] * a).float(), (vh[r] * a).float()))
    return tuple(terms)


def _pass_1d(x: torch.Tensor, taps: list[float], dim: int) -> torch.Tensor:
    """Zero-padded 'same' correlation of x with ``taps`` along ``dim``, as shifted adds
    (on CPU much faster than a one-channel conv2d with a long kernel)."""
    h = len(taps) // 2
    length = x.shape[dim]
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [h, h]
    xp = F.pad(x, pad)
    out = torch.zeros_like(x)
    for i, t in enumerate(taps):
        if t != 0.0:
            out.add_(xp.narrow(dim, i, length), alpha=t)
    return out


def _convolve(x: torch.Tensor, variant: str, kernel: str, size: int, sigma: float) -> torch.Tensor:
    """x [N, 1, H, W] (*) kernel with zero padding ('same' size), as separable passes."""
    out = None
    for col, row in _separable_terms(variant, kernel, size, sigma):
        y = _pass_1d(_pass_1d(x, col.tolist(), dim=2), row.tolist(), dim=3)
        out = y if out is None else out.add_(y)
    return out


# ----------------------------------------------------------------------------- edges


def edge_image(labels: torch.Tensor, ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """sum_i E_i: for each pixel, the number of classes among it, its right and its lower
    neighbour when these are not all of one class, else 0 (float32, shaped like labels).

    Pixels equal to ``ignore_index`` are left out of the comparison (``None``: every value
    is a class). The last row / column are compared with themselves (replicate padding).
    """
    lab = labels.long()
    squeeze = lab.dim() == 2
    if squeeze:
        lab = lab.unsqueeze(0)
    valid = torch.ones_like(lab, dtype=torch.bool) if ignore_index is None else lab != ignore_index
    right = torch.cat([lab[..., :, 1:], lab[..., :, -1:]], dim=-1)
    v_right = torch.cat([valid[..., :, 1:], valid[..., :, -1:]], dim=-1)
    down = torch.cat([lab[..., 1:, :], lab[..., -1:, :]], dim=-2)
    v_down = torch.cat([valid[..., 1:, :], valid[..., -1:, :]], dim=-2)
    # number of distinct labelled classes among (pixel, right, down)
    count = valid.to(torch.int8)
    count = count + (v_right & ~(valid & (right == lab))).to(torch.int8)
    count = count + (v_down & ~(valid & (down == lab)) & ~(v_right & (down == right))).to(torch.int8)
    edges = torch.where(count >= 2, count, torch.zeros_like(count)).float()
    return edges.squeeze(0) if squeeze else edges


# ----------------------------------------------------------------------------- E_G


def _check_options(variant: str, kernel: str, size, sigma, beta, down) -> None:
    check_choice("bal", "variant", variant, VARIANTS)
    check_choice("bal", "kernel", kernel, KERNELS)
    check_number("bal", "size", size, integer=True, minimum=1, odd=True)
    check_number("bal", "sigma", sigma, greater_than=0)
    check_number("bal", "beta", beta, minimum=0)
    check_choice("bal", "down", down, DOWNS)
    if variant == "reference" and kernel != "gaussian":
        raise ValueError("loss 'bal': kernel='linear' is not allowed with variant='reference' (the authors' "
                         "code has only the gaussian); allowed values: gaussian")


@torch.no_grad()
def boundary_weight(labels: torch.Tensor, num_classes: int, kernel: str = "gaussian", size: int = 35,
                    sigma: float = 3.0, beta: float = 0.5, down: int = 4, variant: str = "paper",
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The per-pixel weight map E_G (float32, shaped like ``labels``: [H, W] or [N, H, W]).

    0 at ignore pixels; ``beta`` far from any boundary (paper variant); see the module
    docstring for the two variants. ``num_classes`` bounds the label values (an error
    names any other value).
    """
    _check_options(variant, kernel, size, sigma, beta, down)
    lab = labels if labels.dim() == 3 else labels.unsqueeze(0)
    if lab.dim() != 3:
        raise ValueError(f"boundary_weight: labels must be [H, W] or [N, H, W], got {tuple(labels.shape)}")
    lab = lab.long()
    valid = lab != ignore_index
    bad = valid & ((lab < 0) | (lab >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"boundary_weight: label value {int(lab[bad][0])} is neither a class id "
                         f"(0..{num_classes - 1}) nor the ignore index {ignore_index}")
    n, H, W = lab.shape
    if variant == "reference":
        edges = edge_image(torch.where(valid, lab, torch.zeros_like(lab)), ignore_index=None)
    else:
        edges = edge_image(lab, ignore_index=ignore_index)
    x = edges.unsqueeze(1)  # [N, 1, H, W]
    Hp, Wp = -(-H // down) * down, -(-W // down) * down
    if (Hp, Wp) != (H, W):
        x = F.pad(x, (0, Wp - W, 0, Hp - H))
    if down > 1:
        x = F.avg_pool2d(x, down)
        if variant == "reference":
            x = x * float(down * down)  # block sums, like the all-ones stride-2 convolutions
    g = _convolve(x, variant, kernel, int(size), float(sigma))
    if down > 1:
        g = F.interpolate(g, size=(Hp, Wp), mode="bilinear", align_corners=(variant == "reference"))
    g = g[:, 0, :H, :W]
    if variant == "reference":
        w = (REFERENCE_EDGE_MULTIPLIER * g + beta).clamp(0.0, REFERENCE_MAX_WEIGHT)
    else:
        w = g + beta
    w = torch.where(valid, w, torch.zeros_like(w))
    return w if labels.dim() == 3 else w[0]


# ----------------------------------------------------------------------------- loss


class BoundaryAwareLoss(nn.Module):
    """BAL = sum(E_G * CE) / (number of labelled pixels); ignore pixels carry no loss.

    Options (config keys): ``variant`` paper | reference, ``kernel`` gaussian | linear,
    ``size`` (odd, taps at 1/down resolution), ``sigma`` (gaussian only), ``beta`` (weight
    far from boundaries), ``down`` 1 | 2 | 4. Defaults: the paper's best row of Table 1
    (gaussian, down 4, size 35, sigma 3.0, beta 0.5).
    """

    def __init__(self, variant: str = "paper", kernel: str = "gaussian", size: int = 35, sigma: float = 3.0,
                 beta: float = 0.5, down: int = 4, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        _check_options(variant, kernel, size, sigma, beta, down)
        self.variant, self.kernel, self.size = variant, kernel, int(size)
        self.sigma, self.beta, self.down = float(sigma), float(beta), int(down)
        self.ignore_index = ignore_index

    def extra_repr(self) -> str:
        return (f"variant={self.variant}, kernel={self.kernel}, size={self.size}, sigma={self.sigma}, "
                f"beta={self.beta}, down={self.down}")

    def weights(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return boundary_weight(labels, num_classes, kernel=self.kernel, size=self.size, sigma=self.sigma,
                               beta=self.beta, down=self.down, variant=self.variant,
                               ignore_index=self.ignore_index)

    def pixel_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """E_G * CE per pixel, [N, H, W] (0 at ignore pixels): the paper's loss image."""
        check_labels("bal", logits, labels, self.ignore_index)
        return self.weights(labels, logits.shape[1]) * pixel_cross_entropy(logits, labels, self.ignore_index)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = int((labels != self.ignore_index).sum())
        if n == 0:
            return zero_loss(logits)
        return self.pixel_losses(logits, labels).sum() / n
