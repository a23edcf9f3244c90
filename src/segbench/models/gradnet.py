"""GraDNet (Jia, Li, Li, "Pixel-level semantic segmentation based on gradient features",
Proc. SPIE 12506, 2022): the Gra layer (Algorithms 1 and 2), its residual fusion and the
asymmetric convolution stack of Table 1, with the paper's "residual structure" as we read it
(``structure="residual"``, the default) or Table 1 taken literally (``structure="literal"``).

Read top-down (Table 1; C = ``width``, S = ``stack_width``), the literal structure:

    image                                                                    H
    Conv1   11x11 / 4, C filters (128) - BN - ReLU                -> F       H/4
    Gra     3x3 windows, stride l = 1, threshold lambda           -> G       H/4
    fusion  F + F * G           (gradient features multiply the input, the product is added back)
    stage 1 Conv2 1x3 S /2 - Conv3 3x1 S /2 - Conv4 1x5 S/2 - Conv5 5x1 S/2          H/8
    stage 2 Conv6 .. Conv9, the same                                                  H/16
    stage 3 Conv10 .. Conv13, the same                                                H/32
    stage 4 Conv14 1x3 S - Conv15 3x1 S                                               H/32
    max-pool 3x3 / 1;  Conv16 1x1 -> classes;  bilinear up-sampling to H

The residual structure (``structure="residual"``, default) keeps every layer above and adds:

    each conv pair (1x3 - 3x1, 1x5 - 5x1) is a ResNet basic block: relu(BN(second(relu(BN(first(x)))))
        + shortcut(x)); the shortcut is the identity, or 1x1 conv (the pair's stride) + BN where the
        channels or the size change (all seven pairs here: 128 -> 16, 16 -> 8, 8 -> 16 channels)
    after the max-pool: Y = relu(up(Y_deep, H/4) + BN(1x1 conv(F')))          F' = F + F * G, H/4
        (the deep H/32 features up-sampled bilinearly to the Gra map's size, plus the stem's
        gradient features projected to their channels); then Conv16 at H/4 and up-sampling to H

Gra layer (Algorithms 1 and 2), per channel of F: windows P_m of K x K pixels slide with
stride l < K. Inside a window whose spread delta(P_m) is below lambda, the gradient
feature is the second-order difference g_m(k, c) = P_m(k+1, c) + P_m(k, c+1) - 2 P_m(k, c);
otherwise g_m = 0. Windows overlap; a value shared by two windows is halved (Algorithm 2)
so that adding the windows back into the map counts it once.

Vectorised (no loop over pixels or windows): g_m(k, c) depends on the window only through
its gate, so G = D * S / N with D the map of second-order differences, S(p) the number
of open windows in which p has a defined difference (each open window adds 1 over its
top-left (K-1) x (K-1) block: the gates placed at their windows' top-left corners, then a
box sum) and N(p) the number of windows covering p (``F.fold`` of ones). The window
spread max - min and the box sum are separable running reductions: K - 1 element-wise ops
on shifted views per axis (a 3x3/1 max-pool is 40x slower on CPU). tests/test_gradnet.py
checks all this against literal loops over windows and window positions.

Interpretations (the paper is ambiguous; every choice below is ours):
1. Conv16 has ``num_classes`` filters (Table 1 lists 1 filter, one score map; the paper
   reports multi-class mIoU), and the logits are bilinearly up-sampled to the input size.
2. Strides: Table 1 puts "/2" on every asymmetric conv, which cannot hold (fourteen
   halvings after the stride-4 stem leave nothing of a 500x500 crop). We read "/2" on a
   1 x k or k x 1 kernel as a stride of 2 along the kernel's long axis and apply it on the
   first pair of each stage (1x3 with stride (1, 2), then 3x1 with stride (2, 1): one
   halving of both sides per stage), stages 1-3, so the stack ends at stride 32 like the
   other models. ``stage_strides`` (default [2, 2, 2, 1]) sets it per stage (1 or 2).
3. Conv4/5 (and 8/9, 12/13) have half the filters of Conv2/3 (Table 1: 8 vs 16); every conv
   is followed by BN and ReLU (not stated), Conv16 has a bias and nothing after it.
4. Gra window "3*3/1": K = 3, l = 1 (``gra_window``, ``gra_stride``). The window spread
   delta(P_m) is max - min of the window (per image and channel); a window is open where
   delta < lambda, as the algorithm is written (``gra_lambda`` = 1.0, on the scale of the
   BN-ReLU features; inf opens every window). The gate passes no gradient.
5. The second-order difference is taken inside the window only: at the window's last row or
   column (k + 1 or c + 1 outside) g_m is 0.
6. Algorithm 2 halves the values two consecutive windows share; with stride l < K/2 more
   than two windows share a pixel, and we divide by the number of windows covering it
   (which is halving exactly where two windows overlap, l >= K/2 on each axis).
7. Windows tile the map after replicate-padding its bottom and right edges to a multiple
   of the stride (no pixel is left uncovered); the output is cropped back.
8. Max-pool 3x3/1 with padding 1 keeps the size.
9. Structure. The abstract, section 2.2 and the conclusion say the network is "designed on
   ResNet's residual structure" and that "the residual structure fuses high-resolution and
   low-resolution gradient features"; Figure 2, which would show where, is not in the text,
   and Table 1 lists a plain chain. Our reading (``residual``, the default and the gradnet
   study's): ResNet shortcuts around Table 1's conv pairs (post-activation basic blocks,
   He et al. 2016; a pair's two convs play the block's two 3x3 convs; projection shortcuts,
   option B, where the shape changes), and one fusion of the high-resolution (H/4) Gra
   features with the low-resolution (H/32) output of the stack, by addition at H/4 before
   Conv16 (as FCN/U-Net-style skips fuse resolutions; the 1x1 projection matches the
   channels). ``literal`` is Table 1 alone (the only residual step the Gra fusion F + F * G).
   The residual reading adds 1x1 projections and BNs only: 65,715 parameters against
   60,643 for 19 classes at the paper's widths.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench.models.common import check_input, init_weights, upsample_like


def _pad_amount(n: int, k: int, l: int) -> int:
    """Rows to add so that windows of size k and stride l tile n rows exactly."""
    if n <= k:
        return k - n
    return (-(n - k)) % l


def _sliding(x: torch.Tensor, k: int, dim: int, op) -> torch.Tensor:
    """``op``-reduction over every run of ``k`` consecutive entries along ``dim`` (stride 1):
    k - 1 element-wise ops on shifted views, no loop over positions."""
    n = x.shape[dim] - k + 1
    out = x.narrow(dim, 0, n)
    for i in range(1, k):
        out = op(out, x.narrow(dim, i, n))
    return out


def gra(x: torch.Tensor, window: int = 3, stride: int = 1, lam: float = 1.0) -> torch.Tensor:
    """The Gra layer's gradient features of ``x`` [N, C, H, W] (see the module docstring)."""
    if not 1 <= stride < window:
        raise ValueError(f"Gra layer needs a stride l with 1 <= l < window ({window}), got {stride}")
    k, l = window, stride
    n, c, h, w = x.shape
    ph, pw = _pad_amount(h, k, l), _pad_amount(w, k, l)
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    hp, wp = xp.shape[-2:]
    with torch.no_grad():
        # Algorithm 1, the gate: the spread max - min of every window below lambda (1.0 where
        # open, 0.0 where closed; computed in place, no intermediate maps)
        xd = xp.detach()
        wmax = _sliding(_sliding(xd, k, 2, torch.maximum), k, 3, torch.maximum)[..., ::l, ::l]
        wmin = _sliding(_sliding(xd, k, 2, torch.minimum), k, 3, torch.minimum)[..., ::l, ::l]
        gate = wmax.sub_(wmin).lt_(lam)                                          # [N, C, nh, nw]
        nh, nw = gate.shape[-2:]
        # S(p): open windows in which p has a defined difference (p not in their last row or
        # column): put each gate at its window's top-left (in a map already padded by K - 2
        # at the top and left), sum over (K-1) x (K-1) blocks
        tops = xd.new_zeros(n, c, hp + k - 3, wp + k - 3)
        tops[..., k - 2:k - 2 + (nh - 1) * l + 1:l, k - 2:k - 2 + (nw - 1) * l + 1:l] = gate
        open_count = _sliding(_sliding(tops, k - 1, 2, torch.add), k - 1, 3, torch.add)  # [N, C, hp-1, wp-1]
        # N(p): windows covering p (Algorithm 2's halving, generalised); col2im of ones
        cover = F.fold(torch.ones(1, k * k, nh * nw, dtype=x.dtype, device=x.device), (hp, wp), k, stride=l)
        weight = open_count.div_(cover[..., :-1, :-1])        # the last row and column weigh 0
    # Algorithm 1, the feature: second-order difference P(k+1, c) + P(k, c+1) - 2 P(k, c)
    # (x - 2y as one sub with alpha=2: 2y is exact, so the same rounding as x - 2 * y)
    d = torch.sub(xp[..., 1:, :-1] + xp[..., :-1, 1:], xp[..., :-1, :-1], alpha=2)
    return F.pad(d * weight, (0, 1, 0, 1))[..., :h, :w]


