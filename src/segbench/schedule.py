"""The order trainings start in: longest first.

With N parallel slots, a pipeline ends when its last job does. Started in whatever order
Snakemake finds them, a long training may start last and run alone while the other slots
idle (the default run's U-Net took 125 s, started last: about 25 of its 932 slot-seconds
idle). Started longest first (Graham's longest-processing-time rule, within 4/3 of the
best order), the trainings still running at the end are short ones.

A training's cost is estimated before it runs, so the train rule can give it as its
Snakemake ``priority``: its model's multiply-accumulates for one crop (counted on torch's
meta device: no weights, no arithmetic, about 0.1 s per model) x the train images of an
epoch x the epochs. The counts are cached in a JSON file keyed by the model entry, classes
and crop, so a later invocation imports no torch for it. Only the order depends on the
estimate; no result does.
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


def count_macs(arch: str, params: dict, classes: int, crop) -> int:
    """Multiply-accumulates of one forward pass of one crop, on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segbench.models import build_model

    with torch.device("meta"):
        model = build_model(arch, classes, **params).eval()
        x = torch.zeros(1, 3, *crop)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def train_costs(plan, cache: str | os.PathLike | None = None) -> dict[str, float]:
    """Estimated cost of every run of ``plan`` (run key -> MACs x images x epochs)."""
    cache_path = Path(cache) if cache else None
    known: dict[str, int] = {}
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
        if key not in known:
            known[key] = count_macs(m["arch"], m.get("params") or {}, plan.num_classes(run.dataset), train["crop"])
            counted += 1
        costs[run.key] = float(known[key]) * train_images(plan.dataset(run.dataset)) * int(train["epochs"])
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
