"""Training of one run: seeded, resumable, with a per-epoch history.

:func:`train_run` reads in one screen: :func:`setup` (data, model, loss, optimiser,
scheduler), :func:`resume` (from the checkpoint), then per epoch :func:`train_epoch` (its
history row) and :func:`checkpoint`, and last :func:`write_outputs`.

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

A full disk: before a checkpoint or ``model.pt`` is written, the free space is compared with
the size of its tensors, and a write that still fails for want of space (ENOSPC, EDQUOT)
becomes the same :class:`DiskFull` error: "no space left on device at <path>: N MB needed,
M MB free; ...". The previous checkpoint is kept (the write is atomic).

One trainer per run directory (:func:`run_dir_lock`): ``train.lock`` in the run directory
is held with ``flock`` for the life of the training and names its holder (pid, host, start
time). A second trainer on the same directory stops at once with :class:`RunDirBusy` naming
the holder; a lock file left by a killed trainer is no longer held (the kernel releases a
dead process's flock) and is taken over with a note. A training that ends, with its outputs
or with an error, removes the file.

Training ends with its workflow (:class:`segbench.engine.common.WorkflowWatch`): when the
snakemake named by ``$SEGBENCH_WORKFLOW_PID`` is gone, the next training step (looked at
every second) stops the job with :class:`WorkflowGone`, keeping the last checkpoint, which a
rerun resumes from. Unset (training run by hand): nothing is watched.

Live MLflow logging (``live``, a :class:`segbench.tracking.LiveRun`, made by ``segbench
train`` from ``$SEGBENCH_MLFLOW_LIVE`` or its ``--tracking-uri``/``--study``): the run's start
(with the resumed history), each epoch's history row once its checkpoint is written, and
the end (FINISHED, FAILED, KILLED: :func:`live_logging`). The loop only hands these over;
the logging thread never fails or holds up training (docs/mlflow.md).

Non-finite losses (``train.on_nonfinite``, :class:`NonFinitePolicy`): ``stop`` (default)
ends the job with :class:`NonFiniteLoss`, naming the global step, the epoch, the batch's
image files and the last good checkpoint; ``skip`` drops such a batch (no optimizer, scaler
or scheduler step; batch-norm running statistics restored), prints it with its files, counts
it (``skipped_batches`` per epoch in history.csv, total in run.json), and still stops when
more than :data:`MAX_SKIPPED_FRACTION` of an epoch's batches are skipped.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from segbench import IGNORE_INDEX
from segbench.data import DataError
from segbench.data.dataset import SegmentationDataset, pad_collate, seed_worker
from segbench.data.transforms import train_transform
from segbench.engine.common import WorkflowWatch, job_cpus, progress_kwargs, setup_torch, use_channels_last
from segbench.errors import UserError
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

#: the lock file in the run directory that a running trainer holds (:func:`run_dir_lock`)
LOCK_NAME = "train.lock"


class NonFiniteLoss(UserError, RuntimeError):
    """A NaN or infinite training loss (the message names the step, the epoch, the batch's
    files and the last good checkpoint)."""


class RunDirBusy(UserError):
    """Another process is training the same run directory (the message names it)."""


class WorkflowGone(UserError):
    """The snakemake that started this training is gone; the last checkpoint is kept."""


class DiskFull(UserError):
    """No space left for a checkpoint or output (the message names the path and the sizes)."""


# ------------------------------------------------------------------ the run
def train_run(spec: dict, data_dir: str | Path, out_dir: str | Path, *, threads: int | None = None,
              progress: bool = True, live=None) -> dict:
    """Train the run ``spec`` on the prepared data in ``data_dir`` into ``out_dir`` (resuming
    from its checkpoint there, if any); returns the record written to run.json. ``live``: a
    :class:`segbench.tracking.LiveRun` that logs the training into MLflow as it runs, or None."""
    with run_dir_lock(Path(out_dir)):
        run = setup(spec, Path(data_dir), Path(out_dir), threads=threads, progress=progress)
        history = resume(run)
        start_epoch = len(history)
        print(run.summary(), flush=True)
        t_start = time.time()
        with live_logging(live, run, history, t_start):
            for epoch in range(start_epoch, run.epochs):
                history.append(train_epoch(run, epoch))
                checkpoint(run, history)
                if live is not None:
                    live.epoch(history[-1])
            return write_outputs(run, history, resumed_from=start_epoch, wall_seconds=time.time() - t_start)


@contextmanager
def live_logging(live, run: Training, history: list[dict], t_start: float):
    """Around the epochs: ``live`` (None: nothing) logs the start (with the resumed
    ``history``) and then the end, FINISHED when the block returns, KILLED when it is stopped
    (Ctrl-C, SIGTERM as SystemExit, the workflow gone: :class:`WorkflowGone`), FAILED when
    it raises anything else. Never raises itself (the logging is best effort)."""
    if live is None:
        yield
        return
    live.start(run_record(run, history, resumed_from=len(history), wall_seconds=0.0), run.out_dir,
               history, t_start)
    try:
        yield
    except (KeyboardInterrupt, SystemExit, WorkflowGone):
        live.end("KILLED")
        raise
    except BaseException:
        live.end("FAILED")
        raise
    live.end("FINISHED")


@dataclass
class Training:
    """What one run's epochs use: built by :func:`setup`, the training state by :meth:`build`."""

    spec: dict
    out_dir: Path
    device: torch.device
    amp: bool
    channels_last: bool
    meta: dict
    config_hash: str
    train_ds: SegmentationDataset
    val_ds: SegmentationDataset
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    generator: torch.Generator   # the train loader's: its shuffle is re-seeded every epoch
    workers: int
    init_rng: torch.Tensor       # torch's RNG state the model is initialised from
    progress: bool = True
    model: torch.nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    loss_fn: torch.nn.Module | None = None
    needs_embeddings: bool = False
    nonfinite: NonFinitePolicy | None = None
    pretrained: dict | None = None
    watch: WorkflowWatch | None = None   # the snakemake that started this job, if any

    @property
    def train(self) -> dict:
        return self.spec["train"]

    @property
    def epochs(self) -> int:
        return self.train["epochs"]

    @property
    def seed(self) -> int:
        return int(self.spec["seed"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / "ckpt" / "last.pt"

    def build(self) -> None:
        """Model, optimiser, scheduler and gradient scaler, from the same initial weights on
        every call (a rebuild follows a checkpoint that failed to load)."""
        torch.set_rng_state(self.init_rng)
        model = build_model(self.spec["model"]["arch"], self.num_classes, **self.spec["model"]["params"])
        model = model.to(self.device)
        set_bn_momentum(model, self.train.get("bn_momentum"))
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.opt = make_optimizer(model, self.train)
        self.sched = make_scheduler(self.opt, self.train, self.epochs * self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def summary(self) -> str:
        on_nonfinite = self.nonfinite.mode
        return (f"training {self.spec['run_key']} on {self.device} ({torch.get_num_threads()} threads, "
                f"{self.workers} loader workers{', AMP' if self.amp else ''}"
                f"{', channels_last' if self.channels_last else ''}): "
                f"{len(self.train_ds)} train / {len(self.val_ds)} val images, {self.epochs} epochs"
                f"{'' if on_nonfinite == 'stop' else f', on_nonfinite={on_nonfinite}'}")


# ------------------------------------------------------------------ one trainer per run directory
@contextmanager
def run_dir_lock(out_dir: Path):
    """Hold ``<out_dir>/train.lock`` (an exclusive ``flock``) for the block, the file naming
    this process; raise :class:`RunDirBusy` at once when another process holds it. A lock
    file nobody holds but that names a process was left by a killed trainer: taken over with
    a note. The file is removed when the block ends (returns or raises)."""
    path = out_dir / LOCK_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(_read_all(fh))
            fh.close()
            raise RunDirBusy(
                f"{out_dir} is being trained by another process: {holder} (lock file {path}). Wait "
                "for it to finish, or stop it (kill that pid on that host) and run again: a rerun resumes "
                "from its last checkpoint") from None
        # a holder removes the file before letting go: if that happened after our open, the
        # lock we got is on the removed file, so open the new one
        if _same_file(path, fh):
            break
        fh.close()
    try:
        previous = _read_all(fh)
        if previous.strip():
            print(f"note: taking over {path}, left by {_lock_holder(previous)}, which no longer runs "
                  "(a killed trainer)", flush=True)
        content = {"pid": os.getpid(), "host": socket.gethostname(),
                   "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with _space_needed(path, 200):
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(content) + "\n")
            fh.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock: no other trainer has it
        fh.close()


def _read_all(fh) -> str:
    fh.seek(0)
    return fh.read()


def _same_file(path: Path, fh) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    ours = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino)


def _lock_holder(text: str) -> str:
    """Who a lock file's ``text`` names: "pid P on host H, since T"."""
    if not text.strip():
        return "a process that has not written its pid yet (it is starting)"
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on host {holder['host']}, since {holder['started']}"
    except (ValueError, TypeError, KeyError):
        return f"a process the lock file does not name (it holds {text[:200]!r})"


# ------------------------------------------------------------------ set-up
def setup(spec: dict, data_dir: Path, out_dir: Path, *, threads: int | None = None,
          progress: bool = True) -> Training:
    """Device, data and loaders, model, loss, optimiser and scheduler of the run ``spec``."""
    tr = spec["train"]
    watch = WorkflowWatch.from_env()
    device = setup_torch(threads or tr.get("threads"))
    meta = read_json(data_dir / "meta.json")
    if int(meta["num_classes"]) != spec["dataset"]["num_classes"]:
        raise DataError(f"{data_dir / 'meta.json'} says {int(meta['num_classes'])} classes but the config expects "
                        f"{spec['dataset']['num_classes']}; rerun `segbench prepare`")
    torch.manual_seed(int(spec["seed"]))

    train_ds = SegmentationDataset(data_dir / "manifest.csv", "train", train_transform(tr))
    val_ds = SegmentationDataset(data_dir / "manifest.csv", "val", None)
    if len(train_ds) < tr["batch_size"]:
        raise DataError(f"the train split of {data_dir} has {len(train_ds)} images, fewer than "
                        f"batch_size={tr['batch_size']}; lower train.batch_size")
    gen = torch.Generator()
    threads_used = torch.get_num_threads()
    workers = loader_workers(tr["workers"], job_cpus(threads_used), threads_used, device)
    loader_kw = dict(num_workers=workers, worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
                     persistent_workers=False)
    run = Training(
        spec=spec, out_dir=out_dir, device=device, amp=bool(tr.get("amp")) and device.type == "cuda",
        channels_last=use_channels_last(tr.get("channels_last", "auto"), device), meta=meta,
        config_hash=spec_hash(spec), train_ds=train_ds, val_ds=val_ds,
        train_loader=torch.utils.data.DataLoader(train_ds, batch_size=tr["batch_size"], shuffle=True,
                                                 drop_last=True, generator=gen, **loader_kw),
        val_loader=torch.utils.data.DataLoader(val_ds, batch_size=spec["eval"]["batch_size"], shuffle=False,
                                               collate_fn=pad_collate, **loader_kw),
        generator=gen, workers=workers, init_rng=torch.get_rng_state(), progress=progress, watch=watch)
    run.build()
    run.pretrained = getattr(run.model, "pretrained_info", None)  # ImageNet backbone weights (params.pretrained)
    if run.pretrained:
        p = run.pretrained
        print(f"pretrained backbone: {p['source']} from {p['file']} (sha256 {p['sha256']}, {p['tensors']} tensors)",
              flush=True)
    run.loss_fn = build_loss({k: v for k, v in spec["loss"].items() if k != "name"}).to(device)
    run.needs_embeddings = bool(getattr(run.loss_fn, "needs_embeddings", False))
    if run.needs_embeddings and not hasattr(run.model, "forward_train"):
        raise ValueError(
            f"loss '{spec['loss']['name']}' ({spec['loss']['type']}) needs pixel embeddings, but model "
            f"'{spec['model']['name']}' ({spec['model']['arch']}) does not expose them; use a model with an "
            "embedding head (see `segbench models`) or another loss")
    run.nonfinite = NonFinitePolicy(tr.get("on_nonfinite", "stop"), run)
    return run


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


# ------------------------------------------------------------------ resume
def resume(run: Training) -> list[dict]:
    """The history of the epochs ``ckpt/last.pt`` holds, its states loaded into ``run``; []
    when there is none or it is not this run's (another config hash, unreadable, not fitting)."""
    # temporary files of a killed predecessor (this job owns its outputs exclusively)
    for target in (run.ckpt_path, run.out_dir / "model.pt", run.out_dir / "history.csv", run.out_dir / "run.json"):
        for stale in remove_stale_temps(target):
            print(f"removed {stale}, left by a killed job", flush=True)
    path = run.ckpt_path
    state = _load_checkpoint(path, run.device) if path.exists() else None
    if state is None:
        return []
    if state["config_hash"] != run.config_hash:
        print(f"ignoring {path}: it belongs to another configuration (hash "
              f"{state['config_hash']} != {run.config_hash}); training from scratch", flush=True)
        return []
    try:
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        history = [dict(r) for r in state["history"]]
        epoch = int(state["epoch"])
        if not 0 < epoch <= run.epochs or len(history) != epoch:
            raise ValueError(f"epoch {epoch} with {len(history)} history rows, for {run.epochs} epochs")
    except Exception as e:  # noqa: BLE001 - e.g. the model's code changed since the checkpoint
        _set_aside(path, f"does not fit this run ({type(e).__name__}: {_first_line(e)})")
        run.build()
        return []
    print(f"resuming {run.spec['run_key']} from {path} after epoch {epoch} of {run.epochs}", flush=True)
    return history


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


# ------------------------------------------------------------------ one epoch
def train_epoch(run: Training, epoch: int) -> dict:
    """Epoch ``epoch`` (0-based), seeded from (seed, epoch): every batch, validation when
    due (``train.val_every``, and after the last epoch); returns its history row (printed)."""
    t0 = time.time()
    seed = _epoch_seed(run.seed, epoch)
    torch.manual_seed(seed)
    run.generator.manual_seed(seed)
    if run.workers == 0:
        run.train_ds.transform.set_random_seed(seed)
    run.model.train()
    run.nonfinite.start_epoch(epoch)
    conf = torch.zeros(run.num_classes, run.num_classes, dtype=torch.int64, device=run.device)
    loss_sum, n_batches = 0.0, 0
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{run.epochs}", unit="batch",
               **progress_kwargs(run.progress))
    for step, (images, labels, idx) in enumerate(bar):
        _stop_if_workflow_gone(run, epoch, step)
        images, labels = _to_device(images, labels, run.device, run.channels_last)
        run.nonfinite.before_forward(run.model)
        with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.amp):
            if run.needs_embeddings:
                # models with an embedding head compute it in training only: forward() stays lean
                out = run.model.forward_train(images)
                logits = out["logits"]
                loss = run.loss_fn(logits, labels, embeddings=out["embeddings"])
            else:
                logits = run.model(images)
                loss = run.loss_fn(logits, labels)
        if run.nonfinite.rejects(loss, run.model, step, idx):
            continue
        _optimise(run, loss)
        loss_sum += float(loss.detach())
        n_batches += 1
        conf += _train_confusion(logits, labels, run.num_classes)
        bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}", refresh=False)
    bar.close()
    train_scores = scores(conf.cpu())
    row = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_batches, 1),
           "train_mIoU": train_scores["mIoU"], "train_aAcc": train_scores["aAcc"],
           "lr": run.opt.param_groups[0]["lr"], "skipped_batches": run.nonfinite.skipped}
    if (epoch + 1) % run.train["val_every"] == 0 or epoch + 1 == run.epochs:
        val_loss, val_scores = validate(run.model, run.val_loader, run.loss_fn, run.num_classes, run.device,
                                        run.amp, run.channels_last)
        row.update(val_loss=val_loss, val_mIoU=val_scores["mIoU"], val_aAcc=val_scores["aAcc"])
    row["epoch_seconds"] = time.time() - t0
    row["time"] = time.time()
    print(f"epoch {epoch + 1}/{run.epochs}: " + ", ".join(
        f"{k}={v:.4f}" for k, v in row.items() if k not in ("epoch", "time") and isinstance(v, float)
        and not math.isnan(v)), flush=True)
    return row


