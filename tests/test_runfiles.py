"""Damaged run files (issue 18, item 7): every reader of a run file checks it.

A tiny real run (``segbench train``, ``evaluate``, ``profile`` and ``report`` through
``segbench.cli.main``) is damaged one file at a time - cut at several byte offsets, given the
wrong run_key or a missing key, made non-UTF-8, emptied, replaced by a directory - and each
step a user runs on it (``segbench report``, ``segbench evaluate``, ``segbench serve
--study``) must stop with ``segbench STEP: error:`` naming the file, what is wrong and the
remedy (delete it, rerun snakemake, which recreates it from the step that writes it).
Hand-written files in the documented layout (docs/outputs.md) pass the readers unchanged.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_run_spec

from segbench import runfiles
from segbench.cli import main
from segbench.errors import UserError
from segbench.runfiles import RunFileError, RunFileMissing

STUDY = "s"
REMEDY = "delete it and run `snakemake` again"


# ------------------------------------------------------------------ a tiny real run
@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_dataset):
    """results/ of one real 2-epoch run: trained, evaluated, profiled and reported."""
    spec = tiny_run_spec()
    results = tmp_path_factory.mktemp("runfiles") / "results"
    run_dir = results / "runs" / spec["run_key"]
    profile = results / "profiles" / "unet-c19-64x128.json"
    assert main(["train", "--spec", json.dumps(spec), "--data", str(tiny_dataset), "--out", str(run_dir),
                 "--threads", "1", "--quiet"]) == 0
    assert main(["evaluate", str(run_dir), "--data", str(tiny_dataset), "--threads", "1", "--quiet"]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert main(["profile", "--model-spec", json.dumps(info["config"]["model"]), "--classes",
                 str(info["num_classes"]), "--size", "64x128", "--out", str(profile), "--warmup", "0",
                 "--iterations", "1", "--threads", "1"]) == 0
    shutil.rmtree(run_dir / "ckpt", ignore_errors=True)
    runs = [{"run_key": spec["run_key"], "dataset": info["dataset"], "model": info["model"], "loss": info["loss"],
             "seed": info["seed"], "run_dir": str(run_dir), "profile": str(profile)}]
    assert main(["report", STUDY, "--runs", json.dumps(runs), "--out", str(results / "studies" / STUDY)]) == 0
    return results


class Results:
    """A copy of the pristine results/ whose run paths point into the copy."""

    def __init__(self, pristine: Path, tmp: Path):
        self.root = tmp / "results"
        shutil.copytree(pristine, self.root)
        (self.run_dir,) = [p.parent for p in (self.root / "runs").rglob("run.json")]
        self.key = self.run_dir.relative_to(self.root / "runs").as_posix()
        (self.profile,) = (self.root / "profiles").glob("*.json")

    def file(self, name: str) -> Path:
        return self.profile if name == "profile" else self.run_dir / name

    def runs_json(self) -> str:
        d, m, lo, s = self.key.split("/")
        return json.dumps([{"run_key": self.key, "dataset": d, "model": m, "loss": lo, "seed": int(s[1:]),
                            "run_dir": str(self.run_dir), "profile": str(self.profile)}])


@pytest.fixture
def res(pristine, tmp_path):
    return Results(pristine, tmp_path)


def report(res: Results, capsys) -> str:
    """``segbench report`` on the copy: exit status 2 and its error line (nothing written)."""
    out = res.root / "studies" / "again"
    rc = main(["report", STUDY, "--runs", res.runs_json(), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("segbench report: error: "), err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), "nothing written"
    return err


def serve_study(res: Results, capsys) -> str:
    """``segbench serve --study`` on the copy: refused (exit 2) before any server starts."""
    rc = main(["serve", "--study", STUDY, "--results", str(res.root), "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("segbench serve: error: "), err
    return err


def evaluate(res: Results, tiny_dataset, capsys) -> str:
    rc = main(["evaluate", str(res.run_dir), "--data", str(tiny_dataset), "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("segbench evaluate: error: "), err
    return err


def assert_names(err: str, path: Path, problem: str, step: str) -> None:
    """The message names the file, the problem and the remedy with the step that writes it."""
    assert str(path) in err, err
    assert problem in err, err
    assert REMEDY in err and f"{step} step" in err, err


def cuts(data: bytes) -> list[int]:
    """Byte offsets to cut a file at: 1 byte, a third, a half, the start of the last line, and
    all but its last two bytes (a complete file ends with a newline: cutting only it is no damage)."""
    last_line = data.rindex(b"\n", 0, len(data) - 1) + 1
    return sorted({1, len(data) // 3, len(data) // 2, last_line, len(data) - 2})


# ------------------------------------------------------------------ the real run passes
def test_real_run_passes_every_reader_unchanged(pristine):
    (run_dir,) = [p.parent for p in (pristine / "runs").rglob("run.json")]
    info = runfiles.read_run(run_dir)
    assert info == json.loads((run_dir / "run.json").read_text())
    hist = runfiles.read_history(run_dir, info)
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(hist) == len(rows) == info["epochs"] == 2
    assert [r["epoch"] for r in hist] == [1, 2]
    for got, want in zip(hist, rows):
        assert list(got) == list(want)
        assert all(got[k] == pytest.approx(float(v)) for k, v in want.items() if v != "")
    assert runfiles.read_metrics(run_dir) == json.loads((run_dir / "metrics.json").read_text())
    conf = runfiles.read_confusion(run_dir, info)
    assert np.array_equal(conf, np.load(run_dir / "confusion.npy"))
    samples = runfiles.read_samples(run_dir)
    with np.load(run_dir / "samples.npz") as z:
        assert all(np.array_equal(samples[k], z[k]) for k in ("images", "labels", "preds", "names"))
    (profile,) = (pristine / "profiles").glob("*.json")
    assert runfiles.read_profile(profile) == json.loads(profile.read_text())
    # the report and the best-run lookup took it
    assert (pristine / "studies" / STUDY / "tables" / "summary.csv").is_file()
    from segbench.serve.best_run import best_run_of_study

    best, candidates = best_run_of_study(STUDY, pristine)
    miou = json.loads((run_dir / "metrics.json").read_text())["mIoU"]
    assert best == run_dir and candidates == [{"run_key": info["run_key"], "run_dir": str(run_dir), "mIoU": miou}]


def test_history_columns_are_the_trainers():
    from segbench.engine.train import HISTORY_COLUMNS

    assert runfiles.HISTORY_COLUMNS == tuple(HISTORY_COLUMNS)


# ------------------------------------------------------------------ truncation, through the CLI
@pytest.mark.parametrize("name", ["metrics.json", "history.csv", "run.json", "profile", "samples.npz"])
def test_report_names_a_truncated_file(pristine, tmp_path, capsys, name):
    step = {"metrics.json": "evaluate", "samples.npz": "evaluate", "profile": "profile"}.get(name, "train")
    res = Results(pristine, tmp_path)
    path = res.file(name)
    data = path.read_bytes()
    offsets = cuts(data) if name != "samples.npz" else [1, len(data) // 3, len(data) // 2, len(data) - 2]
    for n in offsets:
        path.write_bytes(data[:n])
        err = report(res, capsys)
        assert_names(err, path, "truncated", step)


def test_history_cut_at_a_line_boundary_is_truncated_too(res, capsys):
    path = res.file("history.csv")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))  # one whole epoch gone: every line still ends
    err = report(res, capsys)
    assert_names(err, path, "truncated: it has 1 rows but run.json says 2 epochs", "train")


def test_serve_study_names_a_truncated_metrics_file(res, capsys):
    path = res.file("metrics.json")
    data = path.read_bytes()
    for n in cuts(data):
        path.write_bytes(data[:n])
        assert_names(serve_study(res, capsys), path, "truncated", "evaluate")


def test_evaluate_names_a_truncated_run_json(res, tiny_dataset, capsys):
    path = res.file("run.json")
    data = path.read_bytes()
    before = (res.run_dir / "metrics.json").read_bytes()
    for n in cuts(data):
        path.write_bytes(data[:n])
        assert_names(evaluate(res, tiny_dataset, capsys), path, "truncated", "train")
    assert (res.run_dir / "metrics.json").read_bytes() == before, "nothing rewritten"


# ------------------------------------------------------------------ wrong run_key, missing key
def test_wrong_run_key_in_metrics(res, capsys):
    path = res.file("metrics.json")
    m = json.loads(path.read_text())
    m["run_key"] = "other/unet/ce/s9"
    path.write_text(json.dumps(m))
    expected = f"run_key 'other/unet/ce/s9' but run.json says '{res.key}'"
    assert_names(report(res, capsys), path, expected, "evaluate")
    assert_names(serve_study(res, capsys), path, expected, "evaluate")


def test_run_json_of_another_run_is_refused_by_serve(res, capsys):
    path = res.file("run.json")
    info = json.loads(path.read_text())
    info.update(seed=7, run_key=info["run_key"].rsplit("/", 1)[0] + "/s7")
    path.write_text(json.dumps(info))
    assert_names(serve_study(res, capsys), path, f"lists it as the run '{res.key}'", "train")


@pytest.mark.parametrize("name, key, step", [("metrics.json", "mIoU", "evaluate"), ("run.json", "epochs", "train"),
                                             ("profile", "fps", "profile")])
def test_report_names_a_missing_key(res, capsys, name, key, step):
    path = res.file(name)
    obj = json.loads(path.read_text())
    del obj[key]
    path.write_text(json.dumps(obj, indent=2) + "\n")
    assert_names(report(res, capsys), path, f"is missing key '{key}'", step)


def test_evaluate_names_a_missing_run_json_key(res, tiny_dataset, capsys):
    path = res.file("run.json")
    info = json.loads(path.read_text())
    del info["num_classes"]
    path.write_text(json.dumps(info))
    assert_names(evaluate(res, tiny_dataset, capsys), path, "is missing key 'num_classes'", "train")


def test_metrics_with_the_wrong_number_of_classes(res, capsys):
    path = res.file("metrics.json")
    m = json.loads(path.read_text())
    m["IoU"] = m["IoU"][:-1]
    path.write_text(json.dumps(m))
    assert_names(report(res, capsys), path, f"has {len(m['IoU'])} IoU values but run.json says num_classes=19",
                 "evaluate")


def test_history_with_other_columns_or_a_bad_value(res, capsys):
    path = res.file("history.csv")
    good = path.read_text()
    path.write_text(good.replace("skipped_batches,", "", 1))
    assert_names(report(res, capsys), path, "not the documented", "train")
    lines = good.splitlines(keepends=True)
    fields = lines[1].split(",")
    fields[1] = "oops"
    path.write_text(lines[0] + ",".join(fields) + "".join(lines[2:]))
    assert_names(report(res, capsys), path, "line 2: column train_loss is 'oops', not a number", "train")
    path.write_text(lines[0] + lines[2] + lines[1])  # epochs out of order
    assert_names(report(res, capsys), path, "line 2 is epoch 2, expected epoch 1", "train")
    path.write_text(lines[0] + lines[1] + lines[1] + lines[2])  # a repeated epoch, one row too many
    assert_names(report(res, capsys), path, "line 3 is epoch 1, expected epoch 2", "train")


# ------------------------------------------------------------------ not UTF-8, empty, a directory
@pytest.mark.parametrize("name, step", [("metrics.json", "evaluate"), ("history.csv", "train"),
                                        ("run.json", "train"), ("profile", "profile")])
def test_report_names_a_file_that_is_not_utf8(res, capsys, name, step):
    path = res.file(name)
    data = path.read_bytes()
    path.write_bytes(data[:5] + b"\xff\xfe" + data[5:])
    assert_names(report(res, capsys), path, "is not UTF-8 text (byte 0xff at offset 5)", step)


@pytest.mark.parametrize("name, step", [("metrics.json", "evaluate"), ("history.csv", "train"),
                                        ("run.json", "train"), ("profile", "profile"), ("samples.npz", "evaluate")])
def test_report_names_an_empty_file(res, capsys, name, step):
    path = res.file(name)
    path.write_bytes(b"")
    assert_names(report(res, capsys), path, "is empty", step)


@pytest.mark.parametrize("name, step", [("metrics.json", "evaluate"), ("history.csv", "train"),
                                        ("run.json", "train"), ("samples.npz", "evaluate")])
def test_report_names_a_directory_in_place_of_a_file(res, capsys, name, step):
    path = res.file(name)
    path.unlink()
    path.mkdir()
    err = report(res, capsys)
    assert str(path) in err and "is a directory, not a file" in err and f"rm -r {path}" in err, err
    assert f"{step} step writes the file" in err, err


def test_serve_and_evaluate_name_empty_and_directory_files(res, tiny_dataset, capsys):
    metrics, run_json = res.file("metrics.json"), res.file("run.json")
    metrics.write_bytes(b"")
    assert_names(serve_study(res, capsys), metrics, "is empty", "evaluate")
    metrics.unlink()
    metrics.mkdir()
    assert "is a directory, not a file" in serve_study(res, capsys)
    run_json.write_bytes(b"\n")
    assert_names(evaluate(res, tiny_dataset, capsys), run_json, "is empty", "train")
    run_json.unlink()
    run_json.mkdir()
    assert f"{run_json} is a directory, not a file" in evaluate(res, tiny_dataset, capsys)


def test_a_missing_file_is_named_with_its_step(res, capsys):
    res.file("history.csv").unlink()
    err = report(res, capsys)
    assert f"{res.file('history.csv')} is missing" in err and "train step" in err, err


# ------------------------------------------------------------------ the readers, on hand-written files
CLASSES = ["road", "car", "sky"]
EPOCHS = 3
KEY = "synthetic/unet/ce/s0"


def write_run(d: Path) -> Path:
    """A run directory written by hand in the layout of docs/outputs.md (epoch 2 not validated)."""
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({
        "run_key": KEY, "dataset": "synthetic", "model": "unet", "loss": "ce", "seed": 0,
        "config": {"model": {"name": "unet", "arch": "unet", "params": {"width": 4}}}, "config_hash": "abc",
        "num_classes": 3, "class_names": CLASSES, "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "device": "cpu",
        "threads": 1, "workers": 0, "amp": False, "channels_last": False, "epochs": EPOCHS, "train_seconds": 3.5,
        "resumed_from_epoch": None, "on_nonfinite": "fail", "skipped_batches": 0, "pretrained": None,
    }, indent=2) + "\n")
    (d / "history.csv").write_text(
        "epoch,train_loss,train_mIoU,train_aAcc,val_loss,val_mIoU,val_aAcc,lr,skipped_batches,epoch_seconds,time\n"
        "1,1.5,0.2,0.5,1.6,0.15,0.45,0.01,0,1.25,1700000001.5\n"
        "2,1.2,0.3,0.6,,,,0.005,1,1.0,1700000002.5\n"
        "3,nan,0.4,0.7,1.1,0.35,0.65,0.0,0,1.0,1700000003.5\n")
    (d / "metrics.json").write_text(json.dumps({
        "run_key": KEY, "mIoU": 0.5, "aAcc": 0.8, "mAcc": 0.6, "mDice": 0.62, "IoU": [0.7, float("nan"), 0.3],
        "Acc": [0.8, None, 0.4], "Dice": [0.82, float("nan"), 0.46], "class_names": CLASSES, "num_images": 4,
        "input_size": [64, 128], "channels_last": False, "eval_seconds": 0.5, "metric_mpixel_per_s": 12.0,
    }, indent=2) + "\n")
    np.save(d / "confusion.npy", np.arange(9, dtype=np.int64).reshape(3, 3))
    np.savez_compressed(d / "samples.npz", images=np.zeros((2, 4, 6, 3), np.uint8),
                        labels=np.ones((2, 4, 6), np.uint8), preds=np.full((2, 4, 6), 2, np.uint8),
                        names=np.array(["a.png", "b.png"]))
    return d


PROFILE = {"model": "unet", "arch": "unet", "num_classes": 3, "input_size": [64, 128], "params": 1234,
           "macs": 56789, "size_mb": 0.01, "fps": 88.5, "fps_batch": 1, "device": "cpu", "threads": 1,
           "channels_last": False, "warmup": 3, "iterations": 10}


def test_good_hand_written_files_pass_unchanged(tmp_path):
    d = write_run(tmp_path / "run")
    info = runfiles.read_run(d)
    assert info == json.loads((d / "run.json").read_text())
    hist = runfiles.read_history(d)  # run.json read here
    assert repr(hist) == repr(runfiles.read_history(d, info))  # NaN != NaN: compare the text
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert hist[0] == {"epoch": 1, "train_loss": 1.5, "train_mIoU": 0.2, "train_aAcc": 0.5, "val_loss": 1.6,
                       "val_mIoU": 0.15, "val_aAcc": 0.45, "lr": 0.01, "skipped_batches": 0,
                       "epoch_seconds": 1.25, "time": 1700000001.5}
    assert hist[1]["val_loss"] is None and hist[1]["val_mIoU"] is None and hist[1]["skipped_batches"] == 1
    assert math.isnan(hist[2]["train_loss"])
    m = runfiles.read_metrics(d, info)
    want = json.loads((d / "metrics.json").read_text())
    assert m.keys() == want.keys() and m["IoU"][0] == 0.7 and math.isnan(m["IoU"][1]) and m["Acc"][1] is None
    assert json.dumps(m) == json.dumps(want)  # NaN compares unequal: compare the text
    assert np.array_equal(runfiles.read_confusion(d), np.arange(9).reshape(3, 3))
    s = runfiles.read_samples(d)
    assert s["images"].shape == (2, 4, 6, 3) and list(s["names"]) == ["a.png", "b.png"]
    prof = tmp_path / "unet-c3-64x128.json"
    prof.write_text(json.dumps(PROFILE))
    assert runfiles.read_profile(prof) == PROFILE


def test_reader_errors_are_user_errors_naming_file_and_remedy(tmp_path):
    d = write_run(tmp_path / "run")
    (d / "metrics.json").write_text('{"run_key": "x",\n "mIoU": 0.5,,\n "aAcc": 1}\n')  # column 14: the 2nd comma
    with pytest.raises(RunFileError) as e:
        runfiles.read_metrics(d)
    assert isinstance(e.value, UserError) and e.value.path == d / "metrics.json"
    assert str(e.value) == (f"{d / 'metrics.json'} is not JSON: Expecting property name enclosed in double "
                            "quotes at line 2 column 14; it is an output of the workflow's evaluate step: "
                            f"{REMEDY}, which recreates it (by hand: `segbench evaluate`)")
    (d / "metrics.json").write_text("[1, 2]\n")
    with pytest.raises(RunFileError, match=r"holds a JSON list, not an object"):
        runfiles.read_metrics(d)
    (d / "metrics.json").unlink()
    with pytest.raises(RunFileMissing) as e:
        runfiles.read_metrics(d)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, UserError)
    assert str(e.value).startswith(f"{d / 'metrics.json'} is missing; it is written by the workflow's evaluate step")


def test_history_checks_against_run_json(tmp_path):
    d = write_run(tmp_path / "run")
    info = runfiles.read_run(d)
    with pytest.raises(RunFileError, match=r"has 3 rows but run.json says 2 epochs"):
        runfiles.read_history(d, {**info, "epochs": 2})
    with pytest.raises(RunFileError, match=r"is truncated: it has 3 rows but run.json says 4 epochs"):
        runfiles.read_history(d, {**info, "epochs": 4})
    text = (d / "history.csv").read_text()
    (d / "history.csv").write_text(text.replace("\n1,1.5,0.2,0.5,1.6,", "\n1,1.5,0.2,0.5,,", 1).replace(
        "0.01,0,1.25", ",0,1.25"))
    with pytest.raises(RunFileError, match=r"line 2: column lr is empty"):
        runfiles.read_history(d, info)
    (d / "history.csv").write_text(text.replace("\n2,1.2,0.3,0.6,,,,0.005,1,", "\n2,1.2,0.3,0.6,,,,0.005,", 1))
    with pytest.raises(RunFileError, match=r"line 3 has 10 fields, not 11"):
        runfiles.read_history(d, info)


def test_run_json_checks(tmp_path):
    d = write_run(tmp_path / "run")
    good = json.loads((d / "run.json").read_text())
    for change, problem in [({"seed": 1}, "says run_key 'synthetic/unet/ce/s0' but its dataset/model/loss/seed "
                                          "make 'synthetic/unet/ce/s1'"),
                            ({"epochs": 0}, "says epochs=0, not a whole number above 0"),
                            ({"num_classes": 4}, "has 3 class_names but num_classes=4"),
                            ({"config": []}, "has a config that is a list, not an object")]:
        (d / "run.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(RunFileError) as e:
            runfiles.read_run(d)
        assert problem in str(e.value) and "train step" in str(e.value)


def test_confusion_and_samples_checks(tmp_path):
    d = write_run(tmp_path / "run")
    data = (d / "confusion.npy").read_bytes()
    (d / "confusion.npy").write_bytes(data[: len(data) - 8])
    with pytest.raises(RunFileError, match=r"confusion.npy is not a readable .npy array \(truncated"):
        runfiles.read_confusion(d)
    np.save(d / "confusion.npy", np.zeros((2, 2), np.int64))
    with pytest.raises(RunFileError, match=r"shape \[2, 2\], not the int64 \[3, 3\]"):
        runfiles.read_confusion(d)
    np.savez(d / "samples.npz", images=np.zeros((2, 4, 6, 3), np.uint8), labels=np.zeros((2, 4, 6), np.uint8),
             names=np.array(["a", "b"]))
    with pytest.raises(RunFileError, match=r"samples.npz is missing array 'preds'"):
        runfiles.read_samples(d)


def test_profile_checks(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({**PROFILE, "input_size": [64]}))
    with pytest.raises(RunFileError, match=r"says input_size=\[64\], not \[H, W\]; .*profile step"):
        runfiles.read_profile(prof)
    prof.write_text(json.dumps({**PROFILE, "fps": "fast"}))
    with pytest.raises(RunFileError, match=r"says fps='fast', not a number"):
        runfiles.read_profile(prof)


def test_readers_import_neither_torch_nor_pandas():
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    code = (f"import sys; sys.path.insert(0, {str(src)!r}); import segbench.runfiles; "
            "bad = [m for m in ('torch', 'pandas', 'numpy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
