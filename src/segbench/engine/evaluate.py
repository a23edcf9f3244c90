"""Evaluation of a trained run on the val split: one pass, the checkpoint read once.

Per val image (in manifest order) it keeps three small count arrays, from which every score
and every interval of the reports is computed (docs/statistics.md, docs/metrics.md):

* ``confusion_per_image.npy`` int64 [N, C, C]: the image's confusion matrix (rows ground
  truth; :func:`segbench.metrics.confusion_matrix` on the image's unpadded pixels); they sum
  to ``confusion.npy``;
* ``boundary_per_image.npy`` int64 [N, 2, C]: Boundary IoU's intersection and union per
  class (:func:`segbench.metrics.boundary_iou_counts`, d from the image's own diagonal);
* ``segments_per_image.npy`` int64 [N, 3, 2]: ground-truth segments and recalled segments
  per size bin (:func:`segbench.metrics.segment_recall_counts`).

metrics.json holds the scores (mmsegmentation's conventions), ``mIoU_ci95`` and
``mBIoU_ci95`` (percentile bootstrap over the val images: :mod:`segbench.stats`), mBIoU and
per-class BIoU, the recall per object size, and the IoU of the thin classes. The model and
the batches use the memory format the run was trained in (run.json's ``channels_last``; see
``train.channels_last``), so evaluation rounds like the training's own validation.

The predictions follow the evaluation protocol (the config's ``eval.mode``, ``eval.crop``,
``eval.stride``, ``eval.scales``, ``eval.flip``: whole-image or slide inference, test-time
augmentation; :mod:`segbench.engine.inference`), recorded in metrics.json as
``eval_protocol``; the default, whole-image inference at one scale, is ``model(images).argmax(1)``.
"""

from __future__ import annotations

import io
import math
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segbench import runfiles, stats
from segbench.data import DataError
from segbench.data.dataset import SegmentationDataset, pad_collate
from segbench.engine.common import progress_kwargs, setup_torch, trained_channels_last
from segbench.engine.inference import eval_protocol, predict
from segbench.errors import UserError
from segbench.io import atomic_path, write_json
from segbench.metrics import (boundary_iou_counts, confusion_matrix, scores, segment_recall_counts,
                              SIZE_BINS_RULE, size_thresholds, thin_class_indices)
from segbench.models import build_model
from segbench.models.pretrained import without_pretrained


def load_trained(run_dir: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a run's model from its run.json (checked: :func:`segbench.runfiles.read_run`) and
    model.pt (weights only); returns the model and the run.json record."""
    run_dir = Path(run_dir)
    record = runfiles.read_run(run_dir)  # checked: RunFileError naming run.json and the remedy
    if not (run_dir / "model.pt").exists():
        raise runfiles.missing(run_dir / "model.pt")
    retrain = (f"delete {run_dir} and train the run again (snakemake reruns it; "
               "`segbench train` by hand)")
    spec = record["config"].get("model")
    if not isinstance(spec, dict) or "arch" not in spec or not isinstance(spec.get("params"), dict):
        raise runfiles.damaged(run_dir / "run.json", f"has no model (config.model: {spec!r}) with an arch "
                               "and params")
    num_classes = record["num_classes"]
    # the trained weights replace everything: no ImageNet checkpoint is read (or needed) here
    model = build_model(spec["arch"], num_classes, **without_pretrained(spec["params"]))
    try:
        state = torch.load(run_dir / "model.pt", map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:  # truncated or foreign
        raise DataError(f"{run_dir / 'model.pt'} cannot be read as a state_dict ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); the file is damaged: {retrain}") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        first = " ".join(line.strip() for line in str(e).splitlines()[:2])[:300] or e.__class__.__name__
        raise DataError(f"{run_dir / 'model.pt'} does not fit the model {run_dir / 'run.json'} describes "
                        f"({spec['arch']}, {num_classes} classes: {first}); the two files come from different "
                        f"trainings: {retrain}") from None
    return model.to(device).eval(), record


def _stack(arrays: list[np.ndarray], shape: tuple, fill: int) -> np.ndarray:
    """Stack samples into one uint8 array of the first sample's size (cropping or padding
    the others with ``fill``), so val sets of varying image sizes keep one array."""
    if arrays:
        shape = arrays[0].shape
    out = np.full((len(arrays), *shape), fill, dtype=np.uint8)
    for i, a in enumerate(arrays):
        hh, ww = min(a.shape[0], shape[0]), min(a.shape[1], shape[1])
        out[i, :hh, :ww] = a[:hh, :ww]
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _check_space(run_dir: Path, n_images: int, num_classes: int) -> None:
    """The per-image arrays are N x C x C int64 (ADE20K: 2,000 x 150 x 150 = 360 MB): check the
    memory and the disk they take before the pass, not after it."""
    from segbench.data.download import free_bytes, human_bytes
    from segbench.serve.inference import available_memory

    need = 8 * n_images * (num_classes * num_classes + 2 * num_classes + 6)
    if need < 64 << 20:
        return
    free = free_bytes(run_dir)
    if 2 * need > free:  # the array, and its temporary copy while it is replaced
        raise UserError(f"evaluating {run_dir} writes {human_bytes(need)} of per-image counts "
                        f"({n_images} images x {num_classes}^2 confusions), but only {human_bytes(free)} is "
                        "free there; free some disk space (or point `results:` at a larger disk) and run again")
    available, source = available_memory()
    if available is not None and need > available // 2:
        raise UserError(f"evaluating {run_dir} holds {human_bytes(need)} of per-image counts in memory "
                        f"({n_images} images x {num_classes}^2 confusions), more than half of the "
                        f"{human_bytes(available)} available ({source}); run it where more memory is free "
                        "(the evaluate rule's mem_mb resource)")


def _collate_with_sizes(batch):
    """pad_collate, and each image's own (height, width): scores count its unpadded pixels."""
    images, labels, idx = pad_collate(batch)
    return images, labels, idx, [tuple(lab.shape[-2:]) for _, lab, _ in batch]


