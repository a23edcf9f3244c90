"""A fork server for the pipeline's steps: torch, mlflow and matplotlib imported once per
``snakemake`` invocation instead of once per job.

A default run starts ~60 short jobs, and each fresh ``python -m segbench train|evaluate|
profile|track|report`` spends 2-5 s importing torch, albumentations, mlflow or matplotlib
before its work: about a tenth of the whole run on a 2-core laptop (bench/bench_overhead.py).
With the server, the Snakefile's ``onstart`` starts one process that imports those modules,
and every job's ``python -m segbench STEP`` becomes a thin client: it sends its argv, working
directory, environment, umask and its stdin/stdout/stderr (the file descriptors themselves,
over a Unix socket) to the server, which forks a child that takes them over and runs the step
exactly as the client would have, while the client waits and relays signals. The job is
still one Snakemake job with its log, exit status and benchmark file; only the imports are
shared. This is the forkserver pattern of Python's multiprocessing and of torch's DataLoader
workers (forked from a process that has imported torch); the server itself never runs torch
code, so no thread pool, CUDA context or file handle of a computation exists at fork time.

What a job sees is what a fresh process would see:
* argv, cwd, environment (replaced wholesale), umask, and fds 0/1/2 are the client's; new
  ``sys.stdin/stdout/stderr`` objects are made for them (line-buffered where a terminal).
* exit: the step's return code; an uncaught exception prints its traceback and gives 1;
  threads are joined and atexit handlers run before the child exits.
* signals: SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the client are forwarded to the
  child's process group (the child is a session leader, so DataLoader workers get them too);
  a child killed by signal S makes the client kill itself with S, so Snakemake sees the same
  status as without the server. If the client dies (even by SIGKILL), the server kills the
  child's process group: nothing runs on that nobody waits for.
* the child's CPU time and peak memory (from wait4) are written as the log's last line,
  because Snakemake's ``benchmark:`` files measure the client's process tree, whose CPU and
  memory columns are then the client's only (their wall-clock ``s`` stays exact).

Safety: the socket lives in a fresh 0700 directory, and the server serves only peers with
its own uid (SO_PEERCRED). It exits when the process that started it (``--parent``) is gone,
after its running children finish, and removes its socket. If the socket is missing or
refuses (server not started yet, or gone), the client runs the step in its own process, as
without the server, and says so on stderr.

    python -m segbench.forkserver --socket /tmp/x/fs.sock --parent PID [--preload MODULE ...]
"""

from __future__ import annotations

import argparse
import array
import importlib
import io
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback

ENV = "SEGBENCH_FORKSERVER"  # the socket's path; set by the Snakefile's onstart for its jobs

# every segbench module ("segbench.*"), and what its steps import lazily: torch._dynamo (the
# optimizers' constructors import it: 2 s of every training job otherwise), MLflow's sqlite
# store with its migrations (3 s of a track job otherwise), matplotlib's pyplot
PRELOAD = ("segbench.*", "torch._dynamo", "multiprocessing.synchronize", "mlflow",
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.db.utils", "alembic.command", "alembic.config",
           "alembic.migration", "sqlalchemy.dialects.sqlite", "matplotlib.pyplot")
_NEVER = {"segbench.__main__", "segbench.forkserver"}  # __main__ would run the command line
STARTUP_WAIT = 120.0  # seconds a job waits for a server that is still importing
ENTRY = "segbench.cli:run"  # what the child calls with argv[1:]
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 16 << 20


class ForkServerError(RuntimeError):
    pass


