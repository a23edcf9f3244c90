"""The Cityscapes login never lands anywhere: not in a log, a command line, MLflow (params,
tags, metrics, artifacts), run.json, a study report, the Snakemake report, ``.snakemake/``
or anything else under the working directory.

The realistic path: a miniature Cityscapes (synthetic street scenes zipped as the two
official packages) is served from 127.0.0.1 by a stand-in for the site that checks the login,
and the real Snakefile downloads, verifies, extracts, prepares, trains (1 epoch, a width-4
U-Net), evaluates, profiles, logs to MLflow and reports; then ``snakemake --report`` writes
the Snakemake report. The login comes from the environment (CITYSCAPES_USERNAME/PASSWORD)
in that run, and from the file named by ``download.credentials`` in a second one that stops
at the prepared dataset. Every file under both working directories, the snakemake output
and every MLflow param/tag value are searched for the username and the password, as bytes
(also in their URL-, JSON- and base64-encoded forms).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import yaml
from datasets_support import CityscapesSite, zip_bytes

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# distinctive strings: a hit is a leak, never a coincidence
ENV_USER, ENV_PASSWORD = "env-user-7f3a@example.org", "EnvPa55-q8Zr!x2"
FILE_USER, FILE_PASSWORD = "file-user-c41d@example.org", "FilePa55-Lm3$k9"


def _forms(secret: str) -> list[bytes]:
    """The secret as it could be written: plain, URL-encoded (a form post, a query string),
    JSON-escaped, base64 (a Basic auth header), UTF-16 (a Windows-ish log)."""
    forms = {secret, quote(secret), quote_plus(secret), json.dumps(secret)[1:-1]}
    out = [f.encode() for f in forms]
    out.append(base64.b64encode(secret.encode()))
    out.append(secret.encode("utf-16-le"))
    return out


def _cityscapes_packages(tmp: Path) -> dict[str, bytes]:
    """Synthetic scenes in the Cityscapes layout (4 train, 2 val at 64x128), zipped as the
    two official packages."""
    from segbench.data.synthetic import generate

    raw = tmp / "scenes"
    generate(raw, seed=5, splits={"train": 4, "val": 2}, height=64, width=128, progress=False)
    packages = {}
    for name, top in (("gtFine_trainvaltest.zip", "gtFine"), ("leftImg8bit_trainvaltest.zip", "leftImg8bit")):
        files = {p.relative_to(raw).as_posix(): p.read_bytes() for p in sorted((raw / top).rglob("*")) if p.is_file()}
        files["README"] = b"The Cityscapes Dataset (miniature)\n"
        packages[name] = zip_bytes(files)
    return packages


def _config(site: str, credentials: Path | None = None) -> dict:
    download = {"site": site, **({"credentials": str(credentials)} if credentials else {})}
    return {
        "datasets": {"cs": {"source": "cityscapes", "labels": "trainId", "allow_partial": True,
                            "eval_size": [64, 128], "download": download}},
        "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
        "losses": {"ce": {"type": "ce"}},
        "train": {"epochs": 1, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1},
        "eval": {"batch_size": 2, "samples": 2},
        "profile": {"warmup": 1, "iterations": 1, "threads": 1},
        "studies": {"secrets": {"datasets": ["cs"], "models": ["unet"], "losses": ["ce"], "seeds": [0]}},
    }


def _snakemake(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), "--cores", "2", *args], capture_output=True, env=env, timeout=600)
    if proc.returncode != 0:
        logs = b"\n".join(b"== " + str(p).encode() + b"\n" + p.read_bytes()[-3000:]
                          for p in (workdir / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode(errors='replace')[-5000:]}\n{logs.decode(errors='replace')}")
    return proc


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSCAPES_")}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SEGBENCH_NO_PROGRESS="1", **extra)
    return env


def _leaks(folder: Path, secrets: list[str]) -> list[str]:
    """'file: form' for every file under ``folder`` holding a form of a secret."""
    found = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            for s in secrets:
                for form in _forms(s):
                    if form in data:
                        found.append(f"{p}: {form!r}")
    return found


def test_the_search_finds_every_form(tmp_path):
    """The search itself: a secret written in any of its forms, in any file, is found."""
    for i, form in enumerate(_forms(ENV_PASSWORD)):
        (tmp_path / f"f{i}.bin").write_bytes(b"\x00head " + form + b" tail\xff")
    assert len(_leaks(tmp_path, [ENV_PASSWORD])) == len(_forms(ENV_PASSWORD))
    assert _leaks(tmp_path, [FILE_PASSWORD]) == []


@pytest.fixture
def site(tmp_path):
    s = CityscapesSite(ENV_USER, ENV_PASSWORD)
    for name, data in _cityscapes_packages(tmp_path).items():
        s.add_package(name, data)
    s.start()
    yield s
    s.stop()


@pytest.mark.slow
def test_credentials_never_written_anywhere(site, tmp_path):
    secrets = [ENV_USER, ENV_PASSWORD, FILE_USER, FILE_PASSWORD]
    home = tmp_path / "home"  # no csDownload login from the real home
    isolated = {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share")}

    # -- 1: login from the environment, the whole pipeline, then the Snakemake report
    env_wd = tmp_path / "env-run"
    env_wd.mkdir()
    (env_wd / "config.yaml").write_text(yaml.safe_dump(_config(site.base)))
    env = _env(CITYSCAPES_USERNAME=ENV_USER, CITYSCAPES_PASSWORD=ENV_PASSWORD, **isolated)
    run = _snakemake(env_wd, env)
    report = _snakemake(env_wd, env, "--report", "results/snakemake-report.html")
    res = env_wd / "results"
    assert site.login_posts and site.login_posts[0]["username"] == [ENV_USER], "the login was used"
    assert (res / "runs/cs/unet/ce/s0/metrics.json").is_file()
    assert (res / "studies/secrets/tables/summary.csv").is_file()
    assert (res / "snakemake-report.html").stat().st_size > 0
    assert (res / "mlflow.db").is_file()
    assert list((res / "logs").rglob("*.log"))

    # -- 2: login from the file named in the config (downloads, verify, extract, prepare)
    site.username, site.password = FILE_USER, FILE_PASSWORD
    site.login_posts.clear()
    login = tmp_path / "secret" / "cityscapes.json"
    login.parent.mkdir()
    login.write_text(json.dumps({"username": FILE_USER, "password": FILE_PASSWORD}))
    login.chmod(0o600)
    file_wd = tmp_path / "file-run"
    file_wd.mkdir()
    (file_wd / "config.yaml").write_text(yaml.safe_dump(_config(site.base, login)))
    run2 = _snakemake(file_wd, _env(**isolated), "results/data/cs/manifest.csv")
    assert site.login_posts and site.login_posts[0]["username"] == [FILE_USER]
    assert (file_wd / "results/data/cs/manifest.csv").is_file()

    # -- every byte written under both working directories (results/, .snakemake/ with its
    # logs and job metadata, the Snakemake report), and what snakemake printed
    leaks = _leaks(env_wd, secrets) + _leaks(file_wd, secrets)
    for proc in (run, report, run2):
        for stream in (proc.stdout, proc.stderr):
            leaks += [f"snakemake output: {f!r}" for s in secrets for f in _forms(s) if f in stream]
    assert not leaks, "credentials written:\n" + "\n".join(leaks)
    assert list((env_wd / ".snakemake").rglob("*")), "snakemake's own folder was searched too"

    # -- MLflow, through its API as well: every param, tag and metric key of every run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{res / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs, "MLflow holds the runs"
    for r in runs:
        texts = [*r.data.params.items(), *r.data.tags.items(), *((k, "") for k in r.data.metrics)]
        for key, value in texts:
            for s in secrets:
                assert s not in f"{key}={value}", f"run {r.info.run_id}: {key}"
