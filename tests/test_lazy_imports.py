"""A ``segbench`` subcommand imports only the heavy modules it needs (issue 9: start-up and
import overhead of the pipeline's jobs).

Each case runs ``python -m segbench ARGS`` in a subprocess through a probe that, once the
command has finished, prints which top-level modules were imported; the case lists those
the command must not import (and, where it must, those it needs, which also shows that the
probe sees imports at all).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "mlflow", "matplotlib", "pandas", "albumentations", "cv2", "scipy", "sqlalchemy", "flask"}
NO_ML = HEAVY  # data and config steps: none of them

PROBE = r"""
import json, runpy, sys
sys.argv = ["segbench", *sys.argv[1:]]
rc = 0
try:
    runpy.run_module("segbench", run_name="__main__", alter_sys=True)
except SystemExit as e:
    rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
print("SEGBENCH-PROBE " + json.dumps({"rc": rc, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def probe(*args: str, cwd: Path) -> tuple[int, set[str], str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), NO_ALBUMENTATIONS_UPDATE="1", MPLBACKEND="Agg",
               SEGBENCH_NO_PROGRESS="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SEGBENCH-PROBE ")), None)
    assert line, f"segbench {' '.join(args)} did not finish:\n{out[-3000:]}"
    rec = json.loads(line.split(" ", 1)[1])
    return rec["rc"], set(rec["modules"]) & HEAVY, out


def check(args, cwd, forbidden, needed=(), rc=0):
    code, heavy, out = probe(*args, cwd=cwd)
    assert code == rc, f"segbench {' '.join(args)} exited {code}:\n{out[-3000:]}"
    leaked = sorted(heavy & set(forbidden))
    assert not leaked, f"segbench {' '.join(map(str, args))} imported {leaked}"
    missing = sorted(set(needed) - heavy)
    assert not missing, f"segbench {' '.join(map(str, args))} did not import {missing}: the probe is broken?"


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["models", "--list"], ["download", "--help"], ["train", "--help"],
    ["report", "--help"], ["track-init", "--help"], ["serve", "--help"],
])
def test_help_and_listing_import_nothing_heavy(args, tmp_path):
    check(args, tmp_path, HEAVY)


def test_check_config_imports_nothing_heavy(tmp_path, minimal_config):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(minimal_config))
    check(["check-config", str(cfg)], tmp_path, HEAVY)


def test_data_steps_import_no_torch(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    check(["generate", str(raw), "--train", "2", "--val", "1", "--height", "64", "--width", "128", "--quiet"],
          tmp_path, NO_ML)
    check(["prepare", "synthetic", "--root", str(raw), "--out", str(out), "--quiet"], tmp_path, NO_ML)
    assert (out / "manifest.csv").is_file()


def test_archive_steps_import_no_torch(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "a.txt", arcname="a.txt")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    check(["verify", str(archive), "--md5", md5, "--quiet"], tmp_path, NO_ML)
    check(["extract", str(archive), "--to", str(tmp_path / "x"), "--quiet"], tmp_path, NO_ML)
    assert (tmp_path / "x" / "a.txt").read_text() == "hello\n"


def test_serve_of_a_missing_run_fails_before_importing_torch(tmp_path):
    check(["serve", str(tmp_path / "no-such-run")], tmp_path, {"torch", "mlflow", "flask"}, rc=2)


def test_tracking_imports_mlflow_but_not_torch(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check(["track-init", "--study", "s", "--tracking-uri", uri, "--out", str(tmp_path / "init.json")], tmp_path,
          {"torch", "matplotlib", "albumentations", "cv2"}, needed={"mlflow"})
    check(["sync", "--results", str(tmp_path / "results"), "--tracking-uri", uri], tmp_path,
          {"torch", "matplotlib", "albumentations", "cv2"})


def test_report_imports_matplotlib_but_not_torch_or_mlflow(tmp_path):
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        from test_report import RUNS, make_run  # the report tests' hand-written run directories
    except ImportError as e:  # pragma: no cover - the report tests were reorganised
        pytest.skip(f"tests/test_report.py has no make_run/RUNS to build run directories: {e}")
    runs = [make_run(tmp_path / "results", "synthetic", mo, lo, s, m) for (mo, lo, s), m in RUNS.items()]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    check(["report", "s", "--runs", f"@{tmp_path / 'runs.json'}", "--out", str(tmp_path / "study")], tmp_path,
          {"torch", "mlflow", "albumentations", "cv2"}, needed={"matplotlib"})


def test_probe_sees_torch_where_a_step_needs_it(tmp_path):
    spec = json.dumps({"arch": "unet", "params": {"width": 4}})
    check(["profile", "--model-spec", spec, "--classes", "2", "--size", "32x64", "--out", str(tmp_path / "p.json"),
           "--warmup", "0", "--iterations", "1", "--threads", "1"], tmp_path, {"mlflow", "matplotlib"},
          needed={"torch"})
