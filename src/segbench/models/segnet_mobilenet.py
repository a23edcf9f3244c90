"""SegNet with a MobileNet encoder and no skip connections, the SegNet of Saraceno's "Image
semantic segmentation" report (2022), after keras-segmentation's ``mobilenet_segnet``
(divamgupta/image-segmentation-keras).

Read top-down (alpha = ``width_mult``):

    encoder  MobileNet v1 up to stride 16 (f4: 512 alpha channels)    backbones/mobilenet.py
             (its stride-32 blocks are not connected to the output and are not built)
    decoder  3x3 conv 512 - BN                                        H/16
             up x2 - 3x3 conv 256 - BN                                H/8
             up x2 - 3x3 conv 128 - BN                                H/4
             up x2 - 3x3 conv 64 - BN                                 H/2
             3x3 conv to the classes
    output   bilinear up-sampling x2 to the input resolution

Interpretations:
- As in the reference, the decoder has no activation between its convs (Conv2D + BN only;
  up-sampling is nearest-neighbour UpSampling2D) and no encoder features reach it: SegNet
  "without skips", and without SegNet's pooling indices either.
- The reference's output is at H/2 and its labels are resized to match; here the logits
  are bilinearly up-sampled to the input (the repository's contract).
- ``width_mult`` scales the encoder (MobileNet's alpha) and the decoder channels alike
  (alpha 1.0 is the reference).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench.models.backbones.mobilenet import MobileNetV1, _ch
from segbench.models.common import check_input, init_weights, upsample_like


class SegNetMobileNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        self.encoder = MobileNetV1(width_mult, in_channels, stride32=False)
        c = [_ch(v, width_mult) for v in (512, 256, 128, 64)]
        cin = self.encoder.channels[-1]
        self.decoder = nn.ModuleList()
        for i, cout in enumerate(c):
            self.decoder.append(nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout)))
            cin = cout
        self.classifier = nn.Conv2d(cin, num_classes, 3, padding=1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 32, "segnet_mobilenet")
        y = self.encoder(x)[-1]
        for i, block in enumerate(self.decoder):
            if i > 0:
                y = F.interpolate(y, scale_factor=2, mode="nearest")
            y = block(y)
        return upsample_like(self.classifier(y), x.shape[-2:])
