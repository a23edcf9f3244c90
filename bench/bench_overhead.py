"""Pipeline overhead: the share of a finished run's wall time (x the parallel slots) not spent
in training/evaluation compute, from Snakemake's benchmark files; target <= 10%. Also the
start-up time of ``python -m segbench --help`` and of each step's imports.

    python bench/bench_overhead.py                          # analyse ./results (needs results/benchmarks/)
    python bench/bench_overhead.py --results DIR --wall 575 --cores 2
    python bench/bench_overhead.py --run                    # clone this repo (HEAD) to a temp dir, run
                                                            # `snakemake --cores all` there (about 10 min on
                                                            # 2 cores), measure its wall time, analyse it

Figures (all in slot-seconds; a slot is one of the ``--cores`` Snakemake was given):

* wall x slots: the capacity of the run. ``--wall``, or measured by ``--run``, or read from
  the Snakemake log of the run (``.snakemake/log/*.snakemake.log`` beside ``results/``: its
  name is the start time, its last write the end) or, failing that, estimated from the
  benchmark files (earliest job start = file time - ``s``, to the last file time; misses
  Snakemake's start-up before the first job).
* job seconds per rule: column ``s`` of results/benchmarks/<rule>/...tsv, times the threads
  the job reserved (profile jobs and the MLflow store's creation take every core, train jobs
  ``train.threads``, others 1).
* compute: ``train_seconds`` of every run.json (the epochs: forward, backward, optimizer,
  data loading in the workers, per-epoch validation) plus ``eval_seconds`` of every
  metrics.json (the evaluation loop), counted for the runs whose jobs ran in this results folder.
* overhead share = 1 - compute / (wall x slots); split into Python start-up + imports
  (measured per step kind here, x its jobs; for the jobs the fork server ran, as its log
  results/logs/forkserver.log shows, the client's start-up instead), the rest of the train/evaluate jobs (model
  construction, checkpoints, outputs), profiling, data preparation, MLflow, reports, and
  Snakemake's own time plus idle slots (wall x slots - all job slot-seconds).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import benchlib
from benchlib import ROOT, env_with_venv, figure, header, show, time_command

TARGET = 0.10

# benchmark sub-folder -> (category, what the job runs before its work: its start-up cost)
_TORCH_SETUP = "from segbench.engine.common import setup_torch; setup_torch(1{})"
KINDS = {
    "train": ("train", ["segbench.engine.train", "torch._dynamo"], _TORCH_SETUP.format("")),  # optimizers import _dynamo
    "evaluate": ("evaluate", ["segbench.engine.evaluate"], _TORCH_SETUP.format("")),
    "profile": ("profile", ["segbench.profiling"], _TORCH_SETUP.format(", deterministic=False")),
    "generate": ("data", ["segbench.data.synthetic"], ""),
    "prepare": ("data", ["segbench.data.prepare"], ""),
    "download": ("data", ["segbench.data.download"], ""),
    "verify": ("data", ["segbench.data.download"], ""),
    "extract": ("data", ["segbench.data.download"], ""),
    "mlflow": ("MLflow", ["segbench.tracking", "mlflow"], ""),
    "report": ("report", ["segbench.report.study", "segbench.report.figures", "segbench.report.tables"], ""),
}


def read_benchmarks(results: Path) -> list[dict]:
    """Every results/benchmarks/**.tsv: kind (first folder), key (rest of the path), s, mtime."""
    out = []
    root = results / "benchmarks"
    for p in sorted(root.rglob("*.tsv")):
        rel = p.relative_to(root)
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        s = float(rows[-1]["s"])  # the last attempt (a retried job appends rows)
        out.append({"kind": rel.parts[0], "key": str(rel.with_suffix("")), "rel": rel, "s": s,
                    "mtime": p.stat().st_mtime, "rows": len(rows)})
    return out


def run_dir_of(results: Path, job: dict) -> Path | None:
    """results/benchmarks/train/{dataset}/{model}/{loss}/s{seed}.tsv -> results/runs/..."""
    if job["kind"] in ("train", "evaluate"):
        return results / "runs" / Path(*job["rel"].with_suffix("").parts[1:])
    return None


def compute_seconds(results: Path, jobs: list[dict]) -> tuple[float, float, list[str]]:
    train = evaluate = 0.0
    notes = []
    for j in jobs:
        d = run_dir_of(results, j)
        if d is None:
            continue
        if j["kind"] == "train":
            rec = d / "run.json"
            if rec.exists():
                train += float(json.loads(rec.read_text()).get("train_seconds") or 0.0)
                j["compute"] = float(json.loads(rec.read_text()).get("train_seconds") or 0.0)
            else:
                notes.append(f"{rec} missing")
        else:
            rec = d / "metrics.json"
            m = json.loads(rec.read_text()) if rec.exists() else {}
            if "eval_seconds" in m:
                evaluate += float(m["eval_seconds"])
                j["compute"] = float(m["eval_seconds"])
            else:
                notes.append(f"{rec}: no eval_seconds")
    return train, evaluate, notes


# `segbench STEP` -> the benchmark folder of its rule
STEP_KIND = {"train": "train", "evaluate": "evaluate", "profile": "profile", "track": "mlflow",
             "track-init": "mlflow", "track-study": "mlflow", "report": "report", "sync": "mlflow"}


def forkserver_jobs(results: Path) -> tuple[dict[str, int], float | None]:
    """Jobs the fork server ran in the last Snakemake invocation logged in
    results/logs/forkserver.log, per benchmark folder, and the server's one-off import time."""
    log = results / "logs" / "forkserver.log"
    if not log.exists():
        return {}, None
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if "forkserver[" in line and ": imported " in line]
    if not starts:
        return {}, None
    block = lines[starts[-1]:]
    m = re.search(r"imported \d+ modules in ([\d.]+) s", block[0])
    counts: dict[str, int] = {}
    for line in block:
        m2 = re.search(r": pid \d+: segbench (\S+) -> ", line)
        if m2 and m2.group(1) in STEP_KIND:
            kind = STEP_KIND[m2.group(1)]
            counts[kind] = counts.get(kind, 0) + 1
    return counts, float(m.group(1)) if m else None


def startup_seconds(rounds: int) -> dict[str, float]:
    """Best wall time of ``python -c 'import segbench.cli, MODULES; SETUP'`` per step kind
    (SETUP: ``setup_torch`` for the torch steps, which turns on deterministic algorithms and so
    imports torch._inductor/_dynamo), and of ``python -m segbench --help`` and a bare ``python -c pass``."""
    py = sys.executable
    env = env_with_venv(PYTHONPATH=str(ROOT / "src"))
    out = {"python": time_command([py, "-c", "pass"], rounds, env=env),
           # a job the fork server runs: the client's start-up (its step's imports are the server's)
           "forkserver client": time_command([py, "-c", "import segbench.cli, segbench.forkserver"], rounds, env=env),
           "segbench --help": time_command([py, "-m", "segbench", "--help"], rounds, env=env),
           "import torch": time_command([py, "-c", "import torch"], rounds, env=env),
           "torch.use_deterministic_algorithms": time_command(
               [py, "-c", "import torch; torch.use_deterministic_algorithms(True, warn_only=True)"], rounds, env=env)}
    seen: dict[tuple, float] = {}
    for kind, (_, mods, setup) in KINDS.items():
        key = (*mods, setup)
        if key not in seen:
            code = "; ".join(["import segbench.cli", *(f"import {m}" for m in mods), *([setup] if setup else [])])
            seen[key] = time_command([py, "-c", code], rounds, env=env)
        out[kind] = seen[key]
    return out


def snakemake_log_wall(results: Path, first_start: float, last_end: float) -> tuple[float, str] | None:
    """Wall time of the Snakemake run that wrote these jobs, from its log file's name (start)
    and last write (end)."""
    logdir = results.parent / ".snakemake" / "log"
    best = None
    for p in sorted(logdir.glob("*.snakemake.log")):
        m = re.match(r"(\d{4}-\d\d-\d\dT\d{6}\.\d+)\.snakemake\.log", p.name)
        if not m:
            continue
        start = datetime.strptime(m.group(1), "%Y-%m-%dT%H%M%S.%f").timestamp()
        end = p.stat().st_mtime
        if start <= first_start + 1 and end >= last_end - 5:
            best = (end - start, str(p))
    return best


def run_pipeline(cores: str) -> tuple[Path, float, int]:
    """Clone this repository (HEAD) into a temporary folder and run the default pipeline there."""
    tmp = Path(tempfile.mkdtemp(prefix="segbench-overhead-"))
    repo = tmp / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
    exe = benchlib.venv_bin() / "snakemake"
    cmd = [str(exe) if exe.exists() else "snakemake", "--cores", cores]
    print(f"  running `{' '.join(cmd)}` in {repo} (HEAD of {ROOT}) ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env_with_venv(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (tmp / "snakemake.out").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"the pipeline failed ({proc.returncode}); see {tmp / 'snakemake.out'}")
    slots = os.cpu_count() if cores == "all" else int(cores)
    (repo / "bench_overhead_wall.json").write_text(json.dumps({"wall": wall, "cores": slots}))
    print(f"  done in {wall:.0f} s; results kept in {repo / 'results'} "
          f"(analyse again: bench/bench_overhead.py --results {repo / 'results'})", flush=True)
    return repo / "results", wall, slots


def train_threads(results: Path) -> int:
    try:
        import yaml

        cfg = yaml.safe_load((results.parent / "config.yaml").read_text())
        return int((cfg.get("train") or {}).get("threads") or 1)
    except (OSError, ValueError, TypeError, AttributeError):
        return 1


def main(argv=None) -> int:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--wall", type=float, help="the whole run's wall time in seconds")
    ap.add_argument("--cores", type=int, help="parallel slots of the run (default: recorded by --run, else this "
                                              "machine's CPU count)")
    ap.add_argument("--run", action="store_true", help="run the default pipeline in a temporary clone first")
    ap.add_argument("--run-cores", default="all")
    ap.add_argument("--rounds", type=int, help="start-up timing rounds (best of; default 3)")
    a = ap.parse_args(argv)
    rounds = a.rounds or (2 if a.quick else 3)
    header("Pipeline overhead")
    figs = []
    st = startup_seconds(rounds)
    figs.append(show(figure("start-up: python -m segbench --help", st["segbench --help"], "s",
                            note=f"bare python {st['python']:.2f} s", summary=True)))
    figs.append(show(figure("start-up of a training job (imports + setup_torch)", st["train"], "s", summary=True,
                            note=f"import torch {st['import torch']:.2f} s")))
    print("  start-up + imports per step kind: " + ", ".join(f"{k} {v:.2f} s" for k, v in st.items()
                                                             if k in KINDS))
    print(f"  of which: import torch {st['import torch']:.2f} s; import torch + "
          f"torch.use_deterministic_algorithms (imports torch._inductor/_dynamo) "
          f"{st['torch.use_deterministic_algorithms']:.2f} s")
    results, wall, slots = Path(a.results), a.wall, a.cores
    wall_how = "given (--wall)"
    if a.run:
        results, wall, slots = run_pipeline(a.run_cores)
        wall_how = "measured by --run"
    if not (results / "benchmarks").is_dir():
        print(f"  {results / 'benchmarks'} does not exist: the run predates the benchmark files. Run the pipeline "
              "(make run) or `bench/bench_overhead.py --run`, then analyse it.")
        figs.append(show(figure("overhead share of the default pipeline", None, "%", "<=", TARGET * 100,
                                note="no benchmark files")))
        benchlib.write_json(a.json, "bench_overhead", figs)
        return 0
    recorded = results.parent / "bench_overhead_wall.json"
    if wall is None and recorded.exists():
        rec = json.loads(recorded.read_text())
        wall, slots = rec["wall"], slots or rec.get("cores")
        wall_how = f"measured by --run ({recorded})"
    slots = slots or os.cpu_count() or 1
    jobs = read_benchmarks(results)
    first = min(j["mtime"] - j["s"] for j in jobs)
    last = max(j["mtime"] for j in jobs)
    if wall is None:
        log = snakemake_log_wall(results, first, last)
        if log:
            wall, wall_how = log[0], f"Snakemake log {log[1]}"
        else:
            wall, wall_how = last - first, "estimated from the benchmark files (no Snakemake start-up)"
    tthreads = train_threads(results)
    for j in jobs:
        # profiles take every core, and locally so does the MLflow store's creation (track.smk)
        j["threads"] = (slots if j["kind"] == "profile" or j["key"] == "mlflow/init"
                        else tthreads if j["kind"] == "train" else 1)
    forked, preload_s = forkserver_jobs(results)
    kinds_n: dict[str, int] = {}
    for j in jobs:
        kinds_n[j["kind"]] = kinds_n.get(j["kind"], 0) + 1
    if forked:
        print(f"  fork server (results/logs/forkserver.log): ran " + ", ".join(
            f"{n} of {kinds_n.get(k, 0)} {k}" for k, n in sorted(forked.items()))
            + f" jobs; its imports took {preload_s or 0:.1f} s once (beside the first jobs, in no slot)")
    else:
        print("  no fork server log: every job imported its modules itself")
    for j in jobs:  # start-up per job: the client's when the server ran (a share of) the rule's jobs
        share = min(1.0, forked.get(j["kind"], 0) / kinds_n[j["kind"]])
        own = st.get(j["kind"], st["python"])
        j["startup"] = share * st["forkserver client"] + (1 - share) * own
    train, evaluate, notes = compute_seconds(results, jobs)
    compute = train * tthreads + evaluate
    capacity = wall * slots
    print(f"  {results}: {len(jobs)} jobs; wall {wall:.0f} s ({wall_how}) x {slots} slots = {capacity:.0f} slot-s")
    for n in notes[:5]:
        print(f"  note: {n}")

    # per rule
    per: dict[str, dict] = {}
    for j in jobs:
        kind = j["kind"] if j["kind"] != "mlflow" else f"mlflow/{j['rel'].parts[1].split('.')[0]}"
        p = per.setdefault(kind, {"jobs": 0, "s": 0.0, "slot_s": 0.0, "startup": 0.0, "compute": 0.0})
        p["jobs"] += 1
        p["s"] += j["s"]
        p["slot_s"] += j["s"] * j["threads"]
        p["startup"] += j["startup"] * j["threads"]
        p["compute"] += j.get("compute", 0.0) * j["threads"]
    print(f"\n  {'rule':<16}{'jobs':>6}{'job s':>10}{'slot-s':>10}{'start-up':>10}{'compute':>10}{'rest':>10}")
    for k, p in sorted(per.items(), key=lambda kv: -kv[1]["slot_s"]):
        print(f"  {k:<16}{p['jobs']:>6}{p['s']:>10.1f}{p['slot_s']:>10.1f}{p['startup']:>10.1f}{p['compute']:>10.1f}"
              f"{p['slot_s'] - p['startup'] - p['compute']:>10.1f}")
    job_slot_s = sum(p["slot_s"] for p in per.values())
    print(f"  {'all jobs':<16}{len(jobs):>6}{sum(p['s'] for p in per.values()):>10.1f}{job_slot_s:>10.1f}")

    def cat(kinds, what="rest"):
        tot = 0.0
        for k, p in per.items():
            if k.split("/")[0] in kinds:
                tot += {"rest": p["slot_s"] - p["startup"] - p["compute"], "all": p["slot_s"] - p["startup"]}[what]
        return tot

    startup_total = sum(p["startup"] for p in per.values())
    cats = [
        ("Python start-up + imports (every job)", startup_total),
        ("train/evaluate jobs outside the timed loops", cat({"train", "evaluate"})),
        ("profiling (fps, MACs)", cat({"profile"}, "all")),
        ("data (generate, prepare)", cat({"generate", "prepare", "download", "verify", "extract"}, "all")),
        ("MLflow (init, track runs and studies)", cat({"mlflow"}, "all")),
        ("reports (tables, figures)", cat({"report"}, "all")),
        ("Snakemake itself + idle slots", capacity - job_slot_s),
    ]
    overhead = 1 - compute / capacity
    print(f"\n  compute: train {train:.0f} s x {tthreads} thread(s) + evaluation {evaluate:.1f} s = {compute:.0f} "
          f"slot-s "
          f"of {capacity:.0f}")
    figs.append(show(figure("overhead share = 1 - compute / (wall x slots)", overhead * 100, "%", "<=",
                            TARGET * 100, note=f"compute {compute:.0f} of {capacity:.0f} slot-s")))
    for name, v in cats:
        figs.append(show(figure(f"  {name}", v / capacity * 100, "%", note=f"{v:.0f} slot-s", summary=True)))
    useful = compute + cat({"profile"}, "all") + cat({"generate", "prepare"}, "all")
    figs.append(show(figure("  overhead share if profiling and data preparation count as work", (1 - useful / capacity)
                            * 100, "%")))
    figs.append(show(figure("  slot utilisation by jobs (all job slot-s / wall x slots)", job_slot_s / capacity * 100,
                            "%")))
    benchlib.write_json(a.json, "bench_overhead", figs, {"per_rule": per, "wall": wall, "slots": slots})
    return 0


if __name__ == "__main__":
    sys.exit(main())
