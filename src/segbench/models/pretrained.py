"""ImageNet-pretrained backbones: the publishers' checkpoints loaded into our backbones.

Two families, each with one key table from the publisher's names to ours (below):

* ``torchvision_resnet``: torchvision's ResNet-50/101 files (a plain state dict) into
  :class:`~segbench.models.backbones.resnet.DilatedResNet` (``DeepLabV3``, ``DeepLabV3PAC``).
* ``van``: VAN-Classification's ``.pth.tar`` files (a dict whose ``state_dict`` holds the
  weights, beside ``epoch``, ``arch``, ``optimizer``, ``args`` ...) into
  :class:`~segbench.models.backbones.van.VAN` (the ``van_fpn_*`` models). Their
  ``layer_scale_1/_2`` are ``[C]``; ours are ``[C, 1, 1]`` (reshaped on loading).

Strict, like ``load_state_dict(strict=True)`` restricted to the backbone: every backbone
tensor of the model is filled, every checkpoint tensor is used except the ImageNet
classifier (``fc.*``, ``head.*``), and shapes are equal; otherwise :class:`PretrainedError`
lists the missing, unexpected and mis-shaped keys by name, with shapes, and the file. The
BatchNorm ``num_batches_tracked`` counters are optional on both sides (torchvision's older V1
files have none). A ``module.`` prefix (DataParallel) is removed. Layers outside the
backbone (ASPP, PAC, FPN, heads) keep their initialisation.

Files are read with ``torch.load(weights_only=True)``, which unpickles tensors and plain
containers only; ``argparse.Namespace`` is allowed besides (VAN-Classification's files keep
the training arguments in one). Anything else is refused with a message saying how to
convert a trusted file.

No file is ever downloaded here: a registered name (``van:b1``, ...) is looked up in the
weights folder (:func:`segbench.weights.resolve`).
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from segbench.weights import REGISTRY, WeightsError, registered_mismatch, resolve, sha256sum

__all__ = ["PretrainedError", "KeyTable", "RESNET_TABLE", "VAN_TABLE", "read_checkpoint", "backbone_arch",
           "load_pretrained", "without_pretrained"]


class PretrainedError(WeightsError):
    """A checkpoint that does not fit the model's backbone, or cannot be read."""


# ---------------------------------------------------------------------------- key tables
class KeyTable:
    """Rows ``(publisher's key, our key, reshape)``: templates whose ``{t}`` is the tensor's
    leaf name (weight, bias, running_mean ...) and whose other fields are indices, written
    with an offset where the two numberings differ (``{s-1}``: VAN numbers its stages from
    1, ours from 0). ``derived`` computes fields of our key that the publisher's key does
    not carry (VAN's final LayerNorm sits after the stage's blocks: ``{end}`` = depth + 1).
    ``ignored``: publisher prefixes that are not backbone (the ImageNet classifier)."""

    _FIELD = re.compile(r"\{(\w+)([+-]\d+)?\}")

    def __init__(self, rows: list[tuple[str, str, bool]], ignored: tuple[str, ...],
                 derived: Callable[[dict, dict], dict] | None = None):
        self.rows = rows
        self.ignored = ignored
        self.derived = derived or (lambda values, ctx: {})
        self._theirs = [self._regex(theirs) for theirs, _, _ in rows]
        self._ours = [self._regex(ours) for _, ours, _ in rows]

    @classmethod
    def _regex(cls, template: str) -> re.Pattern:
        out, pos = "", 0
        for m in cls._FIELD.finditer(template):
            out += re.escape(template[pos:m.start()])
            out += f"(?P<{m.group(1)}>[A-Za-z_]+)" if m.group(1) == "t" else f"(?P<{m.group(1)}>\\d+)"
            pos = m.end()
        return re.compile(out + re.escape(template[pos:]))

    @classmethod
    def _values(cls, template: str, match: re.Match) -> dict:
        """The base values of a template's fields from a match (offsets undone)."""
        values = {}
        for m in cls._FIELD.finditer(template):
            got = match.group(m.group(1))
            values[m.group(1)] = got if m.group(1) == "t" else int(got) - int(m.group(2) or 0)
        return values

    @classmethod
    def _format(cls, template: str, values: dict) -> str:
        return cls._FIELD.sub(lambda m: str(values[m.group(1)] if m.group(1) == "t"
                                            else values[m.group(1)] + int(m.group(2) or 0)), template)

    def is_ignored(self, key: str) -> bool:
        return key.startswith(self.ignored)

    def to_ours(self, key: str, ctx: dict) -> tuple[str, bool] | None:
        """Our key (and whether to reshape) of a publisher's key; None without a rule."""
        for (theirs, ours, reshape), rx in zip(self.rows, self._theirs):
            m = rx.fullmatch(key)
            if m:
                values = self._values(theirs, m)
                try:
                    values.update(self.derived(values, ctx))
                except (KeyError, IndexError):
                    return None  # e.g. a stage the model does not have
                return self._format(ours, values), reshape
        return None

    def to_theirs(self, key: str, ctx: dict) -> str | None:
        """The publisher's key of one of ours; None without a rule."""
        for (theirs, ours, _), rx in zip(self.rows, self._ours):
            m = rx.fullmatch(key)
            if m:
                values = self._values(ours, m)
                try:
                    derived = self.derived(values, ctx)
                except (KeyError, IndexError):
                    continue
                if all(values.get(k, v) == v for k, v in derived.items()):
                    return self._format(theirs, values)
        return None


