"""Data loading vs training consumption: images/s of the real training input pipeline
(segbench's SegmentationDataset + the albumentations train transform + a DataLoader with the
config's workers) against images/s of a training step of the fastest model of the default
config, at the default input size (128x256) and at the paper input size (512x1024 crops of
1024x2048 Cityscapes-sized images); target loader >= 2x. Also the decode time per image of
the prepared format (PNG) against other formats.

    python bench/bench_loader.py                 # both sizes, decode table
    python bench/bench_loader.py --quick
    python bench/bench_loader.py --model unet --workers 2

Data: synthetic street scenes (``segbench.data.synthetic.generate``) prepared exactly as the
pipeline prepares them (``prepare_cityscapes``: PNG images, PNG train-id labels, manifest)
into a temporary folder, at 128x256 (the default dataset) and 1024x2048 (Cityscapes).

Loader: the DataLoader the training loop builds (``train.batch_size``, ``train.workers``,
``seed_worker``), drawing indices at random with replacement so a few images serve any
number of batches (decode cost is per read, whatever the image). Throughput is the steady
state after the first batch; the first batch's latency (worker start-up, paid every epoch:
the loop does not keep workers between epochs) is printed, and the "per epoch" figure folds
it into an epoch of the config's train split.

Consumption: one training step as ``segbench.engine.train`` does it (forward, the run's
loss, backward, optimizer step) on random input of the crop size, with the config's
``train.threads`` torch threads, best of N. The fastest model is picked by timing a step
of every (model, loss) of the default config at 128x256 (``--model`` skips that).
The paper-size row uses the same model and augmentation, with 512x1024 crops; a second row
uses workflow/configs/paper.yaml's augmentation (scale 0.5-2.0, no photometric changes).
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, best_of, figure, header, show

import numpy as np
import torch

from segbench.config import load_config
from segbench.plan import Plan

TARGET = 2.0


# ---------------------------------------------------------------- data
def make_dataset(tmp: Path, height: int, width: int, train: int) -> Path:
    from segbench.data.cityscapes import prepare_cityscapes
    from segbench.data.synthetic import generate

    raw, out = tmp / f"raw{height}x{width}", tmp / f"data{height}x{width}"
    generate(raw, seed=0, splits={"train": train, "val": 1}, height=height, width=width, progress=False)
    prepare_cityscapes(raw, out, progress=False)
    return out


def loader_throughput(data: Path, train_spec: dict, batches: int) -> dict:
    from segbench.data.dataset import SegmentationDataset, seed_worker
    from segbench.data.transforms import train_transform

    ds = SegmentationDataset(data / "manifest.csv", "train", train_transform(train_spec))
    bs, workers = train_spec["batch_size"], train_spec["workers"]
    gen = torch.Generator().manual_seed(0)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=bs * batches, generator=gen)
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=workers,
                                         worker_init_fn=seed_worker, drop_last=True, persistent_workers=False)
    t0 = time.perf_counter()
    it = iter(loader)
    images, labels, _ = next(it)
    assert tuple(images.shape[-2:]) == tuple(train_spec["crop"]), images.shape
    t1 = time.perf_counter()
    n = 0
    for images, _, _ in it:
        n += images.shape[0]
    t2 = time.perf_counter()
    del it
    return {"first_s": t1 - t0, "steady": n / (t2 - t1), "workers": workers, "batch": bs}


# ---------------------------------------------------------------- consumption
def step_fn(spec: dict, crop: tuple[int, int]):
    """One training step of the run ``spec`` (model, loss, optimizer) on random input."""
    from segbench.engine.train import make_optimizer
    from segbench.losses import build_loss
    from segbench.models import build_model

    torch.manual_seed(0)
    classes = spec["dataset"]["num_classes"]
    model = build_model(spec["model"]["arch"], classes, **spec["model"]["params"]).train()
    loss_fn = build_loss({k: v for k, v in spec["loss"].items() if k != "name"})
    needs_emb = bool(getattr(loss_fn, "needs_embeddings", False))
    opt = make_optimizer(model, spec["train"])
    bs = spec["train"]["batch_size"]
    x = torch.randn(bs, 3, *crop)
    y = torch.randint(0, classes, (bs, *crop))
    y[:, :4] = 255

    def step():
        if needs_emb:
            out = model.forward_train(x)
            loss = loss_fn(out["logits"], y, embeddings=out["embeddings"])
        else:
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def consumption(specs: dict, crop: tuple[int, int], rounds: int) -> dict:
    """Training images/s of each run spec (timed in the same rounds)."""
    fns = {k: step_fn(s, crop) for k, s in specs.items()}
    t = best_of(fns, rounds)
    return {k: specs[k]["train"]["batch_size"] / t[k] for k in specs}


# ---------------------------------------------------------------- decode
def decode_table(data: Path, rounds: int) -> list[tuple[str, float, float, str]]:
    """ms per (image + label) read and bytes on disk, per storage format, for the first
    prepared training sample. Alternatives are encoded in memory from the same pixels."""
    import cv2
    from PIL import Image

    from segbench.data.dataset import SegmentationDataset, read_image, read_label

    ds = SegmentationDataset(data / "manifest.csv", "train", None)
    row = ds.rows[0]
    img, lab = ds.raw(0)
    img_png, lab_png = Path(row["image"]).read_bytes(), Path(row["label"]).read_bytes()

    def enc(arr, fmt, **kw):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **kw)
        return buf.getvalue()

    def npy(arr):
        buf = io.BytesIO()
        np.save(buf, arr)
        return buf.getvalue()

    png1_img, png1_lab = enc(img, "PNG", compress_level=1), enc(lab, "PNG", compress_level=1)
    jpg = enc(img, "JPEG", quality=95)
    webp = enc(img, "WEBP", lossless=True, method=0)
    npy_img, npy_lab = npy(img), npy(lab)

    def pil_rgb(b):
        with Image.open(io.BytesIO(b)) as im:
            return np.asarray(im.convert("RGB"))

    def pil_l(b):
        with Image.open(io.BytesIO(b)) as im:
            return np.asarray(im)

    def cv_rgb(b):
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def cv_l(b):
        return cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)

    cases = {  # name -> (fn, bytes, note)
        "PNG as stored, segbench read_image + read_label (PIL)":
            (lambda: (read_image(row["image"]), read_label(row["label"])), len(img_png) + len(lab_png), "lossless"),
        "PNG as stored, cv2.imdecode": (lambda: (cv_rgb(img_png), cv_l(lab_png)), len(img_png) + len(lab_png),
                                        "lossless"),
        "PNG compress_level=1, PIL": (lambda: (pil_rgb(png1_img), pil_l(png1_lab)), len(png1_img) + len(png1_lab),
                                      "lossless"),
        "WebP lossless image + PNG label, PIL": (lambda: (pil_rgb(webp), pil_l(lab_png)), len(webp) + len(lab_png),
                                                 "lossless"),
        "JPEG q95 image + PNG label, PIL": (lambda: (pil_rgb(jpg), pil_l(lab_png)), len(jpg) + len(lab_png),
                                            "lossy image"),
        "JPEG q95 image + PNG label, cv2": (lambda: (cv_rgb(jpg), cv_l(lab_png)), len(jpg) + len(lab_png),
                                            "lossy image"),
        ".npy (uncompressed) image + label": (lambda: (np.load(io.BytesIO(npy_img)), np.load(io.BytesIO(npy_lab))),
                                              len(npy_img) + len(npy_lab), "lossless, no compression"),
    }
    assert np.array_equal(cv_rgb(img_png), img) and np.array_equal(pil_rgb(webp), img)
    t = best_of({k: v[0] for k, v in cases.items()}, rounds)
    return [(k, t[k] * 1e3, cases[k][1], cases[k][2]) for k in cases]


# ---------------------------------------------------------------- main
def default_specs(config: Path) -> dict:
    """One resolved run spec per (model, loss) of the config's plan."""
    plan = Plan(load_config(config))
    specs = {}
    for run in plan.runs:
        spec = plan.run_spec(run)
        specs.setdefault(f"{spec['model']['name']}/{spec['loss']['name']}", spec)
    return specs


