"""Evaluation of a trained run on the val split: one pass, the checkpoint read once.

The confusion matrix is accumulated on the model's device with one bincount per batch
(:func:`segbench.metrics.confusion_matrix`); metrics follow mmsegmentation's conventions. The model and
the batches use the memory format the run was trained in (run.json's ``channels_last``; see
``train.channels_last``), so evaluation rounds like the training's own validation.
"""

from __future__ import annotations

import io
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segbench import runfiles
from segbench.data import DataError
from segbench.data.dataset import SegmentationDataset, pad_collate
from segbench.engine.common import progress_kwargs, setup_torch, trained_channels_last
from segbench.io import atomic_path, read_json, write_json
from segbench.metrics import confusion_matrix, scores
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


def evaluate_run(run_dir: str | Path, data_dir: str | Path, *, batch_size: int = 4, samples: int = 4,
                 threads: int | None = None, progress: bool = True) -> dict:
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    device = setup_torch(threads)
    model, record = load_trained(run_dir, device)
    channels_last = trained_channels_last(record)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    num_classes = record["num_classes"]
    meta_path = data_dir / "meta.json"
    if meta_path.is_file():
        data_classes = read_json(meta_path).get("num_classes")
        if data_classes is not None and int(data_classes) != int(num_classes):
            raise DataError(f"run {run_dir} was trained with {num_classes} classes but the dataset {data_dir} has "
                            f"{data_classes} ({meta_path}): evaluate it on the dataset it was trained on "
                            f"(run.json: dataset {record.get('dataset')!r})")
    ds = SegmentationDataset(data_dir / "manifest.csv", "val", None)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=pad_collate)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    kept = {"images": [], "labels": [], "preds": [], "names": []}
    t0, pixels = time.time(), 0
    with torch.inference_mode():
        for images, labels, idx in tqdm(loader, desc="evaluate", unit="batch", **progress_kwargs(progress)):
            images, labels = images.to(device), labels.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            pred = model(images).argmax(1)
            conf += confusion_matrix(pred, labels, num_classes)
            pixels += labels.numel()
            for j, i in enumerate(idx.tolist()):
                if len(kept["names"]) < samples:
                    image, label = ds.raw(i)
                    lh, lw = label.shape
                    kept["images"].append(image)
                    kept["labels"].append(label)
                    kept["preds"].append(pred[j, :lh, :lw].to(torch.uint8).cpu().numpy())
                    kept["names"].append(ds.name(i))
    seconds = time.time() - t0
    conf = conf.cpu()
    result = scores(conf)
    h, w = ds.raw(0)[1].shape
    metrics = {
        "run_key": record["run_key"], "mIoU": result["mIoU"], "aAcc": result["aAcc"], "mAcc": result["mAcc"],
        "mDice": result["mDice"], "IoU": result["IoU"], "Acc": result["Acc"], "Dice": result["Dice"],
        "class_names": record["class_names"], "num_images": len(ds), "input_size": [h, w],
        "eval_seconds": seconds, "metric_mpixel_per_s": pixels / 1e6 / max(seconds, 1e-9),
        "channels_last": channels_last,
    }
    with atomic_path(run_dir / "confusion.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, conf.numpy())
    buf = io.BytesIO()
    np.savez_compressed(buf, images=_stack(kept["images"], (h, w, 3), 0),
                        labels=_stack(kept["labels"], (h, w), 255), preds=_stack(kept["preds"], (h, w), 255),
                        names=np.array(kept["names"], dtype=str))
    with atomic_path(run_dir / "samples.npz") as tmp:
        tmp.write_bytes(buf.getvalue())
    write_json(run_dir / "metrics.json", metrics)
    print(f"{record['run_key']}: mIoU {metrics['mIoU']:.4f}, aAcc {metrics['aAcc']:.4f}, "
          f"mDice {metrics['mDice']:.4f} on {len(ds)} val images", flush=True)
    return metrics
