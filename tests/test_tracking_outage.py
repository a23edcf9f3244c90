"""An MLflow outage never fails a job or the pipeline: the track steps record "skipped", the
tables and figures are made from the files, and a later `snakemake` or `segbench sync`
completes MLflow."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segbench import tracking

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SRC = ROOT / "src"


def segbench(*args, cwd, env_extra=None):
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="3", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "segbench", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def make_run_dir(root: Path) -> Path:
    run = root / "results/runs/synthetic/unet/ce/s0"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "run_key": "synthetic/unet/ce/s0", "dataset": "synthetic", "model": "unet", "loss": "ce", "seed": 0,
        "config": {"train": {"lr": 0.01}}, "config_hash": "abc", "num_classes": 2, "class_names": ["road", "sky"],
        "epochs": 1}))
    (run / "history.csv").write_text(
        "epoch,train_loss,train_mIoU,train_aAcc,val_loss,val_mIoU,val_aAcc,lr,skipped_batches,epoch_seconds,time\n"
        "1,0.9,0.1,0.5,0.8,0.1,0.5,0.01,0,1.0,1760000000\n")
    (run / "metrics.json").write_text(json.dumps({
        "run_key": "synthetic/unet/ce/s0", "mIoU": 0.25, "aAcc": 0.5, "mAcc": 0.5, "mDice": 0.3, "IoU": [0.3, 0.2],
        "class_names": ["road", "sky"], "num_images": 2, "input_size": [64, 128]}))
    return run


def test_record_round():
    """skipped -> its round + 1 (a changed param: Snakemake reruns the job); logged -> its own round."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rec = Path(d) / "r.json"
        assert tracking.record_round(rec) == 0
        tracking.write_record(rec, status=tracking.RECORD_SKIPPED, round=0, reason="down")
        assert tracking.record_round(rec) == 1
        tracking.write_record(rec, status=tracking.RECORD_LOGGED, round=1)
        assert tracking.record_round(rec) == 1
        rec.write_text("{not json")
        assert tracking.record_round(rec) == 0