# ---------------------------------------------------------------- wire format
def _send_json(sock: socket.socket, obj, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    msg = _HEADER.pack(len(data)) + data
    if fds:
        sent = sock.sendmsg([msg[:4096]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        msg = msg[sent:]
    if msg:  # (an empty send to a peer that has already answered and closed would fail)
        sock.sendall(msg)


def _recv_exact(sock: socket.socket, n: int, first: bytes = b"") -> bytes:
    buf = bytearray(first)
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def _recv_json(sock: socket.socket, with_fds: int = 0):
    """One message; with ``with_fds``, also the file descriptors sent with its first bytes."""
    fds: list[int] = []
    first = b""
    if with_fds:
        space = socket.CMSG_SPACE(with_fds * array.array("i").itemsize)
        first, ancdata, _, _ = sock.recvmsg(4096, space)
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(data[:len(data) - len(data) % a.itemsize])
                fds.extend(a)
        if not first:
            raise EOFError("connection closed")
    head = _recv_exact(sock, _HEADER.size, first[:_HEADER.size])
    (n,) = _HEADER.unpack(head)
    if n > _MAX_REQUEST:
        raise ForkServerError(f"message of {n} bytes refused")
    body = _recv_exact(sock, n, first[_HEADER.size:_HEADER.size + n])
    return json.loads(body), fds


def _identity() -> dict:
    """What must be the same in the client and the server: the interpreter's environment and
    the segbench source tree (a server started from another checkout must not run this job)."""
    import segbench

    return {"prefix": sys.prefix, "segbench": os.path.dirname(os.path.abspath(segbench.__file__))}


# ---------------------------------------------------------------- client
def _starting(pid: str | None) -> bool:
    """Is the server process ``pid`` ($SEGBENCH_FORKSERVER_PID) still there (importing)?"""
    try:
        pid_n = int(pid)
        os.kill(pid_n, 0)
    except (TypeError, ValueError, OSError):
        return False
    try:
        with open(f"/proc/{pid_n}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie: it died, not yet reaped
    except OSError:
        return True


def _connect(path: str, wait: float = STARTUP_WAIT) -> socket.socket | None:
    """A connection to the server; while a server that is still importing exists
    ($SEGBENCH_FORKSERVER_PID alive, socket not there yet), wait for it rather than import
    everything a second time beside it. None (with a note on stderr) when there is none."""
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() < deadline and _starting(os.environ.get(ENV + "_PID")):
                time.sleep(0.05)
                continue
            print(f"segbench: fork server {path} not reachable ({e.strerror}); running this step in its own "
                  "process", file=sys.stderr, flush=True)
            return None


def delegate(argv: list[str], path: str | None = None) -> int | None:
    """Run ``argv`` (``["segbench", STEP, ...]``) in a child of the server at ``path`` (default
    $SEGBENCH_FORKSERVER) and return its exit code; dies by the child's signal if it was
    killed. None when no server answers: the caller then runs the step itself."""
    path = path or os.environ.get(ENV)
    if not path:
        return None
    sock = _connect(path)
    if sock is None:
        return None
    for f in (sys.stdout, sys.stderr):
        f.flush()
    env = dict(os.environ)
    umask = os.umask(0)
    os.umask(umask)
    _send_json(sock, {"argv": argv, "cwd": os.getcwd(), "env": env, "umask": umask, **_identity()}, fds=[0, 1, 2])

    def forward(signum, _frame):
        try:
            _send_json(sock, {"signal": signum})
        except OSError:
            pass
    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        while True:
            try:
                msg, _ = _recv_json(sock)
            except InterruptedError:
                continue
            except (EOFError, ConnectionResetError):
                raise ForkServerError(f"the fork server {path} went away while running {' '.join(argv[:2])}; "
                                      "see results/logs/forkserver.log, then run snakemake again") from None
            if "refused" in msg:
                print(f"segbench: the fork server {path} cannot run this step ({msg['refused']}); "
                      "running it in its own process", file=sys.stderr, flush=True)
                return None
            if "exit" in msg or "signal" in msg:
                break
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
    if "signal" in msg:
        signum = msg["signal"]
        sys.stdout.flush()
        sys.stderr.flush()
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the signal is delivered before this returns; SIGKILL/SIGTERM never get here
        return 128 + signum
    return int(msg["exit"])


# ---------------------------------------------------------------- server
def _resolve(entry: str):
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func)


def _std_streams() -> None:
    """New sys.stdin/stdout/stderr on fds 0/1/2 (now the client's), buffered as a fresh
    interpreter would buffer them."""
    enc = os.environ.get("PYTHONIOENCODING", "utf-8").split(":")[0] or "utf-8"
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))

    def stream(fd: int, mode: str, errors: str):
        tty = os.isatty(fd)
        raw = io.FileIO(fd, mode, closefd=False)
        if mode == "r":
            return io.TextIOWrapper(io.BufferedReader(raw), encoding=enc, errors=errors)
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding=enc, errors=errors,
                                line_buffering=tty or fd == 2, write_through=unbuffered)
    sys.stdin = sys.__stdin__ = stream(0, "r", "strict")
    sys.stdout = sys.__stdout__ = stream(1, "w", "strict")
    sys.stderr = sys.__stderr__ = stream(2, "w", "backslashreplace")


