"""Speed-ups of the models' implementations compute the same function as the literal forms
they replaced (issue 9: utilisation), and every model gives the same result in either
memory format (``train.channels_last``).

Each reference below is the former code, kept here verbatim: it runs on the same modules
(so the same parameters and state_dict), and outputs and gradients must agree to rounding,
in float64 so that a real difference cannot hide under float32 noise.
"""

import pytest
import torch
from torch.nn import functional as F

from segbench.models import available, build_model

from test_models import TINY


def _outputs_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    out = model.forward_train(x)["logits"] if hasattr(model, "forward_train") else model(x)
    out.logsumexp(1).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, rtol=1e-9):
    (ya, ga), (yb, gb) = a, b
    assert torch.allclose(ya, yb, rtol=rtol, atol=rtol * ya.abs().max().item())
    assert ga.keys() == gb.keys()
    # gradients that are zero up to rounding (a conv bias before batch norm) compare on the
    # scale of the largest gradient
    scale = max(g.abs().max().item() for g in ga.values())
    for n in ga:
        assert torch.allclose(ga[n], gb[n], rtol=rtol, atol=rtol * scale), n


def _compare_with_reference(monkeypatch, name, params, cls, method, reference, x):
    torch.manual_seed(0)
    model = build_model(name, 5, **params).double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    new = _outputs_and_grads(model, x)
    model.load_state_dict(state)                    # the batch-norm statistics the pass updated
    monkeypatch.setattr(cls, method, reference)
    old = _outputs_and_grads(model, x)
    _assert_same(new, old)


# ------------------------------------------------------------------ unet_xception
def _keras_up_block(self, x):
    """The Keras example's order: up-sample the block's output and its input, 1x1 conv on
    the up-sampled input (4x the pixels), add."""
    up = F.interpolate(self.body(x), scale_factor=2, mode="nearest")
    return up + self.residual(F.interpolate(x, scale_factor=2, mode="nearest"))


def test_unet_xception_up_block_adds_before_upsampling(monkeypatch):
    from segbench.models.unet_xception import UpBlock

    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    _compare_with_reference(monkeypatch, "unet_xception", TINY["unet_xception"], UpBlock, "forward",
                            _keras_up_block, x)


def test_unet_xception_parameters_unchanged():
    m = build_model("unet_xception", 19)
    assert sum(p.numel() for p in m.parameters()) == 2_274_867      # before the change too
    up = {k: tuple(v.shape) for k, v in m.state_dict().items() if k.startswith("up.")}
    assert len(up) == 4 * 16 and up["up.3.residual.weight"] == (32, 96, 1, 1)   # w + 2w in, w out


# ------------------------------------------------------------------ gradnet
def _gra_before(x, window=3, stride=1, lam=1.0):
    """The Gra layer as first vectorised: every map padded separately, the gate converted."""
    from segbench.models.gradnet import _pad_amount, _sliding

    k, l = window, stride
    n, c, h, w = x.shape
    ph, pw = _pad_amount(h, k, l), _pad_amount(w, k, l)
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    hp, wp = xp.shape[-2:]
    with torch.no_grad():
        xd = xp.detach()
        wmax = _sliding(_sliding(xd, k, 2, torch.maximum), k, 3, torch.maximum)[..., ::l, ::l]
        wmin = _sliding(_sliding(xd, k, 2, torch.minimum), k, 3, torch.minimum)[..., ::l, ::l]
        gate = (wmax - wmin < lam).to(x.dtype)
        nh, nw = gate.shape[-2:]
        tops = xd.new_zeros(n, c, hp - 1, wp - 1)
        tops[..., :(nh - 1) * l + 1:l, :(nw - 1) * l + 1:l] = gate
        tops = F.pad(tops, (k - 2, 0, k - 2, 0))
        open_count = _sliding(_sliding(tops, k - 1, 2, torch.add), k - 1, 3, torch.add)
        cover = F.fold(torch.ones(1, k * k, nh * nw, dtype=x.dtype, device=x.device), (hp, wp), k, stride=l)
        weight = F.pad(open_count, (0, 1, 0, 1)) / cover
    d = xp[..., 1:, :-1] + xp[..., :-1, 1:] - 2 * xp[..., :-1, :-1]
    d = F.pad(d, (0, 1, 0, 1))
    return (d * weight)[..., :h, :w]


@pytest.mark.parametrize("K, l, lam, size", [(3, 1, 1.0, (16, 24)), (3, 2, 0.8, (10, 7)), (4, 3, 0.9, (13, 12)),
                                             (2, 1, float("inf"), (6, 5)), (3, 1, 0.5, (2, 2))])
def test_gra_bitwise_as_before(K, l, lam, size):
    """Float32, bit for bit: the in-place gate, the pre-padded box sum and x - 2y as one sub
    round exactly as the former code did (forward and gradient)."""
    from segbench.models.gradnet import gra

    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 4, *size))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ga, gb = gra(xa, K, l, lam), _gra_before(xb, K, l, lam)
    assert torch.equal(ga, gb)
    grad = torch.randn_like(ga)
    ga.backward(grad)
    gb.backward(grad)
    assert torch.equal(xa.grad, xb.grad)


def _gradnet_before(self, x):
    from segbench.models.common import check_input, upsample_like

    check_input(x, 32, "gradnet")
    f = self.conv1(x)
    f = f + f * _gra_before(f, self.gra.window, self.gra.stride, self.gra.lam)
    y = self.conv16(self.pool(self.stages(f)))
    return upsample_like(y, x.shape[-2:])


def test_gradnet_fused_forward_matches_the_literal_one(monkeypatch):
    from segbench.models.gradnet import GraDNet

    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    _compare_with_reference(monkeypatch, "gradnet", {**TINY["gradnet"], "structure": "literal"}, GraDNet, "forward",
                            _gradnet_before, x)


def test_gradnet_parameters_unchanged():
    # the literal structure is the model these speed-ups were made on (the residual one adds shortcuts)
    assert sum(p.numel() for p in build_model("gradnet", 19, structure="literal").parameters()) == 60_643


# ------------------------------------------------------------------ memory formats
@pytest.mark.parametrize("name", sorted(available()))
def test_channels_last_computes_the_same_function(name):
    """train.channels_last changes the order of sums only: outputs and gradients agree
    (dropout off: its element-wise masks are drawn in memory order, so the two formats draw
    different, equally likely masks; drop-path masks are per sample, the same)."""
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model(name, 5, **TINY[name]).double().train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                m.p = 0.0
        x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        torch.manual_seed(1)                            # the same drop-path masks
        results.append(_outputs_and_grads(model, x))
    _assert_same(*results)
