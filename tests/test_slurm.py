"""Execution profiles: how they render, and the SLURM profile end to end on a real one-node
SLURM cluster (scripts/test_slurm.sh; root and apt-get needed, else skipped with the reason)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "workflow" / "profiles"


def render(profile: str, monkeypatch, **env) -> dict:
    """The profile's options as Snakemake reads them (after YTE), with ``env`` set."""
    from snakemake.profiles import ProfileConfigFileParser

    for name in [n for n in os.environ if n.startswith("SEGBENCH_SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with open(PROFILES / profile / "config.yaml") as f:
        return dict(ProfileConfigFileParser().parse(f))


def per_rule(options: dict) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in options.get("set-resources", []):
        rule, assignment = item.split(":", 1)
        name, value = assignment.split("=", 1)
        out.setdefault(rule, {})[name] = value
    return out


def test_default_profile_limits_gpu_jobs_to_the_visible_gpus(monkeypatch):
    opts = render("default", monkeypatch, CUDA_VISIBLE_DEVICES="0,1")
    assert opts["resources"] == ["gpu=2"]
    assert opts["rerun-incomplete"] == "True" and opts["retries"] == "1"
    # no GPU: the limit is lifted, CPU jobs that declare gpu=1 still run side by side
    assert render("default", monkeypatch, CUDA_VISIBLE_DEVICES="")["resources"] == ["gpu=10000"]


def test_slurm_profile_defaults(monkeypatch):
    opts = render("slurm", monkeypatch)
    assert opts["executor"] == "slurm"
    rules = per_rule(opts)
    assert set(rules) == {"train", "evaluate", "profile"}
    # train: the rule's own gpu (train.devices) on one node; evaluate and profile: SEGBENCH_SLURM_GPUS
    assert "gpu" not in rules["train"] and rules["train"]["nodes"] == "1" and rules["train"]["cpus_per_gpu"] == "8"
    assert rules["evaluate"]["gpu"] == "1" and rules["profile"]["gpu"] == "1"
    assert rules["train"]["mem_mb"] == "32000 * attempt"
    assert "slurm_partition" not in rules["train"] and "gpu_model" not in rules["train"]
    assert not any(d.startswith(("slurm_partition", "slurm_account")) for d in opts["default-resources"])


def test_slurm_profile_takes_the_site_from_the_environment(monkeypatch):
    opts = render("slurm", monkeypatch, SEGBENCH_SLURM_ACCOUNT="proj42", SEGBENCH_SLURM_PARTITION="cpu",
                  SEGBENCH_SLURM_GPU_PARTITION="gpu", SEGBENCH_SLURM_GPU_MODEL="a100",
                  SEGBENCH_SLURM_CPUS_PER_GPU="16",
                  SEGBENCH_SLURM_SET="train:runtime=2880 report:mem_mb=8000 train:qos=long")
    assert {"slurm_partition=cpu", "slurm_account=proj42"} <= set(opts["default-resources"])
    rules = per_rule(opts)
    assert rules["train"] == {"nodes": "1", "mem_mb": "32000 * attempt", "runtime": "2880", "slurm_partition": "gpu",
                              "cpus_per_gpu": "16", "gpu_model": "a100", "qos": "long",
                              "slurm_extra": "'--signal=TERM@300'"}
    assert rules["evaluate"]["gpu_model"] == "a100" and rules["report"] == {"mem_mb": "8000"}


def test_slurm_profile_asks_for_a_sigterm_before_the_time_limit_of_train_jobs(monkeypatch):
    """sbatch --signal=TERM@300 for train jobs only, without B: (every process of the job's steps
    gets it, the trainer too, not only the batch shell); as the plugin passes it to sbatch."""
    from snakemake.resources import Resource
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    rules = per_rule(render("slurm", monkeypatch))
    assert rules["train"]["slurm_extra"] == "'--signal=TERM@300'"
    assert "slurm_extra" not in rules["evaluate"] and "slurm_extra" not in rules["profile"]
    # Snakemake evaluates the value as a Python expression (the quotes make it a string), and
    # the plugin appends it to the sbatch call after checking it holds no option it manages
    value = Resource.cli_evaluator("slurm_extra", rules["train"]["slurm_extra"], wildcards={}, input=[],
                                   attempt=1, async_run=None)
    assert value == "--signal=TERM@300"
    validate_slurm_extra(type("Job", (), {"resources": type("R", (), {"slurm_extra": value})()})())
    assert per_rule(render("slurm", monkeypatch, SEGBENCH_SLURM_WARN_SECONDS="900"))["train"]["slurm_extra"] == \
        "'--signal=TERM@900'"
    assert "slurm_extra" not in per_rule(render("slurm", monkeypatch, SEGBENCH_SLURM_WARN_SECONDS="0"))["train"]
    # the time limit is the train rule's own (from the cost estimate, at least 2 hours: the warning
    # falls inside it) unless SEGBENCH_SLURM_SET gives one; evaluate and profile keep the profile's
    from segbench.cost import MIN_TRAIN_MINUTES

    assert "runtime" not in rules["train"] and MIN_TRAIN_MINUTES * 60 > 300
    assert rules["evaluate"]["runtime"] == "120" and rules["profile"]["runtime"] == "30"


def test_slurm_profile_without_gpus(monkeypatch):
    rules = per_rule(render("slurm", monkeypatch, SEGBENCH_SLURM_GPUS="0", SEGBENCH_SLURM_GPU_MODEL="a100"))
    assert rules["train"]["gpu"] == "0"
    assert "gpu_model" not in rules["train"] and "cpus_per_gpu" not in rules["train"]


def test_slurm_profile_rejects_a_malformed_override(monkeypatch):
    with pytest.raises(Exception, match="RULE:RESOURCE=VALUE"):
        render("slurm", monkeypatch, SEGBENCH_SLURM_SET="train-runtime-5")


@pytest.mark.slow
def test_slurm_profile_on_a_one_node_cluster():
    """scripts/test_slurm.sh: every job through sbatch, outputs equal to a local run."""
    if sys.platform != "linux":
        pytest.skip("the SLURM test needs Linux")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test needs root: it installs slurm-wlm and munge with apt-get and starts "
                    "munged, slurmctld and slurmd (run `sudo scripts/test_slurm.sh` to try it)")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "test_slurm.sh")], capture_output=True, text=True,
                          env=env, timeout=1200)
    out = proc.stdout + proc.stderr
    print(out[-4000:])
    if proc.returncode == 77:
        reason = re.search(r"SKIPPED: (.*)", out)
        pytest.skip(reason.group(1) if reason else "scripts/test_slurm.sh skipped itself")
    assert proc.returncode == 0, f"scripts/test_slurm.sh failed ({proc.returncode}):\n{out[-8000:]}"
    assert "all checks passed" in out


