"""Trainings start longest first: the estimated cost (MACs x images x epochs) and the
priorities Snakemake gets from it."""

import copy
import json

import pytest

from conftest import MINIMAL_CONFIG
import segbench.schedule as schedule


def plan_of(cfg):
    from segbench.config import validate_config
    from segbench.plan import Plan

    return Plan(validate_config(cfg))


@pytest.fixture
def cfg():
    c = copy.deepcopy(MINIMAL_CONFIG)
    c["train"]["crop"] = [64, 128]
    c["models"] = {"wide": {"arch": "unet", "params": {"width": 8}},
                   "narrow": {"arch": "unet", "params": {"width": 4}},
                   "longer": {"arch": "unet", "params": {"width": 4}, "train": {"epochs": 12}}}
    big = copy.deepcopy(c["datasets"]["synthetic"])
    big["generate"]["train"] = 320
    c["datasets"]["big"] = big
    c["studies"] = {"s": {"datasets": ["synthetic", "big"], "models": ["wide", "narrow", "longer"], "losses": ["ce"],
                          "seeds": [0]}}
    return c


def test_cost_is_macs_times_images_times_epochs(cfg, tmp_path):
    costs = schedule.train_costs(plan_of(cfg), tmp_path / "macs.json")
    macs = schedule.count_macs("unet", {"width": 4}, 19, [64, 128])
    assert costs["synthetic/narrow/ce/s0"] == macs * 160 * 6          # MINIMAL_CONFIG: 6 epochs
    assert costs["big/narrow/ce/s0"] == 2 * costs["synthetic/narrow/ce/s0"]       # twice the images
    assert costs["synthetic/longer/ce/s0"] == 2 * costs["synthetic/narrow/ce/s0"]  # twice the epochs
    # U-Net's convolutions scale with the square of the width (the 3-channel stem and the
    # 1x1 classifier less): doubling it costs between 3x and 4x
    assert 3 < costs["synthetic/wide/ce/s0"] / costs["synthetic/narrow/ce/s0"] < 4


def test_priorities_put_the_costliest_first(cfg, tmp_path):
    p = schedule.train_priorities(plan_of(cfg), tmp_path / "macs.json")
    order = sorted(p, key=p.get, reverse=True)
    assert order[0] == "big/wide/ce/s0" and p[order[0]] == schedule.HIGH
    assert all(schedule.LOW < v <= schedule.HIGH for v in p.values())
    assert order[-1] == "synthetic/narrow/ce/s0"


def test_the_counts_are_cached(cfg, tmp_path, monkeypatch):
    cache = tmp_path / "macs.json"
    first = schedule.train_costs(plan_of(cfg), cache)
    assert len(json.loads(cache.read_text())) == 2  # two distinct (arch, params, classes, crop)

    def no_counting(*a, **k):
        raise AssertionError("counted again although cached")
    monkeypatch.setattr(schedule, "count_macs", no_counting)
    assert schedule.train_costs(plan_of(cfg), cache) == first
    cache.write_text("{not json")  # a damaged cache is recounted, not an error
    monkeypatch.undo()
    assert schedule.train_costs(plan_of(cfg), cache) == first


def test_real_datasets_count_their_published_train_split():
    assert schedule.train_images({"source": "cityscapes"}) == 2975
    assert schedule.train_images({"source": "ade20k"}) == 20210
    assert schedule.train_images({"source": "voc"}) == 10582  # trainaug
    assert schedule.train_images({"source": "voc", "trainaug": False}) == 1464
    assert schedule.train_images({"source": "bdd100k"}) == 7000
