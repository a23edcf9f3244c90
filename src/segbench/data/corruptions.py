"""Corrupted copies of images for the robustness evaluation (``eval.corruptions``).

Eight corruptions at five severities, in the spirit of Hendrycks & Dietterich's ImageNet-C
(ICLR 2019): the same five increasing levels for every corruption, severity 1 mild and 5
severe. The table of parameters is :data:`PARAMETERS` (recorded in every robustness.json) and
docs/robustness.md; the figure docs/img/corruptions.png shows them.

Conventions
-----------
* Images are uint8 RGB [H, W, 3]; the output has the same shape and dtype. Labels are not
  touched: every corruption is photometric (no pixel moves to another place).
* Deterministic: :func:`corrupt` is a function of (image, name, severity, key). Every random
  draw (noise, rain streaks, snowflakes, the fog field, the blur angle) comes from a generator
  seeded by :func:`seed_of` (SHA-256 of ``"name/key"``; ``key`` is the image's file name),
  never from a global random state, so a rerun, another process, another machine or another
  order of images gives the same pixels (with the pinned numpy, OpenCV and albumentations of
  envs/requirements.txt). The severities of one image share their draws and differ only in
  strength.
* Sizes scale with the image: the motion-blur length and the snowflake size are fractions of
  the shorter side (snow keeps the share of the image its flakes cover), the fog field has 4
  and 8 cells over the height, and albumentations' rain sets its streak count and length
  from the height. A corruption thus looks alike on the 128x256 synthetic scenes and on
  1024x2048 Cityscapes frames. On images below about 100 pixels, where a blur of 3 pixels is
  the shortest, the first motion-blur severities can coincide.
* Rain and motion blur are albumentations 2.0 transforms (RandomRain, MotionBlur), applied
  with probability 1 and fixed parameters, their generators reseeded per call
  (``set_random_seed``). Snow and fog are our own few lines of numpy and OpenCV:
  albumentations 2.0.8's RandomSnow ``texture`` adds its snow layer to the hue channel and
  wraps around above 255 (black and pink patches from snow_point 0.3), its ``bleach`` is
  not snow, and its RandomFog barely shows on dark street scenes while costing one
  full-image blend per fog patch. Gaussian noise, brightness, contrast and JPEG are a line
  of numpy or OpenCV each. Every formula: :data:`DESCRIPTIONS`.
* Importing this module is light (numpy, no OpenCV or albumentations until an image is
  corrupted), so the command line and the config check can read :data:`CORRUPTIONS` and
  :data:`SEVERITIES` from here.
"""

from __future__ import annotations

import hashlib
import numbers
import os

import numpy as np

from segbench.errors import UserError

#: the grey level of fog (its airlight)
AIRLIGHT = 220.0
#: the corruptions, in the order of robustness.json and corrupted_iou_per_image.npy
CORRUPTIONS = ("rain", "snow", "fog", "gaussian_noise", "motion_blur", "brightness", "contrast", "jpeg")
#: the severities, 1 (mild) to 5 (severe)
SEVERITIES = (1, 2, 3, 4, 5)

#: name -> what its parameters mean (units) and how it is made; printed in docs/robustness.md
DESCRIPTIONS = {
    "rain": "albumentations RandomRain: `rain_type` sets the number of streaks (drizzle H/4, default H/3, "
            "heavy H, torrential 2H for an image H pixels high), each H/8 long, `drop_width` pixels wide, "
            "their lower end shifted sideways by a random offset in +-`slant` pixels, box-blurred over `blur` "
            "pixels; the image is then multiplied by `brightness`. Streaks cover the same share of any image of "
            "one aspect ratio (count and length grow with H); width, slant and blur stay in pixels, so streaks "
            "are thinner and steeper on larger images (albumentations caps the slant at 45)",
    "snow": "own: the image is whitened, x' = (1 - `whiten`) x + `whiten` max(x, 1.5 grey + 128), then "
            "snowflakes are screen-blended on it: Gaussian spots of s.d. `flake` x the shorter side (at least "
            "0.7 px), centred on random pixels with probability `cover` / (2 pi s.d.^2), so that the flakes' "
            "total mass covers a fraction `cover` of the image whatever its size",
    "fog": "own (the atmospheric-scattering model I = J (1 - d) + A d with airlight A = 220 grey levels): the "
           "fog density d = `density` x (1 + `spread` (2 f - 1)), f a smooth random field in [0, 1] (two "
           "octaves of bicubic-upsampled uniform noise, 4 and 8 cells over the height)",
    "gaussian_noise": "x + N(0, `sigma`) per pixel and channel, `sigma` in grey levels (0-255), rounded and "
                      "clipped to [0, 255]",
    "motion_blur": "albumentations MotionBlur: a straight line kernel `length` x the image's shorter side long "
                   "(rounded to an odd pixel count >= 3), at a random angle, centred",
    "brightness": "x + 255 `delta` on every channel, rounded and clipped to [0, 255]",
    "contrast": "(x - m) `factor` + m, m the image's mean per channel, rounded and clipped to [0, 255]",
    "jpeg": "encoded and decoded with OpenCV's JPEG (libjpeg) at `quality` (0-100), 4:2:0 chroma",
}

