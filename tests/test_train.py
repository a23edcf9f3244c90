"""Training is deterministic on CPU and resumes exactly from its last checkpoint."""

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


def test_killed_run_resumes_from_checkpoint(data_dir, tmp_path, monkeypatch):
    import segbench.engine.train as train_mod

    spec = spec_for()
    train_mod.train_run(spec, data_dir, tmp_path / "full", threads=1, progress=False)

    real_save = train_mod._save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("simulated kill after the first checkpoint")

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_run(spec, data_dir, tmp_path / "killed", threads=1, progress=False)
    assert (tmp_path / "killed" / "ckpt" / "last.pt").exists()
    assert not (tmp_path / "killed" / "run.json").exists()  # declared outputs only at the end
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)

    record = train_mod.train_run(spec, data_dir, tmp_path / "killed", threads=1, progress=False)
    assert record["resumed_from_epoch"] == 1
    assert history(tmp_path / "killed" / "history.csv") == history(tmp_path / "full" / "history.csv")


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
