"""Procedurally generated street scenes, written in the Cityscapes on-disk layout.

``generate(out_dir)`` writes ``leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png``
(RGB) and ``gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png`` (8-bit
grey, Cityscapes label *ids*, see :mod:`segbench.data.cityscapes_labels`), so the same
prepare step reads the synthetic scenes and the real data. Like the real annotations, the
frame number is 19 (Cityscapes annotates the 20th frame of each 30-frame snippet).

A scene is a pinhole camera looking down a straight street: the ground plane and every
object are placed in metres and projected (``x = xv + f X / Z``, ``y = yh + f (h_cam - h) / Z``),
so sizes shrink towards the horizon and nearer objects are drawn last (occlusion by draw
order). It contains sky, a distant skyline, road with lane markings (and sometimes a cross
street with a zebra crossing and parking strips), sidewalks, terrain strips, building
facades with windows, walls, fences and hedges, trees, poles (street lamps, sign posts,
traffic-light posts and mast arms, 1-3 px wide at 128x256), traffic signs and lights, cars,
trucks, buses, pedestrians, cyclists (rider + bicycle) and parked bicycles, plus void
pixels (ego vehicle, rectification border, static / dynamic objects, ground patches, small
unlabelled holes) so that ignore handling is exercised.

Colours are drawn per instance from class palettes that overlap between classes (grey
cars, buildings, road, sidewalk and poles; green terrain and vegetation; clothes of any
colour), and then textured (window grids, paving, lane paint, foliage noise), shadowed,
lit (gain, white balance, gamma, vignetting, gradients), slightly blurred and noised per
image, so that colour alone does not solve the task.

Every image is drawn from its own ``numpy.random.Generator`` seeded with
``(seed, crc32(split), index)``: the same seed gives byte-identical PNGs, and image *i* does
not depend on how many images are generated. All geometry is rasterised with PIL
``ImageDraw`` into label / instance / detail maps; colouring is vectorised numpy.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from segbench.io import atomic_path

__all__ = [
    "DEFAULT_SPLITS",
    "CITY_NAMES",
    "FRAME",
    "generate",
    "render",
    "sample_name",
    "image_path",
    "label_path",
]

DEFAULT_SPLITS: Mapping[str, int] = MappingProxyType({"train": 160, "val": 40})

#: made-up city names per split; other split names get ``{split}town``
CITY_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "train": ("synthburg", "pixelstadt", "voxelheim"),
        "val": ("rastertal", "meshdorf"),
        "test": ("gridhafen", "polyberg"),
    }
)
FRAME = 19

# Cityscapes label ids used by the generator
UNLABELED, EGO, BORDER, OUT_OF_ROI, STATIC, DYNAMIC, GROUND = 0, 1, 2, 3, 4, 5, 6
ROAD, SIDEWALK, PARKING = 7, 8, 9
BUILDING, WALL, FENCE = 11, 12, 13
POLE, LIGHT, SIGN = 17, 19, 20
VEGETATION, TERRAIN, SKY = 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, BICYCLE = 24, 25, 26, 27, 28, 33

# detail codes: drawn into a separate map, they override the instance colour (label unchanged)
D_GLASS, D_PAINT, D_TAIL, D_HEAD, D_TYRE, D_WHITE, D_LEGS, D_SKIN, D_LIT, D_DARK = range(1, 11)

_GROUND_IDS = (ROAD, SIDEWALK, PARKING, TERRAIN, GROUND)

# Anchor colours per class (RGB); an instance picks one anchor and jitters it. They overlap
# on purpose: greys for road, sidewalk, building, wall, pole, car; greens for terrain and
# vegetation; anything for clothes and for static objects.
_GREYS = [(70, 70, 72), (95, 95, 98), (120, 120, 120), (145, 143, 140), (170, 168, 165)]
_PALETTES: dict[int, list[tuple[int, int, int]]] = {
    SKY: [(110, 160, 215), (140, 180, 225), (175, 195, 215), (200, 205, 212), (220, 215, 205)],
    ROAD: [(75, 75, 80), (95, 95, 98), (115, 112, 110), (135, 130, 128)],
    SIDEWALK: [(120, 118, 115), (145, 140, 135), (165, 158, 150), (150, 120, 112), (105, 105, 110)],
    PARKING: [(95, 95, 98), (125, 120, 118), (140, 110, 105)],
    GROUND: [(120, 110, 95), (100, 95, 88), (135, 125, 110)],
    BUILDING: [(105, 100, 95), (150, 140, 128), (185, 172, 150), (205, 195, 178), (150, 95, 75),
               (88, 88, 92), (170, 170, 175), (120, 130, 140), (190, 160, 120)],
    WALL: [(140, 135, 125), (170, 165, 155), (110, 105, 100), (185, 178, 160)],
    FENCE: [(120, 100, 80), (100, 100, 100), (70, 90, 70), (150, 130, 110), (60, 60, 62)],
    POLE: [(90, 90, 90), (130, 130, 130), (60, 72, 62), (45, 45, 48), (160, 160, 158)],
    LIGHT: [(40, 40, 40), (60, 60, 55), (150, 130, 40), (30, 30, 32)],
    SIGN: [(35, 80, 170), (190, 40, 40), (220, 200, 45), (225, 225, 225), (40, 120, 60)],
    VEGETATION: [(60, 90, 40), (80, 110, 45), (50, 70, 35), (100, 120, 60), (125, 115, 55)],
    TERRAIN: [(110, 130, 60), (130, 140, 70), (140, 122, 82), (98, 112, 62), (150, 150, 110)],
    CAR: [(200, 200, 205), (40, 40, 45), (150, 150, 155), (160, 30, 30), (30, 50, 120),
          (230, 230, 230), (90, 90, 95), (40, 80, 60), (120, 110, 90)],
    TRUCK: [(220, 220, 220), (200, 200, 180), (60, 80, 120), (150, 150, 150)],
    BUS: [(200, 180, 40), (180, 40, 40), (220, 220, 220), (60, 120, 170)],
    BICYCLE: [(40, 40, 40), (150, 30, 30), (60, 60, 60), (30, 60, 130)],
    EGO: [(30, 30, 35), (55, 55, 60), (170, 170, 175)],
    BORDER: [(0, 0, 0)],
    OUT_OF_ROI: [(10, 10, 12), (60, 60, 62)],
}
_JITTER: dict[int, float] = {SKY: 8.0, BORDER: 2.0, ROAD: 8.0}


def _sample_color(rng: np.random.Generator, cls: int) -> tuple[float, float, float]:
    if cls in (PERSON, RIDER, STATIC, DYNAMIC):  # clothes, bins, boxes: any colour
        if rng.random() < 0.4:
            g = rng.uniform(30, 200)
            base = np.array([g, g, g])
        else:
            base = rng.uniform(25, 215, size=3)
    else:
        pal = _PALETTES[cls]
        base = np.asarray(pal[int(rng.integers(len(pal)))], dtype=np.float64)
    c = base * rng.normal(1.0, 0.07) + rng.normal(0.0, _JITTER.get(cls, 12.0), size=3)
    c = np.clip(c, 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


Point = tuple[float, float]


def _circle(n: int) -> list[tuple[float, float]]:
    """(cos, sin) of n + 1 angles around the circle (closed), via libm rather than SIMD numpy."""
    return [(math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n)) for k in range(n + 1)]


def _pow15(t: np.ndarray) -> np.ndarray:
    return t * np.sqrt(t)  # t ** 1.5 with correctly rounded operations only


class _Scene:
    """Camera, rasters and per-instance attributes of one scene."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng = rng
        self.h, self.w = height, width
        self.f = width * rng.uniform(0.8, 1.05)  # focal length in pixels
        self.cam_h = rng.uniform(1.3, 1.7)  # camera height (m)
        self.yh = height * rng.uniform(0.36, 0.48)  # horizon row
        self.xv = width * rng.uniform(0.42, 0.58)  # vanishing point column
        self.lab = Image.new("L", (width, height), 0)
        self.ins = Image.new("I", (width, height), 0)
        self.det = Image.new("L", (width, height), 0)
        self.shadow = Image.new("L", (width, height), 0)
        self._dl = ImageDraw.Draw(self.lab)
        self._di = ImageDraw.Draw(self.ins)
        self._dd = ImageDraw.Draw(self.det)
        self._ds = ImageDraw.Draw(self.shadow)
        self.inst_color: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
        # facade patterns: inst -> (kind 1 = plane X=val / 2 = plane Z=val, val, u0, su, wf,
        #                           v0, sv, hf, vtop, ground_floor, glass r, g, b)
        self.facades: dict[int, tuple[float, ...]] = {}
        self.markings: list[tuple[float, float, bool, float]] = []  # X, half width, dashed, phase
        self.road_inst = 0
        self.sunny = False
        self.sun_dx = 0.0  # cast-shadow offset per metre of height, across / along the street
        self.sun_dz = 0.0
        # image-wide detail colours
        self.det_color = np.zeros((256, 3), np.float32)

    # --- instances -------------------------------------------------------------------
    def new(self, cls: int, light: float = 1.0, color: tuple[float, float, float] | None = None) -> int:
        c = _sample_color(self.rng, cls) if color is None else color
        self.inst_color.append((c[0] * light, c[1] * light, c[2] * light))
        return len(self.inst_color) - 1

    # --- projection ------------------------------------------------------------------
    def p(self, X: float, Z: float, h: float = 0.0) -> Point:
        Z = max(Z, 0.25)
        return (self.xv + self.f * X / Z, self.yh + self.f * (self.cam_h - h) / Z)

    def ground(self, X0: float, X1: float, Z0: float, Z1: float) -> list[Point]:
        return [self.p(X0, Z0), self.p(X1, Z0), self.p(X1, Z1), self.p(X0, Z1)]

    def side(self, X: float, Z0: float, Z1: float, h0: float, h1: float) -> list[Point]:
        """Quad on the vertical plane X = const (a facade along the street)."""
        return [self.p(X, Z0, h0), self.p(X, Z1, h0), self.p(X, Z1, h1), self.p(X, Z0, h1)]

    def front(self, Z: float, X0: float, X1: float, h0: float, h1: float) -> list[Point]:
        """Rectangle on the vertical plane Z = const (facing the camera)."""
        return [self.p(X0, Z, h0), self.p(X1, Z, h0), self.p(X1, Z, h1), self.p(X0, Z, h1)]

    def px(self, metres: float, Z: float) -> float:
        return self.f * metres / max(Z, 0.25)

    # --- drawing ---------------------------------------------------------------------
    def poly(self, pts: list[Point], cls: int, inst: int, det: int = 0) -> None:
        # the outline keeps sub-pixel structures (far poles) at least 1 px wide
        self._dl.polygon(pts, fill=cls, outline=cls)
        self._di.polygon(pts, fill=inst, outline=inst)
        self._dd.polygon(pts, fill=det, outline=det)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, cls: int, inst: int, det: int = 0) -> None:
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        self._dl.ellipse(box, fill=cls, outline=cls)
        self._di.ellipse(box, fill=inst, outline=inst)
        self._dd.ellipse(box, fill=det, outline=det)

    def line(self, pts: list[Point], cls: int, inst: int, width: int = 1, det: int = 0) -> None:
        self._dl.line(pts, fill=cls, width=width)
        self._di.line(pts, fill=inst, width=width)
        self._dd.line(pts, fill=det, width=width)

    def detail(self, pts: list[Point], det: int) -> None:
        """Recolour part of the last drawn object (its label stays)."""
        self._dd.polygon(pts, fill=det)

    def detail_ellipse(self, cx: float, cy: float, rx: float, ry: float, det: int) -> None:
        if rx >= 0.4 and ry >= 0.4:
            self._dd.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=det)

    def cast(self, pts: list[Point], value: int = 1) -> None:
        self._ds.polygon(pts, fill=value)


