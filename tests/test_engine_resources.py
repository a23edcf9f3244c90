"""How a job uses what it is given: CPUs -> DataLoader workers, one GPU of several, and the
reproducibility settings (engine/common.py, engine/train.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from segbench.engine import common
from segbench.engine.train import loader_workers

SRC = Path(__file__).resolve().parents[1] / "src"


def test_loader_workers_follow_the_cpus_on_a_gpu_only():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # CPU: the configured count, whatever the allocation (it splits the augmentation streams)
    assert loader_workers(1, cpus=16, threads=2, device=cpu) == 1
    assert loader_workers(0, cpus=16, threads=2, device=cpu) == 0
    # GPU: every CPU the torch threads leave free, at least the configured count
    assert loader_workers(1, cpus=8, threads=2, device=gpu) == 6
    assert loader_workers(4, cpus=2, threads=2, device=gpu) == 4


def test_job_cpus(monkeypatch):
    usable = len(common.os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    assert common.job_cpus(1) == 1                      # what Snakemake gave the job
    assert common.job_cpus(None) == usable
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "1")
    assert common.job_cpus(None) == 1                   # SLURM's allocation


def test_concurrent_jobs_claim_different_gpus(tmp_path):
    """Three processes, two GPUs: the first two get one each, the third none (it then shares)."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(SRC)!r})
        from pathlib import Path
        from segbench.engine.common import claim_free
        index, fh = claim_free(["uuid-a", "uuid-b"], Path(sys.argv[1]))
        print(index, flush=True)
        time.sleep(3)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    got = sorted(p.stdout.readline().strip() for p in procs)
    for p in procs:
        p.wait(timeout=30)
    assert got == ["0", "1", "None"]
    # the locks die with the processes: a new job finds the first GPU free again
    index, fh = common.claim_free(["uuid-a", "uuid-b"], tmp_path)
    assert index == 0
    fh.close()


def test_setup_torch_cpu_is_deterministic_and_profiling_is_not(monkeypatch):
    monkeypatch.setenv("SEGBENCH_DEVICE", "cpu")
    threads = torch.get_num_threads()
    try:
        assert common.setup_torch(1).type == "cpu"
        assert torch.are_deterministic_algorithms_enabled()
        common.setup_torch(1, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)


def test_pick_device_claims_one_of_several_gpus(monkeypatch, tmp_path):
    """The CUDA branch, with torch.cuda faked (no GPU here): two visible GPUs, the first
    claimed by another job -> this job gets the second; SEGBENCH_DEVICE overrides."""
    class Props:
        def __init__(self, i):
            self.uuid = f"GPU-{i}"

    selected = []
    monkeypatch.delenv("SEGBENCH_DEVICE", raising=False)
    monkeypatch.setenv("SEGBENCH_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props(i))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: selected.append(d))
    monkeypatch.setattr(common, "_GPU_CLAIM", None)
    other_index, other = common.claim_free(["GPU-0"], tmp_path)   # another job holds GPU 0
    try:
        assert other_index == 0
        assert common.pick_device() == torch.device("cuda", 1) and selected == [1]
        assert common._GPU_CLAIM is not None
    finally:
        other.close()
        common._GPU_CLAIM.close()
        monkeypatch.setattr(common, "_GPU_CLAIM", None)
    monkeypatch.setenv("SEGBENCH_DEVICE", "cpu")
    assert common.pick_device() == torch.device("cpu")
