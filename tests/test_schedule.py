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


def test_cost_is_the_work_of_a_crop_times_images_times_epochs(cfg, tmp_path):
    costs = schedule.train_costs(plan_of(cfg), tmp_path / "macs.json")
    work = schedule.count_work("unet", {"width": 4}, 19, [64, 128])
    assert costs["synthetic/narrow/ce/s0"] == pytest.approx(schedule.seconds_per_image(work) * 160 * 6)  # 6 epochs
    assert costs["big/narrow/ce/s0"] == pytest.approx(2 * costs["synthetic/narrow/ce/s0"])       # twice the images
    assert costs["synthetic/longer/ce/s0"] == pytest.approx(2 * costs["synthetic/narrow/ce/s0"])  # twice the epochs
    assert costs["synthetic/wide/ce/s0"] > costs["synthetic/narrow/ce/s0"]


def test_the_work_of_a_pass_is_counted_against_a_hand_count():
    """One 3x3 convolution 3 -> 8 channels (and its bias) at 32x64, then the classifier:
    U-Net at width 1 is too big to count by hand, so check the counter on the smallest model
    against its own parts: MACs match torch's flop counter, and the pass writes at least its
    output (19 x 32 x 64 logits) through at least one operator per layer."""
    macs, elements, ops = schedule.count_work("unet", {"width": 1, "depth": 1}, 19, [32, 64])
    # layers: 2 convs (3->1, 1->1) + pool + 2 convs (1->2, 2->2) + up-conv (2->1) + 2 convs (2->1, 1->1) + 1x1 (1->19)
    hand = 32 * 64 * (27 + 9) + 16 * 32 * (9 * 2 + 18 * 2) + 32 * 64 * (18 + 9) + 32 * 64 * 19
    assert abs(macs - hand) <= 32 * 64 * 8  # the up-sampling's own MACs (transposed conv or bilinear) aside
    assert elements >= 19 * 32 * 64 and ops >= 9
    assert schedule.seconds_per_image([macs, elements, ops]) > 0


def test_priorities_put_the_costliest_first(cfg, tmp_path):
    costs = schedule.train_costs(plan_of(cfg), tmp_path / "macs.json")
    p = schedule.priorities(costs)
    top = max(costs, key=costs.get)
    assert p[top] == schedule.HIGH and min(p, key=p.get) == "synthetic/narrow/ce/s0"
    for k in p:  # proportional to the cost
        assert p[k] - schedule.LOW == pytest.approx((schedule.HIGH - schedule.LOW) * costs[k] / costs[top])


def test_the_counts_are_cached(cfg, tmp_path, monkeypatch):
    cache = tmp_path / "macs.json"
    first = schedule.train_costs(plan_of(cfg), cache)
    written = json.loads(cache.read_text())
    assert len(written["counts"]) == 2  # two distinct (arch, params, classes, crop)
    assert written["models_fingerprint"] == schedule.models_fingerprint()

    def no_counting(*a, **k):
        raise AssertionError("counted again although cached")
    monkeypatch.setattr(schedule, "count_work", no_counting)
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


def test_counts_made_by_other_model_code_are_not_used(cfg, tmp_path, monkeypatch):
    cache = tmp_path / "macs.json"
    first = schedule.train_costs(plan_of(cfg), cache)
    data = json.loads(cache.read_text())
    data["counts"] = {k: [1, 1, 1] for k in data["counts"]}  # what other code would have counted
    data["models_fingerprint"] = "0" * 64
    cache.write_text(json.dumps(data))
    assert schedule.train_costs(plan_of(cfg), cache) == first  # recounted
    assert json.loads(cache.read_text())["models_fingerprint"] == schedule.models_fingerprint()


def test_the_shipped_counts_cover_the_shipped_configs_and_are_current(monkeypatch):
    """A fresh checkout's first run counts nothing: every run of config.yaml and paper.yaml is in
    segbench/schedule_counts.json, made by the current model code (else: `make schedule-counts`),
    and two of its entries equal a fresh count."""
    from pathlib import Path

    from segbench.config import load_config
    from segbench.plan import Plan

    root = Path(__file__).resolve().parents[1]
    shipped = json.loads(schedule.SHIPPED.read_text())
    assert shipped["models_fingerprint"] == schedule.models_fingerprint(), \
        "the model code changed since src/segbench/schedule_counts.json was written: run `make schedule-counts`"
    plans = [Plan(load_config(root / "config.yaml")), Plan(load_config(root / "workflow" / "configs" / "paper.yaml"))]
    for plan in plans:
        missing = {schedule.work_key(plan, r) for r in plan.runs} - set(shipped["counts"])
        assert not missing, f"not in schedule_counts.json (run `make schedule-counts`): {sorted(missing)}"

    def no_counting(*a, **k):
        raise AssertionError("counted although shipped")
    monkeypatch.setattr(schedule, "count_work", no_counting)
    for plan in plans:
        schedule.train_costs(plan, None)  # from the shipped table alone
    monkeypatch.undo()
    default = plans[0]
    for model in ("unet", "van_fpn_frm"):
        run = next(r for r in default.runs if r.model == model)
        key = schedule.work_key(default, run)
        assert schedule.count_work(*json.loads(key)) == shipped["counts"][key]
