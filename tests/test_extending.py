"""A model, a loss and a dataset of one's own (docs/extending.md, examples/).

The end-to-end test runs examples/config.yaml as docs/extending.md prints it (to save time:
MLflow off and without the built-in U-Net the example compares with, which
tests/test_pipeline.py covers) through the real Snakefile, with the example package on PYTHONPATH and the
dataset folder its generator writes. The others check the start-up check's messages
through ``segbench check-config`` (a package of bad definitions written to a temporary
folder), the build-time check of a model's output, and the folder source's preparation.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline_support import ROOT, snakemake
from segbench.cli import main

EXAMPLES = ROOT / "examples"


def _env_with_examples() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{EXAMPLES}{os.pathsep}{path}" if path else str(EXAMPLES)}


# ------------------------------------------------------------------ the example, end to end
@pytest.mark.slow
def test_example_trains_through_the_pipeline_from_config_alone(tmp_path):
    cfg = yaml.safe_load((EXAMPLES / "config.yaml").read_text())
    env = dict(os.environ, **_env_with_examples())
    subprocess.run([sys.executable, "-m", "segbench_example.make_dataset", cfg["datasets"]["shapes"]["root"]],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    cfg["mlflow"] = {"enabled": False}
    assert cfg["studies"]["mine"]["models"] == ["tinynet", "unet"]
    cfg["studies"]["mine"]["models"] = ["tinynet"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, cores="2", env_extra=_env_with_examples(), timeout=600)

    res = tmp_path / cfg["results"]
    meta = json.loads((res / "data/shapes/meta.json").read_text())
    assert meta["class_names"] == ["background", "square", "disc"]
    assert meta["palette"] == [[70, 70, 70], [220, 20, 60], [0, 0, 142]]
    assert meta["splits"] == {"train": 8, "val": 4}

    run = res / "runs/shapes/tinynet/smooth_ce/s0"
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["model"]["arch"] == "segbench_example.models:TinyNet"
    assert record["config"]["loss"] == {"name": "smooth_ce", "type": "segbench_example.losses:smooth_ce",
                                        "params": {"smoothing": 0.1}}
    assert record["num_classes"] == 3 and record["class_names"] == ["background", "square", "disc"]
    # the checkpoint is the user's class: it loads into TinyNet(3, width=8) key for key (strict)
    import torch

    sys.path.insert(0, str(EXAMPLES))
    try:
        from segbench_example.models import TinyNet
    finally:
        sys.path.remove(str(EXAMPLES))
    net = TinyNet(3, width=8)
    net.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["IoU"]) == 3 and 0.0 <= metrics["mIoU"] <= 1.0
    with open(run / "history.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]

    with open(res / "studies/mine/tables/summary.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"tinynet"}
    assert int(float(rows["tinynet"]["params"])) == sum(p.numel() for p in net.parameters())
    assert (res / "profiles/tinynet-c3-64x96.json").is_file()
    assert (res / "studies/mine/figures/qualitative.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ start-up check's messages
BAD_PACKAGE = {
    "badpkg/__init__.py": "",
    "badpkg/models.py": '''
        import torch
        import torch.nn.functional as F
        from torch import nn

        WIDTH = 3

        class NoClasses(nn.Module):
            def __init__(self, width=4):
                super().__init__()

        class Quarter(nn.Module):
            """Logits at 1/4 of the input's size: not up-sampled."""
            def __init__(self, num_classes, width=4):
                super().__init__()
                self.conv = nn.Conv2d(3, num_classes, 4, stride=4)
            def forward(self, x):
                return self.conv(x)

        class AsDict(Quarter):
            def forward(self, x):
                return {"out": F.interpolate(self.conv(x), size=x.shape[-2:])}

        class Good(Quarter):
            def forward(self, x):
                return F.interpolate(self.conv(x), size=x.shape[-2:])
        ''',
    "badpkg/losses.py": '''
        import torch.nn.functional as F

        def plain(smoothing=0.0):
            return lambda logits, labels: F.cross_entropy(logits, labels, ignore_index=255)

        def returns_number():
            return 3
        ''',
    "badpkg/broken.py": "raise RuntimeError('the module is broken')\n",
}


@pytest.fixture()
def badpkg(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    for rel, text in BAD_PACKAGE.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(pkg))
    for name in [m for m in sys.modules if m == "badpkg" or m.startswith("badpkg.")]:
        monkeypatch.delitem(sys.modules, name)
    return pkg


def _config(minimal_config, arch="badpkg.models:Good", params=None, loss=None):
    cfg = minimal_config
    cfg["models"] = {"mine": {"arch": arch, "params": params if params is not None else {"width": 4}}}
    cfg["losses"] = {"myloss": loss or {"type": "ce"}}
    cfg["studies"]["unet_segnet"]["models"] = ["mine"]
    cfg["studies"]["unet_segnet"]["losses"] = ["myloss"]
    return cfg


def _check(tmp_path, cfg, capsys, *extra) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["check-config", str(path), *extra])
    return rc, capsys.readouterr().err


def test_good_import_paths_pass_the_check(badpkg, tmp_path, minimal_config, capsys):
    cfg = _config(minimal_config, loss={"type": "badpkg.losses:plain", "params": {"smoothing": 0.1}})
    rc, err = _check(tmp_path, cfg, capsys)
    assert rc == 0, err


@pytest.mark.parametrize("arch, expected", [
    ("nopkg_segbench_test.models:Net",
     "config key 'models.mine.arch': cannot import nopkg_segbench_test.models (ModuleNotFoundError: No module named "
     "'nopkg_segbench_test'); put the package on PYTHONPATH or install it"),
    ("badpkg.broken:Net",
     "config key 'models.mine.arch': importing badpkg.broken failed (RuntimeError: the module is broken); fix the "
     "module"),
    ("badpkg.models:Goood", "has no attribute 'Goood' (did you mean 'Good'?)"),
    ("badpkg.models:WIDTH", "config key 'models.mine.arch': badpkg.models:WIDTH is a int, not a class or function"),
    ("badpkg.models:NoClasses",
     "config key 'models.mine.arch': badpkg.models:NoClasses cannot be called as NoClasses(num_classes=<n>, width=4): "
     "got an unexpected keyword argument 'num_classes'; its signature is (width=4)"),
    ("badpkg.models.Good", "'badpkg.models.Good' is not allowed; allowed values: unet, "),
    ("badpkg.models.Good", "an import path has a colon before the name: 'badpkg.models:Good'"),
])
def test_a_bad_model_import_path_fails_the_check_naming_key_and_path(badpkg, tmp_path, minimal_config, capsys,
                                                                    arch, expected):
    rc, err = _check(tmp_path, _config(minimal_config, arch=arch), capsys)
    assert rc == 2
    assert expected in err, err
    assert err.startswith("segbench check-config: error:")


def test_a_malformed_path_is_told_about_import_paths(badpkg, tmp_path, minimal_config, capsys):
    rc, err = _check(tmp_path, _config(minimal_config, arch="badpkg.models.Good"), capsys)
    assert rc == 2 and "or a class or function of your own as an import path, package.module:Name" in err, err


def test_a_model_option_its_signature_lacks_fails_the_check(badpkg, tmp_path, minimal_config, capsys):
    rc, err = _check(tmp_path, _config(minimal_config, params={"depth": 3}), capsys)
    assert rc == 2
    assert ("config key 'models.mine.arch': badpkg.models:Good cannot be called as Good(num_classes=<n>, depth=3): "
            "got an unexpected keyword argument 'depth'") in err, err


def test_a_bad_loss_import_path_fails_the_check(badpkg, tmp_path, minimal_config, capsys):
    cfg = _config(minimal_config, loss={"type": "badpkg.losses:plain", "params": {"gamma": 2}})
    rc, err = _check(tmp_path, cfg, capsys)
    assert rc == 2
    assert ("config key 'losses.myloss.type': badpkg.losses:plain cannot be called as plain(gamma=2): got an "
            "unexpected keyword argument 'gamma'") in err, err
    cfg = _config(minimal_config, loss={"type": "badpkg.losses:plain", "smoothing": 0.1})
    rc, err = _check(tmp_path, cfg, capsys)
    assert rc == 2 and "config key 'losses.myloss': unknown key 'smoothing'" in err, err


def test_an_embedding_loss_needs_a_model_with_forward_train(badpkg, tmp_path, minimal_config, capsys):
    rc, err = _check(tmp_path, _config(minimal_config, loss={"type": "ce_contrastive"}), capsys)
    assert rc == 2
    assert "loss 'myloss' (ce_contrastive) needs pixel embeddings, but model 'mine' (badpkg.models:Good)" in err, err


@pytest.mark.parametrize("arch, expected", [
    ("badpkg.models:Quarter",
     "model badpkg.models:Quarter returned logits of shape [1, 19, 16, 16] for a [1, 3, 64, 64] input; expected "
     "[1, 19, 64, 64]"),
    ("badpkg.models:AsDict",
     "model badpkg.models:AsDict returned a dict for a [1, 3, 64, 64] input; forward must return one logits tensor"),
])
def test_a_model_with_the_wrong_output_fails_when_built(badpkg, tmp_path, minimal_config, capsys, arch, expected):
    from segbench.catalog import ImportPathError
    from segbench.models import build_model

    with pytest.raises(ImportPathError) as e:
        build_model(arch, 19, width=4)
    assert expected in str(e.value)
    # the cost estimate builds the model too (on the meta device) and reports the same
    minimal_config["datasets"]["synthetic"]["generate"].update(height=64, width=64)
    minimal_config["train"]["crop"] = [64, 64]
    rc, err = _check(tmp_path, _config(minimal_config, arch=arch), capsys, "--cost")
    assert rc == 2 and expected in err, err


def test_a_loss_function_is_wrapped_and_a_non_callable_refused(badpkg):
    import torch

    from segbench.catalog import ImportPathError
    from segbench.losses import build_loss

    loss = build_loss({"type": "badpkg.losses:plain", "params": {"smoothing": 0.0}})
    assert isinstance(loss, torch.nn.Module) and not loss.needs_embeddings
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0, 0] = 255
    want = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    assert torch.equal(loss(logits, labels), want)
    with pytest.raises(ImportPathError, match="returned a int; it must return the loss"):
        build_loss({"type": "badpkg.losses:returns_number"})


# ------------------------------------------------------------------ the folder source
def _folder(tmp_path) -> Path:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from segbench_example.make_dataset import make_dataset
    finally:
        sys.path.remove(str(EXAMPLES))
    return make_dataset(tmp_path / "shapes", train=2, val=1, height=32, width=64)


def _folder_config(minimal_config, root) -> dict:
    cfg = minimal_config
    cfg["datasets"] = {"mine": {"source": "folder", "root": str(root)}}
    cfg["studies"]["unet_segnet"]["datasets"] = ["mine"]
    return cfg


def test_a_folder_dataset_is_planned_from_its_folder(tmp_path, minimal_config, capsys):
    root = _folder(tmp_path)
    rc, err = _check(tmp_path, _folder_config(minimal_config, root), capsys, "--cost")
    assert rc == 0, err
    from segbench.config import validate_config
    from segbench.plan import Plan

    plan = Plan(validate_config(_folder_config(minimal_config, root)))
    assert plan.num_classes("mine") == 3
    assert (plan.split_images("mine", "train"), plan.split_images("mine", "val")) == (2, 1)
    assert plan.eval_size("mine") == (32, 64)


@pytest.mark.parametrize("damage, expected", [
    (lambda r: (r / "classes.csv").unlink(), "{root} has no class list: write {root}/classes.csv with a `name` column"),
    (lambda r: (r / "classes.csv").write_text("label,r,g,b\nsky,1,2,3\n"),
     "{root}/classes.csv: no `name` column (columns: label, r, g, b)"),
    (lambda r: (r / "classes.csv").write_text("name,r,g\nsky,1,2\n"),
     "{root}/classes.csv: give all three colour columns r,g,b or none"),
    (lambda r: (r / "classes.csv").write_text("name\nsky\nsky\n"), "{root}/classes.csv: class name 'sky' is given twice; class names must differ"),
    (lambda r: os.rename(r / "images" / "val", r / "images" / "valid"),
     "{root}/images/val is missing: the folder source needs images/{{train,val}}"),
])
def test_a_bad_folder_fails_the_check_naming_the_file(tmp_path, minimal_config, capsys, damage, expected):
    root = _folder(tmp_path)
    damage(root)
    rc, err = _check(tmp_path, _folder_config(minimal_config, root), capsys)
    assert rc == 2
    assert "config key 'datasets.mine.root': " + expected.format(root=root) in err, err


def test_a_folder_entry_needs_root(tmp_path, minimal_config, capsys):
    cfg = _folder_config(minimal_config, "x")
    del cfg["datasets"]["mine"]["root"]
    rc, err = _check(tmp_path, cfg, capsys)
    assert rc == 2 and "config key 'datasets.mine.root': the folder source needs `root`" in err, err


def test_preparing_a_folder_checks_every_label(tmp_path, capsys):
    root = _folder(tmp_path)
    label = root / "labels" / "train" / "001.png"
    ids = np.array(Image.open(label))
    ids[5, 5] = 7  # 3 classes: 7 is no train id
    Image.fromarray(ids).save(label)
    (root / "labels" / "train" / "000.png").unlink()
    rc = main(["prepare", "folder", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"segbench prepare: error: dataset folder {root} cannot be used"), err
    assert f"{label}: contains value 7 (valid: train ids 0..2 of the 3 classes of the class list, and 255" in err
    assert f"{root}/images/train/000.png: image without a label file (expected {root}/labels/train/000.png)" in err
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_a_folder_with_a_manifest_is_prepared_with_its_palette_defaulted(tmp_path, capsys):
    root = _folder(tmp_path)
    (root / "classes.csv").write_text("name\nbackground\nsquare\ndisc\n")
    rows = ["split,image,label"] + [f"{s},images/{s}/{n}.png,labels/{s}/{n}.png"
                                    for s, n in (("train", "000"), ("train", "001"), ("val", "000"))]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["prepare", "folder", "--root", str(root), "--out", str(out), "--name", "mine", "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"] == {"train": 2, "val": 1} and meta["num_classes"] == 3
    assert meta["palette"][:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]  # PASCAL VOC's colour map
    with open(out / "manifest.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert (out / first["image"]).resolve() == (root / "images/train/000.png").resolve()
    assert np.array_equal(np.array(Image.open(out / first["label"])), np.array(Image.open(root / "labels/train/000.png")))


def test_checking_a_folder_dataset_imports_nothing_heavy(tmp_path, minimal_config):
    """The config check reads a folder's class list and file names only (no torch, no numpy
    arrays): `check-config` stays fast for a config of built-in names and a folder dataset."""
    from test_lazy_imports import HEAVY, check

    root = _folder(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_folder_config(minimal_config, root)))
    check(["check-config", str(tmp_path / "config.yaml")], tmp_path, HEAVY)


def test_prepare_dispatches_the_folder_source(tmp_path):
    from segbench.data.prepare import prepare

    root = _folder(tmp_path)
    meta = prepare("folder", root, tmp_path / "out", dataset="mine", progress=False)
    assert meta["source"] == "folder" and meta["splits"] == {"train": 2, "val": 1}
    with pytest.raises(ValueError, match="the folder source takes no options"):
        prepare("folder", root, tmp_path / "out", labels="category")
