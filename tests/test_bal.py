"""Boundary-aware loss: hand-computed weight maps, ignore handling, both variants."""

import math

import pytest
import torch
import torch.nn.functional as F

from segbench.losses import build_loss
from segbench.losses.bal import BoundaryAwareLoss, bal_kernel, boundary_weight, edge_image

IGN = 255


def vertical_boundary(h=9, w=12, col=6):
    """class 0 in columns < col, class 1 from col on: the edge (sum_i E_i = 2) is column col-1."""
    lab = torch.zeros(h, w, dtype=torch.long)
    lab[:, col:] = 1
    return lab


# ----------------------------------------------------------------------------- edges


def test_edge_on_the_last_column_before_the_boundary():
    e = edge_image(vertical_boundary())
    expect = torch.zeros(9, 12)
    expect[:, 5] = 2.0  # one per class: E_0 and E_1 both mark the pixel
    assert torch.equal(e, expect)
    # horizontal boundary, and three classes meeting
    lab = torch.tensor([[0, 0, 1],
                        [2, 2, 1],
                        [2, 2, 1]])
    assert edge_image(lab).tolist() == [[2, 3, 0],
                                        [0, 2, 0],
                                        [0, 2, 0]]


def one_hot_filter_edges(lab, num_classes):
    """The paper's formula literally: one-hot, correlate with f_E (replicate-padded bottom/right),
    |.| > 0, summed over classes."""
    oh = F.one_hot(lab, num_classes).permute(2, 0, 1).float()[None]
    oh = F.pad(oh, (0, 1, 0, 1), mode="replicate")
    f_e = torch.tensor([[1.0, -0.5], [-0.5, 0.0]]).view(1, 1, 2, 2).repeat(num_classes, 1, 1, 1)
    e = F.conv2d(oh, f_e, groups=num_classes)
    return (e.abs() > 0).float().sum(1)[0]


def test_edges_match_the_one_hot_filter_on_random_labels():
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, 4, (8, 11), generator=g)
    lab = F.interpolate(lab[None, None].float(), size=(24, 33), mode="nearest")[0, 0].long()  # blobs
    lab[5, 7] = 3
    assert torch.equal(edge_image(lab), one_hot_filter_edges(lab, 4))


def test_ignore_pixels_create_no_edges():
    # class 0 | ignore strip | class 1: the classes never touch, so no edge anywhere
    lab = torch.zeros(6, 10, dtype=torch.long)
    lab[:, 4:6] = IGN
    lab[:, 6:] = 1
    assert edge_image(lab).sum() == 0
    # brute force on a random map with ignore: #distinct labelled classes among (p, right, down) if >= 2
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 4, (12, 15), generator=g)
    lab[torch.rand(12, 15, generator=g) < 0.3] = IGN
    e = edge_image(lab)
    for y in range(12):
        for x in range(15):
            trio = {int(lab[y, x]), int(lab[y, min(x + 1, 14)]), int(lab[min(y + 1, 11), x])} - {IGN}
            assert e[y, x] == (len(trio) if len(trio) >= 2 else 0), (y, x)


# ----------------------------------------------------------------------------- kernels


def test_kernels_normalised_to_unit_range():
    lin = bal_kernel("linear", 3)
    assert lin.tolist() == [[0.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 0.0]]
    g = bal_kernel("gaussian", 35, 3.0)
    assert g.max() == 1.0 and g.min() == 0.0 and g[17, 17] == 1.0
    # gaussian, size 3, sigma 1: exp(-r^2 / 3), min-max normalised
    lo = math.exp(-2 / 3)
    assert bal_kernel("gaussian", 3, 1.0)[0, 1].item() == pytest.approx((math.exp(-1 / 3) - lo) / (1 - lo))
    ref = bal_kernel("gaussian", 35, 3.0, variant="reference")
    assert ref.sum().item() == pytest.approx(1.0)
    assert ref[17, 18].item() / ref[17, 17].item() == pytest.approx(math.exp(-1 / (17 * 3.0)))


@pytest.mark.parametrize("kernel,variant", [("gaussian", "paper"), ("linear", "paper"), ("gaussian", "reference")])
def test_separable_convolution_equals_the_dense_one(kernel, variant):
    lab = torch.zeros(40, 56, dtype=torch.long)
    lab[10:30, 15:40] = 1
    lab[22:, 30:] = 2
    w = boundary_weight(lab, 3, kernel=kernel, size=11, sigma=2.0, beta=0.0, down=1, variant=variant)
    dense = F.conv2d(edge_image(lab)[None, None].double(), bal_kernel(kernel, 11, 2.0, variant)[None, None],
                     padding=5)[0, 0]
    if variant == "reference":
        dense = (1.5 * dense).clamp(0, 4)
    assert torch.allclose(w.double(), dense, atol=1e-5)


