"""The command line: bad input fails with exit code 2 and a message naming the culprit."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def segbench(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SEGBENCH_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "segbench", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_check_config_lists_runs():
    proc = segbench("check-config", str(ROOT / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "synthetic/gradnet/dice/s0" in proc.stdout and "synthetic/van_fpn_frm/ce_contrastive/s0" in proc.stdout


def test_check_config_names_bad_key(tmp_path):
    import re

    cfg = re.sub(r"(?m)^  epochs: \d+", "  epochs: six", (ROOT / "config.yaml").read_text())
    (tmp_path / "c.yaml").write_text(cfg)
    proc = segbench("check-config", str(tmp_path / "c.yaml"))
    assert proc.returncode == 2
    assert "c.yaml" in proc.stderr and "config key 'train.epochs': expected integer, got 'six'" in proc.stderr


def test_prepare_reports_unknown_label_id(tmp_path):
    from segbench.data.synthetic import generate, label_path

    generate(tmp_path / "raw", splits={"train": 2, "val": 1}, height=64, width=128, progress=False)
    bad = label_path(tmp_path / "raw", "train", 1)
    arr = np.array(Image.open(bad))
    arr[5, 7] = 200
    Image.fromarray(arr).save(bad)
    proc = segbench("prepare", "cityscapes", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 2
    assert bad.name in proc.stderr and "200" in proc.stderr
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_commands_that_need_no_torch_do_not_import_it(tmp_path):
    code = ("import sys; from segbench.cli import main; rc = main(['check-config', %r]); "
            "print('torch' in sys.modules, 'mlflow' in sys.modules)" % str(ROOT / "config.yaml"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "False False", proc.stdout + proc.stderr


def test_user_errors_share_one_base_that_the_cli_shows_as_error():
    from segbench.config import ConfigError
    from segbench.data import DataError
    from segbench.engine.train import NonFiniteLoss
    from segbench.errors import UserError
    from segbench.models.pretrained import PretrainedError
    from segbench.tracking import TrackingError
    from segbench.weights import WeightsError

    for cls in (ConfigError, DataError, WeightsError, PretrainedError, TrackingError, NonFiniteLoss):
        assert issubclass(cls, UserError), cls
    assert issubclass(ConfigError, ValueError) and issubclass(TrackingError, RuntimeError)  # as before

    # a wrong combination of options is one too: message and exit status as argparse's
    proc = segbench("prepare", "ade20k", "--root", "x", "--out", "y", "--labels", "category")
    assert proc.returncode == 2
    assert proc.stderr.startswith("segbench prepare: error: --labels category is for cityscapes"), proc.stderr


def test_output_into_a_closed_pipe_stops_quietly():
    """`segbench models | true`: the reader is gone before segbench writes (it exits at once,
    segbench takes a second to start); segbench stops with the shell's SIGPIPE status (141)
    and no BrokenPipeError traceback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SEGBENCH_NO_PROGRESS="1")
    for step in ("models", f"check-config {ROOT / 'config.yaml'}"):
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m segbench {step} | true"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.stderr == "" and proc.returncode == 141, (step, proc.returncode, proc.stderr)