# ----------------------------------------------------------------------------------------
# scene content
# ----------------------------------------------------------------------------------------


def _draw_sign(sc: _Scene, X: float, Z: float, hc: float, size: float) -> None:
    rng = sc.rng
    inst = sc.new(SIGN)
    shape = int(rng.integers(4))
    r = size / 2
    if shape == 0:  # rectangle, sometimes wide
        ar = rng.uniform(0.6, 1.3)
        sc.poly(sc.front(Z, X - r, X + r, hc - r * ar, hc + r * ar), SIGN, inst)
        if rng.random() < 0.6:
            sc.detail(sc.front(Z, X - 0.6 * r, X + 0.6 * r, hc - 0.3 * r, hc + 0.3 * r), D_WHITE)
    elif shape == 1:  # circle with a white centre
        cx, cy = sc.p(X, Z, hc)
        R = sc.px(r, Z)
        sc.ellipse(cx, cy, R, R, SIGN, inst)
        sc.detail_ellipse(cx, cy, 0.7 * R, 0.7 * R, D_WHITE if rng.random() < 0.7 else D_DARK)
    elif shape == 2:  # triangle
        pts = [sc.p(X - r, Z, hc - 0.8 * r), sc.p(X + r, Z, hc - 0.8 * r), sc.p(X, Z, hc + 0.9 * r)]
        sc.poly(pts, SIGN, inst)
        sc.detail(
            [sc.p(X - 0.55 * r, Z, hc - 0.55 * r), sc.p(X + 0.55 * r, Z, hc - 0.55 * r), sc.p(X, Z, hc + 0.45 * r)],
            D_WHITE,
        )
    else:  # diamond
        pts = [sc.p(X - r, Z, hc), sc.p(X, Z, hc - r), sc.p(X + r, Z, hc), sc.p(X, Z, hc + r)]
        sc.poly(pts, SIGN, inst)


def _draw_light_box(sc: _Scene, X: float, Z: float, h0: float, h1: float) -> None:
    rng = sc.rng
    inst = sc.new(LIGHT)
    w = rng.uniform(0.3, 0.42)
    sc.poly(sc.front(Z, X - w / 2, X + w / 2, h0, h1), LIGHT, inst)
    if rng.random() < 0.75:  # facing us: three lamps, one lit
        lit = int(rng.integers(3))
        for k in range(3):
            cx, cy = sc.p(X, Z, h1 - (k + 0.5) * (h1 - h0) / 3)
            R = sc.px(0.11, Z)
            sc.detail_ellipse(cx, cy, R, R, D_LIT if k == lit else D_DARK)


