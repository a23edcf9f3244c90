"""Step overhead: what a user pays per training step for segbench's loop, against a bare
PyTorch loop on the same model, data and batch, timed side by side in one run; for two
models (unet_xception and deeplabv3 at config.yaml's widths); target bare time / segbench
time >= 0.97 per model.

    python bench/bench_step.py                       # unet_xception and deeplabv3, config.yaml's run
    python bench/bench_step.py --quick               # fewer images and rounds
    python bench/bench_step.py --models unet segnet --rounds 5
    python bench/bench_step.py --profile             # also profile one segbench epoch per model

Data: synthetic scenes generated and prepared as the pipeline does (``segbench generate`` +
``segbench prepare``: PNG images and train-id labels, manifest.csv) into a temporary folder
on disk, with config.yaml's dataset sizes (160 train images at 128x256; ``--quick``: 40).

segbench: one epoch as ``train_run`` runs it: :func:`segbench.engine.train.train_epoch`
(its DataLoader over the prepared files with the run's augmentation, worker count and
per-epoch seeding; the run's loss; the AMP scaler, the scheduler and the non-finite check;
the train confusion matrix, the loss sum and the history row with its printed line),
then :func:`segbench.engine.train.checkpoint` (``ckpt/last.pt``, written atomically with
fsync: the per-epoch cadence of a real run), on the state :func:`~segbench.engine.train.setup`
builds from config.yaml's resolved run spec. Validation is left out (``val_every`` beyond
the timed epochs): a bare loop that validates does the same work.

bare: the loop a PyTorch user writes: a plain DataLoader (shuffled, the same batch size and
worker count, no seeding) over the same files through the same Dataset and augmentation
(decoding and augmenting is work, not overhead), the same model (architecture, widths,
initial weights, memory format, thread count), ``F.cross_entropy(ignore_index=255)``, and
zero_grad / backward / step of the same optimiser; nothing else.

The two run in turn, one epoch each per round, alternating which goes first, after a warm-up
round; each keeps its best epoch time (the median is printed too). The load of the machine
is checked before and after (:class:`benchlib.LoadCheck`): the output says when other
processes kept it too busy for the figures to mean anything.
"""

from __future__ import annotations

import contextlib
import copy
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, figure, header, show

import torch
import torch.nn.functional as F

MODELS = ["unet_xception", "deeplabv3"]
TARGET = 0.97


# ---------------------------------------------------------------- the run and its data
def run_spec(config: Path, model: str, loss: str = "ce") -> dict:
    """config.yaml's resolved spec of the run (model, loss), on its first dataset."""
    from segbench.config import load_config
    from segbench.plan import Plan

    plan = Plan(load_config(config))
    for run in plan.runs:
        spec = plan.run_spec(run)
        if spec["model"]["name"] == model and spec["loss"]["name"] == loss:
            return spec
    raise SystemExit(f"{config} has no run of model {model} with loss {loss}")


def make_dataset(tmp: Path, spec: dict, train: int) -> Path:
    """The run's synthetic dataset, ``train`` train images (and 4 val), prepared like the pipeline."""
    from segbench.data.cityscapes import prepare_cityscapes
    from segbench.data.synthetic import generate

    gen = spec["dataset"]["generate"]
    raw, out = tmp / "raw", tmp / "data"
    generate(raw, seed=gen.get("seed", 0), splits={"train": train, "val": 4}, height=gen["height"],
             width=gen["width"], progress=False)
    prepare_cityscapes(raw, out, progress=False)
    return out


def timed_spec(spec: dict, epochs: int) -> dict:
    """The spec with room for ``epochs`` epochs and no validation among them."""
    spec = copy.deepcopy(spec)
    spec["train"]["epochs"] = epochs + 1
    spec["train"]["val_every"] = epochs + 1
    return spec


# ---------------------------------------------------------------- the two loops
def segbench_epochs(spec: dict, data: Path, out: Path):
    """One epoch of segbench's loop per call: train_epoch + checkpoint, as train_run."""
    from segbench.engine import train

    run = train.setup(spec, data, out, threads=spec["train"]["threads"], progress=False)
    history: list[dict] = []

    def epoch():
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # the epoch line
            history.append(train.train_epoch(run, len(history), history))
            train.checkpoint(run, history)
    return epoch, run


