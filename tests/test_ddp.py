"""One run on N processes (train.devices, DistributedDataParallel on CPU with gloo): the same
global batches and augmentations whatever N, batch norm over the global batch, and the same
training up to floating-point noise (issue 21: every epoch's train loss within 3%, the final
mIoU within 2 points)."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist

from conftest import tiny_run_spec
from segbench.cli import main as segbench_main
from segbench.data.dataset import GlobalBatchSampler, SegmentationDataset
from segbench.data.transforms import train_transform
from segbench.engine import distributed
from segbench.engine import train as train_mod
from segbench.errors import UserError


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """gloo on the CPU, on a machine with GPUs too (the spawned ranks inherit the variable)."""
    monkeypatch.setenv("SEGBENCH_DEVICE", "cpu")


# ------------------------------------------------------------------ sample order and augmentation
def test_global_batches_are_the_same_whatever_the_number_of_processes():
    n, batch = 11, 4
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1234)).tolist()
    expected = [perm[k * batch:(k + 1) * batch] for k in range(n // batch)]  # the last 3 dropped
    for world in (1, 2, 4):
        shares = []
        for rank in range(world):
            s = GlobalBatchSampler(n, batch, world, rank)
            s.set_epoch(1234)
            shares.append(list(s))
            assert len(s) == n // batch
        # global batch k = rank 0's k-th share, then rank 1's, ...
        assert [sum((shares[r][k] for r in range(world)), []) for k in range(n // batch)] == expected
    other = GlobalBatchSampler(n, batch)
    other.set_epoch(1235)
    assert list(other) != expected


def test_each_sample_has_its_own_augmentation_stream(tiny_dataset):
    spec = tiny_run_spec()["train"]
    spec = {**spec, "crop": [32, 48], "scale": [0.5, 2.0]}  # crops smaller than the image: positions drawn
    ds = SegmentationDataset(tiny_dataset / "manifest.csv", "train", train_transform(spec))
    ds.set_epoch(seed=0, epoch=3)
    forward = [ds[i][0] for i in range(len(ds))]
    backward = {i: ds[i][0] for i in reversed(range(len(ds)))}
    for i, image in enumerate(forward):  # independent of which samples were loaded before
        assert torch.equal(image, backward[i])
    ds.set_epoch(seed=0, epoch=4)
    assert sum(not torch.equal(ds[i][0], forward[i]) for i in range(len(ds))) >= len(ds) - 1


def test_the_worker_count_does_not_change_the_training(tiny_dataset, tmp_path):
    weights = []
    for workers in (0, 2):
        spec = tiny_run_spec(epochs=1)
        spec["train"]["workers"] = workers
        train_mod.train_run(spec, tiny_dataset, tmp_path / f"w{workers}", threads=1, progress=False)
        weights.append(torch.load(tmp_path / f"w{workers}" / "model.pt", weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# ------------------------------------------------------------------ batch norm over the global batch
def _bn_rank(rank, x, grad_out, result_path):
    """Rank ``rank``'s half of the batch through GlobalBatchNorm; rank 0 returns its results,
    the other rank writes them to ``result_path``."""
    torch.manual_seed(0)
    bn = distributed.sync_batch_norm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))
    bn[0].weight.data = torch.tensor([1.5, 0.5, 2.0])
    bn[0].bias.data = torch.tensor([0.1, -0.2, 0.3])
    half = x.shape[0] // 2
    mine = x[rank * half:(rank + 1) * half].clone().requires_grad_(True)
    y = bn(mine)
    y.backward(grad_out[rank * half:(rank + 1) * half])
    # the parameters' gradients summed over the ranks, as DDP does (up to its 1/N)
    gw, gb = bn[0].weight.grad.clone(), bn[0].bias.grad.clone()
    dist.all_reduce(gw)
    dist.all_reduce(gb)
    out = {"y": y.detach(), "gx": mine.grad, "gw": gw, "gb": gb, "mean": bn[0].running_mean.clone(),
           "var": bn[0].running_var.clone()}
    if rank:
        torch.save(out, result_path)
    return out


def test_global_batch_norm_over_two_processes_is_batch_norm_of_the_whole_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 6, generator=g) * 3 + 1
    grad_out = torch.randn(4, 3, 5, 6, generator=g)
    path = tmp_path / "rank1.pt"
    r0 = distributed.run_ranks(2, lambda: _bn_rank(0, x, grad_out, path), _bn_rank, (x, grad_out, path))
    r1 = torch.load(path)
    # the independent truth: torch's BatchNorm on the whole batch in one process
    bn = torch.nn.BatchNorm2d(3)
    bn.weight.data = torch.tensor([1.5, 0.5, 2.0])
    bn.bias.data = torch.tensor([0.1, -0.2, 0.3])
    whole = x.clone().requires_grad_(True)
    y = bn(whole)
    y.backward(grad_out)
    close = dict(atol=1e-5, rtol=1e-5)
    assert torch.allclose(torch.cat([r0["y"], r1["y"]]), y.detach(), **close)
    assert torch.allclose(torch.cat([r0["gx"], r1["gx"]]), whole.grad, **close)
    for r in (r0, r1):
        assert torch.allclose(r["gw"], bn.weight.grad, **close)
        assert torch.allclose(r["gb"], bn.bias.grad, **close)
        assert torch.allclose(r["mean"], bn.running_mean, **close)
        assert torch.allclose(r["var"], bn.running_var, **close)


# ------------------------------------------------------------------ the launcher
def _fail_on_rank_1(rank):
    t = torch.ones(1)
    dist.all_reduce(t)
    raise ValueError(f"rank {rank} cannot read its shard")


def _rank_0_waits():
    t = torch.ones(1)
    for _ in range(3):
        dist.all_reduce(t)  # rank 1 is gone after the first: the connection breaks


def test_an_error_in_another_rank_reaches_rank_0_with_its_message():
    # the traceback of rank 1, not rank 0's broken connection
    expected = r"(?s)rank 1 of 2 failed: .*_fail_on_rank_1.*ValueError: rank 1 cannot read its shard"
    with pytest.raises(distributed.RankFailed, match=expected):
        distributed.run_ranks(2, _rank_0_waits, _fail_on_rank_1, ())


# ------------------------------------------------------------------ training on 1 and 2 processes
def _learning_spec(epochs: int, devices: int) -> dict:
    spec = tiny_run_spec(epochs=epochs)  # a width-4 U-Net (batch norm), batch 2, 6 train / 2 val images
    spec["train"].update(optimizer="sgd", lr=0.05, devices=devices)
    return spec


def _history(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_two_processes_train_like_one(tiny_dataset, tmp_path, capfd):
    one = train_mod.train_run(_learning_spec(6, 1), tiny_dataset, tmp_path / "one", threads=1, progress=False)
    capfd.readouterr()
    code = segbench_main(["train", "--spec", json.dumps(_learning_spec(6, 2)), "--data", str(tiny_dataset),
                          "--out", str(tmp_path / "two"), "--threads", "1", "--quiet"])
    assert code == 0
    # rank 0 alone printed the rows (the other rank's output goes to the same terminal)
    assert capfd.readouterr().out.count("epoch 6/6:") == 1
    two = json.loads((tmp_path / "two" / "run.json").read_text())
    assert (one["world_size"], one["batch_per_device"]) == (1, 2)
    assert (two["world_size"], two["batch_per_device"], two["sync_bn"]) == (2, 1, True)
    h1, h2 = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert h1[-1]["train_loss"] < 0.8 * h1[0]["train_loss"]  # the run learns
    loss_diff = [abs(a["train_loss"] - b["train_loss"]) / a["train_loss"] for a, b in zip(h1, h2)]
    miou_diff = abs(h1[-1]["val_mIoU"] - h2[-1]["val_mIoU"]) * 100
    print(f"largest train-loss difference {max(loss_diff):.2%}, final mIoU difference {miou_diff:.2f} points")
    assert len(h2) == 6 and max(loss_diff) < 0.03
    assert miou_diff < 2.0


def test_a_global_batch_that_does_not_divide_is_refused(tiny_dataset, tmp_path):
    spec = _learning_spec(1, 2)
    spec["train"]["batch_size"] = 3
    with pytest.raises(UserError, match=r"train.batch_size=3 .* train.devices=2"):
        train_mod.train_run(spec, tiny_dataset, tmp_path / "r", threads=1, progress=False)
    assert not (tmp_path / "r" / "ckpt").exists()


class _Stop(UserError):
    pass


def test_a_checkpoint_written_by_two_processes_resumes_with_one(tiny_dataset, tmp_path, monkeypatch):
    real_checkpoint = train_mod.checkpoint

    def stop_after_epoch_2(run, history, *args, **kwargs):
        real_checkpoint(run, history, *args, **kwargs)
        if len(history) == 2:
            raise _Stop("stopped after epoch 2")

    monkeypatch.setattr(train_mod, "checkpoint", stop_after_epoch_2)  # rank 0 (this process) only
    with pytest.raises(_Stop):
        train_mod.train_run(_learning_spec(3, 2), tiny_dataset, tmp_path / "r", threads=1, progress=False)
    monkeypatch.setattr(train_mod, "checkpoint", real_checkpoint)
    interrupted = torch.load(tmp_path / "r" / "ckpt" / "last.pt", weights_only=True)
    assert interrupted["epoch"] == 2
    record = train_mod.train_run(_learning_spec(3, 1), tiny_dataset, tmp_path / "r", threads=1, progress=False)
    assert record["resumed_from_epoch"] == 2 and record["world_size"] == 1
    history = _history(tmp_path / "r")
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # the model trained on after the resume: the final weights differ from the checkpoint's
    final = torch.load(tmp_path / "r" / "model.pt", weights_only=True)
    assert any(not torch.equal(final[k], interrupted["model"][k]) for k in final if final[k].is_floating_point())
    assert np.isfinite(history[-1]["val_mIoU"])


# ------------------------------------------------------------------ through the real Snakefile
TINY_DDP = {
    "datasets": {"synthetic": {"source": "synthetic",
                               "generate": {"seed": 1, "train": 6, "val": 2, "height": 64, "width": 128}}},
    "models": {"unet": {"arch": "unet", "params": {"width": 4}}},
    "losses": {"ce": {"type": "ce"}},
    "train": {"epochs": 4, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1,
              "optimizer": "sgd", "lr": 0.05, "devices": 2},
    "eval": {"batch_size": 2, "samples": 1},
    "profile": {"warmup": 1, "iterations": 1, "threads": 1},
    "studies": {"only": {"datasets": ["synthetic"], "models": ["unet"], "losses": ["ce"], "seeds": [0]}},
}


@pytest.mark.slow
def test_the_snakefile_trains_a_run_on_two_processes_like_on_one(tmp_path):
    import yaml

    from pipeline_support import snakemake

    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY_DDP))
    run = wd / "results" / "runs" / "synthetic" / "unet" / "ce" / "s0"
    snakemake(wd, str(run.relative_to(wd) / "run.json"), cores="2", env_extra={"SEGBENCH_DEVICE": "cpu"})
    record = json.loads((run / "run.json").read_text())
    assert (record["world_size"], record["batch_per_device"]) == (2, 1)
    spec = record["config"]
    spec["train"]["devices"] = 1
    ref = train_mod.train_run(spec, wd / "results" / "data" / "synthetic", tmp_path / "one", threads=1,
                              progress=False)
    assert ref["config_hash"] == record["config_hash"]  # the same run: devices is not part of it
    h1, h2 = _history(tmp_path / "one"), _history(run)
    assert len(h1) == len(h2) == 4
    assert h1[-1]["train_loss"] < 0.9 * h1[0]["train_loss"]  # the run learns
    loss_diff = [abs(a["train_loss"] - b["train_loss"]) / a["train_loss"] for a, b in zip(h1, h2)]
    miou_diff = abs(h1[-1]["val_mIoU"] - h2[-1]["val_mIoU"]) * 100
    print(f"largest train-loss difference {max(loss_diff):.2%}, final mIoU difference {miou_diff:.2f} points")
    assert max(loss_diff) < 0.03
    assert miou_diff < 2.0
