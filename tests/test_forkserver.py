"""The fork server (segbench.forkserver): a job run as its child behaves as the same job run
as a fresh process: output, exit status, signals, cwd/env/umask/stdin, threads and atexit at
exit, and the trained weights bit for bit; the server refuses what it must not run and goes
away with the process that started it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import tiny_run_spec

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TESTS = ROOT / "tests"
# a client that delegates argv as-is; 99 when no server ran it
CLIENT = ("import sys; from segbench.forkserver import delegate; "
          "r = delegate(['test', *sys.argv[1:]]); sys.exit(99 if r is None else r)")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "SEGBENCH_FORKSERVER"}
    env.update({"PYTHONPATH": f"{SRC}:{TESTS}", "NO_ALBUMENTATIONS_UPDATE": "1", "MPLBACKEND": "Agg", **extra})
    return env


def _wait_for(pred, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


class ForkServer:
    def __init__(self, *args, entry="forkserver_entry:run", preload=("forkserver_entry",), parent=None,
                 wait=True, env=None):
        self.dir = Path(tempfile.mkdtemp(prefix="fs-"))  # short: a Unix socket path has 108 bytes
        self.sock = self.dir / "fs.sock"
        self.log = self.dir / "server.log"
        cmd = [sys.executable, "-m", "segbench.forkserver", "--socket", str(self.sock), "--entry", entry,
               "--preload", *preload, *(["--parent", str(parent)] if parent else []), *args]
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(cmd, env=_env(**(env or {})), stdout=f, stderr=subprocess.STDOUT,
                                         cwd=self.dir)
        if not wait:
            return
        _wait_for(lambda: self.sock.exists() or self.proc.poll() is not None, what="the server's socket")
        assert self.proc.poll() is None, self.log.read_text()

    def env(self, **extra):
        return _env(SEGBENCH_FORKSERVER=str(self.sock), **extra)

    def client(self, *argv, **kw):
        kw.setdefault("env", self.env())
        return subprocess.run([sys.executable, "-c", CLIENT, *argv], capture_output=True, text=True, timeout=120, **kw)

    def popen(self, *argv):
        return subprocess.Popen([sys.executable, "-c", CLIENT, *argv], env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    s = ForkServer()
    yield s
    s.stop()


def test_output_and_exit_status(server):
    r = server.client("echo", "a", "b")
    assert (r.returncode, r.stdout, r.stderr) == (0, "a b\n", "to stderr\n")
    assert server.client("exit", "3").returncode == 3
    r = server.client("sysexit", "a message")
    assert r.returncode == 1 and r.stderr.strip() == "a message"
    r = server.client("raise")
    assert r.returncode == 1
    assert "Traceback" in r.stderr and r.stderr.strip().endswith("ValueError: boom from the job")


def test_the_child_takes_the_clients_cwd_env_umask_and_stdin(server, tmp_path):
    r = server.client("where", "SEGBENCH_TEST_VAR", cwd=tmp_path, env=server.env(SEGBENCH_TEST_VAR="from the client"),
                      umask=0o027)
    cwd, mask, var, pid, sid = r.stdout.split("\n")[:5]
    assert r.returncode == 0, r.stderr
    assert (cwd, mask, var) == (str(tmp_path), "0o27", "from the client")
    assert pid == sid  # a session of its own: signals reach its worker processes too
    assert f"pid {pid}: test where" in server.log.read_text()  # it ran in the server's child
    r = server.client("stdin", input="hello\nworld\n")
    assert r.stdout == "HELLO\nWORLD\n"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_job_killed_by_a_signal_kills_its_client_by_the_same_signal(server, signum):
    r = server.client("kill", str(int(signum)))
    assert r.returncode == -signum
    assert r.stdout == "partial output\n"


def test_threads_are_joined_and_atexit_runs_before_the_child_exits(server, tmp_path):
    out = tmp_path / "finish.txt"
    assert server.client("finish", str(out)).returncode == 0
    assert out.read_text() == "thread\natexit\n"


def test_signals_to_the_client_reach_the_job(server, tmp_path):
    marker = tmp_path / "pids"
    client = server.popen("wait", str(marker))
    _wait_for(marker.exists, what="the job's pid file")
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=30) == 7  # the job's handler ran and chose the status
    assert (tmp_path / "pids.signal").read_text() == str(int(signal.SIGTERM))


def test_a_killed_client_leaves_no_job_behind(server, tmp_path):
    marker = tmp_path / "pids"
    client = server.popen("wait", str(marker))
    _wait_for(marker.exists, what="the job's pid file")
    job, grandchild = map(int, marker.read_text().split())
    assert _alive(job) and _alive(grandchild)
    client.kill()  # SIGKILL: the client cannot tell anyone
    client.wait()
    _wait_for(lambda: not _alive(job) and not _alive(grandchild), timeout=10, what="the job and its child to die")
    assert "client gone; killing the job" in server.log.read_text()


def test_no_server_means_the_step_runs_in_its_own_process(tmp_path):
    env = _env(SEGBENCH_FORKSERVER=str(tmp_path / "missing.sock"))
    r = subprocess.run([sys.executable, "-c", CLIENT, "echo", "x"], env=env, capture_output=True, text=True)
    assert r.returncode == 99 and "not reachable" in r.stderr
    # through the real command line: the step still runs, with the note on stderr
    r = subprocess.run([sys.executable, "-m", "segbench", "report", "--help"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: segbench report")
    assert f"fork server {tmp_path / 'missing.sock'} not reachable" in r.stderr


def test_a_job_waits_for_a_server_that_is_still_importing():
    s = ForkServer(env={"FORKSERVER_ENTRY_IMPORT_DELAY": "2"}, wait=False)
    try:
        assert not s.sock.exists()
        r = s.client("echo", "waited", env=s.env(SEGBENCH_FORKSERVER_PID=str(s.proc.pid)))
        assert (r.returncode, r.stdout) == (0, "waited\n") and "not reachable" not in r.stderr
        assert "test echo -> {'exit': 0}" in s.log.read_text()
    finally:
        s.stop()
    # a server that died while importing: the job runs in its own process at once
    s = ForkServer(preload=("no_such_module_anywhere",), entry="no_such_module_anywhere:run", wait=False)
    try:
        s.proc.wait(timeout=30)
        t0 = time.monotonic()
        r = s.client("echo", "x", env=s.env(SEGBENCH_FORKSERVER_PID=str(s.proc.pid)))
        assert r.returncode == 99 and "not reachable" in r.stderr and time.monotonic() - t0 < 10
    finally:
        s.stop()


def test_a_client_from_another_checkout_is_refused(server, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(SRC / "segbench", other / "segbench", ignore=shutil.ignore_patterns("__pycache__"))
    env = server.env(PYTHONPATH=f"{other}:{TESTS}")
    r = subprocess.run([sys.executable, "-c", CLIENT, "echo", "x"], env=env, capture_output=True, text=True)
    assert r.returncode == 99, r.stderr + server.log.read_text()
    assert "cannot run this step" in r.stderr and str(other / "segbench") in r.stderr


def test_the_server_goes_away_with_its_parent(tmp_path):
    # a parent that starts the server, reports its pid and then waits to be killed
    starter = ("import subprocess, sys, os, time; "
               "p = subprocess.Popen([sys.executable, '-m', 'segbench.forkserver', '--socket', sys.argv[1], "
               "'--preload', 'json', '--parent', str(os.getpid())]); print(p.pid, flush=True); time.sleep(120)")
    folder = Path(tempfile.mkdtemp(prefix="fs-"))
    try:
        sock = folder / "fs.sock"
        parent = subprocess.Popen([sys.executable, "-c", starter, str(sock)], env=_env(), stdout=subprocess.PIPE,
                                  text=True)
        pid = int(parent.stdout.readline())
        _wait_for(sock.exists, what="the socket")
        parent.kill()
        parent.wait()
        _wait_for(lambda: not _alive(pid), timeout=15, what="the server to exit")
        assert not sock.exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_real_steps_through_the_command_line():
    s = ForkServer(entry="segbench.cli:run", preload=("segbench.cli",))
    try:
        env = s.env()
        r = subprocess.run([sys.executable, "-m", "segbench", "report", "--help"], env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0 and r.stdout.startswith("usage: segbench report"), r.stderr
        r = subprocess.run([sys.executable, "-m", "segbench", "train", "--spec", "{", "--data", "d", "--out", "o"],
                           env=env, capture_output=True, text=True)
        assert r.returncode == 2 and "argument --spec: not valid JSON" in r.stderr
        log = s.log.read_text()
        assert "segbench report" in log and "segbench train -> {'exit': 2}" in log
        # a data step is never delegated (a download may prompt for a login)
        r = subprocess.run([sys.executable, "-m", "segbench", "generate", "--help"], env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0 and "segbench generate" not in s.log.read_text()
    finally:
        s.stop()


def test_training_through_the_server_is_bitwise_the_training_without(tiny_dataset, tmp_path):
    import torch

    spec = json.dumps(tiny_run_spec())
    s = ForkServer(entry="segbench.cli:run", preload=("segbench.cli", "segbench.engine.train"))
    try:
        runs = {}
        for name, env in (("fresh", _env()), ("forked", s.env())):
            out = tmp_path / name
            r = subprocess.run([sys.executable, "-m", "segbench", "train", "--spec", spec, "--data", str(tiny_dataset),
                                "--out", str(out), "--threads", "1", "--quiet"], env=env, capture_output=True,
                               text=True, timeout=600)
            assert r.returncode == 0, r.stderr
            runs[name] = out
        assert "segbench train -> {'exit': 0}" in s.log.read_text()
    finally:
        s.stop()
    a, b = (torch.load(runs[n] / "model.pt", weights_only=True) for n in ("fresh", "forked"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def history(d):
        rows = (d / "history.csv").read_text().splitlines()
        drop = [i for i, c in enumerate(rows[0].split(",")) if c in ("epoch_seconds", "time")]
        return [[v for i, v in enumerate(r.split(",")) if i not in drop] for r in rows]
    assert history(runs["fresh"]) == history(runs["forked"])
