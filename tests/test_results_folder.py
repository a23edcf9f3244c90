"""The config's `results:` folder: every output, log, benchmark, the MLflow store and its
artifacts, and the reports of a run go under it, and nothing under the default results/.
A dry run lists every job's files; a tiny real run checks the files on disk; `segbench sync`
and `segbench serve --study` find the folder through the config."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys

import pytest
import yaml
from pipeline_support import BIN, snakemake

from segbench.config import ConfigError, validate_config

ELSEWHERE = "out/elsewhere"

CONFIG = {
    "results": ELSEWHERE + "/",  # normalised: the trailing slash is dropped
    "datasets": {"syn": {"source": "synthetic", "generate": {"seed": 0, "train": 4, "val": 2, "height": 64,
                                                             "width": 128}}},
    "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
    "losses": {"ce": {"type": "ce"}},
    "train": {"epochs": 1, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1},
    "eval": {"batch_size": 2, "samples": 1},
    "profile": {"warmup": 0, "iterations": 1, "threads": 1},
    "studies": {"s": {"datasets": ["syn"], "models": ["unet"], "losses": ["ce"]}},
}

# the lines of a dry run's job listing that name files
_FILE_LINES = re.compile(r"^\s+(input|output|log|benchmark): (.*)$")


def _listed_files(text: str) -> list[str]:
    files = []
    for line in text.splitlines():
        m = _FILE_LINES.match(line)
        if m:
            files += [f.strip() for f in m.group(2).split(",") if f.strip()]
    return files


def test_results_key_is_validated_and_normalised(minimal_config):
    assert validate_config(minimal_config)["results"] == "results"  # the default
    minimal_config["results"] = "./runs-here/"
    assert validate_config(minimal_config)["results"] == "runs-here"
    for bad in (".", "a {b}", "with space", "glob*"):
        minimal_config["results"] = bad
        with pytest.raises(ConfigError, match="config key 'results'"):
            validate_config(minimal_config)


def test_dry_run_lists_only_the_configured_folder(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    proc = snakemake(tmp_path, "-n", "-p")
    out = proc.stdout + proc.stderr
    files = _listed_files(out)
    assert len(files) > 20, out[-3000:]
    outside = [f for f in files if not f.startswith(ELSEWHERE + "/")]
    assert not outside, f"files outside {ELSEWHERE}/: {outside}"
    for rule in ("generate_synthetic", "prepare", "train", "evaluate", "profile", "mlflow_init", "track_run",
                 "report_s", "track_study"):
        assert re.search(rf"^(local)?rule {rule}:", out, re.M), rule
    # the MLflow store and its artifacts too (commands printed by -p)
    assert f"--tracking-uri sqlite:///{ELSEWHERE}/mlflow.db" in out
    assert f"--artifact-root {ELSEWHERE}/mlartifacts" in out
    assert "results/" not in out.replace(ELSEWHERE, "")


@pytest.mark.slow
def test_tiny_run_writes_only_there(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    snakemake(tmp_path, cores="2")
    res = tmp_path / ELSEWHERE
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file() and p.relative_to(tmp_path).parts[0] not in (".snakemake", "config.yaml"))
    outside = [p for p in written if not p.startswith(ELSEWHERE + "/")]
    assert not outside, outside
    assert not (tmp_path / "results").exists()
    for rel in ("data/syn/manifest.csv", "runs/syn/unet/ce/s0/model.pt", "runs/syn/unet/ce/s0/metrics.json",
                "profiles/unet-c19-64x128.json", "studies/s/tables/summary.csv", "logs/train/syn/unet/ce/s0.log",
                "benchmarks/train/syn/unet/ce/s0.tsv", "mlflow/init.json",
                "mlflow/runs/syn/unet/ce/s0.json", "mlflow/studies/s.json", "mlflow.db"):
        assert (res / rel).is_file(), rel
    assert list((res / "mlartifacts").rglob("MLmodel")), "the run's logged model beside the store"
    with sqlite3.connect(res / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 2  # the run and study:s

    # the CLI finds the folder through the config in the working directory
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    seg = [sys.executable, "-m", "segbench"]
    proc = subprocess.run([*seg, "sync"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "synced 1 runs and 1 studies" in proc.stdout and f"{ELSEWHERE}/mlflow.db" in proc.stdout, proc.stdout
    proc = subprocess.run([*seg, "serve", "--study", "nosuch"], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode != 0 and f"{ELSEWHERE}/studies/nosuch/tables/summary.csv" in proc.stderr, proc.stderr
    assert "studies with results: s" in proc.stderr
    assert not (tmp_path / "results").exists()

    # mlflow.log_models: false leaves the model out of the run's artifacts (a fresh store)
    from segbench.tracking import log_run

    store = tmp_path / "other"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    run_dir = res / "runs/syn/unet/ce/s0"
    log_run(run_dir, studies=["s"], tracking_uri=uri, artifact_root=store / "art", log_model=False)
    logged = sorted(p.name for p in (store / "art").rglob("*") if p.is_file())
    assert "metrics.json" in logged and "model.pt" not in logged and "MLmodel" not in logged, logged


def test_log_models_switch_reaches_the_track_step(tmp_path):
    cfg = {**CONFIG, "mlflow": {"log_models": False}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", "-p").stdout
    track = [line for line in out.splitlines() if "python -m segbench track " in line]
    assert track and all("--no-model" in line for line in track), track
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))  # the default: models logged
    track = [line for line in snakemake(tmp_path, "-n", "-p").stdout.splitlines() if "python -m segbench track " in line]
    assert track and not any("--no-model" in line for line in track), track
