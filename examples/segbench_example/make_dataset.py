"""Write a tiny dataset folder in the layout of segbench's ``folder`` source.

    python -m segbench_example.make_dataset /tmp/shapes

writes ``classes.csv`` (3 classes: background, square, disc, with colours) and, for the
splits train (8 images) and val (4), ``images/{split}/NNN.png`` (RGB) and
``labels/{split}/NNN.png`` (8-bit train ids 0..2, 255 on a 2-pixel border: not scored).
The same seed writes the same files.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = [("background", (70, 70, 70)), ("square", (220, 20, 60)), ("disc", (0, 0, 142))]


def make_dataset(out: str | Path, *, train: int = 8, val: int = 4, height: int = 64, width: int = 96,
                 seed: int = 0) -> Path:
    out = Path(out)
    rng = random.Random(seed)
    lines = ["name,r,g,b"] + [f"{name},{r},{g},{b}" for name, (r, g, b) in CLASSES]
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    yy, xx = np.mgrid[:height, :width]
    for split, n in (("train", train), ("val", val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = np.zeros((height, width), np.uint8)
            s = rng.randint(10, 20)
            y, x = rng.randint(0, height - s), rng.randint(0, width // 2 - s)
            label[y:y + s, x:x + s] = 1
            r = rng.randint(6, 12)
            cy, cx = rng.randint(r, height - r), rng.randint(width // 2 + r, width - r)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
            colours = np.array([c for _, c in CLASSES], np.float32)
            image = colours[label] * 0.7 + np.array(rng.choices(range(40, 90), k=3), np.float32)
            noise = np.random.default_rng(seed * 1000 + i).normal(0, 12, image.shape)
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
            label[:2], label[-2:], label[:, :2], label[:, -2:] = 255, 255, 255, 255
            Image.fromarray(image).save(out / "images" / split / f"{i:03d}.png")
            Image.fromarray(label).save(out / "labels" / split / f"{i:03d}.png")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder to write")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(f"wrote {make_dataset(a.out, seed=a.seed)}")


if __name__ == "__main__":
    main()
