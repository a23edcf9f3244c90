"""Run every performance benchmark of issue 9 and print one summary table (``make bench``).

    python bench/run_all.py                 # all of them, default sizes (about 5 min on 2 cores)
    python bench/run_all.py --quick         # the short versions (about 2 min)
    python bench/run_all.py --only loader ops

Each benchmark runs in its own process (``bench/bench_*.py --json``), prints its figures as
it goes, each with its target and PASS/FAIL; the summary repeats the checked ones. Timings
on a shared machine are noisy: every target is a ratio of timings taken in the same run.
Nothing here fails on a missed target (the exit status is 0 unless a benchmark crashes):
the figures are for docs/performance.md, not a CI gate.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import BENCH, env_with_venv, fmt_target, fmt_value

# name -> (script, what it measures)
BENCHES = {
    "eval": ("bench_eval.py", "confusion-matrix throughput, one bincount per batch"),
    "ops": ("bench_ops.py", "Gra layer and PAC vs plain convolutions"),
    "loader": ("bench_loader.py", "data loading vs training consumption, decode formats"),
    "utilisation": ("bench_utilisation.py", "training GFLOP/s vs dense conv at 256x512"),
    "bal": ("bench_bal.py", "BAL weight map vs a DeepLabV3 step"),
    "scale": ("bench_scale.py", "snakemake -n time, job counts"),
    "step": ("bench_step.py", "segbench's training loop vs a bare PyTorch loop, two models"),
    "claims_metrics": ("bench_claims_metrics.py", "Boundary IoU + size recall vs an evaluation (<= 25%)"),
}


def bal_figures(output: str) -> list[dict]:
    """bench_bal.py (issue 4's script) prints text; its verdict line becomes a figure."""
    m = re.search(r"slowest weight map: ([\d.]+)% of the step", output)
    value = float(m.group(1)) if m else None
    return [benchlib.figure("BAL weight map (slowest paper setting) / DeepLabV3-R50 f+b step", value, "%", "<=", 10.0)]


def run_one(name: str, a, tmp: Path) -> tuple[list[dict], float, int, float | None]:
    script, what = BENCHES[name]
    cmd = [sys.executable, str(BENCH / script)]
    out_json = tmp / f"{name}.json"
    if name == "bal":
        cmd += (["--height", "256", "--width", "512", "--repeats", "3", "--model-repeats", "1"] if a.quick
                else ["--repeats", "5", "--model-repeats", "2"])
    else:
        cmd += ["--json", str(out_json)] + (["--quick"] if a.quick else [])
    print(f"\n######## {name}: {what}\n$ {' '.join(cmd[1:])}", flush=True)
    busy = benchlib.cpu_busy(1.0)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env_with_venv(PYTHONPATH=str(benchlib.ROOT / "src")), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        if line.startswith("USDT:"):  # the profiler's start/stop chatter
            continue
        lines.append(line)
        print(line, end="", flush=True)
    rc = proc.wait()
    dt = time.perf_counter() - t0
    if name == "bal":
        return bal_figures("".join(lines)), dt, rc, busy
    figs = json.loads(out_json.read_text())["figures"] if out_json.exists() else []
    return figs, dt, rc, busy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the short version of every benchmark")
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these")
    ap.add_argument("--skip", nargs="+", choices=list(BENCHES), default=[], help="skip these")
    a = ap.parse_args(argv)
    names = [n for n in (a.only or BENCHES) if n not in a.skip]
    summary, failed = [], []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segbench-bench-") as tmp:
        for name in names:
            figs, dt, rc, busy = run_one(name, a, Path(tmp))
            if rc != 0:
                failed.append(name)
                figs.append(benchlib.figure(f"{name}: the benchmark crashed (exit {rc})", None, status="ERROR"))
            summary.append((name, dt, figs, busy))
    total = time.perf_counter() - t_all
    rows = [(name, f) for name, _, figs, _ in summary for f in figs
            if f.get("summary", f["op"] is not None) or f["status"] == "ERROR"]
    w = max([len(f["name"].strip()) for _, f in rows] + [20])
    print(f"\n{'=' * (w + 52)}\nSummary ({'quick' if a.quick else 'default sizes'}; "
          f"{total / 60:.1f} min; ratios measured within each benchmark's own run)\n{'=' * (w + 52)}")
    print(f"{'bench':<12} {'figure':<{w}} {'value':>12}  {'target':<12} status")
    for name, f in rows:
        print(f"{name:<12} {f['name'].strip():<{w}} {fmt_value(f['value'], f['unit']):>12}  {fmt_target(f):<12} "
              f"{f['status']}")
    counts = {s: sum(1 for _, f in rows if f["status"] == s) for s in ("PASS", "FAIL", "SKIP", "ERROR")}
    print(f"\n{counts['PASS']} pass, {counts['FAIL']} fail, {counts['SKIP']} skipped, {counts['ERROR']} crashed; "
          + ", ".join(f"{n} {dt:.0f} s" for n, dt, _, _ in summary))
    busy = [(n, b) for n, _, _, b in summary if b is not None]
    if busy:
        print("CPUs busy with other processes just before each benchmark: "
              + ", ".join(f"{n} {b:.0%}" for n, b in busy)
              + ("  <- above 25%: those timings are unreliable" if any(b > 0.25 for _, b in busy) else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
