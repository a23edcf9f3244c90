"""Training of one run: seeded, resumable, with a per-epoch history.

:func:`train_run` reads in one screen: :func:`setup` (data, model, loss, optimiser,
scheduler), :func:`resume` (from the checkpoint), then per epoch :func:`train_epoch` (its
history row) and :func:`checkpoint`, and last :func:`write_outputs`.

The run's resolved spec (see :mod:`segbench.plan`) fully determines the result on CPU:
every epoch re-seeds torch and draws the order of the train images from (seed, epoch)
(:class:`segbench.data.dataset.GlobalBatchSampler`), and each image's augmentation from
(seed, epoch, image index), so a run resumed from the checkpoint of epoch e continues
exactly as an uninterrupted one would, whatever the number of DataLoader workers.
``train.devices`` N > 1 trains the run on N processes with DistributedDataParallel, the same
training up to floating-point noise (:mod:`segbench.engine.distributed`, docs/cluster.md
"One run on several GPUs").
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

Stopped by a signal (:func:`segbench.engine.common.stop_on_signal`, which ``segbench train``
installs for SIGTERM: SLURM's warning before a time limit or preemption, a forwarded cancel):
at the next step boundary the job writes ``ckpt/last.pt`` there (model, optimiser,
scheduler, scaler, the RNG states of torch, numpy, Python and the loader's generator, and
the epoch's running loss sum, train confusion and skipped batches) and raises
:class:`Preempted` (exit status 143), whose message says where the rerun resumes. The rerun
loads the interrupted epoch's first S batches again without training on them (the same
shuffle and augmentation draws: every worker's stream is seeded from the epoch's seed, so
only replaying the loading reproduces it), restores the RNG states and accumulators and
goes on; on CPU it ends bit-identical to an uninterrupted run. ``train.checkpoint_every``
(steps; absent or 0: only at epochs' ends and on a signal) writes such checkpoints inside
long epochs too.

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
import random
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segbench import IGNORE_INDEX
from segbench.data import DataError
from segbench.data.dataset import GlobalBatchSampler, SegmentationDataset, pad_collate, seed_worker
from segbench.data.transforms import train_transform
from segbench.engine import distributed
from segbench.engine.common import (WorkflowWatch, job_cpus, progress_kwargs, setup_torch, signal_name,
                                    stop_requested, use_channels_last)
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


class Preempted(UserError):
    """A signal (SIGTERM: SLURM's warning before a time limit or preemption) stopped the
    training at a step boundary, after writing a checkpoint there that a rerun resumes from
    (the message names the epoch and step). ``segbench train`` exits with status 128 +
    ``signum`` (143 for SIGTERM, what a shell reports for a process the signal ended)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


# ------------------------------------------------------------------ the run
def train_run(spec: dict, data_dir: str | Path, out_dir: str | Path, *, threads: int | None = None,
              progress: bool = True, live=None) -> dict:
    """Train the run ``spec`` on the prepared data in ``data_dir`` into ``out_dir`` (resuming
    from its checkpoint there, if any); returns the record written to run.json. ``live``: a
    :class:`segbench.tracking.LiveRun` that logs the training into MLflow as it runs, or None.

    ``train.devices`` N > 1: this process is rank 0 of N (it holds the lock, logs live and
    writes every file) and starts the other ranks (:func:`segbench.engine.distributed.run_ranks`,
    which runs :func:`_train_rank` in each). ``threads``: the job's torch threads, shared
    evenly by its processes (at least 1 each); None: ``train.threads`` per process."""
    world_size = distributed.world_size_of(spec["train"])
    if threads and world_size > 1:
        threads = max(1, threads // world_size)
    with run_dir_lock(Path(out_dir)):
        if world_size == 1:
            return _train(spec, Path(data_dir), Path(out_dir), threads=threads, progress=progress, live=live)
        return distributed.run_ranks(
            world_size,
            lambda: _train(spec, Path(data_dir), Path(out_dir), threads=threads, progress=progress, live=live,
                           rank=0, world_size=world_size),
            _train_rank, (spec, str(data_dir), str(out_dir), threads, world_size))


def _train_rank(rank: int, spec: dict, data_dir: str, out_dir: str, threads: int | None, world_size: int) -> None:
    """Rank ``rank`` > 0 of a run on ``world_size`` processes (started by rank 0): trains its
    share of every batch, writes nothing."""
    try:
        _train(spec, Path(data_dir), Path(out_dir), threads=threads, progress=False, live=None, rank=rank,
               world_size=world_size)
    except Preempted:
        return  # rank 0 reports the stop; it wrote the checkpoint


def _train(spec: dict, data_dir: Path, out_dir: Path, *, threads: int | None, progress: bool, live,
           rank: int = 0, world_size: int = 1) -> dict | None:
    """The epochs of the run as process ``rank`` of ``world_size``; the record of run.json
    (rank 0), None (the other ranks, which write no file)."""
    run = setup(spec, data_dir, out_dir, threads=threads, progress=progress and rank == 0, rank=rank,
                world_size=world_size)
    history = resume_all_ranks(run)
    start_epoch = len(history)
    start_training(run)
    if run.is_main:
        print(run.summary(), flush=True)
    t_start = time.time()
    with live_logging(live, run, history, t_start):
        for epoch in range(start_epoch, run.epochs):
            history.append(train_epoch(run, epoch, history))
            if run.is_main:
                checkpoint(run, history)
            if live is not None:
                live.epoch(history[-1])
        if not run.is_main:
            return None
        return write_outputs(run, history, resumed_from=start_epoch, wall_seconds=time.time() - t_start)


@contextmanager
def live_logging(live, run: Training, history: list[dict], t_start: float):
    """Around the epochs: ``live`` (None: nothing) logs the start (with the resumed
    ``history``) and then the end, FINISHED when the block returns, KILLED when it is stopped
    (Ctrl-C, SIGTERM: :class:`Preempted`, the workflow gone: :class:`WorkflowGone`), FAILED when
    it raises anything else. Never raises itself (the logging is best effort)."""
    if live is None:
        yield
        return
    live.start(run_record(run, history, resumed_from=len(history), wall_seconds=0.0), run.out_dir,
               history, t_start)
    try:
        yield
    except (KeyboardInterrupt, SystemExit, WorkflowGone, Preempted):
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
    generator: torch.Generator   # the train loader's (its workers' seeds): re-seeded every epoch
    sampler: GlobalBatchSampler  # the train loader's batches: one permutation per epoch from (seed, epoch)
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
    resume_at: dict | None = None        # the interrupted epoch's state (:func:`resume`), if any
    rank: int = 0                        # this process of world_size (train.devices); 0 writes the files
    world_size: int = 1
    net: torch.nn.Module | None = None   # what a training step calls (:func:`start_training`)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def batch_per_device(self) -> int:
        return self.train["batch_size"] // self.world_size

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
        if self.world_size > 1 and self.train.get("sync_bn", True):
            model = distributed.sync_batch_norm(model, self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.opt = make_optimizer(model, self.train)
        self.sched = make_scheduler(self.opt, self.train, self.epochs * self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def summary(self) -> str:
        on_nonfinite = self.nonfinite.mode
        where = (str(self.device) if self.world_size == 1 else
                 f"{self.world_size} processes ({self.device.type}, batch {self.batch_per_device} each"
                 f"{', SyncBN' if self.train.get('sync_bn', True) else ''})")
        return (f"training {self.spec['run_key']} on {where} ({torch.get_num_threads()} threads, "
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
          progress: bool = True, rank: int = 0, world_size: int = 1) -> Training:
    """Device, data and loaders, model, loss, optimiser and scheduler of the run ``spec``, as
    process ``rank`` of ``world_size`` (``train.devices``; each process uses ``threads``).

    The train loader takes this process's share of every global batch
    (:class:`GlobalBatchSampler`), the val loader every ``world_size``-th val image from
    ``rank`` on (:func:`validate` sums the shares)."""
    tr = spec["train"]
    watch = WorkflowWatch.from_env()
    device = setup_torch(threads or tr.get("threads"),
                         device=distributed.rank_device(rank, world_size) if world_size > 1 else None)
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
    sampler = GlobalBatchSampler(len(train_ds), tr["batch_size"], world_size, rank)
    threads_used = torch.get_num_threads()
    # the job's CPUs are shared by its world_size processes
    workers = loader_workers(tr["workers"], job_cpus(threads_used) // world_size, threads_used, device)
    loader_kw = dict(num_workers=workers, worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
                     persistent_workers=False)
    run = Training(
        spec=spec, out_dir=out_dir, device=device, amp=bool(tr.get("amp")) and device.type == "cuda",
        channels_last=use_channels_last(tr.get("channels_last", "auto"), device), meta=meta,
        config_hash=checkpoint_hash(spec), train_ds=train_ds, val_ds=val_ds,
        train_loader=torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, generator=gen, **loader_kw),
        val_loader=torch.utils.data.DataLoader(val_ds, batch_size=spec["eval"]["batch_size"],
                                               sampler=range(rank, len(val_ds), world_size),
                                               collate_fn=pad_collate, **loader_kw),
        generator=gen, sampler=sampler, workers=workers, init_rng=torch.get_rng_state(), progress=progress, watch=watch,
        rank=rank, world_size=world_size)
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


#: keys of the ``train`` spec that say how a run is spread over processes, not what it
#: learns: left out of the checkpoint's config hash, so a checkpoint resumes with any N
PROCESS_KEYS = ("devices", "sync_bn", "checkpoint_every")


def checkpoint_hash(spec: dict) -> str:
    """The config hash a checkpoint is written with and must match to be resumed: the
    spec's hash without :data:`PROCESS_KEYS` (a spec without them hashes as before)."""
    train = {k: v for k, v in spec["train"].items() if k not in PROCESS_KEYS}
    return spec_hash({**spec, "train": train})


def resume_all_ranks(run: Training) -> list[dict]:
    """:func:`resume` in every process from the same checkpoint: rank 0 first (it alone
    removes stale files or sets a bad checkpoint aside), then the others; an error when
    they disagree on the epoch to resume after."""
    if run.world_size == 1:
        return resume(run)
    history = resume(run) if run.is_main else []
    torch.distributed.barrier()
    if not run.is_main:
        history = resume(run)
    epochs = torch.tensor([len(history), -len(history)], device=run.device)
    torch.distributed.all_reduce(epochs, op=torch.distributed.ReduceOp.MAX)
    if int(epochs[0]) != -int(epochs[1]):
        raise RuntimeError(f"the processes of {run.spec['run_key']} resumed after different epochs "
                           f"({-int(epochs[1])} to {int(epochs[0])}) from {run.ckpt_path}")
    return history


def start_training(run: Training) -> None:
    """``run.net``, what a training step calls: the model (its ``forward_train`` for a loss
    that needs embeddings), wrapped in DistributedDataParallel when ``world_size`` > 1 (after
    :func:`resume`: the wrapper starts every rank from rank 0's weights). DDP averages the
    ranks' gradients, so each step applies the mean of the ranks' losses (see docs/cluster.md,
    "One run on several GPUs", for the loss normalisation)."""
    net = _ForwardTrain(run.model) if run.needs_embeddings else run.model
    if run.world_size > 1:
        # a model with an embedding head leaves it unused in a plain forward pass
        unused = hasattr(run.model, "forward_train") and not run.needs_embeddings
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=unused)
    run.net = net


class _ForwardTrain(torch.nn.Module):
    """A model seen through its ``forward_train`` (logits and embeddings), as DDP needs a
    module whose ``forward`` is the training pass."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> dict:
        return self.model.forward_train(images)


def loader_workers(configured: int, cpus: int, threads: int, device: torch.device) -> int:
    """DataLoader worker processes for a job with ``cpus`` CPUs and ``threads`` torch threads.

    On a GPU the CPUs exist to feed it: every CPU the torch threads leave free decodes and
    augments (at least ``train.workers``). On a CPU the torch threads do the work and
    ``train.workers`` is kept as configured. (The results do not depend on the worker count:
    each sample's augmentation is drawn from its own stream, see
    :meth:`segbench.data.dataset.SegmentationDataset.set_epoch`.)
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
        partial = state.get("partial")  # None: written at an epoch's end
        if not (0 < epoch <= run.epochs or (partial and epoch == 0)) or len(history) != epoch:
            raise ValueError(f"epoch {epoch} with {len(history)} history rows, for {run.epochs} epochs")
        if partial and (partial["epoch"] != epoch or epoch >= run.epochs
                        or not 0 <= partial["step"] < run.steps_per_epoch):
            raise ValueError(f"written at step {partial['step']} of epoch {partial['epoch'] + 1} after epoch {epoch}, "
                             f"for {run.steps_per_epoch} steps per epoch")
    except Exception as e:  # noqa: BLE001 - e.g. the model's code changed since the checkpoint
        _set_aside(path, f"does not fit this run ({type(e).__name__}: {_first_line(e)})")
        run.build()
        return []
    run.resume_at = partial
    if run.is_main and partial:  # (the other ranks of a run resume from the same file silently)
        print(f"resuming {run.spec['run_key']} from {path} at epoch {epoch + 1}/{run.epochs}, step "
              f"{partial['step']}/{run.steps_per_epoch} (the first {partial['step']} batches are loaded again, "
              "not trained on)", flush=True)
    elif run.is_main:
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
def train_epoch(run: Training, epoch: int, history: list[dict]) -> dict:
    """Epoch ``epoch`` (0-based), seeded from (seed, epoch): every batch, validation when
    due (``train.val_every``, and after the last epoch); returns its history row (printed).
    ``history``: the rows of the epochs before, which a checkpoint inside the epoch holds.

    At a step boundary (before batch S, 0-based) the epoch writes a checkpoint of its state
    there when ``train.checkpoint_every`` divides S, and when a stop was requested
    (SIGTERM), after which it raises :class:`Preempted`. Resumed inside this epoch
    (``run.resume_at``), it loads the first S batches as the interrupted job did (same
    shuffle, same augmentation draws in the same workers) without training on them, then
    restores the checkpoint's RNG states and accumulators and goes on from batch S."""
    t0 = time.time()
    seed = _epoch_seed(run.seed, epoch)
    torch.manual_seed(seed)
    run.generator.manual_seed(seed)
    run.sampler.set_epoch(seed)              # the epoch's permutation, the same in every process
    run.train_ds.set_epoch(run.seed, epoch)  # each sample's augmentation from (seed, epoch, index)
    if run.net is None:  # a caller of setup() that did not call start_training() (bench/bench_step.py)
        start_training(run)
    run.model.train()
    run.nonfinite.start_epoch(epoch)
    conf = torch.zeros(run.num_classes, run.num_classes, dtype=torch.int64, device=run.device)
    loss_sum, n_batches = 0.0, 0
    resumed, run.resume_at = run.resume_at, None
    first = resumed["step"] if resumed else 0
    if resumed:
        run.nonfinite.skipped = resumed["skipped"]
        t0 -= resumed["seconds"]
        if run.is_main:  # the sums over the ranks (the other ranks start from zero: see _checkpoint_in_epoch)
            loss_sum, n_batches, conf = resumed["loss_sum"], resumed["n_batches"], resumed["conf"].to(run.device)
    every = int(run.train.get("checkpoint_every") or 0)
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{run.epochs}", unit="batch",
               **progress_kwargs(run.progress))
    for step, (images, labels, idx) in enumerate(bar):
        if step < first:
            continue  # trained on before the interruption: loaded as then, not trained on again
        if resumed and step == first:
            _set_rng_states(run, resumed["rng"])
        stop = _stop_signal(run)
        if stop or (every and step > first and step % every == 0):
            _checkpoint_in_epoch(run, history, {
                "epoch": epoch, "step": step, "loss_sum": loss_sum, "n_batches": n_batches, "conf": conf,
                "skipped": run.nonfinite.skipped, "seconds": time.time() - t0, "rng": _rng_states(run)})
            if stop:
                raise Preempted(_preempted_message(run, stop, epoch, step), stop)
        _stop_if_workflow_gone(run, epoch, step)
        images, labels = _to_device(images, labels, run.device, run.channels_last)
        run.nonfinite.before_forward(run.model)
        with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.amp):
            out = run.net(images)  # the model (or its DDP wrapper): start_training
            if run.needs_embeddings:
                # models with an embedding head compute it in training only: forward() stays lean
                logits = out["logits"]
                loss = run.loss_fn(logits, labels, embeddings=out["embeddings"])
            else:
                logits = out
                loss = run.loss_fn(logits, labels)
        if run.nonfinite.rejects(loss if run.world_size == 1 else _sum_over_ranks(loss), run.model, step, idx):
            continue
        _optimise(run, loss)
        loss_sum += float(loss.detach())
        n_batches += 1
        conf += _train_confusion(logits, labels, run.num_classes)
        bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}", refresh=False)
    bar.close()
    if run.world_size > 1:  # the epoch's row covers every rank's share of the batches
        loss_sum, n_batches = _mean_over_ranks(loss_sum, n_batches, run.device)
        torch.distributed.all_reduce(conf)
    train_scores = scores(conf.cpu())
    row = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_batches, 1),
           "train_mIoU": train_scores["mIoU"], "train_aAcc": train_scores["aAcc"],
           "lr": run.opt.param_groups[0]["lr"], "skipped_batches": run.nonfinite.skipped}
    if (epoch + 1) % run.train["val_every"] == 0 or epoch + 1 == run.epochs:
        val_loss, val_scores = validate(run.model, run.val_loader, run.loss_fn, run.num_classes, run.device,
                                        run.amp, run.channels_last, distributed=run.world_size > 1)
        row.update(val_loss=val_loss, val_mIoU=val_scores["mIoU"], val_aAcc=val_scores["aAcc"])
    row["epoch_seconds"] = time.time() - t0
    row["time"] = time.time()
    if run.is_main:
        print(f"epoch {epoch + 1}/{run.epochs}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in row.items() if k not in ("epoch", "time") and isinstance(v, float)
            and not math.isnan(v)), flush=True)
    return row