#: name -> {severity (str): parameters}; JSON-serialisable (robustness.json records it)
PARAMETERS: dict[str, dict[str, dict]] = {
    "rain": {
        "1": {"rain_type": "drizzle", "drop_width": 1, "blur": 3, "brightness": 0.9, "slant": 10},
        "2": {"rain_type": "default", "drop_width": 1, "blur": 3, "brightness": 0.85, "slant": 10},
        "3": {"rain_type": "heavy", "drop_width": 1, "blur": 3, "brightness": 0.8, "slant": 10},
        "4": {"rain_type": "heavy", "drop_width": 1, "blur": 5, "brightness": 0.7, "slant": 15},
        "5": {"rain_type": "torrential", "drop_width": 1, "blur": 5, "brightness": 0.6, "slant": 20},
    },
    "snow": {str(s): {"whiten": w, "cover": c, "flake": f} for s, w, c, f in zip(
        SEVERITIES, (0.1, 0.2, 0.3, 0.4, 0.5), (0.015, 0.03, 0.05, 0.09, 0.15), (0.004, 0.005, 0.006, 0.007, 0.008))},
    "fog": {str(s): {"density": d, "spread": 0.4} for s, d in zip(SEVERITIES, (0.25, 0.4, 0.55, 0.7, 0.8))},
    "gaussian_noise": {str(s): {"sigma": v} for s, v in zip(SEVERITIES, (8.0, 16.0, 24.0, 36.0, 52.0))},
    "motion_blur": {str(s): {"length": v} for s, v in zip(SEVERITIES, (0.03, 0.05, 0.07, 0.09, 0.12))},
    "brightness": {str(s): {"delta": v} for s, v in zip(SEVERITIES, (0.1, 0.2, 0.3, 0.4, 0.5))},
    "contrast": {str(s): {"factor": v} for s, v in zip(SEVERITIES, (0.6, 0.45, 0.3, 0.2, 0.1))},
    "jpeg": {str(s): {"quality": q} for s, q in zip(SEVERITIES, (25, 18, 15, 10, 7))},
}


