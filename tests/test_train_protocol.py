"""The training-protocol keys the papers state (issue 16): ``train.scale_step`` (PAC: scales
0.5-2.0 in steps of 0.25), ``train.bn_momentum`` (PAC: batch-norm decay 0.9997),
``train.augment`` (the U-Net vs SegNet report's flip/blur/rain/snow) and the photometric
jitter no paper describes, off by default."""

import copy
from collections import Counter
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from conftest import tiny_run_spec
from segbench.config import ConfigError, load_schema, scale_steps, validate_config
from segbench.data.transforms import AUGMENTATIONS, SteppedRandomScale, augmentation_examples, train_transform

ROOT = Path(__file__).resolve().parents[1]
BASE = {"crop": [64, 64], "scale": [1.0, 1.0], "hflip": False}


def kinds(compose):
    return [type(t).__name__ for t in compose.transforms]


# ----------------------------------------------------------------------------- scale_step

def test_scale_steps_are_the_papers_seven_factors():
    assert scale_steps(0.5, 2.0, 0.25) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert scale_steps(0.75, 1.5, 0.25) == [0.75, 1.0, 1.25, 1.5]
    assert scale_steps(1.0, 1.0, 0.5) == [1.0]
    with pytest.raises(ConfigError, match=r"'train.scale_step': 0.4 does not divide the scale range \[0.5, 2\]"):
        scale_steps(0.5, 2.0, 0.4)
    with pytest.raises(ConfigError, match="train.scale_step"):
        scale_steps(0.5, 2.0, 0)


def test_stepped_scale_draws_only_the_steps_uniformly():
    t = train_transform({**BASE, "crop": [32, 32], "scale": [0.5, 2.0], "scale_step": 0.25})
    scaler = t.transforms[0]
    assert isinstance(scaler, SteppedRandomScale) and scaler.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    pipe = A.Compose([scaler], seed=0)
    image = np.zeros((100, 40, 3), np.uint8)
    mask = np.zeros((100, 40), np.uint8)
    heights = Counter(pipe(image=image, mask=mask)["mask"].shape[0] for _ in range(1400))
    assert sorted(heights) == [50, 75, 100, 125, 150, 175, 200]          # 100 x each factor, nothing else
    assert all(140 <= n <= 260 for n in heights.values()), heights        # 200 expected each (7 x 200)
    # without a step the factor is continuous: far more than 7 sizes
    pipe = A.Compose([train_transform({**BASE, "scale": [0.5, 2.0]}).transforms[0]], seed=0)
    assert len({pipe(image=image)["image"].shape[0] for _ in range(200)}) > 50


def test_stepped_scale_is_seeded_like_the_other_transforms():
    spec = {**BASE, "crop": [32, 32], "scale": [0.5, 2.0], "scale_step": 0.25}
    image = np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    outs = []
    for _ in range(2):
        t = train_transform(spec)
        t.set_random_seed(7)
        outs.append([t(image=image)["image"] for _ in range(5)])
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


def test_scale_step_that_does_not_divide_the_range_fails_naming_the_key(minimal_config):
    cfg = copy.deepcopy(minimal_config)
    cfg["datasets"]["synthetic"]["train"] = {"scale": [0.5, 2.0], "scale_step": 0.4}
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    msg = str(e.value)
    assert "config key 'datasets.synthetic.train.scale_step': 0.4 does not divide the scale range [0.5, 2]" in msg
    assert msg.count("does not divide") == 1                      # once, though two models use it
    # a model's own scale makes the global step fit again, and vice versa
    cfg = copy.deepcopy(minimal_config)
    cfg["train"]["scale_step"] = 0.25                             # global scale [0.75, 1.5] is the default
    validate_config(cfg)
    cfg["models"]["segnet"]["train"] = {"scale": [0.5, 1.2]}
    with pytest.raises(ConfigError, match=r"'train.scale_step': 0.25 does not divide the scale range \[0.5, 1.2\] "
                                          r".*model 'segnet'"):
        validate_config(cfg)


# ----------------------------------------------------------------------------- bn_momentum

