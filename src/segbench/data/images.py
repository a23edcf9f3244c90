"""Checking and reading the input images of a dataset (no torch here).

What segbench does with an image file, by kind (``tests/test_bad_input.py`` holds one case of
each):

* 8-bit RGB (PNG, JPEG, ...): read as it is.
* greyscale (L), grey + alpha (LA), RGBA, palette (P), CMYK, 1-bit: converted to RGB when
  read (grey copied to R, G and B; the alpha channel dropped; palette indices looked up), with
  a note: ``prepare`` prints one warning per kind, training one line per kind and process.
* 16-bit (a 16-bit PNG, grey or colour; modes I;16, I, F): refused. Pillow would clip a
  16-bit grey image to white and keep only the high byte of a 16-bit colour one; segbench
  does not guess how the values should be scaled, the message says how to convert the file.
* an empty file, a file Pillow cannot identify, a truncated or corrupt file: refused, the
  message names the file. A corrupt sample never becomes a black (or any other) image:
  Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off and every decoding error is an error.

:func:`check_image` is what ``prepare`` runs on every image, cheaper than decoding it:
a PNG's chunks and checksums are read (``Image.verify``) without inflating the pixels, a
JPEG is decoded at 1/8 scale (libjpeg still reads the whole entropy-coded stream, so a
truncated file is noticed), anything else is decoded. :func:`read_rgb` is what training and
evaluation read an image with.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageProblem", "SIXTEEN_BIT_HINT", "check_image", "read_rgb", "conversion_note", "png_bit_depth"]

#: modes holding more than 8 bits per sample
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
SIXTEEN_BIT_HINT = (
    "segbench reads 8-bit images and does not guess how to scale these values: convert the file to 8-bit "
    "RGB (e.g. ImageMagick `convert FILE -depth 8 FILE`, or Pillow), or remove it, then run `segbench prepare` again"
)
_CORRUPT_HINT = "re-extract the dataset's archives (or replace or remove the file), then run `segbench prepare` again"
_NOTES = {
    "L": "greyscale (mode L): converted to RGB when read (grey copied to R, G and B)",
    "LA": "grey + alpha (mode LA): converted to RGB when read (grey copied to R, G and B, alpha dropped)",
    "RGBA": "RGBA: converted to RGB when read (the alpha channel is dropped)",
    "RGBa": "RGBA: converted to RGB when read (the alpha channel is dropped)",
    "P": "palette (mode P): converted to RGB when read through its palette",
    "PA": "palette + alpha (mode PA): converted to RGB when read through its palette, alpha dropped",
    "CMYK": "CMYK: converted to RGB when read, as Pillow converts it",
    "YCbCr": "YCbCr: converted to RGB when read",
    "LAB": "Lab: converted to RGB when read",
    "HSV": "HSV: converted to RGB when read",
    "1": "1-bit (mode 1): converted to RGB when read (black and white)",
}


class ImageProblem(Exception):
    """An image file segbench refuses; the message says why and what to do (callers add the path)."""


def png_bit_depth(path: str | os.PathLike[str]) -> int | None:
    """The bit depth in a PNG's IHDR chunk, or None if ``path`` is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(25)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) == 25:
        return head[24]
    return None


def conversion_note(mode: str) -> str | None:
    """What reading an image of ``mode`` as RGB changes, or None for RGB."""
    if mode == "RGB":
        return None
    return _NOTES.get(mode, f"mode {mode}: converted to RGB when read")


def _wide(path: Path, im: Image.Image) -> str | None:
    if im.mode in _WIDE_MODES:
        kind = "32-bit float" if im.mode == "F" else "32-bit integer" if im.mode == "I" else "16-bit greyscale"
        return f"{kind} image (mode {im.mode}); {SIXTEEN_BIT_HINT}"
    if im.format == "PNG" and png_bit_depth(path) == 16:
        return f"16-bit {im.mode} PNG; {SIXTEEN_BIT_HINT}"
    return None


def _open(path: Path) -> Image.Image:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageProblem(f"file not found; {_CORRUPT_HINT}") from None
    if size == 0:
        raise ImageProblem(f"empty file (0 bytes), an incomplete copy; {_CORRUPT_HINT}")
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise ImageProblem(f"not an image file Pillow can read (unknown or damaged header); {_CORRUPT_HINT}") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageProblem(f"cannot read the image's header ({e.__class__.__name__}: {e}); {_CORRUPT_HINT}") from None
    w, h = im.size
    if w < 1 or h < 1:
        im.close()
        raise ImageProblem(f"image of {w}x{h} pixels, it has no pixels; {_CORRUPT_HINT}")
    return im


def _damaged(e: BaseException) -> ImageProblem:
    return ImageProblem(f"truncated or corrupt image data ({e.__class__.__name__}: {e}); {_CORRUPT_HINT}")


def check_image(path: str | os.PathLike[str]) -> tuple[tuple[int, int], str | None]:
    """(width, height) and the conversion note (None for RGB) of an image ``prepare`` may use.

    Raises :class:`ImageProblem` for an empty, unreadable, truncated, corrupt or 16-bit file.
    """
    path = Path(path)
    im = _open(path)
    with im:
        size, mode, fmt = im.size, im.mode, im.format
        wide = _wide(path, im)
        if wide:
            raise ImageProblem(wide)
        try:
            if fmt == "PNG":
                im.verify()  # every chunk and its CRC, IEND present; the pixels are not inflated
            elif fmt == "JPEG":
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()
            else:
                im.load()
        except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError ...
            raise _damaged(e) from None
    return size, conversion_note(mode)


def read_rgb(path: str | os.PathLike[str]) -> tuple[np.ndarray, str | None]:
    """The image as uint8 [H, W, 3] and the conversion note (None for RGB).

    Raises :class:`ImageProblem` as :func:`check_image`; nothing is ever filled in for
    pixels that cannot be decoded.
    """
    path = Path(path)
    im = _open(path)
    with im:
        wide = _wide(path, im)
        if wide:
            raise ImageProblem(wide)
        mode = im.mode
        try:
            im.load()
            rgb = np.asarray(im if mode == "RGB" else im.convert("RGB"))
        except Exception as e:  # noqa: BLE001
            raise _damaged(e) from None
    return rgb, conversion_note(mode)


PREPARE_AGAIN = "run `segbench prepare` again (or delete results/data/DATASET/ and rerun snakemake)"


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A prepared label (single-channel uint8 PNG of train ids); DataError naming the file."""
    from segbench.data import DataError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DataError(f"label {path} has mode {im.mode}; expected a single-channel uint8 PNG of train "
                                f"ids as `segbench prepare` writes them: {PREPARE_AGAIN}")
            im.load()
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot read label {path} ({e.__class__.__name__}: {e}); the prepared labels are damaged "
                        f"or incomplete: {PREPARE_AGAIN}") from None
