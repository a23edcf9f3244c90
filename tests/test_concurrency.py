"""Concurrency: two snakemake invocations on one working directory, parallel writers of one
MLflow store, and readers of a result file while it is rewritten.

* Snakemake locks the files a run will write (``.snakemake/locks/``): a second ``snakemake``
  whose jobs overlap them is refused with Snakemake's message ("Directory cannot be
  locked", a ``LockException``) and exits non-zero, while the first finishes intact. After
  a crash (a SIGKILL of snakemake, a power loss) the lock stays behind; the same message then
  says what to do: ``snakemake --unlock``, then run again (``--rerun-incomplete`` reruns the
  jobs the crash cut short). Both are shown below.
* MLflow: the pipeline creates the sqlite store once (``track-init``) and then fans out one
  ``track`` job per run; N processes logging at once leave exactly N runs per study with
  every metric, param and epoch, and a database that passes sqlite's integrity check.
* Result files (profiles, metrics, records) are written through ``segbench.io`` (temporary
  file + fsync + rename): a reader running while a file is rewritten again and again sees the
  old or the new content, never a part of it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SRC = ROOT / "src"
TESTS = Path(__file__).resolve().parent

# one run on a tiny synthetic dataset: generate, prepare, train (3 epochs), evaluate
CONFIG = {
    "datasets": {"synthetic": {"source": "synthetic", "generate": {"seed": 2, "train": 6, "val": 2,
                                                                    "height": 64, "width": 128}}},
    "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
    "losses": {"ce": {"type": "ce"}},
    "train": {"epochs": 3, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1},
    "eval": {"batch_size": 2, "samples": 1},
    "studies": {"s": {"datasets": ["synthetic"], "models": ["unet"], "losses": ["ce"], "seeds": [0]}},
}
RUN = "results/runs/synthetic/unet/ce/s0"
TARGET = f"{RUN}/metrics.json"
LOCK_MESSAGE = "Directory cannot be locked"


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SEGBENCH_NO_PROGRESS="1")


def _cmd(workdir: Path, *args: str) -> list[str]:
    return [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--cores", "1", *args]


def _run(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(workdir, *args), capture_output=True, text=True, env=_env(), timeout=timeout)


def _start(workdir: Path, *args: str) -> subprocess.Popen:
    # its own process group: a crash is simulated by killing snakemake *and* its jobs
    return subprocess.Popen(_cmd(workdir, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)


def _wait_for_lock(workdir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until snakemake holds its lock (its lock files exist) and a job is running."""
    locks = workdir / ".snakemake" / "locks"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the first snakemake ended before the second started ({proc.returncode}):\n{err}")
        if locks.is_dir() and list(locks.glob("*.lock")) and (workdir / "results" / "logs").is_dir():
            return
        time.sleep(0.1)
    raise AssertionError("snakemake never took its lock")


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return tmp_path