def _draw_pole(sc: _Scene, X: float, Z: float, s: int, kind: str) -> None:
    rng = sc.rng
    inst = sc.new(POLE)
    w = rng.uniform(0.1, 0.2)
    if kind == "lamp":
        h = rng.uniform(6.0, 9.0)
        sc.poly(sc.front(Z, X - w / 2, X + w / 2, 0, h), POLE, inst)
        arm = rng.uniform(1.0, 2.5)
        xa = X - s * arm
        sc.poly(sc.front(Z, min(X, xa), max(X, xa), h - 0.12, h), POLE, inst)
        sc.poly(sc.front(Z, xa - 0.3, xa + 0.3, h - 0.3, h + 0.02), POLE, inst)
    elif kind == "sign":
        h = rng.uniform(2.6, 3.6)
        sc.poly(sc.front(Z, X - w / 2, X + w / 2, 0, h), POLE, inst)
        size = rng.uniform(0.6, 0.95)
        off = 0.0 if rng.random() < 0.6 else -s * (size / 2 + w / 2)
        _draw_sign(sc, X + off, Z - 0.05, h - size / 2, size)
        if rng.random() < 0.35:
            size2 = rng.uniform(0.4, 0.7)
            _draw_sign(sc, X, Z - 0.05, h - size - size2 / 2 - 0.1, size2)
    elif kind == "light":
        h = rng.uniform(3.5, 5.5)
        sc.poly(sc.front(Z, X - w / 2, X + w / 2, 0, h), POLE, inst)
        _draw_light_box(sc, X, Z - 0.1, h - 1.0, h)
        if rng.random() < 0.4:  # mast arm over the road with hanging lights
            ha = rng.uniform(5.0, 6.5)
            sc.poly(sc.front(Z, X - w / 2, X + w / 2, h, ha), POLE, inst)
            arm = rng.uniform(2.0, 5.0)
            xa = X - s * arm
            sc.poly(sc.front(Z, min(X, xa), max(X, xa), ha - 0.15, ha), POLE, inst)
            for k in range(1 + int(rng.integers(2))):
                xl = X - s * arm * (0.55 + 0.45 * k)
                _draw_light_box(sc, xl, Z - 0.05, ha - 1.05, ha - 0.1)
        if rng.random() < 0.3:
            _draw_sign(sc, X, Z - 0.05, rng.uniform(2.2, 2.6), rng.uniform(0.5, 0.7))
    else:  # plain short post
        h = rng.uniform(2.5, 4.0)
        sc.poly(sc.front(Z, X - w / 2, X + w / 2, 0, h), POLE, inst)
    if sc.sunny:
        sc.cast([sc.p(X - w, Z), sc.p(X + w, Z), sc.p(X + w - sc.sun_dx * 4, Z + sc.sun_dz * 4),
                 sc.p(X - w - sc.sun_dx * 4, Z + sc.sun_dz * 4)])


def _draw_tree(sc: _Scene, X: float, Z: float) -> None:
    rng = sc.rng
    inst = sc.new(VEGETATION)
    hc = rng.uniform(3.5, 6.0)
    tw = rng.uniform(0.2, 0.4)
    trunk = sc.new(VEGETATION, color=_sample_color(rng, FENCE))  # bark: brown / grey
    sc.poly(sc.front(Z, X - tw / 2, X + tw / 2, 0, hc), VEGETATION, trunk)
    R = rng.uniform(1.3, 2.6)
    for _ in range(int(rng.integers(3, 7))):
        bx = X + rng.normal(0, 0.5 * R)
        bh = hc + rng.normal(0.3, 0.4 * R)
        r = R * rng.uniform(0.55, 0.9)
        cx, cy = sc.p(bx, Z, bh)
        sc.ellipse(cx, cy, sc.px(r, Z), sc.px(r * rng.uniform(0.8, 1.1), Z), VEGETATION, inst)
    if sc.sunny:
        d = hc
        sc.cast(sc.ground(X - R - sc.sun_dx * d, X + R - sc.sun_dx * d, Z - R + sc.sun_dz * d, Z + R + sc.sun_dz * d))


def _draw_person(sc: _Scene, X: float, Z: float, cls: int = PERSON) -> None:
    rng = sc.rng
    inst = sc.new(cls)
    hp = rng.uniform(1.5, 1.95)
    stride = rng.uniform(0.0, 0.3)
    lw = 0.13
    for sgn in (-1, 1):  # legs
        xt = X + sgn * 0.1
        xb = xt + sgn * stride / 2
        sc.poly([sc.p(xb - lw / 2, Z), sc.p(xb + lw / 2, Z), sc.p(xt + lw / 2, Z, 0.5 * hp),
                 sc.p(xt - lw / 2, Z, 0.5 * hp)], cls, inst, D_LEGS)
    sc.poly([sc.p(X - 0.19, Z, 0.48 * hp), sc.p(X + 0.19, Z, 0.48 * hp), sc.p(X + 0.22, Z, 0.82 * hp),
             sc.p(X - 0.22, Z, 0.82 * hp)], cls, inst)
    swing = rng.uniform(-0.08, 0.08)
    for sgn in (-1, 1):  # arms
        xs = X + sgn * 0.25
        sc.poly([sc.p(xs - 0.04, Z, 0.81 * hp), sc.p(xs + 0.04, Z, 0.81 * hp),
                 sc.p(xs + 0.04 + sgn * swing, Z, 0.47 * hp), sc.p(xs - 0.04 + sgn * swing, Z, 0.47 * hp)],
                cls, inst)
    cx, cy = sc.p(X, Z, 0.9 * hp)
    sc.ellipse(cx, cy, sc.px(0.085, Z), sc.px(0.105, Z), cls, inst, D_SKIN)
    sc.cast(sc.ground(X - 0.3, X + 0.3, Z - 0.15, Z + 0.3), 2)


def _draw_cyclist(sc: _Scene, X: float, Z: float) -> None:
    """Rider on a bicycle, seen from behind."""
    rng = sc.rng
    bike = sc.new(BICYCLE)
    sc.poly(sc.front(Z + 0.02, X - 0.3, X + 0.3, 0.95, 1.02), BICYCLE, bike)  # handlebar
    sc.poly(sc.front(Z, X - 0.035, X + 0.035, 0.0, 0.68), BICYCLE, bike, D_TYRE)  # rear wheel
    rider = sc.new(RIDER)
    for sgn in (-1, 1):
        sc.poly([sc.p(X + sgn * 0.09, Z, 0.3), sc.p(X + sgn * 0.2, Z, 0.3), sc.p(X + sgn * 0.2, Z, 0.9),
                 sc.p(X + sgn * 0.05, Z, 0.9)], RIDER, rider, D_LEGS)
    sc.poly([sc.p(X - 0.18, Z, 0.85), sc.p(X + 0.18, Z, 0.85), sc.p(X + 0.22, Z, 1.45),
             sc.p(X - 0.22, Z, 1.45)], RIDER, rider)
    cx, cy = sc.p(X, Z, 1.57)
    sc.ellipse(cx, cy, sc.px(0.09, Z), sc.px(0.11, Z), RIDER, rider, D_SKIN if rng.random() < 0.5 else 0)
    sc.cast(sc.ground(X - 0.2, X + 0.2, Z - 0.2, Z + 1.6), 2)


def _draw_parked_bicycle(sc: _Scene, X: float, Z: float) -> None:
    """Bicycle parked along a facade (side view on the plane X = const), thin lines."""
    bike = sc.new(BICYCLE)
    r = 0.34
    lw = max(1, int(round(sc.px(0.04, Z))))
    for zc in (Z, Z + 1.05):
        pts = [sc.p(X, zc + r * c, r + r * s) for c, s in _circle(12)]
        sc.line(pts, BICYCLE, bike, lw)
    frame = [sc.p(X, Z, r), sc.p(X, Z + 0.45, r), sc.p(X, Z + 0.35, 0.85), sc.p(X, Z + 0.8, 0.85),
             sc.p(X, Z + 1.05, r), sc.p(X, Z + 0.45, r)]
    sc.line(frame, BICYCLE, bike, lw)


