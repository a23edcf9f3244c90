"""Render docs/img/corruptions.png: one val scene of the embedded synthetic dataset under every
corruption of segbench.data.corruptions at severities 1, 3 and 5 (a grid, rows = corruptions,
columns = clean and the severities), and time each corruption on that image size.

    PYTHONPATH=src python bench/render_corruptions.py                      # docs/img/corruptions.png
    PYTHONPATH=src python bench/render_corruptions.py --size 1024x2048 --out /tmp/c.png   # Cityscapes size

The scene is val image 0 of the default config's dataset (seed 0, 128x256), drawn by
segbench.data.synthetic.render, so no prepared dataset is needed; the corruptions' key is the
file name the prepared dataset gives that image, as in the robustness evaluation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from segbench.data.corruptions import CORRUPTIONS, corrupt  # noqa: E402
from segbench.data.synthetic import image_path, render  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/corruptions.png")
    ap.add_argument("--size", default="128x256", help="HEIGHTxWIDTH of the scene")
    ap.add_argument("--index", type=int, default=0, help="val scene index")
    ap.add_argument("--severities", default="1,3,5")
    a = ap.parse_args(argv)
    height, width = (int(v) for v in a.size.split("x"))
    severities = [int(s) for s in a.severities.split(",")]
    image, _ = render(0, "val", a.index, height, width)
    key = image_path("", "val", a.index).name

    fig, axes = plt.subplots(len(CORRUPTIONS), len(severities) + 1,
                             figsize=(2.4 * (len(severities) + 1), 1.35 * len(CORRUPTIONS)), squeeze=False)
    for r, name in enumerate(CORRUPTIONS):
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        corrupt(image, name, severities[0], key)  # warm-up: the first call imports albumentations
        seconds = []
        for c, severity in enumerate(severities, start=1):
            t0 = time.perf_counter()
            out = corrupt(image, name, severity, key)
            seconds.append(time.perf_counter() - t0)
            axes[r, c].imshow(out)
        print(f"{name:15s} {1000 * sum(seconds) / len(seconds):8.2f} ms per {height}x{width} image "
              f"(mean of severities {a.severities})")
    for c, title in enumerate(["clean"] + [f"severity {s}" for s in severities]):
        axes[0, c].set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"segbench corruptions on a synthetic val scene ({height}x{width})", fontsize=10)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=80)  # full colour: a 256-colour palette would hide the noise it shows
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
