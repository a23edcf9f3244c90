"""Model cost, measured once per (model, classes, input size).

- params: the parameters inference uses (train-only heads such as the contrastive
  embedding head are left out, as the papers count them);
- MACs: multiply-accumulates of one forward pass at the input size, counted by
  ``torch.utils.flop_counter`` (which reports 2 FLOPs per MAC) and halved: the papers'
  "GFLOPs" are MACs (fvcore's convention, which the FRM and GraDNet papers' tables use);
- size_mb: the fp32 state_dict as saved by ``torch.save``, in 10^6 bytes;
- fps: batch 1, ``warmup`` untimed passes, then ``iterations`` timed passes with the
  device synchronised before and after; preprocessing is outside the timer (§3); in the
  memory format the model trains in (``train.channels_last``, recorded as ``channels_last``).
"""

from __future__ import annotations

import io
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from segbench.engine.common import setup_torch, synchronize, use_channels_last
from segbench.models import build_model
from segbench.models.common import count_parameters
from segbench.models.pretrained import without_pretrained


def count_macs(model: torch.nn.Module, size: tuple[int, int], in_channels: int = 3) -> int:
    x = torch.zeros(1, in_channels, *size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def profile_model(arch: str, params: dict, num_classes: int, size: tuple[int, int], *, warmup: int = 3,
                  iterations: int = 10, threads: int | None = None, name: str | None = None,
                  channels_last: bool | str = "auto") -> dict:
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
        t0 = time.perf_counter()
        for _ in range(iterations):
            model(x)
        synchronize(device)
        seconds = time.perf_counter() - t0
    return {
        "model": name or arch, "arch": arch, "params_spec": params, "num_classes": num_classes,
        "input_size": list(size), "params": n_params, "macs": macs, "size_mb": buf.getbuffer().nbytes / 1e6,
        "fps": iterations / seconds, "fps_batch": 1, "warmup": warmup, "iterations": iterations,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(), "channels_last": nhwc,
    }
