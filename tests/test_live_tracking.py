"""A training logs live into MLflow (issue 19), best effort, and the track step completes it.

* `segbench train` told where by ``$SEGBENCH_MLFLOW_LIVE`` (as the Snakefile sets it): the
  MLflow run is RUNNING with epoch 1's metrics while the job still trains; a SIGTERM ends it
  KILLED; the rerun resumes the same MLflow run and logs every epoch once, FINISHED, with the
  params the track step computes; then :func:`log_run` (the track step) leaves one run per
  study, each epoch once, FINISHED, the live run's start time kept.
* a training that raises (a NaN loss) ends FAILED.
* a store that is down (a sqlite path under a regular file; a server nobody listens on)
  changes nothing: same history and weights as without tracking, exit 0, a warning, and
  the trainer waits at most the logger's bound at the end.
* where a training logs: the variable, the arguments (which win), nothing, or a warning.
* ``mlflow.register_best``: the study's best run's model registered, a new version only when
  the best run changes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_run_spec
from pipeline_support import ROOT, read_history

pytest.importorskip("mlflow")


def train_cmd(spec: dict, data, out, *extra: str) -> list[str]:
    """`segbench train` as workflow/rules/train.smk runs it."""
    return [sys.executable, "-m", "segbench", "train", "--spec", json.dumps(spec), "--data", str(data),
            "--out", str(out), "--threads", "1", *extra]


def job_env(**extra) -> dict:
    env = dict(os.environ, SEGBENCH_NO_PROGRESS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    env.pop("SEGBENCH_WORKFLOW_PID", None)
    env.pop("SEGBENCH_MLFLOW_LIVE", None)
    env.update(extra)
    return env


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the training ended ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def the_run(client, study: str, run_key: str):
    """The only active MLflow run of ``run_key`` in the study's experiment (None if none)."""
    from segbench.tracking import TAG_RUN_KEY, experiment_name

    exp = client.get_experiment_by_name(experiment_name(study))
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_KEY}` = '{run_key}'")
    assert len(runs) <= 1, f"{len(runs)} MLflow runs of {run_key} in {study}"
    return runs[0] if runs else None


def steps(client, run, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def history_values(run_dir: Path, column: str) -> dict[int, float]:
    import csv

    with open(run_dir / "history.csv", newline="") as f:
        return {int(r["epoch"]): float(r[column]) for r in csv.DictReader(f) if r[column] != ""}


# ------------------------------------------------------------------ live, killed, resumed, completed (~25 s)
def test_training_logs_live_is_killed_resumes_once_and_the_track_step_completes(tiny_dataset, tmp_path):
    from mlflow import MlflowClient

    from segbench.tracking import LIVE_ENV, init_store, live_env, log_run, run_params

    epochs = 30  # long enough that the SIGTERM sent after epoch 1 is logged lands mid-training, even on a busy machine
    spec = tiny_run_spec(epochs=epochs)
    key = spec["run_key"]
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    init_store(uri, [])  # the store, as track-init makes it; the experiment is the trainer's to create
    client = MlflowClient(uri)
    env = job_env(**{LIVE_ENV: live_env(uri, str(tmp_path / "store" / "mlartifacts"), {key: "s"})})
    run_dir = tmp_path / "runs" / key

    proc = subprocess.Popen(train_cmd(spec, tiny_dataset, run_dir), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def running_with_epoch_1():
            run = the_run(client, "s", key)
            return run if run and run.info.status == "RUNNING" and 1 in steps(client, run, "train_loss") else None

        live = wait_for(running_with_epoch_1, 120, "a RUNNING MLflow run with epoch 1's metrics", proc)
        assert proc.poll() is None  # seen while the job still trains
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    killed = client.get_run(live.info.run_id)
    assert killed.info.status == "KILLED", out
    done = steps(client, killed, "train_loss")
    assert done == list(range(1, len(done) + 1)) and len(done) < epochs, (done, out)

    rerun = subprocess.run(train_cmd(spec, tiny_dataset, run_dir), env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming" in rerun.stdout
    run = the_run(client, "s", key)
    assert run.info.run_id == live.info.run_id  # the same MLflow run continues
    assert run.info.status == "FINISHED"
    assert run.info.start_time == live.info.start_time
    for column, every in (("train_loss", range(1, epochs + 1)), ("val_mIoU", range(1, epochs + 1))):
        assert steps(client, run, column) == list(every), column  # each epoch once
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, column)}
        assert logged == pytest.approx(history_values(run_dir, column), rel=1e-12), column
    info = json.loads((run_dir / "run.json").read_text())
    assert run.data.params == run_params(info)  # what the track step logs: it keeps this run
    assert run.data.tags["segbench.run_key"] == key and run.data.tags["mlflow.runName"] == "unet · ce · s0"
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert run.data.metrics["system/process_memory_rss_megabytes"] > 10

    ids = log_run(run_dir, studies=["s", "t"], tracking_uri=uri, log_model=False)  # the track step
    assert ids["s"] == run.info.run_id
    for study in ("s", "t"):
        tracked = the_run(client, study, key)
        assert tracked.info.run_id == ids[study] and tracked.info.status == "FINISHED"
        assert steps(client, tracked, "train_loss") == list(range(1, epochs + 1)), study
    assert the_run(client, "s", key).info.start_time == live.info.start_time


# ------------------------------------------------------------------ a failing training (~5 s)
def test_a_training_that_raises_ends_failed(tiny_dataset, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from segbench.data.dataset import SegmentationDataset
    from segbench.engine.train import NonFiniteLoss, train_run
    from segbench.tracking import LiveRun

    real = SegmentationDataset.__getitem__
    calls = {"n": 0}

    def poisoned(self, index):  # every train image NaN from epoch 2 on: its loss is NaN
        image, label, i = real(self, index)
        if self.split == "train":
            calls["n"] += 1
            if calls["n"] > len(self):
                image = torch.full_like(image, float("nan"))
        return image, label, i

    monkeypatch.setattr(SegmentationDataset, "__getitem__", poisoned)
    spec = tiny_run_spec(epochs=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(NonFiniteLoss):
        train_run(spec, tiny_dataset, tmp_path / "run", threads=1, progress=False, live=LiveRun(uri, "s"))
    client = MlflowClient(uri)
    run = the_run(client, "s", spec["run_key"])
    assert run.info.status == "FAILED"
    assert steps(client, run, "train_loss") == [1]


# ------------------------------------------------------------------ a store that is down (~15 s)
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training(a: Path, b: Path) -> None:
    assert read_history(a / "history.csv") == read_history(b / "history.csv")
    wa, wb = weights(a / "model.pt"), weights(b / "model.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_store_that_is_down_changes_nothing_and_does_not_hold_training_up(tiny_dataset, tmp_path, capsys):
    from segbench.engine.train import train_run
    from segbench.tracking import LIVE_ENV, LiveRun, live_env

    spec = tiny_run_spec(epochs=2)
    train_run(spec, tiny_dataset, tmp_path / "plain", threads=1, progress=False)  # no tracking

    # a sqlite store under a regular file: it cannot be made (even by root)
    (tmp_path / "a-file").write_text("not a folder\n")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    env = job_env(**{LIVE_ENV: live_env(uri, None, {spec["run_key"]: "s"})})
    job = subprocess.run(train_cmd(spec, tiny_dataset, tmp_path / "sqlite"), env=env, capture_output=True,
                         text=True, timeout=300)
    assert job.returncode == 0, job.stdout + job.stderr
    assert f"warning: MLflow live logging to {uri!r} stopped" in job.stderr
    assert "the track step fills MLflow in" in job.stderr
    assert_same_training(tmp_path / "plain", tmp_path / "sqlite")

    # a tracking server nobody listens on (MLflow retries for minutes): the trainer waits for
    # the logging thread at most its bound (here 2 s) at the end, then goes on
    capsys.readouterr()
    server = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    train_run(spec, tiny_dataset, tmp_path / "http", threads=1, progress=False, live=LiveRun(server, "s", wait=2))
    with_server = time.monotonic() - t0
    err = capsys.readouterr().err
    assert f"MLflow live logging to {server!r}" in err
    assert_same_training(tmp_path / "plain", tmp_path / "http")
    plain = json.loads((tmp_path / "plain" / "run.json").read_text())["wall_seconds_this_job"]
    assert with_server < plain + 2 + 5, (with_server, plain)


# ------------------------------------------------------------------ where a training logs (fast)
def test_where_a_training_logs_comes_from_its_arguments_or_the_environment(capsys):
    from segbench.errors import UserError
    from segbench.tracking import LIVE_ENV, LiveRun, live_env, live_run_for

    key = "tiny/unet/ce/s0"
    env = {LIVE_ENV: live_env("sqlite:////x/mlflow.db", "/x/mlartifacts", {key: "home", "o/u/c/s1": "other"})}
    assert live_run_for(key, environ={}) is None  # no variable, no arguments: silently none
    live = live_run_for(key, environ=env)
    assert isinstance(live, LiveRun)
    assert (live.tracking_uri, live.study, live.artifact_root) == ("sqlite:////x/mlflow.db", "home",
                                                                   Path("/x/mlartifacts"))
    by_hand = live_run_for(key, tracking_uri="http://h:5000", study="mine", environ=env)  # arguments win
    assert (by_hand.tracking_uri, by_hand.study, by_hand.artifact_root) == ("http://h:5000", "mine", None)
    assert capsys.readouterr().err == ""
    with pytest.raises(UserError, match="--tracking-uri and --study go together"):
        live_run_for(key, study="mine", environ=env)

    assert live_run_for("d/m/l/s9", environ=env) is None  # no home for this run key
    assert live_run_for(key, environ={LIVE_ENV: "{not json"}) is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(f"${LIVE_ENV}" in line and "not logged live" in line for line in lines)
    assert "d/m/l/s9" in lines[0]


# ------------------------------------------------------------------ the best run of a study registered (~5 s)
def test_the_best_run_of_a_study_is_registered_once_per_change(tmp_path):
    from mlflow import MlflowClient

    from segbench import tracking as T

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    T.init_store(uri, ["s", "t"])
    client = MlflowClient(uri)
    exp = {study: client.get_experiment_by_name(T.experiment_name(study)).experiment_id for study in ("s", "t")}

    def training_run(study, key, miou, model_in=None):
        """A run as log_run leaves it: its model logged here, or in the run ``model_in``."""
        run_id = client.create_run(exp[study], tags={T.TAG_KIND: "run", T.TAG_RUN_KEY: key}).info.run_id
        if model_in is None:
            model = client.create_logged_model(exp[study], name="model", source_run_id=run_id)
            client.set_tag(run_id, T.TAG_MODEL_URI, f"models:/{model.model_id}")
        else:
            client.set_tag(run_id, T.TAG_MODEL_RUN, model_in)
        if miou is not None:
            client.log_metric(run_id, "final_mIoU", miou)
        return run_id

    a = training_run("s", "d/a/ce/s0", 0.50)
    b = training_run("s", "d/b/ce/s0", 0.70)
    training_run("s", "d/c/ce/s0", None)  # not evaluated: not a candidate
    assert T.register_best_model("t", uri) is None  # no run with a model and a final mIoU

    study_dir = tmp_path / "studies" / "s"
    (study_dir / "tables").mkdir(parents=True)
    (study_dir / "tables" / "summary.md").write_text("| run | mIoU |\n")
    T.log_study("s", study_dir, tracking_uri=uri, register_best=True)  # as track_study with the config's key
    name = T.registered_model_name("s")
    assert name == "segbench-s"
    versions = client.search_model_versions(f"name = '{name}'")
    assert [(int(v.version), v.run_id) for v in versions] == [(1, b)]
    assert T.register_best_model("s", uri)["version"] == 1  # the same best run: no new version

    client.log_metric(a, "final_mIoU", 0.90, step=0)  # re-evaluated: a is now the best
    assert T.register_best_model("s", uri) == {"name": name, "version": 2, "run_id": a,
                                                "run_name": client.get_run(a).info.run_name, "final_mIoU": 0.90}
    # a run of study t whose model is logged in its home study s: t's best is registered from there
    training_run("t", "d/b/ce/s0", 0.70, model_in=b)
    assert T.register_best_model("t", uri)["run_id"] == b
