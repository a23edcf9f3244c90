"""Helpers shared by training, evaluation and profiling."""

from __future__ import annotations

import os
import sys

import torch


def setup_torch(threads: int | None, deterministic: bool = True) -> torch.device:
    """Pick the device and the CPU thread count; make CPU results reproducible."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = not deterministic
        return torch.device("cuda")
    return torch.device("cpu")


def progress_kwargs(enabled: bool = True) -> dict:
    """tqdm settings: live bars on a terminal, sparse lines in a log file; none when
    ``enabled`` is false or SEGBENCH_NO_PROGRESS=1."""
    tty = sys.stderr.isatty()
    return {"mininterval": 0.2 if tty else 10.0, "dynamic_ncols": tty, "file": sys.stderr,
            "disable": not enabled or os.environ.get("SEGBENCH_NO_PROGRESS") == "1"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
