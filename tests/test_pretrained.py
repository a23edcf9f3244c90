"""ImageNet-pretrained backbones: checkpoints built here in the publishers' exact key layouts
(torchvision's ResNet state dict; VAN-Classification's .pth.tar with epoch / arch / optimizer /
args beside the state dict), loaded into our models and compared tensor for tensor through an
independent reading of the two layouts; strictness; registered names; the steps that must not
load them."""

from __future__ import annotations

import argparse
import hashlib
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from segbench.models import build_model, options
from segbench.models.pretrained import PretrainedError, read_checkpoint, without_pretrained
from segbench.weights import ARCH_DEFAULTS, ENV, REGISTRY, WeightsError

TV_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
VAN_CFG = {"b0": ((32, 64, 160, 256), (3, 3, 5, 2)), "b1": ((64, 128, 320, 512), (2, 2, 4, 2)),
           "b2": ((64, 128, 320, 512), (3, 3, 12, 3))}
VAN_MLP = (8, 8, 4, 4)


# ------------------------------------------------------------------ the publishers' layouts
class _Values:
    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)


def _bn(state: dict, prefix: str, c: int, rnd: _Values, counters: bool) -> None:
    state[f"{prefix}.weight"] = rnd(c)
    state[f"{prefix}.bias"] = rnd(c)
    state[f"{prefix}.running_mean"] = rnd(c)
    state[f"{prefix}.running_var"] = rnd(c).abs() + 0.5
    if counters:
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(12345)


def torchvision_resnet(depth: int, width: int = 64, counters: bool = False, seed: int = 0) -> OrderedDict:
    """torchvision.models.resnet{50,101}().state_dict() by names and shapes (V1.5 bottleneck,
    expansion 4, a downsample in the first block of each layer), random values. ``counters``:
    with the num_batches_tracked buffers (V2 files; the V1 files have none)."""
    rnd, s = _Values(seed), OrderedDict()
    s["conv1.weight"] = rnd(width, 3, 7, 7)
    _bn(s, "bn1", width, rnd, counters)
    inplanes = width
    for layer, blocks in enumerate(TV_BLOCKS[depth], start=1):
        planes = width * 2 ** (layer - 1)
        for i in range(blocks):
            p = f"layer{layer}.{i}"
            s[f"{p}.conv1.weight"] = rnd(planes, inplanes, 1, 1)
            _bn(s, f"{p}.bn1", planes, rnd, counters)
            s[f"{p}.conv2.weight"] = rnd(planes, planes, 3, 3)
            _bn(s, f"{p}.bn2", planes, rnd, counters)
            s[f"{p}.conv3.weight"] = rnd(planes * 4, planes, 1, 1)
            _bn(s, f"{p}.bn3", planes * 4, rnd, counters)
            if i == 0:
                s[f"{p}.downsample.0.weight"] = rnd(planes * 4, inplanes, 1, 1)
                _bn(s, f"{p}.downsample.1", planes * 4, rnd, counters)
            inplanes = planes * 4
    s["fc.weight"] = rnd(1000, inplanes)
    s["fc.bias"] = rnd(1000)
    return s


