"""SegNet (Badrinarayanan, Kendall, Cipolla, TPAMI 2017) with a VGG16-BN encoder.

Encoder: the 13 convolutions of VGG16 in 5 blocks (2, 2, 3, 3, 3 convs of 3x3, each
followed by BN and ReLU), each block ending in a 2x2 max-pool that remembers its indices.
Decoder: the mirror image; each block first *unpools* with the indices of the matching
encoder pool (no learned up-sampling, no skip features), then applies its convolutions.
The last convolution maps to the classes (no BN/ReLU), output at the input resolution.

``width`` scales every block's channels (64 in the paper: 64, 128, 256, 512, 512).
Interpretation: convolutions keep their bias as in VGG16 (29.45M parameters, the count of a VGG16-BN SegNet reference implementation).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench.models.common import check_input

VGG16_BLOCKS = (2, 2, 3, 3, 3)


def _cbr(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SegNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64):
        super().__init__()
        chans = [width, width * 2, width * 4, width * 8, width * 8]
        self.encoder = nn.ModuleList()
        cin = in_channels
        for n, c in zip(VGG16_BLOCKS, chans):
            layers = []
            for _ in range(n):
                layers += _cbr(cin, c)
                cin = c
            self.encoder.append(nn.Sequential(*layers))
        # decoder block i mirrors encoder block i: its convs go from chans[i] down to chans[i-1]
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(chans))):
            n, c = VGG16_BLOCKS[i], chans[i]
            out = chans[i - 1] if i > 0 else chans[0]
            layers = []
            for j in range(n):
                last = j == n - 1
                if i == 0 and last:
                    layers.append(nn.Conv2d(c, num_classes, 3, padding=1))
                else:
                    layers += _cbr(c, out if last else c)
            self.decoder.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 32, "segnet")
        indices, sizes = [], []
        for block in self.encoder:
            x = block(x)
            sizes.append(x.shape[-2:])
            x, idx = F.max_pool2d(x, 2, 2, return_indices=True)
            indices.append(idx)
        for block in self.decoder:
            x = F.max_unpool2d(x, indices.pop(), 2, 2, output_size=sizes.pop())
            x = block(x)
        return x
