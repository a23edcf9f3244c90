"""One run on N processes of one node (``train.devices: N``): the launcher, the ranks'
devices and the batch norm that is synchronised across them.

:func:`run_ranks` is how ``segbench train`` trains on N processes: the calling process is
rank 0 (it holds ``train.lock``, logs to MLflow and writes every file) and starts ranks
1..N-1 with ``torch.multiprocessing`` (spawn). They join one process group: NCCL when the
ranks train on GPUs (rank r on ``cuda:r`` of the visible ones), gloo on the CPU. Errors:

* a rank that raises sends its message (and when) to rank 0, which stops the other ranks
  and raises the first error in time: the cause, not the broken connections that follow it
  in the other ranks. Another rank's error becomes :class:`RankFailed` (with its traceback)
  or :class:`RankUserError` for a :class:`~segbench.errors.UserError`, which the command
  line prints as one; rank 0's own error (a preemption's, Ctrl-C) is raised as it is;
* the other ranks ignore SIGTERM and SIGINT: rank 0 alone decides when the run stops (and
  writes the checkpoint), then kills them (they write nothing);
* a rank that dies (killed) breaks the collectives of the others: gloo reports the closed
  connection at once; otherwise the process group's timeout (:data:`TIMEOUT`) ends them.

Batch norm: ``train.sync_bn`` (default true) normalises with the statistics of the global
batch. On GPUs that is torch's ``SyncBatchNorm``; torch's refuses CPU tensors, so on the CPU
:class:`GlobalBatchNorm` does the same in a few lines (two all-reduces per layer and step).
Both keep batch norm's state-dict keys, so checkpoints and ``model.pt`` load into the plain
model (evaluation, a resume with any N).
"""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segbench.errors import UserError

#: how long a rank waits in a collective (or for the others to start) before it gives up.
#: Long enough for rank 0's checkpoint writes; a rank that dies is noticed sooner by gloo.
TIMEOUT = timedelta(minutes=30)

#: how long rank 0 waits for the others to finish (or report their error) after its own end
JOIN_SECONDS = 60

#: how long rank 0, failing, waits for another rank's report of an earlier error
REPORT_SECONDS = 2


class RankFailed(RuntimeError):
    """A rank other than 0 failed; the message holds its traceback."""


class RankUserError(UserError):
    """A rank other than 0 stopped with a :class:`~segbench.errors.UserError` (its message)."""


def world_size_of(train: dict) -> int:
    """``train.devices`` of a resolved ``train`` spec (1 when absent), after checking that the
    global ``train.batch_size`` divides into equal per-process batches."""
    devices = int(train.get("devices", 1))
    if devices < 1:
        raise UserError(f"train.devices={devices} is not allowed; expected 1 or more processes")
    if train["batch_size"] % devices:
        raise UserError(f"train.batch_size={train['batch_size']} (the global batch) does not divide into "
                        f"train.devices={devices} equal per-process batches; make batch_size a multiple of "
                        f"{devices} (e.g. {devices * max(1, round(train['batch_size'] / devices))}) or change devices")
    return devices


def rank_device(rank: int, world_size: int) -> torch.device:
    """The device of ``rank``: the CPU when ``SEGBENCH_DEVICE`` says ``cpu`` or there is no
    GPU, else ``cuda:<rank>`` (a UserError when fewer than ``world_size`` GPUs are visible)."""
    forced = os.environ.get("SEGBENCH_DEVICE", "").strip()
    if forced.startswith("cpu") or not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count < world_size:
        raise UserError(f"train.devices={world_size} but this job sees {count} GPU(s) (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); give the job {world_size} GPUs "
                        "(the train rule asks for gpu=train.devices) or lower train.devices")
    return torch.device("cuda", rank)