def test_a_run_on_two_devices_asks_slurm_for_two_gpus_on_one_node(tmp_path, monkeypatch):
    """train.devices: 2 -> the train job's gpu resource is 2 (the Snakefile, as `snakemake -n`
    prints it), the SLURM profile adds nodes=1 and leaves gpu to the rule, and the plugin turns
    that into `--gpus=2` (its own set_gres_string, as it builds the sbatch call)."""
    from types import SimpleNamespace

    import yaml
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    config = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
    config["train"] = {**config.get("train", {}), "devices": 2, "batch_size": 2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--snakefile", str(ROOT / "Snakefile"),
                          "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    jobs = re.findall(r"rule (\w+):.*?resources: ([^\n]*)", dry.stdout, re.S)
    train = [dict(kv.split("=", 1) for kv in res.split(", ")) for rule, res in jobs if rule == "train"]
    assert train and all(r["gpu"] == "2" for r in train), jobs
    assert all(dict(kv.split("=", 1) for kv in res.split(", "))["gpu"] == "1" for rule, res in jobs
               if rule in ("evaluate", "profile"))

    rules = per_rule(render("slurm", monkeypatch))
    assert rules["train"]["nodes"] == "1" and "gpu" not in rules["train"]
    job = SimpleNamespace(resources={"gpu": int(train[0]["gpu"]), **rules["train"]})
    assert set_gres_string(job).strip() == "--gpus=2"