def _draw_vehicle(sc: _Scene, X: float, Z: float, cls: int, oncoming: bool) -> float:
    """Vehicle whose nearest face is at depth Z; returns its length."""
    rng = sc.rng
    inst = sc.new(cls)
    if cls == CAR:
        w, L, h = rng.uniform(1.7, 1.95), rng.uniform(4.0, 4.8), rng.uniform(1.4, 1.6)
    elif cls == TRUCK:
        w, L, h = rng.uniform(2.3, 2.55), rng.uniform(6.0, 9.0), rng.uniform(2.8, 3.6)
    else:
        w, L, h = 2.55, rng.uniform(11.0, 13.0), rng.uniform(3.0, 3.3)
    sc.cast(sc.ground(X - w / 2 - 0.1, X + w / 2 + 0.1, Z - 0.15, Z + L), 2)
    # the side facing the camera axis, if any
    xs = X - w / 2 if X - w / 2 > 0.2 else (X + w / 2 if X + w / 2 < -0.2 else None)
    zw = (Z + 0.17 * L, Z + 0.82 * L) if cls == CAR else (Z + 0.15 * L, Z + 0.8 * L)
    if cls == CAR:
        hb = 0.62 * h
        if xs is not None:
            sc.poly(sc.side(xs, Z, Z + L, 0.25, hb), CAR, inst)
            if oncoming:
                zb, zt = (Z + 0.3 * L, Z + 0.85 * L), (Z + 0.42 * L, Z + 0.75 * L)
            else:
                zb, zt = (Z + 0.15 * L, Z + 0.72 * L), (Z + 0.27 * L, Z + 0.62 * L)
            cab = [sc.p(xs, zb[0], hb), sc.p(xs, zb[1], hb), sc.p(xs, zt[1], h), sc.p(xs, zt[0], h)]
            sc.poly(cab, CAR, inst)
            sc.detail([sc.p(xs, zb[0] + 0.15, hb + 0.05), sc.p(xs, zb[1] - 0.1, hb + 0.05),
                       sc.p(xs, zt[1] - 0.05, h - 0.06), sc.p(xs, zt[0] + 0.05, h - 0.06)], D_GLASS)
            for zc in zw:
                sc.poly([sc.p(xs, zc + 0.33 * c, 0.33 + 0.33 * s) for c, s in _circle(10)], CAR, inst, D_TYRE)
        # the face (rear, or front when oncoming)
        for sgn in (-1, 1):
            xw = X + sgn * (w / 2 - 0.2)
            sc.poly(sc.front(Z + 0.3, xw - 0.12, xw + 0.12, 0.0, 0.3), CAR, inst, D_TYRE)
        sc.poly(sc.front(Z, X - w / 2, X + w / 2, 0.25, hb), CAR, inst)
        sc.poly([sc.p(X - 0.46 * w, Z, hb), sc.p(X + 0.46 * w, Z, hb), sc.p(X + 0.36 * w, Z, h),
                 sc.p(X - 0.36 * w, Z, h)], CAR, inst)
        sc.detail([sc.p(X - 0.4 * w, Z, hb + 0.05), sc.p(X + 0.4 * w, Z, hb + 0.05),
                   sc.p(X + 0.33 * w, Z, h - 0.06), sc.p(X - 0.33 * w, Z, h - 0.06)], D_GLASS)
        lamp = D_HEAD if oncoming else D_TAIL
        for sgn in (-1, 1):
            x0 = X + sgn * (w / 2 - 0.06)
            x1 = X + sgn * (w / 2 - 0.32)
            sc.detail(sc.front(Z, min(x0, x1), max(x0, x1), 0.45 * h, 0.54 * h), lamp)
        sc.detail(sc.front(Z, X - 0.26, X + 0.26, 0.3, 0.42), D_WHITE)  # licence plate (car in labelIds)
    else:
        hb = 0.45 if cls == BUS else 0.55
        if xs is not None:
            sc.poly(sc.side(xs, Z, Z + L, hb, h), cls, inst)
            if cls == BUS:
                sc.detail(sc.side(xs, Z + 0.6, Z + L - 0.6, 0.55 * h, 0.85 * h), D_GLASS)
            for zc in zw:
                sc.poly([sc.p(xs, zc + 0.5 * c, 0.5 + 0.5 * s) for c, s in _circle(10)], cls, inst, D_TYRE)
        for sgn in (-1, 1):
            xw = X + sgn * (w / 2 - 0.25)
            sc.poly(sc.front(Z + 0.5, xw - 0.2, xw + 0.2, 0.0, hb + 0.05), cls, inst, D_TYRE)
        sc.poly(sc.front(Z, X - w / 2, X + w / 2, hb, h), cls, inst)
        if oncoming or cls == BUS:
            sc.detail(sc.front(Z, X - 0.45 * w, X + 0.45 * w, 0.5 * h, 0.9 * h), D_GLASS)
        lamp = D_HEAD if oncoming else D_TAIL
        for sgn in (-1, 1):
            x0 = X + sgn * (w / 2 - 0.08)
            x1 = X + sgn * (w / 2 - 0.35)
            sc.detail(sc.front(Z, min(x0, x1), max(x0, x1), hb + 0.1, hb + 0.3), lamp)
    return L


# ----------------------------------------------------------------------------------------
# the scene, part by part (each part draws from sc.rng in turn: the order of the calls
# below and within each part is what makes a seed give the same scene)
# ----------------------------------------------------------------------------------------

SIDES = (-1, 1)  # left (oncoming traffic), right


@dataclass
class _Street:
    """The street's layout in metres, and the objects placed on it so far."""

    lane_w: float
    #: lanes left (-1) and right (1) of the centre lane
    n_lanes: dict[int, int]
    #: per side: lanes_edge, park, park_label, edge (kerb), sw (sidewalk width), terr, facade
    sides: dict[int, dict[str, Any]]
    #: depth of the building closing the street, or None (open to the horizon)
    z_end: float | None
    #: (near, far) depth of a cross street, or None
    cross: tuple[float, float] | None
    #: (depth, draw function, its arguments after the scene), drawn far to near
    objects: list[tuple[float, Callable[..., Any], tuple[Any, ...]]] = field(default_factory=list)

    @property
    def z_far(self) -> float:
        return self.z_end if self.z_end is not None else 400.0

    @property
    def z_obj(self) -> float:
        """Objects stand nearer than this."""
        return min(self.z_far, 110.0)

    @property
    def ranges(self) -> list[tuple[float, float]]:
        """Depth ranges of the sidewalks: the whole street less the cross street."""
        return [(0.25, self.cross[0]), (self.cross[1], self.z_far)] if self.cross else [(0.25, self.z_far)]

    def in_cross(self, Z: float, margin: float = 0.5) -> bool:
        return self.cross is not None and self.cross[0] - margin < Z < self.cross[1] + margin

    def add(self, Z: float, fn: Callable[..., Any], *args: Any) -> None:
        """Place an object at depth Z, drawn later as ``fn(sc, *args)``."""
        self.objects.append((Z, fn, args))


def _compose(sc: _Scene) -> None:
    sun_side = _weather(sc)
    _draw_sky(sc)
    sc.poly([(0, sc.yh), (sc.w, sc.yh), (sc.w, sc.h), (0, sc.h)], TERRAIN, sc.new(TERRAIN))  # ground
    st = _lay_out_street(sc)
    _draw_sidewalks_and_road(sc, st)
    _mark_lanes(sc, st)
    _draw_cross_street(sc, st)
    _draw_ground_patches(sc, st)
    _draw_buildings(sc, st, sun_side)
    _draw_walls_fences_hedges(sc, st)
    _place_poles(sc, st)
    for s in SIDES:
        _place_sidewalk_objects(sc, st, s)
    _place_vehicles(sc, st)
    for _, draw, args in sorted(st.objects, key=lambda o: -o[0]):  # far to near
        draw(sc, *args)
    _draw_void(sc)


