"""Figures of the losses, as the PAC/BAL paper draws them.

- :func:`weight_map_figure`: the boundary weight map E_G over an image (the paper's
  Figure 5): image, ground truth, and E_G as a heat map blended over the image.
- :func:`pixel_loss_figure`: per-pixel loss images (the paper's Figure 4): image, ground
  truth, then one panel per loss (e.g. CE and E_G x CE), each with its colour bar (or one
  shared scale); ignore pixels (no loss) in grey.
- :func:`loss_figures_from_logits`: both, from a model's logits for one image.

The plotting functions take numpy arrays and import no torch (bare ``Figure``, Agg canvas,
atomic PNG writes, like :mod:`segbench.report.figures`); only the last one imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

from segbench.report.figures import _RC, _figure, _lut, _save

IGNORE_INDEX = 255


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _check(image: np.ndarray, labels: np.ndarray, maps: Mapping[str, np.ndarray]) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got {image.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the image {image.shape[:2]}")
    for name, m in maps.items():
        if m.shape != labels.shape:
            raise ValueError(f"map '{name}' has shape {m.shape}, the labels {labels.shape}")


def _n_classes(labels: np.ndarray, palette) -> int:
    if palette is not None and len(palette):
        return len(palette)
    return int(labels[labels != IGNORE_INDEX].max(initial=0)) + 1


def weight_map_figure(image: np.ndarray, labels: np.ndarray, weights: np.ndarray, path: str | os.PathLike,
                      *, palette: Sequence[Sequence[int]] | None = None, title: str | None = None,
                      alpha: float = 0.75) -> Path:
    """Image | ground truth | E_G over the image (colour bar in weight units)."""
    image, labels, weights = np.asarray(image), np.asarray(labels), np.asarray(weights, dtype=np.float64)
    _check(image, labels, {"E_G": weights})
    lut = _lut(palette, _n_classes(labels, palette))
    h, w = labels.shape
    cell_w = 3.2
    with matplotlib.rc_context(_RC):
        fig = _figure(3 * cell_w + 0.8, cell_w * h / w + 0.6 + (0.3 if title else 0))
        axes = fig.subplots(1, 3)
        axes[0].imshow(image)
        axes[0].set_title("image")
        axes[1].imshow(lut[labels], interpolation="nearest")
        axes[1].set_title("ground truth (ignore: black)")
        grey = image.astype(np.float64).mean(axis=2) / 255.0
        axes[2].imshow(grey, cmap="gray", vmin=0, vmax=1)
        shown = np.ma.masked_where(labels == IGNORE_INDEX, weights)
        im = axes[2].imshow(shown, cmap="magma", alpha=alpha, interpolation="bilinear",
                            vmin=float(np.nanmin(weights[labels != IGNORE_INDEX], initial=0.0)),
                            vmax=float(np.nanmax(weights, initial=1.0)))
        axes[2].set_title("boundary weight $E_G$")
        for ax in axes:
            _bare(ax)
        fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.02)
        if title:
            fig.suptitle(title)
        return _save(fig, path)


def pixel_loss_figure(image: np.ndarray, labels: np.ndarray, losses: Mapping[str, np.ndarray],
                      path: str | os.PathLike, *, palette: Sequence[Sequence[int]] | None = None,
                      title: str | None = None, shared_scale: bool = False) -> Path:
    """Image | ground truth | one panel per per-pixel loss map (ignore pixels grey).

    Each map has its own colour bar (``shared_scale``: one for all), topped at the 99.5th
    percentile of its labelled pixels (a few confident mistakes would otherwise wash the
    scale out); the panel title gives the map's mean.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    losses = {k: np.asarray(v, dtype=np.float64) for k, v in losses.items()}
    if not losses:
        raise ValueError("pixel_loss_figure: give at least one loss map")
    _check(image, labels, losses)
    valid = labels != IGNORE_INDEX

    def top(maps) -> float:
        vals = np.concatenate([m[valid] for m in maps]) if valid.any() else np.zeros(1)
        return float(np.percentile(vals, 99.5)) or 1.0

    shared = top(losses.values()) if shared_scale else None
    lut = _lut(palette, _n_classes(labels, palette))
    h, w = labels.shape
    n = 2 + len(losses)
    cell_w = min(3.2, 16.0 / n)
    cmap = matplotlib.colormaps["inferno"].with_extremes(bad="0.6")
    with matplotlib.rc_context(_RC):
        fig = _figure(n * cell_w + 0.6 * len(losses), cell_w * h / w + 0.7 + (0.3 if title else 0))
        axes = fig.subplots(1, n)
        axes[0].imshow(image)
        axes[0].set_title("image")
        axes[1].imshow(lut[labels], interpolation="nearest")
        axes[1].set_title("ground truth")
        for ax, (name, m) in zip(axes[2:], losses.items()):
            im = ax.imshow(np.ma.masked_where(~valid, m), cmap=cmap, vmin=0.0, vmax=shared or top([m]),
                           interpolation="nearest")
            mean = float(m[valid].mean()) if valid.any() else 0.0
            ax.set_title(f"{name}\nmean {mean:.3g}")
            if not shared_scale:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        for ax in axes:
            _bare(ax)
        if shared_scale:
            fig.colorbar(im, ax=list(axes[2:]), fraction=0.03, pad=0.02, label="loss per pixel")
        if title:
            fig.suptitle(title)
        return _save(fig, path)


def loss_figures_from_logits(image: np.ndarray, labels: np.ndarray, logits, out_dir: str | os.PathLike,
                             bal_spec: Mapping | None = None, *, palette=None, prefix: str = "") -> list[Path]:
    """Both figures for one image: ``{prefix}bal_weight.png`` and ``{prefix}pixel_loss.png``.

    ``logits``: a torch tensor or array [C, H, W] (or [1, C, H, W]); ``bal_spec``: the BAL
    options (config keys; default: the paper's best row).
    """
    import torch

    from segbench.losses.bal import BoundaryAwareLoss
    from segbench.losses.common import pixel_cross_entropy

    spec = {k: v for k, v in dict(bal_spec or {}).items() if k not in ("type", "name")}
    bal = BoundaryAwareLoss(**spec)
    lg = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).float()
    if lg.dim() == 3:
        lg = lg.unsqueeze(0)
    lab = torch.as_tensor(np.asarray(labels).astype(np.int64)).unsqueeze(0)
    with torch.no_grad():
        weights = bal.weights(lab, lg.shape[1])[0].numpy()
        ce = pixel_cross_entropy(lg, lab, bal.ignore_index)[0].numpy()
    out = Path(out_dir)
    desc = f"{bal.variant}, {bal.kernel}, size {bal.size}" + (f", sigma {bal.sigma:g}" if bal.kernel == "gaussian" else "") \
        + f", beta {bal.beta:g}, down {bal.down}"
    return [
        weight_map_figure(image, labels, weights, out / f"{prefix}bal_weight.png", palette=palette,
                          title=f"BAL weight map ({desc})"),
        pixel_loss_figure(image, labels, {"cross-entropy": ce, "BAL: $E_G$ x CE": weights * ce},
                          out / f"{prefix}pixel_loss.png", palette=palette, title="per-pixel loss (grey: ignore pixels, no loss)"),
    ]
