"""Decoding an uploaded image and segmenting it with a trained run (no web code here).

Decoding (:func:`decode_image`) accepts what Pillow reads among PNG, JPEG, WebP, BMP, TIFF
and GIF, checks the pixel count from the header *before* decoding, and brings every mode
to 8-bit RGB, saying in ``notes`` what it changed:

- RGB, YCbCr, CMYK, 1-bit and palette images: converted to RGB as Pillow does;
- RGBA, LA and palette images with transparency: composited over white (what a browser
  shows on a white page), the alpha channel then dropped;
- greyscale (L): the grey value copied to R, G and B;
- 16-bit greyscale (I;16*, and I with values in 0..65535): scaled to 8 bits (value / 257);
  16-bit RGB(A) PNGs: Pillow reads them as 8 bits per channel (the high byte);
- 32-bit float (F) or signed/out-of-range 32-bit integer images: refused;
- the EXIF orientation is applied, so the mask lines up with what a browser shows;
- animated GIF/TIFF/WebP/APNG: the first frame.

Inference (:class:`Segmenter`) normalises as training did (:func:`segbench.data.dataset.to_tensor`),
pads the image on the bottom and right by edge replication to the next multiple of the
model's stride (32, or ``2**depth`` for U-Nets deeper than 5; see :func:`input_multiple`),
and crops the logits back: the image is never resized, so the mask has the upload's exact
size and its pixels match the input's one to one.
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.nn import functional as F

from segbench.data.dataset import to_tensor

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 4096 * 2048  # 8.4 MP: a full Cityscapes frame (1024x2048) with room to spare


class ImageRejected(ValueError):
    """An upload that cannot be segmented; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1_000_000)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def describe(self) -> dict:
        return {"max_upload_bytes": self.max_upload_bytes, "max_upload_mb": self.max_upload_bytes / 1e6,
                "max_pixels": self.max_pixels}


@dataclass
class Decoded:
    rgb: np.ndarray  # uint8 [H, W, 3]
    format: str
    mode: str
    notes: list[str] = field(default_factory=list)


def _png_bit_depth(head: bytes) -> int | None:
    # IHDR is the first chunk: 8-byte signature, 4 length, 4 type, 4 width, 4 height, 1 bit depth
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) > 24:
        return head[24]
    return None


