"""Helpers shared by training, evaluation and profiling: device, threads, reproducibility.

Reproducibility and speed (what :func:`setup_torch` does)
---------------------------------------------------------
* CPU: deterministic algorithms on. The same spec with the same thread count gives the same
  numbers, bit for bit (the SLURM test compares a cluster run with a local one this way).
* GPU: speed first. ``cudnn.benchmark`` autotunes the convolutions for the fixed crop size
  (a few slow first iterations, then the fastest kernels), TF32 is allowed, and deterministic
  algorithms are off; training adds AMP and channels_last (see ``engine/train.py``). GPU runs
  are reproducible to within floating-point noise, not bit for bit: AMP, autotuned kernels and
  atomic adds already make bitwise equality costly, and the benchmark compares methods, whose
  differences are far above that noise. ``SEGBENCH_DETERMINISTIC=1`` trades the speed back
  (benchmark off, deterministic kernels, ``CUBLAS_WORKSPACE_CONFIG`` set).
* Profiling asks for speed everywhere (``deterministic=False``).

Which GPU
---------
A job uses the GPU it is given: under SLURM ``CUDA_VISIBLE_DEVICES`` holds the allocated one,
so it is device 0. When a job sees several GPUs (a local multi-GPU machine, where Snakemake's
``--resources gpu=N`` only counts jobs and assigns no devices), it claims one with an
exclusive ``flock`` on ``$SEGBENCH_GPU_LOCK_DIR/gpu-<uuid>.lock`` (default a per-user folder
in the temp dir), held until the process exits, so N concurrent jobs land on N different
GPUs. ``SEGBENCH_DEVICE=cpu`` (or ``cuda:1``) overrides the choice.

The workflow that started a job
-------------------------------
The Snakefile puts its own process id into ``SEGBENCH_WORKFLOW_PID`` (inherited by every job
it starts; in a SLURM job the job's own snakemake sets it). :class:`WorkflowWatch` tells a
long job when that process is gone (killed snakemake, closed terminal), so training stops
instead of running on unwatched beside the next run's trainer. Unset (a step run by hand):
nothing is watched.

A stop asked for by a signal
----------------------------
``segbench train`` turns SIGTERM (SLURM's warning before a time limit or a preemption, a
snakemake that forwards its own) into a request (:func:`stop_on_signal`): the handler only
notes the signal, and training looks at :func:`stop_requested` at each step boundary, where
it writes a checkpoint and stops (:class:`segbench.engine.train.Preempted`).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from segbench.errors import UserError

# The lock file of the GPU this process claimed; kept open (and locked) until exit.
_GPU_CLAIM = None


def setup_torch(threads: int | None, deterministic: bool | None = None,
                device: torch.device | None = None) -> torch.device:
    """Pick the device, set the CPU thread count and the speed/reproducibility trade-off.

    ``deterministic``: None (training, evaluation) means bitwise reproducible on CPU and fast
    on a GPU (unless ``SEGBENCH_DETERMINISTIC=1``); True means reproducible on a GPU too
    (slower); False means fastest everywhere (profiling). See the module docstring.
    ``device``: the device to use (a rank of a multi-process training,
    :func:`segbench.engine.distributed.rank_device`); None: :func:`pick_device`.
    """
    if threads:
        torch.set_num_threads(threads)
    wants_determinism = deterministic is True or (
        deterministic is None and os.environ.get("SEGBENCH_DETERMINISTIC") == "1")
    if wants_determinism:
        # must be set before cuBLAS is initialised
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device is None:
        device = pick_device()
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    if deterministic is None:
        deterministic = device.type != "cuda" or wants_determinism
    _set_deterministic(deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
    return device


def use_channels_last(setting, device: torch.device | str) -> bool:
    """Whether a job on ``device`` keeps weights and batches in channels_last (NHWC):
    ``train.channels_last`` is ``auto`` (a GPU only; also for specs that predate the key),
    ``true`` (any device) or ``false`` (never). Evaluation follows the run's training
    (:func:`trained_channels_last`)."""
    if setting is None or setting == "auto":
        return torch.device(device).type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"train.channels_last must be auto, true or false, not {setting!r}")


def trained_channels_last(record: dict) -> bool:
    """The memory format a run was trained in, from its run.json: the ``channels_last`` it
    records, or (a record written before that field) its ``train.channels_last`` resolved
    for the device it trained on."""
    used = record.get("channels_last")
    if isinstance(used, bool):
        return used
    setting = ((record.get("config") or {}).get("train") or {}).get("channels_last", "auto")
    return use_channels_last(setting, str(record.get("device") or "cpu"))


def _set_deterministic(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=True)`` without its import of
    ``torch._inductor.config`` (about 1.2 s per job here, to set a flag for torch.compile,
    which segbench does not use); the public call when inductor is loaded anyway."""
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=True)


def pick_device() -> torch.device:
    """``SEGBENCH_DEVICE`` if set, else the GPU this job is given (one of several visible
    ones claimed with a lock file), else the CPU."""
    forced = os.environ.get("SEGBENCH_DEVICE", "").strip()
    if forced:
        device = torch.device(forced)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    index = 0
    if count > 1:
        index = _claim_gpu(count)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _gpu_ids(count: int) -> list[str]:
    ids = []
    for i in range(count):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        ids.append(str(uuid) if uuid else f"index{i}")
    return ids


