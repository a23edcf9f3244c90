"""The local MLflow store survives kills, damage, moves and concurrent writers.

* a kill while a fresh sqlite store is being created leaves no store (it is made aside and
  moved into place), and the next step creates a whole one;
* a damaged or half-made store (not sqlite, an interrupted migration, a wrong schema revision,
  a truncated file) is moved aside with a message naming both paths, and a fresh store is
  built from the run directories;
* a moved or copied results folder writes its artifacts inside itself (`segbench sync` and the
  track steps repoint the store);
* two `segbench sync` at once on a fresh store give one MLflow run per run key.

All through the `segbench` command line (in-process ``main(argv)`` or ``python -m segbench``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segbench import tracking
from segbench.cli import main

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
KEYS = ["synthetic/unet/ce/s0", "synthetic/unet/ce/s1", "synthetic/unet/dice/s0"]
HISTORY = ("epoch,train_loss,train_mIoU,train_aAcc,val_loss,val_mIoU,val_aAcc,lr,skipped_batches,epoch_seconds,time\n"
           "1,0.9,0.1,0.5,0.8,0.1,0.5,0.01,0,1.0,1760000000\n"
           "2,0.8,0.2,0.6,0.7,0.2,0.6,0.01,0,1.0,1760000001\n")


def make_results(root: Path, keys=KEYS, study: str = "main") -> Path:
    """A results folder with one run directory per key and the record a skipped track job
    leaves (so `segbench sync` knows each run's study without a config)."""
    results = root / "results"
    for key in keys:
        dataset, model, loss, seed = key.split("/")
        run = results / "runs" / key
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({
            "run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": int(seed[1:]),
            "config": {"train": {"lr": 0.01}}, "config_hash": "abc", "num_classes": 2,
            "class_names": ["road", "sky"], "epochs": 2}))
        (run / "history.csv").write_text(HISTORY)
        (run / "metrics.json").write_text(json.dumps({
            "run_key": key, "mIoU": 0.25, "aAcc": 0.5, "mAcc": 0.5, "mDice": 0.3, "IoU": [0.3, 0.2],
            "class_names": ["road", "sky"], "num_images": 2, "input_size": [64, 128]}))
        tracking.write_record(results / "mlflow/runs" / f"{key}.json", status=tracking.RECORD_SKIPPED,
                              reason="down", studies=[study], run_dir=str(run))
    return results


def uri_of(results: Path) -> str:
    return f"sqlite:///{results.resolve()}/mlflow.db"


def runs_by_key(uri: str, study: str = "main", view=ViewType.ALL) -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"segbench-{study}")
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], run_view_type=view, max_results=1000):
        if run.data.tags.get("segbench.kind") == "run":
            out.setdefault(run.data.tags["segbench.run_key"], []).append(run)
    return out


