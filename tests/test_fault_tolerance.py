"""Kill at any moment: a training job SIGKILLed during an epoch, while writing a checkpoint or
while writing its declared outputs resumes on the next `snakemake` from its last complete
checkpoint and ends exactly as an uninterrupted run (CPU, same seed), with one MLflow run.

The training process SIGKILLs itself at the chosen point: tests/kill_support/sitecustomize.py,
put on its PYTHONPATH with ``KILL_AT=<point>:<n>``, wraps the function of engine/train.py
where that point is (the production code has no test hook).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_run_spec
from pipeline_support import TINY_TWO_EPOCHS as TINY, read_history, read_metrics, snakemake

KILL_SUPPORT = Path(__file__).resolve().parent / "kill_support"
RUN = "synthetic/unet/ce/s0"


# ------------------------------------------------------------------ atomic writes (fast)
def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from segbench.io import atomic_path, remove_stale_temps, write_text

    target = tmp_path / "run.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            assert tmp.parent == target.parent and tmp.name.startswith(".run.json.")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]
    # what a SIGKILL between the write and the rename leaves: the next writer removes it
    (tmp_path / ".run.json.abc.tmp").write_text("half")
    (tmp_path / ".history.csv.abc.tmp").write_text("another file's")
    assert [p.name for p in remove_stale_temps(target)] == [".run.json.abc.tmp"]
    assert (tmp_path / ".history.csv.abc.tmp").exists()


def test_atomic_path_fsyncs_before_the_rename(tmp_path, monkeypatch):
    import segbench.io as sio

    events = []
    real_fsync, real_replace = sio._fsync, sio.os.replace
    monkeypatch.setattr(sio, "_fsync", lambda p, directory=False: (events.append(("fsync", directory)),
                                                                   real_fsync(p, directory)))
    monkeypatch.setattr(sio.os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b)))
    sio.write_text(tmp_path / "a.txt", "x")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]


# ------------------------------------------------------------------ kill the training process (seconds)
def kill_env(fault: str) -> dict:
    """The environment additions that make a training process SIGKILL itself at ``fault``."""
    path = os.pathsep.join(p for p in (str(KILL_SUPPORT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "KILL_AT": fault}


def test_kill_support_syntax():
    spec = importlib.util.spec_from_file_location("kill_support", KILL_SUPPORT / "sitecustomize.py")
    ks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ks)  # without KILL_AT it arms nothing
    for raw, want in (("batch:5", ("batch", 5)), ("checkpoint:2", ("checkpoint", 2)), ("outputs", ("outputs", 1))):
        assert ks.parse(raw) == want
    for raw in ("batch:0", "epoch:1", "batch:x"):
        with pytest.raises(ValueError, match="KILL_AT"):
            ks.parse(raw)


def _weights(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("fault, resumed_after", [
    ("batch:5", 1),        # in the middle of epoch 2 (steps 4-6)
    ("checkpoint:2", 1),   # the temporary file of epoch 2's checkpoint is written, not yet renamed
    ("outputs:1", 2),      # model.pt written, history.csv and run.json not
])
def test_killed_training_process_resumes_exactly(tiny_dataset, tmp_path, fault, resumed_after):
    """`segbench train` SIGKILLed at each point, then rerun: the same history and weights as
    an uninterrupted run, bit for bit (with a DataLoader worker, as the default config)."""
    from segbench.engine.train import train_run

    spec = copy.deepcopy(tiny_run_spec())
    spec["train"]["workers"] = 1
    reference = train_run(spec, tiny_dataset, tmp_path / "full", threads=1, progress=False)
    run = tmp_path / "killed"
    env = dict(os.environ, SEGBENCH_NO_PROGRESS="1", **kill_env(fault))
    killed = subprocess.run([sys.executable, "-m", "segbench", "train", "--spec", json.dumps(spec), "--data",
                             str(tiny_dataset), "--out", str(run), "--threads", "1"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert f"kill_support: SIGKILL at {fault}" in killed.stderr
    assert torch.load(run / "ckpt" / "last.pt", weights_only=True)["epoch"] == resumed_after
    assert not (run / "run.json").exists() and not (run / "history.csv").exists()
    assert (run / "model.pt").exists() is fault.startswith("outputs")
    assert bool(list((run / "ckpt").glob(".last.pt.*.tmp"))) is fault.startswith("checkpoint")

    record = train_run(spec, tiny_dataset, run, threads=1, progress=False)
    assert record["resumed_from_epoch"] == resumed_after
    assert not list(run.rglob(".*.tmp"))
    assert read_history(run / "history.csv") == read_history(tmp_path / "full" / "history.csv")
    ours, theirs = _weights(run / "model.pt"), _weights(tmp_path / "full" / "model.pt")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert record["skipped_batches"] == 0 and reference["resumed_from_epoch"] is None


# ------------------------------------------------------------------ kill and rerun, end to end
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A workdir with the tiny config, its data prepared and the MLflow store created."""
    wd = tmp_path_factory.mktemp("fault-base")
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY))
    snakemake(wd, "results/data/synthetic/manifest.csv", "results/mlflow/init.json")
    return wd