def gpu_lock_dir() -> Path:
    return Path(os.environ.get("SEGBENCH_GPU_LOCK_DIR")
                or Path(tempfile.gettempdir()) / f"segbench-gpu-locks-{os.getuid()}")


def claim_free(ids: list[str], lock_dir: Path):
    """Lock the first of ``ids`` no other process holds: (index, open lock file) or (None, None)."""
    import fcntl

    lock_dir.mkdir(parents=True, exist_ok=True)
    for i, ident in enumerate(ids):
        fh = open(lock_dir / f"gpu-{ident}.lock", "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        return i, fh
    return None, None


def _claim_gpu(count: int) -> int:
    global _GPU_CLAIM
    index, fh = claim_free(_gpu_ids(count), gpu_lock_dir())
    if index is not None:
        _GPU_CLAIM = fh
        return index
    # more concurrent jobs than GPUs (e.g. --resources gpu=N with N too large): share the
    # GPU with the most free memory rather than fail
    free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
    index = max(range(count), key=free.__getitem__)
    print(f"warning: all {count} visible GPUs are claimed by other segbench jobs; sharing GPU {index}. "
          f"Limit concurrent GPU jobs with `--resources gpu={count}`.", file=sys.stderr, flush=True)
    return index


def job_cpus(threads: int | None = None) -> int:
    """The CPUs this job was given: SLURM's allocation on this node inside a SLURM job,
    else the threads Snakemake gave it, else every CPU this process may run on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_ON_NODE", "")
    if os.environ.get("SLURM_JOB_ID") and slurm.isdigit() and int(slurm) > 0:
        return min(int(slurm), usable)
    return min(threads, usable) if threads else usable


def progress_kwargs(enabled: bool = True) -> dict:
    """tqdm settings: live bars on a terminal, sparse lines in a log file; none when
    ``enabled`` is false or SEGBENCH_NO_PROGRESS=1."""
    tty = sys.stderr.isatty()
    return {"mininterval": 0.2 if tty else 10.0, "dynamic_ncols": tty, "file": sys.stderr,
            "disable": not enabled or os.environ.get("SEGBENCH_NO_PROGRESS") == "1"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ the workflow that started this job
#: the environment variable the Snakefile sets to its process id
WORKFLOW_PID_ENV = "SEGBENCH_WORKFLOW_PID"


class WorkflowWatch:
    """Whether the process named by ``$SEGBENCH_WORKFLOW_PID`` (the snakemake that started
    this job) still runs. It is told apart from a later process that got the same pid by its
    start time (``/proc/<pid>/stat``); a zombie counts as gone. :meth:`gone` looks at most
    every ``every`` seconds, so calling it per training step costs nothing."""

    def __init__(self, pid: int | None, every: float = 1.0):
        self.pid, self.every = pid, every
        self.start = process_start(pid) if pid else None
        self._next_look = 0.0

    @classmethod
    def from_env(cls) -> "WorkflowWatch":
        raw = os.environ.get(WORKFLOW_PID_ENV, "").strip()
        if not raw:
            return cls(None)
        if not raw.isdigit() or int(raw) <= 0:
            raise UserError(f"{WORKFLOW_PID_ENV}={raw!r} is not a process id; the Snakefile sets it to "
                            "snakemake's pid. Unset it to run this step by hand")
        return cls(int(raw))

    def gone(self) -> str | None:
        """None while the workflow runs (or none is watched, or it was looked at less than
        ``every`` seconds ago); else a sentence saying it is gone."""
        if self.pid is None:
            return None
        now = time.monotonic()
        if now < self._next_look:
            return None
        self._next_look = now + self.every
        start = process_start(self.pid)
        if start is not None and start == self.start:
            return None
        return (f"the workflow that started this job (snakemake, pid {self.pid} from ${WORKFLOW_PID_ENV}) "
                "is gone")


def process_start(pid: int) -> str | None:
    """An identity of the running process ``pid``: its start time (in clock ticks since boot)
    from ``/proc/<pid>/stat``; None when no such process runs or it is a zombie. Without
    /proc (not Linux) the identity is just "exists"."""
    if not os.path.isdir("/proc/self"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "running"
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ... starttime(22nd field) ...": comm may hold spaces and ')'
    fields = stat[stat.rfind(")") + 2:].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


# ------------------------------------------------------------------ a stop asked for by a signal
#: the signal that asked this process to stop (:func:`stop_on_signal`), or None
_STOP_SIGNAL: int | None = None


def stop_on_signal(signum: int = signal.SIGTERM) -> None:
    """From now on, ``signum`` asks this process to stop at its next safe point instead of
    ending it: the handler only notes the signal (:func:`stop_requested`). Main thread only
    (Python's rule for signal handlers)."""
    signal.signal(signum, _note_stop)


def _note_stop(signum, frame) -> None:
    global _STOP_SIGNAL
    _STOP_SIGNAL = signum


def stop_requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _STOP_SIGNAL


def signal_name(signum: int) -> str:
    """"SIGTERM" for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
