"""The compute a config plans, estimated before anything runs (``segbench check-config --cost``).

For each run of the plan (a run cited by several studies is one run, counted once):

- training  = MACs of one forward pass at the training crop x train images x epochs x 3
  (the backward pass costs about twice the forward: forward + backward = 3 forward passes);
- evaluation = MACs of one forward pass at the dataset's evaluation size x val images (the
  run's final evaluation on the val split).

MACs (multiply-accumulates; 1 MAC = 2 FLOPs) of one image are counted without computing
anything: the model (built-in, or your own named by import path) is built on torch's meta device (no weights, no arithmetic) and
``segbench.models.summary.count_macs_meta`` counts its convolutions and matrix products (the
convention of the papers' "GFLOPs" and of ``segbench models``; element-wise operations,
normalisation, pooling and resampling are not counted). Image counts are the published split
sizes of the real datasets (``segbench.catalog``) and the ``generate:`` counts of the synthetic
one (``segbench.plan.split_images``); the evaluation size is ``Plan.eval_size`` (the dataset's
``eval_size``, else the source's in ``segbench.catalog`` or the synthetic size).

GPU-hours = total FLOPs / the effective throughput given (TFLOP/s actually sustained by a
training, not the device's peak). Left out: data loading and augmentation, validation during
training (``val_every``), the profile jobs, the reports.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from typing import Callable

from segbench import catalog

#: effective (sustained) training throughput assumed by default, TFLOP/s; 1 MAC = 2 FLOPs
DEFAULT_TFLOPS = 50.0
#: forward + backward, in forward passes
TRAIN_PASSES = 3

Counter = Callable[[str, dict, int, tuple[int, int]], int]


def count_macs(arch: str, params: dict, classes: int, size: tuple[int, int]) -> int:
    """MACs of one forward pass (batch 1, eval mode) at ``size`` (HxW) of ``arch(**params)``
    with ``classes`` outputs, counted on the meta device. A ``pretrained`` option is dropped:
    weights change no MAC, and nothing is loaded."""
    import torch

    from segbench.models import build_model
    from segbench.models.pretrained import without_pretrained
    from segbench.models.summary import count_macs_meta

    if catalog.is_import_path(arch):  # your own model: counted the same way, if its forward runs on meta tensors
        try:
            with torch.device("meta"):
                model = build_model(arch, classes, **(params or {})).eval()
            return int(count_macs_meta(model, tuple(size)))
        except catalog.ImportPathError:
            raise  # the model breaks the interface: its own message says how
        except Exception as e:  # noqa: BLE001 - reported as what it means for the estimate
            raise catalog.ImportPathError(
                f"cannot estimate the compute of model {arch}: counting its MACs needs a forward pass on torch's "
                f"meta device (shapes only, no data), which failed ({e.__class__.__name__}: {e}); leave out "
                "--cost, or avoid data-dependent operations (.item(), .tolist(), numpy) in forward") from e
    params = without_pretrained(params or {})
    with torch.device("meta"):
        model = build_model(arch, classes, **params).eval()
    return int(count_macs_meta(model, tuple(size)))


@dataclass(frozen=True)
class RunCost:
    key: str
    studies: tuple[str, ...]
    crop: tuple[int, int]
    train_macs_per_image: int
    train_images: int
    epochs: int
    eval_size: tuple[int, int]
    eval_macs_per_image: int
    val_images: int

    @property
    def train_macs(self) -> int:
        return self.train_macs_per_image * self.train_images * self.epochs * TRAIN_PASSES

    @property
    def eval_macs(self) -> int:
        return self.eval_macs_per_image * self.val_images

    @property
    def total_macs(self) -> int:
        return self.train_macs + self.eval_macs


def run_costs(plan, count: Counter = count_macs, runs=None) -> list[RunCost]:
    """Every run of ``plan`` (or of ``runs``) once, in the plan's order, with its estimated
    compute. ``count`` is called once per distinct (arch, params, classes, size)."""
    known: dict[str, int] = {}

    def macs(model: str, classes: int, size) -> int:
        spec = plan.model_spec(model)
        key = json.dumps([spec["arch"], spec["params"], classes, list(size)], sort_keys=True)
        if key not in known:
            known[key] = count(spec["arch"], spec["params"], classes, tuple(size))
        return known[key]

    out = []
    for run in plan.runs if runs is None else runs:
        classes = plan.num_classes(run.dataset)
        train = plan.train_spec(run.dataset, run.model)
        crop, size = tuple(train["crop"]), tuple(plan.eval_size(run.dataset))
        out.append(RunCost(
            key=run.key, studies=tuple(plan.studies_of(run)), crop=crop,
            train_macs_per_image=macs(run.model, classes, crop),
            train_images=plan.split_images(run.dataset, "train"), epochs=int(train["epochs"]),
            eval_size=size, eval_macs_per_image=macs(run.model, classes, size),
            val_images=plan.split_images(run.dataset, "val")))
    return out


def gpu_hours(macs: float, tflops: float) -> float:
    """Hours to compute ``macs`` at ``tflops`` effective TFLOP/s (1 MAC = 2 FLOPs)."""
    return 2 * macs / (tflops * 1e12) / 3600


#: the bounds of :func:`train_runtime_minutes`: 2 hours, 2 days
MIN_TRAIN_MINUTES, MAX_TRAIN_MINUTES = 120, 2880


def train_runtime_minutes(cost: RunCost, tflops: float = DEFAULT_TFLOPS) -> int:
    """A cluster time limit for one run's training job, a rule of thumb: twice the estimated
    GPU time of its compute at ``tflops`` (the estimate leaves out data loading and validation)
    plus 15 minutes of start-up, between 2 hours and 2 days. A job that reaches it is warned
    first (SIGTERM), checkpoints and resumes in the retry (docs/cluster.md)."""
    minutes = math.ceil(2 * 60 * gpu_hours(cost.total_macs, tflops) + 15)
    return int(min(MAX_TRAIN_MINUTES, max(MIN_TRAIN_MINUTES, minutes)))


_UNITS = ((1e15, "PMAC"), (1e12, "TMAC"), (1e9, "GMAC"))


def _unit(typical: float) -> tuple[float, str]:
    """PMAC (10^15) at paper scale, TMAC or GMAC for a small config."""
    return next(((f, u) for f, u in _UNITS if typical >= f), _UNITS[-1])


def _hxw(size) -> str:
    return f"{size[0]}x{size[1]}"


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]


def format_costs(plan, costs: list[RunCost], tflops: float = DEFAULT_TFLOPS) -> str:
    """The aligned table of ``run_costs``, subtotals by study and dataset, the total in MACs,
    FLOPs and GPU-hours at ``tflops``, and what the estimate leaves out."""
    total = sum(c.total_macs for c in costs)
    hours = gpu_hours(total, tflops)
    # GPU-hours at paper scale; GPU-seconds for a config whose whole plan takes less than an hour
    t_scale, t_unit = (1.0, "GPU-h") if hours >= 1 else (3600.0, "GPU-s")
    per_run = sorted(c.total_macs for c in costs)
    scale, unit = _unit(per_run[len(per_run) // 2] if per_run else 0)  # the median run's
    lines = [f"Estimated compute of {len(costs)} runs (a run cited by several studies counted once); "
             f"MACs = multiply-accumulates, 1 MAC = 2 FLOPs; GMAC/img = 10^9 MACs of one forward pass of one image "
             f"at the crop (training) or the eval size (evaluation); totals in {unit} = 10^{round(math.log10(scale))} MACs.",
             ""]
    lines = [textwrap.fill(lines[0], 110), ""]
    datasets = dict.fromkeys(r.dataset for r in plan.runs)
    for ds in datasets:
        spec = plan.dataset(ds)
        source = catalog.DATASET_SOURCES[spec["source"]]
        generated = source.generated
        where = ("generate: counts" if generated else "counted in its folder" if source.folder
                 else "published split sizes")
        size_from = ("its eval_size" if spec.get("eval_size") else
                     "the generated size" if generated else
                     "its first val image's, rounded up to multiples of 32" if source.folder else
                     "the source's eval size, segbench.catalog")
        lines.append(f"  {ds} ({spec['source']}): {plan.split_images(ds, 'train')} train / "
                     f"{plan.split_images(ds, 'val')} val images ({where}); evaluated at "
                     f"{_hxw(plan.eval_size(ds))} (HxW; {size_from})")
    lines.append("")
    head = ["run", "crop", "GMAC/img", "train imgs", "epochs", f"train {unit}", "eval size", "GMAC/img",
            "val imgs", f"eval {unit}", f"total {unit}", t_unit]
    rows = [[c.key, _hxw(c.crop), f"{c.train_macs_per_image / 1e9:.2f}", str(c.train_images), str(c.epochs),
             f"{c.train_macs / scale:.2f}", _hxw(c.eval_size), f"{c.eval_macs_per_image / 1e9:.2f}",
             str(c.val_images), f"{c.eval_macs / scale:.3f}", f"{c.total_macs / scale:.2f}",
             f"{t_scale * gpu_hours(c.total_macs, tflops):.2f}"] for c in costs]
    lines += _table(head, rows)
    lines += ["", "By study (a run cited by several studies is in each of their lines, once in the total):"]
    srows = []
    for study, runs in plan.studies.items():
        keys = {r.key for r in runs}
        macs = sum(c.total_macs for c in costs if c.key in keys)
        srows.append([study, str(len(keys)), f"{macs / scale:.2f}", f"{t_scale * gpu_hours(macs, tflops):.1f}"])
    lines += ["  " + x for x in _table(["study", "runs", f"total {unit}", t_unit], srows)]
    shared = sum(1 for c in costs if len(c.studies) > 1)
    train = sum(c.train_macs for c in costs)
    lines += [
        "",
        f"Total: {total / scale:.2f} {unit} (training {train / scale:.2f}, final evaluation "
        f"{(total - train) / scale:.3f}) = {2 * total / scale:.2f} {unit[0]}FLOP",
        f"GPU-hours: {hours:.1f}{'' if hours >= 1 else f' ({3600 * hours:.1f} GPU-seconds)'} at {tflops:g} "
        f"effective TFLOP/s (= {tflops / 2:g} TMAC/s "
        "sustained by one GPU; set yours with --throughput-tflops)",
        f"{len(costs)} runs, {shared} of them cited by more than one study (counted once).",
        "",
        *textwrap.wrap("This is an estimate: training = MACs of one forward pass at the training crop x train images x "
        f"epochs x {TRAIN_PASSES} (forward + backward); evaluation = MACs at the evaluation size x val images. "
        "MACs are counted on the meta device (convolutions and matrix products; element-wise operations, "
        "normalisation, pooling and resampling are not counted), eval-mode forward (train-only heads left out). "
        "Left out: data loading and augmentation, validation during training (every val_every epochs), the "
        "profile jobs (fps timing), the reports, and any time a GPU waits.", 110),
    ]
    return "\n".join(lines)


__all__ = ["DEFAULT_TFLOPS", "TRAIN_PASSES", "RunCost", "count_macs", "format_costs", "gpu_hours", "run_costs"]