def _copy(base, dest):
    shutil.copytree(base, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """The uninterrupted run of the same config."""
    wd = _copy(base, tmp_path_factory.mktemp("fault-ref") / "wd")
    snakemake(wd)
    return wd / "results" / "runs" / RUN


def _mlflow_runs(wd):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{wd}/results/mlflow.db")
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(exps, f"tags.`segbench.run_key` = '{RUN}'")


@pytest.mark.slow
@pytest.mark.parametrize("fault, resumed_after", [
    ("batch:6", 1),        # in the middle of epoch 2 (steps 5-8)
    ("checkpoint:2", 1),   # the temporary file of epoch 2's checkpoint is written, not yet renamed
    ("outputs:1", 2),      # model.pt written, history.csv and run.json not
])
def test_killed_training_resumes_and_matches_an_uninterrupted_run(base, reference, tmp_path, fault,
                                                                  resumed_after):
    wd = _copy(base, tmp_path / "wd")
    run = wd / "results" / "runs" / RUN
    log = wd / "results" / "logs" / "train" / f"{RUN}.log"

    killed = snakemake(wd, check=False, env_extra=kill_env(fault))
    out = killed.stdout + killed.stderr
    assert killed.returncode != 0 and "Error in rule train" in out, out[-3000:]
    assert f"kill_support: SIGKILL at {fault}" in log.read_text()
    # what the kill left: a complete checkpoint, no declared output a rerun could trust
    assert torch.load(run / "ckpt" / "last.pt", weights_only=True)["epoch"] == resumed_after
    assert not (run / "run.json").exists() and not (run / "history.csv").exists()
    if fault.startswith("checkpoint"):
        assert list((run / "ckpt").glob(".last.pt.*.tmp")), "the kill should leave the temporary file"
    # live logging showed the training in MLflow; a SIGKILL leaves it RUNNING with what it had logged
    client, runs = _mlflow_runs(wd)
    assert [r.info.status for r in runs] in ([], ["RUNNING"])

    snakemake(wd, cores="all")
    text = log.read_text()
    assert f"resuming {RUN} from results/runs/{RUN}/ckpt/last.pt after epoch {resumed_after} of 2" in text, text
    assert "kill_support" not in text
    assert not list(run.rglob(".*.tmp"))  # the killed job's temporary files are gone

    # the same numbers as the uninterrupted run, bit for bit
    assert read_history(run / "history.csv") == read_history(reference / "history.csv")
    assert read_metrics(run / "metrics.json") == read_metrics(reference / "metrics.json")
    ours, theirs = (torch.load(d / "model.pt", weights_only=True) for d in (run, reference))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    record = json.loads((run / "run.json").read_text())
    assert record["resumed_from_epoch"] == resumed_after and record["skipped_batches"] == 0

    # MLflow: exactly one run for the run key, with the whole history once
    client, runs = _mlflow_runs(wd)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_mIoU")] == [1, 2]
    dry = snakemake(wd, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