def _child(request: dict, fds: list[int], entry) -> None:
    """In the forked child: become the client's process and run the step; never returns."""
    code = 1
    try:
        os.setsid()
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as CPython sets it at start-up
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for i, fd in enumerate(fds[:3]):
            os.dup2(fd, i)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        _std_streams()
        code = entry(sys.argv[1:])
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:
        traceback.print_exc()
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _finish()
    os._exit(code & 0xFF)


def _finish() -> None:
    import atexit
    import threading

    try:
        threading._shutdown()  # join non-daemon threads, as interpreter exit does
    except Exception:  # pragma: no cover - best effort, as at exit
        traceback.print_exc()
    atexit._run_exitfuncs()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass


class Server:
    def __init__(self, path: str, parent: int | None, entry: str = ENTRY, log=None):
        self.path = path
        self.parent = parent
        self.entry = _resolve(entry)
        self.log = log or sys.stderr
        self.children: dict[int, dict] = {}  # pid -> {"conn", "argv", "start"}
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.draining = False

    def say(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} forkserver[{os.getpid()}]: {msg}", file=self.log, flush=True)

    def listen(self) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        self.listener.bind(tmp)
        os.chmod(tmp, 0o600)
        self.listener.listen(64)
        os.replace(tmp, self.path)  # clients see the socket only once it accepts
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")

    def stop_listening(self) -> None:
        if self.listener is not None:
            self.sel.unregister(self.listener)
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def parent_alive(self) -> bool:
        return self.parent is None or os.getppid() == self.parent

    def serve(self) -> None:
        def drain(signum, _frame):
            self.draining = True
        signal.signal(signal.SIGTERM, drain)
        signal.signal(signal.SIGINT, drain)
        self.listen()
        self.say(f"listening on {self.path}")
        try:
            while True:
                if (self.draining or not self.parent_alive()) and self.listener is not None:
                    self.say("stopping: " + ("asked to" if self.draining else "the parent process is gone")
                             + f"; {len(self.children)} job(s) still running")
                    self.stop_listening()
                if self.listener is None and not self.children:
                    break
                for key, _ in self.sel.select(timeout=0.2):
                    if key.data == "listen":
                        self.accept()
                    else:
                        self.from_client(key.data)
                self.reap()
        finally:
            self.stop_listening()
            for pid in list(self.children):
                self.kill(pid)
            self.say("stopped")

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            if uid != os.getuid():
                raise ForkServerError(f"peer uid {uid} is not this server's uid {os.getuid()}")
            conn.settimeout(10)
            request, fds = _recv_json(conn, with_fds=3)
            if len(fds) != 3:
                raise ForkServerError(f"expected 3 file descriptors, got {len(fds)}")
            conn.settimeout(None)
            mismatch = {k: (request.get(k), v) for k, v in _identity().items() if request.get(k) != v}
            if mismatch:
                _send_json(conn, {"refused": "; ".join(f"its {k} is {theirs}, the server's {ours}"
                                                      for k, (theirs, ours) in mismatch.items())})
                raise ForkServerError(f"{request['argv'][:2]}: {mismatch}")
        except (OSError, EOFError, ValueError, ForkServerError) as e:
            self.say(f"refused a request: {e}")
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        for f in (sys.stdout, sys.stderr, self.log):
            f.flush()
        pid = os.fork()
        if pid == 0:
            self.sel.close()
            if self.listener is not None:
                self.listener.close()
            for child in self.children.values():
                child["conn"].close()
            conn.close()
            _child(request, fds, self.entry)
        for fd in fds:
            os.close(fd)
        self.children[pid] = {"conn": conn, "argv": request["argv"], "start": time.monotonic()}
        self.sel.register(conn, selectors.EVENT_READ, pid)
        self.say(f"pid {pid}: {' '.join(request['argv'][:2])} (cwd {request['cwd']})")

    def from_client(self, pid: int) -> None:
        child = self.children.get(pid)
        if child is None:
            return
        try:
            msg, _ = _recv_json(child["conn"])
        except (EOFError, OSError, ValueError):
            # the client is gone (killed, or its job cancelled): nobody waits for this child
            self.say(f"pid {pid}: client gone; killing the job")
            self.sel.unregister(child["conn"])
            self.kill(pid)
            return
        if "signal" in msg:
            try:
                os.killpg(pid, int(msg["signal"]))
            except ProcessLookupError:
                pass

    def kill(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            conn = child["conn"]
            wall = time.monotonic() - child["start"]
            if os.WIFSIGNALED(status):
                reply = {"signal": os.WTERMSIG(status)}
            else:
                reply = {"exit": os.WEXITSTATUS(status)}
            self.say(f"pid {pid}: {' '.join(child['argv'][:2])} -> {reply} in {wall:.1f} s, "
                     f"cpu {usage.ru_utime + usage.ru_stime:.1f} s, max rss {usage.ru_maxrss / 1024:.0f} MB")
            try:
                self.sel.unregister(conn)
            except (KeyError, ValueError):
                pass
            try:
                _send_json(conn, {**reply, "cpu_s": usage.ru_utime + usage.ru_stime,
                                  "max_rss_mb": usage.ru_maxrss / 1024, "wall_s": wall})
            except OSError:
                pass
            conn.close()


def preload(modules) -> list[str]:
    """Import ``modules``; a module that fails to import is reported and left to the job
    (which then fails with the same error, in its own log)."""
    import pkgutil

    failed = []
    names = []
    for name in modules:
        if name.endswith(".*"):
            package = importlib.import_module(name[:-2])
            names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
        else:
            names.append(name)
    for name in names:
        if name in _NEVER:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:
            failed.append(f"{name}: {type(e).__name__}: {e}")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # pragma: no cover - a GPU import side effect
        raise ForkServerError("CUDA was initialised while importing; a forked job could not use it")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m segbench.forkserver", description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True, help="the Unix socket's path (its folder should be private)")
    ap.add_argument("--parent", type=int, help="exit when this process (the parent) is gone")
    ap.add_argument("--preload", nargs="*", default=list(PRELOAD), help="modules to import before serving")
    ap.add_argument("--entry", default=ENTRY, help="MODULE:FUNCTION the child calls with argv[1:]")
    a = ap.parse_args(argv)
    server = Server(a.socket, a.parent, a.entry)
    t = time.perf_counter()
    failed = preload(a.preload)
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else -1
    server.say(f"imported {len(a.preload)} modules in {time.perf_counter() - t:.1f} s ({len(sys.modules)} in all; "
               f"{threads} OS threads, which forked children do not inherit)")
    for f in failed:
        server.say(f"could not preload {f}; jobs import it themselves")
    server.serve()
    # No interpreter teardown: finalising thousands of modules (torch, mlflow, ...) takes 2 s,
    # which Snakemake's onsuccess would wait for at the end of every run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