def test_set_bn_momentum_is_one_minus_the_decay():
    from segbench.engine.train import set_bn_momentum

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2)))
    assert set_bn_momentum(model, None) == 0 and model[1].momentum == 0.1       # torch's default kept
    assert set_bn_momentum(model, 1 - 0.9997) == 2
    assert model[1].momentum == model[2][1].momentum == pytest.approx(0.0003)
    # one training step: running_mean = (1 - m) * 0 + m * batch mean (TF: decay * old + (1 - decay) * new)
    model.train()
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch_mean = model[0](x).mean(dim=(0, 2, 3))
        model(x)
    assert torch.allclose(model[1].running_mean, 0.0003 * batch_mean, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="train.bn_momentum"):
        set_bn_momentum(model, 0.9997 + 1)


@pytest.mark.parametrize("momentum", [0.0003, None])
def test_training_applies_bn_momentum_to_every_batch_norm(tiny_dataset, tmp_path, monkeypatch, momentum):
    import segbench.engine.train as train

    built = []

    def build_model(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    real = train.build_model
    monkeypatch.setattr(train, "build_model", build_model)
    spec = tiny_run_spec(epochs=1)
    spec["train"]["bn_momentum"] = momentum
    train.train_run(spec, tiny_dataset, tmp_path / "run", threads=1, progress=False)
    norms = [m for m in built[-1].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) > 10
    assert {m.momentum for m in norms} == {0.1 if momentum is None else momentum}


# ----------------------------------------------------------------------------- augment, photometric

def test_schema_defaults_leave_the_papers_protocol_alone(minimal_config):
    tr = validate_config(minimal_config)["train"]
    assert tr["photometric"] is False and tr["augment"] == []
    assert tr["scale_step"] is None and tr["bn_momentum"] is None
    assert "ColorJitter" not in kinds(train_transform(BASE))                 # the code's default too
    assert "ColorJitter" in kinds(train_transform({**BASE, "photometric": True}))


def test_schema_names_the_known_augmentations():
    schema = load_schema()
    assert schema["$defs"]["train"]["properties"]["augment"]["items"]["enum"] == list(AUGMENTATIONS)


def test_augment_adds_the_named_transforms_with_their_probabilities():
    t = train_transform({**BASE, "augment": ["snow", "blur"]})
    assert kinds(t) == ["PadIfNeeded", "RandomCrop", "GaussianBlur", "RandomSnow"]   # the table's order
    assert [x.p for x in t.transforms[2:]] == [0.25, 0.25]
    # flip: the same flip as hflip, applied once when both ask for it
    for spec in ({**BASE, "augment": ["flip"]}, {**BASE, "hflip": True}, {**BASE, "hflip": True, "augment": ["flip"]}):
        t = train_transform(spec)
        assert kinds(t).count("HorizontalFlip") == 1 and t.transforms[2].p == 0.5
    assert "HorizontalFlip" not in kinds(train_transform(BASE))


def test_training_and_figure_6_share_one_definition():
    figure = augmentation_examples()
    assert list(figure) == list(AUGMENTATIONS) == ["flip", "blur", "rain", "snow"]
    t = train_transform({**BASE, "augment": list(AUGMENTATIONS)})
    trained = {type(x).__name__: x for x in t.transforms[2:]}
    for name, shown in figure.items():
        assert shown.p == 1.0
        used = trained[type(shown).__name__]
        drop_p = (lambda d: {k: v for k, v in d["transform"].items() if k != "p"})
        assert drop_p(used.to_dict()) == drop_p(shown.to_dict()), name


def test_weather_and_blur_change_the_image_and_never_the_label():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (64, 64), dtype=np.uint8)
    t = train_transform({**BASE, "augment": ["blur", "rain", "snow"]})
    t.set_random_seed(0)
    changed = 0
    for _ in range(20):
        out = t(image=image, mask=mask)
        assert np.array_equal(out["mask"], mask)
        changed += not np.array_equal(out["image"], image)
    assert 5 <= changed <= 19      # P(none of three at p 0.25) = 0.42: some crops stay clean, most not


def test_random_decisions_are_independent_after_seeding():
    """The trainer seeds the pipeline with set_random_seed (per epoch, per worker): every
    transform must not replay one sequence. Flip (p 0.5) against the rescale factor, and the
    pairs of blur / rain / snow (p 0.25 each: 1/16 together)."""
    t = train_transform({"crop": [32, 32], "scale": [0.5, 2.0], "hflip": True, "augment": ["blur", "rain", "snow"]})
    t.save_applied_params = True
    t.set_random_seed(3)
    image = np.zeros((40, 40, 3), np.uint8)
    draws = []
    for _ in range(2000):
        applied = dict(t(image=image)["applied_transforms"])
        names = ("HorizontalFlip", "GaussianBlur", "RandomRain", "RandomSnow")
        draws.append((applied["RandomScale"]["scale"], *(k in applied for k in names)))
    scale, flip, blur, rain, snow = (np.array(c) for c in zip(*draws))
    for half in (scale < 1.25, scale >= 1.25):        # lockstep streams: flip exactly on the lower half
        assert 0.42 < flip[half].mean() < 0.58
    for a, b in ((blur, rain), (blur, snow), (rain, snow)):
        assert 0.2 < a.mean() < 0.3 and 0.04 < (a & b).mean() < 0.085


