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
imports no torch for it. The counts of every model of the configs this repository ships
(config.yaml, workflow/configs/*.yaml) come with the package (schedule_counts.json, written by
``python -m segbench.schedule``), so that a fresh checkout's first run does not spend 5 s
importing torch in Snakemake's own process either; both are keyed by a fingerprint of the
model code and ignored once it changes. Only the order depends on the estimate; no result does.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from segbench.io import atomic_path

LOW, HIGH = 1.0, 1000.0  # the trainings' priorities; every other step is above HIGH (Snakefile)


def train_images(dataset: dict) -> int:
    """Images of one epoch: a synthetic set's configured count, a real set's published one."""
    from segbench.plan import split_images

    return split_images(dataset, "train")


def _key(arch: str, params: dict, classes: int, crop) -> str:
    return json.dumps([arch, params, classes, list(crop)], sort_keys=True)


SHIPPED = Path(__file__).with_name("schedule_counts.json")


def models_fingerprint() -> str:
    """sha256 of the model code (every .py under segbench/models): counts made by other code
    are not used."""
    root = Path(__file__).with_name("models")
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def read_counts(path: Path, fingerprint: str) -> dict[str, list[int]]:
    """The counts in ``path`` if they were made by the current model code, else none (a missing,
    damaged or outdated file is only a cache)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("models_fingerprint") != fingerprint:
        return {}
    counts = data.get("counts")
    return {k: v for k, v in counts.items() if isinstance(v, list) and len(v) == 3} if isinstance(counts, dict) else {}


def write_counts(path: Path, fingerprint: str, counts: dict[str, list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps({"models_fingerprint": fingerprint, "counts": counts}, indent=1,
                                        sort_keys=True) + "\n")


MACS_PER_S, ELEMENTS_PER_S, SECONDS_PER_OP = 13.9e9, 4.9e8, 1.4e-4


def count_work(arch: str, params: dict, classes: int, crop) -> list[int]:
    """[multiply-accumulates, elements written, operators] of one forward pass of one crop,
    on the meta device."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from segbench.models import build_model
    from segbench.models.pretrained import without_pretrained

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
        model = build_model(arch, classes, **without_pretrained(params)).eval()  # shapes only
        x = torch.zeros(1, 3, *crop)
    counter, writes = FlopCounterMode(display=False), Writes()
    with torch.no_grad(), counter, writes:
        model(x)
    return [counter.get_total_flops() // 2, writes.elements, writes.ops]


def seconds_per_image(work) -> float:
    macs, elements, ops = work
    return macs / MACS_PER_S + elements / ELEMENTS_PER_S + ops * SECONDS_PER_OP


def work_key(plan, run) -> str:
    m = plan.cfg["models"][run.model]
    crop = plan.train_spec(run.dataset, run.model)["crop"]
    return _key(m["arch"], m.get("params") or {}, plan.num_classes(run.dataset), crop)


def count_missing(keys, known: dict[str, list[int]]) -> int:
    """Count every (arch, params, classes, crop) key (``work_key``) missing from ``known`` (in
    place); returns how many were counted."""
    counted = 0
    for key in keys:
        if key not in known:
            arch, params, classes, crop = json.loads(key)
            known[key] = count_work(arch, params, classes, crop)
            counted += 1
    return counted


def train_costs(plan, cache: str | os.PathLike | None = None,
                shipped: str | os.PathLike | None = SHIPPED) -> dict[str, float]:
    """Estimated seconds of every run of ``plan`` (run key -> seconds per image x images x
    epochs) on the reference machine; only their order matters. Counts come from ``cache``,
    then ``shipped``, else a meta-device pass (then written to ``cache``)."""
    fingerprint = models_fingerprint()
    cache_path = Path(cache) if cache else None
    cached = read_counts(cache_path, fingerprint) if cache_path else {}
    known = {**(read_counts(Path(shipped), fingerprint) if shipped else {}), **cached}
    before = set(known)
    keys = {run: work_key(plan, run) for run in plan.runs}
    if count_missing(keys.values(), known) and cache_path:
        write_counts(cache_path, fingerprint, {**cached, **{k: known[k] for k in set(known) - before}})
    return {run.key: seconds_per_image(known[key]) * train_images(plan.dataset(run.dataset))
            * int(plan.train_spec(run.dataset, run.model)["epochs"]) for run, key in keys.items()}


def priorities(costs: dict[str, float]) -> dict[str, float]:
    """Snakemake priorities in [LOW, HIGH], proportional to the estimated cost: the costliest
    training gets HIGH."""
    top = max(costs.values(), default=0.0) or 1.0
    return {k: LOW + (HIGH - LOW) * c / top for k, c in costs.items()}


def main(argv: list[str] | None = None) -> int:
    """Rewrite the shipped counts for the models of the given configs (default: config.yaml and
    workflow/configs/*.yaml of this checkout)."""
    import argparse

    from segbench.config import load_config
    from segbench.plan import Plan

    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(prog="python -m segbench.schedule", description=main.__doc__)
    ap.add_argument("configs", nargs="*", type=Path,
                    default=[root / "config.yaml", *sorted((root / "workflow" / "configs").glob("*.yaml"))])
    ap.add_argument("--out", type=Path, default=SHIPPED)
    a = ap.parse_args(argv)
    known: dict[str, list[int]] = {}
    for cfg in a.configs:
        plan = Plan(load_config(cfg))
        n = count_missing([work_key(plan, run) for run in plan.runs], known)
        print(f"{cfg}: {n} new model entries counted", file=sys.stderr)
    write_counts(a.out, models_fingerprint(), known)
    print(f"wrote {len(known)} entries to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