def _weather(sc: _Scene) -> int:
    """Sunny or not, and the sun's side (returned) and shadow direction."""
    U = sc.rng.uniform
    sc.sunny = bool(sc.rng.random() < 0.55)
    sun_side = -1 if sc.rng.random() < 0.5 else 1
    sc.sun_dx = sun_side * U(0.4, 1.1)  # shadow offset per metre of height (towards -sun_side)
    sc.sun_dz = U(-0.3, 0.6)
    return sun_side


def _draw_sky(sc: _Scene) -> None:
    """Sky and a distant skyline (blocks and tree tops) along the horizon."""
    rng, U, H, W = sc.rng, sc.rng.uniform, sc.h, sc.w
    sc.poly([(0, 0), (W, 0), (W, H), (0, H)], SKY, sc.new(SKY))
    x = -2.0
    while x < W:
        bw = U(0.03, 0.12) * W
        bh = U(0.01, 0.09) * H
        if rng.random() < 0.6:
            sc.poly([(x, sc.yh + 1), (x + bw, sc.yh + 1), (x + bw, sc.yh - bh), (x, sc.yh - bh)],
                    BUILDING, sc.new(BUILDING, light=U(0.8, 1.0)))
        else:
            sc.ellipse(x + bw / 2, sc.yh, bw / 2 + 1, bh, VEGETATION, sc.new(VEGETATION))
        x += bw


def _lay_out_street(sc: _Scene) -> _Street:
    """Lanes, parking, kerbs, sidewalks, terrain strips and facades per side; the street's end
    and a cross street. Draws nothing."""
    rng, U = sc.rng, sc.rng.uniform
    lane_w = U(2.8, 3.6)
    n_lanes = {-1: int(rng.integers(0, 3)), 1: int(rng.integers(0, 2))}
    sides: dict[int, dict[str, Any]] = {}
    for s in SIDES:
        lanes_edge = lane_w * (0.5 + n_lanes[s])
        park = bool(rng.random() < 0.45)
        edge = lanes_edge + (U(2.1, 2.5) if park else U(0.2, 0.8))
        sw = U(1.8, 4.5)
        terr = U(1.0, 4.0) if rng.random() < 0.35 else 0.0
        sides[s] = dict(lanes_edge=lanes_edge, park=park, park_label=park and rng.random() < 0.4,
                        edge=edge, sw=sw, terr=terr, facade=edge + sw + terr)
    z_end: float | None = U(45.0, 160.0) if rng.random() < 0.75 else None
    z_far = z_end if z_end is not None else 400.0
    cross: tuple[float, float] | None = None
    if rng.random() < 0.35 and z_far > 40:
        zc0 = U(14.0, min(45.0, z_far - 20.0))
        cross = (zc0, zc0 + U(8.0, 14.0))
    return _Street(lane_w, n_lanes, sides, z_end, cross)


def _draw_sidewalks_and_road(sc: _Scene, st: _Street) -> None:
    """Sidewalks and terrain strips per side, the road, labelled parking strips."""
    for s in SIDES:
        c = st.sides[s]
        sw_inst = sc.new(SIDEWALK)
        for za, zb in st.ranges:
            sc.poly(sc.ground(s * c["edge"], s * c["facade"], za, zb), SIDEWALK, sw_inst)
        if c["terr"] > 0:
            t_inst = sc.new(TERRAIN)
            for za, zb in st.ranges:
                sc.poly(sc.ground(s * (c["edge"] + c["sw"]), s * c["facade"], za, zb), TERRAIN, t_inst)
    sc.road_inst = sc.new(ROAD)
    sc.poly(sc.ground(-st.sides[-1]["edge"], st.sides[1]["edge"], 0.25, st.z_far), ROAD, sc.road_inst)
    for s in SIDES:
        c = st.sides[s]
        if c["park_label"]:
            p_inst = sc.new(PARKING)
            for za, zb in st.ranges:
                sc.poly(sc.ground(s * c["lanes_edge"], s * c["edge"], za, zb), PARKING, p_inst)


def _mark_lanes(sc: _Scene, st: _Street) -> None:
    """Lane boundaries and edge lines (painted per pixel at render time)."""
    rng, U = sc.rng, sc.rng.uniform
    for k in range(-st.n_lanes[-1], st.n_lanes[1]):
        xm = (k + 0.5) * st.lane_w
        sc.markings.append((xm, U(0.06, 0.09), bool(k != -1 or rng.random() < 0.6), U(0, 9)))
    for s in SIDES:
        if rng.random() < 0.5:
            sc.markings.append((s * (st.sides[s]["lanes_edge"] - 0.2), 0.07, False, 0.0))


def _draw_cross_street(sc: _Scene, st: _Street) -> None:
    """The cross street's road and, often, a zebra crossing before it."""
    if not st.cross:
        return
    near, far = st.cross
    sc.poly(sc.ground(-300.0, 300.0, near, far), ROAD, sc.new(ROAD))
    if sc.rng.random() < 0.7:
        xs = -st.sides[-1]["lanes_edge"] + 0.3
        while xs < st.sides[1]["lanes_edge"] - 0.6:
            sc.poly(sc.ground(xs, xs + 0.5, near - 4.0, near - 1.0), ROAD, sc.road_inst, D_PAINT)
            xs += 1.0


def _draw_ground_patches(sc: _Scene, st: _Street) -> None:
    """Void ground patches near the facades."""
    rng, U = sc.rng, sc.rng.uniform
    for s in SIDES:
        if rng.random() < 0.3:
            c = st.sides[s]
            z0 = U(5.0, 40.0)
            sc.poly(sc.ground(s * (c["facade"] - U(0.5, 2.0)), s * c["facade"], z0, z0 + U(3.0, 12.0)),
                    GROUND, sc.new(GROUND))


def _facade_inst(sc: _Scene, light: float, kind: int, val: float, u0: float, vtop: float) -> int:
    """A building instance with its window pattern on the plane X = val (kind 1) or Z = val (2)."""
    rng, U = sc.rng, sc.rng.uniform
    inst = sc.new(BUILDING, light=light)
    glass = np.array(_sample_color(rng, BUILDING)) * 0.35 + np.array([25.0, 32.0, 45.0]) * U(0.8, 2.5)
    sc.facades[inst] = (float(kind), val, u0, U(2.2, 3.6), U(0.35, 0.6), U(0, 1), U(2.8, 3.6),
                        U(0.4, 0.6), vtop, U(3.0, 4.2) if rng.random() < 0.5 else 0.0, *glass.tolist())
    return inst


def _draw_buildings(sc: _Scene, st: _Street, sun_side: int) -> None:
    """Facades along both sides (far first), fronts across the cross street, the street's end."""
    U = sc.rng.uniform
    light_of = {sun_side: U(0.6, 0.8) if sc.sunny else 1.0, -sun_side: U(1.0, 1.15) if sc.sunny else 1.0}
    for s in SIDES:
        _draw_facades_along(sc, st, s, light_of[s], sun_side)
        if st.cross:
            _draw_cross_street_fronts(sc, st, s)
    if st.z_end is not None:
        _draw_street_end(sc, st.z_end)


