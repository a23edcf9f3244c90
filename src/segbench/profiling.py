"""Model cost, measured once per (model, classes, input size).

- params: the parameters inference uses (train-only heads such as the contrastive
  embedding head are left out, as the papers count them);
- MACs: multiply-accumulates of one forward pass at the input size, counted by
  ``torch.utils.flop_counter`` (which reports 2 FLOPs per MAC) and halved: the papers'
  "GFLOPs" are MACs (fvcore's convention, which the FRM and GraDNet papers' tables use);
- size_mb: the fp32 state_dict as saved by ``torch.save``, in 10^6 bytes;
- fps: batch 1, ``warmup`` untimed passes, then ``repeats`` timed blocks of ``iterations``
  passes each, the device synchronised before and after each block; preprocessing is outside
  the timer (§3); in the memory format the model trains in (``train.channels_last``,
  recorded as ``channels_last``). Each block gives one throughput (iterations / seconds,
  images per second), listed in ``fps_repeats``; ``fps`` is their mean and ``fps_std`` their
  sample standard deviation (n - 1; ``null`` for one repeat). Profiles written before the
  repeats have ``fps`` only: readers treat their spread as unknown.
"""

from __future__ import annotations

import io
import math
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from segbench.engine.common import setup_torch, synchronize, use_channels_last
from segbench.errors import UserError
from segbench.models import build_model
from segbench.models.common import count_parameters
from segbench.models.pretrained import without_pretrained
from segbench.stats import mean_spread


def count_macs(model: torch.nn.Module, size: tuple[int, int], in_channels: int = 3) -> int:
    x = torch.zeros(1, in_channels, *size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def profile_model(arch: str, params: dict, num_classes: int, size: tuple[int, int], *, warmup: int = 3,
                  iterations: int = 10, repeats: int = 5, threads: int | None = None, name: str | None = None,
                  channels_last: bool | str = "auto") -> dict:
    """The cost of model ``arch`` (see the module docstring): params, MACs, size and fps at
    batch 1 and ``size`` (H, W), fps timed as ``repeats`` blocks of ``iterations`` passes."""
    for key, value, least in (("warmup", warmup, 0), ("iterations", iterations, 1), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < least:
            raise UserError(f"profile: {key} must be an integer >= {least} (the config's profile.{key}), "
                            f"not {value!r}")
    device = setup_torch(threads, deterministic=False)
    nhwc = use_channels_last(channels_last, device)
    model = build_model(arch, num_classes, **without_pretrained(params)).eval()  # random weights time the same
    n_params = count_parameters(model)  # without train-only heads (e.g. FRM's embedding head)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    macs = count_macs(model, size)
    model = model.to(device)
    x = torch.randn(1, 3, *size, device=device)
    if nhwc:  # the format the model trains and is evaluated in
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        synchronize(device)
        fps_repeats = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iterations):
                model(x)
            synchronize(device)
            fps_repeats.append(iterations / (time.perf_counter() - t0))
    fps, fps_std = mean_spread(fps_repeats)  # std NaN for one repeat: written as null (unknown)
    return {
        "model": name or arch, "arch": arch, "params_spec": params, "num_classes": num_classes,
        "input_size": list(size), "params": n_params, "macs": macs, "size_mb": buf.getbuffer().nbytes / 1e6,
        "fps": fps, "fps_std": None if math.isnan(fps_std) else fps_std, "fps_repeats": fps_repeats,
        "fps_batch": 1, "warmup": warmup, "iterations": iterations, "repeats": repeats,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(), "channels_last": nhwc,
    }
