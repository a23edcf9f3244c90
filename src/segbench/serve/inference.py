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

Cost (:meth:`Segmenter.admit`): what a request costs is what the model runs on, the *padded*
image. Before anything is decoded, the padded pixel count is checked against ``max_pixels``
and an estimate of the request's memory against ``max_memory_bytes``; either refusal is an
:class:`ImageRejected` with status 413 whose message gives the image size, the padded size,
the estimate and the limit. The estimate is ``SAFETY`` times the bytes per padded pixel that
:func:`calibrate` measured for this model at start-up (the rise of the process's peak RSS
over a forward pass at 256x256, after giving freed memory back to the system), plus
``REQUEST_BYTES_PER_PIXEL`` per image pixel for decoding and encoding; both constants are
checked by ``bench/bench_serve_memory.py``. An allocation that fails all the same is an
:class:`OutOfMemory` (status 503), and the server goes on serving.
"""

from __future__ import annotations

import ctypes
import io
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.nn import functional as F

from segbench.data.dataset import to_tensor
from segbench.errors import UserError

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 4096 * 2048  # 8.4 MP: a full Cityscapes frame (1024x2048) with room to spare
DEFAULT_MEMORY_FRACTION = 0.5     # default --max-memory: this share of the memory available at start-up
FALLBACK_MAX_MEMORY = 2 * 2**30   # ... when the available memory cannot be read (no /proc/meminfo)
SAFETY = 1.5                      # estimate = SAFETY x calibrated bytes per padded pixel x padded pixels + ...
REQUEST_BYTES_PER_PIXEL = 100     # ... this per image pixel: decoding (RGBA over white: float32), overlay, PNGs
CALIBRATION_SIZE = (256, 256)     # the forward pass measured at start-up (after a 64x64 warm-up)
FALLBACK_BYTES_PER_PIXEL = 2000   # when the peak RSS cannot be measured (not Linux): above every model measured


class ImageRejected(ValueError):
    """An upload that cannot be segmented; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class OutOfMemory(ImageRejected):
    """An allocation failed while serving a request (status 503); the server goes on serving."""

    def __init__(self, message: str):
        super().__init__(message, 503)


def is_out_of_memory(e: BaseException) -> bool:
    """A failed allocation: numpy's MemoryError, or torch's RuntimeError ("DefaultCPUAllocator:
    can't allocate memory: you tried to allocate N bytes")."""
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


# ------------------------------------------------------------------ memory figures
def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} bytes"


def parse_memory(text: str, option: str = "--max-memory") -> int:
    """``"2G"``, ``"1500M"``, ``"512MiB"``, ``"1.5GB"`` -> bytes (K, M, G, T: powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt])(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"{option} {text!r}: give a positive size with a unit, e.g. 512M or 2G "
                        "(K, M, G, T: powers of 1024)")
    return int(float(m.group(1)) * 1024 ** "kmgt".index(m.group(2).lower()) * 1024)


def available_memory() -> tuple[int | None, str]:
    """The bytes this process may still take, and where the figure comes from: the system's
    MemAvailable, or what is left under the cgroup's memory.max (a container's cap) if less."""
    available, source = None, ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available, source = int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    try:
        cap = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if cap != "max" and (available is None or int(cap) - used < available):
            available, source = max(int(cap) - used, 0), "the cgroup's memory.max less memory.current"
    except (OSError, ValueError):
        pass
    return available, source


def default_max_memory() -> tuple[int, str]:
    """The default --max-memory and how it was chosen."""
    available, source = available_memory()
    if available is None:
        return FALLBACK_MAX_MEMORY, f"{format_bytes(FALLBACK_MAX_MEMORY)}: the available memory cannot be read"
    return (int(available * DEFAULT_MEMORY_FRACTION),
            f"{DEFAULT_MEMORY_FRACTION:g} x {format_bytes(available)} available at start-up ({source})")


@dataclass
class Limits:
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1_000_000)
    max_pixels: int = DEFAULT_MAX_PIXELS   # of the image and of the padded image the model runs on
    max_memory_bytes: int | None = None    # one request's estimated memory; None: default_max_memory()
    memory_source: str = ""               # how the default was chosen; "" when given

    def __post_init__(self):
        if self.max_memory_bytes is None:
            self.max_memory_bytes, self.memory_source = default_max_memory()

    def describe(self) -> dict:
        return {"max_upload_bytes": self.max_upload_bytes, "max_upload_mb": self.max_upload_bytes / 1e6,
                "max_pixels": self.max_pixels, "max_memory_bytes": self.max_memory_bytes,
                "max_memory": format_bytes(self.max_memory_bytes),
                "max_memory_source": self.memory_source or "serve --max-memory"}


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


def decode_image(source: bytes | IO[bytes], max_pixels: int = DEFAULT_MAX_PIXELS,
                 admit: Callable[[int, int], None] | None = None) -> Decoded:
    """Decode an upload to 8-bit RGB or raise :class:`ImageRejected` with a message for the user.
    ``admit(height, width)``, called with the header's size before decoding, may refuse too."""
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
        if admit is not None:
            admit(h, w)
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


