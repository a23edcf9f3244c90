"""The Gra layer against literal loop implementations of the paper's Algorithms 1 and 2.

The loops below walk every window P_m and every position (k, c) inside it, as the
algorithms are written (interpretations in src/segbench/models/gradnet.py); the layer
under test computes the same with pooling and transposed convolutions.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from segbench.models.gradnet import GraDNet, GraLayer, _pad_amount, gra


def _padded(x, K, l):
    h, w = x.shape[-2:]
    return F.pad(x, (0, _pad_amount(w, K, l), 0, _pad_amount(h, K, l)), mode="replicate")


def _windows(xp, K, l):
    hp, wp = xp.shape[-2:]
    return [(a, b) for a in range(0, hp - K + 1, l) for b in range(0, wp - K + 1, l)]


def algorithm1(P, lam):
    """g_m for one window P [N, C, K, K]: second-order differences if delta(P) < lambda, else 0."""
    K = P.shape[-1]
    g = torch.zeros_like(P)
    spread = P.amax(dim=(-2, -1)) - P.amin(dim=(-2, -1))                   # delta(P_m)
    for k in range(K - 1):
        for c in range(K - 1):
            g[..., k, c] = P[..., k + 1, c] + P[..., k, c + 1] - 2 * P[..., k, c]
    return g * (spread < lam).to(P.dtype)[..., None, None]


def gra_loop_count(x, K, l, lam):
    """Overlap-add of the windows' g_m, each pixel divided by the windows covering it."""
    xp = _padded(x, K, l)
    out, count = torch.zeros_like(xp), torch.zeros(xp.shape[-2:])
    for a, b in _windows(xp, K, l):
        out[..., a:a + K, b:b + K] += algorithm1(xp[..., a:a + K, b:b + K], lam)
        count[a:a + K, b:b + K] += 1
    return (out / count)[..., :x.shape[-2], :x.shape[-1]]


def gra_loop_halving(x, K, l, lam):
    """Algorithm 2 literally: a value a window shares with a neighbouring window (previous or
    next, along either axis) is halved, per axis; the windows are then added up."""
    xp = _padded(x, K, l)
    hp, wp = xp.shape[-2:]
    tops, lefts = range(0, hp - K + 1, l), range(0, wp - K + 1, l)
    out = torch.zeros_like(xp)
    for a in tops:
        for b in lefts:
            g = algorithm1(xp[..., a:a + K, b:b + K], lam)
            for k in range(K):
                for c in range(K):
                    r = g[..., k, c]
                    # overlap with the window above/below (same column band), then left/right
                    if (k < K - l and a - l in tops) or (k >= l and a + l in tops):
                        r = r / 2
                    if (c < K - l and b - l in lefts) or (c >= l and b + l in lefts):
                        r = r / 2
                    out[..., a + k, b + c] += r
    return out[..., :x.shape[-2], :x.shape[-1]]


@pytest.mark.parametrize("K, l, lam, size", [
    (3, 1, 0.8, (9, 11)),            # the paper's 3x3 / 1
    (3, 2, 0.8, (10, 7)),            # sizes that need padding
    (4, 3, 0.9, (13, 12)),
    (5, 2, 0.93, (12, 12)),
    (2, 1, float("inf"), (6, 5)),    # every window open
])
def test_gra_matches_loop_over_windows(K, l, lam, size):
    torch.manual_seed(K * 10 + l)
    x = torch.rand(2, 3, *size)      # window spreads around lambda: about half the windows open
    g = gra(x, K, l, lam)
    assert torch.count_nonzero(g) > g.numel() // 10
    assert torch.allclose(g, gra_loop_count(x, K, l, lam), atol=1e-5)


@pytest.mark.parametrize("K, l, lam, size", [(3, 2, 0.8, (11, 9)), (4, 2, 0.9, (10, 12)), (5, 3, 0.93, (14, 11))])
def test_gra_matches_algorithm2_halving(K, l, lam, size):
    # with l >= K/2 at most two windows overlap per axis: halving == dividing by the cover count
    torch.manual_seed(K + l)
    x = torch.rand(1, 2, *size)
    g = gra(x, K, l, lam)
    assert torch.count_nonzero(g) > g.numel() // 10
    assert torch.allclose(g, gra_loop_halving(x, K, l, lam), atol=1e-5)


