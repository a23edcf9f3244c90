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
  repeats have ``fps`` only: readers treat their spread as unknown;
- peak memory, in MB (10^6 bytes), measured after the timing: ``inference_peak_mb``, one
  forward pass at batch 1 (as fps); ``train_peak_mb``, one training step at batch
  ``TRAIN_BATCH`` = 2 (the least batch norm trains with): forward in train mode, cross-entropy
  against random labels, backward, and the step of a fresh SGD optimiser with momentum (one
  buffer per parameter; AdamW would add one more parameter-sized buffer), so the figure holds
  the activations kept for backward, the gradients and the optimiser state. Both are what the
  pass adds to the memory held before it (the weights, the input and the labels excluded; the
  weights are ``size_mb``), after one untimed pass of the same kind. On a GPU:
  ``torch.cuda.max_memory_allocated`` (its peak reset first) minus ``memory_allocated`` before
  (tensors only: not the CUDA context or the allocator's cache). On the CPU: the rise of the
  process's peak resident memory over its resident memory before the pass (Linux: the peak,
  VmHWM, is reset through /proc/self/clear_refs and free heap memory given back to the system
  first, :func:`segbench.serve.inference.peak_rss_rise`; ``null`` where it cannot be measured).
  ``memory_method`` says which. Profiles written before these keys have neither.
"""

from __future__ import annotations

import io
import math
import platform
import time

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from segbench.engine.common import setup_torch, synchronize, use_channels_last
from segbench.errors import UserError
from segbench.models import build_model
from segbench.models.common import count_parameters
from segbench.models.pretrained import without_pretrained
from segbench.stats import mean_spread

#: the batch of the training step whose peak memory a profile records (``train_peak_mb``)
TRAIN_BATCH = 2


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
    with torch.inference_mode():
        model(x)  # the untimed pass before the measured one (warmup may be 0)
        inference_peak = peak_memory_mb(lambda: model(x), device)
    train_peak = train_step_peak_mb(model, size, num_classes, device, nhwc)
    return {
        "model": name or arch, "arch": arch, "params_spec": params, "num_classes": num_classes,
        "input_size": list(size), "params": n_params, "macs": macs, "size_mb": buf.getbuffer().nbytes / 1e6,
        "fps": fps, "fps_std": None if math.isnan(fps_std) else fps_std, "fps_repeats": fps_repeats,
        "fps_batch": 1, "warmup": warmup, "iterations": iterations, "repeats": repeats,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(), "channels_last": nhwc,
        "inference_peak_mb": inference_peak, "train_peak_mb": train_peak, "train_peak_batch": TRAIN_BATCH,
        "memory_method": ("cuda max_memory_allocated above memory_allocated before" if device.type == "cuda"
                          else "rise of the peak resident memory (VmHWM) over the resident memory before"),
    }


def peak_memory_mb(run, device: torch.device) -> float | None:
    """The peak memory ``run()`` adds to what is held before it, in MB (10^6 bytes): on a GPU
    the peak of allocated tensor memory, on the CPU the peak resident memory (see the module
    docstring); None where it cannot be measured."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 1e6
    from segbench.serve.inference import peak_rss_rise

    rise = peak_rss_rise(run)
    return None if rise is None else rise / 1e6


def train_step_peak_mb(model: torch.nn.Module, size: tuple[int, int], num_classes: int, device: torch.device,
                       channels_last: bool) -> float | None:
    """Peak memory of one training step at batch TRAIN_BATCH and ``size`` (see the module
    docstring), after an unmeasured step; the model is left in eval mode without gradients."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(TRAIN_BATCH, 3, *size, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (TRAIN_BATCH, *size), generator=generator).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)  # fresh: its buffers count
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()

    model.train()
    try:
        step()  # libraries and autograd warmed up; its gradients and optimiser state are then dropped
        model.zero_grad(set_to_none=True)
        return peak_memory_mb(step, device)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
