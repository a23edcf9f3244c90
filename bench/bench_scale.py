"""Scale of the workflow: time of ``snakemake -n`` on the full paper configuration (target
< 10 s) and on the default one, the number of jobs, and how it grows with seeds and datasets.

    python bench/bench_scale.py            # paper.yaml + 3 seed x 3 dataset variants
    python bench/bench_scale.py --quick    # paper.yaml + the 3 seed variants

Every ``snakemake -n`` runs in a fresh empty working directory (``-s REPO/Snakefile -d TMP``,
with ``--configfile``), so nothing already built under results/ hides jobs and the time is
that of a first run's DAG construction. Variants are temporary copies of
workflow/configs/paper.yaml with, for every study (and the cross study), ``seeds`` set to
[0], [0, 1, 2] or [0..4], and each study's ``datasets`` cut or extended to 1, 2 or all the
config's datasets (its own first, then the others in config order); ablation grids follow
their study's seeds and datasets. The jobs are counted from Snakemake's "Job stats" table and
fitted as jobs = a x runs + b (runs = train jobs) by least squares.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, env_with_venv, figure, header, show

import numpy as np
import yaml

TARGET_S = 10.0


def snakemake_cmd() -> list[str]:
    exe = benchlib.venv_bin() / "snakemake"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


def dry_run(repo: Path, configfile: Path) -> tuple[float, dict[str, int], str]:
    """(seconds, job counts per rule, output) of ``snakemake -n`` in a fresh directory."""
    with tempfile.TemporaryDirectory(prefix="segbench-bench-dryrun-") as wd:
        cmd = [*snakemake_cmd(), "-n", "-s", str(Path(repo).resolve() / "Snakefile"), "-d", wd, "--configfile",
               str(Path(configfile).resolve())]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=wd, env=env_with_venv(), capture_output=True, text=True)
        dt = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return dt, job_stats(out), out


def job_stats(text: str) -> dict[str, int]:
    """The "Job stats" table of a dry run: {rule: count, ..., "total": n}."""
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Job stats:")
    except StopIteration:
        raise ValueError("no 'Job stats:' table in the snakemake output") from None
    counts = {}
    for ln in lines[start + 1:]:
        m = re.match(r"^\s*([A-Za-z_][\w.-]*)\s+(\d+)\s*$", ln)
        if m:
            counts[m.group(1)] = int(m.group(2))
            if m.group(1) == "total":
                break
        elif counts:
            break
    if "total" not in counts:
        raise ValueError("the 'Job stats:' table has no total row")
    return counts


def variant(cfg: dict, seeds: list[int] | None, n_datasets: int | None) -> dict:
    """A copy of ``cfg`` with every study's seeds and/or number of datasets changed."""
    cfg = copy.deepcopy(cfg)
    names = list(cfg["datasets"])
    for study in cfg["studies"].values():
        if seeds is not None:
            study["seeds"] = list(seeds)
            for abl in (study.get("ablations") or {}).values():
                abl.pop("seeds", None)
        if n_datasets is not None:
            own = list(study["datasets"])
            study["datasets"] = (own + [d for d in names if d not in own])[:n_datasets]
            for abl in (study.get("ablations") or {}).values():
                abl.pop("datasets", None)
    if seeds is not None and cfg.get("cross_study"):
        cfg["cross_study"]["seeds"] = list(seeds)
    return cfg


CATEGORIES = {  # column -> rules
    "train": ("train",), "evaluate": ("evaluate",), "track_run": ("track_run",), "profile": ("profile",),
    "data": ("generate_synthetic", "download_archive", "verify_archive", "extract_archives", "prepare",
             "prepare_dataset"),
    "study": ("report", "track_study"),
}


def category(rule: str) -> str | None:
    for c, rules in CATEGORIES.items():
        if rule in rules:
            return c
    return "study" if rule.startswith("report") else None  # one report rule per study (report_<study>)


def row_of(counts: dict[str, int]) -> dict:
    row = {c: 0 for c in CATEGORIES}
    for r, n in counts.items():
        if r != "total" and category(r):
            row[category(r)] += n
    row["other"] = counts["total"] - sum(row.values())
    row["total"] = counts["total"]
    row["other_rules"] = {r: n for r, n in counts.items() if r != "total" and not category(r)}
    return row


