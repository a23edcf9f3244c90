"""The evaluation protocols (segbench.engine.inference): whole, slide and test-time augmentation
agree with whole-image inference where they must, place mmsegmentation's windows, and are
recorded in metrics.json."""

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_run_spec
from segbench.engine.inference import class_scores, eval_protocol, predict, slide_windows
from segbench.errors import UserError


class PerPixel(nn.Module):
    """Logits from each pixel alone (a 1x1 convolution): translation-equivariant per pixel, so
    any window or padding gives a pixel the same logits."""

    def __init__(self, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x)


class Context(nn.Module):
    """A 3x3 convolution plus the mean over the whole input: the logits depend on the window."""

    def __init__(self, classes=3, seed=1):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + x.mean(dim=(1, 2, 3))[:, None, None, None]


class Mirrored(nn.Module):
    """f(x) = g(x) + flip(g(flip(x))): f(flip(x)) == flip(f(x)) bit for bit (the two terms
    swap places, and float addition is commutative)."""

    def __init__(self, classes=3):
        super().__init__()
        self.g = Context(classes, seed=2)

    def forward(self, x):
        return self.g(x) + torch.flip(self.g(torch.flip(x, dims=[3])), dims=[3])


def images(b=2, h=64, w=96, seed=0):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_whole_at_one_scale_is_the_models_argmax_exactly():
    model, x = Context(), images()
    assert torch.equal(predict(model, x, num_classes=3), model(x).argmax(1))
    assert torch.equal(predict(model, x, num_classes=3, mode="whole", scales=[1.0], flip=False), model(x).argmax(1))


@torch.inference_mode()
def test_slide_with_one_window_equal_to_the_image_is_whole():
    model, x = Context(), images(h=64, w=96)
    whole = model(x)
    for crop, stride in (([64, 96], [32, 32]), ([128, 128], [64, 64])):  # crop = image; crop larger than it
        scores = class_scores(model, x, num_classes=3, mode="slide", crop=crop, stride=stride)
        assert torch.equal(scores, whole)
        assert torch.equal(predict(model, x, num_classes=3, mode="slide", crop=crop, stride=stride), whole.argmax(1))


def test_windows_are_placed_as_mmsegmentation_places_them():
    # rows: ceil((96-64)/48)+1 = 2 windows, the second moved back to end at 96;
    # cols: ceil((160-64)/48)+1 = 3 windows at 0, 48, 96
    assert slide_windows(96, 160, [64, 64], [48, 48]) == [
        (0, 64, 0, 64), (0, 64, 48, 112), (0, 64, 96, 160),
        (32, 96, 0, 64), (32, 96, 48, 112), (32, 96, 96, 160)]
    assert slide_windows(32, 64, [64, 64], [32, 32]) == [(0, 32, 0, 64)]  # smaller than the crop: one window
    assert slide_windows(64, 64, [64, 64], [64, 64]) == [(0, 64, 0, 64)]
    assert slide_windows(128, 64, [64, 64], [64, 64]) == [(0, 64, 0, 64), (64, 128, 0, 64)]


