"""Test support: a training process whose process group gets SIGTERM right after the n-th
optimisation step of the process, as SLURM signals every process of a job step before a
time limit or a preemption (tests/test_preemption.py). Nothing in segbench knows of it.

Put this folder first on ``PYTHONPATH`` and set ``SIGTERM_AT=<n>`` (n >= 1): Python imports
this file (``sitecustomize``) when a process starts, and in a process that imports
:mod:`segbench.engine.train` it wraps ``_optimise``. After the n-th step it prints
``sigterm_support: SIGTERM after step <n>`` to stderr and sends SIGTERM to

* its own process group (``SIGTERM_TO=group``, the default): the trainer, its DataLoader
  workers and, under snakemake, snakemake and the job's shell (start the group's leader in
  a new session). The trainer's handler only notes the signal, so the stop happens at the
  next step boundary: after exactly n steps;
* its parent process only (``SIGTERM_TO=parent``): under snakemake, with the train rule's
  ``exec``, snakemake itself, which passes it on to its trainers (a step or so later).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys

ENV = "SIGTERM_AT"
TARGET = "segbench.engine.train"


def arm(train, n: int) -> None:
    real_optimise, steps = train._optimise, [0]

    def optimise(run, loss):
        real_optimise(run, loss)
        steps[0] += 1
        if steps[0] == n:
            print(f"sigterm_support: SIGTERM after step {n}", file=sys.stderr, flush=True)
            if os.environ.get("SIGTERM_TO", "group") == "parent":
                os.kill(os.getppid(), signal.SIGTERM)
            else:
                os.killpg(os.getpgrp(), signal.SIGTERM)

    train._optimise = optimise


class _ArmOnImport(importlib.abc.MetaPathFinder):
    """Arms :data:`TARGET` right after it is executed, wherever the process imports it."""

    def __init__(self, n: int):
        self.n = n

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            arm(module, self.n)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get(ENV):
    sys.meta_path.insert(0, _ArmOnImport(int(os.environ[ENV])))
