"""CPU speed of every model, as a fraction of what a dense convolution achieves on the same
machine in the same run, so that a slow implementation (a Python loop, a layout copy, a
memory-bound op dominating) shows up whatever the machine.

For each model: the FLOPs of one forward pass are counted with ``torch.utils.flop_counter``
(on the meta device); a forward+backward pass is taken as 3x the forward FLOPs (the
backward of a convolution or matrix product costs two forwards; torch 2.13's counter
itself counts the input gradient of a grouped convolution as if it were dense: 66x the
forward instead of 3x for a depth-wise 3x3 on 64 channels, so its backward count is not
used). The passes
are timed on real tensors (eval mode and no_grad for forward, train mode for
forward+backward). Achieved GFLOP/s = FLOPs / time, reported divided by the GFLOP/s of a
dense 3x3 convolution (128 -> 128 channels on a 64x128 map, batch ``--batch``) timed
forward and forward+backward in the same run: the four passes (conv f, conv f+b, model f,
model f+b) run in turn for ``--iterations`` rounds after a warm-up round, and each keeps its
best time, so a burst of load from other processes on a shared machine cannot make one of
them look slow alone.
A ratio near 1 means the model runs at the machine's convolution speed; far below 1 means
time goes to operations that do little arithmetic (element-wise, pooling, resampling,
memory traffic) or to a slow implementation.

    python bench/bench_models.py                    # the CPU presets (config.yaml sizes)
    python bench/bench_models.py --preset paper     # the papers' widths (slow: minutes)
    python bench/bench_models.py --batch 4 unet gradnet

Input 128x256 (the synthetic dataset's size), batch 2 by default (BN in training needs
more than one value per channel at the 1x1 image-pooling branches), ``--threads`` 2.
Ratios are comparable within one run only; the numbers are printed, never asserted.
With the CPU presets each model runs in the memory format config.yaml trains it in on a CPU
(``train.channels_last``, the model entry's or the global one; the ``format`` column).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from benchlib import best_of  # noqa: E402  (bench/ is the script's folder)
from segbench.models import available, build_model  # noqa: E402
from segbench.models.common import count_parameters  # noqa: E402

# scaled-down versions of the same code that train a step of batch 4 at 128x256 in about
# 0.05-0.3 s on 2 CPU threads (the proposed config.yaml entries, docs/models.md)
CPU_PRESETS: dict[str, dict] = {
    "unet": {"width": 16},
    "segnet": {"width": 16},
    "gradnet": {"structure": "residual"},                # the paper's widths are already small
    "deeplabv3": {"depth": 50, "width": 16, "head_conv": False, "dropout": 0.0},   # the PAC study's baseline
    "deeplabv3_pac": {"depth": 50, "width": 16},
    "van_fpn_frm": {"width": 16},
    "van_fpn_ppm": {"width": 16},
    "van_fpn_dappm": {"width": 16},
    "unet_xception": {"width": 16},
    "segnet_mobilenet": {"width_mult": 0.5},
}
CLASSES = 19
CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


def config_channels_last(names, path: Path = CONFIG) -> dict[str, bool]:
    """Whether config.yaml trains each model entry in channels_last on a CPU: its
    ``train.channels_last`` (the model entry's, else the global one) resolved for the CPU
    (``auto`` is NCHW there). A name without an entry gets the global setting."""
    from segbench.config import load_config
    from segbench.engine.common import use_channels_last

    cfg = load_config(path)
    default = cfg["train"].get("channels_last", "auto")
    out = {}
    for name in names:
        entry = cfg["models"].get(name) or {}
        out[name] = use_channels_last((entry.get("train") or {}).get("channels_last", default), "cpu")
    return out


def count_flops(model: torch.nn.Module, x: torch.Tensor, train: bool) -> int:
    """FLOPs of one forward pass (``train``: the training forward, with embedding heads)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        if train and hasattr(model, "forward_train"):
            model.forward_train(x)
        else:
            model(x)
    return counter.get_total_flops()


def fwd_fn(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def train_fn(model, x):
    def run():
        model.zero_grad(set_to_none=True)
        out = model.forward_train(x)["logits"] if hasattr(model, "forward_train") else model(x)
        out.logsumexp(1).mean().backward()
    return run


def best_times(fns: dict, rounds: int) -> dict:
    """Best time of each function over ``rounds`` rounds that run all of them in turn (after
    one warm-up round): a burst of load from another process hits one round of every
    function alike instead of all the samples of one."""
    return best_of(fns, rounds, warmup=1)


def dense_conv_fns(batch: int):
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False)
    x = torch.randn(batch, 128, 64, 128)
    xg = x.clone().requires_grad_(True)
    flops = 2 * batch * 128 * 128 * 9 * 64 * 128

    def fb():
        conv.zero_grad(set_to_none=True)
        conv(xg).sum().backward()
    # backward of a conv: input and weight gradients, each the forward's FLOPs
    return {"conv_f": fwd_fn(conv, x), "conv_fb": fb}, flops, 3 * flops


def in_format(model: torch.nn.Module, x: torch.Tensor, channels_last: bool):
    """The model and its input in the memory format training uses (``train.channels_last``):
    channels_last weights and batches, or the default NCHW (the models are built NCHW)."""
    if channels_last:
        return model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, x


def bench_model(name: str, params: dict, batch: int, size: tuple[int, int], rounds: int,
                channels_last: bool = False, compare: bool = False) -> dict:
    """FLOPs and best times of one model (``channels_last``: in that memory format). With
    ``compare``, the forward+backward step in the other format is timed in the same rounds
    too (``fwd_bwd_other_s``), so the two formats compare under the same load."""
    with torch.device("meta"):
        meta = build_model(name, CLASSES, **params)
        xm = torch.zeros(batch, 3, *size)
    flops_f = count_flops(meta.eval(), xm, train=False)
    flops_fb = 3 * count_flops(meta.train(), xm, train=True)
    torch.manual_seed(0)
    model = build_model(name, CLASSES, **params)
    model_eval = build_model(name, CLASSES, **params).eval()
    x = torch.randn(batch, 3, *size)
    conv_fns, conv_f, conv_fb = dense_conv_fns(batch)
    fns = {**conv_fns, "f": fwd_fn(*in_format(model_eval, x, channels_last)),
           "fb": train_fn(*in_format(model.train(), x, channels_last))}
    if compare:
        torch.manual_seed(0)
        other = build_model(name, CLASSES, **params).train()
        fns["fb_other"] = train_fn(*in_format(other, x, not channels_last))
    t = best_times(fns, rounds)
    out = {"model": name, "params": count_parameters(model), "channels_last": channels_last,
           "gflop_fwd": flops_f / 1e9, "gflop_fwd_bwd": flops_fb / 1e9,
           "fwd_s": t["f"], "fwd_bwd_s": t["fb"], "gflops_fwd": flops_f / t["f"] / 1e9,
           "gflops_fwd_bwd": flops_fb / t["fb"] / 1e9,
           "conv_fwd": conv_f / t["conv_f"] / 1e9, "conv_fwd_bwd": conv_fb / t["conv_fb"] / 1e9}
    if compare:
        out.update(fwd_bwd_other_s=t["fb_other"], gflops_fwd_bwd_other=flops_fb / t["fb_other"] / 1e9)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="models (default: all)")
    ap.add_argument("--preset", choices=["cpu", "paper"], default="cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", default="128x256")
    ap.add_argument("--iterations", type=int, default=5, help="timed rounds (best of)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    size = tuple(int(v) for v in a.size.split("x"))
    names = a.names or list(available())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {a.size}, batch {a.batch}, "
          f"preset {a.preset}, best of {a.iterations}", flush=True)
    formats = config_channels_last(names) if a.preset == "cpu" else dict.fromkeys(names, False)
    rows = []
    for name in names:
        params = CPU_PRESETS.get(name, {}) if a.preset == "cpu" else {}
        rows.append((name, params, bench_model(name, params, a.batch, size, a.iterations, formats[name])))
        print(f"  timed {name}", file=sys.stderr, flush=True)
    head = (f"{'model':<17} {'params':>8} {'GFLOP f':>8} {'f ms':>8} {'GFLOP/s':>8} {'ratio':>6}   "
            f"{'GFLOP f+b':>9} {'f+b ms':>8} {'GFLOP/s':>8} {'ratio':>6}  {'conv f, f+b':>11}  {'format':>6}  params")
    print(head)
    print("-" * len(head))
    for name, params, r in rows:
        print(f"{name:<17} {r['params'] / 1e6:>7.2f}M {r['gflop_fwd']:>8.2f} {r['fwd_s'] * 1e3:>8.1f} "
              f"{r['gflops_fwd']:>8.1f} {r['gflops_fwd'] / r['conv_fwd']:>6.2f}   {r['gflop_fwd_bwd']:>9.2f} "
              f"{r['fwd_bwd_s'] * 1e3:>8.1f} {r['gflops_fwd_bwd']:>8.1f} "
              f"{r['gflops_fwd_bwd'] / r['conv_fwd_bwd']:>6.2f}  "
              f"{r['conv_fwd']:>5.0f},{r['conv_fwd_bwd']:>5.0f}  {'NHWC' if r['channels_last'] else 'NCHW':>6}  "
              f"{params or 'paper'}", flush=True)
    print("ratio: the model's GFLOP/s / the dense conv's (128->128 3x3 @64x128 timed in the same rounds as the "
          "model; its GFLOP/s in the 'conv f, f+b' column); format: the memory format config.yaml trains the "
          "model in on a CPU (train.channels_last; NHWC = channels_last)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