def test_track_with_the_server_down_skips_and_says_how_to_sync(tmp_path):
    run = make_run_dir(tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    uri = "http://127.0.0.1:9"  # nothing listens there
    out = tmp_path / "results/mlflow/runs/synthetic/unet/ce/s0.json"
    proc = segbench("track", str(run), "--study", "s", "--tracking-uri", uri, "--on-error", "skip",
                    "--round", "2", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "MLflow skipped" in proc.stderr
    rec = json.loads(out.read_text())
    assert rec["status"] == "skipped" and rec["round"] == 2 and rec["tracking_uri"] == uri
    assert uri in rec["reason"] and "segbench sync" in rec["sync"] and rec["studies"] == ["s"]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # without --on-error skip (a person at the keyboard) it is an error
    proc = segbench("track", str(run), "--study", "s", "--tracking-uri", uri, cwd=tmp_path)
    assert proc.returncode == 2 and uri in proc.stderr
    proc = segbench("track-init", "--study", "s", "--tracking-uri", uri, "--on-error", "skip",
                    "--out", str(tmp_path / "init.json"), cwd=tmp_path)
    assert proc.returncode == 0 and json.loads((tmp_path / "init.json").read_text())["status"] == "skipped"


def test_sync_logs_run_dirs_without_a_config(tmp_path):
    """Studies come from the run's (skipped) record when there is no config."""
    from mlflow import MlflowClient

    run = make_run_dir(tmp_path)
    rec = tmp_path / "results/mlflow/runs/synthetic/unet/ce/s0.json"
    tracking.write_record(rec, status=tracking.RECORD_SKIPPED, round=3, reason="down", studies=["main"],
                          run_dir=str(run))
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    for _ in range(2):  # idempotent
        proc = segbench("sync", "--tracking-uri", uri, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "synced 1 runs and 0 studies" in proc.stdout
    after = json.loads(rec.read_text())
    assert after["status"] == "logged" and after["round"] == 3 and set(after["runs"]) == {"main"}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("segbench-main")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["final_mIoU"] == 0.25


def _assert_complete_history(client, run_id, history_csv):
    """Every history.csv column is an MLflow metric with one point per epoch: no gap, no duplicate."""
    import csv

    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    for col in rows[0]:
        if col in tracking.HISTORY_INDEX_COLUMNS or not any(tracking._to_float(r[col]) is not None for r in rows):
            continue
        points = client.get_metric_history(run_id, tracking._key(col))
        want = [int(r["epoch"]) for r in rows if tracking._to_float(r[col]) is not None]
        assert sorted(m.step for m in points) == want, (col, [m.step for m in points], epochs)
        by_step = {m.step: m.value for m in points}
        assert all(by_step[int(r["epoch"])] == float(r[col]) for r in rows if r[col] != ""), col


def test_store_dying_in_the_middle_of_logging_a_run_is_completed_by_sync(tmp_path, monkeypatch):
    """The store goes away after half of a run's metrics were written: the track step fails
    with the resync hint and the files stay intact; the next sync completes the same MLflow
    run, with every epoch of every metric exactly once."""
    from mlflow import MlflowClient

    run = make_run_dir(tmp_path)
    (run / "history.csv").write_text(
        "epoch,train_loss,train_mIoU,train_aAcc,val_loss,val_mIoU,val_aAcc,lr,skipped_batches,epoch_seconds,time\n"
        "1,0.9,0.1,0.5,0.8,0.1,0.5,0.01,0,1.0,1760000000\n2,0.8,0.15,0.6,0.7,0.15,0.6,0.005,0,1.0,1760000001\n"
        "3,0.7,0.2,0.7,0.6,0.2,0.7,0.001,0,1.0,1760000002\n")
    (run / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()), "epochs": 3}))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    tracking.init_store(uri, ["main"], tmp_path / "results" / "mlartifacts")

    real = tracking._log_batch

    def half_then_down(client, run_id, metrics=(), params=(), tags=()):
        metrics = list(metrics)
        real(client, run_id, metrics=metrics[: len(metrics) // 2], params=params, tags=tags)
        raise ConnectionError("Connection refused: the tracking server stopped")

    monkeypatch.setattr(tracking, "_log_batch", half_then_down)
    with pytest.raises(tracking.TrackingError) as err:
        tracking.log_run(run, studies=["main"], tracking_uri=uri)
    assert "segbench sync" in str(err.value)
    monkeypatch.setattr(tracking, "_log_batch", real)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("segbench-main")
    (partial,) = client.search_runs([exp.experiment_id])
    assert partial.info.status == "RUNNING"  # half logged, never terminated
    assert len(client.get_metric_history(partial.info.run_id, "train_loss")) < 3 or \
        len(client.get_metric_history(partial.info.run_id, "lr")) < 3

    for _ in range(2):  # the second sync changes nothing
        tracking.sync(tmp_path / "results", tracking_uri=uri, plan_studies={"synthetic/unet/ce/s0": ["main"]},
                      log=lambda *a: None)
    (done,) = client.search_runs([exp.experiment_id])
    assert done.info.run_id == partial.info.run_id and done.info.status == "FINISHED"
    _assert_complete_history(client, done.info.run_id, run / "history.csv")
    assert done.data.metrics["final_mIoU"] == 0.25
    assert {f.path for f in client.list_artifacts(done.info.run_id)} >= {"metrics.json", "history.csv", "run.json"}
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------- the pipeline, end to end

TINY = {
    "datasets": {"synthetic": {"source": "synthetic",
                               "generate": {"seed": 1, "train": 4, "val": 2, "height": 64, "width": 128}}},
    "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
    "losses": {"ce": {"type": "ce"}},
    "train": {"epochs": 2, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1},
    "eval": {"batch_size": 2, "samples": 1},
    "profile": {"warmup": 1, "iterations": 1},
    # a sqlite store under a path we can break: `store` as a file makes it unreachable
    "mlflow": {"tracking_uri": "sqlite:///store/mlflow.db"},
    "studies": {"only": {"datasets": ["synthetic"], "models": ["unet"], "losses": ["ce"], "seeds": [0]}},
}
RECORDS = ("results/mlflow/init.json", "results/mlflow/runs/synthetic/unet/ce/s0.json",
           "results/mlflow/studies/only.json")


def snakemake(wd, *args):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SEGBENCH_NO_PROGRESS="1")
    proc = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(wd),
                           "--cores", "2", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def statuses(wd):
    return [json.loads((wd / r).read_text())["status"] for r in RECORDS]


def pending_rules(wd):
    out = snakemake(wd, "-n", "--quiet", "rules")
    if "Nothing to be done" in out:
        return set()
    table = re.search(r"job\s+count\n[- ]+\n(.*?)\ntotal", out, re.S)
    assert table, out
    return {line.split()[0] for line in table.group(1).splitlines()} - {"all"}


def report_files(wd):
    """Every table and figure the study's report step declares, relative to wd."""
    from segbench.config import validate_config
    from segbench.plan import Plan
    from segbench.report.outputs import study_outputs

    plan = Plan(validate_config(json.loads(json.dumps(TINY))))
    rels = study_outputs(plan.study_spec("only"), [plan.report_run("only", r) for r in plan.studies["only"]])
    assert any(r.endswith(".png") for r in rels) and any(r.endswith(".csv") for r in rels), rels
    return [wd / "results/studies/only" / r for r in rels]


RUN_FILES = ("model.pt", "history.csv", "run.json", "metrics.json", "confusion.npy", "samples.npz", "ckpt/last.pt")


def run_files(wd):
    run = wd / "results/runs/synthetic/unet/ce/s0"
    return {name: (run / name).read_bytes() for name in RUN_FILES}


def _sync_twice_and_check(wd, uri, files):
    """`segbench sync` twice (the second adds nothing); then every record is logged, nothing
    is pending, the run's files are unchanged, and MLflow at ``uri`` holds one FINISHED run
    with the complete history and the study run with its tables."""
    from mlflow import MlflowClient

    for _ in range(2):
        proc = segbench("sync", cwd=wd)
        assert proc.returncode == 0, proc.stderr
    assert statuses(wd) == ["logged"] * 3 and pending_rules(wd) == set()
    assert run_files(wd) == files
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("segbench-only")
    (run,) = client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'run'")
    assert run.info.status == "FINISHED" and "final_mIoU" in run.data.metrics
    _assert_complete_history(client, run.info.run_id, wd / "results/runs/synthetic/unet/ce/s0/history.csv")
    (study,) = client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'study'")
    assert "tables/summary.csv" in {f.path for f in client.list_artifacts(study.info.run_id, "tables")}


def block(wd):
    if (wd / "store").is_dir():
        shutil.move(wd / "store", wd / "store.ok")
    (wd / "store").write_text("not a folder: the sqlite store cannot be opened\n")


def unblock(wd):
    (wd / "store").unlink()
    if (wd / "store.ok").exists():
        shutil.move(wd / "store.ok", wd / "store")


@pytest.mark.slow
def test_pipeline_survives_an_outage_and_catches_up(tmp_path):
    from mlflow import MlflowClient

    wd = tmp_path
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY))
    block(wd)

    # the store is broken: every job succeeds, the track steps say "skipped", the report is made
    out = snakemake(wd)
    assert statuses(wd) == ["skipped"] * 3
    assert "was skipped for 3 track step(s)" in out and "`segbench sync`" in out
    assert all(p.stat().st_size > 0 for p in report_files(wd))
    assert json.loads((wd / RECORDS[1]).read_text())["studies"] == ["only"]
    # a later snakemake would redo exactly the track steps
    assert pending_rules(wd) == {"mlflow_init", "track_run", "track_study"}

    # `segbench sync` completes MLflow; afterwards snakemake has nothing to do
    unblock(wd)
    proc = segbench("sync", cwd=wd)
    assert proc.returncode == 0, proc.stderr
    assert statuses(wd) == ["logged"] * 3
    assert pending_rules(wd) == set()
    client = MlflowClient(f"sqlite:///{wd}/store/mlflow.db")
    exp = client.get_experiment_by_name("segbench-only")
    (run,) = client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'run'")
    _assert_complete_history(client, run.info.run_id, wd / "results/runs/synthetic/unet/ce/s0/history.csv")

    # another outage, this time completed by snakemake itself
    block(wd)
    snakemake(wd, "--forcerun", "mlflow_init")
    assert statuses(wd) == ["skipped"] * 3
    unblock(wd)
    snakemake(wd)
    assert statuses(wd) == ["logged"] * 3
    assert pending_rules(wd) == set()
    runs = client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'run'")
    assert len(runs) == 1  # re-logging never duplicates a run

    # the store file is damaged (a kill, a full disk): the next track step moves it aside and
    # logs into a fresh store, snakemake's summary says so, and `segbench sync` rebuilds the rest
    db = wd / "store/mlflow.db"
    db.write_bytes(b"garbage, not sqlite\n" * 100)
    out = snakemake(wd, "--forcerun", "track_study")
    (aside,) = list((wd / "store").glob("mlflow.db.damaged-*"))
    assert aside.read_bytes() == b"garbage, not sqlite\n" * 100
    assert f"moved it aside to {aside.name}" in out or f"moved it aside to {aside}" in out, out[-3000:]
    assert "`segbench sync` to log every run directory" in out, out[-3000:]
    assert statuses(wd) == ["logged"] * 3 and pending_rules(wd) == set()
    proc = segbench("sync", cwd=wd)
    assert proc.returncode == 0, proc.stderr
    tracking._forget_engine(f"sqlite:///{db}")  # this process still holds connections to the old file
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("segbench-only")
    (run,) = client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'run'")
    _assert_complete_history(client, run.info.run_id, wd / "results/runs/synthetic/unet/ce/s0/history.csv")


