"""The model registry and every architecture: published sizes, shapes, gradients, errors.

Full-size models are built on the ``meta`` device (shapes only, no memory, no init cost);
shapes and gradients use scaled-down versions of the same code (``TINY``) on 64x96 inputs.
"""

import pytest
import torch
import yaml

from segbench.config import load_schema
from segbench.models import available, build_model, options
from segbench.models.common import count_parameters

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

# scaled-down versions of every architecture (same code, fewer channels)
TINY = {
    "unet": {"width": 4},
    "segnet": {"width": 4},
    "gradnet": {"width": 8, "stack_width": 4},
    "deeplabv3": {"depth": 50, "width": 4},
    "deeplabv3_pac": {"depth": 50, "width": 4},
    "van_fpn_frm": {"width": 4, "embedding_dim": 8},
    "van_fpn_ppm": {"width": 4, "embedding_dim": 8},
    "van_fpn_dappm": {"width": 4, "embedding_dim": 8},
    "unet_xception": {"width": 4},
    "segnet_mobilenet": {"width_mult": 0.125},
}
EMBEDDING_MODELS = ["van_fpn_frm", "van_fpn_ppm", "van_fpn_dappm"]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta_model(name, classes, **kwargs):
    with torch.device("meta"):
        return build_model(name, classes, **kwargs)


def test_every_model_has_a_tiny_config():
    assert sorted(TINY) == sorted(available())


@pytest.mark.parametrize("name, kwargs, classes, expected, tol", [
    ("unet", {}, 2, 31.04e6, 0.01),                  # milesial/Pytorch-UNet's count
    ("unet", {"bilinear": True}, 2, 17.26e6, 0.01),
    ("segnet", {}, 21, 29.45e6, 0.02),
    ("deeplabv3", {}, 21, 58.63e6, 0.01),            # torchvision's DeepLabV3-ResNet101, no aux head
])
def test_published_parameter_counts(name, kwargs, classes, expected, tol):
    assert n_params(meta_model(name, classes, **kwargs)) == pytest.approx(expected, rel=tol)


@pytest.mark.parametrize("variant, expected", [("b0", 3.85e6), ("b1", 13.35e6), ("b2", 26.07e6)])
def test_van_backbone_parameter_counts(variant, expected):
    from segbench.models.backbones.van import VAN

    with torch.device("meta"):
        backbone = VAN(variant)
    assert n_params(backbone) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name, paper", [("van_fpn_frm", 16.48e6), ("van_fpn_ppm", 15.23e6),
                                         ("van_fpn_dappm", 15.98e6)])
def test_frm_paper_table2_parameter_counts(name, paper):
    # the target is 10%; PPM and DAPPM match the paper to 0.1%, FRM to 2% (docs/models.md)
    m = meta_model(name, 19)
    assert count_parameters(m) == pytest.approx(paper, rel=0.10)
    if name != "van_fpn_frm":
        assert count_parameters(m) == pytest.approx(paper, rel=0.001)
    # the embedding head is a train-only 1x1 conv, outside the inference count
    assert n_params(m) - count_parameters(m) == 128 * 256 + 256


@pytest.mark.parametrize("name", sorted(available()))
@pytest.mark.parametrize("size", [(64, 96), (96, 128)])
def test_logits_at_input_resolution(name, size):
    m = build_model(name, 5, **TINY[name]).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, *size))
    assert y.shape == (2, 5, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(available()))
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    m = build_model(name, 3, **TINY[name]).train()
    x = torch.randn(2, 3, 64, 64)
    if hasattr(m, "forward_train"):
        out = m.forward_train(x)
        loss = out["logits"].logsumexp(1).mean() + out["embeddings"].square().mean()
    else:
        loss = m(x).logsumexp(1).mean()
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("name", sorted(available()))
@pytest.mark.parametrize("size", [(70, 64), (48, 64)])      # 48: a multiple of 16, not of 32
def test_bad_input_size_fails_clearly(name, size):
    with pytest.raises(ValueError, match="multiples of 32"):
        build_model(name, 3, **TINY[name])(torch.randn(1, 3, *size))


@pytest.mark.parametrize("name", EMBEDDING_MODELS)
def test_embeddings_in_training_only(name):
    m = build_model(name, 4, **TINY[name]).eval()
    calls = []
    m.embed_head.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = m(x)
        assert not calls                        # forward() never runs the embedding head
        out = m.forward_train(x)
    assert calls
    assert out["embeddings"].shape == (2, 8, 16, 24)       # H/4: the decoder's fused map
    assert torch.allclose(out["logits"], logits)
    assert m.train_only_modules == ("embed_head",)


def test_models_without_embeddings_have_no_forward_train():
    assert [n for n in available() if hasattr(build_model(n, 2, **TINY[n]), "forward_train")] == EMBEDDING_MODELS


def test_unknown_model_and_option():
    with pytest.raises(KeyError, match="known models: unet, segnet"):
        build_model("unett", 3)
    with pytest.raises(TypeError, match="no option 'widht'"):
        build_model("unet", 3, widht=4)