def bare_epochs(spec: dict, data: Path):
    """One epoch of a bare PyTorch loop per call, on the same model, files and batch."""
    from segbench.data.dataset import SegmentationDataset
    from segbench.data.transforms import train_transform
    from segbench.engine.common import use_channels_last
    from segbench.models import build_model

    tr = spec["train"]
    channels_last = use_channels_last(tr.get("channels_last", "auto"), "cpu")
    dataset = SegmentationDataset(data / "manifest.csv", "train", train_transform(tr))
    loader = torch.utils.data.DataLoader(dataset, batch_size=tr["batch_size"], shuffle=True, drop_last=True,
                                         num_workers=tr["workers"])
    torch.manual_seed(int(spec["seed"]))
    model = build_model(spec["model"]["arch"], spec["dataset"]["num_classes"], **spec["model"]["params"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if tr["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=tr["lr"], momentum=tr["momentum"],
                              weight_decay=tr["weight_decay"])
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"])

    def epoch():
        model.train()
        for images, labels, _ in loader:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(images), labels, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return epoch


def interleaved(fns: dict, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Every function's times over ``rounds`` rounds, each round running all of them in turn
    (the order reversed every other round), after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def profile_epoch(epoch, top: int = 20) -> None:
    """cProfile of one segbench epoch (cumulative time; the DataLoader's and torch's C++ work
    shows under the Python calls that wait for it)."""
    prof = cProfile.Profile()
    prof.enable()
    epoch()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    print("\n".join("    " + line for line in buf.getvalue().splitlines() if line.strip()), flush=True)


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--models", nargs="+", default=MODELS, help=f"model entries of the config (default: "
                                                                 f"{' '.join(MODELS)})")
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--train", type=int, help="train images (one epoch; default: the config's, quick 40)")
    ap.add_argument("--rounds", type=int, help="timed rounds, one epoch of each loop per round (default 3, quick 2)")
    ap.add_argument("--profile", action="store_true", help="also cProfile one segbench epoch per model")
    a = ap.parse_args(argv)
    rounds = a.rounds or (2 if a.quick else 3)
    load = benchlib.LoadCheck()
    specs = {m: run_spec(Path(a.config), m) for m in a.models}
    first = next(iter(specs.values()))
    n_train = a.train or (40 if a.quick else first["dataset"]["generate"]["train"])
    tr = first["train"]
    header(f"Step overhead: segbench's training loop vs a bare PyTorch loop (torch {torch.__version__}, "
           f"{tr['threads']} thread(s), {tr['workers']} loader worker(s), batch {tr['batch_size']}, crop "
           f"{tr['crop'][0]}x{tr['crop'][1]}, {n_train} train images = {n_train // tr['batch_size']} steps per "
           f"epoch; best of {rounds} interleaved rounds; ratio = bare / segbench epoch time)", busy=False)
    load.print_before()
    figs = []
    with tempfile.TemporaryDirectory(prefix="segbench-bench-step-") as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp, first, n_train)
        for name, spec in specs.items():
            spec = timed_spec(spec, rounds + 2)
            seg, run = segbench_epochs(spec, data, tmp / "runs" / name)
            fns = {"segbench": seg, "bare": bare_epochs(spec, data)}
            t = interleaved(fns, rounds)
            best = {k: min(v) for k, v in t.items()}
            med = {k: statistics.median(v) for k, v in t.items()}
            steps = run.steps_per_epoch
            note = (f"epoch of {steps} steps: segbench {best['segbench']:.2f} s, bare {best['bare']:.2f} s "
                    f"({1e3 * best['segbench'] / steps:.0f} vs {1e3 * best['bare'] / steps:.0f} ms/step); "
                    f"median ratio {med['bare'] / med['segbench']:.3f}"
                    f"{'; channels_last' if run.channels_last else ''}")
            figs.append(show(figure(f"bare / segbench epoch time, {name}", best["bare"] / best["segbench"], "",
                                    ">=", TARGET, note=note)))
            if a.profile:
                print(f"\n  cProfile of one segbench epoch of {name}:")
                profile_epoch(seg)
    check = load.verdict()
    figs.append(show(benchlib.load_figure(check)))
    for f in figs[:-1]:
        verdict = "meets" if f["status"] == "PASS" else "misses"
        print(f"  {f['name']}: {f['value']:.3f}, {verdict} the target {TARGET}"
              f"{' (machine too busy: the figure means little)' if check['too_busy'] else ''}")
    benchlib.write_json(a.json, "bench_step", figs, {"machine": check})
    return 0


if __name__ == "__main__":
    sys.exit(main())
