"""Training utilisation at 256x512: achieved GFLOP/s of forward+backward divided by a dense
3x3 convolution's GFLOP/s, timed in the same rounds (bench/bench_models.py's method, whose
functions this script imports), for the convolutional models; target >= 0.5. The
denominator is the best dense-conv speed over the whole run (every model's rounds time the
conv too), so a burst of load during one model's conv rounds does not flatter that model.

    python bench/bench_utilisation.py                  # the 10 models, config.yaml widths, 256x512, batch 2
    python bench/bench_utilisation.py --quick          # fewer rounds, no comparison of memory formats
    python bench/bench_utilisation.py --preset paper unet     # the papers' widths (slow)
    python bench/bench_utilisation.py --size 128x256 --batch 4 --threads 1   # config.yaml's training step

Each model is measured in the memory format config.yaml trains it in on a CPU
(``train.channels_last``: the model entry's, else the global one; ``auto`` is NCHW on a
CPU), printed as [channels_last] or [NCHW]. Unless ``--quick``, its step in the other
format is timed in the same rounds, and a line says which format is faster, so the
config's choice can be checked on the machine at hand.

For every model under the target, its forward+backward step (in its config format) is
profiled (torch.profiler, after a warm-up step) and its self CPU time split into dense
kxk / 1x1 / grouped (depth-wise) convolutions, batch norm, element-wise,
pooling/resampling and copies; the worst model's top operators are listed. Such a model
with scaled-down widths is then timed again at the papers' widths (unless ``--quick`` or
``--no-paper``), printed as [..., paper widths].

The machine's load is checked before and after the run (:class:`benchlib.LoadCheck`: load
average, and the share of the CPUs other processes used); a last line says whether it was
quiet enough or too busy for the figures to mean anything.
"""

from __future__ import annotations

import sys

import benchlib  # noqa: F401  (sys.path, environment)
from benchlib import figure, header, show

import torch

from bench_models import CPU_PRESETS, CLASSES, bench_model, config_channels_last, in_format, train_fn
from segbench.models import build_model

MODELS = ["unet", "segnet", "deeplabv3", "deeplabv3_pac", "unet_xception", "segnet_mobilenet", "gradnet",
          "van_fpn_frm", "van_fpn_ppm", "van_fpn_dappm"]
TARGET = 0.5

GROUPS = [  # (group, substrings of aten op names), first match wins; convolutions are split by weight shape
    ("batch norm", ("batch_norm", "layer_norm", "group_norm")),
    ("pool/resample", ("pool", "upsample", "interpolate", "max_unpool", "adaptive", "col2im", "im2col")),
    ("matmul", ("mm", "matmul", "linear", "bmm", "addmm")),
    ("copy/layout", ("copy_", "contiguous", "clone", "cat", "fill_", "zero_", "empty", "pad", "index")),
]
CONV_OPS = {"aten::mkldnn_convolution": (0, 1), "aten::convolution_backward": (1, 2),
            "aten::thnn_conv2d": (0, 1), "aten::_slow_conv2d_forward": (0, 1), "aten::_slow_conv2d_backward": (1, 2),
            "aten::conv_depthwise2d": (0, 1), "aten::_conv_depthwise2d": (0, 1)}
COLUMNS = ["conv kxk", "conv 1x1", "conv grouped", "batch norm", "pool/resample", "matmul", "copy/layout",
           "element-wise/other"]


def group_of(name: str, shapes=None) -> str:
    if name in CONV_OPS or "convolution" in name or "conv2d" in name:
        try:
            i, w = CONV_OPS.get(name, (0, 1))
            cin, weight = shapes[i][1], shapes[w]
            if weight[1] != cin:
                return "conv grouped"  # depth-wise and grouped: few FLOPs per byte
            return "conv 1x1" if weight[2] == weight[3] == 1 else "conv kxk"
        except (TypeError, IndexError):
            return "conv kxk"
    for g, keys in GROUPS:
        if any(k in name for k in keys):
            return g
    return "element-wise/other"


