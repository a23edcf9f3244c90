"""Training is deterministic on CPU and resumes exactly from its last checkpoint."""

import copy
import csv
import json

import pytest
import torch

from conftest import tiny_run_spec

TIME_COLUMNS = {"epoch_seconds", "time"}


@pytest.fixture
def data_dir(tiny_dataset):
    return tiny_dataset


def spec_for():
    return tiny_run_spec()


def history(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


def test_same_spec_same_metrics(data_dir, tmp_path):
    from segbench.engine.train import train_run

    spec = spec_for()
    train_run(spec, data_dir, tmp_path / "a", threads=1, progress=False)
    train_run(spec, data_dir, tmp_path / "b", threads=1, progress=False)
    ha, hb = history(tmp_path / "a" / "history.csv"), history(tmp_path / "b" / "history.csv")
    assert len(ha) == 2 and ha == hb
    wa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["run_key"] == "tiny/unet/ce/s0" and record["num_classes"] == 19


@pytest.mark.parametrize("workers, channels_last", [(0, "auto"), (1, "auto"), (0, True)])
def test_killed_run_resumes_from_checkpoint(data_dir, tmp_path, monkeypatch, workers, channels_last):
    """Bit for bit, also with DataLoader worker processes (the default config has one) and
    with channels_last weights and batches on the CPU (train.channels_last: true)."""
    import segbench.engine.train as train_mod

    spec = spec_for()
    spec["train"]["workers"] = workers
    spec["train"]["channels_last"] = channels_last
    train_mod.train_run(spec, data_dir, tmp_path / "full", threads=1, progress=False)

    real_save = train_mod._save_checkpoint

    def save_then_die(path, state, *args):
        real_save(path, state, *args)
        raise KeyboardInterrupt("simulated kill after the first checkpoint")

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_run(spec, data_dir, tmp_path / "killed", threads=1, progress=False)
    assert (tmp_path / "killed" / "ckpt" / "last.pt").exists()
    assert not (tmp_path / "killed" / "run.json").exists()  # declared outputs only at the end
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)

    record = train_mod.train_run(spec, data_dir, tmp_path / "killed", threads=1, progress=False)
    assert record["resumed_from_epoch"] == 1 and record["workers"] == workers
    assert record["channels_last"] is (channels_last is True)
    assert history(tmp_path / "killed" / "history.csv") == history(tmp_path / "full" / "history.csv")
    wa = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    wb = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _spy_on_memory_format(monkeypatch, module):
    """Wrap ``module.build_model`` so that every model it builds records whether its
    inputs arrive in channels_last; returns the list of (model, inputs' formats)."""
    built = []
    real = module.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        seen = []
        model.register_forward_pre_hook(
            lambda _m, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last)
                                           and not inputs[0].is_contiguous()))
        built.append((model, seen))
        return model

    monkeypatch.setattr(module, "build_model", build)
    return built


def _conv_weights_channels_last(model) -> list[bool]:
    return [p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]


@pytest.mark.parametrize("setting, expected", [("auto", False), (True, True), (False, False)])
def test_channels_last_option_reaches_the_model_and_the_batches(data_dir, tmp_path, monkeypatch, setting,
                                                                expected):
    """train.channels_last on the CPU: auto and false train NCHW, true puts the weights and
    every batch (training and validation) in channels_last; run.json records the format and
    evaluation follows it."""
    import segbench.engine.evaluate as eval_mod
    import segbench.engine.train as train_mod

    spec = spec_for()
    spec["train"]["channels_last"] = setting
    built = _spy_on_memory_format(monkeypatch, train_mod)
    record = train_mod.train_run(spec, data_dir, tmp_path / "r", threads=1, progress=False)
    (model, seen), = built
    weights = _conv_weights_channels_last(model)
    assert weights and all(w is expected for w in weights)
    assert seen and all(s is expected for s in seen)  # 3 steps x 2 epochs + validation
    assert record["channels_last"] is expected and record["config"]["train"]["channels_last"] == setting

    built = _spy_on_memory_format(monkeypatch, eval_mod)
    metrics = eval_mod.evaluate_run(tmp_path / "r", data_dir, batch_size=2, samples=1, threads=1, progress=False)
    (model, seen), = built
    assert metrics["channels_last"] is expected
    assert all(w is expected for w in _conv_weights_channels_last(model))
    assert seen and all(s is expected for s in seen)


def test_channels_last_is_part_of_the_spec(data_dir, tmp_path):
    """It changes the rounding, so a checkpoint of the other format is not resumed."""
    from segbench.engine.train import train_run
    from segbench.plan import spec_hash

    spec = spec_for()
    assert spec["train"]["channels_last"] == "auto"  # the default, filled in
    other = copy.deepcopy(spec)
    other["train"]["channels_last"] = True
    assert spec_hash(spec) != spec_hash(other)
    train_run(spec, data_dir, tmp_path / "r", threads=1, progress=False)
    record = train_run(other, data_dir, tmp_path / "r", threads=1, progress=False)
    assert record["resumed_from_epoch"] is None and record["channels_last"] is True


