"""DeepLabV3 (Chen, Papandreou, Schroff, Adam, arXiv 1706.05587) and its PAC variant
(Yu, POSTECH: "Semantic Image Segmentation with Pyramid Atrous Convolution and
Boundary-aware Loss", Fig. 3).

DeepLabV3, read top-down:

    image -> dilated ResNet-50/101 (output stride 16 or 8)          backbones/resnet.py
          -> ASPP: 1x1, 3x3 atrous x3, image pooling -> concat -> 1x1 (256)   heads/aspp.py
          -> 3x3 conv 256 - BN - ReLU  (``head_conv``)
          -> 1x1 conv to the classes -> bilinear up-sampling to the input size

With depth 101, 21 classes and no auxiliary head this has 58.63M parameters, the count
of torchvision's reference (REFERENCE.md §2).

DeepLabV3 + PAC (the PAC paper's "ResNet + PAC"), read top-down:

    image -> the same dilated ResNet
          -> [1x1 conv 256 | global pool -> 1x1 conv 256 | PAC (one shared 3x3 filter at
             ``rates``, merged by ``merge``)]  each with BN + ReLU             heads/pac.py
          -> concat -> 1x1 conv to the classes -> bilinear up-sampling

Interpretations:
- ``head_conv`` (default on) keeps the 3x3 conv torchvision's DeepLabHead puts between the
  ASPP projection and the classifier; the paper goes straight from the projection to the
  1x1 classifier (``head_conv=False``, 0.59M parameters fewer, i.e. 58.04M).
- ASPP rates default to (6, 12, 18) at output stride 16 and (12, 24, 36) at 8 (the
  paper's rule); PAC rates are used as given (the PAC paper does not scale them).
- PAC ``variant="paper"`` follows the text and Fig. 3: the concatenated branches go straight
  to the classifier. ``variant="reference"`` follows the authors' TF code: the PAC branch is
  (plain conv + sum of the atrous convs) / len(rates), and the concatenation is projected
  by 1x1 conv 256 + BN + ReLU, dropout (keep 0.9), then the classifier.
- Every row of the PAC paper's Table 2 is ``rates`` + ``merge``: e.g. rates [6, 12, 18] with
  merge concat (row 1), ..., rates [1, 3, 5, 7, 9] with merge sum (row 7, the default).
- ``width`` scales the ResNet (64 in the paper) and the head (4 x width = 256 channels).
- Random initialisation (models/common.py ``init_weights``); the paper starts from an
  ImageNet-pretrained ResNet, which this repository cannot download.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models.backbones.resnet import DilatedResNet
from segbench.models.common import check_input, conv_bn_relu, init_weights, upsample_like
from segbench.models.heads.aspp import ASPP, ImagePooling
from segbench.models.heads.pac import PyramidAtrousConv


class DeepLabV3(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 101, output_stride: int = 16,
                 width: int = 64, rates: list[int] | None = None, multi_grid: list[int] = (1, 2, 4),
                 head_conv: bool = True):
        super().__init__()
        self.backbone = DilatedResNet(depth, output_stride, width, in_channels, tuple(multi_grid))
        channels = 4 * width
        if rates is None:
            rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(self.backbone.out_channels, channels, tuple(rates))
        self.head_conv = conv_bn_relu(channels, channels, k=3) if head_conv else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 32, "deeplabv3")
        y = self.head_conv(self.aspp(self.backbone(x)))
        return upsample_like(self.classifier(y), x.shape[-2:])


class DeepLabV3PAC(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 101, output_stride: int = 16,
                 width: int = 64, rates: list[int] = (1, 3, 5, 7, 9), merge: str = "sum", variant: str = "paper",
                 multi_grid: list[int] = (1, 2, 4)):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 32, "deeplabv3_pac")
        f = self.backbone(x)
        y = torch.cat([self.conv1x1(f), self.pool(f), self.pac(f)], dim=1)
        return upsample_like(self.classifier(self.project(y)), x.shape[-2:])