def test_unknown_augmentation_fails_naming_the_key(minimal_config):
    with pytest.raises(ValueError, match=r"train.augment: 'fog' is not a known augmentation; allowed values: "
                                         r"flip, blur, rain, snow"):
        train_transform({**BASE, "augment": ["blur", "fog"]})
    cfg = copy.deepcopy(minimal_config)
    cfg["models"]["unet"]["train"] = {"augment": ["flip", "fog"]}
    with pytest.raises(ConfigError, match=r"config key 'models.unet.train.augment\[1\]': 'fog' is not allowed; "
                                          r"allowed values: flip, blur, rain, snow"):
        validate_config(cfg)


# ----------------------------------------------------------------------------- the shipped configs

def _plan(name):
    from segbench.config import load_config
    from segbench.plan import Plan

    return Plan(load_config(ROOT / name))


def test_paper_config_trains_voc_aug_with_the_pac_protocol():
    plan = _plan("workflow/configs/paper.yaml")
    pac = [r for r in plan.studies["pac_bal"]]
    assert pac and all(r.dataset == "voc_aug" for r in pac)
    for r in pac:
        tr = plan.run_spec(r)["train"]
        assert tr["scale"] == [0.5, 2.0] and tr["scale_step"] == 0.25 and tr["bn_momentum"] == pytest.approx(0.0003)
    # no other dataset takes them
    others = [r for r in plan.runs if r.dataset != "voc_aug"]
    assert others and all(plan.run_spec(r)["train"]["scale_step"] is None
                          and plan.run_spec(r)["train"]["bn_momentum"] is None for r in others)


@pytest.mark.parametrize("name", ["config.yaml", "workflow/configs/paper.yaml"])
def test_unet_segnet_study_compares_with_and_without_augmentation(name):
    plan = _plan(name)
    runs = {r.model: plan.run_spec(r) for r in plan.studies["unet_segnet"]}
    assert sorted(runs) == ["segnet_mobilenet", "segnet_mobilenet_aug", "unet_xception", "unet_xception_aug"]
    for base in ("unet_xception", "segnet_mobilenet"):
        plain, aug = runs[base], runs[f"{base}_aug"]
        assert plain["train"]["augment"] == [] and aug["train"]["augment"] == ["flip", "blur", "rain", "snow"]
        # the same model, data and protocol otherwise
        assert plain["model"]["params"] == aug["model"]["params"] and plain["model"]["arch"] == aug["model"]["arch"]
        assert {k: v for k, v in plain["train"].items() if k != "augment"} == \
               {k: v for k, v in aug["train"].items() if k != "augment"}
        assert plain["train"]["photometric"] is False


def test_default_config_adds_two_runs_of_the_unet_segnet_size():
    plan = _plan("config.yaml")
    assert len(plan.studies["unet_segnet"]) == 4
    spec = {r.model: plan.run_spec(r)["train"] for r in plan.studies["unet_segnet"]}
    assert spec["unet_xception_aug"]["epochs"] == spec["unet_xception"]["epochs"]
    assert spec["segnet_mobilenet_aug"]["batch_size"] == spec["segnet_mobilenet"]["batch_size"]



def test_training_with_augment_and_scale_step_is_deterministic(tiny_dataset, tmp_path):
    """A run with every new key, through a DataLoader worker (seeded per worker): the same
    spec gives the same weights twice."""
    from segbench.engine.train import train_run

    spec = tiny_run_spec(epochs=1)
    spec["train"].update(augment=["flip", "blur", "rain", "snow"], scale=[0.75, 1.5], scale_step=0.25,
                         bn_momentum=0.01, workers=1)
    for name in ("a", "b"):
        train_run(spec, tiny_dataset, tmp_path / name, threads=1, progress=False)
    wa, wb = (torch.load(tmp_path / n / "model.pt", weights_only=True) for n in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