def test_evaluation_of_an_older_record_resolves_the_setting_for_its_training_device():
    from segbench.engine.common import trained_channels_last, use_channels_last

    assert use_channels_last("auto", "cpu") is False and use_channels_last("auto", "cuda:0") is True
    assert use_channels_last(True, "cpu") is True and use_channels_last(False, "cuda") is False
    with pytest.raises(ValueError, match="channels_last"):
        use_channels_last("yes", "cpu")
    assert trained_channels_last({"channels_last": True, "device": "cpu"}) is True
    assert trained_channels_last({"device": "cuda:0", "config": {"train": {}}}) is True  # before the option
    assert trained_channels_last({"device": "cpu", "config": {"train": {}}}) is False
    assert trained_channels_last({"device": "cpu", "config": {"train": {"channels_last": True}}}) is True


def test_checkpoint_of_another_config_is_ignored(data_dir, tmp_path):
    from segbench.engine.train import train_run

    spec = spec_for()
    train_run(spec, data_dir, tmp_path / "r", threads=1, progress=False)
    spec["train"]["lr"] = spec["train"]["lr"] / 2
    record = train_run(spec, data_dir, tmp_path / "r", threads=1, progress=False)
    assert record["resumed_from_epoch"] is None


def test_evaluate_writes_metrics_matching_confusion(data_dir, tmp_path):
    import numpy as np

    from segbench.engine.evaluate import evaluate_run
    from segbench.engine.train import train_run
    from segbench.metrics import scores

    train_run(spec_for(), data_dir, tmp_path / "r", threads=1, progress=False)
    metrics = evaluate_run(tmp_path / "r", data_dir, batch_size=2, samples=2, threads=1, progress=False)
    conf = np.load(tmp_path / "r" / "confusion.npy")
    assert conf.shape == (19, 19)
    assert conf.sum() > 0
    assert metrics["mIoU"] == pytest.approx(scores(torch.from_numpy(conf))["mIoU"], nan_ok=True)
    samples = np.load(tmp_path / "r" / "samples.npz")
    assert samples["images"].shape == (2, 64, 128, 3) and samples["preds"].shape == (2, 64, 128)


def test_evaluate_stores_per_image_counts_that_match_single_image_passes(data_dir, tmp_path):
    """The per-image arrays (docs/statistics.md) sum to the split's counts, and each image's
    entry equals what a separate one-image pass of the model gives; metrics.json's interval
    is the bootstrap of those arrays and holds the point value."""
    import numpy as np

    from segbench import stats
    from segbench.data.dataset import SegmentationDataset, to_tensor
    from segbench.engine.evaluate import evaluate_run, load_trained
    from segbench.engine.train import train_run
    from segbench.metrics import boundary_iou_counts, confusion_matrix, segment_recall_counts

    run = tmp_path / "r"
    train_run(spec_for(), data_dir, run, threads=1, progress=False)
    metrics = evaluate_run(run, data_dir, batch_size=3, samples=0, threads=1, progress=False, n_boot=500)
    conf = np.load(run / "confusion_per_image.npy")
    boundary = np.load(run / "boundary_per_image.npy")
    segments = np.load(run / "segments_per_image.npy")
    ds = SegmentationDataset(data_dir / "manifest.csv", "val", None)
    n = len(ds)
    assert conf.shape == (n, 19, 19) and boundary.shape == (n, 2, 19) and segments.shape == (n, 3, 2)
    assert conf.dtype == boundary.dtype == segments.dtype == np.int64
    assert (conf.sum(0) == np.load(run / "confusion.npy")).all()

    model, _ = load_trained(run)
    for i in (0, n - 1):
        image, label = ds[i][:2]
        with torch.inference_mode():
            pred = model(image[None]).argmax(1)[0]
        label = torch.as_tensor(label)
        assert (conf[i] == confusion_matrix(pred, label, 19).numpy()).all()
        inter, union = boundary_iou_counts(pred, label, 19)
        assert (boundary[i, 0] == inter.numpy()).all() and (boundary[i, 1] == union.numpy()).all()
        assert (segments[i] == np.asarray(segment_recall_counts(pred, label, 19))).all()

    low, high = metrics["mIoU_ci95"]
    assert (low, high) == pytest.approx(stats.bootstrap_ci(conf, stats.miou, n_boot=500, seed=0))
    assert low <= metrics["mIoU"] <= high
    assert metrics["mBIoU"] == pytest.approx(float(stats.biou(boundary.sum(0))))
    total = segments.sum(0)
    for k, name in enumerate(("small", "medium", "large")):
        want = total[k, 1] / total[k, 0] if total[k, 0] else None
        assert metrics["size_recall"][name] == (pytest.approx(want) if want is not None else None)
    assert metrics["ci_method"] == stats.CI_METHOD


