"""Evaluation: confusion-matrix accumulation throughput (Mpixel/s) of segbench.metrics,
against naive references, and a check that evaluation does one bincount per batch and reads
the checkpoint once.

    python bench/bench_eval.py            # batch 4 at 128x256 (default) and 512x1024 (paper), 19 classes
    python bench/bench_eval.py --quick

Throughput: ``segbench.metrics.confusion_matrix(pred, target, C)`` on int64 tensors of the
evaluation's shapes (argmax output and label, about 5% of the pixels ``ignore_index``), best
of N, in Mpixel/s of the batch; the references, timed in the same rounds on the same
tensors and checked to give the same matrix:

* ``per-class loop``: one bincount of the predictions per ground-truth class (C passes);
* ``np.histogram2d``: numpy's 2-D histogram of (target, pred) (what a first version often uses);
* ``numpy bincount``: the same single bincount in numpy, on CPU arrays, without range checks;
* ``proposed: ignore -> extra bin``: the same bincount with ignored pixels sent to an extra
  bin by ``torch.where`` instead of removed by boolean indexing (see :func:`where_extra_bin`).

One bincount per batch: ``segbench.engine.evaluate.evaluate_run`` runs on a small trained
run under ``torch.profiler``; the number of ``aten::bincount`` calls must equal the number
of val batches, and ``torch.load`` must be called once (the checkpoint read once).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import benchlib  # noqa: F401  (sys.path, environment)
from benchlib import best_of, figure, header, show

import numpy as np
import torch

from segbench.metrics import confusion_matrix

CLASSES = 19


def where_extra_bin(pred: torch.Tensor, target: torch.Tensor, classes: int, ignore_index: int = 255) -> torch.Tensor:
    """A proposed variant of segbench.metrics.confusion_matrix (same result, same single
    bincount): ignored pixels go to an extra bin C*C instead of being removed by boolean
    indexing (about 2/3 of the current function's time on CPU). Range checks: one aminmax
    of ``pred`` (all pixels: stricter than now, argmax output is always in range); a target
    outside [0, C) that is not ignore_index lands at or beyond the extra bin (caught by its
    count and the bincount's length) or is negative (bincount raises)."""
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    if p.numel():
        lo, hi = torch.aminmax(p)
        if lo < 0 or hi >= classes:
            raise ValueError(f"pred holds value {int(lo if lo < 0 else hi)} outside [0, {classes})")
    ignored = t == ignore_index
    idx = torch.where(ignored, classes * classes, t * classes + p)
    counts = torch.bincount(idx, minlength=classes * classes + 1)  # RuntimeError on negative targets
    if counts.numel() > classes * classes + 1 or int(counts[-1]) != int(ignored.sum()):
        raise ValueError(f"target holds a value outside [0, {classes}) that is not ignore_index={ignore_index}")
    return counts[:-1].reshape(classes, classes)


def make_batch(batch: int, h: int, w: int, classes: int = CLASSES, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (batch, h, w), generator=g)
    target[torch.rand(batch, h, w, generator=g) < 0.05] = 255
    pred = torch.where(torch.rand(batch, h, w, generator=g) < 0.7, target.clamp(max=classes - 1),
                       torch.randint(0, classes, (batch, h, w), generator=g))
    return pred, target


def per_class_loop(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    rows = [torch.bincount(pred[target == c], minlength=classes) for c in range(classes)]
    return torch.stack(rows)


def histogram2d(pred: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    keep = target != 255
    h, _, _ = np.histogram2d(target[keep], pred[keep], bins=classes, range=[[0, classes], [0, classes]])
    return h.astype(np.int64)


def numpy_bincount(pred: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    keep = target != 255
    return np.bincount(target[keep] * classes + pred[keep], minlength=classes * classes).reshape(classes, classes)


def throughput(batch: int, h: int, w: int, rounds: int) -> list[dict]:
    pred, target = make_batch(batch, h, w)
    pn, tn = pred.numpy(), target.numpy()
    ref = confusion_matrix(pred, target, CLASSES)
    assert torch.equal(per_class_loop(pred, target, CLASSES), ref)
    assert np.array_equal(histogram2d(pn, tn, CLASSES), ref.numpy())
    assert np.array_equal(numpy_bincount(pn, tn, CLASSES), ref.numpy())
    assert torch.equal(where_extra_bin(pred, target, CLASSES), ref)
    t = best_of({
        "segbench": lambda: confusion_matrix(pred, target, CLASSES),
        "loop": lambda: per_class_loop(pred, target, CLASSES),
        "hist2d": lambda: histogram2d(pn, tn, CLASSES),
        "np": lambda: numpy_bincount(pn, tn, CLASSES),
        "where": lambda: where_extra_bin(pred, target, CLASSES),
    }, rounds)
    mpix = pred.numel() / 1e6
    size = f"{batch}x{h}x{w}"
    out = [show(figure(f"confusion matrix throughput, batch {size}", mpix / t["segbench"], "Mpixel/s",
                       note="segbench.metrics.confusion_matrix", summary=True))]
    for key, label in (("loop", "per-class loop (C bincounts)"), ("hist2d", "np.histogram2d"),
                       ("np", "numpy bincount (no checks)"), ("where", "proposed: ignore -> extra bin")):
        out.append(show(figure(f"  {'variant' if key == 'where' else 'reference'}: {label}", mpix / t[key],
                               "Mpixel/s", note=f"{t[key] / t['segbench']:.2f}x segbench's time")))
    out.append(show(figure(f"speed-up over the per-class loop, batch {size}", t["loop"] / t["segbench"], "x",
                           ">=", 1.0)))
    return out


def count_calls_in_evaluate(tmp: Path) -> list[dict]:
    """Evaluate a tiny run (width-4 U-Net, 10 val images, batch 4) under the profiler."""
    from segbench.data.cityscapes import prepare_cityscapes
    from segbench.data.synthetic import generate
    from segbench.engine import evaluate as ev
    from segbench.io import read_json, write_json
    from segbench.models import build_model

    generate(tmp / "raw", seed=0, splits={"train": 1, "val": 10}, height=64, width=128, progress=False)
    prepare_cityscapes(tmp / "raw", tmp / "data", progress=False)
    meta = read_json(tmp / "data" / "meta.json")
    run = tmp / "run"
    run.mkdir()
    classes = int(meta["num_classes"])
    torch.save(build_model("unet", classes, width=4).state_dict(), run / "model.pt")
    write_json(run / "run.json", {"run_key": "bench/unet/ce/s0", "num_classes": classes,
                                  "class_names": meta["class_names"],
                                  "config": {"model": {"arch": "unet", "params": {"width": 4}}}})
    loads = []
    real_load = ev.torch.load

    def counting_load(*a, **k):
        loads.append(a[0] if a else k.get("f"))
        return real_load(*a, **k)

    batch = 4
    ev.torch.load = counting_load
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            ev.evaluate_run(run, tmp / "data", batch_size=batch, samples=2, threads=1, progress=False)
    finally:
        ev.torch.load = real_load
    batches = -(-10 // batch)
    bincounts = sum(e.count for e in prof.key_averages() if e.key == "aten::bincount")
    metrics = json.loads((run / "metrics.json").read_text())
    per_batch = bincounts / batches
    return [
        show(figure("bincount calls per val batch (evaluate_run)", per_batch, "",
                    status="PASS" if per_batch == 1 else "FAIL", op="<=", target=1.0,
                    note=f"{bincounts} aten::bincount for {batches} batches")),
        show(figure("checkpoint reads per evaluate_run", len(loads), "",
                    status="PASS" if len(loads) == 1 else "FAIL", op="<=", target=1.0, note="torch.load calls")),
        show(figure("metrics.json metric_mpixel_per_s (whole eval loop)", metrics.get("metric_mpixel_per_s"),
                    "Mpixel/s", note="model included; tiny model, 64x128")),
    ]


def main(argv=None) -> int:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (best of; default 5, quick 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (evaluation jobs use 1)")
    a = ap.parse_args(argv)
    rounds = a.rounds or (2 if a.quick else 5)
    torch.set_num_threads(a.threads)
    header(f"Evaluation (torch {torch.__version__}, {torch.get_num_threads()} thread(s), {CLASSES} classes, "
           f"best of {rounds})")
    figs = []
    figs += throughput(4, 128, 256, rounds)
    if not a.quick:
        figs += throughput(4, 512, 1024, rounds)
    else:
        figs += throughput(1, 512, 1024, rounds)
    with tempfile.TemporaryDirectory(prefix="segbench-bench-eval-") as tmp:
        t0 = time.perf_counter()
        figs += count_calls_in_evaluate(Path(tmp))
        print(f"  (evaluate_run check took {time.perf_counter() - t0:.1f} s)")
    benchlib.write_json(a.json, "bench_eval", figs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
