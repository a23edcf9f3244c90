"""DeepLabV3 (Chen, Papandreou, Schroff, Adam, arXiv 1706.05587) and its PAC variant
(Yu, POSTECH: "Semantic Image Segmentation with Pyramid Atrous Convolution and
Boundary-aware Loss", Fig. 3).

DeepLabV3, read top-down:

    image -> dilated ResNet-50/101 (output stride 16 or 8)          backbones/resnet.py
          -> ASPP: 1x1, 3x3 atrous x3, image pooling -> concat -> 1x1 (256)   heads/aspp.py
             -> dropout (``dropout``, 0.5)
          -> 3x3 conv 256 - BN - ReLU  (``head_conv``)
          -> 1x1 conv to the classes -> bilinear up-sampling to the input size

With depth 101, 21 classes and no auxiliary head this has 58.63M parameters, the count
of torchvision's reference (``deeplabv3_resnet101``, ``aux_loss=False``).

DeepLabV3 + PAC (the PAC paper's "ResNet + PAC"), read top-down:

    image -> the same dilated ResNet
          -> [1x1 conv 256 | global pool -> 1x1 conv 256 | PAC (one shared 3x3 filter at
             ``rates``, merged by ``merge``)]  each with BN + ReLU             heads/pac.py
          -> concat -> 1x1 conv to the classes -> bilinear up-sampling

Interpretations:
- ``head_conv`` (default on) keeps the 3x3 conv torchvision's DeepLabHead puts between the
  ASPP projection and the classifier; the paper goes straight from the projection to the
  1x1 classifier (``head_conv=False``, 0.59M parameters fewer, i.e. 58.04M).
- ``dropout`` (default 0.5) is torchvision's dropout after the ASPP projection; the DeepLabV3
  paper's text has none (``dropout=0`` removes the module).
- The PAC study's baseline: "ResNet + PAC" is DeepLabV3 with PAC in place of ASPP, so its
  DeepLabV3 must differ from the PAC model by the context module alone. The PAC model
  (``variant="paper"``) has neither an extra 3x3 conv nor dropout: the concatenated branches
  go straight to the 1x1 classifier. Its baseline is therefore ``head_conv=False, dropout=0``
  (config.yaml and paper.yaml set it on the ``deeplabv3`` entry; the cross study and the BAL
  grid, which use the same entry, get the same DeepLabV3). Both models are then the same
  dilated ResNet, a context module, and one 1x1 classifier with bias, followed by bilinear
  up-sampling; the context modules differ (ASPP: 1x1 + three atrous 3x3 + image pooling,
  concatenated and projected to 256 channels by its 1x1 conv; PAC: 1x1 + image pooling +
  PAC, concatenated, 768 channels, no projection), so the classifier reads 256 channels in
  one and 768 in the other. tests/test_models.py checks the shared parts.
- ASPP rates default to (6, 12, 18) at output stride 16 and (12, 24, 36) at 8 (the
  paper's rule); PAC rates are used as given (the PAC paper does not scale them).
- PAC ``variant="paper"`` follows the text and Fig. 3: the concatenated branches go straight
  to the classifier. ``variant="reference"`` follows the authors' TF code: the PAC branch is
  (plain conv + sum of the atrous convs) / len(rates), and the concatenation is projected
  by 1x1 conv 256 + BN + ReLU, dropout (keep 0.9), then the classifier.
- Every row of the PAC paper's Table 2 is ``rates`` + ``merge``: e.g. rates [6, 12, 18] with
  merge concat (row 1), ..., rates [1, 3, 5, 7, 9] with merge sum (row 7, the default).
- ``width`` scales the ResNet (64 in the paper) and the head (4 x width = 256 channels).
- Initialisation: models/common.py ``init_weights``, then, with ``pretrained`` (the paper
  starts from an ImageNet-pretrained ResNet-101), the backbone is loaded from torchvision's
  ImageNet checkpoint: a registered name (``torchvision:resnet101`` for depth 101,
  ``torchvision:resnet50`` for depth 50, both at width 64) looked up in the weights folder
  (segbench.weights; never downloaded here), or the path of a checkpoint file in
  torchvision's key layout. The mapping is strict (models/pretrained.py); ASPP / PAC and
  the classifier keep their initialisation. ``model.pretrained_info`` holds what was
  loaded (source, file, sha256, tensors), None without ``pretrained``.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models.backbones.resnet import DilatedResNet
from segbench.models.common import check_input, conv_bn_relu, init_weights, upsample_like
from segbench.models.heads.aspp import ASPP, ImagePooling
from segbench.models.heads.pac import PyramidAtrousConv
from segbench.models.pretrained import load_pretrained


class DeepLabV3(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 101, output_stride: int = 16,
                 width: int = 64, rates: list[int] | None = None, multi_grid: list[int] = (1, 2, 4),
                 head_conv: bool = True, dropout: float = 0.5, pretrained: str | None = None):
        super().__init__()
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"deeplabv3: dropout={dropout!r} is not allowed; expected a probability in [0, 1]")
        self.backbone = DilatedResNet(depth, output_stride, width, in_channels, tuple(multi_grid))
        channels = 4 * width
        if rates is None:
            rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(self.backbone.out_channels, channels, tuple(rates), dropout=float(dropout))
        self.head_conv = conv_bn_relu(channels, channels, k=3) if head_conv else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_weights(self)
        self.pretrained_info = load_pretrained(self, pretrained) if pretrained else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 32, "deeplabv3")
        y = self.head_conv(self.aspp(self.backbone(x)))
        return upsample_like(self.classifier(y), x.shape[-2:])


class DeepLabV3PAC(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 101, output_stride: int = 16,
                 width: int = 64, rates: list[int] = (1, 3, 5, 7, 9), merge: str = "sum", variant: str = "paper",
                 multi_grid: list[int] = (1, 2, 4), pretrained: str | None = None):
        super().__init__()
        self.backbone = DilatedResNet(depth, output_stride, width, in_channels, tuple(multi_grid))
        cin, channels = self.backbone.out_channels, 4 * width
        self.conv1x1 = conv_bn_relu(cin, channels, k=1)
        self.pool = ImagePooling(cin, channels)
        self.pac = PyramidAtrousConv(cin, channels, tuple(rates), merge, variant)
        if variant == "reference":
            self.project = nn.Sequential(*conv_bn_relu(3 * channels, channels, k=1), nn.Dropout(0.1))
            self.classifier = nn.Conv2d(channels, num_classes, 1)
        else:
            self.project = nn.Identity()
            self.classifier = nn.Conv2d(3 * channels, num_classes, 1)
        init_weights(self)
        nn.init.kaiming_normal_(self.pac.weight, mode="fan_out", nonlinearity="relu")
        self.pretrained_info = load_pretrained(self, pretrained) if pretrained else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 32, "deeplabv3_pac")
        f = self.backbone(x)
        y = torch.cat([self.conv1x1(f), self.pool(f), self.pac(f)], dim=1)
        return upsample_like(self.classifier(self.project(y)), x.shape[-2:])