def _draw_facades_along(sc: _Scene, st: _Street, s: int, light: float, sun_side: int) -> None:
    """Buildings of random length and height along side s, with gaps; on the sunny side
    they cast shadows onto the street."""
    rng, U = sc.rng, sc.rng.uniform
    c, cross = st.sides[s], st.cross
    z_stop = st.z_end if st.z_end is not None else U(80.0, 220.0)
    bl_ranges = [(0.5, cross[0]), (cross[1], z_stop)] if cross else [(0.5, z_stop)]
    segs = []
    for za, zb in bl_ranges:
        z = za
        while z < zb:
            z1 = min(z + U(6.0, 22.0), zb)
            segs.append((z, z1))
            z = z1
    for z0, z1 in reversed(segs):
        if rng.random() < 0.12:
            continue  # a gap: the skyline or terrain shows through
        hgt = U(6.0, 28.0)
        X = s * (c["facade"] + U(0.0, 1.2))
        inst = _facade_inst(sc, light, 1, X, z0, hgt)
        sc.poly(sc.side(X, z0, z1, 0.0, hgt), BUILDING, inst)
        if sc.sunny and s == sun_side:
            d = hgt
            sc.cast([sc.p(X, z0), sc.p(X, z1), sc.p(X - sc.sun_dx * d, z1 + sc.sun_dz * d),
                     sc.p(X - sc.sun_dx * d, z0 + sc.sun_dz * d)])


def _draw_cross_street_fronts(sc: _Scene, st: _Street, s: int) -> None:
    """Buildings lining the far side of the cross street, on side s."""
    assert st.cross is not None
    U = sc.rng.uniform
    x = st.sides[s]["facade"]
    while x < st.sides[s]["facade"] + 60:
        bw = U(8.0, 20.0)
        hgt = U(8.0, 25.0)
        zf = st.cross[1] + 0.05
        inst = _facade_inst(sc, 1.0, 2, zf, x, hgt)
        sc.poly(sc.front(zf, s * x, s * (x + bw), 0.0, hgt), BUILDING, inst)
        x += bw


def _draw_street_end(sc: _Scene, z_end: float) -> None:
    """A row of buildings across the street at depth z_end."""
    U = sc.rng.uniform
    x = -80.0
    while x < 80.0:
        bw = U(6.0, 20.0)
        hgt = U(8.0, 30.0)
        inst = _facade_inst(sc, U(0.85, 1.05), 2, z_end, x, hgt)
        sc.poly(sc.front(z_end, x, x + bw, 0.0, hgt), BUILDING, inst)
        x += bw


def _draw_walls_fences_hedges(sc: _Scene, st: _Street) -> None:
    """Sometimes a wall, fence or hedge along the back of a sidewalk."""
    rng, U = sc.rng, sc.rng.uniform
    for s in SIDES:
        if rng.random() < 0.4:
            c = st.sides[s]
            cls = int(rng.choice([WALL, FENCE, VEGETATION]))
            X = s * (c["edge"] + c["sw"]) if c["terr"] > 0 else s * (c["facade"] - 0.3)
            z0 = U(3.0, 30.0)
            z1 = z0 + U(5.0, 40.0)
            hgt = U(0.7, 2.2)
            inst = sc.new(cls)
            if cls == FENCE:  # vertical bars (period su, bar fraction wf), darker gaps
                dark = np.array(sc.inst_color[inst]) * U(0.3, 0.6)
                sc.facades[inst] = (1.0, X, z0, U(0.12, 0.3), U(0.3, 0.6), 0.0, 1.0, 1.01, hgt + 1.0, 0.0,
                                    *dark.tolist())
            sc.poly(sc.side(X, z0, z1, 0.0, hgt), cls, inst)


def _place_poles(sc: _Scene, st: _Street) -> None:
    """Street lamps, sign posts, traffic-light posts and plain poles along both kerbs; at
    least one sign at 6-30 m."""
    rng, U = sc.rng, sc.rng.uniform
    poles: list[tuple[float, int, str]] = []
    for s in SIDES:
        z = U(5.0, 15.0)
        while z < st.z_obj:
            if not st.in_cross(z):
                kind = str(rng.choice(["lamp", "sign", "light", "plain"], p=[0.35, 0.35, 0.2, 0.1]))
                poles.append((z, s, kind))
            z += U(9.0, 28.0)
    if not any(k == "sign" and 6.0 < z < 30.0 for z, _, k in poles):
        near = [i for i, (z, _, _) in enumerate(poles) if 6.0 < z < 30.0]
        if near:
            z, s, _ = poles[near[0]]
            poles[near[0]] = (z, s, "sign")
        else:
            z = U(7.0, 20.0)
            while st.in_cross(z):
                z = U(7.0, 20.0)
            poles.append((z, 1 if rng.random() < 0.5 else -1, "sign"))
    for z, s, kind in poles:
        st.add(z, _draw_pole, s * (st.sides[s]["edge"] + U(0.3, 0.7)), z, s, kind)


def _place_sidewalk_objects(sc: _Scene, st: _Street, s: int) -> None:
    """Side s: trees, pedestrians, street furniture, a pram, parked bicycles, people crossing."""
    _place_trees(sc, st, s)
    _place_pedestrians(sc, st, s)
    _place_street_furniture(sc, st, s)
    _place_bicycles_and_crossing(sc, st, s)


def _place_trees(sc: _Scene, st: _Street, s: int) -> None:
    """Often a row of trees on the sidewalk or terrain strip of side s."""
    rng, U = sc.rng, sc.rng.uniform
    c = st.sides[s]
    if rng.random() < 0.55:
        z = U(4.0, 14.0)
        while z < min(st.z_obj, 80.0):
            if not st.in_cross(z, 2.0):
                if c["terr"] > 0 and rng.random() < 0.6:
                    X = s * (c["edge"] + c["sw"] + U(0.3, c["terr"]))
                else:
                    X = s * (c["edge"] + U(0.8, max(0.9, c["sw"] - 0.4)))
                st.add(z, _draw_tree, X, z)
            z += U(7.0, 18.0)


def _place_pedestrians(sc: _Scene, st: _Street, s: int) -> None:
    """Up to five pedestrians on the sidewalk of side s."""
    rng, U = sc.rng, sc.rng.uniform
    c = st.sides[s]
    for _ in range(int(rng.integers(0, 6))):
        z = U(3.5, 50.0)
        if not st.in_cross(z):
            st.add(z, _draw_person, s * (c["edge"] + U(0.4, max(0.5, c["sw"] - 0.3))), z)


def _draw_box(sc: _Scene, Z: float, X0: float, X1: float, h0: float, h1: float, cls: int) -> None:
    """A void object: a box facing the camera at depth Z from X0 to X1, h0 to h1 m high."""
    sc.poly(sc.front(Z, X0, X1, h0, h1), cls, sc.new(cls))


def _place_street_furniture(sc: _Scene, st: _Street, s: int) -> None:
    """Bins, boxes and benches (void 'static') and sometimes a pram or cart (void 'dynamic')."""
    rng, U = sc.rng, sc.rng.uniform
    c = st.sides[s]
    for _ in range(int(rng.integers(0, 3))):
        z = U(4.0, 40.0)
        if not st.in_cross(z):
            X = s * (c["edge"] + c["sw"] - U(0.3, 0.8))
            w, h = U(0.4, 1.2), U(0.5, 1.3)
            st.add(z, _draw_box, z, X - w / 2, X + w / 2, 0, h, STATIC)
    if rng.random() < 0.12:
        z = U(5.0, 30.0)
        X = s * (c["edge"] + U(0.5, c["sw"]))
        st.add(z, _draw_box, z, X - 0.35, X + 0.35, 0.1, 1.0, DYNAMIC)


def _place_bicycles_and_crossing(sc: _Scene, st: _Street, s: int) -> None:
    """Sometimes bicycles parked along the facade of side s, and people on the zebra crossing."""
    rng, U = sc.rng, sc.rng.uniform
    c = st.sides[s]
    if rng.random() < 0.2:
        z = U(5.0, 25.0)
        for k in range(int(rng.integers(1, 4))):
            st.add(z + 0.8 * k, _draw_parked_bicycle, s * (c["facade"] - 0.4), z + 0.8 * k)
    if st.cross and rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 4))):
            st.add(st.cross[0] - U(1.2, 3.8), _draw_person, U(-c["lanes_edge"], c["lanes_edge"]),
                   st.cross[0] - U(1.2, 3.8))