def _stop_if_workflow_gone(run: Training, epoch: int, step: int) -> None:
    """Raise :class:`WorkflowGone` when the snakemake that started this job is gone."""
    gone = run.watch.gone()
    if gone is None:
        return
    if epoch > 0:
        kept = (f"the last checkpoint, {run.ckpt_path} (after epoch {epoch} of {run.epochs}), is kept: "
                "a rerun resumes from it")
    else:
        kept = "no epoch had finished, so there is no checkpoint yet: a rerun starts this run again"
    raise WorkflowGone(
        f"{gone}: stopping training at batch {step + 1}/{run.steps_per_epoch} of epoch {epoch + 1}/{run.epochs} "
        f"so that no trainer runs unwatched. {kept} (`snakemake --unlock`, then the same snakemake command)")


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _to_device(images, labels, device: torch.device, channels_last: bool):
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def _train_confusion(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The confusion matrix of a training batch on every 2nd row and column (a quarter of its
    pixels), so history.csv's train_mIoU and train_aAcc are estimates from that sample (the
    validation scores count every pixel). Counting every pixel cost about 5% of a training
    step on a CPU (bench/bench_step.py), this about 1%. The dataset has checked the label
    ids, so ignored pixels go to an extra bin instead of being indexed out."""
    c = num_classes
    pred = logits.detach()[:, :, ::2, ::2].max(1).indices
    target = labels[:, ::2, ::2]
    idx = target * c + pred
    idx.masked_fill_(target == IGNORE_INDEX, c * c)
    return torch.bincount(idx.reshape(-1), minlength=c * c + 1)[: c * c].reshape(c, c)


def _optimise(run: Training, loss: torch.Tensor) -> None:
    """One optimisation step on ``loss``: backward, optimiser, gradient scaler, scheduler."""
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    run.sched.step()


class NonFinitePolicy:
    """``train.on_nonfinite``: what a batch whose loss is NaN or infinite does (see the
    module docstring). ``stop`` raises :class:`NonFiniteLoss`; ``skip`` restores the model's
    buffers (batch-norm statistics) as they were before the batch's forward pass, counts
    the batch and raises only when more than :data:`MAX_SKIPPED_FRACTION` of an epoch's
    batches were skipped."""

    def __init__(self, mode: str, run: Training):
        self.mode, self.run = mode, run
        self.max_skipped = int(MAX_SKIPPED_FRACTION * run.steps_per_epoch)
        self.epoch, self.skipped = 0, 0
        self._buffers: list[torch.Tensor] | None = None

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.skipped = epoch, 0

    def before_forward(self, model: torch.nn.Module) -> None:
        if self.mode == "skip":
            # a skipped batch must leave no trace: its forward pass updates BN statistics
            self._buffers = [b.detach().clone() for b in model.buffers()]

    def rejects(self, loss: torch.Tensor, model: torch.nn.Module, step: int, idx) -> bool:
        """False for a finite loss; True for a non-finite one that is skipped (buffers
        restored); raises :class:`NonFiniteLoss` when the policy says stop."""
        if torch.isfinite(loss.detach()):
            return False
        run, epoch = self.run, self.epoch
        where = (f"loss is {float(loss.detach())} at step {epoch * run.steps_per_epoch + step + 1} (epoch "
                 f"{epoch + 1}/{run.epochs}, batch {step + 1}/{run.steps_per_epoch}); batch files: "
                 f"{', '.join(run.train_ds.rows[int(i)]['image'] for i in idx)}")
        last_good = (f"last good checkpoint: {run.ckpt_path} (after epoch {epoch})" if epoch > 0
                     else "last good checkpoint: none (no epoch finished yet)")
        if self.mode != "skip":
            raise NonFiniteLoss(f"{where}; {last_good}. Check these files and the learning rate; "
                                "train.on_nonfinite: skip drops such batches instead")
        with torch.no_grad():
            for b, saved in zip(model.buffers(), self._buffers):
                b.copy_(saved)
        self.skipped += 1
        print(f"skipped batch: {where}", file=sys.stderr, flush=True)
        if self.skipped > self.max_skipped:
            raise NonFiniteLoss(
                f"{self.skipped} of the {run.steps_per_epoch} batches of epoch {epoch + 1} had a non-finite "
                f"loss, more than {MAX_SKIPPED_FRACTION:.0%} (train.on_nonfinite: skip): stopping, the "
                f"data or the learning rate is broken. Last: {where}; {last_good}")
        return True


@torch.no_grad()
def validate(model, loader, loss_fn, num_classes, device, amp: bool,
             channels_last: bool = False) -> tuple[float, dict]:
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    total, pixels = 0.0, 0
    for images, labels, _ in loader:
        images, labels = _to_device(images, labels, device, channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)
        n = int((labels != IGNORE_INDEX).sum())
        total += float(loss_fn(logits, labels)) * n
        pixels += n
        conf += confusion_matrix(logits.argmax(1), labels, num_classes)
    return total / max(pixels, 1), scores(conf.cpu())


# ------------------------------------------------------------------ checkpoint
def checkpoint(run: Training, history: list[dict]) -> None:
    """``ckpt/last.pt`` after the last epoch of ``history``: everything a rerun resumes from."""
    _save_checkpoint(run.ckpt_path, {
        "epoch": len(history), "config_hash": run.config_hash, "model": run.model.state_dict(),
        "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(), "scaler": run.scaler.state_dict(),
        "history": history})


def _save_checkpoint(path: Path, state: dict) -> None:
    _save_torch(path, state)


def _save_torch(path: Path, obj) -> None:
    """``torch.save(obj)`` to ``path``, atomically, first checking there is room for it
    (:func:`_save_size`); a full disk raises :class:`DiskFull` and leaves the previous file in place.
    (Written through a Python file object: torch's own file writer reports a full disk as
    "basic_ios::clear: iostream error", losing the reason.)"""
    with _space_needed(path, _save_size(obj)):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)


def _save_size(obj) -> int:
    """About the size of ``torch.save(obj)``'s file: the bytes of the tensors in ``obj`` (nested
    dicts, lists, tuples), plus the zip and pickle entries, about 300 bytes a tensor (measured
    on a checkpoint here: within 1% of the file's size)."""
    return 4096 + sum(t.numel() * t.element_size() + 320 for t in _tensors(obj))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


@contextmanager
def _space_needed(path: Path, needed: int):
    """Raise :class:`DiskFull` before the block when the file system of ``path`` has less than
    ``needed`` bytes free, and instead of the block's OSError when it runs out of space (ENOSPC,
    or EDQUOT: the user's quota) while writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise DiskFull(_no_space(path, needed, free, "no space left on device"))
    try:
        yield
    except (OSError, RuntimeError) as e:
        code = _space_errno(e)
        if code is None:
            raise
        reason = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        raise DiskFull(_no_space(path, needed, shutil.disk_usage(path.parent).free, reason)) from e


def _space_errno(e: BaseException) -> int | None:
    """ENOSPC or EDQUOT when ``e`` (or the error it arose from) is one, else None."""
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err.errno
    return None


def _no_space(path: Path, needed: int, free: int, reason: str) -> str:
    return (f"{reason} at {path}: {needed / 1e6:.2f} MB needed, {free / 1e6:.2f} MB free; free space there "
            "or move the results (the config's `results:`) to a larger disk, then rerun: training resumes "
            "from its last complete checkpoint")


# ------------------------------------------------------------------ outputs
def write_outputs(run: Training, history: list[dict], *, resumed_from: int, wall_seconds: float) -> dict:
    """The declared outputs: ``model.pt``, ``history.csv`` and, last of all, ``run.json``
    (whose record is returned)."""
    _save_torch(run.out_dir / "model.pt", run.model.state_dict())
    text = _history_csv(history)
    with _space_needed(run.out_dir / "history.csv", len(text)):
        write_text(run.out_dir / "history.csv", text)
    record = run_record(run, history, resumed_from=resumed_from, wall_seconds=wall_seconds)
    with _space_needed(run.out_dir / "run.json", len(json.dumps(record))):
        write_json(run.out_dir / "run.json", record)
    return record


def run_record(run: Training, history: list[dict], *, resumed_from: int, wall_seconds: float) -> dict:
    """run.json's record of the training ``run`` after the epochs of ``history``."""
    spec = run.spec
    return {
        "run_key": spec["run_key"], "dataset": spec["dataset"]["name"], "model": spec["model"]["name"],
        "loss": spec["loss"]["name"], "seed": run.seed, "config": spec, "config_hash": run.config_hash,
        "num_classes": run.num_classes, "class_names": run.meta["class_names"], "palette": run.meta["palette"],
        "device": str(run.device), "threads": torch.get_num_threads(), "workers": run.workers, "amp": run.amp,
        "channels_last": run.channels_last, "pretrained": run.pretrained,
        "epochs": run.epochs, "on_nonfinite": run.nonfinite.mode,
        "skipped_batches": sum(int(r.get("skipped_batches") or 0) for r in history),
        "train_seconds": sum(r["epoch_seconds"] for r in history),
        "resumed_from_epoch": resumed_from or None, "wall_seconds_this_job": wall_seconds,
    }


def _history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})
    return buf.getvalue()
