"""Op cost: GraDNet's Gra layer and PAC's shared-filter pyramid against plain convolutions
on the same input, forward and forward+backward, timed in the same rounds (best of N).

    python bench/bench_ops.py              # config.yaml shapes at 256x512, then the papers' shapes
    python bench/bench_ops.py --quick      # config.yaml shapes only, fewer rounds

Inputs are the real tensors the ops see: each model (config.yaml's parameters, batch 2,
256x512 input) is run once with a hook that captures the input of its Gra layer / PAC
module; the paper shapes rebuild the models at the papers' widths (GraDNet's Table 1 is
already the config's; DeepLabV3-PAC at ResNet width 64, batch 1, 512x512 crop).

What "a plain convolution of the same shape" is:

* Gra layer on F [N, C, H, W] (C = 128 after GraDNet's stem): a 3x3 convolution C -> C,
  stride 1, padding 1, on the same F. Two are timed: the dense one (C x C x 3 x 3 weights,
  what the target compares with) and the depth-wise one (groups = C), which, like the Gra
  layer, looks at each channel's 3x3 windows alone (a second, stricter yardstick, reported).
  The Gra figures are the layer alone and the layer with GraDNet's fusion F + F * G.
* PAC (rates 1,3,5,7,9, one shared 3x3 filter bank [C_out, C_in, 3, 3], outputs summed):
  the plain convolution has the same weight shape (C_in -> C_out, 3x3, padding 1). PAC runs
  that filter once per rate, so it does R = 5 convolutions' FLOPs by design. Reported:
  PAC / one conv (about R by construction: no 1.5x target can hold for it, reported as info),
  and PAC / R plain convs (the cost per rate: what sharing one filter and dilating add over
  the convolutions it has to do; **the 1.5x target applies to this one**), plus PAC / R
  unshared dilated convs (the same pyramid with R separate filters, ASPP-style). The PAC
  timing is the pyramid (R atrous convs + sum), without the BN + ReLU that follows it.

Targets: Gra (with fusion) / dense 3x3 conv <= 1.5, PAC / (R plain convs) <= 1.5, each for
forward and forward+backward.
"""

from __future__ import annotations

import sys

import benchlib  # noqa: F401  (sys.path, environment)
from benchlib import best_of, figure, header, show

import torch
from torch import nn
from torch.nn import functional as F

from segbench.models import build_model
from segbench.models.gradnet import gra

TARGET = 1.5