def test_gra_hand_computed():
    # x(i, j) = 3i + j: every second-order difference is 3 + 1 = 4, every 2x2 window spreads 4
    x = (3 * torch.arange(3.0)[:, None] + torch.arange(3.0)[None, :])[None, None]
    g = gra(x, window=2, stride=1, lam=5.0)
    # (0,0): one window, difference defined there -> 4;  (1,1): four windows cover it, one
    # has it as its top-left (defined) -> 4 / 4;  last row and column: never defined -> 0
    expected = torch.tensor([[4.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(g[0, 0], expected)
    assert torch.count_nonzero(gra(x, window=2, stride=1, lam=4.0)) == 0     # delta < lambda fails


def test_gra_gate_and_gradients():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 16, 16, requires_grad=True)
    assert torch.count_nonzero(gra(x, 3, 1, 0.0)) == 0           # no window has spread < 0
    g = gra(x, 3, 1, math.inf)
    g.square().sum().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0
    with pytest.raises(ValueError, match="stride l"):
        GraLayer(3, 3)


def test_gradnet_fusion_and_table1_layers():
    m = GraDNet(8, structure="literal")  # the paper's widths, Table 1 alone
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 16                                                  # Conv1 .. Conv16
    assert convs[0].kernel_size == (11, 11) and convs[0].stride == (4, 4) and convs[0].out_channels == 128
    assert [c.kernel_size for c in convs[1:5]] == [(1, 3), (3, 1), (1, 5), (5, 1)]
    assert [c.out_channels for c in convs[1:5]] == [16, 16, 8, 8]
    assert [c.stride for c in convs[1:5]] == [(1, 2), (2, 1), (1, 1), (1, 1)]
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 8
    # residual fusion: with the Gra layer's output forced to 0, the stem passes unchanged
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    m.gra.lam = 0.0
    f = m.conv1(x)
    assert torch.equal(f + f * m.gra(f), f)


# ----------------------------------------------------------------------------- structure

def test_literal_structure_is_the_former_model():
    """``structure="literal"`` is GraDNet as it was before the residual reading: the figures
    below were computed from the former code (same seed, same input, float64)."""
    torch.manual_seed(0)
    m = GraDNet(5, width=8, stack_width=4, structure="literal").double()
    with torch.no_grad():
        assert sum(p.numel() for p in m.parameters()) == 3573
        assert float(sum(p.sum() for p in m.parameters())) == pytest.approx(49.26468006273808, rel=1e-12)
        assert float(sum(p.square().sum() for p in m.parameters())) == pytest.approx(166.05088364944947, rel=1e-12)
        x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        y = m.train()(x)
    assert y.shape == (2, 5, 64, 96)
    assert float(y.sum()) == pytest.approx(14677.192567729813, rel=1e-9)
    assert float(y.square().sum()) == pytest.approx(131017.84684777325, rel=1e-9)
    expected = [0.38400257178167535, 0.00200448413956181, -0.8382662231789857, 0.5333008540625133, 0.897621021779197]
    assert y[1, :, 30, 50].tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert sum(p.numel() for p in GraDNet(19, structure="literal").parameters()) == 60_643


@pytest.mark.parametrize("structure", ["residual", "literal"])
def test_both_structures_give_logits_at_the_input_size(structure):
    m = GraDNet(6, width=8, stack_width=4, structure=structure)
    for size in ((64, 96), (128, 64)):
        assert m(torch.randn(2, 3, *size)).shape == (2, 6, *size)


def test_residual_structure_keeps_table1_and_adds_shortcuts_and_fusion():
    from segbench.models.gradnet import ResidualPair

    m = GraDNet(8)                                               # the paper's widths, the default structure
    assert m.structure == "residual"
    pairs = [mod for mod in m.modules() if isinstance(mod, ResidualPair)]
    assert len(pairs) == 7                                       # 1x3/3x1 x 4 stages, 1x5/5x1 x 3
    assert [(p.conv_a.kernel_size, p.conv_b.kernel_size) for p in pairs[:2]] == [((1, 3), (3, 1)), ((1, 5), (5, 1))]
    assert [p.conv_a.out_channels for p in pairs] == [16, 8, 16, 8, 16, 8, 16]
    assert [(p.conv_a.stride, p.conv_b.stride) for p in pairs[:2]] == [((1, 2), (2, 1)), ((1, 1), (1, 1))]
    # every pair changes the channels: each shortcut is a 1x1 projection with the pair's stride
    assert all(p.shortcut[0].kernel_size == (1, 1) for p in pairs)
    assert [p.shortcut[0].stride for p in pairs] == [(2, 2), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1), (1, 1)]
    assert m.fuse[0].in_channels == 128 and m.fuse[0].out_channels == m.conv16.in_channels == 16
    literal = GraDNet(8, structure="literal")
    extra = sum(p.numel() for p in m.parameters()) - sum(p.numel() for p in literal.parameters())
    # the extra parameters are the 1x1 convs (no bias) + BN (weight, bias) of the 7 shortcuts
    # (stage 1: 128 -> 16, 16 -> 8; stages 2-3: 8 -> 16, 16 -> 8; stage 4: 8 -> 16) and of the fusion (128 -> 16)
    by_hand = (128 * 16 + 32) + (16 * 8 + 16) + 2 * ((8 * 16 + 32) + (16 * 8 + 16)) + (8 * 16 + 32) + (128 * 16 + 32)
    assert extra == by_hand


def test_shortcut_carries_the_input():
    """With the pair's convs zeroed, a block is exactly relu(shortcut(x)): the identity on a
    non-negative input, or relu(BN(1x1 conv with the pair's stride)) where the shape changes."""
    from segbench.models.gradnet import ResidualPair

    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 8, 12, 20))
    same = ResidualPair(8, 8, 3).eval()
    proj = ResidualPair(8, 4, 5, stride=2).eval()
    for block in (same, proj):
        with torch.no_grad():
            block.conv_a.weight.zero_()
            block.conv_b.weight.zero_()
    with torch.no_grad():
        assert isinstance(same.shortcut, torch.nn.Identity) and torch.equal(same(x), x)
        conv, bn = proj.shortcut
        bn.running_mean.uniform_(-0.5, 0.5)          # some statistics and affine terms, so BN is no identity
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        z = F.conv2d(x, conv.weight, stride=2)
        z = (z - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        expected = torch.relu(z * bn.weight[:, None, None] + bn.bias[:, None, None])
        got = proj(x)
    assert got.shape == (2, 4, 6, 10) and torch.allclose(got, expected, atol=1e-6)
    # and the convs do contribute when they are not zero
    torch.manual_seed(1)
    fresh = ResidualPair(8, 8, 3).eval()
    assert not torch.allclose(fresh(x), x)


def test_fusion_brings_the_high_resolution_gra_features_to_conv16():
    """The deep path silenced: the residual model still classifies the stem's gradient features
    at H/4 (F + F * Gra(F), 1x1-projected); the literal one has only Conv16's bias left."""
    x = torch.randn(1, 3, 64, 96)
    for structure in ("residual", "literal"):
        torch.manual_seed(0)
        m = GraDNet(5, width=8, stack_width=4, structure=structure).eval()
        seen = {}
        m.conv16.register_forward_hook(lambda mod, inp, out: seen.update(size=tuple(inp[0].shape[-2:])))
        m.stages = _Zero(m.stages)
        with torch.no_grad():
            y = m(x)
            f = m.conv1(x)
            f = f + f * m.gra(f)
        if structure == "residual":
            assert seen["size"] == (16, 24)                                   # H/4 x W/4
            expected = m.conv16(torch.relu(m.fuse(f)))
            assert torch.allclose(y, F.interpolate(expected, size=(64, 96), mode="bilinear", align_corners=False),
                                  atol=1e-6)
            assert y.std() > 0
        else:
            assert seen["size"] == (2, 3)                                     # H/32 x W/32
            assert torch.allclose(y, m.conv16.bias[None, :, None, None].expand_as(y))


class _Zero(torch.nn.Module):
    """Stands for the asymmetric stack, returning zeros of its output's shape."""

    def __init__(self, stages):
        super().__init__()
        self.stages = stages

    def forward(self, f):
        return torch.zeros_like(self.stages(f))


def test_unknown_structure_fails_naming_the_values():
    with pytest.raises(ValueError, match="structure='plain' is not allowed; allowed values: residual, literal"):
        GraDNet(5, structure="plain")