def _sum_over_ranks(loss: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's ``loss`` (detached): non-finite when any rank's is, so that all
    ranks skip or stop on the same batch (``train.on_nonfinite``)."""
    total = loss.detach().float().clone()
    torch.distributed.all_reduce(total)
    return total


def _mean_over_ranks(loss_sum: float, n_batches: int, device: torch.device) -> tuple[float, int]:
    """An epoch's (loss sum, batch count) over the ranks: the sum of the rank means of each
    global batch, divided by the ranks (so loss_sum / n_batches is the mean over the global
    batches, as DDP trains on), and the number of global batches."""
    t = torch.tensor([loss_sum, float(n_batches)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    world = torch.distributed.get_world_size()
    return float(t[0]) / world, round(float(t[1]) / world)


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


def _stop_signal(run: Training) -> int | None:
    """The signal that asked this job to stop (:func:`stop_requested`), or None; in a run on
    several processes rank 0's, so that every rank stops at the same step (the other ranks
    ignore SIGTERM: :mod:`segbench.engine.distributed`)."""
    signum = stop_requested()
    if run.world_size == 1:
        return signum
    flag = torch.tensor([signum or 0], device=run.device)
    torch.distributed.broadcast(flag, src=0)
    return int(flag) or None


def _checkpoint_in_epoch(run: Training, history: list[dict], partial: dict) -> None:
    """:func:`checkpoint` at a step boundary inside an epoch. In a run on several processes
    rank 0 writes it with the accumulators summed over the ranks (a resumed rank 0 starts
    from those sums and the others from zero, which add up to the same at the epoch's end)
    and every rank waits until it is written."""
    if run.world_size > 1:
        sums = torch.tensor([partial["loss_sum"], float(partial["n_batches"])], dtype=torch.float64,
                            device=run.device)
        conf = partial["conf"].clone()
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(conf)
        partial = {**partial, "loss_sum": float(sums[0]), "n_batches": round(float(sums[1])), "conf": conf}
    if run.is_main:
        checkpoint(run, history, partial)
    if run.world_size > 1:
        torch.distributed.barrier()


def _preempted_message(run: Training, signum: int, epoch: int, step: int) -> str:
    return (f"stopped by {signal_name(signum)} before batch {step + 1}/{run.steps_per_epoch} of epoch "
            f"{epoch + 1}/{run.epochs}, after writing the checkpoint {run.ckpt_path} there: the rerun (the same "
            f"snakemake or segbench command) resumes at epoch {epoch + 1}/{run.epochs}, step "
            f"{step}/{run.steps_per_epoch}, and ends as an uninterrupted run would")


def _rng_states(run: Training) -> dict:
    """The random states a resumed epoch restores: torch's (CPU and, on a GPU, CUDA), numpy's,
    Python's and the train loader's generator (numpy's key as a tensor: a checkpoint is loaded
    with ``weights_only``)."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
            "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "gauss": float(gauss)},
            "python": random.getstate(), "loader": run.generator.get_state()}


