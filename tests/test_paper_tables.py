"""The papers' tables (segbench.report.paper) on hand-written run directories.

Every published figure asserted here is typed from the papers' tables again (not read from the
registry), and every mean, std, difference and Δ is worked out by hand in the comments.
The run directories follow docs/outputs.md; tests/test_report.py's ``make_run`` fixes the
profile per model name and writes no training protocol, so this file has its own helper.
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from segbench.report import paper, tables

SQRT2 = math.sqrt(2)
TRAIN = {"epochs": 5, "batch_size": 4, "crop": [128, 256], "optimizer": "adamw", "lr": 0.002}
SYNTH = {"source": "synthetic", "labels": "trainId"}
PROFILE = {"params": 2_500_000, "macs": 3_400_000_000, "fps": 12.5, "size_mb": 10.0}


def make_run(root: Path, dataset: str, model: str, loss: str, seed: int, miou: float, *,
             groups=None, model_spec=None, loss_spec=None, dataset_spec=SYNTH, profile=None,
             history=None, files: bool = True) -> dict:
    """A run dict as the report rule passes it; with ``files`` its directory and profile."""
    key = f"{dataset}/{model}/{loss}/s{seed}"
    d = root / "runs" / key
    prof_path = root / "profiles" / f"{dataset}-{model}.json"
    run = {"run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed,
           "run_dir": str(d), "profile": str(prof_path),
           "model_spec": model_spec or {"arch": model, "params": {"width": 16}},
           "loss_spec": loss_spec or {"type": loss}, "dataset_spec": dataset_spec}
    if groups is not None:
        run["groups"] = groups
    if not files:
        return run
    d.mkdir(parents=True)
    hist = history or [(e, 1.0 / e, 0.1 * e, 0.2 * e, 1.1 / e, 0.09 * e, 0.19 * e) for e in range(1, 6)]
    (d / "run.json").write_text(json.dumps({
        "run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": seed,
        "config": {"train": TRAIN}, "device": "cpu", "epochs": len(hist), "train_seconds": 9.0,
        "num_classes": 2, "class_names": ["a", "b"]}))
    # the documented columns: the given 7, then lr, skipped_batches, epoch_seconds, time
    lines = ["epoch,train_loss,train_mIoU,train_aAcc,val_loss,val_mIoU,val_aAcc,lr,skipped_batches,epoch_seconds,time"]
    lines += [",".join("" if v is None else str(v) for v in (*row, 0.001, 0, 1.8, 1_700_000_000 + row[0]))
              for row in hist]
    (d / "history.csv").write_text("\n".join(lines) + "\n")
    (d / "metrics.json").write_text(json.dumps({
        "run_key": key, "mIoU": miou, "aAcc": 0.9, "mAcc": 0.7, "mDice": 0.6, "IoU": [miou, miou],
        "class_names": ["a", "b"], "num_images": 4, "input_size": [128, 256]}))
    if not prof_path.exists():
        prof_path.parent.mkdir(parents=True, exist_ok=True)
        p = {**PROFILE, **(profile or {})}
        prof_path.write_text(json.dumps({
            "model": model, "arch": run["model_spec"]["arch"], "num_classes": 2, "input_size": [128, 256],
            "params": p["params"], "macs": p["macs"], "size_mb": p["size_mb"], "fps": p["fps"],
            "fps_batch": 1, "device": "cpu", "threads": 2}))
    return run


def study(name: str, paper_key, ablations=None) -> dict:
    return {"name": name, "paper": paper_key, "description": f"the {name} study", "ablations": ablations or {}}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True)


def cells(md: str, first: str, second: str | None = None) -> list[str]:
    """The cells of the markdown table line whose first cell is ``first`` (and second ``second``)."""
    for line in md.splitlines():
        if line.startswith("|"):
            c = [x.strip() for x in line.strip().strip("|").split("|")]
            if c[0] == first and (second is None or c[1] == second):
                return c
    raise AssertionError(f"no row {first!r} / {second!r} in\n{md}")


def split(md: str) -> tuple[str, str]:
    """A paper table's markdown: our table (our runs, intervals, Δ, verdicts, our costs) and the
    secondary table of the published figures beside ours, under its own heading."""
    main, _, against = md.partition("Against the paper's figures (")
    assert against, f"no secondary table in\n{md}"
    return main, against


def nan_list(series) -> list:
    return [None if pd.isna(v) else v for v in series]


# --------------------------------------------------------------------------- defaults


def test_match_defaults_are_the_constructors_defaults():
    from segbench.losses import loss_class
    from segbench.models import model_class

    bal = inspect.signature(loss_class("bal")).parameters
    assert {k: bal[k].default for k in ("kernel", "down", "size", "sigma", "beta")} == paper.BAL_DEFAULTS
    pac = inspect.signature(model_class("deeplabv3_pac")).parameters
    assert tuple(pac["rates"].default) == tuple(paper.PAC_DEFAULTS["rates"])
    assert pac["merge"].default == paper.PAC_DEFAULTS["merge"]
    # the ids of the defaults
    assert paper.bal_id(**paper.BAL_DEFAULTS) == "gauss-d4-s35-sg3-b0.5"
    assert paper.pac_id(**paper.PAC_DEFAULTS) == "r1-3-5-7-9-sum"


def test_registry_rows_are_unique_per_table():
    for t in paper.TABLES.values():
        ids = [r.id for r in t.rows]
        keys = [(r.model, r.loss) for r in t.rows]
        assert len(set(ids)) == len(ids) and len(set(keys)) == len(keys), t.id


def test_parameter_matching_with_defaults_and_override():
    t1, t2 = paper.TABLES["pac_bal_t1"], paper.TABLES["pac_bal_t2"]
    dl = {"arch": "deeplabv3", "params": {"depth": 50}}

    def run(model_spec, loss_spec):
        return {"run_key": "x", "model_spec": model_spec, "loss_spec": loss_spec}

    # a bare {type: bal} is the paper's best row: gaussian, down 4, size 35, sigma 3.0, beta 0.5
    assert paper.match_row(t1, run(dl, {"type": "bal"})).id == "gauss-d4-s35-sg3-b0.5"
    # only sigma given: the other keys take the defaults
    assert paper.match_row(t1, run(dl, {"type": "bal", "sigma": 2.0})).id == "gauss-d4-s35-sg2-b0.5"
    # a linear kernel ignores sigma
    r = run(dl, {"type": "bal", "kernel": "linear", "down": 2, "size": 15, "beta": 0.3, "sigma": 7})
    assert paper.match_row(t1, r).id == "lin-d2-s15-b0.3"
    # 9 taps stand for no row ... unless paper_row says which
    assert paper.match_row(t1, run(dl, {"type": "bal", "size": 9})) is None
    r = run(dl, {"type": "bal", "size": 9, "kernel": "linear", "paper_row": "lin-d4-s35-b0.5"})
    assert paper.match_row(t1, r).id == "lin-d4-s35-b0.5"
    # Table 1 is DeepLabV3's: a PAC model with BAL is not one of its rows
    assert paper.match_row(t1, run({"arch": "deeplabv3_pac"}, {"type": "bal"})) is None
    # PAC: defaults rates 1,3,5,7,9 and merge sum
    assert paper.match_row(t2, run({"arch": "deeplabv3_pac"}, {"type": "ce"})).id == "r1-3-5-7-9-sum"
    pac = {"arch": "deeplabv3_pac", "params": {"merge": "concat"}}
    assert paper.match_row(t2, run(pac, {"type": "ce"})).id == "r1-3-5-7-9-concat"
    pac = {"arch": "deeplabv3_pac", "params": {"rates": [6, 12, 18, 24], "merge": "concat"}}
    assert paper.match_row(t2, run(pac, {"type": "ce"})).id == "r6-12-18-24-concat"
    pac = {"arch": "deeplabv3_pac", "params": {"rates": [2, 4]}, "paper_row": "r6-12-18-sum"}
    assert paper.match_row(t2, run(pac, {"type": "ce"})).id == "r6-12-18-sum"
    # Table 2's rows are trained with CE
    assert paper.match_row(t2, run({"arch": "deeplabv3_pac"}, {"type": "bal"})) is None


# --------------------------------------------------------------------------- GraDNet


def test_gradnet_table3_rows_figures_and_seeds(tmp_path):
    runs = [
        make_run(tmp_path, "synthetic", "gradnet", "dice", 0, 0.40, model_spec={"arch": "gradnet"},
                 profile={"params": 5_530_000, "macs": 1_234_000_000, "fps": 41.25, "size_mb": 22.12}),
        make_run(tmp_path, "synthetic", "gradnet", "dice", 1, 0.43, model_spec={"arch": "gradnet"}),
        make_run(tmp_path, "synthetic", "unet", "dice", 0, 0.30),
        make_run(tmp_path, "synthetic", "segnet", "dice", 0, 0.25),
    ]
    s = study("gradnet", "gradnet")
    written = paper.write_paper_tables(s, runs, tmp_path / "out")
    rel = sorted(str(p.relative_to(tmp_path / "out")) for p in written)
    assert rel == sorted(paper.expected_paper_outputs(s, runs))
    assert rel == ["tables/paper_gradnet_t3.csv", "tables/paper_gradnet_t3.md", "tables/paper_tables.md"]

    t = read(tmp_path / "out" / "tables" / "paper_gradnet_t3.csv")
    assert list(t["method"]) == ["GraDNet", "Deep Snake", "UNet", "PANet", "FCIS", "ESE", "STS", "(not in paper)"]
    # the GraDNet paper's Table 3 (Cityscapes, 8 categories): AUC / fps / MB (MB as Table 2's)
    assert nan_list(t["paper_AUC"]) == [88.6, 82.4, 78.4, 86.5, 79.4, 68.6, 63.2, None]
    assert nan_list(t["paper_fps"]) == [28.6, 14.6, 18.6, 17.5, 16.2, 18.7, 16.5, None]
    assert nan_list(t["paper_MB"]) == [22.1, 30.6, 28.7, 32.6, 26.1, 28.8, 32.1, None]
    g = t.iloc[0]
    assert g["ours"] == "gradnet / dice" and g["seeds"] == 2
    # mIoU 40 and 43 %: mean 41.5, sample std 3 / sqrt(2); the paper's AUC is another measure: no diff
    assert g["ours_mIoU_mean"] == pytest.approx(41.5)
    assert g["ours_mIoU_std"] == pytest.approx(3 / SQRT2)
    assert not [c for c in t.columns if c.startswith("diff")]
    # costs from the seed-0 profile: 1.234 G MACs, 5.53 M params
    assert g["ours_GMACs"] == pytest.approx(1.234) and g["ours_params_M"] == pytest.approx(5.53)
    assert g["ours_fps"] == pytest.approx(41.25) and g["ours_MB"] == pytest.approx(22.12)
    u = t.iloc[2]
    assert u["ours"] == "unet / dice" and u["seeds"] == 1 and math.isnan(u["ours_mIoU_std"])
    snake = t.iloc[1]
    assert snake["seeds"] == 0 and math.isnan(snake["ours_mIoU_mean"])
    extra = t.iloc[7]
    assert extra["ours"] == "segnet / dice" and not extra["in_paper"]
    assert extra["ours_mIoU_mean"] == pytest.approx(25.0)

    md = (tmp_path / "out" / "tables" / "paper_gradnet_t3.md").read_text()
    assert "AUC" in md and "mIoU" in md and "Jia" in md
    head = md.split("|")[0]  # the scale statements stand above the table
    assert "Cityscapes, 8 categories" in head and "crop 500x500" in head
    assert "`synthetic`" in head and "128x256" in head and "5 epochs" in head and "batch 4" in head
    assert "width=16" in head and "cpu, 2 threads" in head
    main, against = split(md)
    # ours first: mIoU, its interval ("—": these runs have no per-image files), our fps
    assert cells(main, "GraDNet")[:6] == ["GraDNet", "gradnet / dice", "2", "41.50 ± 2.12", "—", "41.2"]
    assert cells(main, "Deep Snake")[1:5] == ["—", "—", "—", "—"]
    # the published AUC beside our mIoU, never subtracted; fps and MB as published
    assert cells(against, "GraDNet")[:6] == ["GraDNet", "gradnet / dice", "41.50", "88.6", "28.6", "22.1"]
    assert "diff" not in against.split("\n\n")[1]  # no difference column in the table
    assert cells(against, "Deep Snake")[3] == "82.4" and cells(against, "Deep Snake")[4:6] == ["14.6", "30.6"]
    # our run in no paper row: its paper cells are dashes, never "nan" or empty
    extra_md = cells(against, "(not in paper)")
    assert extra_md[1] == "segnet / dice" and extra_md[3:6] == ["—", "—", "—"]
    assert "nan" not in md.lower() and "||" not in md.replace(" ", "")
    index = (tmp_path / "out" / "tables" / "paper_tables.md").read_text()
    assert "## GraDNet — Table 3" in index and "the gradnet study" in index


def test_gradnet_routes_ade20k_to_table2(tmp_path):
    ade = {"source": "ade20k", "labels": "trainId"}
    cs8 = {"source": "cityscapes", "labels": "category"}
    runs = [make_run(tmp_path, "ade", "gradnet", "dice", 0, 0.20, model_spec={"arch": "gradnet"}, dataset_spec=ade),
            make_run(tmp_path, "cityscapes8", "unet", "dice", 0, 0.50, dataset_spec=cs8)]
    s = study("gradnet", "gradnet")
    written = paper.write_paper_tables(s, runs, tmp_path / "o")
    assert sorted(p.name for p in written) == ["paper_gradnet_t2.csv", "paper_gradnet_t2.md",
                                               "paper_gradnet_t3.csv", "paper_gradnet_t3.md", "paper_tables.md"]
    t2 = read(tmp_path / "o" / "tables" / "paper_gradnet_t2.csv")
    assert list(t2["method"]) == ["GraDNet", "Deep Snake", "UNet", "PANet", "FCIS", "ESE", "STS"]
    assert list(t2["paper_AUC"]) == [73.8, 67.4, 68.6, 70.2, 66.7, 65.3, 69.0]
    assert list(t2["paper_fps"]) == [20.1, 12.3, 16.4, 13.6, 13.2, 15.1, 14.7]
    assert list(t2["paper_MB"]) == [22.1, 30.6, 28.7, 32.6, 26.1, 28.8, 32.1]
    # a figure as the paper prints it: STS's AUC "69.0", not "69"
    md2 = (tmp_path / "o" / "tables" / "paper_gradnet_t2.md").read_text()
    assert cells(split(md2)[1], "STS")[3:6] == ["69.0", "14.7", "32.1"]
    assert "diff_mIoU" not in t2.columns and t2.iloc[2]["seeds"] == 0
    t3 = read(tmp_path / "o" / "tables" / "paper_gradnet_t3.csv")
    assert t3.iloc[2]["ours"] == "unet / dice" and t3.iloc[0]["seeds"] == 0
    assert "ADE20K" in (tmp_path / "o" / "tables" / "paper_gradnet_t2.md").read_text().split("|")[0]


def test_two_datasets_in_one_table_get_suffixes(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "unet", "dice", 0, 0.3, files=False),
            make_run(tmp_path, "synthetic8", "unet", "dice", 0, 0.4, files=False,
                     dataset_spec={"source": "synthetic", "labels": "category"})]
    assert paper.expected_paper_outputs(study("gradnet", "gradnet"), runs) == [
        "tables/paper_gradnet_t3_synthetic.csv", "tables/paper_gradnet_t3_synthetic.md",
        "tables/paper_gradnet_t3_synthetic8.csv", "tables/paper_gradnet_t3_synthetic8.md",
        "tables/paper_tables.md"]


# --------------------------------------------------------------------------- PAC + BAL

PAC_ABLATIONS = {"bal_grid": {"table": "bal_grid", "description": "Table 1"},
                 "pac_variants": {"table": "pac_variants", "description": "Table 2"}}
DL = {"arch": "deeplabv3", "params": {"depth": 50, "width": 16}}
PAC = {"arch": "deeplabv3_pac", "params": {"depth": 50, "width": 16}}
BAL9 = {"type": "bal", "size": 9, "paper_row": "gauss-d4-s35-sg3-b0.5"}


def pac_bal_runs(root: Path, files: bool = True, baseline: bool = True) -> list[dict]:
    mk = lambda *a, **k: make_run(root, "synthetic", *a, files=files, **k)  # noqa: E731
    runs = []
    if baseline:  # DeepLabV3 + CE: 50.0 and 52.0 %
        runs += [mk("deeplabv3", "ce", 0, 0.50, groups=["main"], model_spec=DL),
                 mk("deeplabv3", "ce", 1, 0.52, groups=["main"], model_spec=DL)]
    runs += [
        # ResNet + PAC (default rates and merge): 51.0, 53.5 -> paired Δ 1.0, 1.5
        mk("deeplabv3_pac", "ce", 0, 0.51, groups=["main", "pac_variants"], model_spec=PAC),
        mk("deeplabv3_pac", "ce", 1, 0.535, groups=["main", "pac_variants"], model_spec=PAC),
        # DeepLabV3 + BAL (9 taps standing for the best row): 51.5, 53.0 -> Δ 1.5, 1.0
        mk("deeplabv3", "bal", 0, 0.515, groups=["main", "bal_grid"], model_spec=DL, loss_spec=BAL9),
        mk("deeplabv3", "bal", 1, 0.53, groups=["main", "bal_grid"], model_spec=DL, loss_spec=BAL9),
        # ResNet + PAC + BAL: seed 0 only, 52.25 -> Δ 2.25 (the one common seed)
        mk("deeplabv3_pac", "bal", 0, 0.5225, groups=["main"], model_spec=PAC, loss_spec=BAL9),
        # Table 1: linear by paper_row (50.4 -> Δ 0.4); by parameters with defaults
        mk("deeplabv3", "bal_linear", 0, 0.504, groups=["bal_grid"], model_spec=DL,
           loss_spec={"type": "bal", "kernel": "linear", "size": 9, "paper_row": "lin-d4-s35-b0.5"}),
        mk("deeplabv3", "bal_g2", 0, 0.497, groups=["bal_grid"], model_spec=DL,
           loss_spec={"type": "bal", "down": 2, "size": 15, "sigma": 1.0, "beta": 0.3}),
        mk("deeplabv3", "bal_sg2", 0, 0.506, groups=["bal_grid"], model_spec=DL,
           loss_spec={"type": "bal", "sigma": 2.0}),
        mk("deeplabv3", "bal_s9", 0, 0.49, groups=["bal_grid"], model_spec=DL, loss_spec={"type": "bal", "size": 9}),
        # Table 2: rates 6,12,18 concat by parameters (49.9 -> Δ -0.1); an override (50.3 -> Δ 0.3)
        mk("pac_r6", "ce", 0, 0.499, groups=["pac_variants"],
           model_spec={"arch": "deeplabv3_pac", "params": {"rates": [6, 12, 18], "merge": "concat"}}),
        mk("pac_odd", "ce", 0, 0.503, groups=["pac_variants"],
           model_spec={"arch": "deeplabv3_pac", "params": {"rates": [2, 4]}, "paper_row": "r1-3-5-concat"}),
    ]
    return runs


def test_pac_bal_tables(tmp_path):
    runs = pac_bal_runs(tmp_path)
    s = study("pac_bal", "pac_bal", PAC_ABLATIONS)
    out = tmp_path / "out"
    written = paper.write_paper_tables(s, runs, out)
    assert [str(p.relative_to(out)) for p in written] == paper.expected_paper_outputs(s, runs) == [
        "tables/paper_pac_bal_t3.csv", "tables/paper_pac_bal_t3.md",
        "tables/paper_pac_bal_t1.csv", "tables/paper_pac_bal_t1.md",
        "tables/paper_pac_bal_t2.csv", "tables/paper_pac_bal_t2.md", "tables/paper_tables.md"]

    # Table 3: VOC 2012 val mIoU 76.68 / 76.97 / 77.64 / 77.93
    t3 = read(out / "tables" / "paper_pac_bal_t3.csv")
    assert list(t3["method"]) == ["DeepLabV3", "ResNet + PAC", "DeepLabV3 + BAL", "ResNet + PAC + BAL"]
    assert list(t3["paper_mIoU"]) == [76.68, 76.97, 77.64, 77.93]
    # the paper's Δ: 76.97 - 76.68, 77.64 - 76.68, 77.93 - 76.68
    assert list(t3["paper_delta"]) == pytest.approx([0.0, 0.29, 0.96, 1.25])
    assert list(t3["ours"]) == ["deeplabv3 / ce", "deeplabv3_pac / ce", "deeplabv3 / bal", "deeplabv3_pac / bal"]
    assert list(t3["seeds"]) == [2, 2, 2, 1]
    assert list(t3["ours_mIoU_mean"]) == pytest.approx([51.0, 52.25, 52.25, 52.25])
    assert t3.iloc[0]["ours_mIoU_std"] == pytest.approx(2 / SQRT2)
    assert t3.iloc[0]["diff_mIoU"] == pytest.approx(51.0 - 76.68)
    assert list(t3["ours_delta"]) == pytest.approx([0.0, 1.25, 1.25, 2.25])
    assert t3.iloc[1]["ours_delta_std"] == pytest.approx(0.5 / SQRT2)
    assert math.isnan(t3.iloc[3]["ours_delta_std"])
    assert list(t3["diff_delta"]) == pytest.approx([0.0, 1.25 - 0.29, 1.25 - 0.96, 2.25 - 1.25])

    # Table 1: 14 rows, in the paper's order, with the published Δ
    t1 = read(out / "tables" / "paper_pac_bal_t1.csv")
    assert len(t1) == 15 and list(t1["in_paper"]) == [True] * 14 + [False]
    assert list(t1["row"][:14]) == [
        "lin-d1-s15-b0.3", "lin-d2-s15-b0.3", "lin-d2-s15-b0.5", "lin-d4-s15-b0.5", "lin-d4-s25-b0.5",
        "lin-d4-s35-b0.5", "gauss-d1-s15-sg1-b0.3", "gauss-d2-s15-sg1-b0.3", "gauss-d4-s15-sg1-b0.3",
        "gauss-d4-s25-sg1-b0.3", "gauss-d4-s35-sg1-b0.3", "gauss-d4-s35-sg1-b0.5", "gauss-d4-s35-sg2-b0.5",
        "gauss-d4-s35-sg3-b0.5"]
    assert list(t1["paper_delta"][:14]) == [-0.35, -0.12, 0.15, 0.32, 0.58, 0.68,
                                            -0.82, -0.43, -0.14, 0.13, 0.24, 0.62, 0.81, 0.96]
    by_row = t1.set_index("row")
    # linear by paper_row: 50.4 - 50.0 (seed 0 only) = 0.4; diff 0.4 - 0.68
    assert by_row.loc["lin-d4-s35-b0.5", "ours"] == "deeplabv3 / bal_linear"
    assert by_row.loc["lin-d4-s35-b0.5", "ours_delta"] == pytest.approx(0.4)
    assert by_row.loc["lin-d4-s35-b0.5", "diff_delta"] == pytest.approx(0.4 - 0.68)
    # by parameters: gaussian d2 s15 σ1 β0.3 -> 49.7 - 50.0 = -0.3
    assert by_row.loc["gauss-d2-s15-sg1-b0.3", "ours"] == "deeplabv3 / bal_g2"
    assert by_row.loc["gauss-d2-s15-sg1-b0.3", "ours_delta"] == pytest.approx(-0.3)
    # sigma 2 with the other keys defaulted
    assert by_row.loc["gauss-d4-s35-sg2-b0.5", "ours"] == "deeplabv3 / bal_sg2"
    # the best row: (51.5 - 50) and (53 - 52) -> mean 1.25, std 0.5 / sqrt 2
    best = by_row.loc["gauss-d4-s35-sg3-b0.5"]
    assert best["ours"] == "deeplabv3 / bal" and best["seeds"] == 2
    assert best["ours_delta"] == pytest.approx(1.25) and best["ours_delta_std"] == pytest.approx(0.5 / SQRT2)
    assert best["diff_delta"] == pytest.approx(1.25 - 0.96)
    assert by_row.loc["lin-d1-s15-b0.3", "seeds"] == 0 and math.isnan(by_row.loc["lin-d1-s15-b0.3", "ours_delta"])
    extra = t1.iloc[14]
    assert extra["method"] == "(not in paper)" and extra["ours"] == "deeplabv3 / bal_s9"
    assert extra["ours_delta"] == pytest.approx(-1.0) and math.isnan(extra["paper_delta"])
    assert "deeplabv3 / ce" not in set(t1["ours"].dropna())  # the baseline is no row of Table 1

    # Table 2: 7 rows with the published Δ
    t2 = read(out / "tables" / "paper_pac_bal_t2.csv")
    assert list(t2["row"]) == ["r6-12-18-concat", "r6-12-18-24-concat", "r6-12-18-sum", "r1-3-5-concat",
                               "r1-3-5-7-9-concat", "r1-3-5-7-9-11-concat", "r1-3-5-7-9-sum"]
    assert list(t2["paper_delta"]) == [-0.12, -0.18, 0.10, 0.14, 0.21, 0.11, 0.29]
    by_row = t2.set_index("row")
    assert by_row.loc["r6-12-18-concat", "ours"] == "pac_r6 / ce"
    assert by_row.loc["r6-12-18-concat", "ours_delta"] == pytest.approx(-0.1)
    assert by_row.loc["r6-12-18-concat", "diff_delta"] == pytest.approx(-0.1 + 0.12)
    assert by_row.loc["r1-3-5-concat", "ours"] == "pac_odd / ce"  # paper_row beats the parameters
    assert by_row.loc["r1-3-5-concat", "ours_delta"] == pytest.approx(0.3)
    assert by_row.loc["r1-3-5-7-9-sum", "ours"] == "deeplabv3_pac / ce"
    assert by_row.loc["r1-3-5-7-9-sum", "ours_delta"] == pytest.approx(1.25)

    md = (out / "tables" / "paper_pac_bal_t3.md").read_text()
    head = md.split("|")[0]
    assert "VOC 2012 val" in head and "ResNet-101" in head and "crop 513" in head and "30k iterations" in head
    assert "`synthetic`" in head and "depth=50" in head
    main, against = split(md)
    # ours first: no per-image files here, so Δ ± the std of the paired differences and no verdict
    c = cells(main, "ResNet + PAC")
    assert c[1:8] == ["deeplabv3_pac / ce", "2", "52.25 ± 1.77", "—", "+1.25 ± 0.35", "—", "+0.29"]
    c = cells(against, "ResNet + PAC")
    assert c[1:8] == ["deeplabv3_pac / ce", "52.25", "76.97", "-24.72", "+1.25", "+0.29", "+0.96"]
    index = (out / "tables" / "paper_tables.md").read_text()
    assert index.index("Table 3") < index.index("Table 1") < index.index("Table 2")


def test_pac_bal_missing_baseline(tmp_path):
    runs = pac_bal_runs(tmp_path, baseline=False)
    out = tmp_path / "out"
    paper.write_paper_tables(study("pac_bal", "pac_bal", PAC_ABLATIONS), runs, out)
    for name in ("t3", "t1", "t2"):
        t = read(out / "tables" / f"paper_pac_bal_{name}.csv")
        assert t["ours_delta"].isna().all() and t["diff_delta"].isna().all()
        assert t["paper_delta"].notna().sum() >= 4  # the paper's Δ is still there
        md = (out / "tables" / f"paper_pac_bal_{name}.md").read_text()
        assert "DeepLabV3 + CE run on `synthetic` is missing" in md
    t3 = read(out / "tables" / "paper_pac_bal_t3.csv")
    assert t3.iloc[0]["seeds"] == 0 and t3.iloc[1]["ours_mIoU_mean"] == pytest.approx(52.25)


def test_unknown_paper_row_names_run_id_and_valid_ids(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "deeplabv3", "bal", 0, 0.5, model_spec=DL,
                     loss_spec={"type": "bal", "paper_row": "gauss-d4-s99"})]
    s = study("pac_bal", "pac_bal", PAC_ABLATIONS)
    for call in (lambda: paper.write_paper_tables(s, runs, tmp_path / "o"),
                 lambda: paper.expected_paper_outputs(s, runs)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "synthetic/deeplabv3/bal/s0" in msg and "gauss-d4-s99" in msg
        assert "gauss-d4-s35-sg3-b0.5" in msg and "lin-d1-s15-b0.3" in msg
    bad_model = [make_run(tmp_path, "synthetic", "m", "ce", 0, 0.5, files=False,
                          model_spec={"arch": "deeplabv3_pac", "paper_row": "r1-2-3-sum"})]
    with pytest.raises(ValueError, match=r"synthetic/m/ce/s0.*r1-2-3-sum.*r6-12-18-concat"):
        paper.expected_paper_outputs(s, bad_model)
    # an id of another paper's table is valid: it matches no row here
    ok = [make_run(tmp_path, "synthetic", "n", "ce", 0, 0.5, files=False,
                   model_spec={"arch": "unet", "paper_row": "panet"})]
    assert paper.expected_paper_outputs(s, ok)


# --------------------------------------------------------------------------- FRM


def test_frm_tables(tmp_path):
    cs = {"source": "cityscapes", "labels": "trainId"}
    bdd = {"source": "bdd100k", "labels": "trainId"}
    frm_prof = {"params": 16_000_000, "macs": 200_000_000_000}
    runs = [
        make_run(tmp_path, "cityscapes", "van_fpn_frm", "ce_contrastive", 0, 0.70, dataset_spec=cs,
                 model_spec={"arch": "van_fpn_frm"}, profile=frm_prof),
        make_run(tmp_path, "cityscapes", "van_fpn_ppm", "ce_contrastive", 0, 0.69, dataset_spec=cs,
                 model_spec={"arch": "van_fpn_ppm"}),
        make_run(tmp_path, "bdd", "van_fpn_frm", "ce_contrastive", 0, 0.55, dataset_spec=bdd,
                 model_spec={"arch": "van_fpn_frm"}),
    ]
    s = study("frm", "frm")
    out = tmp_path / "out"
    written = paper.write_paper_tables(s, runs, out)
    assert [str(p.relative_to(out)) for p in written] == paper.expected_paper_outputs(s, runs) == [
        "tables/paper_frm_t1.csv", "tables/paper_frm_t1.md", "tables/paper_frm_t2.csv", "tables/paper_frm_t2.md",
        "tables/paper_frm_t3.csv", "tables/paper_frm_t3.md", "tables/paper_tables.md"]
    t1 = read(out / "tables" / "paper_frm_t1.csv")
    # the FRM paper's Table 1, in the paper's row order (Ours last), then our extra run
    assert len(t1) == 12 and list(t1["in_paper"]) == [True] * 11 + [False]
    assert list(t1["method"][:11]) == [
        "SFNet (ResNet-18)", "SegFormer (MiT-B1, 1024x1024)", "NRD (ResNet-50)", "BiAlignNet (DFNet2)",
        "SFANet (ResNet-18)", "IFA (ResNet-50, 1024x1024)", "RTFormer-Base", "DDRNet-23", "DDRNet-39",
        "PIDNet-M", "Ours (VAN-S)"]
    published_t1 = [  # val, test, GFLOPs (MACs), params M; None: "-" or no figure in the paper
        (None, 78.9, 243.87, 12.87),   # SFNet ResNet-18, 2048x1024
        (78.5, None, 243.7, 13.7),     # SegFormer MiT-B1, 1024x1024
        (None, 78.9, 234.6, 36.6),     # NRD ResNet-50, 2048x1024
        (78.7, 77.1, 108.73, 19.2),    # BiAlignNet DFNet2, 2048x1024
        (None, 78.1, 99.6, 14.6),      # SFANet ResNet-18, 2048x1024
        (78.0, None, 186.9, 27.8),     # IFA ResNet-50, 1024x1024
        (79.3, None, None, 16.8),      # RTFormer-Base, 2048x1024, no GFLOPs
        (79.5, 79.4, 143.1, 20.1),     # DDRNet-23
        (80.4, 80.4, 281.2, 32.3),     # DDRNet-39
        (79.9, 79.8, 178.1, 28.5),     # PIDNet-M
        (80.8, 80.4, 214.82, 16.48),   # Ours VAN-S, 2048x1024
    ]
    cols = ["paper_mIoU_val", "paper_mIoU_test", "paper_GMACs", "paper_params_M"]
    assert [tuple(nan_list(t1.iloc[i][cols])) for i in range(11)] == published_t1
    # PPM is a row of Table 2, not of Table 1: an extra row saying where it is
    assert t1.iloc[11]["ours"] == "van_fpn_ppm / ce_contrastive" and not t1.iloc[11]["in_paper"]
    assert t1.iloc[11]["method"] == "(not in this table; see Table 2)"
    assert nan_list(t1.iloc[11][cols]) == [None] * 4
    ours = t1.iloc[10]
    assert ours["ours"] == "van_fpn_frm / ce_contrastive"
    assert ours["diff_mIoU"] == pytest.approx(70 - 80.8)  # against the val figure
    assert ours["ours_GMACs"] == pytest.approx(200.0) and ours["ours_params_M"] == pytest.approx(16.0)
    assert (t1["seeds"][:10] == 0).all()  # the peers are the paper's only
    t2 = read(out / "tables" / "paper_frm_t2.csv")
    assert list(t2["method"]) == ["FRM", "PPM", "DAPPM"]
    assert list(t2["paper_mIoU_test"]) == [80.4, 79.7, 79.1]
    assert list(t2["paper_GMACs"]) == [214.82, 213.21, 214.81]
    assert list(t2["paper_params_M"]) == [16.48, 15.23, 15.98]
    assert t2.iloc[1]["ours"] == "van_fpn_ppm / ce_contrastive"
    assert t2.iloc[1]["diff_mIoU"] == pytest.approx(69 - 79.7) and t2.iloc[2]["seeds"] == 0
    t3 = read(out / "tables" / "paper_frm_t3.csv")
    # the FRM paper's Table 3 (BDD100K val, 1280x720), in the paper's row order
    assert list(t3["method"]) == ["HANet (ResNet-101)", "SFNet (ResNet-18)", "PFnet (ResNet-50)", "Ours (VAN-S)"]
    assert list(t3["paper_mIoU"]) == [64.56, 60.6, 62.7, 64.9]
    assert nan_list(t3["paper_GMACs"]) == [None, 107.34, 302.1, 94.55]
    assert nan_list(t3["paper_params_M"]) == [65.4, 12.87, 33.0, 16.48]
    assert t3.iloc[3]["ours"] == "van_fpn_frm / ce_contrastive" and t3.iloc[3]["diff_mIoU"] == pytest.approx(55 - 64.9)
    md = (out / "tables" / "paper_frm_t1.md").read_text()
    assert "multiply-accumulates" in md and "2048x1024" in md.split("|")[0]
    main, against = split(md)
    assert cells(main, "Ours (VAN-S)")[1:9] == ["van_fpn_frm / ce_contrastive", "1", "70.00", "—", "12.5", "10.0",
                                                "200.00", "16.00"]
    assert cells(against, "Ours (VAN-S)")[1:6] == ["van_fpn_frm / ce_contrastive", "70.00", "80.8", "80.4", "-10.80"]
    # the paper's cells as printed: "-" of the paper is our dash; IFA's "78.0" keeps its digit
    assert cells(against, "IFA (ResNet-50, 1024x1024)")[3:5] == ["78.0", "—"]
    assert cells(against, "RTFormer-Base")[6:8] == ["—", "16.8"]
    assert "nan" not in md.lower()
    md3 = split((out / "tables" / "paper_frm_t3.md").read_text())[1]
    assert cells(md3, "PFnet (ResNet-50)")[5:7] == ["302.1", "33.0"]
    assert cells(md3, "HANet (ResNet-101)")[5:7] == ["—", "65.4"]


# --------------------------------------------------------------------------- U-Net vs SegNet


def test_unet_segnet_final_epoch_table(tmp_path):
    # epoch, train_loss, train_mIoU, train_aAcc, val_loss, val_mIoU, val_aAcc
    h0 = [(1, 1.2, 0.30, 0.70, 1.3, 0.25, 0.65), (2, 0.8, 0.50, 0.85, 0.9, 0.45, 0.80)]
    h1 = [(1, 1.1, 0.32, 0.72, 1.2, 0.27, 0.66), (2, 0.6, 0.54, 0.87, 0.7, 0.47, 0.82)]
    # SegNet: epoch 3 not validated -> its val figures are those of epoch 2
    h2 = [(1, 1.5, 0.2, 0.6, 1.6, 0.18, 0.55), (2, 1.0, 0.4, 0.8, 1.1, 0.35, 0.75),
          (3, 0.9, 0.42, 0.81, None, None, None)]
    runs = [make_run(tmp_path, "synthetic", "unet_xception", "ce", 0, 0.45, history=h0),
            make_run(tmp_path, "synthetic", "unet_xception", "ce", 1, 0.47, history=h1),
            make_run(tmp_path, "synthetic", "segnet_mobilenet", "ce", 0, 0.35, history=h2)]
    s = study("unet_segnet", "unet_segnet")
    out = tmp_path / "out"
    written = paper.write_paper_tables(s, runs, out)
    assert [str(p.relative_to(out)) for p in written] == paper.expected_paper_outputs(s, runs) == [
        "tables/paper_unet_segnet_final.csv", "tables/paper_unet_segnet_final.md", "tables/paper_tables.md"]
    t = read(out / "tables" / "paper_unet_segnet_final.csv").set_index("model")
    u = t.loc["unet_xception"]
    assert u["seeds"] == 2 and u["train_epoch"] == 2 and u["val_epoch"] == 2
    # train loss 0.8, 0.6 -> 0.7 ± 0.2 / sqrt 2; val mIoU 45, 47 % -> 46 ± 2 / sqrt 2
    assert u["train_loss_mean"] == pytest.approx(0.7) and u["train_loss_std"] == pytest.approx(0.2 / SQRT2)
    assert u["val_mIoU_mean"] == pytest.approx(46.0) and u["val_mIoU_std"] == pytest.approx(2 / SQRT2)
    assert u["train_aAcc_mean"] == pytest.approx(86.0) and u["val_loss_mean"] == pytest.approx(0.8)
    sg = t.loc["segnet_mobilenet"]
    assert sg["train_epoch"] == 3 and sg["val_epoch"] == 2
    assert sg["train_mIoU_mean"] == pytest.approx(42.0) and sg["val_mIoU_mean"] == pytest.approx(35.0)
    assert sg["val_aAcc_mean"] == pytest.approx(75.0) and math.isnan(sg["val_mIoU_std"])
    md = (out / "tables" / "paper_unet_segnet_final.md").read_text()
    assert "Figure 8" in md and "no published figure" in md
    assert cells(md, "unet_xception")[:6] == ["unet_xception", "ce", "2", "2", "0.7000 ± 0.1414", "0.8000 ± 0.1414"]


# --------------------------------------------------------------------------- outputs


def test_no_paper_writes_nothing(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "unet", "ce", 0, 0.5)]
    assert paper.write_paper_tables(study("cross_study", None), runs, tmp_path / "o") == []
    assert paper.expected_paper_outputs(study("cross_study", None), runs) == []
    assert not (tmp_path / "o").exists()


def test_expected_outputs_need_no_run_file(tmp_path):
    s = study("pac_bal", "pac_bal", PAC_ABLATIONS)
    before = paper.expected_paper_outputs(s, pac_bal_runs(tmp_path, files=False))
    runs = pac_bal_runs(tmp_path)
    assert paper.expected_paper_outputs(s, runs) == before
    Path(runs[2]["run_dir"], "metrics.json").unlink()
    assert paper.expected_paper_outputs(s, runs) == before  # a missing file changes nothing
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        paper.write_paper_tables(s, runs, tmp_path / "o")
    # an ablation the study spec does not list fills no table
    s_off = study("pac_bal", "pac_bal", {"bal_grid": PAC_ABLATIONS["bal_grid"]})
    assert "tables/paper_pac_bal_t2.csv" not in paper.expected_paper_outputs(s_off, runs)
    # a study of a paper with no run at all still gets its index
    assert paper.expected_paper_outputs(s, []) == ["tables/paper_tables.md"]


def test_collect_runs_carries_groups_and_specs(tmp_path):
    r = make_run(tmp_path, "synthetic", "deeplabv3", "bal", 0, 0.5, groups=["main", "bal_grid"],
                 model_spec=DL, loss_spec=BAL9)
    bare = make_run(tmp_path, "synthetic", "unet", "ce", 0, 0.4)
    del bare["model_spec"], bare["loss_spec"], bare["dataset_spec"]
    df = tables.collect_runs([r, bare]).set_index("model")
    assert df.loc["deeplabv3", "groups"] == ["main", "bal_grid"]
    assert df.loc["deeplabv3", "loss_spec"] == BAL9 and df.loc["deeplabv3", "model_spec"] == DL
    assert df.loc["deeplabv3", "dataset_spec"] == SYNTH and df.loc["deeplabv3", "train"] == TRAIN
    assert df.loc["unet", "groups"] == ["main"]  # the default
    assert df.loc["unet", "model_spec"] is None  # run.json has no resolved model here


def test_unknown_paper_is_an_error(tmp_path):
    runs = [make_run(tmp_path, "synthetic", "unet", "ce", 0, 0.5, files=False)]
    with pytest.raises(ValueError, match=r"paper 'nope'.*gradnet, pac_bal, frm, unet_segnet"):
        paper.expected_paper_outputs(study("x", "nope"), runs)
    with pytest.raises(ValueError, match=r"paper 'nope'"):
        paper.write_paper_tables(study("x", "nope"), runs, tmp_path / "o")


def test_paper_tables_import_no_torch_mlflow_or_matplotlib():
    src = Path(__file__).resolve().parents[1] / "src"
    code = (f"import sys; sys.path.insert(0, {str(src)!r}); import segbench.report.paper; "
            "bad = [m for m in ('torch', 'mlflow', 'matplotlib') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_declared_outputs_import_no_pandas_or_matplotlib():
    """The Snakefile declares every study's outputs at start-up (every snakemake call, dry runs
    too): for paper.yaml's studies, paper tables and the cross study, that needs neither
    pandas nor matplotlib (0.9 s together)."""
    root = Path(__file__).resolve().parents[1]
    code = (f"import sys; sys.path.insert(0, {str(root / 'src')!r}); "
            "from segbench.config import load_config; from segbench.plan import Plan; "
            "from segbench.report.outputs import study_outputs; "
            f"plan = Plan(load_config({str(root / 'workflow' / 'configs' / 'paper.yaml')!r})); "
            "n = sum(len(study_outputs(plan.study_spec(s), [plan.report_run(s, r) for r in runs])) "
            "for s, runs in plan.studies.items()); "
            "assert n > 6 * len(plan.studies), n; "
            "bad = [m for m in ('pandas', 'matplotlib', 'torch', 'mlflow') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