def test_val_images_of_different_sizes_are_padded_and_never_scored():
    from segbench.data.dataset import pad_collate

    a = (torch.ones(3, 40, 70), torch.zeros(40, 70, dtype=torch.int64), 0)
    b = (torch.ones(3, 64, 50), torch.ones(64, 50, dtype=torch.int64), 1)
    images, labels, idx = pad_collate([a, b])
    assert images.shape == (2, 3, 64, 96) and labels.shape == (2, 64, 96)
    assert idx.tolist() == [0, 1]
    # the padding is ignore (255) in the labels and zero in the images; the data is untouched
    assert (labels[0, :40, :70] == 0).all() and (labels[0, 40:, :] == 255).all() and (labels[0, :, 70:] == 255).all()
    assert (labels[1, :, :50] == 1).all() and (labels[1, :, 50:] == 255).all()
    assert images[0, :, :40, :70].eq(1).all() and images[0, :, 40:, :].eq(0).all()


# ------------------------------------------------------------------ damaged checkpoints
def test_truncated_checkpoint_is_set_aside_and_the_run_starts_again(data_dir, tmp_path, capsys):
    """A checkpoint cut short (a full disk, a copy interrupted) is never trusted: the rerun
    says which file, moves it aside and trains from scratch to the same result."""
    import segbench.engine.train as train_mod

    spec = spec_for()
    train_mod.train_run(spec, data_dir, tmp_path / "full", threads=1, progress=False)
    run = tmp_path / "run"
    ckpt = run / "ckpt" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    whole = (tmp_path / "full" / "ckpt" / "last.pt").read_bytes()
    ckpt.write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    record = train_mod.train_run(spec, data_dir, run, threads=1, progress=False)
    err = capsys.readouterr().err
    assert f"warning: checkpoint {ckpt} cannot be read" in err and "training from scratch" in err, err
    assert (run / "ckpt" / "last.pt.corrupt").read_bytes() == whole[: len(whole) // 2]
    assert record["resumed_from_epoch"] is None
    assert history(run / "history.csv") == history(tmp_path / "full" / "history.csv")


def test_checkpoint_that_does_not_fit_the_model_is_set_aside(data_dir, tmp_path, capsys):
    """Same config hash but weights of another shape (the model's code changed): set aside,
    trained again from the same initial weights as an uninterrupted run."""
    import segbench.engine.train as train_mod

    spec = spec_for()
    train_mod.train_run(spec, data_dir, tmp_path / "full", threads=1, progress=False)
    run = tmp_path / "run"
    state = torch.load(tmp_path / "full" / "ckpt" / "last.pt", weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(1)
    (run / "ckpt").mkdir(parents=True)
    torch.save(state, run / "ckpt" / "last.pt")
    capsys.readouterr()
    record = train_mod.train_run(spec, data_dir, run, threads=1, progress=False)
    err = capsys.readouterr().err
    assert f"checkpoint {run / 'ckpt' / 'last.pt'} does not fit this run" in err, err
    assert record["resumed_from_epoch"] is None
    assert history(run / "history.csv") == history(tmp_path / "full" / "history.csv")
    wa = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    wb = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stale_temporary_files_of_a_killed_job_are_removed(data_dir, tmp_path, capsys):
    from segbench.engine.train import train_run

    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    stale = [run / "ckpt" / ".last.pt.abc123.tmp", run / ".model.pt.x.tmp", run / ".run.json.y.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (run / ".unrelated.tmp").write_text("not ours")
    train_run(spec_for(), data_dir, run, threads=1, progress=False)
    assert not any(p.exists() for p in stale)
    assert (run / ".unrelated.tmp").exists()
    assert not list(run.rglob(".*.tmp"))[1:]


# ------------------------------------------------------------------ non-finite losses
def _poison(monkeypatch, victim: int, from_epoch: int = 1):
    """Make train sample ``victim`` all-NaN (a poisoned input: the loss becomes NaN) from
    epoch ``from_epoch`` on; return its image path."""
    from segbench.data.dataset import SegmentationDataset

    real = SegmentationDataset.__getitem__
    calls = {"n": 0}

    def getitem(self, index):
        image, label, i = real(self, index)
        if self.split == "train":
            calls["n"] += 1
            if index == victim and calls["n"] > (from_epoch - 1) * len(self):
                image = torch.full_like(image, float("nan"))
        return image, label, i

    monkeypatch.setattr(SegmentationDataset, "__getitem__", getitem)
    return victim


def _victim_path(data_dir, victim):
    from segbench.data.dataset import SegmentationDataset

    return SegmentationDataset(data_dir / "manifest.csv", "train", None).rows[victim]["image"]


def test_nan_loss_stops_naming_step_files_and_last_checkpoint(data_dir, tmp_path, monkeypatch):
    import re

    from segbench.engine.train import NonFiniteLoss, train_run

    _poison(monkeypatch, victim=3, from_epoch=2)
    spec = spec_for()
    assert spec["train"]["on_nonfinite"] == "stop"  # the default
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as err:
        train_run(spec, data_dir, run, threads=1, progress=False)
    msg = str(err.value)
    m = re.search(r"loss is nan at step (\d+) \(epoch 2/2, batch (\d)/3\)", msg)
    assert m, msg
    assert int(m.group(1)) == 3 + int(m.group(2))  # global step: 3 batches per epoch
    assert _victim_path(data_dir, 3) in msg
    assert f"last good checkpoint: {run / 'ckpt' / 'last.pt'} (after epoch 1)" in msg
    assert "on_nonfinite: skip" in msg
    assert not (run / "model.pt").exists() and (run / "ckpt" / "last.pt").exists()


def test_nan_loss_in_the_first_epoch_says_there_is_no_checkpoint(data_dir, tmp_path, monkeypatch):
    from segbench.engine.train import NonFiniteLoss, train_run

    _poison(monkeypatch, victim=0)
    with pytest.raises(NonFiniteLoss, match=r"epoch 1/2.*last good checkpoint: none"):
        train_run(spec_for(), data_dir, tmp_path / "run", threads=1, progress=False)


def test_skip_mode_drops_and_counts_nonfinite_batches(data_dir, tmp_path, monkeypatch, capsys):
    import math

    import segbench.engine.train as train_mod

    _poison(monkeypatch, victim=3)
    monkeypatch.setattr(train_mod, "MAX_SKIPPED_FRACTION", 0.5)  # 1 of 3 batches allowed
    spec = spec_for()
    spec["train"]["on_nonfinite"] = "skip"
    run = tmp_path / "run"
    capsys.readouterr()
    record = train_mod.train_run(spec, data_dir, run, threads=1, progress=False)
    err = capsys.readouterr().err
    skips = [line for line in err.splitlines() if line.startswith("skipped batch: loss is nan")]
    assert len(skips) == 2 and all(_victim_path(data_dir, 3) in line for line in skips), err
    assert record["skipped_batches"] == 2 and record["on_nonfinite"] == "skip"
    assert json.loads((run / "run.json").read_text())["skipped_batches"] == 2
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["skipped_batches"] for r in rows] == ["1", "1"]
    # nothing of the poisoned batch stays in the model: weights and BN statistics finite
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("train_loss", "val_loss", "val_mIoU"))
    weights = torch.load(run / "model.pt", weights_only=True)
    assert any("running_mean" in k for k in weights)
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


def test_skip_mode_still_stops_when_too_many_batches_fail(data_dir, tmp_path, monkeypatch):
    from segbench.engine.train import NonFiniteLoss, train_run

    _poison(monkeypatch, victim=3)
    spec = spec_for()
    spec["train"]["on_nonfinite"] = "skip"
    with pytest.raises(NonFiniteLoss, match=r"1 of the 3 batches of epoch 1 had a non-finite loss, more than "
                                            r"10% \(train.on_nonfinite: skip\): stopping") as err:
        train_run(spec, data_dir, tmp_path / "run", threads=1, progress=False)
    assert _victim_path(data_dir, 3) in str(err.value)


def test_on_nonfinite_is_validated():
    from segbench.config import ConfigError

    with pytest.raises(ConfigError, match="on_nonfinite"):
        from segbench.config import validate_config

        validate_config({
            "datasets": {"d": {"source": "synthetic"}}, "models": {"unet": {"arch": "unet"}},
            "losses": {"ce": {"type": "ce"}}, "train": {"on_nonfinite": "ignore"},
            "studies": {"s": {"datasets": ["d"], "models": ["unet"], "losses": ["ce"]}}})


def test_train_scores_count_every_second_row_and_column():
    """history.csv's train_mIoU/train_aAcc come from a quarter of each batch's pixels: the
    same counts as the full confusion matrix of that sample, ignored pixels left out."""
    from segbench.engine.train import _train_confusion
    from segbench.metrics import confusion_matrix

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 12, generator=g).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 5, (2, 8, 12), generator=g)
    labels[0, :4] = 255
    want = confusion_matrix(logits[:, :, ::2, ::2].argmax(1), labels[:, ::2, ::2], 5)
    got = _train_confusion(logits, labels, 5)
    assert torch.equal(got, want) and int(got.sum()) == 2 * 4 * 6 - 2 * 6