def _over_white(im: Image.Image) -> np.ndarray:
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def decode_image(source: bytes | IO[bytes], max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode an upload to 8-bit RGB or raise :class:`ImageRejected` with a message for the user."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    stream.seek(0)
    head = stream.read(32)
    stream.seek(0)
    if not head:
        raise ImageRejected("the upload is empty: choose an image file (PNG, JPEG, WebP, BMP, TIFF or GIF)", 400)
    try:
        im = Image.open(stream, formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected("the upload is not an image this server reads: send a PNG, JPEG, WebP, BMP, TIFF "
                            "or GIF file", 415) from None
    except Image.DecompressionBombError as e:
        raise ImageRejected(f"the image is too large: {e}", 413) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageRejected(f"the image's header cannot be read ({e}); the file may be damaged: send the complete "
                            "file again, or another image", 400) from None
    with im:
        w, h = im.size
        if w < 1 or h < 1:
            raise ImageRejected(f"the image is {w}x{h} pixels: it has no pixels", 400)
        if w * h > max_pixels:
            raise ImageRejected(f"the image is {w}x{h} = {w * h:,} pixels; this server accepts at most "
                                f"{max_pixels:,} pixels (serve --max-pixels): downscale it and try again", 413)
        fmt, mode, notes = im.format or "?", im.mode, []
        try:
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"{fmt} with {im.n_frames} frames: the first frame is segmented")
            im.load()
            if fmt == "PNG" and _png_bit_depth(head) == 16 and mode in ("RGB", "RGBA"):
                notes.append("16-bit PNG: reduced to 8 bits per channel")
            orientation = im.getexif().get(0x0112, 1)
            if orientation in (2, 3, 4, 5, 6, 7, 8):
                im = ImageOps.exif_transpose(im)
                notes.append(f"EXIF orientation {orientation} applied")
            rgb = _to_rgb(im, mode, notes)
        except ImageRejected:
            raise
        except Image.DecompressionBombError as e:
            raise ImageRejected(f"the image is too large: {e}", 413) from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ImageRejected(f"the {fmt} image cannot be decoded ({e}); the file may be truncated or damaged: "
                                "send the complete file again, or another image", 400) from None
    return Decoded(np.ascontiguousarray(rgb), fmt, mode, notes)


def _to_rgb(im: Image.Image, mode: str, notes: list[str]) -> np.ndarray:
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        notes.append(f"{mode} image with transparency: composited over white, alpha dropped")
        return _over_white(im)
    if mode == "L":
        notes.append("greyscale image: grey copied to R, G and B")
        return np.repeat(np.asarray(im)[..., None], 3, axis=2)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageRejected(f"{mode} image with values {values.min()}..{values.max()}: only 8- and 16-bit "
                                "images are supported; save it as an 8-bit or 16-bit PNG", 415)
        notes.append(f"16-bit greyscale image ({mode}): scaled to 8 bits (value / 257), grey copied to R, G and B")
        grey = np.round(values / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        raise ImageRejected("32-bit floating-point image (mode F): its value range is unknown; save it as an "
                            "8-bit or 16-bit PNG", 415)
    try:
        out = np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ImageRejected(f"images of mode {mode} are not supported ({e}); save it as an RGB PNG or JPEG",
                            415) from None
    if mode != "P":
        notes.append(f"{mode} image converted to RGB")
    return out


def input_multiple(model: torch.nn.Module) -> int:
    """The stride the model's input sides must be multiples of: the model's own
    ``input_multiple`` if it declares one, ``2**depth`` for a U-Net deeper than 5, else 32
    (what every model of the registry checks with :func:`segbench.models.common.check_input`)."""
    from segbench.models.unet import UNet

    declared = getattr(model, "input_multiple", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    if isinstance(model, UNet):
        return max(32, 2 ** int(model.depth))
    return 32


def padded_size(h: int, w: int, multiple: int) -> tuple[int, int]:
    return math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple


class Segmenter:
    """A trained run, ready to segment RGB images. Thread-safe: one forward pass at a time."""

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        from segbench.engine.evaluate import load_trained  # torch.load(weights_only=True)

        self.run_dir = Path(run_dir)
        self.model, self.record = load_trained(self.run_dir, device)
        self.device = torch.device(device)
        self.num_classes = int(self.record["num_classes"])
        if self.num_classes > 256:
            raise ValueError(f"{self.run_dir}: {self.num_classes} classes do not fit the 8-bit mask PNG (at most 256)")
        names = list(self.record.get("class_names") or [])
        self.class_names = names + [f"class {i}" for i in range(len(names), self.num_classes)]
        palette = [tuple(int(v) for v in c) for c in (self.record.get("palette") or [])]
        rng = np.random.default_rng(0)  # colours for classes the run does not give one (never in practice)
        palette += [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(len(palette), self.num_classes)]
        self.palette = palette[: self.num_classes]
        self.multiple = input_multiple(self.model)
        self._lock = threading.Lock()
        metrics = self.run_dir / "metrics.json"
        self.metrics = None
        if metrics.exists():
            from segbench.io import read_json

            m = read_json(metrics)
            # NaN is not JSON a browser parses: a metric without a value becomes null
            self.metrics = {k: (None if isinstance(m.get(k), float) and not math.isfinite(m[k]) else m.get(k))
                            for k in ("mIoU", "aAcc", "mDice", "input_size")}

    def info(self) -> dict:
        r = self.record
        return {"run_key": r.get("run_key"), "dataset": r.get("dataset"), "model": r.get("model"),
                "arch": r["config"]["model"].get("arch"), "loss": r.get("loss"), "seed": r.get("seed"),
                "num_classes": self.num_classes, "class_names": self.class_names,
                "palette": [list(c) for c in self.palette], "val_metrics": self.metrics,
                "pad_multiple": self.multiple}

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> uint8 [H, W] class ids (argmax of the logits)."""
        h, w = rgb.shape[:2]
        x = to_tensor(rgb).unsqueeze(0).to(self.device)
        ph, pw = padded_size(h, w, self.multiple)
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
        with self._lock:
            logits = self.model(x)
        return logits[0, :, :h, :w].argmax(0).to(torch.uint8).cpu().numpy()

    def shares(self, mask: np.ndarray) -> list[dict]:
        counts = np.bincount(mask.ravel(), minlength=self.num_classes)[: self.num_classes]
        total = max(int(mask.size), 1)
        return [{"id": i, "name": self.class_names[i], "color": list(self.palette[i]), "pixels": int(n),
                 "share": int(n) / total} for i, n in enumerate(counts)]

    def segment(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        mask = self.predict(rgb)
        return mask, time.perf_counter() - t0


# ------------------------------------------------------------------ PNG encoding
def mask_png(mask: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    """A palettised PNG: pixel values are the class ids, the palette the class colours."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    flat = [v for c in palette for v in c]
    im.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def color_mask(mask: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    return lut[mask]


def overlay(rgb: np.ndarray, mask: np.ndarray, palette: list[tuple[int, int, int]], alpha: float = 0.5) -> np.ndarray:
    colors = color_mask(mask, palette).astype(np.float32)
    return np.round(rgb.astype(np.float32) * (1 - alpha) + colors * alpha).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", compress_level=3)
    return buf.getvalue()
