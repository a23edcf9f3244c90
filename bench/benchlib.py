"""Shared bits of the bench/ scripts: a figure with its target, printing, JSON hand-over to
``run_all.py``, best-of-N timing and the common command-line flags.

Every figure a script measures is a :func:`figure`: its value, the target it is checked
against (``None``: reported only) and PASS/FAIL. Scripts print them as they go and, with
``--json PATH``, write them for ``bench/run_all.py``'s summary table. Timings on a shared
machine are noisy: every timed quantity is the best of N rounds that run the compared
functions in turn (``bench_models.best_times``), and every target is a *ratio* of two
timings taken in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for p in (str(ROOT / "src"), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("SEGBENCH_NO_PROGRESS", "1")

OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}


def figure(name: str, value: float | None, unit: str = "", op: str | None = None,
           target: float | None = None, note: str = "", status: str | None = None,
           summary: bool | None = None) -> dict:
    """One measured figure. ``op``/``target`` (e.g. ">=", 2.0) make it checked: PASS/FAIL;
    without them it is reported only (status "info"). ``value`` None: not measured (SKIP).
    ``summary``: whether run_all's summary table repeats it (default: the checked ones)."""
    if status is None:
        if value is None:
            status = "SKIP"
        elif op is None:
            status = "info"
        else:
            status = "PASS" if OPS[op](value, target) else "FAIL"
    return {"name": name, "value": value, "unit": unit, "op": op, "target": target, "status": status,
            "note": note, "summary": op is not None if summary is None else summary}


def fmt_value(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        s = f"{int(v):,}"
    elif abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    elif abs(v) >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3f}"
    if unit == "%":
        return f"{s}%"
    if unit == "x":
        return f"{s}x"
    return f"{s} {unit}".rstrip()


def fmt_target(f: dict) -> str:
    if f["op"] is None:
        return ""
    return f"{f['op']} {fmt_value(f['target'], f['unit'])}"


def show(f: dict, width: int = 58) -> dict:
    """Print one figure line: name, value, target, status (and its note)."""
    line = f"  {f['name']:<{width}} {fmt_value(f['value'], f['unit']):>12}  {fmt_target(f):<14} {f['status']}"
    if f["note"]:
        line += f"   ({f['note']})"
    print(line, flush=True)
    return f


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat; None elsewhere). Taken
    before a benchmark starts, it is the load of *other* processes: timings taken while it
    is high are unreliable (best-of-N and same-round ratios only soften that)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle
    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
    except (OSError, ValueError):
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


class LoadCheck:
    """Whether the machine was quiet enough for a benchmark's timings to mean anything.

    Created before the benchmark: the load average (``os.getloadavg``) and the share of the
    CPUs busy over one second, both from *other* processes at that point. :meth:`verdict`
    after it: the load average again (this benchmark's own work included) and the share of
    the CPUs other processes used *during* the run (all CPUs' busy time from /proc/stat less
    this process's and its waited-for children's, e.g. DataLoader workers). Too busy: other
    processes took more than ``limit`` of the CPUs just before or during the run, or the
    load average before exceeded ``load_per_cpu`` x the CPU count (a generous bound: the
    average lags, so work that ended a minute ago still shows in it)."""

    def __init__(self, limit: float = 0.25, load_per_cpu: float = 0.5):
        self.limit, self.load_limit = limit, load_per_cpu * (os.cpu_count() or 1)
        self.cpus = os.cpu_count() or 1
        self.load_before = os.getloadavg()[0]
        self.busy_before = cpu_busy(1.0)
        self._start = self._snapshot()

    def print_before(self) -> None:
        busy = "-" if self.busy_before is None else f"{self.busy_before:.0%}"
        warn = ""
        if self.load_before > self.load_limit or (self.busy_before or 0.0) > self.limit:
            warn = "  WARNING: the machine is busy; the timings will mean little, rerun when it is idle"
        print(f"  machine before the run: load average {self.load_before:.2f} on {self.cpus} CPUs, {busy} of the "
              f"CPUs busy with other processes{warn}", flush=True)

    @staticmethod
    def _snapshot():
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            busy = None
        return time.perf_counter(), own, busy

    def verdict(self) -> dict:
        """Print one line saying whether the machine was too busy; return the figures."""
        wall0, own0, busy0 = self._start
        wall1, own1, busy1 = self._snapshot()
        others = None
        if busy0 is not None and busy1 is not None and wall1 > wall0:
            others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * self.cpus))
        load_after = os.getloadavg()[0]
        reasons = []
        if self.load_before > self.load_limit:
            reasons.append(f"load average {self.load_before:.2f} before the run")
        if self.busy_before is not None and self.busy_before > self.limit:
            reasons.append(f"{self.busy_before:.0%} of the CPUs busy just before it")
        if others is not None and others > self.limit:
            reasons.append(f"other processes used {others:.0%} of the CPUs during it")
        facts = (f"load average {self.load_before:.2f} before, {load_after:.2f} after (this benchmark's own work "
                 f"included) on {self.cpus} CPUs; CPUs busy with other processes: "
                 f"{'-' if self.busy_before is None else f'{self.busy_before:.0%}'} just before, "
                 f"{'-' if others is None else f'{others:.0%}'} during the run")
        if reasons:
            print(f"  MACHINE TOO BUSY: {'; '.join(reasons)}: these timings mean little; rerun on an idle "
                  f"machine ({facts})", flush=True)
        else:
            print(f"  machine quiet enough for these timings ({facts})", flush=True)
        return {"too_busy": bool(reasons), "load_before": self.load_before, "load_after": load_after,
                "busy_before": self.busy_before, "others_during": others, "cpus": self.cpus}


def load_figure(check: dict) -> dict:
    """:meth:`LoadCheck.verdict`'s result as a figure (reported, repeated in run_all's summary)."""
    others = check["others_during"]
    return figure("CPUs used by other processes during the run", None if others is None else 100 * others, "%",
                  note="MACHINE TOO BUSY: the timings mean little" if check["too_busy"] else "quiet enough",
                  summary=True)


def header(title: str, busy: bool = True) -> None:
    print(f"\n== {title}", flush=True)
    if busy:
        b = cpu_busy()
        if b is not None:
            warn = ("  WARNING: other processes keep the CPUs busy; timings are unreliable, rerun when the "
                    "machine is idle" if b > 0.25 else "")
            print(f"  (CPUs busy with other processes before this benchmark: {b:.0%} of {os.cpu_count()}){warn}",
                  flush=True)


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=None)
    ap.add_argument("--quick", action="store_true", help="a short version (fewer rounds, smaller sizes)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures here (bench/run_all.py reads it)")
    return ap


def write_json(path: str | None, script: str, figures: list[dict], extra: dict | None = None) -> None:
    if path:
        Path(path).write_text(json.dumps({"script": script, "figures": figures, **(extra or {})}, indent=1,
                                         default=float))


def best_of(fns: dict, rounds: int, warmup: int = 1) -> dict:
    """Best time of each function over ``rounds`` rounds running all of them in turn, after
    ``warmup`` rounds: a burst of load from another process hits one round of every function
    alike instead of all the samples of one."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def venv_bin() -> Path:
    """The folder of the running interpreter (the venv's bin/, where snakemake lives)."""
    return Path(sys.executable).parent


def env_with_venv(**extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("MPLBACKEND", "Agg")
    env.update(extra)
    return env


def time_command(cmd: list[str], rounds: int = 3, cwd: str | Path | None = None, env: dict | None = None,
                 check: bool = True) -> float:
    """Best wall time of a subprocess over ``rounds`` runs."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env or env_with_venv(), capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
        best = min(best, dt)
    return best
