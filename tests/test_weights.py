"""Registered ImageNet checkpoints: the weights folder, `fetch_weights` against a server on
127.0.0.1 (resume with HTTP Range, SHA-256 full and prefix checks, atomic placement), the
`segbench fetch-weights` command, the config keys and the workflow rules."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets_support import FileServer

from segbench.cli import main
from segbench.config import ConfigError, load_schema, validate_config
from segbench.weights import DEFAULT_DIR, ENV, REGISTRY, WeightsError, fetch_weights, weights_dir

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = os.urandom(200_000)
SHA = hashlib.sha256(DATA).hexdigest()
VAN_B1 = REGISTRY["van:b1"].file


@pytest.fixture
def server():
    s = FileServer().start()
    s.files["/w/file"] = DATA
    yield s
    s.stop()


def test_weights_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    assert weights_dir() == Path(os.path.expanduser(DEFAULT_DIR)) and "~" not in str(weights_dir())
    monkeypatch.setenv(ENV, str(tmp_path))
    assert weights_dir() == tmp_path


def test_published_checksums():
    """The registry against its sources: torchvision's file-name prefixes, the Hugging Face LFS
    pointers of the VAN files (VAN-Classification's README; segbench.weights records the commits)."""
    got = {n: (w.file, w.sha256, w.size) for n, w in REGISTRY.items()}
    assert got == {
        "torchvision:resnet50": ("resnet50-0676ba61.pth", "0676ba61", None),
        "torchvision:resnet101": ("resnet101-63fe2227.pth", "63fe2227", None),
        "van:b0": ("van_tiny_754.pth.tar", "058bda07d27a89f27bbec8f3e47e6bda5de4f51dc59d0fb1f3cb835acb9130d8",
                   49627991),
        "van:b1": ("van_small_811.pth.tar", "7515c3da81dfd7f00413a8fa1e1d93dc7ecd13340a29fba0c02aed0deea9660b",
                   166671913),
        "van:b2": ("van_base_828.pth.tar", "3fbae1db35c4f1f96c4d66f1c8b13cac9194043171ff8a7e87fd21eb43a93725",
                   319560855),
    }
    assert REGISTRY["van:b1"].url == ("https://huggingface.co/Visual-Attention-Network/VAN-Small-original/resolve/"
                                      "main/van_small_811.pth.tar")
    assert REGISTRY["torchvision:resnet101"].url == "https://download.pytorch.org/models/resnet101-63fe2227.pth"


# ------------------------------------------------------------------ fetch_weights
def test_fetch_verifies_then_moves_into_place(server, tmp_path):
    dest = fetch_weights("van:b1", tmp_path, url=server.url("/w/file"), sha256=SHA, progress=False)
    assert dest == tmp_path / VAN_B1 and dest.read_bytes() == DATA
    assert not (tmp_path / f"{VAN_B1}.part").exists()
    # an existing file is checked, not fetched again
    assert fetch_weights("van:b1", tmp_path, url=server.url("/w/file"), sha256=SHA, progress=False) == dest
    assert len(server.requests_for("/w/file")) == 1


def test_cut_download_resumes_within_and_across_calls(server, tmp_path):
    server.cuts["/w/file"] = [60_000, 40_000]
    fetch_weights("van:b1", tmp_path, url=server.url("/w/file"), sha256=SHA, progress=False, backoff=0)
    assert (tmp_path / VAN_B1).read_bytes() == DATA
    assert [r["range"] for r in server.requests_for("/w/file")] == [None, "bytes=60000-", "bytes=100000-"]

    other = tmp_path / "again"
    server.cuts["/w/file"] = [70_000]
    with pytest.raises(WeightsError, match="interrupted after .* run the same command again to resume"):
        fetch_weights("van:b1", other, url=server.url("/w/file"), sha256=SHA, progress=False, retries=0)
    assert (other / f"{VAN_B1}.part").stat().st_size == 70_000 and not (other / VAN_B1).exists()
    fetch_weights("van:b1", other, url=server.url("/w/file"), sha256=SHA, progress=False, retries=0)
    assert (other / VAN_B1).read_bytes() == DATA and not (other / f"{VAN_B1}.part").exists()
    assert server.requests_for("/w/file")[-1]["range"] == "bytes=70000-"


def test_wrong_hash_is_refused_and_nothing_is_left(server, tmp_path):
    with pytest.raises(WeightsError) as e:
        fetch_weights("van:b1", tmp_path, url=server.url("/w/file"), progress=False)  # the published hash
    msg = str(e.value)
    assert f"expected SHA-256 {REGISTRY['van:b1'].sha256}, got {SHA}" in msg and "published size 166671913" in msg
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part


def test_torchvision_prefix_check(server, tmp_path):
    with pytest.raises(WeightsError, match=f"expected SHA-256 0676ba61 \\(prefix\\), got {SHA}"):
        fetch_weights("torchvision:resnet50", tmp_path, url=server.url("/w/file"), progress=False)
    assert list(tmp_path.iterdir()) == []
    # the prefix is what is checked: the file's own first 8 hex digits pass
    dest = fetch_weights("torchvision:resnet50", tmp_path, url=server.url("/w/file"), sha256=SHA[:8], progress=False)
    assert dest.name == "resnet50-0676ba61.pth" and dest.read_bytes() == DATA
    with pytest.raises(WeightsError, match="already there but its SHA-256 is"):
        fetch_weights("torchvision:resnet50", tmp_path, sha256="deadbeef", progress=False)
    assert dest.exists()  # a file already in place is the user's to delete


def test_fetch_errors(server, tmp_path):
    with pytest.raises(WeightsError, match="unknown pretrained weights 'van:b4' \\(did you mean"):
        fetch_weights("van:b4", tmp_path)
    with pytest.raises(WeightsError, match="404 .*weights.sources"):
        fetch_weights("van:b0", tmp_path, url=server.url("/w/missing"), sha256=SHA, progress=False)
    with pytest.raises(WeightsError, match="is not a SHA-256"):
        fetch_weights("van:b0", tmp_path, sha256="xyz", progress=False)


# ------------------------------------------------------------------ the command
def test_cli_fetch_weights(server, tmp_path, capsys):
    args = ["fetch-weights", "van:b2", "--dir", str(tmp_path), "--url", server.url("/w/file"), "--quiet"]
    assert main([*args, "--sha256", "0" * 64]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segbench fetch-weights: error: checksum mismatch for van_base_828.pth.tar")
    assert main([*args, "--sha256", SHA]) == 0
    assert (tmp_path / "van_base_828.pth.tar").read_bytes() == DATA
    assert "SHA-256 verified" in capsys.readouterr().out
    assert main(["fetch-weights", "resnet50", "--dir", str(tmp_path)]) == 2
    assert "did you mean 'torchvision:resnet50'" in capsys.readouterr().err


def test_cli_fetch_weights_imports_no_torch(server, tmp_path):
    code = ("import sys; from segbench.cli import main; "
            f"rc = main(['fetch-weights', 'van:b0', '--dir', {str(tmp_path)!r}, '--url', {server.url('/w/file')!r}, "
            f"'--sha256', {SHA!r}, '--quiet']); assert rc == 0, rc; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))


# ------------------------------------------------------------------ config
def _config(params: dict, arch: str = "van_fpn_frm", weights: dict | None = None) -> dict:
    cfg = {"datasets": {"d": {"source": "synthetic", "generate": {"train": 4, "val": 2, "height": 64, "width": 128}}},
           "models": {"m": {"arch": arch, "params": params}},
           "losses": {"ce": {"type": "ce"}},
           "studies": {"s": {"datasets": ["d"], "models": ["m"], "losses": ["ce"]}}}
    if weights is not None:
        cfg["weights"] = weights
    return cfg


def test_config_weights_defaults_and_sources(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    cfg = validate_config(_config({"pretrained": "van:b1"}))
    assert cfg["weights"] == {"dir": "/home/someone/.cache/segbench/weights", "sources": {}}
    cfg = validate_config(_config({"variant": "b0", "pretrained": "van:b0"}, weights={
        "dir": "~/w", "sources": {"van:b0": {"url": "http://127.0.0.1:9/x", "sha256": SHA}}}))
    assert cfg["weights"]["dir"] == "/home/someone/w"
    validate_config(_config({"depth": 50, "pretrained": "torchvision:resnet50"}, arch="deeplabv3_pac"))
    validate_config(_config({"width": 8, "pretrained": "./weights/mine.pth"}))  # a path: checked when trained


@pytest.mark.parametrize("params, arch, expected", [
    ({"pretrained": "van:b3"}, "van_fpn_frm",
     "config key 'models.m.params.pretrained': 'van:b3' is not a registered name (did you mean 'van:b"),
    ({"pretrained": "resnet101"}, "deeplabv3",
     "'resnet101' is not a registered name (did you mean 'torchvision:resnet101'?)"),
    ({"pretrained": "torchvision:resnet101"}, "van_fpn_ppm",
     "config key 'models.m.params.pretrained': 'torchvision:resnet101' holds a ResNet-101 at width 64 "
     "(torchvision_resnet layout), but the model's backbone is VAN"),
    ({"depth": 50, "pretrained": "torchvision:resnet101"}, "deeplabv3",
     "'torchvision:resnet101' holds a ResNet-101 at width 64, but the model's backbone is a ResNet-50 at width 64: "
     "set depth: 101 and width: 64 (or leave them out), or name 'torchvision:resnet50'"),
    ({"width": 16, "pretrained": "van:b1"}, "van_fpn_dappm", "backbone is a VAN-b1 at width 16"),
    ({"pretrained": "van:b1"}, "unet", "config key 'models.m.params': unknown key 'pretrained'"),
])
def test_config_pretrained_errors(params, arch, expected):
    with pytest.raises(ConfigError) as e:
        validate_config(_config(params, arch=arch))
    assert expected in str(e.value)


def test_config_source_errors():
    with pytest.raises(ConfigError) as e:
        validate_config(_config({}, weights={"sources": {"van:b9": {"url": "http://x/y"}},
                                            "dir": "/w"}))
    assert "config key 'weights.sources': 'van:b9' is not a registered checkpoint" in str(e.value)
    with pytest.raises(ConfigError, match="weights.sources.van:b1.sha256"):
        validate_config(_config({}, weights={"sources": {"van:b1": {"sha256": "nothex"}}}))


def test_schema_lists_the_registered_names():
    text = load_schema()["properties"]["weights"]["description"]
    assert all(name in text for name in REGISTRY)


# ------------------------------------------------------------------ workflow
def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SEGBENCH_NO_PROGRESS="1")
    env.pop(ENV, None)
    return subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), "--cores", "1", *args], capture_output=True, text=True, env=env, timeout=300)


