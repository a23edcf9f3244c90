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
    m = GraDNet(8)                       # the paper's widths
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