@pytest.mark.parametrize("name, kwargs, match", [
    ("deeplabv3", {"depth": 34}, "depth must be one of"),
    ("deeplabv3", {"output_stride": 32}, "output_stride must be 8 or 16"),
    ("deeplabv3_pac", {"merge": "max"}, "merge must be"),
    ("deeplabv3_pac", {"variant": "reference", "merge": "concat"}, "only sums"),
    ("van_fpn_frm", {"variant": "b9"}, "variant must be one of"),
    ("gradnet", {"gra_stride": 3}, "stride l with 1 <= l < window"),
    ("gradnet", {"stage_strides": [2, 2, 4, 1]}, "stage_strides"),
])
def test_bad_options_fail_clearly(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        meta_model(name, 3, **kwargs)


def _schema_params():
    schema = load_schema()
    entry = schema["properties"]["models"]["additionalProperties"]
    out = {}
    for block in entry["allOf"]:
        arch = block["if"]["properties"]["arch"]["const"]
        out[arch] = set(block["then"]["properties"]["params"]["properties"])
    return out


def test_schema_params_are_constructor_options():
    schema = _schema_params()
    assert sorted(schema) == sorted(available())
    for name, keys in schema.items():
        opts = set(options(name))
        assert keys <= opts, f"{name}: schema keys that are no option: {keys - opts}"
        # every option but the input channels (always RGB here) can be set from a config
        assert opts - {"in_channels"} <= keys, f"{name}: options missing from the schema: {opts - keys}"


def test_deeplab_output_stride_and_multi_grid():
    from segbench.models.backbones.resnet import DilatedResNet

    for os_ in (8, 16):
        b = DilatedResNet(50, os_, width=4, multi_grid=(1, 2, 4)).eval()
        assert b(torch.randn(1, 3, 64, 64)).shape[-1] == 64 // os_
        rates = [blk.conv2.dilation[0] for blk in b.layer4]
        assert rates == [r * (2 if os_ == 16 else 4) for r in (1, 2, 4)]


def test_model_table_counts_without_computing():
    from segbench.models.summary import format_table, model_row

    row = model_row("deeplabv3")                  # built and counted on the meta device
    assert row["params"] == pytest.approx(58.63e6, rel=0.01)
    assert row["macs_512x1024"] == pytest.approx(136e9, rel=0.02)    # torchvision deeplabv3_resnet101, OS16
    assert row["macs_paper_size"] == pytest.approx(row["macs_512x1024"] / 2, rel=0.01)
    text = format_table([row], markdown=True)
    assert text.splitlines()[2].startswith("| deeplabv3 | 21 | 58.63M |")


def test_cli_models_table(capsys):
    from segbench.cli import main

    assert main(["models", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in available()) and "GMACs" not in out
    assert main(["models", "gradnet", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| model | classes | params | GMACs @512x1024 |") and lines[2].startswith("| gradnet |")
    assert main(["models", "unett"]) == 2
    assert "known models: unet, segnet" in capsys.readouterr().err


def test_pac_study_baseline_differs_from_pac_by_the_context_module_only():
    """The PAC study's DeepLabV3 (head_conv false, dropout 0) and ResNet + PAC (variant paper):
    the same backbone (parameter and buffer names and shapes), one 1x1 classifier with bias
    and nothing else outside the context module (ASPP / the 1x1, pooling and PAC branches)."""
    context = ("aspp.", "conv1x1.", "pool.", "pac.", "project.")

    def outside(m):
        return {n: tuple(t.shape) for n, t in m.state_dict().items() if not n.startswith(context)}

    def head(m):
        return {n: s for n, s in outside(m).items() if not n.startswith("backbone.")}

    def has_dropout(m):
        return any(isinstance(mod, torch.nn.Dropout) for mod in m.modules())

    pac = build_model("deeplabv3_pac", 21, depth=50, width=4, variant="paper")
    base = build_model("deeplabv3", 21, depth=50, width=4, head_conv=False, dropout=0.0)
    backbone = {n: s for n, s in outside(base).items() if n.startswith("backbone.")}
    assert len(backbone) > 100
    assert backbone == {n: s for n, s in outside(pac).items() if n.startswith("backbone.")}
    assert set(head(base)) == set(head(pac)) == {"classifier.weight", "classifier.bias"}
    # the classifier reads the context module's output: ASPP's 256-channel projection (4 x width = 16
    # here), PAC's 3 x 256 concatenation (48)
    assert head(base)["classifier.weight"] == (21, 16, 1, 1) and head(pac)["classifier.weight"] == (21, 48, 1, 1)
    assert not has_dropout(base) and not has_dropout(pac)
    # the defaults (torchvision's head) would not be this baseline: a 3x3 head conv and dropout
    default = build_model("deeplabv3", 21, depth=50, width=4)
    assert any(n.startswith("head_conv.") for n in outside(default)) and has_dropout(default)
    # the shipped configs' pac_bal studies use the baseline form
    for name in ("config.yaml", "workflow/configs/paper.yaml"):
        cfg = yaml.safe_load((ROOT / name).read_text())
        models = {m for m in cfg["studies"]["pac_bal"]["models"] if cfg["models"][m]["arch"] == "deeplabv3"}
        assert models == {"deeplabv3"}
        params = cfg["models"]["deeplabv3"]["params"]
        assert params["head_conv"] is False and params["dropout"] == 0, name