#: torchvision ResNet (torchvision/models/resnet.py)  ->  ours (backbones/resnet.py)
RESNET_TABLE = KeyTable([
    # torchvision                           ours                                  reshape
    ("conv1.{t}",                           "stem.0.{t}",                         False),
    ("bn1.{t}",                             "stem.1.{t}",                         False),
    ("layer{l}.{b}.conv{k}.{t}",            "layer{l}.{b}.conv{k}.{t}",           False),
    ("layer{l}.{b}.bn{k}.{t}",              "layer{l}.{b}.bn{k}.{t}",             False),
    ("layer{l}.{b}.downsample.0.{t}",       "layer{l}.{b}.shortcut.0.{t}",        False),
    ("layer{l}.{b}.downsample.1.{t}",       "layer{l}.{b}.shortcut.1.{t}",        False),
], ignored=("fc.",))

#: VAN-Classification (models/van.py: patch_embed1..4, block1..4, norm1..4)  ->  ours
#: (backbones/van.py: stages[s] = [patch embed, blocks..., LayerNorm])
VAN_TABLE = KeyTable([
    # VAN-Classification                                    ours                                      reshape
    ("patch_embed{s}.proj.{t}",                             "stages.{s-1}.0.0.{t}",                   False),
    ("patch_embed{s}.norm.{t}",                             "stages.{s-1}.0.1.{t}",                   False),
    ("block{s}.{j}.norm1.{t}",                              "stages.{s-1}.{j+1}.norm1.{t}",           False),
    ("block{s}.{j}.attn.proj_1.{t}",                        "stages.{s-1}.{j+1}.attn.proj_in.{t}",    False),
    ("block{s}.{j}.attn.spatial_gating_unit.conv0.{t}",     "stages.{s-1}.{j+1}.attn.lka.dw.{t}",     False),
    ("block{s}.{j}.attn.spatial_gating_unit.conv_spatial.{t}", "stages.{s-1}.{j+1}.attn.lka.dw_dilated.{t}", False),
    ("block{s}.{j}.attn.spatial_gating_unit.conv1.{t}",     "stages.{s-1}.{j+1}.attn.lka.pw.{t}",     False),
    ("block{s}.{j}.attn.proj_2.{t}",                        "stages.{s-1}.{j+1}.attn.proj_out.{t}",   False),
    ("block{s}.{j}.norm2.{t}",                              "stages.{s-1}.{j+1}.norm2.{t}",           False),
    ("block{s}.{j}.mlp.fc1.{t}",                            "stages.{s-1}.{j+1}.mlp.fc1.{t}",         False),
    ("block{s}.{j}.mlp.dwconv.dwconv.{t}",                  "stages.{s-1}.{j+1}.mlp.dw.{t}",          False),
    ("block{s}.{j}.mlp.fc2.{t}",                            "stages.{s-1}.{j+1}.mlp.fc2.{t}",         False),
    ("block{s}.{j}.layer_scale_1",                          "stages.{s-1}.{j+1}.layer_scale1",        True),
    ("block{s}.{j}.layer_scale_2",                          "stages.{s-1}.{j+1}.layer_scale2",        True),
    ("norm{s}.{t}",                                         "stages.{s-1}.{end}.{t}",                 False),
], ignored=("head.",), derived=lambda values, ctx: (
    {"end": ctx["depths"][values["s"] - 1] + 1} if "s" in values and values["s"] >= 1 else {}))

