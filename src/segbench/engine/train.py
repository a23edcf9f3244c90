"""Training of one run: seeded, resumable, with a per-epoch history.

The run's resolved spec (see :mod:`segbench.plan`) fully determines the result on CPU:
every epoch re-seeds torch and the DataLoader's generator from (seed, epoch), so a run
resumed from the checkpoint of epoch e continues exactly as an uninterrupted one would.
The augmentation is :func:`segbench.data.transforms.train_transform` of the ``train`` spec;
``train.bn_momentum`` (when set) becomes the momentum of every batch norm of the model when
it is built (:func:`set_bn_momentum`; the PAC paper's decay 0.9997 is momentum 0.0003).

On a GPU a job trains with AMP (float16 autocast + gradient scaling, ``train.amp``),
channels_last tensors (faster convolutions on tensor cores) and cudnn.benchmark (see
:func:`segbench.engine.common.setup_torch`). ``train.channels_last`` picks the memory format
of the weights and the input batches (:func:`segbench.engine.common.use_channels_last`):
``auto`` (default) channels_last on a GPU only, ``true`` on a CPU too (faster for most
convolutional models here; as deterministic and resumable bit for bit as NCHW), ``false``
never; run.json records the format used and evaluation follows it. DataLoader workers
follow the job's CPUs (:func:`loader_workers`).

Files (docs/outputs.md): ``ckpt/last.pt`` after every epoch (not a declared output; a
checkpoint whose config hash differs from the spec's is ignored), then the declared
outputs ``model.pt``, ``history.csv`` and, last of all, ``run.json``. Every file is written
atomically (:func:`segbench.io.atomic_path`: temporary file, fsync, rename), so a job killed
at any moment leaves either the previous complete file or none; a rerun resumes from the
last complete checkpoint ("resuming ... after epoch k" in the log). A checkpoint that cannot
be read (truncated by a full disk, say) or that no longer fits the model is moved aside to
``ckpt/last.pt.corrupt`` with a warning naming it, and the run starts from scratch.

Non-finite losses (``train.on_nonfinite``): ``stop`` (default) ends the job with
:class:`NonFiniteLoss`, naming the global step, the epoch, the batch's image files and the
last good checkpoint; ``skip`` drops such a batch (no optimizer, scaler or scheduler step;
batch-norm running statistics restored), prints it with its files, counts it
(``skipped_batches`` per epoch in history.csv, total in run.json), and still stops when more
than :data:`MAX_SKIPPED_FRACTION` of an epoch's batches are skipped.

Test hook: ``SEGBENCH_FAULT=<point>[:<n>]`` makes the job SIGKILL itself (see
:func:`fault_plan`); unset, it costs nothing.
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from segbench import IGNORE_INDEX
from segbench.data import DataError
from segbench.data.dataset import SegmentationDataset, pad_collate, seed_worker
from segbench.data.transforms import train_transform
from segbench.engine.common import job_cpus, progress_kwargs, setup_torch, use_channels_last
from segbench.io import atomic_path, read_json, remove_stale_temps, write_json, write_text
from segbench.losses import build_loss
from segbench.metrics import confusion_matrix, scores
from segbench.models import build_model
from segbench.plan import spec_hash

HISTORY_COLUMNS = ["epoch", "train_loss", "train_mIoU", "train_aAcc", "val_loss", "val_mIoU", "val_aAcc",
                   "lr", "skipped_batches", "epoch_seconds", "time"]

#: with ``train.on_nonfinite: skip``, the job still stops when more than this fraction of
#: one epoch's batches had a non-finite loss (the data or the learning rate is broken)
MAX_SKIPPED_FRACTION = 0.1

#: the keys of a complete ``ckpt/last.pt``
CHECKPOINT_KEYS = ("epoch", "config_hash", "model", "optimizer", "scheduler", "scaler", "history")

FAULT_ENV = "SEGBENCH_FAULT"
FAULT_POINTS = ("batch", "checkpoint", "outputs")


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite training loss (the message names the step, the epoch, the batch's
    files and the last good checkpoint)."""


