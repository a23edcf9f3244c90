"""The order trainings start in: longest first.

With N parallel slots, a pipeline ends when its last job does. Started in whatever order
Snakemake finds them, a long training may start last and run alone while the other slots
idle (the default run's U-Net took 125 s, started last: about 25 of its 932 slot-seconds
idle). Started longest first (Graham's longest-processing-time rule, within 4/3 of the
best order), the trainings still running at the end are short ones.

A training's cost is estimated before it runs, so the train rule can give it as its
Snakemake ``priority``: one forward pass of one crop is measured on torch's meta device (no
weights, no arithmetic, about 0.1 s per model) as multiply-accumulates, elements written by
its operators and number of operators, and turned into seconds as compute + memory traffic +
per-operator overhead:

    seconds per image = MACs / 13.9e9 + elements / 4.9e8 + operators x 1.4e-4

(least-squares fit to the 10 default trainings measured on the 2-core reference machine,
within about 15% of each; MACs alone would put the depth-wise VAN models, 4x more operators
per MAC, far too late), times the train images of an epoch, times the epochs. The counts are
cached in a JSON file keyed by the model entry, classes and crop, so a later invocation
imports no torch for it. Only the order depends on the estimate; no result does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from segbench.io import atomic_path

LOW, HIGH = 1.0, 1000.0  # the trainings' priorities; every other step is above HIGH (Snakefile)


def train_images(dataset: dict) -> int:
    """Images of one epoch: a synthetic set's configured count, a real set's published one."""
    if dataset["source"] == "synthetic":
        return int(dataset["generate"]["train"])
    from importlib import import_module

    module = import_module(f"segbench.data.{dataset['source']}")
    if dataset["source"] == "voc" and dataset.get("trainaug", True):
        return int(getattr(module, "TRAINAUG_SIZE"))
    return int(module.SPLIT_SIZES["train"])


def _key(arch: str, params: dict, classes: int, crop) -> str:
    return json.dumps([arch, params, classes, list(crop)], sort_keys=True)


MACS_PER_S, ELEMENTS_PER_S, SECONDS_PER_OP = 13.9e9, 4.9e8, 1.4e-4


def count_work(arch: str, params: dict, classes: int, crop) -> list[int]:
    """[multiply-accumulates, elements written, operators] of one forward pass of one crop,
    on the meta device."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from segbench.models import build_model

    class Writes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.elements = self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            self.elements += sum(o.numel() for o in (out if isinstance(out, (tuple, list)) else [out])
                                 if isinstance(o, torch.Tensor))
            return out

    with torch.device("meta"):
        model = build_model(arch, classes, **params).eval()
        x = torch.zeros(1, 3, *crop)
    counter, writes = FlopCounterMode(display=False), Writes()
    with torch.no_grad(), counter, writes:
        model(x)
    return [counter.get_total_flops() // 2, writes.elements, writes.ops]


def seconds_per_image(work) -> float:
    macs, elements, ops = work
    return macs / MACS_PER_S + elements / ELEMENTS_PER_S + ops * SECONDS_PER_OP


def train_costs(plan, cache: str | os.PathLike | None = None) -> dict[str, float]:
    """Estimated seconds of every run of ``plan`` (run key -> seconds per image x images x
    epochs) on the reference machine; only their order matters."""
    cache_path = Path(cache) if cache else None
    known: dict[str, list[int]] = {}
    if cache_path and cache_path.exists():
        try:
            known = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            known = {}  # a damaged cache is only a cache
    counted = 0
    costs = {}
    for run in plan.runs:
        m = plan.cfg["models"][run.model]
        train = plan.train_spec(run.dataset, run.model)
        key = _key(m["arch"], m.get("params") or {}, plan.num_classes(run.dataset), train["crop"])
        if not (isinstance(known.get(key), list) and len(known[key]) == 3):
            known[key] = count_work(m["arch"], m.get("params") or {}, plan.num_classes(run.dataset), train["crop"])
            counted += 1
        costs[run.key] = seconds_per_image(known[key]) * train_images(plan.dataset(run.dataset)) * int(train["epochs"])
    if cache_path and counted:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_path) as tmp:
            Path(tmp).write_text(json.dumps(known, indent=1, sort_keys=True))
    return costs


def train_priorities(plan, cache: str | os.PathLike | None = None) -> dict[str, float]:
    """Snakemake priorities in [LOW, HIGH], proportional to the estimated cost: the costliest
    training gets HIGH."""
    costs = train_costs(plan, cache)
    top = max(costs.values(), default=0.0) or 1.0
    return {k: LOW + (HIGH - LOW) * c / top for k, c in costs.items()}
