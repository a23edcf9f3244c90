"""The evaluation protocols: how a model's prediction for a batch of val images is formed.

The field's protocols, as mmsegmentation defines them (``EncoderDecoder.whole_inference`` /
``slide_inference`` and ``SegTTAModel``), selected by the config's ``eval`` block:

* ``mode: whole`` (the default): one forward pass over the whole (padded) batch.
* ``mode: slide``: windows of ``crop`` = [h, w] pixels every ``stride`` = [h, w] pixels tile
  the image; per direction there are ``ceil(max(H - crop, 0) / stride) + 1`` windows, the last
  one moved back so that it ends at the image's edge (:func:`slide_windows`). A side shorter
  than the crop gets one window of the whole side (mmsegmentation decodes the small patch
  without padding). The logits of overlapping windows are summed and divided by the number
  of windows covering each pixel. Memory: one window batch (the B images' windows at one
  position, B x 3 x crop) goes through the model at a time; besides it the pass holds the
  B x C x H x W sum of logits and the H x W window count.
* test-time augmentation, ``scales`` (factors of the image's own size, e.g. [0.5, 0.75, 1.0,
  1.25, 1.5, 1.75]) x ``flip`` (horizontal, the flipped copy besides the unflipped one): each
  view is the batch resized by the factor (bilinear, half-pixel centres, no antialiasing:
  OpenCV's INTER_LINEAR, which mmsegmentation's Resize uses; sides ``int(side * s + 0.5)``)
  and padded with zeros on the bottom and right to the model's input multiple (as
  :func:`segbench.data.dataset.pad_collate`), predicted whole or slide, cropped, flipped
  back, resized back to the input size (bilinear, align_corners=False) and turned into
  softmax probabilities; the prediction is the argmax of the mean probability over the
  views (mmsegmentation's ``SegTTAModel.merge_preds`` averages softmax probabilities, not
  logits). Memory: besides one view's pass, the B x C x H x W sum of probabilities.

With one view (``scales == (1.0,)`` and no flip) no softmax is taken: the prediction is the
argmax of the logits, and ``mode: whole`` is exactly ``model(images).argmax(1)``.

The protocol applies to the batch it is given: evaluation gives it the padded batch of
:func:`segbench.data.dataset.pad_collate` (each image at the top left, zeros below and to the
right, sides rounded up to multiples of 32), so windows and resizing see that padded canvas
and the scores count each image's own pixels only. For a dataset of one image size (e.g.
Cityscapes) or ``eval.batch_size: 1`` this is mmsegmentation's per-image protocol up to the
padding to a multiple of 32; for batches of mixed sizes (ADE20K, VOC) the padding of the
larger images in the batch adds windows and context, as it adds context to whole inference.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from segbench.errors import UserError

MODES = ("whole", "slide")


def eval_protocol(mode: str = "whole", crop=None, stride=None, scales=(1.0,), flip: bool = False) -> dict:
    """Check a protocol given as the config's ``eval`` keys (``eval.mode``, ``eval.crop``,
    ``eval.stride``, ``eval.scales``, ``eval.flip``) and return it normalised, as metrics.json
    records it: ``{"mode", "crop": [h, w] | None, "stride": [h, w] | None, "scales": [...],
    "flip"}``. The keyword arguments of :func:`predict` are this dict's keys."""
    if mode not in MODES:
        raise UserError(f"eval.mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "slide":
        missing = [f"eval.{k}" for k, v in (("crop", crop), ("stride", stride)) if v is None]
        if missing:
            raise UserError(f"eval.mode slide needs {' and '.join(missing)}: the window size [height, width] "
                            "and the step between windows [height, width] in pixels, e.g. crop: [512, 512] and "
                            "stride: [341, 341]")
        crop, stride = _pair("eval.crop", crop), _pair("eval.stride", stride)
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise UserError(f"eval.stride {stride} is larger than eval.crop {crop}: the windows would leave "
                            "pixels uncovered; use a stride no larger than the crop")
    elif crop is not None or stride is not None:
        raise UserError(f"eval.crop and eval.stride (given: {crop}, {stride}) apply to eval.mode slide only, and "
                        "eval.mode is whole: set eval.mode: slide, or remove them")
    if isinstance(scales, (int, float)) or not scales:
        raise UserError(f"eval.scales must be a non-empty list of factors of the image size, e.g. [1.0] or "
                        f"[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], not {scales!r}")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 8 or not math.isfinite(s):
            raise UserError(f"eval.scales: {s!r} is not a factor in (0, 8]; give factors such as 0.5 or 1.25")
    scales = [float(s) for s in scales]
    if len(set(scales)) != len(scales):
        raise UserError(f"eval.scales {scales} lists a factor more than once: list each once")
    if not isinstance(flip, bool):
        raise UserError(f"eval.flip must be true or false, not {flip!r}")
    return {"mode": mode, "crop": crop, "stride": stride, "scales": scales, "flip": flip}


def _pair(key: str, value) -> list[int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise UserError(f"{key} must be two positive whole numbers [height, width] in pixels, not {value!r}")
    return [int(value[0]), int(value[1])]


def slide_windows(height: int, width: int, crop, stride) -> list[tuple[int, int, int, int]]:
    """The windows (y1, y2, x1, x2) (end exclusive) of slide inference on a height x width
    image, row by row: see the module docstring."""
    rows = _starts(height, crop[0], stride[0])
    cols = _starts(width, crop[1], stride[1])
    return [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]


def _starts(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """The [start, end) of the windows along one side."""
    n = math.ceil(max(size - crop, 0) / stride) + 1
    spans = []
    for k in range(n):
        end = min(k * stride + crop, size)
        spans.append((max(end - crop, 0), end))
    return spans


def predict(model: torch.nn.Module, images: torch.Tensor, *, num_classes: int, mode: str = "whole", crop=None,
            stride=None, scales=(1.0,), flip: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Class ids int64 [B, H, W] for the normalised batch ``images`` [B, 3, H, W] under the
    protocol (see the module docstring; the keywords are :func:`eval_protocol`'s, checked
    here). ``channels_last``: feed the model in that memory format (the run's training
    format). Call it under ``torch.inference_mode()``."""
    protocol = eval_protocol(mode, crop, stride, scales, flip)
    if protocol["mode"] == "whole" and protocol["scales"] == [1.0] and not protocol["flip"]:
        return model(images).argmax(1)  # today's evaluation, unchanged
    return class_scores(model, images, num_classes=num_classes, channels_last=channels_last,
                        **protocol).argmax(1)


def class_scores(model: torch.nn.Module, images: torch.Tensor, *, num_classes: int, mode: str = "whole",
                 crop=None, stride=None, scales=(1.0,), flip: bool = False,
                 channels_last: bool = False) -> torch.Tensor:
    """float [B, C, H, W]: the logits for one view (scales (1.0,), no flip), else the mean
    softmax probability over the views; :func:`predict` is its argmax."""
    protocol = eval_protocol(mode, crop, stride, scales, flip)
    if protocol["mode"] == "slide":
        _check_crop(model, protocol["crop"])
    views = [(s, f) for s in protocol["scales"] for f in ((False, True) if protocol["flip"] else (False,))]
    height, width = images.shape[-2:]
    total = None
    for scale, flipped in views:
        x = torch.flip(images, dims=[3]) if flipped else images
        logits = _at_scale(model, x, scale, protocol, num_classes, channels_last)
        if flipped:
            logits = torch.flip(logits, dims=[3])
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        if len(views) == 1:
            return logits
        probs = logits.softmax(dim=1)
        total = probs if total is None else total.add_(probs)
    return total.div_(len(views))


def _at_scale(model, images, scale: float, protocol: dict, num_classes: int, channels_last: bool) -> torch.Tensor:
    """Logits of ``images`` resized by ``scale``, at the resized size (before padding)."""
    height, width = images.shape[-2:]
    if scale != 1.0:
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    h, w = images.shape[-2:]
    m = _input_multiple(model)
    ph, pw = -(-h // m) * m, -(-w // m) * m
    if (ph, pw) != (h, w):
        images = F.pad(images, (0, pw - w, 0, ph - h))  # zeros: the normalised mean, as pad_collate pads
    if protocol["mode"] == "slide":
        logits = _slide(model, images, protocol["crop"], protocol["stride"], num_classes, channels_last)
    else:
        logits = _forward(model, images, num_classes, channels_last)
    return logits[:, :, :h, :w]


def _slide(model, images, crop, stride, num_classes: int, channels_last: bool) -> torch.Tensor:
    """Slide inference: the windows' logits summed, divided by the windows covering each pixel."""
    b, _, height, width = images.shape
    total = images.new_zeros((b, num_classes, height, width))
    count = images.new_zeros((1, 1, height, width))
    for y1, y2, x1, x2 in slide_windows(height, width, crop, stride):
        total[:, :, y1:y2, x1:x2] += _forward(model, images[:, :, y1:y2, x1:x2], num_classes, channels_last)
        count[:, :, y1:y2, x1:x2] += 1
    return total.div_(count)


def _forward(model, x: torch.Tensor, num_classes: int, channels_last: bool) -> torch.Tensor:
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    logits = model(x)
    if logits.shape[1] != num_classes or logits.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} for an input of shape "
                         f"{tuple(x.shape)}; expected {num_classes} classes at the input's size")
    return logits


def _input_multiple(model) -> int:
    from segbench.serve.inference import input_multiple

    return input_multiple(model)


def _check_crop(model, crop) -> None:
    m = _input_multiple(model)
    if crop[0] % m or crop[1] % m:
        raise UserError(f"eval.crop {crop} must be multiples of {m}, the side multiple this model's input needs: "
                        f"use e.g. [{max(m, crop[0] // m * m)}, {max(m, crop[1] // m * m)}]")
