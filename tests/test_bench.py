"""Smoke tests of the benchmark scripts' pure functions (bench/): parsing, bookkeeping and
the reference implementations they compare with. No timing is asserted anywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import benchlib  # noqa: E402
import bench_eval  # noqa: E402
import bench_scale  # noqa: E402
import bench_step  # noqa: E402
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


def test_step_bench_runs_both_loops_on_the_same_run(tiny_dataset, tmp_path):
    """bench_step's two loops run an epoch each on the tiny dataset (segbench's through
    engine/train.py's own parts, with its checkpoint), and its specs come from config.yaml."""
    from conftest import tiny_run_spec

    for name in bench_step.MODELS:
        spec = bench_step.run_spec(bench_step.ROOT / "config.yaml", name)
        assert spec["model"]["name"] == name and spec["loss"]["type"] == "ce"
    spec = bench_step.timed_spec(tiny_run_spec(), 2)
    assert spec["train"]["epochs"] == spec["train"]["val_every"] == 3
    seg, run = bench_step.segbench_epochs(spec, tiny_dataset, tmp_path / "run")
    bare = bench_step.bare_epochs(spec, tiny_dataset)
    times = bench_step.interleaved({"segbench": seg, "bare": bare}, rounds=1, warmup=0)
    assert set(times) == {"segbench", "bare"} and all(len(v) == 1 for v in times.values())
    state = torch.load(run.ckpt_path, weights_only=True)
    assert state["epoch"] == 1 and "val_mIoU" not in state["history"][0]  # no validation timed


def test_load_check_says_whether_the_machine_was_busy(capsys):
    check = benchlib.LoadCheck(limit=2.0, load_per_cpu=1e9)  # nothing counts as busy
    check.print_before()
    got = check.verdict()
    out = capsys.readouterr().out
    assert got["too_busy"] is False and "machine quiet enough" in out and "load average" in out
    got = benchlib.LoadCheck(limit=-1.0, load_per_cpu=-1.0).verdict()  # everything does
    assert got["too_busy"] is True and "MACHINE TOO BUSY" in capsys.readouterr().out
    assert benchlib.load_figure(got)["summary"] is True