@pytest.mark.slow
def test_store_stopping_in_the_middle_of_the_pipeline(tmp_path):
    """MLflow is up when the pipeline starts (its experiments are created) and down by the
    time the run is tracked: training completes, the files are intact, every table and
    figure is made, the log says how to sync, and `segbench sync` fills MLflow with the
    complete history (no gaps, no duplicates)."""
    wd = tmp_path
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY))
    (wd / "store").mkdir()
    snakemake(wd, "results/mlflow/init.json")
    assert json.loads((wd / RECORDS[0]).read_text())["status"] == "logged"

    block(wd)
    out = snakemake(wd)
    assert statuses(wd) == ["logged", "skipped", "skipped"]
    assert "was skipped for 2 track step(s)" in out and "`segbench sync`" in out
    log = (wd / "results/logs/mlflow/runs/synthetic/unet/ce/s0.log").read_text()
    assert "MLflow skipped" in log and "segbench sync" in log, log
    files = run_files(wd)
    assert len((wd / "results/runs/synthetic/unet/ce/s0/history.csv").read_text().splitlines()) == 1 + 2
    assert all(p.stat().st_size > 0 for p in report_files(wd))

    unblock(wd)
    _sync_twice_and_check(wd, f"sqlite:///{wd}/store/mlflow.db", files)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_stopped_in_the_middle_of_the_pipeline(tmp_path, monkeypatch):
    """The same with a real tracking server (scripts/mlflow_server.sh, 127.0.0.1, stopped by
    its PID): up while the experiments are created, stopped before the run is tracked,
    started again on the same store before `segbench sync`."""
    wd = tmp_path
    uri = f"http://127.0.0.1:{_free_port()}"
    cfg = json.loads(json.dumps(TINY))
    cfg["mlflow"] = {"tracking_uri": uri}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    (wd / "store").mkdir()
    # a refused connection fails at once instead of after MLflow's retries with back-off
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    script = ["bash", str(ROOT / "scripts" / "mlflow_server.sh")]
    state = ["--state-dir", str(wd / "server")]

    def start():
        proc = subprocess.run(script + ["start", "--port", uri.rsplit(":", 1)[1], *state,
                                        "--backend", f"sqlite:///{wd}/store/mlflow.db",
                                        "--artifacts", str(wd / "artifacts")],
                              capture_output=True, text=True, timeout=300, cwd=wd)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def stop():
        subprocess.run(script + ["stop", *state], capture_output=True, text=True, timeout=120, cwd=wd)

    start()
    try:
        snakemake(wd, "results/mlflow/init.json")
        assert json.loads((wd / RECORDS[0]).read_text())["status"] == "logged"
        stop()
        out = snakemake(wd)
        assert statuses(wd) == ["logged", "skipped", "skipped"]
        assert "was skipped for 2 track step(s)" in out and "`segbench sync`" in out
        files = run_files(wd)
        assert all(p.stat().st_size > 0 for p in report_files(wd))

        start()
        _sync_twice_and_check(wd, uri, files)
    finally:
        stop()