def fault_plan() -> tuple[str, int] | None:
    """The kill point ``SEGBENCH_FAULT`` asks for: a test hook, unset in real runs.

    ``SEGBENCH_FAULT=<point>[:<n>]`` (n defaults to 1) makes the training process SIGKILL
    itself, as a scheduler or the OOM killer would:

    * ``batch:n``: right after the n-th optimisation step of the run (counted over all
      epochs, 1-based, as if from scratch), i.e. in the middle of an epoch;
    * ``checkpoint:n``: while writing the checkpoint of epoch n, after the temporary file
      is complete and before it is renamed onto ``ckpt/last.pt``;
    * ``outputs``: after ``model.pt`` is written, before ``history.csv`` and ``run.json``.
    """
    raw = os.environ.get(FAULT_ENV, "").strip()
    if not raw:
        return None
    point, _, n = raw.partition(":")
    if point not in FAULT_POINTS or not (n == "" or (n.isdigit() and int(n) >= 1)):
        raise ValueError(f"{FAULT_ENV}={raw!r}: expected <point>[:<n>] with point one of "
                         f"{', '.join(FAULT_POINTS)} and n >= 1 (a test hook; unset it for real runs)")
    return point, int(n or 1)


def _die(point: str, n: int) -> None:
    print(f"{FAULT_ENV}: killing this process (SIGKILL) at {point}:{n}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def loader_workers(configured: int, cpus: int, threads: int, device: torch.device) -> int:
    """DataLoader worker processes for a job with ``cpus`` CPUs and ``threads`` torch threads.

    On a GPU the CPUs exist to feed it: every CPU the torch threads leave free decodes and
    augments (at least ``train.workers``). On a CPU the torch threads do the work and
    ``train.workers`` is kept as configured: the worker count decides how the augmentation
    random streams are split, so keeping it fixed keeps CPU results independent of the
    allocation (same spec + same threads -> same numbers).
    """
    if device.type != "cuda":
        return configured
    return max(configured, cpus - threads)


def set_bn_momentum(model: torch.nn.Module, momentum: float | None) -> int:
    """Set ``momentum`` on every batch norm of ``model`` (``train.bn_momentum``); returns how
    many. None leaves torch's default (0.1). torch's momentum is 1 - the decay of TF's moving
    average: running = (1 - momentum) * running + momentum * batch statistic, so the PAC
    paper's "batch-norm decay 0.9997" is momentum 0.0003."""
    if momentum is None:
        return 0
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
        raise ValueError(f"train.bn_momentum={momentum!r} is not allowed; expected a number in (0, 1] "
                         "(1 - the batch-norm decay, e.g. 0.0003 for a decay of 0.9997) or null")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = float(momentum)
    return len(norms)


def make_optimizer(model: torch.nn.Module, spec: dict) -> torch.optim.Optimizer:
    if spec["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"],
                               weight_decay=spec["weight_decay"])
    return torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"])


def make_scheduler(opt: torch.optim.Optimizer, spec: dict, total_iters: int):
    if spec["schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    power = spec["poly_power"]
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: max(0.0, 1.0 - it / total_iters) ** power)


def _save_checkpoint(path: Path, state: dict, fault: tuple[str, int] | None = None) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        if fault == ("checkpoint", state["epoch"]):
            _die(*fault)  # the temporary file is complete, the rename not done


def _load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The state saved in ``path``, or None (with a warning naming the file, which is moved
    aside to ``<path>.corrupt``) when it cannot be read or lacks a part."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a checkpoint")
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            raise ValueError(f"lacks {', '.join(missing)}")
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is set aside, never trusted
        _set_aside(path, f"cannot be read ({type(e).__name__}: {_first_line(e)})")
        return None
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _set_aside(path: Path, why: str) -> None:
    bad = path.with_name(path.name + ".corrupt")
    os.replace(path, bad)
    print(f"warning: checkpoint {path} {why}; moved it to {bad} and training from scratch "
          f"(delete it once you no longer need it)", file=sys.stderr, flush=True)


def _history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})
    return buf.getvalue()


@torch.no_grad()
def validate(model, loader, loss_fn, num_classes, device, amp: bool,
             channels_last: bool = False) -> tuple[float, dict]:
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    total, pixels = 0.0, 0
    for images, labels, _ in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)
        n = int((labels != IGNORE_INDEX).sum())
        total += float(loss_fn(logits, labels)) * n
        pixels += n
        conf += confusion_matrix(logits.argmax(1), labels, num_classes)
    return total / max(pixels, 1), scores(conf.cpu())