def test_workflow_fetches_once_before_training(server, tmp_path):
    """The fetch_weights rule downloads the registered file from the config's source override
    into weights.dir; the training job of a pretrained model waits for it; a user path is used as is."""
    folder = tmp_path / "weights"
    cfg = _config({"variant": "b0", "pretrained": "van:b0"}, weights={
        "dir": str(folder), "sources": {"van:b0": {"url": server.url("/w/file"), "sha256": SHA}}})
    cfg["models"]["own"] = {"arch": "van_fpn_ppm", "params": {"width": 4, "pretrained": str(tmp_path / "mine.pth")}}
    cfg["studies"]["s"]["models"].append("own")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    target = str(folder / "van_tiny_754.pth.tar")

    proc = _snakemake(tmp_path, "-n", "-p", "--forceall", "results/runs/d/m/ce/s0/run.json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "rule fetch_weights:" in out and f"output: {target}" in out
    assert f"python -m segbench fetch-weights van:b0 --dir {folder} --url {server.url('/w/file')} --sha256 {SHA}" in out
    train = out[out.index("rule train:"):]
    assert f"input: results/data/d/manifest.csv, results/data/d/meta.json, {target}" in train.splitlines()[1]

    proc = _snakemake(tmp_path, "-n", "results/runs/d/own/ce/s0/run.json")  # the user's file is missing
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "config key 'models.own.params.pretrained': the checkpoint" in said and "mine.pth' does not exist" in said

    proc = _snakemake(tmp_path, target)  # the real rule: downloads and checks
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert Path(target).read_bytes() == DATA
    log = (tmp_path / "results/logs/weights/van_tiny_754.pth.tar.log").read_text()
    assert "SHA-256 verified" in log


@pytest.mark.slow
def test_workflow_trains_from_fetched_weights(tmp_path):
    """End to end (about 25 s): fetch_weights downloads a VAN-b0 checkpoint in the publisher's
    layout from 127.0.0.1, the training job finds it through SEGBENCH_WEIGHTS and records it in
    run.json, and evaluation rebuilds the model without it."""
    import torch
    from test_pretrained import van_classification, van_tar

    buf = tmp_path / "ckpt"
    torch.save(van_tar(van_classification("b0")), buf)
    data = buf.read_bytes()
    folder = tmp_path / "weights"
    server = FileServer().start()
    server.files["/van_tiny_754.pth.tar"] = data
    server.cuts["/van_tiny_754.pth.tar"] = [len(data) // 3]  # the job resumes with a Range request
    try:
        cfg = _config({"variant": "b0", "decoder_dim": 16, "pretrained": "van:b0"}, weights={
            "dir": str(folder), "sources": {"van:b0": {"url": server.url("/van_tiny_754.pth.tar"),
                                                       "sha256": hashlib.sha256(data).hexdigest()}}})
        cfg.update(train={"epochs": 1, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1},
                   mlflow={"enabled": False})
        (tmp_path / "work").mkdir()
        (tmp_path / "work/config.yaml").write_text(yaml.safe_dump(cfg))
        proc = _snakemake(tmp_path / "work", "results/runs/d/m/ce/s0/metrics.json")
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["range"] for r in server.requests_for("/van_tiny_754.pth.tar")] == [None, f"bytes={len(data) // 3}-"]
    record = json.loads((tmp_path / "work/results/runs/d/m/ce/s0/run.json").read_text())
    path = folder / "van_tiny_754.pth.tar"
    assert record["pretrained"] == {"source": "van:b0", "file": str(path), "sha256": hashlib.sha256(data).hexdigest(),
                                    "tensors": len(van_classification("b0")) - 2}
    log = (tmp_path / "work/results/logs/train/d/m/ce/s0.log").read_text()
    assert f"pretrained backbone: van:b0 from {path}" in log