# ------------------------------------------------------------------ (a) two snakemakes
@pytest.mark.slow
def test_second_snakemake_is_refused_while_the_first_runs(workdir):
    first = _start(workdir, TARGET)
    try:
        _wait_for_lock(workdir, first)
        second = _run(workdir, TARGET, timeout=120)
        still_running = first.poll() is None
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert still_running, "the second snakemake was refused while the first was running"
    assert second.returncode != 0
    said = second.stdout + second.stderr
    assert LOCK_MESSAGE in said and "LockException" in said, said
    assert "--unlock" in said, "Snakemake's message names the remedy after a crash"
    assert "Traceback" not in said

    # the first run is intact: every output there, complete, and nothing left to do
    assert first.returncode == 0, err[-4000:]
    run = workdir / RUN
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + CONFIG["train"]["epochs"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0
    assert not list((workdir / ".snakemake" / "locks").glob("*.lock")), "the lock is released at the end"
    again = _run(workdir, TARGET, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_lock_left_by_a_crash_is_removed_with_unlock(workdir):
    """A snakemake killed with SIGKILL (a crash) leaves its lock: the next run is refused
    with the --unlock hint; `snakemake --unlock` removes it and the run completes."""
    first = _start(workdir, TARGET)
    _wait_for_lock(workdir, first)
    os.killpg(first.pid, signal.SIGKILL)  # snakemake and its running job, as a crash would
    first.communicate(timeout=60)
    assert list((workdir / ".snakemake" / "locks").glob("*.lock")), "a crash leaves the lock behind"

    refused = _run(workdir, TARGET)
    assert refused.returncode != 0 and LOCK_MESSAGE in refused.stderr + refused.stdout
    assert "--unlock" in refused.stderr + refused.stdout

    unlock = _run(workdir, TARGET, "--unlock")
    assert unlock.returncode == 0, unlock.stderr
    assert not list((workdir / ".snakemake" / "locks").glob("*.lock"))
    done = _run(workdir, TARGET, "--rerun-incomplete")
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads((workdir / TARGET).read_text())["run_key"] == "synthetic/unet/ce/s0"


# ------------------------------------------------------------------ (b) MLflow
N_WRITERS = 6

_WRITER = """
import sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from pathlib import Path
import test_tracking as T
from segbench import tracking
run_dir, _ = T.make_run(Path(sys.argv[3]), seed=int(sys.argv[4]), epochs=4)
profile = T.make_profile(Path(sys.argv[3]))
go = float(sys.argv[6])
while time.time() < go:  # start together
    time.sleep(0.01)
ids = tracking.log_run(run_dir, studies=["main", "ablation"], tracking_uri=sys.argv[5], profile_path=profile)
again = tracking.log_run(run_dir, studies=["main", "ablation"], tracking_uri=sys.argv[5], profile_path=profile)
assert again == ids, (ids, again)
"""


@pytest.mark.slow
def test_parallel_track_jobs_keep_the_store_whole(tmp_path):
    """As the pipeline does it: the store is created first (track-init), then N track jobs
    log N runs into two studies at once, each logging its run twice (a retried job)."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from segbench import tracking

    results = tmp_path / "results"
    uri = tracking.default_tracking_uri(results)
    tracking.init_store(uri, ["main", "ablation"], results / "mlartifacts")
    go = time.time() + 8  # after every interpreter has imported mlflow
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(SRC), str(TESTS), str(tmp_path / f"w{i}"), str(i),
                               uri, str(go)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(N_WRITERS)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * N_WRITERS, "\n".join(outs)

    client = MlflowClient(uri)
    for study in ("main", "ablation"):
        exp = client.get_experiment_by_name(tracking.experiment_name(study))
        runs = client.search_runs([exp.experiment_id], max_results=100)
        keys = sorted(r.data.tags["segbench.run_key"] for r in runs)
        assert keys == sorted(f"synthetic/unet_small/ce/s{i}" for i in range(N_WRITERS)), keys
        for r in runs:
            for key in ("train_loss", "val_mIoU", "lr"):
                steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
                assert sorted(steps) == [1, 2, 3, 4], (r.data.tags["segbench.run_key"], key, steps)
            assert {"final_mIoU", "profile_params"} <= set(r.data.metrics), sorted(r.data.metrics)
            assert r.data.params, "params logged"
    with sqlite3.connect(results / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ------------------------------------------------------------------ (c) shared result files
ROUNDS = 200

_JSON_WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
from segbench.io import write_json
path, rounds = sys.argv[2], int(sys.argv[3])
for i in range(rounds):
    write_json(path, {"round": i, "model": "unet", "params": list(range(20_000 + (i % 7) * 2_000))})
"""

_JSON_READER = """
import json, sys, time
path, rounds = sys.argv[1], int(sys.argv[2])
seen = set()
bad = []
i, t0 = 0, time.monotonic()
# at least `rounds` reads, and on until the writer's last version shows up (or 120 s)
while i < rounds or (rounds - 1 not in seen and time.monotonic() - t0 < 120):
    i += 1
    if i > rounds:
        time.sleep(0.005)  # leave the CPU to the writer
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        obj = json.loads(text)
        assert obj["params"][-1] == 20_000 + (obj["round"] % 7) * 2_000 - 1 and obj["model"] == "unet"
        seen.add(obj["round"])
    except Exception as e:
        bad.append(f"read {i}: {e.__class__.__name__}: {str(e)[:80]} ({len(text)} bytes)")
print(json.dumps({"bad": bad, "distinct": len(seen)}))
"""


def test_readers_never_see_a_partial_result_file(tmp_path):
    """A profile JSON (~0.15 MB) rewritten 200 times by one process while two others read
    it at least 200 times each, until the last version: every read parses and is complete.
    (The same readers against a plain ``open(path, "w")`` writer fail at once: empty or
    half-written files.)"""
    from segbench.io import write_json

    path = tmp_path / "profiles" / "unet-c19-64x128.json"
    write_json(path, {"round": -1, "model": "unet", "params": list(range(20_000 + 6 * 2_000))})
    writer = subprocess.Popen([sys.executable, "-c", _JSON_WRITER, str(SRC), str(path), str(ROUNDS)])
    readers = [subprocess.Popen([sys.executable, "-c", _JSON_READER, str(path), str(ROUNDS)],
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(r.communicate(timeout=300)[0]) for r in readers]
    assert writer.wait(timeout=300) == 0
    for res in results:
        assert res["bad"] == [], res["bad"][:5]
    assert min(res["distinct"] for res in results) > 1, "the readers ran while the file was rewritten"
    assert not list(path.parent.glob(".*.tmp")), "no temporary file left"
    assert json.loads(path.read_text())["round"] == ROUNDS - 1


def test_result_writers_go_through_the_atomic_helpers():
    """The steps that write a shared result file use segbench.io (temporary file + rename)."""
    import inspect

    from segbench import cli
    from segbench.engine import evaluate

    assert "write_json(a.out, result)" in inspect.getsource(cli.cmd_profile)
    source = inspect.getsource(evaluate.evaluate_run)
    assert 'write_json(run_dir / "metrics.json"' in source
    assert source.count("_save_npy(") == 4  # confusion.npy and the three per-image arrays
    assert "atomic_path(" in inspect.getsource(evaluate._save_npy)
    assert source.count("atomic_path(") == 1  # samples.npz