def _place_vehicles(sc: _Scene, st: _Street) -> None:
    """Traffic in every lane (oncoming on the left), cars parked along the kerbs, cyclists."""
    rng, U = sc.rng, sc.rng.uniform
    z_min = max(4.0, sc.f * sc.cam_h / max(sc.h - sc.yh, 1.0) * 1.1)  # the bottom row's depth, and a bit
    for k in range(-st.n_lanes[-1], st.n_lanes[1] + 1):
        X = k * st.lane_w + rng.normal(0, 0.2)
        oncoming = k < 0
        z = (U(z_min + 4.0, 25.0) if k == 0 else U(z_min, 30.0))
        while z < min(st.z_obj, 90.0):
            if rng.random() < 0.65 and not st.in_cross(z, 5.0):
                cls = int(rng.choice([CAR, TRUCK, BUS], p=[0.84, 0.09, 0.07]))
                st.add(z, _draw_vehicle, X, z, cls, oncoming)
                z += 14.0 if cls != CAR else 6.0
            z += U(4.0, 25.0)
    for s in SIDES:
        c = st.sides[s]
        if c["park"] and rng.random() < 0.8:
            X = s * (c["lanes_edge"] + 1.1)
            z = U(z_min * 0.8, 12.0)
            while z < min(st.z_obj, 80.0):
                if rng.random() < 0.75 and not st.in_cross(z, 3.0):
                    st.add(z, _draw_vehicle, X, z, CAR, False)
                z += U(5.0, 7.5)
        if rng.random() < 0.15:
            z = U(8.0, 40.0)
            st.add(z, _draw_cyclist, s * (c["lanes_edge"] - 0.6), z)


def _draw_void(sc: _Scene) -> None:
    """Void in front of everything: the ego vehicle's bonnet, a rectification border, dark
    out-of-roi corners."""
    rng, U, H, W = sc.rng, sc.rng.uniform, sc.h, sc.w
    if rng.random() < 0.85:
        rx = U(0.6, 0.9) * W
        ry = U(0.12, 0.25) * H
        top = H - U(0.03, 0.09) * H
        sc.ellipse(W / 2 + U(-0.05, 0.05) * W, top + ry, rx, ry, EGO, sc.new(EGO))
    if rng.random() < 0.3:
        inst = sc.new(BORDER)
        for s in (0, 1):
            bw = U(0.005, 0.02) * W
            xe = 0.0 if s == 0 else float(W)
            xi = bw if s == 0 else W - bw
            sc.poly([(xe, 0), (xi, 0), (xi + (bw if s == 0 else -bw), H / 2), (xi, H), (xe, H)], BORDER, inst)
    if rng.random() < 0.2:
        inst = sc.new(OUT_OF_ROI)
        r = U(0.04, 0.1) * W
        for cx in (0.0, float(W)):
            sc.ellipse(cx, float(H), r, r, OUT_OF_ROI, inst)


# ----------------------------------------------------------------------------------------
# colouring
# ----------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, h: int, w: int, gh: int, gw: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a random gh x gw grid upsampled bicubically."""
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(g).resize((w, h), Image.Resampling.BICUBIC))


def _lut(default: float, values: dict[int, float]) -> np.ndarray:
    lut = np.full(256, default, np.float32)
    for k, v in values.items():
        lut[k] = v
    return lut


_LF_AMP = _lut(0.07, {VEGETATION: 0.2, TERRAIN: 0.15, SKY: 0.03, ROAD: 0.08})
_MF_AMP = _lut(4.0, {VEGETATION: 28.0, TERRAIN: 16.0, ROAD: 5.0, SIDEWALK: 7.0, BUILDING: 7.0, SKY: 1.5})
_HF_AMP = _lut(2.0, {VEGETATION: 16.0, TERRAIN: 10.0, ROAD: 5.0, SIDEWALK: 5.0, SKY: 0.5})


