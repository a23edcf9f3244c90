"""Kill at any moment: a training job SIGKILLed during an epoch, while writing a checkpoint or
while writing its declared outputs resumes on the next `snakemake` from its last complete
checkpoint and ends exactly as an uninterrupted run (CPU, same seed), with one MLflow run.

The kills come from the test hook ``SEGBENCH_FAULT=<point>:<n>`` of engine/train.py.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml

from pipeline_support import read_history, read_metrics, snakemake

RUN = "synthetic/unet/ce/s0"
# 8 train images in batches of 2: 4 optimisation steps per epoch, 2 epochs
TINY = {
    "datasets": {"synthetic": {"source": "synthetic",
                               "generate": {"seed": 1, "train": 8, "val": 4, "height": 64, "width": 128}}},
    "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
    "losses": {"ce": {"type": "ce"}},
    "train": {"epochs": 2, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1},
    "eval": {"batch_size": 2, "samples": 1},
    "profile": {"warmup": 1, "iterations": 1, "threads": 1},
    "studies": {"only": {"datasets": ["synthetic"], "models": ["unet"], "losses": ["ce"], "seeds": [0]}},
}


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


def test_fault_hook_syntax(monkeypatch):
    from segbench.engine.train import fault_plan

    monkeypatch.delenv("SEGBENCH_FAULT", raising=False)
    assert fault_plan() is None
    for raw, want in (("batch:5", ("batch", 5)), ("checkpoint:2", ("checkpoint", 2)), ("outputs", ("outputs", 1))):
        monkeypatch.setenv("SEGBENCH_FAULT", raw)
        assert fault_plan() == want
    for raw in ("batch:0", "epoch:1", "batch:x"):
        monkeypatch.setenv("SEGBENCH_FAULT", raw)
        with pytest.raises(ValueError, match="SEGBENCH_FAULT"):
            fault_plan()


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

    killed = snakemake(wd, check=False, env_extra={"SEGBENCH_FAULT": fault})
    out = killed.stdout + killed.stderr
    assert killed.returncode != 0 and "Error in rule train" in out, out[-3000:]
    assert f"SEGBENCH_FAULT: killing this process (SIGKILL) at {fault}" in log.read_text()
    assert re.search(r"Killed\s+python -m segbench train", out), out[-3000:]  # bash's report of a SIGKILL
    # what the kill left: a complete checkpoint, no declared output a rerun could trust
    assert torch.load(run / "ckpt" / "last.pt", weights_only=True)["epoch"] == resumed_after
    assert not (run / "run.json").exists() and not (run / "history.csv").exists()
    if fault.startswith("checkpoint"):
        assert list((run / "ckpt").glob(".last.pt.*.tmp")), "the kill should leave the temporary file"
    _, runs = _mlflow_runs(wd)
    assert runs == []

    snakemake(wd, cores="all")
    text = log.read_text()
    assert f"resuming {RUN} from results/runs/{RUN}/ckpt/last.pt after epoch {resumed_after} of 2" in text, text
    assert "SEGBENCH_FAULT" not in text
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
    assert len(runs) == 1
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_mIoU")] == [1, 2]
    dry = snakemake(wd, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
