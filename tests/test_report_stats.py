"""Intervals and verdicts in the report's tables, the claims tables and the robustness table,
on hand-written run directories whose per-image arrays make the answer known.

The per-image confusions are built so that the verdict follows by inspection: a run that is
better on every image (every resample too) "holds", an identical run is "not significant"
with the interval [0, 0], a run worse on every image is "reversed". The printed intervals are
compared with an independent call of segbench.stats on the same arrays.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segbench import stats
from segbench.report import claims, outputs, paper, robustness, tables

N = 6  # val images
TRAIN = {"epochs": 2, "batch_size": 2, "crop": [32, 32], "optimizer": "adamw", "lr": 0.001}
SYNTH = {"source": "synthetic", "labels": "trainId"}
CLASSES = ["road", "pole"]


def miou_of(conf: np.ndarray) -> float:
    """mIoU of one summed [C, C] confusion, written out per class (independent of stats.miou)."""
    ious = []
    for c in range(conf.shape[0]):
        union = conf[c, :].sum() + conf[:, c].sum() - conf[c, c]
        if union:
            ious.append(conf[c, c] / union)
    return float(np.mean(ious))


def confusions(kind: str, seed: int = 0) -> np.ndarray:
    """Per-image [N, 2, 2] confusions: "base" (IoU about 0.6-0.7 per image, varying), "better"
    (every image perfect), "worse" (every image below base), "same" (= base)."""
    out = []
    for i in range(N):
        err = 2 + (i + seed) % 3  # 2, 3 or 4 pixels wrong each way
        if kind in ("base", "same"):
            out.append([[10, err], [err, 10]])
        elif kind == "better":
            out.append([[10 + err, 0], [0, 10 + err]])
        elif kind == "worse":
            out.append([[10 - err, 2 * err], [2 * err, 10 - err]])
        else:
            raise ValueError(kind)
    return np.array(out, dtype=np.int64)


def boundary(kind: str) -> np.ndarray:
    """Per-image [N, 2, C] boundary counts: intersection / union per class."""
    out = []
    for i in range(N):
        union = 20 + i
        inter = {"better": union, "base": union // 2, "same": union // 2}[kind]
        out.append([[inter] * 2, [union] * 2])
    return np.array(out, dtype=np.int64)


def segments(kind: str) -> np.ndarray:
    """Per-image [N, 3, 2] segment counts (small, medium, large) x (ground truth, recalled)."""
    rec = {"better": 4, "base": 2, "same": 2}[kind]
    return np.array([[[4, rec], [3, min(rec, 3)], [2, min(rec, 2)]] for _ in range(N)], dtype=np.int64)


def make_run(root: Path, dataset: str, model: str, loss: str, seed: int, kind: str = "base", *,
             model_spec=None, loss_spec=None, params: int = 2_000_000, macs: int = 3_000_000_000,
             per_image: bool = True, extra: tuple[str, ...] = (), groups=None, train=None) -> dict:
    """A run dict as the report rule passes it, with run.json, history.csv, metrics.json, a
    profile and (``per_image``) confusion_per_image.npy; ``extra`` adds the boundary and
    segment arrays ("boundary", "segments", with the same kind)."""
    key = f"{dataset}/{model}/{loss}/s{seed}"
    d = root / "runs" / key
    d.mkdir(parents=True)
    prof = root / "profiles" / f"{dataset}-{model}.json"
    conf = confusions(kind, seed)
    spec = model_spec or {"arch": model}
    (d / "run.json").write_text(json.dumps({
        "run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed,
        "config": {"train": {**TRAIN, **(train or {})}}, "device": "cpu", "epochs": 2, "train_seconds": 1.0,
        "num_classes": 2, "class_names": CLASSES}))
    lines = ["epoch,train_loss,train_mIoU,train_aAcc,val_loss,val_mIoU,val_aAcc,lr,skipped_batches,epoch_seconds,time"]
    lines += [f"{e},1.0,0.5,0.8,1.0,0.5,0.8,0.001,0,1.0,{1_700_000_000 + e}" for e in (1, 2)]
    (d / "history.csv").write_text("\n".join(lines) + "\n")
    total = conf.sum(axis=0)
    m = {"run_key": key, "mIoU": miou_of(total), "aAcc": 0.9, "mAcc": 0.8, "mDice": 0.7,
         "IoU": [0.5, 0.5], "class_names": CLASSES, "num_images": N, "input_size": [32, 32]}
    if per_image:
        np.save(d / "confusion_per_image.npy", conf)
        m.update(mIoU_ci95=[m["mIoU"] - 0.05, m["mIoU"] + 0.05], thin_classes=["pole"])
    if "boundary" in extra:
        np.save(d / "boundary_per_image.npy", boundary(kind))
    if "segments" in extra:
        np.save(d / "segments_per_image.npy", segments(kind))
    (d / "metrics.json").write_text(json.dumps(m))
    if not prof.exists():
        prof.parent.mkdir(parents=True, exist_ok=True)
        prof.write_text(json.dumps({"model": model, "arch": spec["arch"], "num_classes": 2, "input_size": [32, 32],
                                    "params": params, "macs": macs, "size_mb": 8.0, "fps": 10.0, "fps_batch": 1,
                                    "device": "cpu", "threads": 1}))
    run = {"run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed, "run_dir": str(d),
           "profile": str(prof), "model_spec": spec, "loss_spec": loss_spec or {"type": loss},
           "dataset_spec": SYNTH}
    if groups is not None:
        run["groups"] = groups
    return run


def cells(md: str, first: str) -> list[str]:
    """The cells of the first markdown table line whose first cell is ``first``."""
    for line in md.splitlines():
        if line.startswith("|"):
            c = [x.strip() for x in line.strip().strip("|").split("|")]
            if c[0] == first:
                return c
    raise AssertionError(f"no row {first!r} in\n{md}")


DL = {"arch": "deeplabv3"}
PAC = {"arch": "deeplabv3_pac"}
BAL9 = {"type": "bal", "size": 9, "paper_row": "gauss-d4-s35-sg3-b0.5"}


def pac_bal_runs(root: Path, seeds=(0, 1), per_image: bool = True, extra=("boundary", "segments")) -> list[dict]:
    runs = []
    for s in seeds:
        runs += [
            make_run(root, "synthetic", "deeplabv3", "ce", s, "base", model_spec=DL, per_image=per_image,
                     extra=extra, params=3_000_000),
            # better on every image: holds (paper Δ +0.29)
            make_run(root, "synthetic", "deeplabv3_pac", "ce", s, "better", model_spec=PAC, per_image=per_image,
                     extra=extra, params=2_500_000),
            # identical to the baseline: not significant, [0, 0] (paper Δ +0.96)
            make_run(root, "synthetic", "deeplabv3", "bal", s, "same", model_spec=DL, loss_spec=BAL9,
                     per_image=per_image, extra=extra),
            # worse on every image: reversed (paper Δ +1.25)
            make_run(root, "synthetic", "deeplabv3_pac", "bal", s, "worse", model_spec=PAC, loss_spec=BAL9,
                     per_image=per_image, extra=()),
        ]
    return runs


def study(name: str, paper_key: str | None) -> dict:
    return {"name": name, "paper": paper_key, "description": f"the {name} study", "ablations": {}}


# --------------------------------------------------------------------------- paper tables


def test_paper_table_intervals_and_verdicts(tmp_path):
    runs = pac_bal_runs(tmp_path)
    out = tmp_path / "out"
    paper.write_paper_tables(study("pac_bal", "pac_bal"), runs, out)
    t3 = pd.read_csv(out / "tables" / "paper_pac_bal_t3.csv").set_index("row")
    assert t3.loc["pac", "verdict"] == "holds"
    assert t3.loc["deeplabv3-bal", "verdict"] == "not significant"
    # identical per seed, but the two sides draw their seeds independently: an interval around 0
    same = t3.loc["deeplabv3-bal"]
    assert same["ours_delta"] == 0 and same["ours_delta_low"] < 0 < same["ours_delta_high"]
    assert t3.loc["pac-bal", "verdict"] == "reversed"
    assert pd.isna(t3.loc["deeplabv3", "verdict"])  # the baseline: paper Δ 0, no verdict

    # the printed interval is stats.bootstrap_delta_seeds on the same arrays (an independent call)
    a = [confusions("better", s) for s in (0, 1)]
    b = [confusions("base", s) for s in (0, 1)]
    want = stats.bootstrap_delta_seeds(a, b, statistic=stats.miou)
    assert t3.loc["pac", "ours_delta_low"] == pytest.approx(100 * want["low"])
    assert t3.loc["pac", "ours_delta_high"] == pytest.approx(100 * want["high"])
    # the point Δ: the mean over seeds of the metrics.json mIoU differences (hand formula)
    point = np.mean([miou_of(x.sum(0)) - miou_of(y.sum(0)) for x, y in zip(a, b)])
    assert t3.loc["pac", "ours_delta"] == pytest.approx(100 * point)
    assert 0 < want["low"] <= point <= want["high"]

    md = (out / "tables" / "paper_pac_bal_t3.md").read_text()
    main, second = md.split("Against the paper's figures (other data, other scale)")
    c = cells(main, "ResNet + PAC")
    interval = f"[{100 * want['low']:+.2f}, {100 * want['high']:+.2f}]"
    assert f"{100 * point:+.2f} {interval}" in c and "holds" in c and "+0.29" in c
    assert "76.97" not in main  # the published mIoU lives in the secondary table ...
    assert "76.97" in cells(second, "ResNet + PAC")  # ... with the ours − paper differences
    assert stats.CI_METHOD in md


def test_paper_table_without_per_image_files(tmp_path):
    runs = pac_bal_runs(tmp_path, seeds=(0,), per_image=False)
    out = tmp_path / "out"
    paper.write_paper_tables(study("pac_bal", "pac_bal"), runs, out)
    t3 = pd.read_csv(out / "tables" / "paper_pac_bal_t3.csv").set_index("row")
    assert t3[["ours_delta_low", "ours_delta_high"]].isna().all().all()
    assert t3["verdict"].isna().all()
    assert t3.loc["pac", "ours_delta"] == pytest.approx(
        100 * (miou_of(confusions("better").sum(0)) - miou_of(confusions("base").sum(0))))
    md = (out / "tables" / "paper_pac_bal_t3.md").read_text()
    c = cells(md, "ResNet + PAC")
    assert c[4] == "—" and c[6] == "—"  # no mIoU interval, no verdict
    assert "no confusion_per_image.npy" in md and "nan" not in md.lower()


def test_paper_table_images_must_match(tmp_path):
    runs = pac_bal_runs(tmp_path, seeds=(0,))
    m = Path(runs[1]["run_dir"]) / "metrics.json"  # PAC: evaluated on 5 images, not 6
    d = json.loads(m.read_text())
    d["num_images"] = 5
    m.write_text(json.dumps(d))
    np.save(Path(runs[1]["run_dir"]) / "confusion_per_image.npy", confusions("better")[:5])
    out = tmp_path / "out"
    paper.write_paper_tables(study("pac_bal", "pac_bal"), runs, out)
    t3 = pd.read_csv(out / "tables" / "paper_pac_bal_t3.csv").set_index("row")
    assert pd.isna(t3.loc["pac", "ours_delta_low"]) and pd.isna(t3.loc["pac", "verdict"])
    # one seed, identical arrays: every resample gives 0
    assert t3.loc["deeplabv3-bal", "verdict"] == "not significant"
    assert t3.loc["deeplabv3-bal", "ours_delta_low"] == 0 and t3.loc["deeplabv3-bal", "ours_delta_high"] == 0
    assert "not evaluated on the same val images" in (out / "tables" / "paper_pac_bal_t3.md").read_text()


def test_gradnet_table_has_no_ours_minus_paper(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "gradnet", "dice", 0, "better"),
            make_run(tmp_path, "synthetic", "unet", "dice", 0, "base")]
    out = tmp_path / "out"
    paper.write_paper_tables(study("gradnet", "gradnet"), runs, out)
    t = pd.read_csv(out / "tables" / "paper_gradnet_t3.csv")
    assert not [c for c in t.columns if c.startswith("diff")]
    # the run's own interval (metrics.json's mIoU_ci95) beside its mIoU
    g = t.set_index("row").loc["gradnet"]
    assert g["ours_mIoU_low"] == pytest.approx(g["ours_mIoU_mean"] - 5)
    md = (out / "tables" / "paper_gradnet_t3.md").read_text()
    assert "diff (pts)" not in md and "88.6" in md  # the AUC beside ours, no difference


# --------------------------------------------------------------------------- summaries


def test_summary_intervals_and_old_runs(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "unet", "ce", s, "base") for s in (0, 1)]
    runs.append(make_run(tmp_path, "synthetic", "segnet", "ce", 0, "better", per_image=False))
    m = Path(runs[0]["run_dir"]) / "metrics.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), "mBIoU": 0.4321, "size_recall": {"small": 0.25}}))
    df = tables.collect_runs(runs)
    csv_path, md_path = tables.write_tables(df, tmp_path / "t")
    back = pd.read_csv(csv_path)
    assert back.loc[0, "mBIoU"] == pytest.approx(0.4321) and back["mBIoU"].isna().sum() == 2
    assert back.loc[0, "recall_small"] == pytest.approx(0.25) and math.isnan(back.loc[0, "recall_medium"])
    md = md_path.read_text()
    assert "43.21" in cells(md, "synthetic") and "25.00" in cells(md, "synthetic")
    base0 = miou_of(confusions("base", 0).sum(0))
    c = cells(md, "synthetic")  # the first run: unet / ce / 0
    assert f"[{100 * (base0 - 0.05):.2f}, {100 * (base0 + 0.05):.2f}]" in c
    old = [c.strip() for c in next(l for l in md.splitlines() if "| segnet" in l and "| 0 " in l).split("|")]
    assert old.count("—") == 3 and "nan" not in md.lower()  # no interval, no mBIoU, no small recall
    # the seed aggregate: the interval over seeds and images of tables.seeds_interval
    low, high = tables.seeds_interval([confusions("base", 0), confusions("base", 1)])
    assert f"[{100 * low:.2f}, {100 * high:.2f}]" in md
    assert stats.CI_METHOD in md


def test_seeds_interval_brackets_and_degenerates():
    # identical images and seeds: every resample gives the same mIoU, the interval is a point
    same = np.repeat(confusions("base")[:1], N, axis=0)
    low, high = tables.seeds_interval([same, same])
    assert low == pytest.approx(miou_of(same.sum(0))) and high == pytest.approx(low)
    # one seed: the image bootstrap of stats.bootstrap_ci (same draws, written independently)
    a, b = confusions("better"), confusions("worse")
    assert tables.seeds_interval([b]) == pytest.approx(stats.bootstrap_ci(b))
    # two seeds of very different quality: the seed-to-seed spread widens the interval far past
    # either seed's own image interval, and it holds the mean of the two
    low, high = tables.seeds_interval([a, b], n_boot=500)
    mean = (miou_of(a.sum(0)) + miou_of(b.sum(0))) / 2
    own = stats.bootstrap_ci(b)
    assert low <= mean <= high and high - low > 3 * (own[1] - own[0])


# --------------------------------------------------------------------------- claims


def by_claim(df: pd.DataFrame) -> dict:
    return {(r["claim"], r["metric"], r["a"]): r for _, r in df.iterrows()}


def test_claims_pac_bal(tmp_path):
    runs = pac_bal_runs(tmp_path, seeds=(0,))
    written = claims.write_claims(study("pac_bal", "pac_bal"), runs, tmp_path / "o")
    assert [p.name for p in written] == ["claims.csv", "claims.md"]
    t = by_claim(pd.read_csv(tmp_path / "o" / "tables" / "claims.csv"))
    # BAL on DeepLabV3 = the baseline's arrays: not significant, [0, 0]
    r = t[("BAL improves boundaries", "mBIoU", "deeplabv3 / bal")]
    assert r["verdict"] == "not significant" and r["low"] == 0 and r["high"] == 0 and r["seeds"] == 1
    # PAC + BAL has no boundary file: not measured, no number
    r = t[("BAL improves boundaries", "mBIoU", "deeplabv3_pac / bal")]
    assert r["verdict"] == "not measured" and pd.isna(r["delta"]) and "boundary" in r["note"]
    # thin parts (the "pole" class): PAC + BAL worse on every image -> reversed
    r = t[("BAL improves thin parts", "thin_mIoU", "deeplabv3_pac / bal")]
    assert r["verdict"] == "reversed"
    want = stats.bootstrap_delta(confusions("worse"), confusions("better"),
                                 statistic=lambda c: stats.class_miou(c, [1]))
    assert r["low"] == pytest.approx(want["low"]) and r["high"] == pytest.approx(want["high"])
    # PAC recalls every small segment, DeepLabV3 half of them: +0.5 exactly, holds
    r = t[("PAC captures objects at several scales", "recall_small", "deeplabv3_pac / ce")]
    assert r["delta"] == pytest.approx(0.5) and r["verdict"] == "holds"
    r = t[("PAC captures objects at several scales", "recall_large", "deeplabv3_pac / ce")]
    assert r["delta"] == pytest.approx(0.0) and r["verdict"] == "not significant"
    # parameters from the profiles, exact: 2.5 M - 3.0 M, claimed fewer
    r = t[("PAC captures several scales with fewer parameters", "params", "deeplabv3_pac / ce")]
    assert r["delta"] == pytest.approx(-0.5) and r["verdict"] == "holds" and r["unit"] == "M"
    md = (tmp_path / "o" / "tables" / "claims.md").read_text()
    assert "-0.50 M" in md and stats.CI_METHOD in md and "nan" not in md.lower()


def test_claims_missing_run(tmp_path):
    runs = [r for r in pac_bal_runs(tmp_path, seeds=(0,)) if r["model"] != "deeplabv3_pac"]
    raw = claims.build_claims(study("pac_bal", "pac_bal"), tables.collect_runs(runs))
    missing = raw[raw["verdict"] == "missing run"]
    assert len(missing) == 3 + 3 + 1  # PAC + BAL's three claims, PAC's three sizes, its params
    assert missing["delta"].isna().all()
    assert all("ResNet + PAC" in n for n in missing["note"])


def test_claims_gradnet(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "gradnet", "dice", 0, "better", extra=("boundary",), macs=5_000_000_000),
            make_run(tmp_path, "synthetic", "unet", "dice", 0, "base", extra=("boundary",), macs=2_000_000_000)]
    raw = claims.build_claims(study("gradnet", "gradnet"), tables.collect_runs(runs))
    t = {r["metric"]: r for _, r in raw.iterrows()}
    assert set(t) == {"mBIoU", "mIoU"}
    assert t["mBIoU"]["verdict"] == "holds" and t["mIoU"]["verdict"] == "holds"
    want = stats.bootstrap_delta(boundary("better"), boundary("base"), statistic=stats.biou)
    assert t["mBIoU"]["delta"] == pytest.approx(want["delta"]) and t["mBIoU"]["low"] == pytest.approx(want["low"])
    assert t["mBIoU"]["delta_GMACs"] == pytest.approx(3.0)


def test_claims_frm(tmp_path):
    frm = {"arch": "van_fpn_frm"}
    runs = [make_run(tmp_path, "synthetic", "van_fpn_frm", "ce_contrastive", 0, "worse", model_spec=frm,
                     macs=1_500_000_000),
            make_run(tmp_path, "synthetic", "van_fpn_ppm", "ce_contrastive", 0, "base",
                     model_spec={"arch": "van_fpn_ppm"}, macs=1_000_000_000)]
    raw = claims.build_claims(study("frm", "frm"), tables.collect_runs(runs))
    ppm, dappm = raw.iloc[0], raw.iloc[1]
    assert ppm["claim"] == "FRM beats PPM at similar cost" and ppm["verdict"] == "reversed"
    assert ppm["delta_GMACs"] == pytest.approx(0.5)
    assert dappm["verdict"] == "missing run" and "DAPPM" in dappm["note"]


def test_claims_unet_segnet_with_and_without_robustness(tmp_path):
    # as the report rule passes them: the same model spec, the augmentations in run.json's train protocol
    plain = {"arch": "unet_xception", "params": {"width": 16}}
    runs = [make_run(tmp_path, "synthetic", "unet_xception", "ce", 0, "base", model_spec=plain),
            make_run(tmp_path, "synthetic", "unet_xception_aug", "ce", 0, "better", model_spec=plain,
                     train={"augment": ["flip", "blur", "rain", "snow"]})]
    s = study("unet_segnet", "unet_segnet")
    raw = claims.build_claims(s, tables.collect_runs(runs))
    t = {r["metric"]: r for _, r in raw.iterrows()}
    assert t["mIoU"]["claim"] == "augmentation improves generalisation" and t["mIoU"]["verdict"] == "holds"
    assert t["mIoU"]["a"] == "unet_xception_aug / ce" and t["mIoU"]["b"] == "unet_xception / ce"
    assert t["corrupted_mIoU"]["verdict"] == "not measured" and "eval.corruptions" in t["corrupted_mIoU"]["note"]

    # corrupted IoU counts [K=2, S=2, N, 2, C] (intersection, union per class): the augmented run keeps
    # its clean quality, the plain one drops to "worse" under every corruption and severity -> holds
    def iou_counts(conf):  # [N, C, C] -> [N, 2, C], by hand
        tp = np.stack([np.diag(c) for c in conf])
        return np.stack([tp, conf.sum(1) + conf.sum(2) - tp], axis=1)

    for run, kind in ((runs[0], "worse"), (runs[1], "better")):
        np.save(Path(run["run_dir"]) / claims.CORRUPTED, np.stack([np.stack([iou_counts(confusions(kind))] * 2)] * 2))
    raw = claims.build_claims(s, tables.collect_runs(runs))
    r = raw[raw["metric"] == "corrupted_mIoU"].iloc[0]
    assert r["verdict"] == "holds"
    # K and S all equal: the mean over corruptions and severities is the mIoU of one of them
    assert r["delta"] == pytest.approx(miou_of(confusions("better").sum(0)) - miou_of(confusions("worse").sum(0)))


# --------------------------------------------------------------------------- robustness and outputs


def test_robustness_table(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "unet", "ce", 0), make_run(tmp_path, "synthetic", "unet", "ce", 1)]
    paths = robustness.write_robustness(runs, tmp_path / "o", title="study x")
    assert "not evaluated" in paths[1].read_text() and "eval.corruptions" in paths[1].read_text()
    (Path(runs[0]["run_dir"]) / "robustness.json").write_text(json.dumps({
        "clean_mIoU": 0.6, "corruptions": {"fog": {"1": 0.5, "2": 0.3}, "jpeg": {"1": 0.55, "2": 0.45}},
        "mean_corrupted_mIoU": 0.45, "relative": 0.75, "severities": [1, 2], "parameters": {}}))
    paths = robustness.write_robustness(runs, tmp_path / "o2")
    t = pd.read_csv(paths[0])
    assert t.loc[0, "fog"] == pytest.approx(0.4) and t.loc[0, "jpeg"] == pytest.approx(0.5)
    assert t.loc[0, "fog_s2"] == pytest.approx(0.3) and math.isnan(t.loc[1, "fog"])
    md = paths[1].read_text()
    assert cells(md, "synthetic")[4:9] == ["40.00", "50.00", "45.00", "60.00", "0.750"]
    assert "synthetic/unet/ce/s1" in md  # the run without robustness.json is named


def test_declared_outputs_and_captions():
    runs = [{"dataset": "synthetic", "run_key": "x", "model": "gradnet", "loss": "dice"}]
    out = outputs.study_outputs(study("g", "gradnet"), runs)
    assert {"tables/claims.md", "tables/claims.html", "tables/robustness.csv", "tables/robustness.html"} <= set(out)
    plain = outputs.study_outputs(study("p", None), runs)
    assert "tables/robustness.md" in plain and "tables/claims.md" not in plain
    assert outputs.study_output_kind("tables/claims.html") == "claims"
    assert outputs.study_output_kind("tables/robustness.html") == "robustness"