def van_classification(variant: str, width: int | None = None, seed: int = 1) -> OrderedDict:
    """VAN-Classification's van_{tiny,small,base}().state_dict() by names and shapes
    (models/van.py: OverlapPatchEmbed, Block with LKA and DWConv, layer_scale of shape [C],
    LayerNorm per stage, a 1000-class head), random values."""
    dims, depths = VAN_CFG[variant]
    if width is not None:
        dims = tuple(width * r for r in (1, 2, 5, 8))
    rnd, s = _Values(seed), OrderedDict()
    cin = 3
    for i, (dim, depth) in enumerate(zip(dims, depths), start=1):
        k = 7 if i == 1 else 3
        s[f"patch_embed{i}.proj.weight"] = rnd(dim, cin, k, k)
        s[f"patch_embed{i}.proj.bias"] = rnd(dim)
        _bn(s, f"patch_embed{i}.norm", dim, rnd, True)
        hidden = dim * VAN_MLP[i - 1]
        for j in range(depth):
            b = f"block{i}.{j}"
            s[f"{b}.layer_scale_1"] = rnd(dim)
            s[f"{b}.layer_scale_2"] = rnd(dim)
            _bn(s, f"{b}.norm1", dim, rnd, True)
            for name, shape in (("attn.proj_1", (dim, dim, 1, 1)),
                                ("attn.spatial_gating_unit.conv0", (dim, 1, 5, 5)),
                                ("attn.spatial_gating_unit.conv_spatial", (dim, 1, 7, 7)),
                                ("attn.spatial_gating_unit.conv1", (dim, dim, 1, 1)),
                                ("attn.proj_2", (dim, dim, 1, 1)),
                                ("mlp.fc1", (hidden, dim, 1, 1)),
                                ("mlp.dwconv.dwconv", (hidden, 1, 3, 3)),
                                ("mlp.fc2", (dim, hidden, 1, 1))):
                s[f"{b}.{name}.weight"] = rnd(*shape)
                s[f"{b}.{name}.bias"] = rnd(shape[0])
            _bn(s, f"{b}.norm2", dim, rnd, True)
        s[f"norm{i}.weight"] = rnd(dim)
        s[f"norm{i}.bias"] = rnd(dim)
        cin = dim
    s["head.weight"] = rnd(1000, dims[-1])
    s["head.bias"] = rnd(1000)
    return s


def van_tar(state: dict) -> dict:
    """What VAN-Classification's (timm's) checkpoint saver writes around the weights."""
    return {"epoch": 309, "arch": "van_small", "state_dict": state, "version": 2, "metric": 81.1,
            "optimizer": {"state": {0: {"step": torch.tensor(100.0), "exp_avg": torch.zeros(3)}},
                          "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.05,
                                            "params": [0]}]},
            "args": argparse.Namespace(model="van_small", lr=1e-3, epochs=310, drop_path=0.1, amp=True,
                                       input_size=None, mean=(0.485, 0.456, 0.406))}


# ------------------------------------------------------------------ our names, read independently
def ours_of_torchvision(key: str) -> str:
    if key.startswith("conv1."):
        return "backbone.stem.0." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "backbone.stem.1." + key[len("bn1."):]
    return "backbone." + key.replace(".downsample.", ".shortcut.")


VAN_RENAMES = {"attn.proj_1": "attn.proj_in", "attn.spatial_gating_unit.conv0": "attn.lka.dw",
               "attn.spatial_gating_unit.conv_spatial": "attn.lka.dw_dilated",
               "attn.spatial_gating_unit.conv1": "attn.lka.pw", "attn.proj_2": "attn.proj_out",
               "mlp.dwconv.dwconv": "mlp.dw", "layer_scale_1": "layer_scale1", "layer_scale_2": "layer_scale2"}


def ours_of_van(key: str, depths) -> str:
    m = re.match(r"patch_embed(\d)\.(proj|norm)\.(.+)$", key)
    if m:
        return f"backbone.stages.{int(m[1]) - 1}.0.{0 if m[2] == 'proj' else 1}.{m[3]}"
    m = re.match(r"norm(\d)\.(.+)$", key)
    if m:
        return f"backbone.stages.{int(m[1]) - 1}.{depths[int(m[1]) - 1] + 1}.{m[2]}"
    m = re.match(r"block(\d)\.(\d+)\.(.+)$", key)
    rest = m[3]
    for theirs, ours in VAN_RENAMES.items():
        if rest == theirs or rest.startswith(theirs + "."):
            rest = ours + rest[len(theirs):]
    return f"backbone.stages.{int(m[1]) - 1}.{int(m[2]) + 1}.{rest}"