# ----------------------------------------------------------------------------- E_G by hand


def test_straight_boundary_linear_3_by_hand():
    # edge column 5 carries 2; linear 3x3 kernel [[0,.5,0],[.5,1,.5],[0,.5,0]]:
    # on column 5: 2 * (0.5 + 1 + 0.5) = 4; columns 4 and 6: 2 * 0.5 = 1; beta 0.5 on top
    w = boundary_weight(vertical_boundary(), 2, kernel="linear", size=3, beta=0.5, down=1)
    inner = w[1:-1]
    assert torch.allclose(inner[:, 5], torch.full((7,), 4.5))
    assert torch.allclose(inner[:, 4], torch.full((7,), 1.5))
    assert torch.allclose(inner[:, 6], torch.full((7,), 1.5))
    far = [c for c in range(12) if c not in (4, 5, 6)]
    assert torch.allclose(w[:, far], torch.full((9, len(far)), 0.5))
    # top and bottom rows: the zero padding loses the kernel's outer tap (2 * 1.5 + 0.5)
    assert w[0, 5].item() == pytest.approx(3.5) and w[-1, 5].item() == pytest.approx(3.5)


def test_straight_boundary_gaussian_by_hand():
    # gaussian size 5, sigma 1: f = exp(-r^2/5) min-max normalised; column sums times 2, plus beta
    lo = math.exp(-8 / 5)
    f = [[(math.exp(-(dx * dx + dy * dy) / 5) - lo) / (1 - lo) for dx in range(-2, 3)] for dy in range(-2, 3)]
    col = [sum(f[dy][dx] for dy in range(5)) for dx in range(5)]  # column sums by offset
    w = boundary_weight(vertical_boundary(h=15, w=20, col=10), 2, kernel="gaussian", size=5, sigma=1.0,
                        beta=0.3, down=1)
    row = w[7]
    for off in range(-2, 3):
        assert row[9 + off].item() == pytest.approx(2 * col[off + 2] + 0.3, rel=1e-5)
    assert row.argmax().item() == 9                         # peak on the edge column
    assert torch.allclose(row[:7], torch.full((7,), 0.3))  # beta far from it
    assert torch.allclose(row[12:], torch.full((8,), 0.3))
    for k in range(1, 9):                                   # symmetric about it
        assert row[9 - k].item() == pytest.approx(row[9 + k].item())


