"""Robustness of a trained run: its val mIoU on corrupted copies of the val images.

One pass over the val split, one batch of images in memory at a time: each batch is read
once, then predicted clean and under every (corruption, severity) of
:mod:`segbench.data.corruptions` (deterministic per image: the image's file name seeds the
corruption). The model, the normalisation (:func:`segbench.data.dataset.to_tensor`), the
padding (:func:`segbench.data.dataset.pad_collate`), the batch size, the memory format and the
evaluation protocol (:func:`segbench.engine.inference.predict`: ``eval.mode``, ``eval.crop``,
``eval.stride``, ``eval.scales``, ``eval.flip``, recorded as ``eval_protocol``) are those of
``segbench evaluate``, so the clean mIoU computed here is the one in metrics.json.

Writes into the run directory (the contract of issue 20):

* ``robustness.json``: ``run_key``, ``clean_mIoU``, ``corruptions`` ({name: {"1": mIoU, ...}},
  names and severities in the order of the array below), ``mean_corrupted_mIoU`` (the mean
  over every corruption and severity), ``relative`` (mean_corrupted_mIoU / clean_mIoU),
  ``severities``, ``parameters`` (segbench.data.corruptions.PARAMETERS of the corruptions
  used), ``num_images``, ``seconds``, ``eval_protocol`` (as metrics.json's). Fractions in [0, 1]; a NaN
  is written as null.
* ``corrupted_iou_per_image.npy``: int64 [K corruptions, S severities, N images, 2, C]: per
  image and class the intersection (TP) and the union (TP + FP + FN) of the corrupted
  prediction (:func:`segbench.stats.iou_counts` of its confusion matrix; images in manifest
  order), all an mIoU and its bootstrap need: :func:`segbench.stats.mean_iou`. Not whole
  confusion matrices, which would take C times more (ADE20K at 5 severities: 14 GB per run,
  against 0.2 GB). It is written through a memory map, so the process never holds it whole.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segbench.data.corruptions import CORRUPTIONS, PARAMETERS, SEVERITIES, check, corrupt
from segbench.data.dataset import pad_collate, to_tensor
from segbench.engine.common import progress_kwargs
from segbench.engine.evaluate import load_for_evaluation
from segbench.engine.inference import eval_protocol, predict
from segbench.errors import UserError
from segbench.io import atomic_path, write_json
from segbench.metrics import confusion_matrix, scores
from segbench.stats import iou_counts, mean_iou


def evaluate_corruptions(run_dir: str | Path, data_dir: str | Path, *, corruptions=CORRUPTIONS,
                         severities=SEVERITIES, batch_size: int = 4, threads: int | None = None,
                         progress: bool = True, protocol: dict | None = None) -> dict:
    """Evaluate the run in ``run_dir`` on the val split of the prepared dataset ``data_dir``
    under each of ``corruptions`` at each of ``severities``, predicting under ``protocol`` (as
    :func:`segbench.engine.evaluate.evaluate_run`'s); write robustness.json and
    corrupted_iou_per_image.npy into ``run_dir`` and return the robustness.json record."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    protocol = eval_protocol(**(protocol or {}))
    corruptions, severities = list(corruptions), list(severities)
    _check_lists(corruptions, severities)
    severities = [int(s) for s in severities]
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be at least 1")
    model, record, ds, channels_last, device = load_for_evaluation(run_dir, data_dir, threads)
    num_classes = record["num_classes"]
    n = len(ds)
    settings = [(name, s) for name in corruptions for s in severities]
    clean = np.zeros((num_classes, num_classes), dtype=np.int64)
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    t0 = time.time()
    out_path = run_dir / "corrupted_iou_per_image.npy"
    with atomic_path(out_path) as tmp:
        per_image = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64,
                                              shape=(len(corruptions), len(severities), n, 2, num_classes))
        bar = tqdm(total=len(batches) * (len(settings) + 1), desc="robustness", unit="batch",
                   **progress_kwargs(progress))
        with torch.inference_mode(), bar:
            for idx in batches:
                raws = [ds.raw(i) for i in idx]
                clean += _confusions(model, raws, channels_last, device, num_classes, protocol).sum(axis=0)
                bar.update()
                for k, name in enumerate(corruptions):
                    for j, s in enumerate(severities):
                        bar.set_postfix_str(f"{name} {s}", refresh=False)
                        corrupted = [(corrupt(image, name, s, ds.name(i)), label)
                                     for (image, label), i in zip(raws, idx)]
                        per_image[k, j, idx.start:idx.stop] = iou_counts(
                            _confusions(model, corrupted, channels_last, device, num_classes, protocol))
                        bar.update()
        per_image.flush()
        totals = per_image.sum(axis=2)  # [K, S, 2, C]
        del per_image
    seconds = time.time() - t0

    clean_miou = scores(torch.from_numpy(clean))["mIoU"]
    table = {name: {str(s): float(mean_iou(totals[k, j])) for j, s in enumerate(severities)}
             for k, name in enumerate(corruptions)}
    values = [v for per in table.values() for v in per.values() if not math.isnan(v)]
    mean = sum(values) / len(values) if values else float("nan")
    result = {
        "run_key": record["run_key"],
        "clean_mIoU": _null(clean_miou),
        "corruptions": {name: {s: _null(v) for s, v in per.items()} for name, per in table.items()},
        "mean_corrupted_mIoU": _null(mean),
        "relative": _null(mean / clean_miou) if clean_miou > 0 else None,
        "severities": severities,
        "parameters": {name: {str(s): PARAMETERS[name][str(s)] for s in severities} for name in corruptions},
        "num_images": n,
        "seconds": seconds,
        "eval_protocol": protocol,
    }
    write_json(run_dir / "robustness.json", result)
    print(f"{record['run_key']}: clean mIoU {clean_miou:.4f}, mean corrupted mIoU {mean:.4f} over "
          f"{len(corruptions)} corruptions x {len(severities)} severities on {n} val images ({seconds:.1f} s)",
          flush=True)
    return result


def _check_lists(corruptions: list, severities: list) -> None:
    """Non-empty lists of known corruptions and severities, each named once."""
    if not corruptions or not severities:
        raise UserError(f"the robustness evaluation needs at least one corruption and one severity (got "
                        f"corruptions {corruptions}, severities {severities}); choose from "
                        f"{', '.join(CORRUPTIONS)} and {', '.join(map(str, SEVERITIES))}")
    for name in corruptions:
        check(name, SEVERITIES[0])
    for s in severities:
        check(CORRUPTIONS[0], s)
    for what, values in (("corruption", corruptions), ("severity", severities)):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise UserError(f"{what} {', '.join(twice)} is listed more than once: name each once")


def _confusions(model, samples: list, channels_last: bool, device: torch.device, num_classes: int,
                protocol: dict) -> np.ndarray:
    """Predict one batch of (uint8 image, label) pairs, batched, padded and predicted under
    ``protocol`` exactly as ``segbench evaluate`` does; int64 [B, C, C], one confusion matrix per image."""
    images, labels, _ = pad_collate([(to_tensor(image), torch.from_numpy(np.asarray(label, dtype=np.int64)), j)
                                     for j, (image, label) in enumerate(samples)])
    images, labels = images.to(device), labels.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    pred = predict(model, images, num_classes=num_classes, channels_last=channels_last, **protocol)
    return np.stack([confusion_matrix(pred[j], labels[j], num_classes).cpu().numpy() for j in range(len(samples))])


def _null(x: float) -> float | None:
    """NaN as None (null in JSON)."""
    return None if x is None or math.isnan(x) else float(x)