TABLES = {"torchvision_resnet": RESNET_TABLE, "van": VAN_TABLE}
_TITLES = {"torchvision_resnet": "torchvision ResNet", "van": "VAN-Classification"}


# ---------------------------------------------------------------------------- reading
def _first_line(e: BaseException) -> str:
    text = str(e)
    for line in text.splitlines():
        if "WeightsUnpickler error" in line:
            return line.strip().split(". Please use")[0]
    return text.splitlines()[0].strip() if text else e.__class__.__name__


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file: the file itself, or its ``state_dict`` entry;
    a ``module.`` prefix on every key is removed."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise PretrainedError(
                f"{path}: torch.load(weights_only=True) refused it ({_first_line(e)}). segbench reads checkpoints "
                "only this way (unpickling anything else can run code), and this file holds objects other than "
                "tensors, plain containers and argparse.Namespace. If you trust the file, convert it once: "
                f"python -c \"import torch; c = torch.load('{path}', weights_only=False); "
                "torch.save(c.get('state_dict', c), 'clean.pth')\" and give clean.pth instead") from None
        raise PretrainedError(f"{path} is not a PyTorch checkpoint ({_first_line(e)}); delete it and fetch it again "
                              "(`segbench fetch-weights`), or check the path") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise PretrainedError(f"{path} cannot be read as a PyTorch checkpoint ({e.__class__.__name__}: "
                              f"{_first_line(e)}); the file is damaged or truncated: delete it and fetch it again "
                              "(`segbench fetch-weights`)") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = (f"a dict with keys {', '.join(map(str, list(obj)[:8]))}{' ...' if len(obj) > 8 else ''}"
                if isinstance(obj, dict) else type(obj).__name__)
        raise PretrainedError(f"{path} holds no state dict of tensors ({what}); expected a state dict (torchvision) "
                              "or a dict whose 'state_dict' is one (VAN-Classification)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


# ---------------------------------------------------------------------------- the backbones
def backbone_arch(backbone: nn.Module) -> tuple[str, dict]:
    """The family of a model's backbone and what a registered checkpoint must match:
    ResNet ``depth`` and ``width``; VAN ``variant`` (from the depths), ``width`` (first stage)
    and ``depths`` (the key table's context)."""
    from segbench.models.backbones.resnet import DEPTHS, DilatedResNet
    from segbench.models.backbones.van import VAN, VARIANTS

    if isinstance(backbone, DilatedResNet):
        blocks = tuple(len(layer) for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4))
        depth = next((d for d, b in DEPTHS.items() if b == blocks), None)
        return "torchvision_resnet", {"depth": depth, "width": backbone.stem[0].out_channels}
    if isinstance(backbone, VAN):
        depths = tuple(len(stage) - 2 for stage in backbone.stages)
        variant = next((v for v, c in VARIANTS.items() if tuple(c["depths"]) == depths), None)
        return "van", {"variant": variant, "width": backbone.dims[0], "depths": depths}
    raise PretrainedError(f"no pretrained checkpoints for a {type(backbone).__name__} backbone; pretrained weights "
                          "exist for DilatedResNet (deeplabv3, deeplabv3_pac) and VAN (van_fpn_*)")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def _listed(items: list[str], limit: int = 40) -> str:
    shown = [f"    {x}" for x in items[:limit]]
    if len(items) > limit:
        shown.append(f"    ... and {len(items) - limit} more")
    return "\n".join(shown)


