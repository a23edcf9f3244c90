"""Loss registry, CE / Dice / focal / CE + pixel contrastive against independent values, and
the loss figures."""

import copy
import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import tiny_run_spec
from segbench.config import ConfigError, validate_config
from segbench.losses import available, build_loss, loss_class
from segbench.losses.contrastive import CEContrastive, pixel_contrast, sample_anchors

ROOT = Path(__file__).resolve().parents[1]
IGN = 255


def batch(n=2, c=4, h=6, w=8, seed=0, ignore=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < ignore] = IGN
    return logits, labels


# ----------------------------------------------------------------------------- registry


def test_every_type_builds_with_defaults():
    for kind in available():
        assert isinstance(build_loss({"type": kind}), torch.nn.Module)


def test_unknown_type_and_option_name_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed types: ce, dice, focal, bal, ce_contrastive"):
        build_loss({"type": "lovasz"})
    with pytest.raises(ValueError) as e:
        build_loss({"type": "focal", "gama": 2})
    assert "'gama'" in str(e.value) and "allowed keys: gamma, class_weights" in str(e.value)
    with pytest.raises(ValueError, match="needs a 'type' key"):
        build_loss({"kernel": "gaussian"})


@pytest.mark.parametrize("spec,key", [
    ({"type": "dice", "smooth": -1}, "smooth"),
    ({"type": "focal", "gamma": "two"}, "gamma"),
    ({"type": "ce", "class_weights": [1, -2]}, "class_weights"),
    ({"type": "ce_contrastive", "temperature": 0}, "temperature"),
    ({"type": "ce_contrastive", "max_anchors": 1}, "max_anchors"),
])
def test_bad_values_name_the_key(spec, key):
    with pytest.raises(ValueError, match=key):
        build_loss(spec)


# ----------------------------------------------------------------------------- ce, dice, focal


def test_ce_class_weights_by_hand():
    # two labelled pixels: class 0 with logits (2, 0), class 1 with logits (0, 1); one ignored
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]]).t().reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, IGN]]])
    ce0 = math.log(1 + math.exp(-2))
    ce1 = math.log(1 + math.exp(-1))
    assert build_loss({"type": "ce"})(logits, labels).item() == pytest.approx((ce0 + ce1) / 2)
    weighted = build_loss({"type": "ce", "class_weights": [1.0, 3.0]})(logits, labels)
    assert weighted.item() == pytest.approx((1 * ce0 + 3 * ce1) / 4)
    with pytest.raises(ValueError, match="class_weights has 3 entries but the model predicts 2 classes"):
        build_loss({"type": "ce", "class_weights": [1, 1, 1]})(logits, labels)
    assert build_loss({"type": "ce"})(logits, torch.full_like(labels, IGN)).item() == 0.0


def test_dice_against_a_brute_force_loop():
    logits, labels = batch(seed=1)
    for smooth in (1.0, 0.0):
        got = build_loss({"type": "dice", "smooth": smooth})(logits, labels).item()
        probs = torch.softmax(logits, 1)
        n, c, h, w = logits.shape
        dices = []
        for k in range(c):
            inter = sum_p = sum_t = 0.0
            for i in range(n):
                for y in range(h):
                    for x in range(w):
                        if labels[i, y, x] == IGN:
                            continue
                        p, t = probs[i, k, y, x].item(), float(labels[i, y, x] == k)
                        inter += p * t
                        sum_p += p
                        sum_t += t
            dices.append((2 * inter + smooth) / (sum_p + sum_t + smooth))
        assert got == pytest.approx(1 - sum(dices) / c, rel=1e-5)


