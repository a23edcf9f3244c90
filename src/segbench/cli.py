"""The ``segbench`` command line: one subcommand per pipeline step.

Snakemake rules call these (``python -m segbench STEP ...``); a person can run any step by
hand the same way. Heavy modules are imported inside the subcommand that needs them, so
``segbench check-config`` or ``segbench report`` never import torch or mlflow they don't use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _json_arg(value: str):
    """A JSON document given inline or as @path."""
    if value.startswith("@"):
        value = Path(value[1:]).read_text(encoding="utf-8")
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def _size_arg(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {value!r} must look like HEIGHTxWIDTH, e.g. 512x1024") from None
    return h, w


# ---------------------------------------------------------------- subcommands
def cmd_check_config(a) -> int:
    from segbench.config import load_config
    from segbench.plan import Plan

    cfg = load_config(a.config)
    print(f"{a.config}: valid")
    print(Plan(cfg).summary())
    return 0


def cmd_generate(a) -> int:
    from segbench.data.synthetic import generate

    counts = generate(a.out, seed=a.seed, splits={"train": a.train, "val": a.val}, height=a.height,
                      width=a.width, progress=not a.quiet)
    print(f"synthetic dataset written to {a.out}: {counts}")
    return 0


def cmd_prepare(a) -> int:
    from segbench.data.prepare import prepare_cityscapes

    if a.dataset in ("cityscapes", "synthetic"):
        info = prepare_cityscapes(a.root, a.out, label_set=a.labels, dataset=a.name or a.dataset,
                                  progress=not a.quiet)
    else:  # argparse's choices make this unreachable
        raise SystemExit(f"unknown dataset {a.dataset}")
    print(f"prepared {a.dataset} from {a.root} into {a.out}: {info['splits']}")
    return 0


def cmd_train(a) -> int:
    from segbench.engine.train import train_run

    train_run(a.spec, a.data, a.out, threads=a.threads, progress=not a.quiet)
    return 0


def cmd_evaluate(a) -> int:
    from segbench.engine.evaluate import evaluate_run

    evaluate_run(a.run_dir, a.data, batch_size=a.batch_size, samples=a.samples, threads=a.threads,
                 progress=not a.quiet)
    return 0


def cmd_profile(a) -> int:
    from segbench.io import write_json
    from segbench.profiling import profile_model

    spec = a.model_spec
    result = profile_model(spec["arch"], spec.get("params", {}), a.classes, a.size, warmup=a.warmup,
                           iterations=a.iterations, threads=a.threads, name=spec.get("name"))
    write_json(a.out, result)
    print(f"{result['model']} at {a.size[0]}x{a.size[1]}: {result['params'] / 1e6:.2f}M params, "
          f"{result['macs'] / 1e9:.2f} GMACs, {result['size_mb']:.1f} MB, {result['fps']:.1f} fps on {result['device']}")
    return 0


def _tracking_uri(value: str | None, results: str = "results") -> str:
    from segbench.tracking import default_tracking_uri

    return value or default_tracking_uri(results)


def cmd_track_init(a) -> int:
    from segbench.io import write_json
    from segbench.tracking import init_store

    uri = _tracking_uri(a.tracking_uri)
    ids = init_store(uri, a.study, Path(a.artifact_root).resolve())
    write_json(a.out, {"tracking_uri": uri, "experiments": ids})
    print(f"MLflow store {uri}: experiments {ids}")
    return 0


def cmd_track(a) -> int:
    from segbench.io import write_json
    from segbench.tracking import log_run

    uri = _tracking_uri(a.tracking_uri)
    ids = log_run(a.run_dir, studies=a.study, tracking_uri=uri, profile_path=a.profile)
    if a.out:
        write_json(a.out, {"tracking_uri": uri, "runs": ids})
    print(f"logged {a.run_dir} to {uri}: {ids}")
    return 0


def cmd_track_study(a) -> int:
    from segbench.io import write_json
    from segbench.tracking import log_study

    uri = _tracking_uri(a.tracking_uri)
    run_id = log_study(a.study, a.dir, tracking_uri=uri)
    if a.out:
        write_json(a.out, {"tracking_uri": uri, "study": a.study, "run_id": run_id})
    print(f"logged study {a.study} to {uri}: run {run_id}")
    return 0


def cmd_report(a) -> int:
    from segbench.report.figures import build_study_report

    paths = build_study_report(a.study, a.runs, a.out)
    print(f"study {a.study}: wrote {len(paths)} files under {a.out}")
    return 0


def cmd_models(a) -> int:
    from segbench.models import available

    width = max(map(len, available()))
    for name, desc in available().items():
        print(f"{name:<{width}}  {desc}")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segbench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"segbench {__import__('segbench').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="STEP")

    def add(name, func, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    sp = add("check-config", cmd_check_config, "validate a config file and list the runs it plans")
    sp.add_argument("config", nargs="?", default="config.yaml")

    sp = add("generate", cmd_generate, "generate the embedded synthetic dataset (Cityscapes layout)")
    sp.add_argument("out")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--train", type=int, default=160)
    sp.add_argument("--val", type=int, default=40)
    sp.add_argument("--height", type=int, default=128)
    sp.add_argument("--width", type=int, default=256)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("prepare", cmd_prepare, "convert a dataset tree into manifest.csv + train-id label PNGs")
    sp.add_argument("dataset", choices=["cityscapes", "synthetic"])
    sp.add_argument("--root", required=True, help="the dataset's root folder")
    sp.add_argument("--out", required=True, help="output folder (manifest.csv, labels/, meta.json)")
    sp.add_argument("--labels", choices=["trainId", "category"], default="trainId")
    sp.add_argument("--name", help="the dataset's name in meta.json (default: DATASET)")
    sp.add_argument("--quiet", action="store_true")

    sp = add("train", cmd_train, "train one run from its resolved spec")
    sp.add_argument("--spec", type=_json_arg, required=True, help="resolved run spec as JSON or @file")
    sp.add_argument("--data", required=True, help="prepared dataset folder")
    sp.add_argument("--out", required=True, help="run directory")
    sp.add_argument("--threads", type=int)
    sp.add_argument("--quiet", action="store_true")

    sp = add("evaluate", cmd_evaluate, "evaluate a trained run on the val split")
    sp.add_argument("run_dir")
    sp.add_argument("--data", required=True)
    sp.add_argument("--batch-size", type=int, default=4)
    sp.add_argument("--samples", type=int, default=4)
    sp.add_argument("--threads", type=int)
    sp.add_argument("--quiet", action="store_true")

    sp = add("profile", cmd_profile, "parameters, MACs, size and fps of a model at an input size")
    sp.add_argument("--model-spec", type=_json_arg, required=True, help='e.g. \'{"arch": "unet", "params": {}}\'')
    sp.add_argument("--classes", type=int, required=True)
    sp.add_argument("--size", type=_size_arg, required=True, help="HEIGHTxWIDTH")
    sp.add_argument("--out", required=True)
    sp.add_argument("--warmup", type=int, default=3)
    sp.add_argument("--iterations", type=int, default=10)
    sp.add_argument("--threads", type=int)

    sp = add("track-init", cmd_track_init, "create the MLflow store and one experiment per study")
    sp.add_argument("--study", action="append", required=True)
    sp.add_argument("--tracking-uri")
    sp.add_argument("--artifact-root", default="results/mlartifacts")
    sp.add_argument("--out", required=True)

    sp = add("track", cmd_track, "log a run directory to MLflow (idempotent)")
    sp.add_argument("run_dir")
    sp.add_argument("--study", action="append", required=True)
    sp.add_argument("--tracking-uri")
    sp.add_argument("--profile")
    sp.add_argument("--out")

    sp = add("track-study", cmd_track_study, "log a study's tables and figures to MLflow")
    sp.add_argument("study")
    sp.add_argument("--dir", required=True)
    sp.add_argument("--tracking-uri")
    sp.add_argument("--out")

    sp = add("report", cmd_report, "tables and figures of one study")
    sp.add_argument("study")
    sp.add_argument("--runs", type=_json_arg, required=True, help="the study's runs as JSON or @file")
    sp.add_argument("--out", required=True)

    add("models", cmd_models, "list the model architectures")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from segbench.config import ConfigError
    from segbench.data import DataError

    known: tuple[type[BaseException], ...] = (ConfigError, DataError, FileNotFoundError)
    try:
        from segbench.tracking import TrackingError

        known += (TrackingError,)
    except ImportError:
        pass
    try:
        return args.func(args)
    except known as e:
        print(f"segbench {args.command}: error: {e}", file=sys.stderr)
        return 2