def main(argv=None) -> int:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--repo", default=str(ROOT), help="the checkout whose Snakefile is used (default: this one)")
    ap.add_argument("--config", help="paper configuration (default: REPO/workflow/configs/paper.yaml)")
    ap.add_argument("--rounds", type=int, help="timed dry runs of paper.yaml and config.yaml (best of; default 3)")
    a = ap.parse_args(argv)
    repo = Path(a.repo).resolve()
    paper = Path(a.config) if a.config else repo / "workflow" / "configs" / "paper.yaml"
    rounds = a.rounds or (2 if a.quick else 3)
    header(f"Scale: snakemake -n (fresh working directory, best of {rounds})")
    figs = []
    times, counts = [], None
    for _ in range(rounds):
        dt, counts, _ = dry_run(repo, paper)
        times.append(dt)
    figs.append(show(figure("snakemake -n, paper.yaml", min(times), "s", "<", TARGET_S,
                            note=f"{counts['total']} jobs, {counts.get('train', 0)} runs")))
    figs.append(show(figure("  jobs of the paper configuration", counts["total"], "", summary=True,
                            note=f"{counts.get('train', 0)} runs")))
    dtimes = []
    for _ in range(rounds):
        dt, dcounts, _ = dry_run(repo, repo / "config.yaml")
        dtimes.append(dt)
    figs.append(show(figure("snakemake -n, config.yaml", min(dtimes), "s", "<", TARGET_S,
                            note=f"{dcounts['total']} jobs, {dcounts.get('train', 0)} runs")))

    base = yaml.safe_load(paper.read_text())
    seed_sets = {"[0]": [0], "[0,1,2]": [0, 1, 2], "[0..4]": [0, 1, 2, 3, 4]}
    n_all = len(base["datasets"])
    ds_sets = {"own": None} if a.quick else {"1": 1, "2": 2, f"all ({n_all})": n_all}
    rows = []
    with tempfile.TemporaryDirectory(prefix="segbench-bench-scale-") as tmp:
        for dname, nd in ds_sets.items():
            for sname, seeds in seed_sets.items():
                path = Path(tmp) / f"paper-s{len(seeds)}-d{dname.split()[0]}.yaml"
                path.write_text(yaml.safe_dump(variant(base, seeds, nd), sort_keys=False))
                dt, c, _ = dry_run(repo, path)
                rows.append({"seeds": sname, "datasets": dname, "seconds": dt, **row_of(c)})
    cols = ["train", "evaluate", "track_run", "profile", "data", "study", "other", "total"]
    print("\n  jobs of paper.yaml variants (datasets per study x seeds of every study); runs = train jobs")
    print(f"  {'datasets':<10} {'seeds':<8}" + "".join(f"{c:>10}" for c in cols) + f"{'-n s':>8}")
    for r in rows:
        print(f"  {r['datasets']:<10} {r['seeds']:<8}" + "".join(f"{r[c]:>10}" for c in cols)
              + f"{r['seconds']:>8.1f}")
    runs = np.array([r["train"] for r in rows], dtype=float)
    jobs = np.array([r["total"] for r in rows], dtype=float)
    if len(set(runs)) > 1:
        slope, icpt = np.polyfit(runs, jobs, 1)
        resid = jobs - (slope * runs + icpt)
        print(f"\n  least-squares fit over {len(rows)} variants: jobs = {slope:.2f} x runs + {icpt:.1f} "
              f"(max |residual| {np.abs(resid).max():.1f} jobs)")
        figs.append(show(figure("jobs = a x runs + b: a", float(slope), "", summary=True,
                                note=f"b = {icpt:.1f}, max |residual| {np.abs(resid).max():.1f}")))
        figs.append(show(figure("  b (jobs that do not grow with runs)", float(icpt), "", summary=True)))
        # seeds alone: profiles and data jobs are shared by seeds, so a = 3 exactly
        for dname in ds_sets:
            sub = [r for r in rows if r["datasets"] == dname]
            x = np.array([r["train"] for r in sub], float)
            y = np.array([r["total"] for r in sub], float)
            if len(set(x)) > 1:
                s, b = np.polyfit(x, y, 1)
                print(f"  datasets {dname}: seeds only, jobs = {s:.2f} x runs + {b:.1f}")
        exact = all(r["evaluate"] == r["train"] == r["track_run"] and r["other_rules"] == rows[0]["other_rules"]
                    for r in rows)
        if exact:
            print("  exactly: jobs = 3 x runs (train, evaluate, track_run) + profiles (one per model x classes x "
                  "input size, shared by seeds and studies) + data jobs (per dataset/archive, shared by every "
                  "study) + 2 x studies (report, track_study) + "
                  + " + ".join(f"{n} {r}" for r, n in rows[0]["other_rules"].items()))
        worst = max(rows, key=lambda r: r["seconds"])
        figs.append(show(figure("snakemake -n, largest paper.yaml variant", worst["seconds"], "s", "<", TARGET_S,
                                note=f"{worst['total']} jobs, {worst['train']} runs")))
    benchlib.write_json(a.json, "bench_scale", figs, {"variants": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