def _nan_to_none(values) -> list:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]


def load_for_evaluation(run_dir: Path, data_dir: Path, threads: int | None):
    """The trained model of ``run_dir`` on this machine's device, in the memory format it was
    trained in, and the val split of ``data_dir``, checked to have the run's classes; returns
    (model, run.json record, dataset, channels_last, device). Shared by evaluate and robustness,
    so that both score the same predictions."""
    device = setup_torch(threads)
    model, record = load_trained(run_dir, device)
    channels_last = trained_channels_last(record)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    num_classes = record["num_classes"]
    ds = SegmentationDataset(data_dir / "manifest.csv", "val", None)
    if ds.num_classes is not None and ds.num_classes != num_classes:
        raise DataError(f"run {run_dir} was trained with {num_classes} classes but the dataset {data_dir} has "
                        f"{ds.num_classes} ({ds.meta_path}): evaluate it on the dataset it was trained on "
                        f"(run.json: dataset {record.get('dataset')!r})")
    return model, record, ds, channels_last, device


def evaluate_run(run_dir: str | Path, data_dir: str | Path, *, batch_size: int = 4, samples: int = 4,
                 threads: int | None = None, progress: bool = True, n_boot: int = 2000,
                 protocol: dict | None = None) -> dict:
    """Evaluate the run in ``run_dir`` on the val split of ``data_dir`` under ``protocol`` (the
    keywords of :func:`segbench.engine.inference.eval_protocol`; None: whole-image inference);
    write metrics.json, the confusions and samples.npz into ``run_dir`` and return the metrics."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    protocol = eval_protocol(**(protocol or {}))  # checked before the model is loaded
    model, record, ds, channels_last, device = load_for_evaluation(run_dir, data_dir, threads)
    num_classes = record["num_classes"]
    _check_space(run_dir, len(ds), num_classes)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=_collate_with_sizes)
    per_conf = np.zeros((len(ds), num_classes, num_classes), dtype=np.int64)
    per_boundary = np.zeros((len(ds), 2, num_classes), dtype=np.int64)
    per_segments = np.zeros((len(ds), 3, 2), dtype=np.int64)
    kept = {"images": [], "labels": [], "preds": [], "names": []}
    t0, pixels, claim_seconds = time.time(), 0, 0.0
    with torch.inference_mode():
        for images, labels, idx, sizes in tqdm(loader, desc="evaluate", unit="batch", **progress_kwargs(progress)):
            images, labels = images.to(device), labels.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            pred = predict(model, images, num_classes=num_classes, channels_last=channels_last, **protocol)
            pixels += labels.numel()
            for j, i in enumerate(idx.tolist()):
                lh, lw = sizes[j]
                p, t = pred[j, :lh, :lw], labels[j, :lh, :lw]
                per_conf[i] = confusion_matrix(p, t, num_classes).cpu().numpy()
                t1 = time.time()
                inter, union = boundary_iou_counts(p, t, num_classes)
                per_boundary[i, 0], per_boundary[i, 1] = inter.cpu().numpy(), union.cpu().numpy()
                per_segments[i] = np.asarray(segment_recall_counts(p, t, num_classes))
                claim_seconds += time.time() - t1
                if len(kept["names"]) < samples:
                    image, label = ds.raw(i)
                    kept["images"].append(image)
                    kept["labels"].append(label)
                    kept["preds"].append(p.to(torch.uint8).cpu().numpy())
                    kept["names"].append(ds.name(i))
    seconds = time.time() - t0
    conf = per_conf.sum(axis=0)
    result = scores(torch.from_numpy(conf))
    h, w = ds.raw(0)[1].shape
    boundary = per_boundary.sum(axis=0)
    biou = [float(a / b) if b > 0 else math.nan for a, b in zip(boundary[0], boundary[1])]
    seg = per_segments.sum(axis=0)
    thin = thin_class_indices(record["class_names"])
    thin_iou = [result["IoU"][c] for c in thin if not math.isnan(result["IoU"][c])]
    t_small, t_large = size_thresholds(h, w)
    metrics = {
        "run_key": record["run_key"], "mIoU": result["mIoU"], "aAcc": result["aAcc"], "mAcc": result["mAcc"],
        "mDice": result["mDice"], "IoU": result["IoU"], "Acc": result["Acc"], "Dice": result["Dice"],
        "class_names": record["class_names"], "num_images": len(ds), "input_size": [h, w],
        "mIoU_ci95": _nan_to_none(stats.bootstrap_ci(per_conf, stats.miou, n_boot=n_boot, seed=0)),
        "mBIoU": float(stats.biou(boundary)), "BIoU": biou,
        "mBIoU_ci95": _nan_to_none(stats.bootstrap_ci(per_boundary, stats.biou, n_boot=n_boot, seed=0)),
        "size_recall": {name: (float(seg[k, 1] / seg[k, 0]) if seg[k, 0] else None)
                        for k, name in enumerate(("small", "medium", "large"))},
        "size_segments": {name: int(seg[k, 0]) for k, name in enumerate(("small", "medium", "large"))},
        # thresholds scale with each image's area; these are those of the first val image
        "size_bins": {"small_below_px": t_small, "large_from_px": t_large, "at_size": [h, w],
                      "rule": SIZE_BINS_RULE},
        "thin_classes": [record["class_names"][c] for c in thin],
        "thin_mIoU": (sum(thin_iou) / len(thin_iou)) if thin_iou else None,
        "ci_method": stats.CI_METHOD,
        "eval_seconds": seconds, "claim_metrics_seconds": claim_seconds,
        "metric_mpixel_per_s": pixels / 1e6 / max(seconds, 1e-9),
        "channels_last": channels_last,
        "eval_protocol": protocol,
    }
    _save_npy(run_dir / "confusion.npy", conf)
    _save_npy(run_dir / "confusion_per_image.npy", per_conf)
    _save_npy(run_dir / "boundary_per_image.npy", per_boundary)
    _save_npy(run_dir / "segments_per_image.npy", per_segments)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=_stack(kept["images"], (h, w, 3), 0),
                        labels=_stack(kept["labels"], (h, w), 255), preds=_stack(kept["preds"], (h, w), 255),
                        names=np.array(kept["names"], dtype=str))
    with atomic_path(run_dir / "samples.npz") as tmp:
        tmp.write_bytes(buf.getvalue())
    write_json(run_dir / "metrics.json", metrics)
    ci = "[{}, {}]".format(*(f"{v:.4f}" if v is not None else "n/a" for v in metrics["mIoU_ci95"]))
    print(f"{record['run_key']}: mIoU {metrics['mIoU']:.4f} {ci} (95% bootstrap interval), mBIoU {metrics['mBIoU']:.4f}, "
          f"aAcc {metrics['aAcc']:.4f}, mDice {metrics['mDice']:.4f} on {len(ds)} val images", flush=True)
    return metrics
