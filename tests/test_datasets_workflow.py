"""The data rules of the real Snakefile (download -> verify -> extract -> prepare) on a
miniature ADE20K served on 127.0.0.1; `root:` means no download; workflow/configs/paper.yaml."""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets_support import FileServer, jpg, md5, png, zip_bytes

from segbench.config import validate_config
from segbench.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "ADEChallengeData2016.zip"
PAPER = ROOT / "workflow" / "configs" / "paper.yaml"


def _ade_archive() -> bytes:
    files = {}
    for i, (folder, stem) in enumerate([("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")]):
        files[f"ADEChallengeData2016/images/{folder}/{stem}.jpg"] = jpg(4, 6, seed=i)
        files[f"ADEChallengeData2016/annotations/{folder}/{stem}.png"] = png(np.arange(24).reshape(4, 6) * (i + 1))
    return zip_bytes(files)


def _config(datasets: dict) -> dict:
    return {"datasets": datasets,
            "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
            "losses": {"ce": {"type": "ce"}},
            "studies": {"s": {"datasets": list(datasets), "models": ["unet"], "losses": ["ce"]}}}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SEGBENCH_NO_PROGRESS="1")
    return subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), "--cores", "1", *args], capture_output=True, text=True, env=env, timeout=300)


def test_data_rules_end_to_end(tmp_path):
    archive = _ade_archive()
    server = FileServer().start()
    server.files["/ade/" + NAME] = archive
    server.cuts["/ade/" + NAME] = [1500]  # the download job resumes with a Range request
    try:
        cfg = _config({"ade": {"source": "ade20k", "allow_partial": True,
                               "download": {"urls": {NAME: server.url("/ade/" + NAME)}, "md5": {NAME: md5(archive)}}}})
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        proc = snakemake(tmp_path, "results/data/ade/manifest.csv")
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rule in ("download_archive", "verify_archive", "extract_archives", "prepare_dataset"):
        assert f"rule {rule}:" in proc.stderr or f"localrule {rule}:" in proc.stderr, rule
    assert [r["range"] for r in server.requests] == [None, "bytes=1500-"]
    res = tmp_path / "results"
    assert (res / f"downloads/ade20k/{NAME}.verified").read_text().split()[0] == md5(archive)
    assert (res / "raw/ade20k/ADEChallengeData2016/images/training/ADE_train_00000001.jpg").is_file()
    with open(res / "data/ade/manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["train", "val"]
    assert "going on with a partial copy" in (res / "logs/prepare/ade.log").read_text()
    for log in ("download/ade20k/" + NAME, "verify/ade20k/" + NAME, "extract/ade20k"):
        assert (res / "logs" / f"{log}.log").is_file()


def test_root_means_nothing_is_downloaded(tmp_path):
    (tmp_path / "copy").mkdir()
    creds = tmp_path / "login.json"
    cfg = _config({
        "ade": {"source": "ade20k", "root": str(tmp_path / "copy")},
        "voc": {"source": "voc", "trainaug": False},
        "cs": {"source": "cityscapes", "labels": "category", "download": {"credentials": str(creds)}},
    })
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "-p", "results/data/ade/manifest.csv", "results/data/voc/manifest.csv",
                     "results/data/cs/manifest.csv")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert "ade20k" not in out.replace("prepare ade20k", ""), "a dataset with root: is read in place"
    assert f"--root {tmp_path / 'copy'}" in out
    assert "downloads/voc/VOCtrainval_11-May-2012.tar" in out and "benchmark.tgz" not in out  # no trainaug: no SBD
    assert "downloads/cityscapes/gtFine_trainvaltest.zip" in out and "leftImg8bit_trainvaltest.zip" in out
    assert f"--credentials {creds}" in out and "--no-input" in out  # the file name, never the login
    assert out.count("rule extract_archives") == 2


def test_paper_datasets_validate():
    paper = yaml.safe_load(PAPER.read_text())
    cfg = {"datasets": paper["datasets"], "models": {"unet": {"arch": "unet"}}, "losses": {"ce": {"type": "ce"}},
           "train": paper["train"], "eval": paper["eval"], "profile": paper["profile"],
           "studies": {"all": {"datasets": list(paper["datasets"]), "models": ["unet"], "losses": ["ce"]}}}
    plan = Plan(validate_config(cfg))
    want = {"cityscapes": (19, [1024, 1024], 16), "cityscapes8": (7, [512, 512], 8), "ade20k": (150, [512, 512], 8),
            "voc_aug": (21, [512, 512], 16), "bdd100k": (19, [704, 704], 32)}
    for name, (classes, crop, batch) in want.items():
        assert plan.num_classes(name) == classes, name
        spec = plan.train_spec(name, "unet")
        assert (spec["crop"], spec["batch_size"]) == (crop, batch), name
        assert not paper["datasets"][name].get("root"), "paper.yaml downloads every dataset"
    assert paper["datasets"]["voc_aug"]["trainaug"] is True
    assert plan.eval_size("bdd100k") == (736, 1280) and plan.eval_size("cityscapes") == (1024, 2048)

    # given with --configfile, the file is the whole config: nothing of config.yaml leaks in
    for study, st in paper["studies"].items():
        assert set(st["datasets"]) <= set(paper["datasets"]), study


def test_configfile_replaces_config_yaml(tmp_path):
    """`snakemake --configfile paper.yaml` must not merge config.yaml's scaled-down widths in."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "snakemake"), "-n", "-p", "--configfile", str(PAPER),
                           "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"),
                           "results/paper/runs/voc_aug/deeplabv3/ce/s0/run.json"],  # paper.yaml's results: folder
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [line for line in proc.stdout.splitlines() if "segbench train" in line]
    assert train, proc.stdout[-3000:]
    assert "width" not in train[0].split('"model"')[1].split("}")[0], train[0]  # deeplabv3 at full size


def test_paper_matrix_when_models_and_losses_exist():
    from segbench.losses import available as losses
    from segbench.models import available as models

    paper = yaml.safe_load(PAPER.read_text())
    missing = sorted({m["arch"] for m in paper["models"].values()} - set(models())) + \
        sorted({lo["type"] for lo in paper["losses"].values()} - set(losses()))
    if missing:
        pytest.skip(f"paper.yaml names architectures/losses not registered yet: {', '.join(missing)}")
    plan = Plan(validate_config(paper))
    # main matrices 4 + 2 + 4 + 4 + 3 + 1 = 18 runs (unet_segnet: two models, each without and
    # with augmentation); ablations: Table 1's 14 BAL settings and Table 2's 7 PAC variants; the
    # cross study: 15 (model, loss) pairs on cityscapes, of which the frm study already has 3
    main = {r for s in ("unet_segnet", "unet_segnet_classic", "gradnet", "pac_bal", "frm", "frm_bdd100k")
            for r in plan.studies[s] if plan.groups[(s, r)] != ["bal_grid"] and plan.groups[(s, r)] != ["pac_variants"]}
    assert len(main) == 18
    assert sum(1 for r in plan.studies["pac_bal"] if "bal_grid" in plan.groups[("pac_bal", r)]) == 14
    assert sum(1 for r in plan.studies["pac_bal"] if "pac_variants" in plan.groups[("pac_bal", r)]) == 7
    assert len(plan.studies["cross_study"]) == 15
    assert len(plan.runs) == 18 + 14 + 7 + 15 - 3
    assert {r.dataset for r in plan.runs} == set(paper["datasets"])