def _set_rng_states(run: Training, states: dict) -> None:
    """Restore what :func:`_rng_states` saved."""
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"] is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"].cpu(), run.device)
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(states["python"])
    run.generator.set_state(states["loader"].cpu())


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
             channels_last: bool = False, *, distributed: bool = False) -> tuple[float, dict]:
    """The mean loss per labelled pixel and the scores of ``model`` (the plain model, never its
    DDP wrapper) on ``loader``'s images. ``distributed``: each process scored its share of
    the val set; the losses, pixel counts and confusion matrices are summed over the
    processes, so every process returns the scores of the whole set (the confusion matrix,
    hence the mIoU, exactly as one process would count it)."""
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
    if distributed:
        sums = torch.tensor([total, float(pixels)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(conf)
        total, pixels = float(sums[0]), int(sums[1])
    return total / max(pixels, 1), scores(conf.cpu())


# ------------------------------------------------------------------ checkpoint
def checkpoint(run: Training, history: list[dict], partial: dict | None = None) -> None:
    """``ckpt/last.pt`` after the last epoch of ``history``: everything a rerun resumes from.
    Inside an epoch, ``partial`` holds that epoch's state at the step boundary (see
    :func:`train_epoch`): ``epoch`` (0-based), ``step`` (batches done), the accumulators
    ``loss_sum``, ``n_batches``, ``conf`` and ``skipped``, ``seconds`` spent and ``rng``
    (:func:`_rng_states`); None at an epoch's end."""
    _save_checkpoint(run.ckpt_path, {
        "epoch": len(history), "config_hash": run.config_hash, "model": run.model.state_dict(),
        "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(), "scaler": run.scaler.state_dict(),
        "history": history, "partial": partial})


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
        # processes of the run (train.devices) and each one's share of train.batch_size
        "world_size": run.world_size, "batch_per_device": run.batch_per_device,
        "sync_bn": run.world_size > 1 and bool(run.train.get("sync_bn", True)),
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