def load_pretrained(model: nn.Module, source: str, *, prefix: str = "backbone") -> dict:
    """Fill ``model.<prefix>`` from ``source`` (a registered name or a file path), strictly.

    Returns the provenance ``{"source", "file", "sha256", "tensors"}``; raises
    :class:`PretrainedError` (a :class:`ValueError`) when the checkpoint does not fit.
    """
    backbone = model.get_submodule(prefix)
    family, arch = backbone_arch(backbone)
    if source in REGISTRY:
        problem = registered_mismatch(source, family, arch)
        if problem:
            raise PretrainedError(f"pretrained {source!r} does not fit {type(model).__name__}: {problem}")
    path, _ = resolve(source)
    state = read_checkpoint(path)
    table = TABLES[family]
    ours = {**dict(backbone.named_parameters()), **dict(backbone.named_buffers())}
    optional = "num_batches_tracked"

    updates: dict[str, torch.Tensor] = {}
    unexpected, misshaped = [], []
    for key, value in state.items():
        if table.is_ignored(key):
            continue
        mapped = table.to_ours(key, arch)
        if mapped is None or mapped[0] not in ours:
            if key.endswith(optional):
                continue  # the model keeps no counter there
            where = "no rule maps it" if mapped is None else f"the model has no {prefix}.{mapped[0]}"
            unexpected.append(f"{key} {_shape(value)} ({where})")
            continue
        name, reshape = mapped
        if reshape and value.dim() == 1:
            value = value.reshape(-1, *([1] * (ours[name].dim() - 1)))
        if value.shape != ours[name].shape:
            misshaped.append(f"{key}: checkpoint {_shape(state[key])}, model {prefix}.{name} {_shape(ours[name])}")
            continue
        updates[name] = value
    missing = []
    for name, tensor in ours.items():
        if name in updates or name.endswith(optional):
            continue
        theirs = table.to_theirs(name, arch)
        missing.append(f"{theirs or '(no publisher key)'} {_shape(tensor)} (for {prefix}.{name})")
    if missing or unexpected or misshaped:
        parts = [f"{path} does not fit the backbone of {type(model).__name__} (pretrained: {source!r}; read as a "
                 f"{_TITLES[family]} checkpoint, {len(state)} tensors; classifier keys "
                 f"{', '.join(k + '*' for k in table.ignored)} are skipped):"]
        if missing:
            parts.append(f"  missing from the checkpoint ({len(missing)}):\n{_listed(missing)}")
        if unexpected:
            parts.append(f"  unexpected in the checkpoint ({len(unexpected)}):\n{_listed(unexpected)}")
        if misshaped:
            parts.append(f"  shape differs ({len(misshaped)}):\n{_listed(misshaped)}")
        parts.append("Use a checkpoint of this backbone (depth / variant and width as the model's), in the publisher's "
                     "key layout (docs/models.md, 'Pretrained backbones'); or drop `pretrained`.")
        raise PretrainedError("\n".join(parts))
    with torch.no_grad():
        for name, value in updates.items():
            ours[name].copy_(value)
    return {"source": source, "file": str(path.resolve()), "sha256": sha256sum(path), "tensors": len(updates)}


def without_pretrained(params: dict) -> dict:
    """A model's params without ``pretrained``: for the steps that build a model only for
    its shapes or to load a trained ``model.pt`` (evaluation, serving, profiling, the
    cost count), which must not read, or need, the ImageNet checkpoint."""
    return {k: v for k, v in params.items() if k != "pretrained"}