def run_ranks(world_size: int, main: Callable[[], object], worker: Callable, worker_args: tuple):
    """Run ``main()`` here as rank 0 of ``world_size`` processes and ``worker(rank,
    *worker_args)`` in ranks 1..N-1 (spawned; ``worker`` must be importable, its arguments
    picklable), all in one process group; returns what ``main`` returns. Any rank's error
    ends all of them and is raised here (see the module docstring)."""
    device_type = rank_device(0, world_size).type
    backend = "nccl" if device_type == "cuda" else "gloo"
    address = f"tcp://127.0.0.1:{_free_port()}"
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    # not daemonic: a rank starts its own DataLoader workers
    others = [ctx.Process(target=_rank_main, args=(rank, world_size, backend, address, errors, worker, worker_args),
                          name=f"segbench-rank-{rank}") for rank in range(1, world_size)]
    for p in others:
        p.start()
    failed_at = None  # when rank 0 failed
    try:
        _join_group(0, world_size, backend, address)
        try:
            result = main()
        except BaseException:
            failed_at = time.time()
            raise
        finally:
            dist.destroy_process_group()
        for p in others:
            p.join(JOIN_SECONDS)
    except BaseException as e:
        failure = _failure_of_others(others, errors, before=failed_at)
        if failure is not None:
            raise failure from e
        raise
    finally:
        _stop(others)
    failure = _failure_of_others(others, errors)
    if failure is not None:
        raise failure
    return result


def _rank_main(rank, world_size, backend, address, errors, worker, worker_args) -> None:
    """A spawned rank: join the group, run ``worker``; an error goes to rank 0, then exit 1."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _join_group(rank, world_size, backend, address)
        worker(rank, *worker_args)
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - every failure is reported to rank 0, then the rank ends
        text = f"{type(e).__name__}: {e}" if isinstance(e, UserError) else "\n" + traceback.format_exc()
        errors.put((time.time(), rank, isinstance(e, UserError), text))
        os._exit(1)  # without waiting for the broken process group's shutdown


def _join_group(rank: int, world_size: int, backend: str, address: str) -> None:
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world_size, timeout=TIMEOUT)


def _failure_of_others(others: list, errors, before: float | None = None) -> Exception | None:
    """The first error another rank reported (waiting a little for a failing rank to report),
    as the exception rank 0 raises; None when none failed, or none failed ``before`` (the
    time rank 0 failed: later errors of the others follow from rank 0's)."""
    for p in others:  # a rank reports before it exits, so before rank 0 sees the broken connection
        p.join(REPORT_SECONDS)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    if before is not None:
        reported = [r for r in reported if r[0] < before]
    if reported:
        _, rank, user, text = min(reported)
        cls = RankUserError if user else RankFailed
        return cls(f"rank {rank} of {len(others) + 1} failed: {text}")
    if before is not None:
        return None
    for rank, p in enumerate(others, start=1):
        if p.exitcode not in (0, None):
            return RankFailed(f"rank {rank} of {len(others) + 1} ended with exit status {p.exitcode} "
                              "(killed? out of memory?) without reporting an error")
    return None


def _stop(others: list) -> None:
    """Kill the ranks this process started that still run (by their process, never by name;
    they ignore SIGTERM and hold nothing worth saving)."""
    for p in others:
        if p.is_alive():
            p.kill()
    for p in others:
        p.join()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ batch norm of the global batch
class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of all ranks, on any device (torch's
    ``SyncBatchNorm`` takes GPU tensors only). In training it normalises with the mean and
    the biased variance of every rank's batch together (computed in float32 in two passes:
    the mean, then the squared deviations, each summed over the ranks with a differentiable
    all-reduce, so the gradient flows through the other ranks' statistics as well) and
    updates the running statistics with the unbiased variance, as ``BatchNorm`` does for one
    batch; in evaluation it is a plain batch norm. Any input of shape [N, C, ...]."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of shape [N, C, ...], got {tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float()
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device)
        total = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.reshape(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=momentum)
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(input.dtype)


class _AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over the ranks, differentiable: the gradient of each rank's input
    is the sum of the gradients of the output on every rank (each rank's loss depends on
    the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sync_batch_norm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` with every batch norm synchronised across the ranks: torch's
    ``SyncBatchNorm`` on a GPU, :class:`GlobalBatchNorm` on the CPU. The parameters and
    running statistics are the same tensors (an optimiser made before still fits)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_bn(model)


def _to_global_bn(module: torch.nn.Module) -> torch.nn.Module:
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _to_global_bn(child))
    return module
