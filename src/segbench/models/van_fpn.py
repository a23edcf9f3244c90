"""VAN + FPN with a context module at stride 32: the FRM paper's network and its Table 2
ablations (Wang et al., arXiv 2412.08670, Table 2).

    image -> VAN-b1 ("VAN-S") stages F1..F4 (strides 4, 8, 16, 32)       backbones/van.py
          -> context at H/32, fed the four stages pooled to H/32 and concatenated:
               van_fpn_frm:   FRM (DNL block + FFN + 1x1 cut)               heads/frm.py
               van_fpn_ppm:   PPM, pools 1, 2, 3, 6                         heads/ppm.py
               van_fpn_dappm: DDRNet's DAPPM                                heads/dappm.py
          -> FPN decoder (SFNet's) over F1..F3 -> fused map at H/4          fpn.py
          -> 1x1 conv to the classes -> bilinear up-sampling x4

Training only: ``forward_train`` also returns pixel embeddings, a 1x1 conv (the paper's
embedding head, used by the pixel-contrastive term of the loss) on the fused H/4 map,
``embedding_dim`` channels, not normalised (the loss L2-normalises them). ``forward``
never runs that conv, so inference costs what it would without it; its parameters are
listed in ``train_only_modules`` and left out of the inference parameter counts.

Options: ``variant`` b0 | b1 | b2 (b1 = VAN-S, the paper's); ``width`` the first VAN stage's
channels (default: the variant's; the others keep the ratios 1:2:5:8); ``decoder_dim`` the
FPN/context channels (default 2 x width, i.e. 128 as SFNet-R18, the paper's decoder);
``drop_path`` VAN's stochastic depth (0.1 in VAN-Segmentation); ``flow_align`` SFNet's
flow alignment in the FPN (on: it reproduces the paper's PPM and DAPPM parameter counts
exactly, fpn.py); FRM's ``reduction`` (q, k, g at C/4) and ``ffn_ratio`` (heads/frm.py);
PPM's ``bins``; DAPPM's ``branch_dim`` (default decoder_dim, 128 as DDRNet-23).
Parameter and MAC totals against Table 2: docs/models.md.

``pretrained`` (the paper starts from "the pretrained VAN"): the backbone is loaded, after
initialisation, from VAN-Classification's ImageNet checkpoint: a registered name
(``van:b0`` / ``van:b1`` / ``van:b2``, each into its own variant at the paper width) looked
up in the weights folder (segbench.weights; never downloaded here), or the path of a
checkpoint file in that key layout. The mapping is strict (models/pretrained.py); the
context module, FPN, classifier and embedding head keep their initialisation.
``model.pretrained_info`` holds what was loaded (source, file, sha256, tensors), None
without ``pretrained``.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models.backbones.van import VAN, VARIANTS
from segbench.models.common import check_input, init_weights, upsample_like
from segbench.models.fpn import FPNDecoder
from segbench.models.heads.dappm import DAPPM
from segbench.models.heads.frm import FRM, pool_to
from segbench.models.heads.ppm import PPM
from segbench.models.pretrained import load_pretrained


class StagesConcat(nn.Module):
    """Pool every stage to the last one's size, concatenate, apply ``module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[-1].shape[-2:]
        return self.module(torch.cat([pool_to(f, size) for f in feats], dim=1))


class VanFPN(nn.Module):
    """Shared body; the registry builds the three subclasses below."""

    name = "van_fpn"
    train_only_modules = ("embed_head",)

    def __init__(self, num_classes: int, context_fn, in_channels: int = 3, variant: str = "b1",
                 width: int | None = None, decoder_dim: int | None = None, drop_path: float = 0.1,
                 embedding_dim: int = 256, flow_align: bool = True, pretrained: str | None = None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"VAN variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.backbone = VAN(variant, width, in_channels, drop_path)
        dims = self.backbone.dims
        dim = decoder_dim or 2 * dims[0]
        self.context = context_fn(dims, dim)
        self.decoder = FPNDecoder(dims[:-1], dim, flow_align)
        self.classifier = nn.Conv2d(dim, num_classes, 1)
        self.embed_head = nn.Conv2d(dim, embedding_dim, 1)
        init_weights(self.context)
        init_weights(self.decoder)
        init_weights(self.classifier)
        init_weights(self.embed_head)
        self.pretrained_info = load_pretrained(self, pretrained) if pretrained else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 32, self.name)
        feats = self.backbone(x)
        return self.decoder(feats[:-1], self.context(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_like(self.classifier(self.features(x)), x.shape[-2:])

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits at the input resolution and embeddings [N, embedding_dim, H/4, W/4]."""
        f = self.features(x)
        return {"logits": upsample_like(self.classifier(f), x.shape[-2:]), "embeddings": self.embed_head(f)}


class VanFpnFrm(VanFPN):
    name = "van_fpn_frm"

    def __init__(self, num_classes: int, in_channels: int = 3, variant: str = "b1", width: int | None = None,
                 decoder_dim: int | None = None, drop_path: float = 0.1, embedding_dim: int = 256,
                 flow_align: bool = True, reduction: int = 4, ffn_ratio: float = 0.25,
                 pretrained: str | None = None):
        super().__init__(num_classes, lambda dims, dim: FRM(dims, dim, reduction, ffn_ratio), in_channels, variant,
                         width, decoder_dim, drop_path, embedding_dim, flow_align, pretrained)


class VanFpnPpm(VanFPN):
    name = "van_fpn_ppm"

    def __init__(self, num_classes: int, in_channels: int = 3, variant: str = "b1", width: int | None = None,
                 decoder_dim: int | None = None, drop_path: float = 0.1, embedding_dim: int = 256,
                 flow_align: bool = True, bins: list[int] = (1, 2, 3, 6), pretrained: str | None = None):
        super().__init__(num_classes, lambda dims, dim: StagesConcat(PPM(sum(dims), dim, tuple(bins))), in_channels,
                         variant, width, decoder_dim, drop_path, embedding_dim, flow_align, pretrained)


class VanFpnDappm(VanFPN):
    name = "van_fpn_dappm"

    def __init__(self, num_classes: int, in_channels: int = 3, variant: str = "b1", width: int | None = None,
                 decoder_dim: int | None = None, drop_path: float = 0.1, embedding_dim: int = 256,
                 flow_align: bool = True, branch_dim: int | None = None, pretrained: str | None = None):
        super().__init__(num_classes, lambda dims, dim: StagesConcat(DAPPM(sum(dims), branch_dim or dim, dim)),
                         in_channels, variant, width, decoder_dim, drop_path, embedding_dim, flow_align, pretrained)