def paper_augmentation(spec: dict) -> dict:
    """The train spec with workflow/configs/paper.yaml's augmentation (its `train:` defaults)."""
    import yaml

    paper = yaml.safe_load((ROOT / "workflow" / "configs" / "paper.yaml").read_text())["train"]
    out = dict(spec)
    for k in ("scale", "hflip", "photometric"):
        if k in paper:
            out[k] = paper[k]
    return out


def main(argv=None) -> int:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--model", help="MODEL/LOSS (or MODEL) of the config to use instead of the fastest")
    ap.add_argument("--workers", type=int, help="DataLoader workers (default: the config's train.workers)")
    ap.add_argument("--threads", type=int, help="torch threads of the step (default: the config's train.threads)")
    ap.add_argument("--paper-size", default="512x1024", help="paper crop HxW (images are twice that)")
    ap.add_argument("--rounds", type=int, help="timed rounds (best of; default 3, quick 2)")
    a = ap.parse_args(argv)
    rounds = a.rounds or (2 if a.quick else 3)
    specs = default_specs(Path(a.config))
    any_spec = next(iter(specs.values()))
    threads = a.threads or any_spec["train"].get("threads") or 1
    torch.set_num_threads(threads)
    header(f"Data loading vs training consumption (torch {torch.__version__}, {threads} torch thread(s) per step, "
           f"best of {rounds})")
    figs = []
    dsize = tuple(any_spec["train"]["crop"])
    if a.model:
        key = next((k for k in specs if k == a.model or k.split("/")[0] == a.model), None)
        if key is None:
            raise SystemExit(f"--model {a.model}: not in the config's runs ({', '.join(specs)})")
    else:
        ips = consumption(specs, dsize, max(rounds - 1, 1))
        key = max(ips, key=ips.get)
        order = sorted(ips, key=ips.get, reverse=True)
        print(f"  training images/s at {dsize[0]}x{dsize[1]}, {threads} thread(s): "
              + ", ".join(f"{k} {ips[k]:.1f}" for k in order))
        print(f"  fastest: {key}")
    spec = specs[key]
    train = dict(spec["train"])
    if a.workers is not None:
        train["workers"] = a.workers
    ph, pw = (int(v) for v in a.paper_size.split("x"))
    n_train = train.get("epoch_images") or spec["dataset"].get("generate", {}).get("train", 160)

    with tempfile.TemporaryDirectory(prefix="segbench-bench-loader-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        small = make_dataset(tmp, dsize[0], dsize[1], 16)
        big = make_dataset(tmp, 2 * ph, 2 * pw, 3 if a.quick else 6)
        print(f"  (synthetic data generated and prepared in {time.perf_counter() - t0:.1f} s)")
        cases = [(f"{dsize[0]}x{dsize[1]} (default)", small, train, dsize, 12 if a.quick else 40)]
        cases.append((f"{ph}x{pw} (paper crop of {2 * ph}x{2 * pw})", big, {**train, "crop": [ph, pw]}, (ph, pw),
                      3 if a.quick else 8))
        if not a.quick:
            cases.append((f"{ph}x{pw}, paper.yaml augmentation", big,
                          paper_augmentation({**train, "crop": [ph, pw]}), (ph, pw), 8))
        consumed = {}
        for label, data, tspec, crop, batches in cases:
            if crop not in consumed:
                consumed[crop] = consumption({key: {**spec, "train": train}}, crop, rounds)[key]
            need = consumed[crop]
            ld = loader_throughput(data, tspec, batches)
            epoch_s = ld["first_s"] + (n_train - ld["batch"]) / ld["steady"]
            per_epoch = n_train / epoch_s
            aug = (f"scale {tspec['scale']}, photometric {tspec.get('photometric', False)}, "
                   f"hflip {tspec.get('hflip', True)}")
            print(f"  {label}: loader {ld['steady']:.1f} img/s steady ({ld['workers']} worker(s), batch {ld['batch']}, "
                  f"{aug}), first batch {ld['first_s']:.2f} s; {key} trains {need:.2f} img/s")
            figs.append(show(figure(f"loader / training, {label}", ld["steady"] / need, "x", ">=", TARGET,
                                    note=f"loader {ld['steady']:.1f} img/s vs {key} {need:.2f} img/s")))
            figs.append(show(figure(f"  same, per epoch of {n_train} images incl. worker start-up", per_epoch / need,
                                    "x", note=f"{per_epoch:.1f} img/s")))

        header("Decode time per image + label of the prepared format vs others (first train sample, best of "
               f"{rounds + 2})")
        for label, data in ((f"{dsize[0]}x{dsize[1]}", small), (f"{2 * ph}x{2 * pw}", big)):
            rows = decode_table(data, rounds + 2)
            base = rows[0][1]
            print(f"  {label}:")
            for name, ms, size, note in rows:
                print(f"    {name:<58} {ms:>8.2f} ms {size / 1024:>9.0f} KiB  {ms / base:>5.2f}x  {note}")
            figs.append(show(figure(f"decode per image+label, PNG as stored, {label}", base, "ms", summary=True)))
            alts = [r for r in rows[1:] if not r[0].startswith(".npy")]
            best = min(alts, key=lambda r: r[1])
            npy = next(r for r in rows if r[0].startswith(".npy"))
            figs.append(show(figure(f"  fastest compressed alternative, {label}", best[1], "ms", summary=True,
                                    note=f"{best[0]}: {base / best[1]:.2f}x faster")))
            figs.append(show(figure(f"  .npy (uncompressed), {label}", npy[1], "ms", summary=True,
                                    note=f"{base / npy[1]:.1f}x faster, {npy[2] / rows[0][2]:.1f}x the bytes")))
    benchlib.write_json(a.json, "bench_loader", figs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
