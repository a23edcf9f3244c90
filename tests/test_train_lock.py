"""One trainer per run directory, trainings that end with their workflow, a full disk named
as such - each through the command a user (or the train rule) runs.

* ``train.lock``: a second `segbench train` on a busy run directory stops at once naming the
  holder; the lock file of a SIGKILLed trainer is taken over with a note.
* the real Snakefile: SIGKILL snakemake alone, and its training stops within seconds saying
  why and that a rerun resumes; `snakemake --unlock` + rerun gives the uninterrupted result.
* a real tmpfs of a few MB as the run directory: the checkpoint that does not fit is refused
  with "no space left on device at <path>: N MB needed, M MB free", the previous one kept.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_run_spec
from pipeline_support import BIN, ROOT, read_history, snakemake


def train_args(spec: dict, data, out) -> list[str]:
    """The arguments of `segbench train` as workflow/rules/train.smk gives them."""
    return ["train", "--spec", json.dumps(spec), "--data", str(data), "--out", str(out), "--threads", "1"]


def train_cmd(spec: dict, data, out) -> list[str]:
    return [sys.executable, "-m", "segbench", *train_args(spec, data, out)]


def job_env(**extra) -> dict:
    env = dict(os.environ, SEGBENCH_NO_PROGRESS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    env.pop("SEGBENCH_WORKFLOW_PID", None)
    env.update(extra)
    return env


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def lock_content(run: Path) -> dict | None:
    try:
        text = (run / "train.lock").read_text()
    except FileNotFoundError:
        return None
    return json.loads(text) if text.strip() else None


def pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------ one trainer per run directory (seconds)
def test_second_trainer_is_refused_and_a_killed_ones_lock_is_taken_over(tiny_dataset, tmp_path, capsys):
    from segbench.cli import main

    run = tmp_path / "run"
    long_spec = tiny_run_spec(epochs=500)  # runs until killed
    with open(tmp_path / "first.log", "w") as first_log:  # the child holds its own copy
        first = subprocess.Popen(train_cmd(long_spec, tiny_dataset, run), env=job_env(), stdout=first_log,
                                 stderr=subprocess.STDOUT)
    try:
        holder = wait_for(lambda: lock_content(run), 120, "the first trainer's lock", first)
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname(), holder

        second = subprocess.run(train_cmd(long_spec, tiny_dataset, run), env=job_env(), capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert (f"segbench train: error: {run} is being trained by another process: pid {first.pid} on host "
                f"{socket.gethostname()}, since {holder['started']} (lock file {run / 'train.lock'}). Wait for it "
                "to finish, or stop it") in second.stderr, second.stderr
        assert "training " not in second.stdout  # refused before loading data or model
        assert first.poll() is None and lock_content(run) == holder  # the holder is untouched
    finally:
        first.kill()
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert lock_content(run) == holder  # what a killed trainer leaves: a lock file nobody holds

    # a new trainer (another spec: 1 epoch) takes it over, says so, and removes it at the end
    capsys.readouterr()
    assert main(train_args(tiny_run_spec(epochs=1), tiny_dataset, run) + ["--quiet"]) == 0
    out = capsys.readouterr().out
    assert (f"note: taking over {run / 'train.lock'}, left by pid {first.pid} on host {socket.gethostname()}, "
            f"since {holder['started']}, which no longer runs") in out, out
    assert json.loads((run / "run.json").read_text())["epochs"] == 1
    assert not (run / "train.lock").exists()


def test_bad_workflow_pid_is_named(tiny_dataset, tmp_path, monkeypatch, capsys):
    from segbench.cli import main

    monkeypatch.setenv("SEGBENCH_WORKFLOW_PID", "snakemake")
    assert main(train_args(tiny_run_spec(epochs=1), tiny_dataset, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert ("segbench train: error: SEGBENCH_WORKFLOW_PID='snakemake' is not a process id; the Snakefile sets "
            "it to snakemake's pid. Unset it to run this step by hand") in err, err
    assert not (tmp_path / "run" / "train.lock").exists()


# ------------------------------------------------------------------ training ends with its workflow (end to end)
RUN = "synthetic/unet/ce/s0"
EPOCHS = 40
TINY = {
    "datasets": {"synthetic": {"source": "synthetic",
                               "generate": {"seed": 1, "train": 8, "val": 2, "height": 64, "width": 128}}},
    "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
    "losses": {"ce": {"type": "ce"}},
    "train": {"epochs": EPOCHS, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1, "val_every": 5},
    "eval": {"batch_size": 2, "samples": 1},
    "profile": {"warmup": 1, "iterations": 1, "threads": 1},
    "mlflow": {"enabled": False},
    "studies": {"only": {"datasets": ["synthetic"], "models": ["unet"], "losses": ["ce"], "seeds": [0]}},
}


@pytest.mark.slow
def test_training_stops_when_snakemake_is_killed_and_a_rerun_resumes(tmp_path):
    from segbench.config import validate_config
    from segbench.engine.train import train_run
    from segbench.plan import Plan

    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY))
    run = wd / "results" / "runs" / RUN
    log = wd / "results" / "logs" / "train" / f"{RUN}.log"
    target = f"results/runs/{RUN}/run.json"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SEGBENCH_NO_PROGRESS="1")
    env.pop("SEGBENCH_WORKFLOW_PID", None)
    workflow = subprocess.Popen([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
                                 str(wd), "--cores", "1", target], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: log.exists() and f"epoch 1/{EPOCHS}:" in log.read_text(), 300,
                 "the first epoch of training", workflow)
        trainer = lock_content(run)["pid"]
        environ = Path(f"/proc/{trainer}/environ").read_bytes().split(b"\0")
        assert f"SEGBENCH_WORKFLOW_PID={workflow.pid}".encode() in environ  # the Snakefile's export
    finally:
        workflow.send_signal(signal.SIGKILL)  # snakemake only: its job is left running, as on a lost terminal
        workflow.wait(timeout=30)
    killed_at = time.monotonic()
    wait_for(lambda: not pid_running(trainer), 10, f"the trainer (pid {trainer}) to stop")
    stopped_after = time.monotonic() - killed_at
    text = log.read_text()
    assert (f"segbench train: error: the workflow that started this job (snakemake, pid {workflow.pid} from "
            "$SEGBENCH_WORKFLOW_PID) is gone: stopping training at batch") in text, text
    kept = re.search(rf"the last checkpoint, results/runs/{RUN}/ckpt/last\.pt \(after epoch (\d+) of {EPOCHS}\), "
                     r"is kept: a rerun resumes from it \(`snakemake --unlock`, then the same snakemake command\)",
                     text)
    assert kept, text
    epoch = int(kept.group(1))
    assert epoch < EPOCHS and torch.load(run / "ckpt" / "last.pt", weights_only=True)["epoch"] == epoch
    assert not (run / "run.json").exists() and not (run / "train.lock").exists()
    print(f"trainer stopped {stopped_after:.1f} s after snakemake's SIGKILL, after epoch {epoch}")

    snakemake(wd, "--unlock")
    snakemake(wd, target)
    assert f"resuming {RUN} from results/runs/{RUN}/ckpt/last.pt after epoch {epoch} of {EPOCHS}" in log.read_text()

    # the same history and weights as an uninterrupted run of the same spec
    plan = Plan(validate_config(copy.deepcopy(TINY)))
    reference = tmp_path / "reference"
    train_run(plan.run_spec(plan.runs[0]), wd / "results" / "data" / "synthetic", reference, threads=1,
              progress=False)
    assert read_history(run / "history.csv") == read_history(reference / "history.csv")
    ours, theirs = (torch.load(d / "model.pt", weights_only=True) for d in (run, reference))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ------------------------------------------------------------------ a full disk (a real tmpfs)
@pytest.fixture
def small_disk(tmp_path):
    """A 2.5 MB tmpfs (room for one checkpoint of the tiny run, 1.6 MB, not two): mounted on
    a folder of tmp_path, unmounted afterwards. Needs root; fails (never skips) without it."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2560k", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {mnt} (needs root): {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def mb_figures(message: str, path: Path) -> tuple[float, float]:
    m = re.search(rf"no space left on device at {re.escape(str(path))}: ([\d.]+) MB needed, ([\d.]+) MB free; "
                  r"free space there or move the results", message)
    assert m, message
    return float(m.group(1)), float(m.group(2))


def test_checkpoint_that_does_not_fit_is_refused_and_the_previous_one_kept(tiny_dataset, small_disk, capsys):
    from segbench.cli import main

    run = small_disk / "run"
    proc = subprocess.run(train_cmd(tiny_run_spec(epochs=2), tiny_dataset, run), env=job_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "basic_ios" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    ckpt = run / "ckpt" / "last.pt"
    needed, free = mb_figures(proc.stderr, ckpt)
    # independent figures: the size of the epoch-1 checkpoint just like it, and df's free space
    assert abs(needed - ckpt.stat().st_size / 1e6) < 0.05 * ckpt.stat().st_size / 1e6, (needed, ckpt.stat())
    assert abs(free - shutil.disk_usage(small_disk).free / 1e6) < 0.01 and free < needed
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # the previous checkpoint survives
    assert not list(run.rglob(".*.tmp")) and not (run / "train.lock").exists()

    # room again: the rerun resumes from the kept checkpoint
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    assert main(train_args(tiny_run_spec(epochs=2), tiny_dataset, run) + ["--quiet"]) == 0
    assert f"resuming tiny/unet/ce/s0 from {ckpt} after epoch 1 of 2" in capsys.readouterr().out


def test_disk_full_while_writing_is_named(tiny_dataset, small_disk, monkeypatch, capsys):
    """A file system whose free-space figure is optimistic (a quota, another job filling it):
    the check passes, torch.save then hits ENOSPC, and the error still says so."""
    import segbench.engine.train as train_mod
    from segbench.cli import main

    real_usage = shutil.disk_usage

    def optimistic(path):
        usage = real_usage(path)
        return usage._replace(free=usage.free + 100_000_000)

    monkeypatch.setattr(train_mod.shutil, "disk_usage", optimistic)
    run = small_disk / "run"
    assert main(["train", "--spec", json.dumps(tiny_run_spec(epochs=2)), "--data", str(tiny_dataset),
                 "--out", str(run), "--threads", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    ckpt = run / "ckpt" / "last.pt"
    needed, _ = mb_figures(err, ckpt)
    assert abs(needed - ckpt.stat().st_size / 1e6) < 0.05 * ckpt.stat().st_size / 1e6
    assert "basic_ios" not in err
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert not list(run.rglob(".*.tmp")) and not (run / "train.lock").exists()
