"""The real Snakefile, end to end, on a tiny config in a temporary directory."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())


def snakemake(workdir, *args, check=True):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SEGBENCH_NO_PROGRESS="1")
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--cores", "2", *args],
        capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in Path(workdir, "results", "logs").rglob("*.log"))
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{logs}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pipeline")
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY))
    snakemake(wd)
    return wd


@pytest.mark.slow
def test_outputs_of_every_step(workdir):
    res = workdir / "results"
    manifest = (res / "data/synthetic/manifest.csv").read_text().splitlines()
    assert manifest[0].startswith("split,image,label") and len(manifest) == 1 + 8 + 4
    for model in ("unet", "segnet"):
        run = res / f"runs/synthetic/{model}/ce/s0"
        for name in ("model.pt", "history.csv", "run.json", "metrics.json", "confusion.npy", "samples.npz"):
            assert (run / name).stat().st_size > 0, name
        assert len((run / "history.csv").read_text().splitlines()) == 1 + 2
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= metrics["mIoU"] <= 1.0 and len(metrics["IoU"]) == 19
        assert (res / f"profiles/{model}-c19-64x128.json").exists()
    for study, n in (("unet_segnet", 2), ("unet_only", 1)):
        table = (res / f"studies/{study}/tables/summary.csv").read_text().splitlines()
        assert len(table) == 1 + n
        pngs = sorted((res / f"studies/{study}/figures").glob("*.png"))
        assert len(pngs) >= 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.slow
def test_mlflow_holds_one_run_per_study_and_run(workdir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    for study, models in (("unet_segnet", {"unet", "segnet"}), ("unet_only", {"unet"})):
        exp = client.get_experiment_by_name(f"segbench-{study}")
        assert exp is not None, study
        runs = client.search_runs([exp.experiment_id], "tags.`segbench.run_key` LIKE 'synthetic/%'")
        assert {r.data.tags["segbench.run_key"].split("/")[1] for r in runs} == models
        assert len(runs) == len(models)
        for r in runs:
            history = client.get_metric_history(r.info.run_id, "val_mIoU")
            assert [m.step for m in history] == [1, 2]
            assert "final_mIoU" in r.data.metrics


@pytest.mark.slow
def test_second_run_has_nothing_to_do(workdir):
    proc = snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_changing_one_model_reruns_only_its_jobs(workdir, tmp_path):
    wd = tmp_path / "copy"
    shutil.copytree(workdir, wd, symlinks=True)
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["models"]["unet"]["params"]["width"] = 6
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(wd, "-n", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    train_lines = [line for line in out.splitlines() if line.strip().startswith("train ")]
    assert train_lines and train_lines[0].split()[1] == "1", out
    proc = snakemake(wd, "-n", "-p")
    assert "runs/synthetic/unet/ce/s0" in proc.stdout
    assert "runs/synthetic/segnet/ce/s0 " not in proc.stdout and "--out results/runs/synthetic/segnet" not in proc.stdout


@pytest.mark.slow
def test_invalid_config_stops_before_any_job(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["models"]["unet"]["params"]["widht"] = 3
    bad["studies"]["unet_only"]["losses"] = ["dice"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "models.unet.params" in err and "'widht'" in err
    assert not (tmp_path / "results").exists()