@torch.inference_mode()
def test_slide_averages_the_logits_of_overlapping_windows():
    """A model whose logits depend on the window: each pixel's logits are the mean over the
    (hand-listed) windows covering it of that window's own logits."""
    model, x = Context(), images(h=96, w=160)
    windows = [(0, 64, 0, 64), (0, 64, 48, 112), (0, 64, 96, 160),
               (32, 96, 0, 64), (32, 96, 48, 112), (32, 96, 96, 160)]
    want = np.zeros((2, 3, 96, 160))
    count = np.zeros((96, 160))
    for y1, y2, x1, x2 in windows:
        want[:, :, y1:y2, x1:x2] += model(x[:, :, y1:y2, x1:x2].contiguous()).double().numpy()
        count[y1:y2, x1:x2] += 1
    assert set(np.unique(count)) == {1, 2, 4}  # overlaps of two and four windows
    got = class_scores(model, x, num_classes=3, mode="slide", crop=[64, 64], stride=[48, 48])
    np.testing.assert_allclose(got.numpy(), want / count, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_slide_on_a_per_pixel_model_equals_whole():
    model, x = PerPixel(), images(h=96, w=160)
    whole = model(x)
    scores = class_scores(model, x, num_classes=4, mode="slide", crop=[64, 64], stride=[32, 32])
    torch.testing.assert_close(scores, whole, rtol=1e-5, atol=1e-5)
    top2 = whole.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # pixels whose argmax no rounding can change
    assert clear.float().mean() > 0.99
    labels = predict(model, x, num_classes=4, mode="slide", crop=[64, 64], stride=[32, 32])
    assert torch.equal(labels[clear], whole.argmax(1)[clear])


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_on_a_mirror_symmetric_model_equals_no_flip(mode):
    model, x = Mirrored(), images(h=64, w=96)
    slide = {"crop": [64, 64], "stride": [32, 32]} if mode == "slide" else {}
    logits = class_scores(model, x, num_classes=3, mode=mode, **slide)
    flipped = class_scores(model, x, num_classes=3, mode=mode, flip=True, **slide)
    assert torch.equal(flipped, logits.softmax(1))  # two identical views: their mean probability
    assert torch.equal(predict(model, x, num_classes=3, mode=mode, flip=True, **slide), logits.softmax(1).argmax(1))
    assert (logits.softmax(1).argmax(1) == logits.argmax(1)).float().mean() > 0.999


@torch.inference_mode()
def test_flip_of_an_asymmetric_model_averages_the_mirrored_view():
    model, x = Context(), images(h=64, w=96)
    mirrored = torch.flip(model(torch.flip(x, dims=[3])), dims=[3])
    want = (model(x).softmax(1) + mirrored.softmax(1)) / 2
    torch.testing.assert_close(class_scores(model, x, num_classes=3, flip=True), want)


@torch.inference_mode()
def test_multi_scale_on_a_constant_image_gives_the_constants_prediction():
    model = Context(classes=3, seed=3)
    x = torch.full((1, 3, 64, 96), 0.7)
    want = model(x)[0, :, 32, 48].argmax()  # an inner pixel: away from the convolution's zero padding
    labels = predict(model, x, num_classes=3, scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True)
    assert labels.shape == (1, 64, 96)
    inner = labels[0, 8:-8, 8:-8]
    assert bool((inner == want).all())


@torch.inference_mode()
def test_multi_scale_matches_an_opencv_resize_of_each_view():
    """Each view resized with OpenCV (INTER_LINEAR, mmsegmentation's resize) instead of torch:
    the mean softmax probability agrees. 48 x 72 is not a multiple of 32: padded, which a
    per-pixel model ignores."""
    model, x = PerPixel(classes=4), images(b=1, h=64, w=96)
    image = x[0].permute(1, 2, 0).numpy()
    w1, b1 = model.conv.weight[:, :, 0, 0].numpy(), model.conv.bias.numpy()
    total = np.zeros((64, 96, 4))
    for s in (0.75, 1.5):
        small = cv2.resize(image, (int(96 * s + 0.5), int(64 * s + 0.5)), interpolation=cv2.INTER_LINEAR)
        logits = small @ w1.T + b1
        back = cv2.resize(logits, (96, 64), interpolation=cv2.INTER_LINEAR)
        e = np.exp(back - back.max(axis=2, keepdims=True))
        total += e / e.sum(axis=2, keepdims=True)
    got = class_scores(model, x, num_classes=4, scales=[0.75, 1.5])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, total / 2, atol=1e-4)