# ------------------------------------------------------------------ measuring a forward pass's memory
def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_rise(run: Callable[[], object]) -> int | None:
    """How far the process's resident memory rises above its level before ``run()``: VmHWM after
    minus VmRSS before, the peak reset first (Linux: /proc/self/clear_refs). None where that
    cannot be measured. Other threads' allocations count too: call it before serving."""
    release_free_memory()  # so that reused free pages are faulted in again and counted
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _status_bytes("VmRSS")
    except OSError:
        return None
    run()
    return max(_status_bytes("VmHWM") - before, 0)


def calibrate(predict: Callable[[np.ndarray], np.ndarray]) -> tuple[float, str]:
    """Bytes per padded pixel that ``predict`` takes (input tensor, padding, forward pass, logits,
    argmax), measured at CALIBRATION_SIZE after a warm-up (the first pass also initialises
    libraries), and how the figure was obtained."""
    rng = np.random.default_rng(0)
    predict(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    h, w = CALIBRATION_SIZE
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rises = [peak_rss_rise(lambda: predict(image)) for _ in range(2)]
    if None in rises:
        return float(FALLBACK_BYTES_PER_PIXEL), "fixed figure (peak RSS cannot be measured here)"
    return max(rises) / (h * w), f"measured at {w}x{h} (peak RSS rise of a forward pass)"


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
        # memory per padded pixel: from a forward pass at start-up, scaled linearly by pixels
        self.bytes_per_padded_pixel, self.calibration = calibrate(self.predict)
        metrics = self.run_dir / "metrics.json"
        self.metrics = None
        if metrics.exists():  # optional: a run served before its evaluation shows no scores
            from segbench.runfiles import read_metrics

            m = read_metrics(self.run_dir, self.record)
            # NaN is not JSON a browser parses: a metric without a value becomes null
            self.metrics = {k: (None if isinstance(m.get(k), float) and not math.isfinite(m[k]) else m.get(k))
                            for k in ("mIoU", "aAcc", "mDice", "input_size")}

    def info(self) -> dict:
        r = self.record
        return {"run_key": r.get("run_key"), "dataset": r.get("dataset"), "model": r.get("model"),
                "arch": r["config"]["model"].get("arch"), "loss": r.get("loss"), "seed": r.get("seed"),
                "num_classes": self.num_classes, "class_names": self.class_names,
                "palette": [list(c) for c in self.palette], "val_metrics": self.metrics,
                "pad_multiple": self.multiple,
                "memory_estimate": {"bytes_per_padded_pixel": self.bytes_per_padded_pixel,
                                    "safety_factor": SAFETY, "request_bytes_per_pixel": REQUEST_BYTES_PER_PIXEL,
                                    "calibration": self.calibration}}

    def estimate_bytes(self, h: int, w: int) -> int:
        """The memory a request for an h x w image is expected to take at most (see the module's doc)."""
        ph, pw = padded_size(h, w, self.multiple)
        return int(SAFETY * self.bytes_per_padded_pixel * ph * pw + REQUEST_BYTES_PER_PIXEL * h * w)

    def admit(self, h: int, w: int, limits: Limits) -> None:
        """Refuse (ImageRejected, 413) an h x w image whose padded size or estimated memory is over ``limits``."""
        ph, pw = padded_size(h, w, self.multiple)
        image = f"the image is {w}x{h} ({w * h:,} pixels); the model runs on it padded to {pw}x{ph} " \
                f"({pw * ph:,} pixels: sides padded to multiples of {self.multiple})"
        if ph * pw > limits.max_pixels:
            raise ImageRejected(f"{image}, over this server's limit of {limits.max_pixels:,} pixels (serve "
                                f"--max-pixels): crop or downscale it (a very narrow image costs as much as one "
                                f"{self.multiple} pixels wide), or start the server with a larger --max-pixels", 413)
        need = self.estimate_bytes(h, w)
        if need > limits.max_memory_bytes:
            scale = math.sqrt(limits.max_memory_bytes / need)
            if min(h, w) * scale >= self.multiple:
                fix = f"downscale it (to about {int(w * scale)}x{int(h * scale)})"
            else:  # a strip: downscaling barely helps, the padding dominates
                fix = f"crop it (a very narrow image costs as much as one {self.multiple} pixels wide)"
            default = f"; the default: {limits.memory_source}" if limits.memory_source else ""
            raise ImageRejected(f"{image}, which needs an estimated {format_bytes(need)} of memory, over this "
                                f"server's limit of {format_bytes(limits.max_memory_bytes)} per request (serve "
                                f"--max-memory{default}): {fix}, or start the server with a larger --max-memory",
                                413)

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
        try:
            mask = self.predict(rgb)
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            h, w = rgb.shape[:2]
            ph, pw = padded_size(h, w, self.multiple)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OutOfMemory(f"the server ran out of memory segmenting this {w}x{h} image (padded to {pw}x{ph}, "
                              f"estimated {format_bytes(self.estimate_bytes(h, w))}; {first}); it goes on "
                              "serving: send a smaller image, or lower the server's --max-memory so that such "
                              "images are refused up front") from e
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