def backbone_keys(model) -> set[str]:
    return {"backbone." + k for k in model.backbone.state_dict()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ paper-width models, built once
@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def resnet101(weights_folder):
    """deeplabv3 (depth 101, width 64) built with pretrained: torchvision:resnet101, the file
    in the weights folder being a V1-layout state dict (no num_batches_tracked)."""
    state = torchvision_resnet(101)
    path = weights_folder / REGISTRY["torchvision:resnet101"].file
    torch.save(state, path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, str(weights_folder))
        torch.manual_seed(0)
        model = build_model("deeplabv3", 21, pretrained="torchvision:resnet101")
    return model, state, path


@pytest.fixture(scope="module")
def van_b1(tmp_path_factory):
    """van_fpn_frm (variant b1, paper width) from a van_small_811.pth.tar-like file given by path."""
    state = van_classification("b1")
    path = tmp_path_factory.mktemp("van") / "van_small_811.pth.tar"
    torch.save(van_tar(state), path)
    torch.manual_seed(0)
    model = build_model("van_fpn_frm", 19, variant="b1", pretrained=str(path))
    return model, state, path


def test_torchvision_resnet101_tensor_for_tensor(resnet101):
    model, state, path = resnet101
    ours = model.state_dict()
    used = {k: v for k, v in state.items() if not k.startswith("fc.")}
    for key, value in used.items():
        assert torch.equal(ours[ours_of_torchvision(key)], value), key
    # every backbone tensor came from the file, except the counters a V1 file does not have
    filled = {ours_of_torchvision(k) for k in used}
    assert backbone_keys(model) - filled == {k for k in backbone_keys(model) if k.endswith("num_batches_tracked")}
    assert filled <= backbone_keys(model)
    # torchvision facts: the first block of layer1 projects 64 -> 256, layer3 has 23 blocks
    assert tuple(model.backbone.layer1[0].shortcut[0].weight.shape) == (256, 64, 1, 1)
    assert len(model.backbone.layer3) == 23
    assert model.pretrained_info == {"source": "torchvision:resnet101", "file": str(path.resolve()),
                                     "sha256": sha256(path), "tensors": len(used)}


def test_van_small_tensor_for_tensor(van_b1):
    model, state, path = van_b1
    ours = model.state_dict()
    depths = VAN_CFG["b1"][1]
    used = {k: v for k, v in state.items() if not k.startswith("head.")}
    for key, value in used.items():
        target = ours[ours_of_van(key, depths)]
        if "layer_scale" in key:
            assert tuple(value.shape) == (target.shape[0],) and tuple(target.shape[1:]) == (1, 1)
            value = value.reshape(-1, 1, 1)
        assert torch.equal(target, value), key
    assert {ours_of_van(k, depths) for k in used} == backbone_keys(model)  # every tensor, counters included
    assert model.pretrained_info == {"source": str(path), "file": str(path.resolve()), "sha256": sha256(path),
                                     "tensors": len(used)}


def test_van_registered_name_and_variants(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path))
    torch.save(van_tar(van_classification("b0")), tmp_path / REGISTRY["van:b0"].file)
    model = build_model("van_fpn_ppm", 19, variant="b0", pretrained="van:b0")
    assert model.pretrained_info["source"] == "van:b0"
    assert torch.equal(model.backbone.stages[3][3].weight, van_classification("b0")["norm4.weight"])  # depth 2 + 1
    # van:b1 into b0, or into b1 at another width: refused before any file is read, naming both
    with pytest.raises(PretrainedError, match=r"'van:b1' holds a VAN-b1 at width 64, but the model's backbone is "
                                              r"a VAN-b0 at width 32: set variant: b1 and leave width out, or name "
                                              r"'van:b0'"):
        build_model("van_fpn_frm", 19, variant="b0", decoder_dim=8, pretrained="van:b1")
    with pytest.raises(PretrainedError, match=r"backbone is a VAN-b1 at width 8: set variant: b1 and leave width "
                                              r"out$"):
        build_model("van_fpn_frm", 19, variant="b1", width=8, decoder_dim=8, pretrained="van:b1")


def test_registered_resnet_must_match_depth_and_family(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path))  # empty: the mismatch is found before the file is looked for
    with pytest.raises(PretrainedError) as e:
        build_model("deeplabv3_pac", 21, depth=50, pretrained="torchvision:resnet101")
    assert "'torchvision:resnet101' holds a ResNet-101 at width 64" in str(e.value)
    assert "ResNet-50 at width 64" in str(e.value) and "DeepLabV3PAC" in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(PretrainedError, match="'van:b0' holds a VAN-b0 .* backbone is ResNet"):
        build_model("deeplabv3", 21, depth=50, width=4, pretrained="van:b0")


