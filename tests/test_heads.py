"""Context modules: PAC's shared filter, ASPP, FRM (with its DNL block), PPM, DAPPM, FPN."""

import pytest
import torch
from torch.nn import functional as F

from segbench.models import build_model
from segbench.models.heads.aspp import ASPP
from segbench.models.heads.dappm import DAPPM
from segbench.models.heads.frm import FRM, DisentangledNonLocal
from segbench.models.heads.pac import PyramidAtrousConv
from segbench.models.heads.ppm import PPM


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------ PAC
@pytest.mark.parametrize("rates", [(1,), (6, 12, 18), (1, 3, 5, 7, 9), (1, 3, 5, 7, 9, 11)])
def test_pac_sum_has_one_filter_whatever_the_rates(rates):
    pac = PyramidAtrousConv(32, 16, rates, merge="sum")
    assert n_params(pac) == 16 * 32 * 9 + 2 * 16          # one 3x3 filter bank + its BN
    conv_params = [p for n, p in pac.named_parameters() if p.dim() == 4]
    assert len(conv_params) == 1                          # no per-rate convolution anywhere


@pytest.mark.parametrize("rates", [(1, 3, 5), (6, 12, 18, 24)])
def test_pac_concat_shares_the_filter_too(rates):
    pac = PyramidAtrousConv(32, 16, rates, merge="concat")
    assert pac.weight.shape == (16, 32, 3, 3)
    # the rest is the squeeze: BN on the concatenation, 1x1 to C_out, BN
    assert n_params(pac) == 16 * 32 * 9 + 2 * 16 * len(rates) + 16 * len(rates) * 16 + 2 * 16


def test_pac_applies_the_same_filter_at_every_rate():
    torch.manual_seed(0)
    pac = PyramidAtrousConv(4, 3, (1, 3, 5), merge="sum").eval()
    x = torch.randn(1, 4, 20, 20)
    w = pac.weight.detach().clone()
    expected = sum(F.conv2d(x, w, padding=r, dilation=r) for r in (1, 3, 5))
    assert torch.allclose(pac.post[0](expected).relu(), pac(x), atol=1e-5)
    ref = PyramidAtrousConv(4, 3, (1, 3, 5), merge="sum", variant="reference").eval()
    ref.weight.data.copy_(w)
    expected_ref = (F.conv2d(x, w, padding=1) + expected) / 3           # the authors' TF formula
    assert torch.allclose(ref.post[0](expected_ref).relu(), ref(x), atol=1e-5)


# PAC paper Table 2: (rates, merge) of every row
TABLE2 = [([6, 12, 18], "concat"), ([6, 12, 18, 24], "concat"), ([6, 12, 18], "sum"), ([1, 3, 5], "concat"),
          ([1, 3, 5, 7, 9], "concat"), ([1, 3, 5, 7, 9, 11], "concat"), ([1, 3, 5, 7, 9], "sum")]


@pytest.mark.parametrize("rates, merge", TABLE2)
def test_pac_table2_rows_by_params_alone(rates, merge):
    m = build_model("deeplabv3_pac", 3, depth=50, width=4, rates=rates, merge=merge).eval()
    assert m.pac.rates == tuple(rates) and m.pac.merge == merge
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_deeplab_pac_paper_and_reference_heads():
    paper = build_model("deeplabv3_pac", 5, depth=50, width=4)
    ref = build_model("deeplabv3_pac", 5, depth=50, width=4, variant="reference")
    assert paper.classifier.in_channels == 3 * 16         # concat [1x1, pool, PAC] straight to classes
    assert ref.classifier.in_channels == 16               # the TF code's 1x1 projection first


def test_aspp_branches():
    aspp = ASPP(32, 8, (2, 4, 6)).eval()
    assert len(aspp.branches) == 5                        # 1x1, three atrous 3x3, image pooling
    assert [b[0].dilation[0] for b in aspp.branches[1:4]] == [2, 4, 6]
    assert aspp(torch.randn(2, 32, 9, 13)).shape == (2, 8, 9, 13)


# ------------------------------------------------------------------ FRM, PPM, DAPPM
DIMS = (4, 8, 20, 32)           # VAN stages at width 4


def _stages(n=2, h=64, w=96):
    return [torch.randn(n, c, h // s, w // s) for c, s in zip(DIMS, (4, 8, 16, 32))]


def test_frm_shapes_and_pooling():
    frm = FRM(DIMS, 16).eval()
    feats = _stages()
    assert frm(feats).shape == (2, 16, 2, 3)
    assert frm.dnl.q.out_channels == sum(DIMS) // 4 == frm.dnl.k.out_channels
    assert frm.dnl.m.out_channels == 1                    # the unary branch
    assert frm.ffn.fc1.out_channels == sum(DIMS) // 4
    assert frm.cut[0].out_channels == 16


def test_dnl_weights_are_two_softmaxes():
    torch.manual_seed(0)
    dnl = DisentangledNonLocal(16, 4).eval()
    x = torch.randn(1, 16, 3, 5)
    # with g's weights fixed to pass one channel through, y_i = sum_j w_ij g_j: each row of
    # w sums to 2 (the pairwise softmax + the unary softmax)
    with torch.no_grad():
        dnl.g.weight.zero_()
        dnl.g.bias.fill_(1.0)
        dnl.out[0].weight.zero_()
        dnl.out[0].weight[0, 0] = 1.0
        dnl.out[1].running_mean.zero_()
        dnl.out[1].running_var.fill_(1.0 - dnl.out[1].eps)
        y = dnl(x) - x
    assert torch.allclose(y[0, 0], torch.full((3, 5), 2.0), atol=1e-5)
    assert torch.allclose(y[0, 1:], torch.zeros(15, 3, 5), atol=1e-6)


def test_ppm_and_dappm_shapes():
    x = torch.randn(2, sum(DIMS), 2, 3)
    ppm = PPM(sum(DIMS), 16).eval()
    assert len(ppm.stages) == 4 and [s[0].output_size for s in ppm.stages] == [1, 2, 3, 6]
    assert ppm(x).shape == (2, 16, 2, 3)
    dappm = DAPPM(sum(DIMS), 8, 16).eval()
    assert dappm(x).shape == (2, 16, 2, 3)
    assert dappm(torch.randn(1, sum(DIMS), 32, 64)).shape == (1, 16, 32, 64)
    assert n_params(dappm.process) == 4 * (2 * 8 + 8 * 8 * 9)


@pytest.mark.parametrize("name, context", [("van_fpn_frm", "FRM"), ("van_fpn_ppm", "PPM"), ("van_fpn_dappm", "DAPPM")])
def test_van_models_feed_the_concatenated_stages(name, context):
    m = build_model(name, 3, width=4).eval()
    inner = m.context if context == "FRM" else m.context.module
    assert type(inner).__name__ == context
    with torch.no_grad():
        feats = m.backbone(torch.randn(1, 3, 64, 96))
        assert [f.shape[1] for f in feats] == list(DIMS)
        assert m.context(feats).shape == (1, 8, 2, 3)     # decoder_dim = 2 x width, at H/32


def test_fpn_flow_alignment_with_zero_flow_is_bilinear():
    from segbench.models.fpn import FlowAlign

    fam = FlowAlign(8).eval()
    torch.nn.init.zeros_(fam.flow.weight)
    coarse, fine = torch.randn(1, 8, 4, 6), torch.randn(1, 8, 8, 12)
    expected = F.interpolate(coarse, size=(8, 12), mode="bilinear", align_corners=True)
    assert torch.allclose(fam(fine, coarse), expected, atol=1e-5)