@pytest.mark.parametrize("down", [2, 4])
def test_straight_boundary_at_reduced_resolution(down):
    # the paper's best row; the boundary lies at the centre of a down x down block
    h, w = 64, 256
    col = 128 + down // 2  # edge column 128 + down/2 - 1: centre of its block on the boundary
    lab = vertical_boundary(h, w, col)
    wt = boundary_weight(lab, 2, down=down)
    row = wt[32]
    peak = row.argmax().item()
    assert abs(peak + 0.5 - col) <= 1.0
    reach = (35 // 2 + 2) * down
    assert torch.allclose(row[: col - reach], torch.full((col - reach,), 0.5))
    assert torch.allclose(row[col + reach:], torch.full((w - col - reach,), 0.5))
    for k in range(1, 60):  # symmetric about the boundary (between col-1 and col)
        assert row[col - k].item() == pytest.approx(row[col - 1 + k].item(), rel=1e-5)
    assert row.max().item() > 5.0  # well above beta: the whole edge mass lands near the boundary


@pytest.mark.parametrize("variant,kernel,down", [("paper", "gaussian", 1), ("paper", "gaussian", 4),
                                                 ("paper", "linear", 2), ("reference", "gaussian", 1),
                                                 ("reference", "gaussian", 4)])
def test_constant_label_is_beta_everywhere(variant, kernel, down):
    lab = torch.full((2, 30, 50), 3, dtype=torch.long)
    w = boundary_weight(lab, 5, kernel=kernel, size=15, sigma=1.0, beta=0.7, down=down, variant=variant)
    assert w.shape == lab.shape and w.dtype == torch.float32
    assert torch.equal(w, torch.full_like(w, 0.7))


def test_ignore_pixels_weigh_zero_and_make_no_edges():
    lab = torch.zeros(20, 30, dtype=torch.long)
    lab[5:15, 10:20] = IGN  # a hole of ignore in one class
    w = boundary_weight(lab, 2, size=7, down=1)
    assert torch.all(w[5:15, 10:20] == 0)
    valid = lab != IGN
    assert torch.allclose(w[valid], torch.full_like(w[valid], 0.5))  # no edge around the hole
    # the authors' code maps 255 to class 0: a hole in class 1 does make edges there
    lab1 = torch.where(lab == IGN, lab, torch.ones_like(lab))
    ref = boundary_weight(lab1, 2, size=7, down=1, variant="reference")
    assert torch.all(ref[5:15, 10:20] == 0) and ref[valid].max() > 0.5
    assert torch.equal(boundary_weight(lab1, 2, size=7, down=1), torch.where(valid, 0.5, 0.0))


def test_reference_variant_against_a_direct_transcription():
    """The authors' pipeline written out step by step (one-hot after 255 -> 0, 2x2 edge filter,
    two stride-2 all-ones 2x2 convolutions, dense 35x35 gaussian / sum, bilinear up with aligned
    corners, clip(1.5 g + 0.5, 0, 4))."""
    g = torch.Generator().manual_seed(3)
    lab = torch.randint(0, 3, (6, 8), generator=g)
    lab = F.interpolate(lab[None, None].float(), size=(48, 64), mode="nearest")[0, 0].long()
    lab[:6, :6] = IGN
    lab0 = torch.where(lab == IGN, 0, lab)
    edges = one_hot_filter_edges(lab0, 3)[None, None]
    ones = torch.ones(1, 1, 2, 2)
    small = F.conv2d(F.conv2d(edges, ones, stride=2), ones, stride=2)
    d = torch.arange(-17, 18, dtype=torch.float64)
    k = torch.exp(-(d[:, None] ** 2 / 51 + d[None, :] ** 2 / 51))
    blurred = F.conv2d(small.double(), (k / k.sum())[None, None], padding=17)
    up = F.interpolate(blurred, size=(48, 64), mode="bilinear", align_corners=True)[0, 0]
    expect = (1.5 * up + 0.5).clamp(0, 4)
    expect[lab == IGN] = 0
    got = boundary_weight(lab, 3, variant="reference")
    assert torch.allclose(got.double(), expect, atol=1e-5)


# ----------------------------------------------------------------------------- the loss


def test_loss_is_weighted_mean_over_labelled_pixels():
    g = torch.Generator().manual_seed(0)
    lab = vertical_boundary(16, 24, 10)[None].repeat(2, 1, 1)
    lab[1, :3] = IGN
    logits = torch.randn(2, 2, 16, 24, generator=g)
    bal = BoundaryAwareLoss(kernel="linear", size=5, beta=0.5, down=1)
    w = boundary_weight(lab, 2, kernel="linear", size=5, beta=0.5, down=1)
    ce = F.cross_entropy(logits, lab, ignore_index=IGN, reduction="none")
    valid = lab != IGN
    assert bal(logits, lab).item() == pytest.approx(((w * ce)[valid].sum() / valid.sum()).item(), rel=1e-6)
    # with a constant label and beta 1, BAL is plain cross-entropy
    const = torch.zeros(2, 16, 24, dtype=torch.long)
    const[0, 0, :5] = IGN
    assert BoundaryAwareLoss(beta=1.0)(logits, const).item() == pytest.approx(
        F.cross_entropy(logits, const, ignore_index=IGN).item(), rel=1e-6)


def test_ignore_pixels_carry_no_loss_or_gradient():
    lab = vertical_boundary(16, 24, 10)[None]
    lab[0, 4:8, 6:14] = IGN
    logits = torch.randn(1, 2, 16, 24, requires_grad=True)
    loss = build_loss({"type": "bal", "size": 5})
    value = loss(logits, lab)
    value.backward()
    assert torch.all(logits.grad[0, :, 4:8, 6:14] == 0)
    changed = logits.detach().clone()
    changed[0, :, 4:8, 6:14] = 100.0 * torch.randn(2, 4, 8)
    assert loss(changed, lab).item() == pytest.approx(value.item())
    assert loss(logits, torch.full_like(lab, IGN)).item() == 0.0


@pytest.mark.parametrize("spec,key,allowed", [
    ({"kernel": "box"}, "kernel", "gaussian, linear"),
    ({"down": 3}, "down", "1, 2, 4"),
    ({"variant": "authors"}, "variant", "paper, reference"),
    ({"size": 36}, "size", "odd integer"),
    ({"sigma": 0}, "sigma", "> 0"),
    ({"variant": "reference", "kernel": "linear"}, "kernel", "gaussian"),
])
def test_bad_options_name_key_and_allowed(spec, key, allowed):
    with pytest.raises(ValueError) as e:
        build_loss({"type": "bal", **spec})
    assert key in str(e.value) and allowed in str(e.value)


def test_label_out_of_range_names_the_value():
    with pytest.raises(ValueError, match="label value 7"):
        boundary_weight(torch.full((4, 4), 7), 3)