def profile_step(name: str, params: dict, batch: int, size: tuple[int, int], channels_last: bool = False):
    """Self CPU time shares of one f+b step by operator group (convolutions split by weight
    shape) and the top aten operators."""
    torch.manual_seed(0)
    model = build_model(name, CLASSES, **params).train()
    step = train_fn(*in_format(model, torch.randn(batch, 3, *size), channels_last))
    step()  # warm-up (allocator, mkldnn primitives)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    groups: dict[str, float] = {}
    for e in prof.events():
        if e.name.startswith("aten::"):
            g = group_of(e.name, e.input_shapes)
            groups[g] = groups.get(g, 0.0) + e.self_cpu_time_total
    total = sum(groups.values()) or 1.0
    groups = {g: v / total for g, v in groups.items()}
    top = sorted((e for e in prof.key_averages() if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
    return groups, top, total


def fmt(channels_last: bool) -> str:
    return "channels_last" if channels_last else "NCHW"


def main(argv=None) -> int:
    ap = benchlib.parser(__doc__)
    ap.add_argument("names", nargs="*", help=f"models (default: {' '.join(MODELS)})")
    ap.add_argument("--preset", choices=["cpu", "paper"], default="cpu",
                    help="cpu: config.yaml's widths (bench_models.CPU_PRESETS); paper: the papers'")
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=None, help="timed rounds (best of; default 4, quick 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--format", choices=["config", "nchw", "channels_last"], default="config",
                    help="memory format of the measured step (default: config.yaml's train.channels_last)")
    ap.add_argument("--no-compare", action="store_true",
                    help="do not time the other memory format in the same rounds (--quick implies it)")
    ap.add_argument("--no-paper", action="store_true",
                    help="do not time the models under the target again at the papers' widths (--quick implies it)")
    a = ap.parse_args(argv)
    a.no_paper = a.no_paper or a.quick
    load = benchlib.LoadCheck()
    rounds = a.iterations or (2 if a.quick else 4)
    compare = not (a.quick or a.no_compare)
    torch.set_num_threads(a.threads)
    size = tuple(int(v) for v in a.size.split("x"))
    names = a.names or MODELS
    if a.format == "config":
        formats = config_channels_last(names)
    else:
        formats = dict.fromkeys(names, a.format == "channels_last")
    header(f"Training utilisation at {a.size} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
           f"batch {a.batch}, preset {a.preset}, best of {rounds}; ratio = model f+b GFLOP/s / dense 3x3 conv "
           f"128->128 @64x128 f+b GFLOP/s, timed in the same rounds, best over the run)", busy=False)
    load.print_before()
    print(f"  memory format ({'config.yaml train.channels_last on a CPU' if a.format == 'config' else '--format'}): "
          f"channels_last for {', '.join(n for n in names if formats[n]) or 'none'}; "
          f"NCHW for {', '.join(n for n in names if not formats[n]) or 'none'}", flush=True)
    figs, rows = [], []
    for name in names:
        params = CPU_PRESETS.get(name, {}) if a.preset == "cpu" else {}
        rows.append((name, params, bench_model(name, params, a.batch, size, rounds, formats[name], compare)))
        print(f"  timed {name}", flush=True)
    # the machine's dense-conv speed: the best of every model's same-round conv timings (a
    # burst of load during one model's conv rounds would otherwise flatter that model)
    conv = max(r["conv_fwd_bwd"] for _, _, r in rows)
    conv_f = max(r["conv_fwd"] for _, _, r in rows)
    print(f"  dense 3x3 conv 128->128 @64x128, batch {a.batch}: {conv:.0f} GFLOP/s f+b, {conv_f:.0f} fwd "
          f"(best over the run; per model {min(r['conv_fwd_bwd'] for _, _, r in rows):.0f}-{conv:.0f})")
    ratios = {}
    for name, params, r in rows:
        ratio = ratios[name] = r["gflops_fwd_bwd"] / conv
        note = (f"{r['gflop_fwd_bwd']:.1f} GFLOP in {r['fwd_bwd_s'] * 1e3:.0f} ms = "
                f"{r['gflops_fwd_bwd']:.0f} GFLOP/s; fwd ratio {r['gflops_fwd'] / conv_f:.2f}")
        if compare:
            note += (f"; {fmt(not formats[name])} {r['gflops_fwd_bwd_other'] / conv:.2f} in the same rounds "
                     f"({r['fwd_bwd_other_s'] * 1e3:.0f} ms)")
        figs.append(show(figure(f"utilisation f+b {name} [{fmt(formats[name])}]", ratio, "", ">=", TARGET,
                                note=note)))
    if compare:
        print(f"\n  memory formats, f+b step in the same rounds (speed-up = NCHW time / channels_last time)")
        for name, params, r in rows:
            t_cl, t_nchw = ((r["fwd_bwd_s"], r["fwd_bwd_other_s"]) if formats[name]
                            else (r["fwd_bwd_other_s"], r["fwd_bwd_s"]))
            faster = t_cl < t_nchw
            verdict = ("config agrees" if faster == formats[name] else
                       f"config trains {fmt(formats[name])}, {fmt(faster)} is faster here")
            figs.append(show(figure(f"  channels_last speed-up {name}", t_nchw / t_cl, "x",
                                    note=f"NCHW {t_nchw * 1e3:.0f} ms, channels_last {t_cl * 1e3:.0f} ms; "
                                         f"{verdict}")))
    rows = [(name, params, r, ratios[name]) for name, params, r in rows]
    misses = sorted((row for row in rows if row[3] < TARGET), key=lambda row: row[3])
    if misses:
        print(f"\n  {len(misses)} model(s) under {TARGET}: self CPU time of one f+b step (in its format) by "
              "operator group")
        groups_seen = COLUMNS
        print("  " + f"{'model':<17}" + "".join(f"{g:>14}" for g in groups_seen))
        worst_top = None
        for name, params, _, _ in misses:
            groups, top, total = profile_step(name, params, a.batch, size, formats[name])
            worst_top = worst_top or (name, top, total)
            print("  " + f"{name:<17}" + "".join(f"{groups.get(g, 0.0):>13.0%} " for g in groups_seen))
        name, top, total = worst_top
        print(f"\n  worst: {name} [{fmt(formats[name])}]; top operators of one f+b step (self CPU time, "
              "torch.profiler key_averages)")
        for e in top[:12]:
            print(f"    {e.key:<40} {e.self_cpu_time_total / 1e3:>9.1f} ms {e.self_cpu_time_total / total:>6.1%} "
                  f"{e.count:>5} calls")
    # The default widths are scaled down (config.yaml); a model under the target there is timed
    # again as its paper defines it, where its layers are wider and so less memory-bound.
    again = [name for name, params, _, _ in misses if a.preset == "cpu" and params and not a.no_paper]
    if again:
        print(f"\n  at the papers' widths (bench_models.py --preset paper), the same rounds as a dense conv:")
        for name in again:
            r = bench_model(name, {}, a.batch, size, rounds, formats[name])
            ratio = r["gflops_fwd_bwd"] / max(conv, r["conv_fwd_bwd"])
            figs.append(show(figure(f"utilisation f+b {name} [{fmt(formats[name])}, paper widths]", ratio, "", ">=",
                                    TARGET, note=f"{r['gflop_fwd_bwd']:.1f} GFLOP in {r['fwd_bwd_s'] * 1e3:.0f} ms = "
                                                 f"{r['gflops_fwd_bwd']:.0f} GFLOP/s")))
    print()
    check = load.verdict()
    figs.append(show(benchlib.load_figure(check)))
    benchlib.write_json(a.json, "bench_utilisation", figs, {"machine": check})
    return 0


if __name__ == "__main__":
    sys.exit(main())