def _render(sc: _Scene) -> np.ndarray:
    rng = sc.rng
    U = rng.uniform
    H, W = sc.h, sc.w
    lab = np.asarray(sc.lab)
    ins = np.asarray(sc.ins)
    det = np.asarray(sc.det)
    img = np.asarray(sc.inst_color, np.float32)[ins]  # H, W, 3

    ys = np.arange(H, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(W, dtype=np.float32)[None, :] + 0.5

    # sky: brighter / hazier towards the horizon, clouds
    m = lab == SKY
    if m.any():
        t = np.broadcast_to(_pow15(np.clip(ys / max(sc.yh, 1.0), 0, 1)), (H, W))[m][:, None]
        haze = np.array([U(200, 235), U(205, 235), U(210, 240)], np.float32)
        img[m] = img[m] * (1 - 0.6 * t) + haze * (0.6 * t)
        cloud = _smooth_field(rng, H, W, 3, 6) + 0.4 * _smooth_field(rng, H, W, 6, 12)
        cover = U(0.0, 1.2)
        a = np.clip((cloud[m] - 1.0 + cover) * 0.8, 0, 0.9)[:, None]
        img[m] = img[m] * (1 - a) + np.float32(U(170, 245)) * a

    # facade patterns (windows, fence bars), computed in plane coordinates
    if sc.facades:
        n = len(sc.inst_color)
        tab = np.zeros((n, 13), np.float32)
        for i, row in sc.facades.items():
            tab[i] = row
        sel = tab[ins, 0] > 0
        if sel.any():
            yi, xi = np.nonzero(sel)
            r = tab[ins[yi, xi]]
            dx = xi + 0.5 - sc.xv
            dy = yi + 0.5 - sc.yh
            on_x = r[:, 0] == 1
            dxs = np.where(np.abs(dx) < 1e-3, 1e-3, dx)
            Z = np.abs(np.where(on_x, sc.f * r[:, 1] / dxs, r[:, 1]))
            u = np.where(on_x, Z, dx * Z / sc.f)
            v = sc.cam_h - dy * Z / sc.f
            fu = ((u - r[:, 2]) / r[:, 3]) % 1.0
            fv = ((v - r[:, 5]) / r[:, 6]) % 1.0
            win = (fu < r[:, 4]) & (fv < r[:, 7]) & (v > r[:, 9]) & (v < r[:, 8] - 0.6)
            shop = (r[:, 9] > 0) & (v > 0.3) & (v < r[:, 9] - 0.5) & ((((u - r[:, 2]) / (2 * r[:, 3])) % 1.0) < 0.7)
            pat = (win | shop).astype(np.float32)
            frac = r[:, 4] * np.minimum(r[:, 7], 1.0)
            res = np.clip((sc.f * r[:, 3] / np.maximum(Z, 0.1) - 2.0) / 3.0, 0, 1)  # pattern resolvable?
            alpha = (res * pat + (1 - res) * frac)[:, None]
            img[yi, xi] = img[yi, xi] * (1 - alpha) + r[:, 10:13] * alpha

    # ground-plane patterns: lane paint on the main road, paving joints on sidewalks
    below = np.broadcast_to(ys > sc.yh + 1.0, (H, W))
    for cls, use in ((ROAD, bool(sc.markings)), (SIDEWALK, True)):
        if not use:
            continue
        m = (lab == cls) & below & ((ins == sc.road_inst) if cls == ROAD else True)
        if not m.any():
            continue
        yi, xi = np.nonzero(m)
        Z = sc.f * sc.cam_h / (yi + 0.5 - sc.yh)
        X = (xi + 0.5 - sc.xv) * Z / sc.f
        mpp = Z / sc.f  # metres per pixel
        if cls == ROAD:
            alpha = np.zeros(len(yi), np.float32)
            for xm, hw, dashed, phase in sc.markings:
                hwe = np.maximum(hw, 0.5 * mpp)
                on = np.abs(X - xm) < hwe
                if dashed:
                    on &= ((Z + phase) % 9.0) < 3.0
                alpha = np.maximum(alpha, on * (hw / hwe))
            paint = np.array([U(190, 235)] * 3, np.float32) * np.array([1.0, 1.0, U(0.85, 1.0)], np.float32)
            alpha *= U(0.55, 0.95)
            img[yi, xi] = img[yi, xi] * (1 - alpha[:, None]) + paint * alpha[:, None]
        else:
            ts = U(0.3, 0.7)
            lw = 0.02
            dist = np.minimum(np.abs(((X / ts + 0.5) % 1.0) - 0.5), np.abs(((Z / ts + 0.5) % 1.0) - 0.5)) * ts
            lwe = np.maximum(lw, 0.5 * mpp)
            alpha = (dist < lwe) * (lw / lwe) * 0.5
            img[yi, xi] *= (1 - alpha)[:, None]

    # detail colours (glass, paint, lamps, tyres, skin, trousers)
    dc = sc.det_color
    dc[D_GLASS] = np.array([40, 48, 58]) * U(0.7, 1.8)
    dc[D_PAINT] = [U(200, 235)] * 3
    dc[D_TAIL] = [U(150, 210), U(15, 40), U(20, 40)]
    dc[D_HEAD] = [U(210, 250), U(210, 245), U(180, 220)]
    dc[D_TYRE] = [U(15, 35)] * 3
    dc[D_WHITE] = [U(200, 240)] * 3
    dc[D_LEGS] = _PALETTES[CAR][int(rng.integers(len(_PALETTES[CAR])))]
    dc[D_SKIN] = [U(90, 220), U(60, 170), U(40, 140)]
    dc[D_LIT] = [(60, 220, 120), (230, 40, 30), (240, 170, 20)][int(rng.integers(3))]
    dc[D_DARK] = [U(20, 45)] * 3
    m = det > 0
    img[m] = dc[det[m]]

    # texture: smooth luminance modulation, blotches, per-pixel grain (class-dependent)
    lf = _smooth_field(rng, H, W, 4, 8)
    mf = _smooth_field(rng, H, W, max(4, H // 6), max(4, W // 6))
    grain = rng.standard_normal((H, W), dtype=np.float32)
    img *= (1.0 + _LF_AMP[lab] * lf)[..., None]
    img += (_MF_AMP[lab] * mf + _HF_AMP[lab] * grain)[..., None]

    # shadows on the ground: cast (sunny days) and contact shadows under objects
    sh = np.asarray(sc.shadow)
    on_ground = np.isin(lab, _GROUND_IDS)
    if sc.sunny:
        img[(sh == 1) & on_ground] *= np.float32(U(0.45, 0.7))
    img[(sh == 2) & on_ground] *= np.float32(U(0.5, 0.7))

    # camera: exposure, white balance, gradients, vignetting, gamma, blur, sensor noise
    gain = U(0.7, 1.25) * np.array([U(0.88, 1.12), U(0.92, 1.08), U(0.88, 1.12)], np.float32)
    img *= gain
    img *= (1.0 + U(-0.25, 0.25) * (ys / H - 0.5) + U(-0.2, 0.2) * (xs / W - 0.5))[..., None]
    r2 = ((xs - W / 2) / (W / 2)) ** 2 + ((ys - H / 2) / (H / 2)) ** 2
    img *= (1.0 - U(0.0, 0.25) * r2 / 2)[..., None]
    gamma = U(0.8, 1.2)  # applied through a table: no SIMD-dependent pow, same bytes on any CPU
    table = np.array([255.0 * math.pow(k / 4080.0, gamma) for k in range(4081)], np.float32)
    img = table[(np.clip(img, 0, 255) * 16.0).astype(np.int32)]
    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(U(0.3, 0.7) * max(1.0, W / 512) ** 0.5))
    img = np.asarray(out, np.float32) + rng.standard_normal((H, W, 3), dtype=np.float32) * np.float32(U(1.5, 5.0))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _unlabel_holes(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """Small unlabelled (id 0) blobs, as annotators leave them; the image is unchanged."""
    im = Image.fromarray(label)
    if rng.random() < 0.5:
        H, W = label.shape
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            r = rng.uniform(0.005, 0.02) * W
            d.polygon([(cx + r * c * rng.uniform(0.5, 1.2), cy + r * s * rng.uniform(0.5, 1.2))
                       for c, s in _circle(6)[:-1]], fill=UNLABELED)
    return np.asarray(im)


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------


def _rng_for(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


def render(seed: int, split: str, index: int, height: int = 128, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Draw scene ``index`` of ``split``: (RGB uint8 [H, W, 3], Cityscapes label ids uint8 [H, W])."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0 (got seed={seed}, index={index})")
    if height < 16 or width < 16:
        raise ValueError(f"image size {height}x{width} is too small: use at least 16x16 (e.g. 128x256)")
    rng = _rng_for(seed, split, index)
    sc = _Scene(rng, height, width)
    _compose(sc)
    image = _render(sc)
    label = _unlabel_holes(rng, np.asarray(sc.lab).copy())
    return image, label


def sample_name(split: str, index: int) -> tuple[str, int, int]:
    """(city, seq, frame) of image ``index``: cities take turns, so names do not depend on the count."""
    cities = CITY_NAMES.get(split, (f"{split}town",))
    return cities[index % len(cities)], index // len(cities), FRAME


def image_path(root: str | os.PathLike[str], split: str, index: int) -> Path:
    city, seq, frame = sample_name(split, index)
    return Path(root) / "leftImg8bit" / split / city / f"{city}_{seq:06d}_{frame:06d}_leftImg8bit.png"


def label_path(root: str | os.PathLike[str], split: str, index: int) -> Path:
    city, seq, frame = sample_name(split, index)
    return Path(root) / "gtFine" / split / city / f"{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png"


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=3)


def _remove_stale(out: Path, split: str, keep: set[Path]) -> None:
    """Delete scene PNGs of this split left by an earlier, larger run."""
    for sub, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png")):
        d = out / sub / split
        if d.is_dir():
            for p in d.glob(f"*/*{suffix}"):
                if p not in keep:
                    p.unlink()


def generate(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    splits: Mapping[str, int] = DEFAULT_SPLITS,
    height: int = 128,
    width: int = 256,
    progress: bool = True,
) -> dict[str, int]:
    """Write synthetic street scenes in the Cityscapes layout under ``out_dir``.

    ``splits`` maps split name -> number of images. Each PNG is written atomically; scene
    PNGs of these splits that an earlier run left beyond the requested counts are deleted.
    Returns the number of images written per split.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for split, n in splits.items():
        if not split or "/" in split or split.startswith(".") or n < 0:
            raise ValueError(f"bad split {split!r}: {n} (use e.g. {{'train': 160, 'val': 40}})")
    out = Path(out_dir)
    jobs = [(split, i) for split, n in splits.items() for i in range(int(n))]
    for split in splits:
        keep = {image_path(out, s, i) for s, i in jobs if s == split}
        keep |= {label_path(out, s, i) for s, i in jobs if s == split}
        _remove_stale(out, split, keep)
    it: Any = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="synthetic scenes", unit="img")
    counts = {split: 0 for split in splits}
    for split, i in it:
        image, label = render(seed, split, i, height, width)
        _save_png(image_path(out, split, i), image)
        _save_png(label_path(out, split, i), label)
        counts[split] += 1
    return counts