def check(name: str, severity: int) -> None:
    """Raise a :class:`~segbench.errors.UserError` naming a corruption or severity that does not exist."""
    if name not in CORRUPTIONS:
        raise UserError(f"unknown corruption {name!r}: choose from {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or severity not in SEVERITIES:
        raise UserError(f"corruption severity {severity!r} does not exist: choose from "
                        f"{', '.join(map(str, SEVERITIES))}")


def seed_of(name: str, key: str) -> int:
    """The seed of every random draw of one corrupted image: the first 8 bytes of
    SHA-256(``"name/key"``) as an integer (the same on every machine and run). The severity
    is not part of it: an image's severities share their draws (the same noise pattern, fog
    field, flake positions, blur angle) and differ only in strength."""
    digest = hashlib.sha256(f"{name}/{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def corrupt(image: np.ndarray, name: str, severity: int, key: str) -> np.ndarray:
    """``image`` (uint8 [H, W, 3] RGB) under corruption ``name`` at ``severity`` (1-5), as a
    new uint8 [H, W, 3] array; deterministic in (image, name, severity, key), where ``key``
    (the image's file name) seeds the random draws (:func:`seed_of`)."""
    check(name, severity)
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"corrupt takes a uint8 RGB image [H, W, 3], not {getattr(image, 'dtype', type(image))} "
                         f"{getattr(image, 'shape', '')}")
    p = PARAMETERS[name][str(int(severity))]
    seed = seed_of(name, key)
    image = np.ascontiguousarray(image)
    if name == "gaussian_noise":
        noise = np.random.default_rng(seed).standard_normal(image.shape, dtype=np.float32)
        return _to_uint8(image + np.float32(p["sigma"]) * noise)
    if name == "brightness":
        return _per_channel_table(image, [255.0 * p["delta"]] * 3, 1.0)
    if name == "contrast":
        return contrast(image, p["factor"])
    if name == "jpeg":
        return jpeg(image, p["quality"])
    if name == "snow":
        return snow(image, p, np.random.default_rng(seed))
    if name == "fog":
        return fog(image, p, np.random.default_rng(seed))
    transform = _albumentation(name, p, image.shape)
    transform.set_random_seed(seed)
    out = transform(image=image)["image"]
    return np.ascontiguousarray(out, dtype=np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (uint8 RGB) after a JPEG round trip at ``quality`` (OpenCV, 4:2:0)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """(x - m) ``factor`` + m about each channel's mean m, rounded and clipped (uint8 RGB in and out)."""
    import cv2

    mean = np.array(cv2.mean(image)[:3])  # per channel, float64
    return _per_channel_table(image, mean * (1 - factor), factor)


def snow(image: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Whitening plus screen-blended Gaussian snowflakes (parameters: :data:`DESCRIPTIONS`)."""
    import cv2

    h, w = image.shape[:2]
    x = image.astype(np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = (1 - p["whiten"]) * x + p["whiten"] * np.maximum(x, 1.5 * grey + 128)
    sigma = max(0.7, p["flake"] * min(h, w))
    mass = 2 * np.pi * sigma**2  # a flake of peak 1 has this mass (pixels)
    centres = (rng.random((h, w), dtype=np.float32) < p["cover"] / mass).astype(np.float32)
    # a unit impulse blurred by a Gaussian peaks at 1 / mass: scale single flakes to 1
    flakes = np.minimum(cv2.GaussianBlur(centres, (0, 0), sigma) * mass, 1.0)
    x = x + flakes[..., None] * (255 - np.minimum(x, 255))
    return _to_uint8(x)


def fog(image: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """I = J (1 - d) + A d over a smooth random density field (parameters: :data:`DESCRIPTIONS`)."""
    import cv2

    h, w = image.shape[:2]
    field = np.zeros((h, w), np.float32)
    for cells, weight in ((4, 0.6), (8, 0.4)):
        coarse = rng.random((cells, max(1, round(cells * w / h)))).astype(np.float32)
        field += weight * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    d = np.clip(p["density"] * (1 + p["spread"] * (2 * field - 1)), 0, 1)[..., None]
    return _to_uint8(image * (1 - d) + AIRLIGHT * d)


def _per_channel_table(image: np.ndarray, offset, gain: float) -> np.ndarray:
    """clip(rint(gain x + offset[c]), 0, 255) for every pixel, through a 256-entry table per
    channel (the same numbers as the formula, without a float copy of the image)."""
    import cv2

    levels = np.arange(256, dtype=np.float64)[:, None]
    table = _to_uint8(gain * levels + np.asarray(offset, dtype=np.float64)[None, :])  # [256, 3]
    return cv2.LUT(image, table.reshape(256, 1, 3))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _albumentation(name: str, p: dict, shape: tuple):
    """The albumentations transform of one (corruption, severity), applied with probability 1."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    if name == "rain":
        return A.RandomRain(slant_range=(-p["slant"], p["slant"]), drop_width=p["drop_width"],
                            blur_value=p["blur"], brightness_coefficient=p["brightness"],
                            rain_type=p["rain_type"], p=1.0)
    if name == "motion_blur":
        k = max(3, int(round(p["length"] * min(shape[:2]))))
        k += 1 - k % 2  # odd
        return A.MotionBlur(blur_limit=(k, k), angle_range=(0, 360), direction_range=(0.0, 0.0),
                            allow_shifted=False, p=1.0)
    raise AssertionError(name)
