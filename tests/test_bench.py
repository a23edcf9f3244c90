"""Smoke tests of the benchmark scripts' pure functions (bench/): parsing, bookkeeping and
the reference implementations they compare with. No timing is asserted anywhere."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import bench_eval  # noqa: E402
import bench_overhead  # noqa: E402
import bench_scale  # noqa: E402
import run_all  # noqa: E402

DRY_RUN_TAIL = """\
rule all:
    jobid: 0
Job stats:
job                   count
------------------  -------
generate_synthetic        2
train                    11
evaluate                 11
profile                   9
all                       1
total                    34

Reasons:
    (check individual jobs above for details)
"""


def test_figure_status_and_format():
    assert benchlib.figure("x", 2.5, "x", ">=", 2.0)["status"] == "PASS"
    assert benchlib.figure("x", 1.5, "x", ">=", 2.0)["status"] == "FAIL"
    assert benchlib.figure("x", 3.0, "s", "<", 10.0)["status"] == "PASS"
    assert benchlib.figure("x", 1.0)["status"] == "info"
    assert benchlib.figure("x", None, "%", "<=", 10.0)["status"] == "SKIP"
    assert benchlib.fmt_value(12.345, "%") == "12.3%"
    assert benchlib.fmt_value(1062, "") == "1,062"
    assert benchlib.fmt_value(None) == "-"
    assert benchlib.figure("x", 1.0, summary=True)["summary"] is True
    busy = benchlib.cpu_busy(0.05)
    assert busy is None or 0.0 <= busy <= 1.0


def test_job_stats_parsing():
    counts = bench_scale.job_stats("noise\n" + DRY_RUN_TAIL)
    assert counts == {"generate_synthetic": 2, "train": 11, "evaluate": 11, "profile": 9, "all": 1, "total": 34}
    row = bench_scale.row_of(counts)
    assert row["train"] == 11 and row["data"] == 2 and row["other"] == 1 and row["total"] == 34
    with pytest.raises(ValueError):
        bench_scale.job_stats("Nothing to be done.")


def test_scale_variants_change_every_study():
    cfg = {"datasets": {"a": {}, "b": {}, "c": {}},
           "studies": {"s": {"datasets": ["b"], "seeds": [0],
                             "ablations": {"g": {"table": "bal_grid", "models": ["m"], "losses": ["l"],
                                                 "seeds": [7], "datasets": ["b"]}}},
                       "t": {"datasets": ["a", "c"]}},
           "cross_study": {"datasets": ["a"]}}
    v = bench_scale.variant(cfg, [0, 1, 2], 2)
    assert v["studies"]["s"]["datasets"] == ["b", "a"] and v["studies"]["t"]["datasets"] == ["a", "c"]
    assert v["studies"]["s"]["seeds"] == [0, 1, 2] and v["studies"]["t"]["seeds"] == [0, 1, 2]
    assert "seeds" not in v["studies"]["s"]["ablations"]["g"]  # follows its study's
    assert v["cross_study"]["seeds"] == [0, 1, 2]
    assert bench_scale.variant(cfg, None, 1)["studies"]["t"]["datasets"] == ["a"]
    assert cfg["studies"]["s"]["seeds"] == [0]  # the original is untouched


def test_proposed_confusion_matrix_matches_segbench():
    from segbench.metrics import confusion_matrix

    pred, target = bench_eval.make_batch(2, 16, 32, classes=5)
    ref = confusion_matrix(pred, target, 5)
    assert torch.equal(bench_eval.where_extra_bin(pred, target, 5), ref)
    assert torch.equal(bench_eval.per_class_loop(pred, target, 5), ref)
    assert (bench_eval.numpy_bincount(pred.numpy(), target.numpy(), 5) == ref.numpy()).all()
    assert (bench_eval.histogram2d(pred.numpy(), target.numpy(), 5) == ref.numpy()).all()
    bad = target.clone()
    bad[0, 0, 0] = 5  # neither a class nor ignore_index
    with pytest.raises(ValueError):
        bench_eval.where_extra_bin(pred, bad, 5)
    with pytest.raises(ValueError):
        bench_eval.where_extra_bin(torch.full_like(pred, 7), target, 5)


def test_overhead_bookkeeping(tmp_path):
    results = tmp_path / "results"
    now = time.time()

    def bench(rel: str, s: float, end: float):
        p = results / "benchmarks" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("s\th:m:s\tmax_rss\n" f"{s}\t0:00:{int(s):02d}\t100\n")
        os.utime(p, (end, end))

    bench("train/syn/unet/ce/s0.tsv", 50.0, now - 20)
    bench("evaluate/syn/unet/ce/s0.tsv", 6.0, now - 10)
    bench("mlflow/runs/syn/unet/ce/s0.tsv", 4.0, now)
    run = results / "runs" / "syn" / "unet" / "ce" / "s0"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"train_seconds": 45.0}))
    (run / "metrics.json").write_text(json.dumps({"eval_seconds": 2.5}))
    jobs = bench_overhead.read_benchmarks(results)
    assert sorted(j["kind"] for j in jobs) == ["evaluate", "mlflow", "train"]
    train, evaluate, notes = bench_overhead.compute_seconds(results, jobs)
    assert (train, evaluate, notes) == (45.0, 2.5, [])
    first = min(j["mtime"] - j["s"] for j in jobs)
    assert first == pytest.approx(now - 70)
    log = tmp_path / ".snakemake" / "log"
    log.mkdir(parents=True)
    start = time.strftime("%Y-%m-%dT%H%M%S", time.localtime(now - 75)) + ".000000"
    p = log / f"{start}.snakemake.log"
    p.write_text("done\n")
    os.utime(p, (now + 1, now + 1))
    wall, path = bench_overhead.snakemake_log_wall(results, first, now)
    assert wall == pytest.approx(76, abs=1) and path == str(p)


def test_bal_verdict_parsing():
    (f,) = run_all.bal_figures("...\nslowest weight map: 3.41% of the step; meets the 10% target\n")
    assert f["value"] == 3.41 and f["status"] == "PASS"
    assert run_all.bal_figures("crashed")[0]["status"] == "SKIP"


def test_utilisation_groups_convolutions_by_weight_shape():
    import bench_utilisation as bu

    assert bu.group_of("aten::mkldnn_convolution", [[2, 64, 8, 8], [64, 1, 3, 3]]) == "conv grouped"
    assert bu.group_of("aten::mkldnn_convolution", [[2, 64, 8, 8], [32, 64, 1, 1]]) == "conv 1x1"
    assert bu.group_of("aten::convolution_backward", [[2, 32, 8, 8], [2, 64, 8, 8], [32, 64, 3, 3]]) == "conv kxk"
    assert bu.group_of("aten::native_batch_norm") == "batch norm"
    assert bu.group_of("aten::upsample_bilinear2d") == "pool/resample"
    assert bu.group_of("aten::mul") == "element-wise/other"


def test_model_bench_presets_and_formats_follow_config_yaml():
    """bench_models.CPU_PRESETS mirrors config.yaml's widths, and the utilisation benchmark
    measures each model in the memory format config.yaml trains it in on a CPU."""
    import bench_models as bm

    from segbench.config import load_config

    cfg = load_config(bm.CONFIG)
    assert {n: cfg["models"][n].get("params", {}) for n in bm.CPU_PRESETS} == bm.CPU_PRESETS
    formats = bm.config_channels_last(list(bm.CPU_PRESETS))
    for name, channels_last in formats.items():
        setting = (cfg["models"][name].get("train") or {}).get("channels_last", cfg["train"]["channels_last"])
        assert channels_last is (setting is True), name
