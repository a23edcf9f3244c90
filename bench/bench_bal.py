"""Cost of the boundary-aware loss's weight map against a DeepLabV3-ResNet50 training step.

Issue 4's target: computing E_G at 512x1024 with a 35-tap kernel costs at most 10% of a
DeepLabV3-ResNet50 forward + backward at that size on CPU. Both are measured in this one
run (same machine, same threads) and the ratios printed:

    PYTHONPATH=src python bench/bench_bal.py                 # batch 2, 2 threads
    PYTHONPATH=src python bench/bench_bal.py --model-repeats 1 --repeats 3
    PYTHONPATH=src python bench/bench_bal.py --skip-model    # the weight maps alone

Labels are synthetic street scenes (segbench.data.synthetic) at the benchmark size, so the
edge density is that of a Cityscapes-like scene. Each time is the best of several repeats
(after one warm-up; the median is printed too): on a machine shared with other jobs the
best is the stable estimate of the cost, and the ratios use the best times.
Nothing here gates CI.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from segbench.data.cityscapes_labels import id_to_train_id_lut
from segbench.data.synthetic import render
from segbench.losses import build_loss
from segbench.losses.bal import boundary_weight

SETTINGS = [  # (label, boundary_weight options)
    ("paper gaussian s35 sg3 down 4 (Table 1 best)", dict(kernel="gaussian", size=35, sigma=3.0, beta=0.5, down=4)),
    ("paper gaussian s35 sg3 down 2", dict(kernel="gaussian", size=35, sigma=3.0, beta=0.5, down=2)),
    ("paper gaussian s35 sg3 down 1", dict(kernel="gaussian", size=35, sigma=3.0, beta=0.5, down=1)),
    ("paper linear   s35     down 4", dict(kernel="linear", size=35, beta=0.5, down=4)),
    ("paper linear   s35     down 1", dict(kernel="linear", size=35, beta=0.5, down=1)),
    ("reference      s35 sg3 down 4 (authors' code)", dict(variant="reference", size=35, sigma=3.0, beta=0.5, down=4)),
]


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best, median) seconds of ``repeats`` calls after one warm-up."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def labels_batch(batch: int, height: int, width: int) -> torch.Tensor:
    lut = id_to_train_id_lut()
    maps = [lut[render(0, "train", i, height, width)[1]].astype(np.int64) for i in range(batch)]
    return torch.as_tensor(np.stack(maps))


def model_step(batch: int, height: int, width: int, repeats: int) -> float:
    from segbench.models import build_model

    model = build_model("deeplabv3", 21, depth=50)
    model.train()
    images = torch.randn(batch, 3, height, width)
    labels = torch.randint(0, 21, (batch, height, width))
    ce = build_loss({"type": "ce"})

    def step():
        model.zero_grad(set_to_none=True)
        ce(model(images), labels).backward()

    return timed(step, repeats)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2, help="images per step (2: the smallest batch DeepLabV3's image-pooling BatchNorm trains with)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats of each weight map")
    ap.add_argument("--model-repeats", type=int, default=2, help="timed DeepLabV3 steps (each takes seconds)")
    ap.add_argument("--skip-model", action="store_true", help="time the weight maps only")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"batch {a.batch} at {a.height}x{a.width}")

    labels = labels_batch(a.batch, a.height, a.width)
    rows = []
    for label, opts in SETTINGS:
        rows.append((label, timed(lambda: boundary_weight(labels, 19, **opts), a.repeats)))
    # the whole loss for comparison: E_G plus the weighted CE, forward + backward, 19 classes
    logits = torch.randn(a.batch, 19, a.height, a.width, requires_grad=True)
    for name, spec in (("CE loss fwd+bwd (19 classes)", {"type": "ce"}),
                       ("BAL loss fwd+bwd (19 classes, best row)", {"type": "bal"})):
        loss_fn = build_loss(spec)
        rows.append((name, timed(lambda: loss_fn(logits, labels).backward(), a.repeats)))

    base = None
    if not a.skip_model:
        base, base_med = model_step(a.batch, a.height, a.width, a.model_repeats)
        print(f"DeepLabV3-ResNet50 (21 classes) forward + CE + backward: best {base * 1000:.0f} ms, "
              f"median {base_med * 1000:.0f} ms per step")
    width = max(len(r[0]) for r in rows)
    print(f"{'setting':<{width}}  {'best ms':>8}  {'median ms':>9}  {'of the DeepLabV3 step':>22}")
    for label, (t, med) in rows:
        ratio = f"{100 * t / base:.2f}%" if base else "-"
        print(f"{label:<{width}}  {t * 1000:8.1f}  {med * 1000:9.1f}  {ratio:>22}")
    if base:
        worst = max(t for _, (t, _) in rows[: len(SETTINGS)])
        verdict = "meets" if worst <= 0.10 * base else "MISSES"
        print(f"slowest weight map: {100 * worst / base:.2f}% of the step; {verdict} the 10% target")


if __name__ == "__main__":
    main()