def capture_input(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    box = {}
    h = module.register_forward_pre_hook(lambda m, args: box.setdefault("x", args[0].detach().clone()))
    with torch.no_grad():
        model.eval()(x)
    h.remove()
    return box["x"]


def pair(fn, x: torch.Tensor, params=()):
    """(forward without grad, forward + backward) closures of ``fn`` on ``x``."""
    xg = x.clone().requires_grad_(True)
    params = list(params)

    def f():
        with torch.no_grad():
            fn(x)

    def fb():
        xg.grad = None
        for p in params:
            p.grad = None
        fn(xg).sum().backward()
    return f, fb


def fns_of(named: dict, x: torch.Tensor) -> dict:
    out = {}
    for name, (fn, params) in named.items():
        out[f"{name}_f"], out[f"{name}_fb"] = pair(fn, x, params)
    return out


def conv(cin, cout, groups=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, groups=groups, bias=False)


def bench_gra(x: torch.Tensor, rounds: int, label: str, window=3, stride=1, lam=1.0) -> list[dict]:
    c = x.shape[1]
    dense, dw = conv(c, c), conv(c, c, groups=c)
    t = best_of(fns_of({
        "dense": (dense, dense.parameters()),
        "dw": (dw, dw.parameters()),
        "gra": (lambda v: gra(v, window, stride, lam), ()),
        "fusion": (lambda v: v + v * gra(v, window, stride, lam), ()),
    }, x), rounds)
    shape = "x".join(map(str, x.shape))
    out = []
    for mode, tag in (("f", "fwd"), ("fb", "fwd+bwd")):
        ms = {k: t[f"{k}_{mode}"] * 1e3 for k in ("dense", "dw", "gra", "fusion")}
        note = (f"Gra {ms['gra']:.2f} ms, Gra+fusion {ms['fusion']:.2f} ms, dense conv {ms['dense']:.2f} ms, "
                f"depth-wise conv {ms['dw']:.2f} ms")
        out.append(show(figure(f"Gra+fusion / dense 3x3 conv, {tag}, {label}", ms["fusion"] / ms["dense"], "x", "<=",
                               TARGET, note=f"F {shape}, conv {c}->{c}; {note}")))
        out.append(show(figure(f"  Gra layer alone / dense 3x3 conv, {tag}", ms["gra"] / ms["dense"], "x")))
        out.append(show(figure(f"  Gra+fusion / depth-wise 3x3 conv (groups={c}), {tag}",
                               ms["fusion"] / ms["dw"], "x", note="per-channel yardstick, no target")))
    return out


def bench_pac(pac, x: torch.Tensor, rounds: int, label: str) -> list[dict]:
    cin, cout, rates = pac.weight.shape[1], pac.weight.shape[0], pac.rates
    r = len(rates)
    plain = conv(cin, cout)
    plains = [conv(cin, cout) for _ in range(r)]
    unshared = [conv(cin, cout, dilation=d) for d in rates]
    for m in (plain, *plains, *unshared):
        m.weight.data.copy_(pac.weight.data)

    def pyramid(v):
        y = pac.atrous(v, rates[0])
        for d in rates[1:]:
            y = y + pac.atrous(v, d)
        return y

    def summed(mods):
        def run(v):
            y = mods[0](v)
            for m in mods[1:]:
                y = y + m(v)
            return y
        return run

    t = best_of(fns_of({
        "one": (plain, plain.parameters()),
        "plains": (summed(plains), [p for m in plains for p in m.parameters()]),
        "unshared": (summed(unshared), [p for m in unshared for p in m.parameters()]),
        "pac": (pyramid, pac.parameters()),
    }, x), rounds)
    shape = "x".join(map(str, x.shape))
    out = []
    for mode, tag in (("f", "fwd"), ("fb", "fwd+bwd")):
        ms = {k: t[f"{k}_{mode}"] * 1e3 for k in ("one", "plains", "unshared", "pac")}
        note = (f"PAC {ms['pac']:.2f} ms, one conv {ms['one']:.2f} ms, {r} plain convs {ms['plains']:.2f} ms, "
                f"{r} unshared dilated convs {ms['unshared']:.2f} ms")
        out.append(show(figure(f"PAC / {r} plain 3x3 convs (per-rate cost), {tag}, {label}", ms["pac"] / ms["plains"],
                               "x", "<=", TARGET, note=f"x {shape}, {cin}->{cout}, rates {list(rates)}; {note}")))
        out.append(show(figure(f"  PAC / one plain 3x3 conv ({r}x the FLOPs by design), {tag}, {label}",
                               ms["pac"] / ms["one"], "x", note=f"{ms['pac'] / ms['one'] / r:.2f}x per rate",
                               summary=True)))
        out.append(show(figure(f"  PAC / {r} unshared dilated convs (same pyramid, own filters), {tag}",
                               ms["pac"] / ms["unshared"], "x")))
    return out


def main(argv=None) -> int:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (best of; default 5, quick 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", default="256x512", help="input size of the config-shape models")
    ap.add_argument("--batch", type=int, default=2)
    a = ap.parse_args(argv)
    rounds = a.rounds or (3 if a.quick else 5)
    torch.set_num_threads(a.threads)
    size = tuple(int(v) for v in a.size.split("x"))
    header(f"Op cost (torch {torch.__version__}, {torch.get_num_threads()} threads, best of {rounds})")
    torch.manual_seed(0)
    figs = []
    x = torch.randn(a.batch, 3, *size)

    g = build_model("gradnet", 19)
    print(f"  Gra layer: GraDNet as in config.yaml (Table 1 widths), input batch {a.batch} x {a.size}")
    fx = capture_input(g, g.gra, x)
    figs += bench_gra(fx, rounds, f"config {a.size}", g.gra.window, g.gra.stride, g.gra.lam)

    d = build_model("deeplabv3_pac", 19, depth=50, width=16)
    print(f"  PAC: DeepLabV3-PAC as in config.yaml (ResNet-50, width 16), input batch {a.batch} x {a.size}")
    px = capture_input(d, d.pac, x)
    figs += bench_pac(d.pac, px, rounds, f"config {a.size}")

    if not a.quick:
        xg = torch.randn(1, 3, 512, 1024)
        print("  Gra layer: GraDNet (paper = config widths), input batch 1 x 512x1024")
        fx = capture_input(g, g.gra, xg)
        figs += bench_gra(fx, rounds + 1, "paper 512x1024",
                          g.gra.window, g.gra.stride, g.gra.lam)
        del d
        d = build_model("deeplabv3_pac", 21, depth=50)
        print("  PAC: DeepLabV3-PAC at the paper's width (ResNet-50, width 64, 21 classes), input batch 1 x 512x512")
        px = capture_input(d, d.pac, torch.randn(1, 3, 512, 512))
        figs += bench_pac(d.pac, px, max(rounds - 2, 3), "paper 512x512")
    benchlib.write_json(a.json, "bench_ops", figs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
