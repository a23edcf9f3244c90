"""Running the real Snakefile on a config in a temporary directory (end-to-end tests)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: columns of history.csv / keys of metrics.json that are times, not results
TIME_COLUMNS = frozenset({"epoch_seconds", "time"})
TIME_METRICS = frozenset({"eval_seconds", "metric_mpixel_per_s", "claim_metrics_seconds"})


def snakemake(workdir, *args, cores: str = "1", check: bool = True, env_extra: dict | None = None,
              timeout: int = 900) -> subprocess.CompletedProcess:
    """``snakemake --cores <cores> <args>`` on the repository's Snakefile in ``workdir``;
    with ``check``, a failure raises with Snakemake's stderr and the tail of every job log."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SEGBENCH_NO_PROGRESS="1")
    env.update(env_extra or {})
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--cores", cores, *args],
        capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{job_logs(workdir)}")
    return proc


def job_logs(workdir, tail: int = 3000) -> str:
    return "\n".join(f"== {p}\n{p.read_text()[-tail:]}" for p in sorted(Path(workdir, "results", "logs").rglob("*.log")))


def read_history(path) -> list[dict]:
    """history.csv without its time columns."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


def read_metrics(path) -> dict:
    """metrics.json without its timings."""
    return {k: v for k, v in json.loads(Path(path).read_text()).items() if k not in TIME_METRICS}


#: one unet run of 2 epochs: 8 train images in batches of 2, 4 optimisation steps per epoch
#: (the fault-tolerance and preemption tests interrupt it at a known step)
TINY_TWO_EPOCHS = {
    "datasets": {"synthetic": {"source": "synthetic",
                               "generate": {"seed": 1, "train": 8, "val": 4, "height": 64, "width": 128}}},
    "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
    "losses": {"ce": {"type": "ce"}},
    "train": {"epochs": 2, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1},
    "eval": {"batch_size": 2, "samples": 1},
    "profile": {"warmup": 1, "iterations": 1, "threads": 1},
    "studies": {"only": {"datasets": ["synthetic"], "models": ["unet"], "losses": ["ce"], "seeds": [0]}},
}