def test_missing_registered_file_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path))
    with pytest.raises(WeightsError) as e:
        build_model("deeplabv3", 21, depth=50, pretrained="torchvision:resnet50")
    msg = str(e.value)
    assert f"not in the weights folder {tmp_path}" in msg and "resnet50-0676ba61.pth" in msg
    assert f"segbench fetch-weights torchvision:resnet50 --dir {tmp_path}" in msg and "never downloads" in msg
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("deeplabv3", 21, depth=50, width=4, pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="'van:b3' is not a registered name"):
        build_model("van_fpn_frm", 19, width=8, pretrained="van:b3")


# ------------------------------------------------------------------ strictness (small widths)
def _small_resnet_file(tmp_path, state, name="small.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_missing_tensor_is_named(tmp_path):
    state = torchvision_resnet(50, width=4, counters=True)
    del state["layer2.1.bn2.running_var"]
    path = _small_resnet_file(tmp_path, state)
    with pytest.raises(PretrainedError) as e:
        build_model("deeplabv3", 21, depth=50, width=4, pretrained=str(path))
    msg = str(e.value)
    assert str(path) in msg and "missing from the checkpoint (1)" in msg
    assert "layer2.1.bn2.running_var [8] (for backbone.layer2.1.bn2.running_var)" in msg
    assert "unexpected" not in msg and "shape differs" not in msg


def test_unexpected_and_misshaped_tensors_are_named(tmp_path):
    state = torchvision_resnet(50, width=4)
    state["layer1.0.extra.weight"] = torch.zeros(3)
    state["layer1.0.conv1.weight"] = torch.zeros(4, 5, 1, 1)
    path = _small_resnet_file(tmp_path, state)
    with pytest.raises(PretrainedError) as e:
        build_model("deeplabv3_pac", 21, depth=50, width=4, pretrained=str(path))
    msg = str(e.value)
    assert "unexpected in the checkpoint (1)" in msg and "layer1.0.extra.weight [3] (no rule maps it)" in msg
    assert "shape differs (1)" in msg
    assert "layer1.0.conv1.weight: checkpoint [4, 5, 1, 1], model backbone.layer1.0.conv1.weight [4, 4, 1, 1]" in msg
    # a deeper checkpoint into a shallower model: its extra blocks are unexpected, by name
    path = _small_resnet_file(tmp_path, torchvision_resnet(101, width=4), "deep.pth")
    with pytest.raises(PretrainedError) as e:
        build_model("deeplabv3", 21, depth=50, width=4, pretrained=str(path))
    assert "layer3.6.conv1.weight [16, 64, 1, 1] (the model has no backbone.layer3.6.conv1.weight)" in str(e.value)


def test_van_missing_final_norm_is_named_by_its_publisher_key(tmp_path):
    state = van_classification("b1", width=8)
    del state["norm4.weight"]
    torch.save(van_tar(state), tmp_path / "v.pth.tar")
    with pytest.raises(PretrainedError, match=r"norm4\.weight \[64\] \(for backbone\.stages\.3\.3\.weight\)"):
        build_model("van_fpn_frm", 19, variant="b1", width=8, decoder_dim=8, pretrained=str(tmp_path / "v.pth.tar"))


def test_decoder_keeps_its_initialisation(tmp_path):
    state = van_classification("b1", width=8)
    path = tmp_path / "v.pth.tar"
    torch.save(van_tar(state), path)
    kw = dict(variant="b1", width=8, decoder_dim=16)
    torch.manual_seed(3)
    plain = build_model("van_fpn_dappm", 19, **kw).state_dict()
    torch.manual_seed(3)
    model = build_model("van_fpn_dappm", 19, pretrained=str(path), **kw)
    loaded = model.state_dict()
    others = [k for k in loaded if not k.startswith("backbone.")]
    assert others and all(torch.equal(loaded[k], plain[k]) for k in others)
    assert not torch.equal(loaded["backbone.stages.0.0.0.weight"], plain["backbone.stages.0.0.0.weight"])
    # and for DeepLabV3: ASPP, head conv and classifier as without pretrained
    path = _small_resnet_file(tmp_path, torchvision_resnet(50, width=4))
    torch.manual_seed(5)
    plain = build_model("deeplabv3", 21, depth=50, width=4).state_dict()
    torch.manual_seed(5)
    loaded = build_model("deeplabv3", 21, depth=50, width=4, pretrained=str(path)).state_dict()
    others = [k for k in loaded if not k.startswith("backbone.")]
    assert any(k.startswith("aspp.") for k in others) and all(torch.equal(loaded[k], plain[k]) for k in others)


# ------------------------------------------------------------------ reading files
class NotATensor:  # a class torch.load(weights_only=True) must refuse
    pass


def test_state_dict_itself_and_module_prefix(tmp_path):
    state = van_classification("b0", width=4)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "dp.pth")
    got = read_checkpoint(tmp_path / "dp.pth")
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)
    model = build_model("van_fpn_frm", 19, variant="b0", width=4, decoder_dim=8, pretrained=str(tmp_path / "dp.pth"))
    assert model.pretrained_info["tensors"] == len(state) - 2  # all but head.weight, head.bias