def test_dice_of_a_perfect_prediction_is_near_zero():
    labels = torch.randint(0, 3, (1, 8, 8))
    logits = 50.0 * F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert build_loss({"type": "dice", "smooth": 0.0})(logits, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_leaves_out_classes_with_nothing_predicted_and_nothing_labelled():
    """smooth 0: a class absent from the labels and given no probability is 0/0 and does not
    count. A perfect (exactly one-hot) prediction with 1 of 5 classes absent: loss 0, not 0.2."""
    labels = torch.tensor([[[0, 1, 2, 3], [3, 2, 1, 0]]])                  # class 4 absent
    logits = torch.where(F.one_hot(labels, 5).permute(0, 3, 1, 2).bool(), 0.0, -math.inf)
    dice = build_loss({"type": "dice", "smooth": 0.0})
    assert dice(logits, labels).item() == 0.0
    d = dice.per_class(logits, labels)
    assert d[:4].tolist() == [1.0] * 4 and math.isnan(d[4].item())
    assert build_loss({"type": "dice", "smooth": 1.0})(logits, labels).item() == 0.0   # D_4 = 1 / 1
    # an absent class whose probability underflows to exactly 0 (finite logits): no NaN in the gradient
    soft = (200.0 * F.one_hot(labels, 5).permute(0, 3, 1, 2).float()).requires_grad_()
    loss = dice(soft, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(soft.grad).all()


def test_dice_by_hand_on_a_2x2_image():
    """Labels [[0, 1], [1, ignore]], 3 classes; softmax probabilities (class 0, class 1) of
    (3/4, 1/4), (1/2, 1/2), (1/4, 3/4) at the labelled pixels, class 2 given none (logit -inf).
    smooth 0: D_0 = 2 * 3/4 / (3/2 + 1) = 3/5, D_1 = 2 * (1/2 + 3/4) / (3/2 + 2) = 5/7, class 2
    left out: loss = 1 - (3/5 + 5/7) / 2 = 12/35. smooth 1: D_0 = 5/2 / 7/2 = 5/7,
    D_1 = 7/2 / 9/2 = 7/9, D_2 = 1 / 1: loss = 1 - (5/7 + 7/9 + 1) / 3 = 32/189."""
    ln3, inf = math.log(3.0), math.inf
    logits = torch.tensor([[[[ln3, 0.0], [0.0, 5.0]],        # class 0
                            [[0.0, 0.0], [ln3, 0.0]],        # class 1
                            [[-inf, -inf], [-inf, -inf]]]])  # class 2
    labels = torch.tensor([[[0, 1], [1, IGN]]])
    assert build_loss({"type": "dice", "smooth": 0.0})(logits, labels).item() == pytest.approx(12 / 35, rel=1e-6)
    assert build_loss({"type": "dice", "smooth": 1.0})(logits, labels).item() == pytest.approx(32 / 189, rel=1e-6)


def test_focal_by_hand_and_gamma_zero_is_ce():
    logits = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    labels = torch.zeros(1, 1, 1, dtype=torch.long)
    p = 1 / (1 + math.exp(-1))
    assert build_loss({"type": "focal", "gamma": 2})(logits, labels).item() == pytest.approx(
        -((1 - p) ** 2) * math.log(p))
    logits, labels = batch(seed=2)
    for weights in (None, [0.5, 1.0, 2.0, 0.0]):
        focal = build_loss({"type": "focal", "gamma": 0, "class_weights": weights})(logits, labels)
        ce = build_loss({"type": "ce", "class_weights": weights})(logits, labels)
        assert focal.item() == pytest.approx(ce.item(), rel=1e-6)


# ----------------------------------------------------------------------------- contrastive


def test_contrast_by_hand():
    # two classes, two anchors each, orthogonal per class: positives sim 1, negatives 0 (/ tau 0.1)
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    # each anchor: one positive (e^10), two negatives (e^0 each): -log(e^10 / (e^10 + 2))
    assert pixel_contrast(z, y, 0.1).item() == pytest.approx(math.log(1 + 2 * math.exp(-10)), abs=1e-6)
    # all at one point: -log(e^0 / (e^0 + 2))
    assert pixel_contrast(torch.ones(4, 2), y, 0.1).item() == pytest.approx(math.log(3), rel=1e-5)


def embeddings_for(labels, separated: bool, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, h, w = labels.shape
    centres = torch.eye(d)[:4] * 3.0
    noise = 0.3 * torch.randn(n, d, h, w, generator=g)
    if not separated:
        return torch.randn(n, d, h, w, generator=g)
    lab = torch.where(labels == IGN, 0, labels)
    return centres[lab].permute(0, 3, 1, 2) + noise


def test_contrastive_lower_for_separated_embeddings():
    logits, labels = batch(n=2, h=16, w=16, seed=3)
    loss = build_loss({"type": "ce_contrastive"})
    torch.manual_seed(0)
    sep = loss.contrastive(embeddings_for(labels, True), labels, logits).item()
    torch.manual_seed(0)  # the same anchors
    mixed = loss.contrastive(embeddings_for(labels, False), labels, logits).item()
    assert sep < 0.2 and mixed > 1.0 and mixed > 10 * sep
    # CE + lambda * contrast; without embeddings (validation) CE alone
    ce = build_loss({"type": "ce"})(logits, labels).item()
    assert loss(logits, labels).item() == pytest.approx(ce)
    torch.manual_seed(0)
    half = build_loss({"type": "ce_contrastive", "contrast_weight": 0.5})
    assert half(logits, labels, embeddings=embeddings_for(labels, False)).item() == pytest.approx(ce + 0.5 * mixed,
                                                                                                 rel=1e-5)


def test_contrastive_embeddings_at_lower_resolution():
    logits, labels = batch(n=2, h=32, w=32, seed=4)
    emb = torch.randn(2, 16, 8, 8, requires_grad=True)
    build_loss({"type": "ce_contrastive"})(logits, labels, embeddings=emb).backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"embeddings must be \[N, D, h, w\]"):
        build_loss({"type": "ce_contrastive"})(logits, labels, embeddings=torch.randn(2, 16, 8))


def test_anchor_sampling_is_bounded_and_prefers_hard_pixels():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 19, (4 * 128 * 256,), generator=g)
    labels[:1000] = IGN
    hard = torch.rand(labels.shape, generator=g) < 0.1
    idx = sample_anchors(labels, hard, samples_per_class=100, max_anchors=1024, generator=g)
    per_class = torch.bincount(labels[idx], minlength=19)
    assert len(idx) <= 1024 and per_class.max() <= 1024 // 19 and per_class.min() == 1024 // 19
    assert torch.all(labels[idx] != IGN) and len(set(idx.tolist())) == len(idx)
    assert hard[idx].float().mean() > 0.45  # half hard (10% of the pixels are)
    few = sample_anchors(torch.tensor([0, 0, 1, IGN]), torch.zeros(4, dtype=torch.bool), 100, 1024)
    assert sorted(few.tolist()) == [0, 1, 2]
    # a loss with a class of one anchor only (no positive for it) stays finite
    z = torch.randn(3, 4)
    assert torch.isfinite(pixel_contrast(z, torch.tensor([0, 0, 1]), 0.1))


def test_contrastive_loss_on_a_model_without_embeddings_fails_at_validation():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["losses"]["cc"] = {"type": "ce_contrastive"}
    study = next(iter(raw["studies"]))
    raw["studies"][study]["losses"] = ["ce", "cc"]
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    msg = str(e.value)
    assert f"studies.{study}.losses" in msg and "'cc' (ce_contrastive) needs pixel embeddings" in msg
    assert "'unet' (unet)" in msg and "architectures with one: van_fpn_frm, van_fpn_ppm, van_fpn_dappm" in msg


# ----------------------------------------------------------------------------- every loss


@pytest.mark.parametrize("spec", [
    {"type": "ce"}, {"type": "ce", "class_weights": [1, 2, 0.5, 1], "label_smoothing": 0.1},
    {"type": "dice"}, {"type": "focal"}, {"type": "focal", "gamma": 0.5, "class_weights": [1, 2, 0.5, 1]},
    {"type": "bal"}, {"type": "bal", "kernel": "linear", "down": 1, "size": 15},
    {"type": "bal", "variant": "reference"}, {"type": "ce_contrastive"},
])
def test_finite_gradients(spec):
    logits, labels = batch(n=2, h=32, w=32, seed=5)
    logits = (5 * logits).requires_grad_()
    loss_fn = build_loss(spec)
    emb = torch.randn(2, 8, 16, 16, requires_grad=True)
    loss = loss_fn(logits, labels, embeddings=emb) if getattr(loss_fn, "needs_embeddings", False) \
        else loss_fn(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    ignored = (labels == IGN).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)  # ignore pixels carry no loss
    if spec["type"] == "ce_contrastive":
        assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- figures


def test_loss_figures(tmp_path):
    from segbench.report.loss_figures import loss_figures_from_logits, pixel_loss_figure

    g = torch.Generator().manual_seed(0)
    labels = np.zeros((64, 128), dtype=np.uint8)
    labels[20:50, 30:90] = 1
    labels[:8, :8] = IGN
    image = (np.random.default_rng(0).random((64, 128, 3)) * 255).astype(np.uint8)
    logits = torch.randn(2, 64, 128, generator=g)
    paths = loss_figures_from_logits(image, labels, logits, tmp_path, {"type": "bal", "size": 9}, prefix="s0_")
    assert [p.name for p in paths] == ["s0_bal_weight.png", "s0_pixel_loss.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    with pytest.raises(ValueError, match="has shape"):
        pixel_loss_figure(image, labels, {"ce": np.zeros((3, 3))}, tmp_path / "x.png")


def test_loss_figures_module_imports_no_torch():
    code = "import sys, segbench.report.loss_figures; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={"PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"})


# ----------------------------------------------------------------------------- training


@pytest.fixture
def data_dir(tiny_dataset):
    return tiny_dataset


def run_spec(loss: dict) -> dict:
    # planned with CE, then the loss swapped in: config validation would refuse a
    # contrastive loss for a U-Net, and the training loop's own check is under test here
    spec = tiny_run_spec({"width": 4, "depth": 2}, epochs=1)
    spec["loss"] = {"name": "l", **loss}
    return spec


@pytest.mark.parametrize("loss", [{"type": "bal", "size": 9}, {"type": "dice"}, {"type": "focal"}])
def test_training_step_uses_the_configured_loss(data_dir, tmp_path, loss):
    from segbench.engine.train import train_run

    record = train_run(run_spec(loss), data_dir, tmp_path, threads=1, progress=False)
    assert record["config"]["loss"]["type"] == loss["type"]
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert math.isfinite(float(rows[0]["train_loss"])) and math.isfinite(float(rows[0]["val_loss"]))


def test_training_with_embeddings(data_dir, tmp_path, monkeypatch):
    import segbench.engine.train as train_mod
    from segbench.models import build_model

    class WithEmbeddings(torch.nn.Module):
        """A U-Net plus a 1x1 embedding head on its logits, standing in for the van_fpn models."""

        def __init__(self, net, num_classes):
            super().__init__()
            self.net, self.head = net, torch.nn.Conv2d(num_classes, 8, 1)

        def forward(self, x):
            return self.net(x)

        def forward_train(self, x):
            logits = self.net(x)
            return {"logits": logits, "embeddings": self.head(F.avg_pool2d(logits, 4))}

    spec = run_spec({"type": "ce_contrastive"})
    with pytest.raises(ValueError, match="needs pixel embeddings, but model 'unet' \\(unet\\) does not expose them"):
        train_mod.train_run(spec, data_dir, tmp_path / "plain", threads=1, progress=False)
    monkeypatch.setattr(train_mod, "build_model", lambda *a, **k: WithEmbeddings(build_model(*a, **k), a[1]))
    terms = []
    real = CEContrastive.contrastive
    monkeypatch.setattr(CEContrastive, "contrastive", lambda self, *a: terms.append(real(self, *a)) or terms[-1])
    train_mod.train_run(spec, data_dir, tmp_path / "emb", threads=1, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "emb" / "history.csv")))
    assert math.isfinite(float(rows[0]["train_loss"]))
    assert len(terms) == 6 // 2 and all(float(t.detach()) > 0 for t in terms)  # one term per step: 6 images, batch 2
