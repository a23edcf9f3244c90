"""Cost of the claim-specific metrics (issue 20): Boundary IoU counts and object-size recall
against what evaluation already does per image (model forward + argmax + confusion matrix).

    OMP_NUM_THREADS=1 python bench/bench_claims_metrics.py          # three sizes, all config.yaml models at 128x256
    OMP_NUM_THREADS=1 python bench/bench_claims_metrics.py --quick

Target: ``segbench.metrics.boundary_iou_counts`` + ``segment_recall_counts`` add at most 25%
to an evaluation. Per image, in the same best-of-N rounds (:func:`benchlib.best_of`, 1 torch
thread as evaluation jobs use):

* evaluation today: the forward of a batch of 4 images (``torch.no_grad``, eval mode), the
  argmax and ``confusion_matrix``, divided by 4 (data loading is left out, which makes the
  ratio larger than in a real evaluation);
* added: ``boundary_iou_counts`` and ``segment_recall_counts`` on each of the 4 images
  (evaluation calls them per image), divided by 4.

The checked ratio (added / evaluation) uses config.yaml's cheapest model, ``gradnet``
(``bench_models.CPU_PRESETS``): the smallest forward makes the largest ratio. Sizes: the
synthetic dataset's 128x256 (19 classes; every config.yaml model reported), Cityscapes'
evaluation size 512x1024 (19 classes) and ADE20K's 512x512 with 150 classes. Label maps are
synthetic street scenes (``segbench.data.synthetic.render``; for 150 classes their classes
are moved to random ADE20K indices and extra rectangles of other classes are drawn), and the
prediction is the label map shifted by (2, 3) pixels with a few wrong rectangles, so bands
and segments look like a real evaluation's, not like pixel noise.
"""

from __future__ import annotations

import sys

import benchlib  # noqa: F401  (sys.path, environment)
from benchlib import LoadCheck, best_of, figure, header, load_figure, show

import numpy as np
import torch

from bench_models import CPU_PRESETS
from segbench.data.cityscapes_labels import id_to_train_id_lut
from segbench.data.synthetic import render
from segbench.metrics import boundary_dilation, boundary_iou_counts, confusion_matrix, segment_recall_counts
from segbench.models import build_model

BATCH = 4
TARGET_PCT = 25.0
CHECKED_MODEL = "gradnet"
IGNORE = 255


def scene_labels(height: int, width: int, classes: int, count: int = BATCH, seed: int = 0) -> np.ndarray:
    """``count`` label maps [count, H, W] (int64; 255 = ignore) of synthetic street scenes
    in Cityscapes train ids; with ``classes`` > 19 the 19 ids are sent to random distinct
    indices in [0, classes) and 15 rectangles of random classes are drawn on each map."""
    lut = id_to_train_id_lut()
    rng = np.random.default_rng(seed)
    maps = []
    for i in range(count):
        _, label_ids = render(seed, "val", i, height, width)
        lab = lut[label_ids].astype(np.int64)
        if classes > 19:
            move = np.append(rng.choice(classes, size=19, replace=False), np.zeros(256 - 19, np.int64))
            move[IGNORE] = IGNORE
            lab = move[lab]
            for _ in range(15):
                h, w = rng.integers(4, height // 4), rng.integers(4, width // 4)
                y, x = rng.integers(0, height - h), rng.integers(0, width - w)
                lab[y:y + h, x:x + w] = rng.integers(0, classes)
        maps.append(lab)
    return np.stack(maps)


def prediction(labels: np.ndarray, classes: int, seed: int = 1) -> np.ndarray:
    """The label maps shifted by (2, 3) pixels (ignored pixels predicted as class 0), with
    5 wrong rectangles per map: boundaries off by a few pixels, some objects missed."""
    rng = np.random.default_rng(seed)
    pred = np.roll(np.where(labels == IGNORE, 0, labels), (2, 3), (1, 2))
    _, height, width = labels.shape
    for p in pred:
        for _ in range(5):
            h, w = rng.integers(4, height // 6), rng.integers(4, width // 6)
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            p[y:y + h, x:x + w] = rng.integers(0, classes)
    return pred


def overhead(name: str, height: int, width: int, classes: int, models: list[str], rounds: int) -> list[dict]:
    """Time evaluation's per-image work with each model and the added metrics at one size."""
    target = torch.from_numpy(scene_labels(height, width, classes))
    pred = torch.from_numpy(prediction(target.numpy(), classes))
    images = torch.randn(BATCH, 3, height, width, generator=torch.Generator().manual_seed(0))
    nets = {m: build_model(m, classes, **CPU_PRESETS[m]).eval() for m in models}

    def evaluation(net):
        def run():
            with torch.no_grad():
                out = net(images).argmax(1)
            confusion_matrix(out, target, classes)
        return run

    def boundary():
        for p, t in zip(pred, target):
            boundary_iou_counts(p, t, classes)

    def segments():
        for p, t in zip(pred, target):
            segment_recall_counts(p, t, classes)

    fns = {"boundary": boundary, "segments": segments, **{m: evaluation(nets[m]) for m in models}}
    t = {k: v / BATCH for k, v in best_of(fns, rounds).items()}  # per image
    added = t["boundary"] + t["segments"]
    present = np.mean([len(np.unique(x[x != IGNORE])) for x in target.numpy()])
    note = (f"{classes} classes, {present:.0f} present per image on average, d = "
            f"{boundary_dilation(height, width)} px")
    out = [
        show(figure(f"{name}: boundary_iou_counts per image", 1000 * t["boundary"], "ms", note=note)),
        show(figure(f"{name}: segment_recall_counts per image", 1000 * t["segments"], "ms")),
    ]
    for m in models:
        base = t[m]
        pct = 100 * added / base
        label = f"{name}: {m} forward+argmax+confusion per image"
        out.append(show(figure(label, 1000 * base, "ms", note=f"batch {BATCH}, divided by {BATCH}")))
        if m == CHECKED_MODEL:
            out.append(show(figure(f"{name}: added time / evaluation time ({m}, the cheapest model)", pct, "%",
                                   "<=", TARGET_PCT)))
        else:
            out.append(show(figure(f"{name}: added time / evaluation time ({m})", pct, "%")))
    return out


def main(argv=None) -> int:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (best of; default 3, quick 2)")
    a = ap.parse_args(argv)
    rounds = a.rounds or (2 if a.quick else 3)
    torch.set_num_threads(1)
    header(f"Claim-specific metrics vs evaluation (torch {torch.__version__}, 1 thread, best of {rounds})",
           busy=False)
    check = LoadCheck()
    check.print_before()
    small_models = [CHECKED_MODEL] if a.quick else list(CPU_PRESETS)
    figs = []
    figs += overhead("synthetic 128x256", 128, 256, 19, small_models, rounds)
    figs += overhead("Cityscapes 512x1024", 512, 1024, 19, [CHECKED_MODEL], rounds)
    figs += overhead("ADE20K 512x512", 512, 512, 150, [CHECKED_MODEL], rounds)
    figs.append(show(load_figure(check.verdict())))
    benchlib.write_json(a.json, "bench_claims_metrics", figs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
