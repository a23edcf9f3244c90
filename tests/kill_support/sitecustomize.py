"""Test support: a training process that SIGKILLs itself at a chosen point, as a scheduler
or the OOM killer would (tests/test_fault_tolerance.py). Nothing in segbench knows of it.

Put this folder first on ``PYTHONPATH`` and set ``KILL_AT=<point>:<n>``: Python imports
this file (``sitecustomize``) when a process starts, and in a process that imports
:mod:`segbench.engine.train` it wraps one of that module's functions (:func:`arm`):

* ``batch:n``: right after the n-th optimisation step (``_optimise``) of the process,
  counted over all epochs, i.e. in the middle of an epoch for a run started from scratch;
* ``checkpoint:n``: while writing the checkpoint of epoch n (``_save_checkpoint``), after
  the temporary file is complete and before it is renamed onto ``ckpt/last.pt``;
* ``outputs:1``: after ``model.pt`` is written, before ``history.csv`` and ``run.json``.

The victim prints ``kill_support: SIGKILL at <point>:<n>`` to stderr (its log) first.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys
from pathlib import Path

ENV = "KILL_AT"
POINTS = ("batch", "checkpoint", "outputs")
TARGET = "segbench.engine.train"


def parse(raw: str) -> tuple[str, int]:
    point, _, n = raw.strip().partition(":")
    if point not in POINTS or not (n == "" or (n.isdigit() and int(n) >= 1)):
        raise ValueError(f"{ENV}={raw!r}: expected <point>[:<n>] with point one of {', '.join(POINTS)}, n >= 1")
    return point, int(n or 1)


def sigkill(point: str, n: int) -> None:
    print(f"kill_support: SIGKILL at {point}:{n}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def arm(train, point: str, n: int, kill=sigkill) -> None:
    """Wrap the function of the module ``train`` (segbench.engine.train) where ``point`` is."""
    if point == "batch":
        real_optimise, steps = train._optimise, [0]

        def optimise(run, loss):
            real_optimise(run, loss)
            steps[0] += 1
            if steps[0] == n:
                kill(point, n)

        train._optimise = optimise
    elif point == "checkpoint":
        real_save = train._save_checkpoint

        def save_checkpoint(path, state):
            if state["epoch"] != n:
                return real_save(path, state)
            with train.atomic_path(path) as tmp:
                train.torch.save(state, tmp)
                kill(point, n)  # the temporary file is complete, the rename not done

        train._save_checkpoint = save_checkpoint
    else:
        real_write_text = train.write_text

        def write_text(path, text):
            if Path(path).name == "history.csv":
                kill(point, n)  # model.pt is written, history.csv and run.json are not
            return real_write_text(path, text)

        train.write_text = write_text


class _ArmOnImport(importlib.abc.MetaPathFinder):
    """Arms :data:`TARGET` right after it is executed, wherever the process imports it."""

    def __init__(self, point: str, n: int):
        self.point, self.n = point, n

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            arm(module, self.point, self.n)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get(ENV):
    sys.meta_path.insert(0, _ArmOnImport(*parse(os.environ[ENV])))