def train_run(spec: dict, data_dir: str | Path, out_dir: str | Path, *, threads: int | None = None,
              progress: bool = True) -> dict:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    tr = spec["train"]
    device = setup_torch(threads or tr.get("threads"))
    amp = bool(tr.get("amp")) and device.type == "cuda"
    channels_last = use_channels_last(tr.get("channels_last", "auto"), device)
    meta = read_json(data_dir / "meta.json")
    num_classes = int(meta["num_classes"])
    if num_classes != spec["dataset"]["num_classes"]:
        raise DataError(f"{data_dir / 'meta.json'} says {num_classes} classes but the config expects "
                        f"{spec['dataset']['num_classes']}; rerun `segbench prepare`")
    chash = spec_hash(spec)
    seed = int(spec["seed"])
    torch.manual_seed(seed)

    transform = train_transform(tr)
    train_ds = SegmentationDataset(data_dir / "manifest.csv", "train", transform)
    val_ds = SegmentationDataset(data_dir / "manifest.csv", "val", None)
    if len(train_ds) < tr["batch_size"]:
        raise DataError(f"the train split of {data_dir} has {len(train_ds)} images, fewer than "
                        f"batch_size={tr['batch_size']}; lower train.batch_size")
    gen = torch.Generator()
    threads_used = torch.get_num_threads()
    workers = loader_workers(tr["workers"], job_cpus(threads_used), threads_used, device)
    loader_kw = dict(num_workers=workers, worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
                     persistent_workers=False)
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=tr["batch_size"], shuffle=True,
                                               drop_last=True, generator=gen, **loader_kw)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=spec["eval"]["batch_size"], shuffle=False,
                                             collate_fn=pad_collate, **loader_kw)

    epochs = tr["epochs"]
    steps_per_epoch = len(train_loader)
    init_rng = torch.get_rng_state()

    def build():
        # the same initial weights on a rebuild (after a checkpoint that failed to load)
        torch.set_rng_state(init_rng)
        model = build_model(spec["model"]["arch"], num_classes, **spec["model"]["params"]).to(device)
        set_bn_momentum(model, tr.get("bn_momentum"))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model, tr)
        sched = make_scheduler(opt, tr, epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        return model, opt, sched, scaler

    model, opt, sched, scaler = build()
    pretrained = getattr(model, "pretrained_info", None)  # ImageNet backbone weights (params.pretrained)
    if pretrained:
        print(f"pretrained backbone: {pretrained['source']} from {pretrained['file']} (sha256 "
              f"{pretrained['sha256']}, {pretrained['tensors']} tensors)", flush=True)
    loss_fn = build_loss({k: v for k, v in spec["loss"].items() if k != "name"}).to(device)
    needs_embeddings = bool(getattr(loss_fn, "needs_embeddings", False))
    if needs_embeddings and not hasattr(model, "forward_train"):
        raise ValueError(
            f"loss '{spec['loss']['name']}' ({spec['loss']['type']}) needs pixel embeddings, but model "
            f"'{spec['model']['name']}' ({spec['model']['arch']}) does not expose them; use a model with an "
            "embedding head (see `segbench models`) or another loss")
    on_nonfinite = tr.get("on_nonfinite", "stop")
    fault = fault_plan()

    ckpt_path = out_dir / "ckpt" / "last.pt"
    # temporary files of a killed predecessor (this job owns its outputs exclusively)
    for target in (ckpt_path, out_dir / "model.pt", out_dir / "history.csv", out_dir / "run.json"):
        for stale in remove_stale_temps(target):
            print(f"removed {stale}, left by a killed job", flush=True)
    history: list[dict] = []
    start_epoch = 0
    state = _load_checkpoint(ckpt_path, device) if ckpt_path.exists() else None
    if state is not None and state["config_hash"] != chash:
        print(f"ignoring {ckpt_path}: it belongs to another configuration (hash "
              f"{state['config_hash']} != {chash}); training from scratch", flush=True)
    elif state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            history = [dict(r) for r in state["history"]]
            start_epoch = int(state["epoch"])
            if not 0 < start_epoch <= epochs or len(history) != start_epoch:
                raise ValueError(f"epoch {start_epoch} with {len(history)} history rows, for {epochs} epochs")
        except Exception as e:  # noqa: BLE001 - e.g. the model's code changed since the checkpoint
            _set_aside(ckpt_path, f"does not fit this run ({type(e).__name__}: {_first_line(e)})")
            model, opt, sched, scaler = build()
            history, start_epoch = [], 0
        else:
            print(f"resuming {spec['run_key']} from {ckpt_path} after epoch {start_epoch} of {epochs}",
                  flush=True)
    del state

    print(f"training {spec['run_key']} on {device} ({torch.get_num_threads()} threads, {workers} loader workers"
          f"{', AMP' if amp else ''}{', channels_last' if channels_last else ''}): "
          f"{len(train_ds)} train / {len(val_ds)} val images, {epochs} epochs"
          f"{'' if on_nonfinite == 'stop' else f', on_nonfinite={on_nonfinite}'}", flush=True)
    max_skipped = int(MAX_SKIPPED_FRACTION * steps_per_epoch)
    t_start = time.time()
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        torch.manual_seed(_epoch_seed(seed, epoch))
        gen.manual_seed(_epoch_seed(seed, epoch))
        if workers == 0:
            transform.set_random_seed(_epoch_seed(seed, epoch))
        model.train()
        conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        loss_sum, n_batches, skipped = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", **progress_kwargs(progress))
        for step, (images, labels, idx) in enumerate(bar):
            global_step = epoch * steps_per_epoch + step + 1
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if on_nonfinite == "skip":
                # a skipped batch must leave no trace: its forward pass updates BN statistics
                buffers = [b.detach().clone() for b in model.buffers()]
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                if needs_embeddings:
                    # models with an embedding head compute it in training only: forward() stays lean
                    out = model.forward_train(images)
                    logits = out["logits"]
                    loss = loss_fn(logits, labels, embeddings=out["embeddings"])
                else:
                    logits = model(images)
                    loss = loss_fn(logits, labels)
            if not torch.isfinite(loss.detach()):
                where = (f"loss is {float(loss.detach())} at step {global_step} (epoch {epoch + 1}/{epochs}, batch "
                         f"{step + 1}/{steps_per_epoch}); batch files: "
                         f"{', '.join(train_ds.rows[int(i)]['image'] for i in idx)}")
                last_good = (f"last good checkpoint: {ckpt_path} (after epoch {epoch})" if epoch > 0
                             else "last good checkpoint: none (no epoch finished yet)")
                if on_nonfinite != "skip":
                    raise NonFiniteLoss(f"{where}; {last_good}. Check these files and the learning rate; "
                                        "train.on_nonfinite: skip drops such batches instead")
                with torch.no_grad():
                    for b, saved in zip(model.buffers(), buffers):
                        b.copy_(saved)
                skipped += 1
                print(f"skipped batch: {where}", file=sys.stderr, flush=True)
                if skipped > max_skipped:
                    raise NonFiniteLoss(
                        f"{skipped} of the {steps_per_epoch} batches of epoch {epoch + 1} had a non-finite "
                        f"loss, more than {MAX_SKIPPED_FRACTION:.0%} (train.on_nonfinite: skip): stopping, the "
                        f"data or the learning rate is broken. Last: {where}; {last_good}")
                continue
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += float(loss.detach())
            n_batches += 1
            conf += confusion_matrix(logits.detach().argmax(1), labels, num_classes)
            bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}", refresh=False)
            if fault is not None and fault == ("batch", global_step):
                _die(*fault)
        bar.close()
        train_scores = scores(conf.cpu())
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_batches, 1),
               "train_mIoU": train_scores["mIoU"], "train_aAcc": train_scores["aAcc"],
               "lr": opt.param_groups[0]["lr"], "skipped_batches": skipped}
        if (epoch + 1) % tr["val_every"] == 0 or epoch + 1 == epochs:
            val_loss, val_scores = validate(model, val_loader, loss_fn, num_classes, device, amp, channels_last)
            row.update(val_loss=val_loss, val_mIoU=val_scores["mIoU"], val_aAcc=val_scores["aAcc"])
        row["epoch_seconds"] = time.time() - t0
        row["time"] = time.time()
        history.append(row)
        print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in row.items() if k not in ("epoch", "time") and isinstance(v, float)
            and not math.isnan(v)), flush=True)
        _save_checkpoint(ckpt_path, {
            "epoch": epoch + 1, "config_hash": chash, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
            "history": history}, fault)

    # declared outputs, written last (run.json last of all)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    if fault is not None and fault[0] == "outputs":
        _die(*fault)
    write_text(out_dir / "history.csv", _history_csv(history))
    record = {
        "run_key": spec["run_key"], "dataset": spec["dataset"]["name"], "model": spec["model"]["name"],
        "loss": spec["loss"]["name"], "seed": seed, "config": spec, "config_hash": chash,
        "num_classes": num_classes, "class_names": meta["class_names"], "palette": meta["palette"],
        "device": str(device), "threads": torch.get_num_threads(), "workers": workers, "amp": amp,
        "channels_last": channels_last, "pretrained": pretrained,
        "epochs": epochs, "on_nonfinite": on_nonfinite,
        "skipped_batches": sum(int(r.get("skipped_batches") or 0) for r in history),
        "train_seconds": sum(r["epoch_seconds"] for r in history),
        "resumed_from_epoch": start_epoch or None, "wall_seconds_this_job": time.time() - t_start,
    }
    write_json(out_dir / "run.json", record)
    return record