@pytest.mark.parametrize("kwargs, words", [
    ({"mode": "slide"}, ["eval.crop", "eval.stride"]),
    ({"mode": "slide", "crop": [64, 64]}, ["eval.stride"]),
    ({"mode": "slide", "stride": [32, 32]}, ["eval.crop"]),
    ({"mode": "slide", "crop": [64, 64], "stride": [96, 32]}, ["eval.stride", "larger than eval.crop"]),
    ({"mode": "slide", "crop": [64], "stride": [32, 32]}, ["eval.crop", "[height, width]"]),
    ({"mode": "tiles"}, ["eval.mode", "whole, slide"]),
    ({"crop": [64, 64]}, ["eval.mode slide only"]),
    ({"scales": []}, ["eval.scales"]),
    ({"scales": [1.0, 0]}, ["eval.scales", "0"]),
    ({"scales": [1.0, 1.0]}, ["more than once"]),
    ({"flip": "yes"}, ["eval.flip"]),
])
def test_bad_protocols_are_refused_naming_the_key(kwargs, words):
    with pytest.raises(UserError) as e:
        eval_protocol(**kwargs)
    for word in words:
        assert word in str(e.value)


def test_a_crop_the_model_cannot_take_is_refused():
    with pytest.raises(UserError, match=r"eval.crop \[48, 64\] must be multiples of 32"):
        class_scores(Context(), images(), num_classes=3, mode="slide", crop=[48, 64], stride=[32, 32])


def test_evaluate_with_slide_records_the_protocol_and_its_per_image_counts_add_up(tiny_dataset, tmp_path):
    from segbench.engine.evaluate import evaluate_run
    from segbench.engine.train import train_run

    run = tmp_path / "r"
    train_run(tiny_run_spec(epochs=1), tiny_dataset, run, threads=1, progress=False)
    whole = evaluate_run(run, tiny_dataset, batch_size=2, samples=0, threads=1, progress=False, n_boot=50)
    assert whole["eval_protocol"] == {"mode": "whole", "crop": None, "stride": None, "scales": [1.0], "flip": False}
    whole_conf = np.load(run / "confusion.npy")

    protocol = {"mode": "slide", "crop": [64, 64], "stride": [32, 32], "scales": [0.5, 1.0], "flip": True}
    metrics = evaluate_run(run, tiny_dataset, batch_size=2, samples=1, threads=1, progress=False, n_boot=50,
                           protocol=protocol)
    assert metrics["eval_protocol"] == protocol
    assert json.loads((run / "metrics.json").read_text())["eval_protocol"] == protocol
    conf = np.load(run / "confusion.npy")
    assert (np.load(run / "confusion_per_image.npy").sum(0) == conf).all()
    assert conf.sum() == whole_conf.sum()  # the same labelled pixels, scored once each
    with np.errstate(invalid="ignore"):  # classes absent from both: NaN, left out of the mean
        iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    assert metrics["mIoU"] == pytest.approx(float(np.nanmean(iou)))

    # the robustness job predicts under the same protocol: its clean mIoU is metrics.json's
    from segbench.engine.robustness import evaluate_corruptions

    robust = evaluate_corruptions(run, tiny_dataset, corruptions=["contrast"], severities=[3], batch_size=2,
                                  threads=1, progress=False, protocol=protocol)
    assert robust["eval_protocol"] == protocol
    assert robust["clean_mIoU"] == metrics["mIoU"]


def test_the_protocol_and_the_corruptions_never_change_a_run_spec(minimal_config):
    """Changing eval.mode/crop/stride/scales/flip or eval.corruptions reruns evaluation only:
    the train rule's param (Plan.run_spec) stays the same, and so does the config hash."""
    from segbench.config import validate_config
    from segbench.plan import Plan

    before = Plan(validate_config(minimal_config))
    minimal_config["eval"] = {**minimal_config.get("eval", {}), "mode": "slide", "crop": [64, 64],
                              "stride": [32, 32], "scales": [0.5, 1.0], "flip": True,
                              "corruptions": {"severities": [3]}}
    after = Plan(validate_config(minimal_config))
    assert before.runs == after.runs
    for run in before.runs:
        assert before.run_spec(run) == after.run_spec(run)
    minimal_config["eval"]["batch_size"] = 2  # validation during training uses it: a new spec
    changed = Plan(validate_config(minimal_config))
    assert all(changed.run_spec(r) != before.run_spec(r) for r in before.runs)
