"""Jobs that survive the cluster: a SIGTERM (SLURM's warning before a time limit or a
preemption) stops a training at the next step boundary with a checkpoint there; the rerun
resumes inside the epoch and ends bit-identical to an uninterrupted run (CPU, same seed).
``train.checkpoint_every`` writes such checkpoints inside epochs without a signal.

The SIGTERM is sent at a known step by tests/sigterm_support/sitecustomize.py
(``SIGTERM_AT=<n>``: after the n-th optimisation step, to the whole process group, as
SLURM signals every process of a job step); the production code has no test hook.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_run_spec
from pipeline_support import BIN, ROOT, TINY_TWO_EPOCHS as TINY, job_logs, read_history, snakemake

SIGTERM_SUPPORT = Path(__file__).resolve().parent / "sigterm_support"
STEPS = 3  # tiny_run_spec: 6 train images in batches of 2, 2 epochs


def sigterm_env(n: int) -> dict:
    """The environment of a process whose group gets SIGTERM after its n-th training step."""
    path = os.pathsep.join(p for p in (str(SIGTERM_SUPPORT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, SIGTERM_AT=str(n), SEGBENCH_NO_PROGRESS="1")


def weights_equal(a: Path, b: Path) -> bool:
    ours, theirs = (torch.load(p, weights_only=True) for p in (a, b))
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """The uninterrupted run of the spec (one DataLoader worker, as the default config)."""
    from segbench.engine.train import train_run

    spec = copy.deepcopy(tiny_run_spec())
    spec["train"]["workers"] = 1
    out = tmp_path_factory.mktemp("preempt-ref")
    train_run(spec, tiny_dataset, out, threads=1, progress=False)
    return spec, out


@pytest.mark.parametrize("n", [2, 4])  # inside the first epoch; the 2nd batch of the second
def test_sigterm_stops_at_the_step_and_the_rerun_ends_bit_identical(tiny_dataset, reference, tmp_path, n, capsys):
    from segbench.engine.train import train_run

    spec, ref = reference
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "segbench", "train", "--spec", json.dumps(spec), "--data",
                           str(tiny_dataset), "--out", str(run), "--threads", "1"],
                          capture_output=True, text=True, env=sigterm_env(n), timeout=300, start_new_session=True)
    epoch, step = divmod(n, STEPS)  # 0-based epoch; batches done in it
    assert f"sigterm_support: SIGTERM after step {n}" in proc.stderr
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert (f"segbench train: error: stopped by SIGTERM before batch {step + 1}/{STEPS} of epoch {epoch + 1}/2, "
            f"after writing the checkpoint {run / 'ckpt' / 'last.pt'} there") in proc.stderr, proc.stderr[-3000:]
    assert f"resumes at epoch {epoch + 1}/2, step {step}/{STEPS}" in proc.stderr
    # the checkpoint is at that step: `epoch` epochs done, `step` batches of the next one
    state = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    assert state["epoch"] == epoch == len(state["history"])
    assert (state["partial"]["epoch"], state["partial"]["step"], state["partial"]["n_batches"]) == (epoch, step, step)
    assert not any((run / name).exists() for name in ("model.pt", "history.csv", "run.json", "train.lock"))

    capsys.readouterr()
    record = train_run(spec, tiny_dataset, run, threads=1, progress=False)
    assert f"from {run / 'ckpt' / 'last.pt'} at epoch {epoch + 1}/2, step {step}/{STEPS}" in capsys.readouterr().out
    assert read_history(run / "history.csv") == read_history(ref / "history.csv")
    assert weights_equal(run / "model.pt", ref / "model.pt")
    assert record["skipped_batches"] == 0


@pytest.mark.slow  # 3 trainings on 2 processes (~40 s)
def test_sigterm_stops_every_rank_of_a_run_on_two_processes_at_the_same_step(tiny_dataset, tmp_path):
    """train.devices: 2 (DDP on CPU): SIGTERM to the job's process group (the other rank ignores
    it) stops both ranks before the same batch; rank 0 writes the checkpoint with the ranks'
    accumulators summed, and the rerun on 2 processes ends bit-identical to an uninterrupted one."""
    from segbench.engine.train import train_run

    spec = copy.deepcopy(tiny_run_spec())
    spec["train"]["devices"] = 2
    cmd = [sys.executable, "-m", "segbench", "train", "--spec", json.dumps(spec), "--data", str(tiny_dataset),
           "--threads", "1"]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          env=sigterm_env(4), timeout=300, start_new_session=True)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "segbench train: error: stopped by SIGTERM before batch 2/3 of epoch 2/2" in proc.stderr
    state = torch.load(tmp_path / "run" / "ckpt" / "last.pt", weights_only=True)
    # each rank did 1 batch of epoch 2: the checkpoint holds both (the row counts global batches)
    assert (state["epoch"], state["partial"]["step"], state["partial"]["n_batches"]) == (1, 1, 2)

    train_run(spec, tiny_dataset, tmp_path / "ref", threads=1, progress=False)
    train_run(spec, tiny_dataset, tmp_path / "run", threads=1, progress=False)
    assert read_history(tmp_path / "run" / "history.csv") == read_history(tmp_path / "ref" / "history.csv")
    assert weights_equal(tmp_path / "run" / "model.pt", tmp_path / "ref" / "model.pt")


def test_checkpoint_every_writes_checkpoints_inside_epochs_that_resume_exactly(tiny_dataset, tmp_path,
                                                                               monkeypatch, capsys):
    """checkpoint_every=2 with 3 batches an epoch: one checkpoint before the 3rd batch of each
    epoch, besides the epochs' ends; the run's result is the same as without them, and
    resuming from the one inside epoch 2 (no DataLoader worker: the augmentation draws come
    from the main process) ends the same too."""
    import segbench.engine.train as train

    plain = copy.deepcopy(tiny_run_spec())
    train.train_run(plain, tiny_dataset, tmp_path / "plain", threads=1, progress=False)

    spec = copy.deepcopy(plain)
    spec["train"]["checkpoint_every"] = 2
    saved, real_save = [], train._save_checkpoint

    def save_checkpoint(path, state):
        partial = state["partial"]
        saved.append((state["epoch"], partial and partial["step"]))
        real_save(path, state)
        if partial and partial["epoch"] == 1:
            (tmp_path / "inside-epoch-2.pt").write_bytes(path.read_bytes())

    monkeypatch.setattr(train, "_save_checkpoint", save_checkpoint)
    train.train_run(spec, tiny_dataset, tmp_path / "every", threads=1, progress=False)
    assert saved == [(0, 2), (1, None), (1, 2), (2, None)]
    assert read_history(tmp_path / "every" / "history.csv") == read_history(tmp_path / "plain" / "history.csv")
    assert weights_equal(tmp_path / "every" / "model.pt", tmp_path / "plain" / "model.pt")

    resumed = tmp_path / "resumed"
    (resumed / "ckpt").mkdir(parents=True)
    (resumed / "ckpt" / "last.pt").write_bytes((tmp_path / "inside-epoch-2.pt").read_bytes())
    capsys.readouterr()
    train.train_run(spec, tiny_dataset, resumed, threads=1, progress=False)
    assert "at epoch 2/2, step 2/3 (the first 2 batches are loaded again" in capsys.readouterr().out
    assert saved[4:] == [(2, None)]  # no checkpoint again at the step it resumed at
    assert read_history(resumed / "history.csv") == read_history(tmp_path / "plain" / "history.csv")
    assert weights_equal(resumed / "model.pt", tmp_path / "plain" / "model.pt")


def test_a_checkpoint_inside_an_epoch_that_does_not_fit_is_set_aside(tiny_dataset, tmp_path, capsys):
    """A checkpoint whose step lies outside the epoch (another batch size, say) is not resumed."""
    import segbench.engine.train as train

    spec = copy.deepcopy(tiny_run_spec(epochs=1))
    run = train.setup(spec, tiny_dataset, tmp_path, threads=1, progress=False)
    train.checkpoint(run, [], partial={"epoch": 0, "step": STEPS, "loss_sum": 0.0, "n_batches": 0,
                                       "conf": torch.zeros(2, 2), "skipped": 0, "seconds": 0.0, "rng": {}})
    assert train.resume(run) == [] and run.resume_at is None
    assert "step 3 of epoch 1 after epoch 0, for 3 steps per epoch" in capsys.readouterr().err
    assert (tmp_path / "ckpt" / "last.pt.corrupt").exists() and not (tmp_path / "ckpt" / "last.pt").exists()


# ------------------------------------------------------------------ through snakemake
RUN = "synthetic/unet/ce/s0"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["group", "parent"])
def test_sigterm_to_the_workflow_then_a_rerun_finishes_with_the_same_results(tmp_path, target):
    """SIGTERM during the 5th training step (the 1st of epoch 2), sent to

    * ``group``: snakemake's whole process group (`kill -TERM -<pgid>`: a terminal, systemd, a
      SLURM job step): the trainer gets it itself and stops before batch 2 of epoch 2;
    * ``parent``: snakemake alone (`kill <pid>`): it passes the signal on to its trainers
      (the Snakefile's onstart) and starts no new job; the trainer stops at a later step of
      the epoch.

    Either way the trainer writes its checkpoint there and stops, snakemake fails, and
    `snakemake --cores all` resumes at that step and ends as an uninterrupted training would."""
    from segbench.engine.train import train_run

    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY))
    run = wd / "results" / "runs" / RUN
    log = wd / "results" / "logs" / "train" / f"{RUN}.log"
    env = dict(sigterm_env(5), SIGTERM_TO=target, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(wd),
                           "--cores", "1"], capture_output=True, text=True, env=env, timeout=600,
                          start_new_session=True)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert (run / "ckpt" / "last.pt").exists(), job_logs(wd)
    # a trainer may outlive a job shell killed by the signal by a step: wait for it
    deadline = time.monotonic() + 60
    while (run / "train.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    state = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    step = state["partial"]["step"]
    assert state["epoch"] == 1 and (step == 1 if target == "group" else 1 <= step < 4), (state["epoch"], step)
    text = log.read_text()
    assert "sigterm_support: SIGTERM after step 5" in text
    assert f"stopped by SIGTERM before batch {step + 1}/4 of epoch 2/2" in text, text[-3000:]
    assert not (run / "run.json").exists()

    snakemake(wd, cores="all")
    text = log.read_text()
    assert f"resuming {RUN} from results/runs/{RUN}/ckpt/last.pt at epoch 2/2, step {step}/4" in text, job_logs(wd)
    # the same training, uninterrupted, from the spec the workflow recorded
    record = json.loads((run / "run.json").read_text())
    ref = tmp_path / "ref"
    train_run(record["config"], wd / "results" / "data" / "synthetic", ref, threads=1, progress=False)
    assert read_history(run / "history.csv") == read_history(ref / "history.csv")
    assert weights_equal(run / "model.pt", ref / "model.pt")
    assert (run / "metrics.json").exists()
    dry = snakemake(wd, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