def sync(results: Path, capsys) -> tuple[int, str, str]:
    code = main(["sync", "--results", str(results), "--tracking-uri", uri_of(results)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def segbench_proc(*args, cwd) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen([sys.executable, "-m", "segbench", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder: `segbench sync` reads ./config.yaml when there is one."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def sound_store(tmp_path_factory) -> bytes:
    """The bytes of a sound store with one experiment (made once: creating one takes seconds)."""
    results = tmp_path_factory.mktemp("template") / "results"
    tracking.init_store(uri_of(results), ["main"], results / "mlartifacts")
    return (results / "mlflow.db").read_bytes()


# --------------------------------------------------------------------------- kills during creation


def test_kill_while_the_store_is_created_leaves_no_store_and_the_next_step_makes_one(tmp_path):
    """The store is made in `.mlflow.db.creating-<pid>` and moved into place: killed while
    MLflow migrates it, there is no mlflow.db at all, and the next track-init makes a whole one
    (the old code left a half-migrated mlflow.db that failed every later step)."""
    results = tmp_path / "results"
    results.mkdir()
    args = ["track-init", "--study", "main", "--tracking-uri", uri_of(results), "--on-error", "skip",
            "--out", str(results / "mlflow/init.json")]
    proc = segbench_proc(*args, cwd=tmp_path)
    creating = results / f".mlflow.db.creating-{proc.pid}"
    deadline = time.monotonic() + 120
    while not creating.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert creating.exists(), f"no {creating} while the store was created: {proc.communicate()}"
    time.sleep(0.3)  # well into MLflow's migrations
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (results / "mlflow.db").exists()
    assert creating.exists()  # what the kill left

    code = main(args)
    assert code == 0
    rec = json.loads((results / "mlflow/init.json").read_text())
    assert rec["status"] == "logged", rec
    assert not creating.exists()  # the leftover is removed
    client = MlflowClient(uri_of(results))
    assert client.get_experiment_by_name("segbench-main") is not None


# --------------------------------------------------------------------------- damaged stores


def _garbage(db: Path, sound: bytes) -> None:
    db.write_bytes(b"this is not a database\n" * 200)


def _interrupted_migration(db: Path, sound: bytes) -> None:
    """What a kill in the middle of MLflow's migrations left with the old code."""
    db.write_bytes(sound)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")
        con.execute("UPDATE alembic_version SET version_num = '0c779009ac13'")


def _old_revision(db: Path, sound: bytes) -> None:
    db.write_bytes(sound)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '0c779009ac13'")


def _truncated(db: Path, sound: bytes) -> None:
    db.write_bytes(sound[: len(sound) // 3])


DAMAGE = {
    "not-sqlite": (_garbage, "not a sqlite database"),
    "interrupted-migration": (_interrupted_migration, "_alembic_tmp_experiments"),
    "old-revision": (_old_revision, "revision 0c779009ac13"),
    "truncated": (_truncated, ""),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_track_moves_a_damaged_store_aside_and_logs_into_a_fresh_one(tmp_path, capsys, sound_store, kind):
    damage, why = DAMAGE[kind]
    results = make_results(tmp_path, keys=KEYS[:1])
    db = results / "mlflow.db"
    damage(db, sound_store)
    damaged_bytes = db.read_bytes()
    rec = results / "mlflow/runs" / f"{KEYS[0]}.json"
    code = main(["track", str(results / "runs" / KEYS[0]), "--study", "main", "--tracking-uri",
                 uri_of(results), "--on-error", "skip", "--out", str(rec)])
    err = capsys.readouterr().err
    assert code == 0, err
    asides = sorted(results.glob("mlflow.db.damaged-*"))
    assert len(asides) == 1 and asides[0].read_bytes() == damaged_bytes
    assert f"the MLflow store {db} was damaged" in err and why in err, err
    assert f"moved it aside to {asides[0]}" in err and "`segbench sync`" in err, err
    assert "once the store is reachable" not in err
    assert json.loads(rec.read_text())["status"] == "logged"
    runs = runs_by_key(uri_of(results))
    assert list(runs) == [KEYS[0]] and runs[KEYS[0]][0].data.metrics["final_mIoU"] == 0.25


def test_sync_rebuilds_a_damaged_store_from_the_run_directories(tmp_path, capsys, sound_store):
    """The state of the issue: every step failed with "_alembic_tmp_experiments already exists"
    and `segbench sync` did not help. Now sync moves it aside and logs every run again."""
    results = make_results(tmp_path)
    _interrupted_migration(results / "mlflow.db", sound_store)
    code, out, err = sync(results, capsys)
    assert code == 0, err
    assert "was damaged (an interrupted migration left table _alembic_tmp_experiments)" in err, err
    assert "synced 3 runs" in out
    runs = runs_by_key(uri_of(results))
    assert sorted(runs) == KEYS and all(len(r) == 1 for r in runs.values())
    # the fresh store is sound: a second sync moves nothing aside and changes nothing
    code, out, err = sync(results, capsys)
    assert code == 0 and "was damaged" not in err and len(list(results.glob("mlflow.db.damaged-*"))) == 1
    assert {k: [r.info.run_id for r in v] for k, v in runs_by_key(uri_of(results)).items()} == {
        k: [r.info.run_id for r in v] for k, v in runs.items()}


# --------------------------------------------------------------------------- moved / copied folders


def _locations(uri: str) -> list[str]:
    db = tracking._sqlite_path(uri)
    with sqlite3.connect(db) as con:
        return ([r[0] for r in con.execute("SELECT artifact_location FROM experiments")]
                + [r[0] for r in con.execute("SELECT artifact_uri FROM runs")])


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("how, layout", [("mv", "results/mlflow.db"), ("cp -a", "store/mlflow.db")])
def test_a_moved_or_copied_working_folder_writes_inside_itself(tmp_path, capsys, how, layout):
    """The default store (results/mlflow.db, artifacts in results/mlartifacts) moved with `mv`;
    a store in its own folder beside results/ (mlflow.tracking_uri: sqlite:///store/mlflow.db)
    copied with `cp -a`. Either way the steps in the new folder write only inside it."""
    old = tmp_path / "old" / "project"
    results = make_results(old, keys=KEYS[:2])
    uri = f"sqlite:///{old / layout}"
    code = main(["sync", "--results", str(results), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 0, err
    assert all(loc.startswith(old.as_uri() + "/") for loc in _locations(uri))

    new = tmp_path / "new" / "project"
    new.parent.mkdir()
    if how == "mv":
        shutil.move(old, new)
    else:
        shutil.copytree(old, new, symlinks=True)
        before = _files(old)
    moved, uri = new / "results", f"sqlite:///{new / layout}"
    # a new run appears in the moved folder; its track step logs it, then sync everything
    extra = make_results(tmp_path / "extra", keys=[KEYS[2]])
    shutil.copytree(extra / "runs" / KEYS[2], moved / "runs" / KEYS[2])
    tracking.write_record(moved / "mlflow/runs" / f"{KEYS[2]}.json", status=tracking.RECORD_SKIPPED,
                          reason="down", studies=["main"])
    code = main(["track", str(moved / "runs" / KEYS[2]), "--study", "main", "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 0, err
    store_dir = Path(layout).parent
    assert (f"the MLflow store {new / layout} was made in {old / store_dir}: repointed the artifact "
            f"locations of 2 experiment(s) and 2 run(s) inside it to {new / store_dir}") in err, err
    code = main(["sync", "--results", str(moved), "--tracking-uri", uri])
    out, err = capsys.readouterr()
    assert code == 0 and "synced 3 runs" in out and "repointed" not in err, err  # repaired once

    locations = _locations(uri)
    assert len(locations) == 5 and all(loc.startswith(new.as_uri() + "/") for loc in locations), locations
    runs = runs_by_key(uri)
    assert sorted(runs) == KEYS
    for key, (run,) in runs.items():
        art = Path(run.info.artifact_uri.removeprefix("file://"))
        assert (art / "metrics.json").is_file() and art.is_relative_to(moved / "mlartifacts"), art
    if how == "cp -a":
        assert _files(old) == before  # the original folder is untouched by the copy's steps


def test_a_store_made_before_it_recorded_its_folder_is_repaired_by_sync(tmp_path, capsys):
    """Stores made by earlier segbench versions carry no `segbench.store_dir` tag: the old folder
    is read off the experiments' `<results>/mlartifacts/<study>` locations."""
    old = tmp_path / "a" / "results"
    make_results(old.parent, keys=KEYS[:1])
    code, _, err = sync(old, capsys)
    assert code == 0, err
    with sqlite3.connect(old / "mlflow.db") as con:
        con.execute("DELETE FROM experiment_tags WHERE key = 'segbench.store_dir'")
    new = tmp_path / "b" / "results"
    shutil.move(old.parent, new.parent)
    code, out, err = sync(new, capsys)
    assert code == 0, err
    # experiments 0 (Default) and segbench-main, and the one run
    assert f"was made in {old}: repointed the artifact locations of 2 experiment(s) and 1 run(s)" in err
    assert all(loc.startswith(new.as_uri() + "/") for loc in _locations(uri_of(new)))


# --------------------------------------------------------------------------- concurrency


def test_two_syncs_at_once_on_a_fresh_store_give_one_run_per_key(tmp_path):
    results = make_results(tmp_path)
    args = ["sync", "--results", str(results), "--tracking-uri", uri_of(results)]
    procs = [segbench_proc(*args, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("synced 3 runs" in out for out, _ in outs), outs
    runs = runs_by_key(uri_of(results), view=ViewType.ALL)  # deleted duplicates count too
    assert sorted(runs) == KEYS
    assert {k: len(v) for k, v in runs.items()} == {k: 1 for k in KEYS}
    client = MlflowClient(uri_of(results))
    for (run,) in runs.values():  # each metric once per step
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mIoU")] == [1, 2]


# --------------------------------------------------------------------------- damaged run files


def test_a_damaged_run_file_skips_the_track_step_with_the_file_and_the_remedy(tmp_path, capsys):
    """The pipeline's track step (--on-error skip) on a run whose metrics.json was cut short:
    exit 0, record "skipped" naming the file and how to recreate it (was: a raw JSONDecodeError)."""
    results = make_results(tmp_path, keys=KEYS[:1])
    metrics = results / "runs" / KEYS[0] / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    rec = results / "mlflow/runs" / f"{KEYS[0]}.json"
    code = main(["track", str(metrics.parent), "--study", "main", "--tracking-uri", uri_of(results),
                 "--on-error", "skip", "--round", "1", "--out", str(rec)])
    err = capsys.readouterr().err
    assert code == 0, err
    record = json.loads(rec.read_text())
    assert record["status"] == "skipped" and record["round"] == 1
    assert f"{metrics} is truncated" in record["reason"], record
    assert "delete it and run `snakemake` again" in record["reason"] and "segbench evaluate" in record["reason"]
    assert "MLflow skipped" in err and str(metrics) in err
    assert "JSONDecodeError" not in err + record["reason"]
    # by hand (no --on-error skip) it is an error naming the file
    code = main(["track", str(metrics.parent), "--study", "main", "--tracking-uri", uri_of(results)])
    err = capsys.readouterr().err
    assert code == 2 and f"segbench track: error: {metrics} is truncated" in err, err


def test_sync_logs_the_other_runs_and_names_the_damaged_file(tmp_path, capsys):
    results = make_results(tmp_path)
    history = results / "runs" / KEYS[1] / "history.csv"
    history.write_text(HISTORY[:-30])  # cut in the middle of the last line
    code, out, err = sync(results, capsys)
    assert code == 2
    assert f"segbench sync: error: 1 run(s) left out of MLflow because a file is damaged" in err, err
    assert f"{history} is truncated" in err and "delete it and run `snakemake` again" in err
    runs = runs_by_key(uri_of(results))
    assert sorted(runs) == [KEYS[0], KEYS[2]]
    rec = json.loads((results / "mlflow/runs" / f"{KEYS[1]}.json").read_text())
    assert rec["status"] == "skipped" and str(history) in rec["reason"]
    assert json.loads((results / "mlflow/runs" / f"{KEYS[0]}.json").read_text())["status"] == "logged"