class GraLayer(nn.Module):
    def __init__(self, window: int = 3, stride: int = 1, lam: float = 1.0):
        super().__init__()
        if not 1 <= stride < window:
            raise ValueError(f"Gra layer needs a stride l with 1 <= l < window ({window}), got {stride}")
        self.window, self.stride, self.lam = window, stride, lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gra(x, self.window, self.stride, self.lam)

    def extra_repr(self) -> str:
        return f"window={self.window}, stride={self.stride}, lambda={self.lam}"


def _cbr(cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1)) -> nn.Sequential:
    pad = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class AsymmetricStage(nn.Sequential):
    """1x3 - 3x1 (S filters, the stride along the long axes) - 1x5 - 5x1 (S/2 filters)."""

    def __init__(self, cin: int, s: int, stride: int, wide: bool = True):
        layers = [_cbr(cin, s, (1, 3), (1, stride)), _cbr(s, s, (3, 1), (stride, 1))]
        if wide:
            half = max(s // 2, 1)
            layers += [_cbr(s, half, (1, 5)), _cbr(half, half, (5, 1))]
        super().__init__(*layers)
        self.out_channels = max(s // 2, 1) if wide else s


class ResidualPair(nn.Module):
    """A ResNet basic block whose two convs are one of Table 1's asymmetric pairs:
    ``relu(BN(k x 1 conv(relu(BN(1 x k conv(x))))) + shortcut(x))``, the stride along each
    conv's long axis as in :class:`AsymmetricStage`; the shortcut is the identity, or a 1x1
    conv (with the block's stride) + BN where the channels or the size change."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, (1, k), stride=(1, stride), padding=(0, k // 2), bias=False)
        self.bn_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, (k, 1), stride=(stride, 1), padding=(k // 2, 0), bias=False)
        self.bn_b = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(x)))))
        return F.relu(y + self.shortcut(x))


class ResidualStage(nn.Sequential):
    """Table 1's stage with a shortcut around each pair: [1x3 - 3x1] (S filters, the stage's
    stride) then [1x5 - 5x1] (S/2 filters)."""

    def __init__(self, cin: int, s: int, stride: int, wide: bool = True):
        blocks = [ResidualPair(cin, s, 3, stride)]
        if wide:
            blocks.append(ResidualPair(s, max(s // 2, 1), 5))
        super().__init__(*blocks)
        self.out_channels = max(s // 2, 1) if wide else s


STRUCTURES = ("residual", "literal")


class GraDNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 128, stack_width: int = 16,
                 gra_window: int = 3, gra_stride: int = 1, gra_lambda: float = 1.0,
                 stage_strides: list[int] = (2, 2, 2, 1), structure: str = "residual"):
        super().__init__()
        if len(stage_strides) != 4 or any(s not in (1, 2) for s in stage_strides):
            raise ValueError(f"stage_strides must be four values of 1 or 2, got {list(stage_strides)}")
        if structure not in STRUCTURES:
            raise ValueError(f"gradnet: structure={structure!r} is not allowed; allowed values: "
                             f"{', '.join(STRUCTURES)}")
        self.structure = structure
        self.conv1 = _cbr(in_channels, width, (11, 11), (4, 4))
        self.gra = GraLayer(gra_window, gra_stride, gra_lambda)
        stage_cls = ResidualStage if structure == "residual" else AsymmetricStage
        stages, cin = [], width
        for i, s in enumerate(stage_strides):
            stage = stage_cls(cin, stack_width, s, wide=i < 3)
            stages.append(stage)
            cin = stage.out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        if structure == "residual":
            # the stem's high-resolution gradient features, projected to the deep features' channels
            self.fuse = nn.Sequential(nn.Conv2d(width, cin, 1, bias=False), nn.BatchNorm2d(cin))
        self.conv16 = nn.Conv2d(cin, num_classes, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 32, "gradnet")
        f = self.conv1(x)
        f = torch.addcmul(f, f, self.gra(f))     # residual fusion of the gradient features: F + F * G
        y = self.pool(self.stages(f))
        if self.structure == "residual":
            # high- and low-resolution gradient features fused at H/4: up-sampled deep + projected stem
            y = F.relu(upsample_like(y, f.shape[-2:]) + self.fuse(f))
        return upsample_like(self.conv16(y), x.shape[-2:])