def test_unsafe_or_broken_files_are_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(PretrainedError) as e:
        read_checkpoint(tmp_path / "evil.pth")
    assert "weights_only=True" in str(e.value) and "NotATensor" in str(e.value) and "clean.pth" in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(PretrainedError, match="junk.pth is not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
    torch.save(torchvision_resnet(50, width=4), tmp_path / "cut.pth")
    data = (tmp_path / "cut.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedError, match="damaged or truncated"):
        read_checkpoint(tmp_path / "cut.pth")
    torch.save({"epoch": 3, "model": {"w": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(PretrainedError, match="holds no state dict of tensors \\(a dict with keys epoch, model\\)"):
        read_checkpoint(tmp_path / "other.pth")


# ------------------------------------------------------------------ who loads, who does not
def test_registry_defaults_match_the_constructors():
    from segbench.models.backbones.van import VARIANTS
    from segbench.weights import VAN_WIDTH

    assert VAN_WIDTH == {v: c["dims"][0] for v, c in VARIANTS.items()}
    for arch, defaults in ARCH_DEFAULTS.items():
        opts = options(arch)
        assert "pretrained" in opts and opts["pretrained"] is None
        assert {k: opts[k] for k in defaults} == defaults, arch
    for name, w in REGISTRY.items():
        if w.family == "torchvision_resnet":  # the file name's 8 hex digits are the published hash prefix
            assert w.file.endswith(f"-{w.sha256}.pth") and w.url.endswith(w.file)


def test_shape_only_steps_do_not_read_the_checkpoint(tmp_path, monkeypatch):
    from segbench.profiling import profile_model
    from segbench.cost import count_macs

    monkeypatch.setenv(ENV, str(tmp_path))  # empty: loading would fail
    params = {"variant": "b0", "width": 4, "decoder_dim": 8, "pretrained": "van:b0"}
    with pytest.raises(WeightsError):
        build_model("van_fpn_frm", 19, **params)
    assert without_pretrained(params) == {"variant": "b0", "width": 4, "decoder_dim": 8}
    assert count_macs("van_fpn_frm", params, 19, (64, 64)) > 0
    result = profile_model("van_fpn_frm", params, 19, (64, 64), warmup=0, iterations=1, threads=1)
    assert result["params"] > 0


def test_evaluation_loads_a_pretrained_run_without_the_checkpoint(tmp_path, monkeypatch):
    from segbench.engine.evaluate import load_trained
    from segbench.io import write_json

    ckpt = tmp_path / "v.pth.tar"
    torch.save(van_tar(van_classification("b0", width=4)), ckpt)
    params = {"variant": "b0", "width": 4, "decoder_dim": 8, "pretrained": str(ckpt)}
    model = build_model("van_fpn_frm", 5, **params)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "model.pt")
    write_json(run / "run.json", {"run_key": "d/van/ce/s0", "dataset": "d", "model": "van", "loss": "ce", "seed": 0,
                                  "config": {"model": {"arch": "van_fpn_frm", "params": params}}, "num_classes": 5,
                                  "class_names": list("abcde"), "epochs": 1})
    ckpt.unlink()  # gone: evaluation reads model.pt only
    loaded, _ = load_trained(run, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
