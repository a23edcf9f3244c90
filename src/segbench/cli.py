"""The ``segbench`` command line: one subcommand per pipeline step.

Snakemake rules call these (``python -m segbench STEP ...``); a person can run any step by
hand the same way. Heavy modules are imported inside the subcommand that needs them, so
``segbench check-config`` or ``segbench report`` never import torch or mlflow they don't use.

Each step is a ``cmd_<step>(args)`` registered with :func:`step`, next to the
``add_<step>_arguments(parser)`` that declares its arguments; ``segbench --help`` lists the
steps in the order they are registered here. A :class:`~segbench.errors.UserError` (or a
missing file) raised by a step is shown as ``segbench STEP: error: MESSAGE`` with exit
status 2, as argparse shows a bad argument; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segbench.errors import UserError


# ---------------------------------------------------------------- argument types
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


def _positive_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a number above 0")
    return v


def _name_value(value: str) -> tuple[str, str]:
    name, sep, val = value.partition("=")
    if not sep or not name or not val:
        raise argparse.ArgumentTypeError(f"{value!r} must look like ARCHIVE=VALUE")
    return name, val


# ---------------------------------------------------------------- the registry of steps
@dataclass(frozen=True)
class Step:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: step name -> Step, in the order of ``segbench --help``
STEPS: dict[str, Step] = {}


def step(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated ``cmd_...(args) -> exit status`` as subcommand ``name``."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        STEPS[name] = Step(name, help, add_arguments, run)
        return run

    return register


# ---------------------------------------------------------------- check-config
def add_check_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default="config.yaml")
    p.add_argument("--cost", action="store_true",
                   help="instead of the run list, estimate each run's compute (MACs counted on the meta device "
                   "x images x epochs x 3, plus the final evaluation) and the total GPU-hours; imports torch")
    p.add_argument("--throughput-tflops", type=_positive_float, default=50.0, metavar="TFLOPS",
                   help="with --cost: effective training throughput of one GPU in TFLOP/s (1 MAC = 2 FLOPs; "
                   "default 50, i.e. 25 TMAC/s)")


@step("check-config", "validate a config file and list the runs it plans", add_check_config_arguments)
def cmd_check_config(a) -> int:
    from segbench.config import load_config
    from segbench.plan import Plan

    cfg = load_config(a.config)
    print(f"{a.config}: valid")
    if not a.cost:
        print(Plan(cfg).summary())
        return 0
    from segbench.cost import format_costs, run_costs

    plan = Plan(cfg)
    print(format_costs(plan, run_costs(plan), a.throughput_tflops))
    return 0


# ---------------------------------------------------------------- generate
def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=160)
    p.add_argument("--val", type=int, default=40)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@step("generate", "generate the embedded synthetic dataset (Cityscapes layout)", add_generate_arguments)
def cmd_generate(a) -> int:
    from segbench.data.synthetic import generate

    counts = generate(a.out, seed=a.seed, splits={"train": a.train, "val": a.val}, height=a.height,
                      width=a.width, progress=not a.quiet)
    print(f"synthetic dataset written to {a.out}: {counts}")
    return 0


# ---------------------------------------------------------------- download
def add_download_arguments(p: argparse.ArgumentParser) -> None:
    from segbench.data.download import SOURCES

    p.add_argument("dataset", choices=SOURCES)
    p.add_argument("--dir", required=True, help="folder for the archives")
    p.add_argument("--archive", action="append", help="only this archive (repeatable; default: all of them)")
    p.add_argument("--url", action="append", type=_name_value, metavar="ARCHIVE=URL",
                   help="download ARCHIVE from URL instead of the official address (repeatable)")
    p.add_argument("--credentials", help="cityscapes: JSON file {\"username\": ..., \"password\": ...}; default: "
                   "$CITYSCAPES_USERNAME/$CITYSCAPES_PASSWORD, then csDownload's stored login")
    p.add_argument("--site", help="cityscapes: base URL of the site (default: the official one)")
    p.add_argument("--no-input", action="store_true", help="never prompt for a login (workflows pass this)")
    p.add_argument("--retries", type=int, default=3, help="resume attempts after a cut connection (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@step("download", "download a dataset's archives (resumable; Cityscapes needs a login)", add_download_arguments)
def cmd_download(a) -> int:
    from segbench.data.download import archives_of, download

    known = archives_of(a.dataset)
    names = a.archive or list(known)
    urls = dict(a.url or [])
    bad = [n for n in [*names, *urls] if n not in known]
    if bad:
        raise UserError(f"unknown archive(s) {', '.join(bad)} for {a.dataset}; known: {', '.join(known)}")
    if a.dataset == "cityscapes":
        from segbench.data.cityscapes import SITE, download as download_cityscapes

        if urls:
            raise UserError("Cityscapes archives come from the site (--site), not --url")
        download_cityscapes(names, a.dir, credentials_file=a.credentials, interactive=not a.no_input,
                            site=a.site or SITE, retries=a.retries, progress=not a.quiet)
        return 0
    if a.credentials or a.site:
        raise UserError("--credentials and --site are for cityscapes only")
    if a.dataset == "bdd100k":
        from segbench.data.bdd100k import LICENCE_NOTE

        print(f"note: {LICENCE_NOTE}", file=sys.stderr)
    for name in names:
        download(urls.get(name) or known[name].url, Path(a.dir) / name, retries=a.retries, progress=not a.quiet)
    return 0


# ---------------------------------------------------------------- verify
def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    from segbench.data.download import SOURCES

    p.add_argument("archive")
    p.add_argument("--source", choices=SOURCES, help="look the published MD5 up by archive name")
    p.add_argument("--md5", help="the expected MD5 (overrides the published one)")
    p.add_argument("--out", help="write 'MD5  NAME' here once verified")
    p.add_argument("--quiet", action="store_true")


@step("verify", "check an archive's MD5; a mismatch deletes it and shows both checksums", add_verify_arguments)
def cmd_verify(a) -> int:
    from segbench.data.download import expected_md5, verify
    from segbench.io import write_text

    expected = expected_md5(a.archive, a.source, a.md5)
    actual = verify(a.archive, expected, progress=not a.quiet)
    if a.out:
        write_text(a.out, f"{actual}  {Path(a.archive).name}\n")
    print(f"{a.archive}: MD5 {actual} as expected")
    return 0


# ---------------------------------------------------------------- extract
def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archives", nargs="+")
    p.add_argument("--to", required=True, help="target folder")
    p.add_argument("--quiet", action="store_true")


@step("extract", "unpack archives safely (no absolute paths, '..' or outward links)", add_extract_arguments)
def cmd_extract(a) -> int:
    from segbench.data.download import extract

    counts = extract(a.archives, a.to, progress=not a.quiet)
    print(f"extracted into {a.to}: {counts}")
    return 0


# ---------------------------------------------------------------- fetch-weights
def add_fetch_weights_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME",
                   help="torchvision:resnet50, torchvision:resnet101, van:b0, van:b1 or van:b2")
    p.add_argument("--dir", required=True, help="the weights folder (the config's weights.dir; what "
                   "$SEGBENCH_WEIGHTS points training at)")
    p.add_argument("--url", help="download from URL instead of the publisher's address (a mirror)")
    p.add_argument("--sha256", help="the expected SHA-256 (64 hex digits, or a prefix of 8+) instead of the "
                   "published one")
    p.add_argument("--retries", type=int, default=3, help="resume attempts after a cut connection (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@step("fetch-weights", "download a registered ImageNet backbone checkpoint once (resumable, SHA-256 checked) "
      "into the weights folder", add_fetch_weights_arguments)
def cmd_fetch_weights(a) -> int:
    from segbench.weights import fetch_weights

    fetch_weights(a.name, a.dir, url=a.url, sha256=a.sha256, retries=a.retries, progress=not a.quiet)
    return 0


# ---------------------------------------------------------------- prepare
def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    from segbench.data.download import SOURCES

    p.add_argument("dataset", choices=["synthetic", *SOURCES, "folder"],
                   help="a source, or folder: a dataset folder of your own (docs/extending.md)")
    p.add_argument("--root", required=True, help="the dataset's root folder")
    p.add_argument("--out", required=True, help="output folder (manifest.csv, labels/, meta.json)")
    p.add_argument("--labels", choices=["trainId", "category"], default="trainId",
                   help="cityscapes/synthetic: 19 trainIds or 7 categories")
    p.add_argument("--name", help="the dataset's name in meta.json (default: DATASET)")
    p.add_argument("--allow-partial", action="store_true",
                   help="warn instead of failing when a split has fewer files than published")
    p.add_argument("--no-trainaug", action="store_true", help="voc: train on VOC train (1,464), not trainaug")
    p.add_argument("--sbd-root", help="voc: SBD's folder (default: benchmark_RELEASE/ beside VOCdevkit/)")
    p.add_argument("--quiet", action="store_true")


@step("prepare", "convert a dataset tree into manifest.csv + train-id label PNGs", add_prepare_arguments)
def cmd_prepare(a) -> int:
    from segbench.data.prepare import prepare

    options = {}
    if a.dataset == "voc":
        options = {"trainaug": not a.no_trainaug, "sbd_root": a.sbd_root}
    elif a.no_trainaug or a.sbd_root:
        raise UserError("--no-trainaug and --sbd-root are for the voc dataset only")
    if a.dataset in ("synthetic", "folder") and a.allow_partial:
        raise UserError("--allow-partial is for the real datasets only")
    if a.labels != "trainId" and a.dataset not in ("cityscapes", "synthetic"):  # folder: already in train ids
        raise UserError(f"--labels {a.labels} is for cityscapes and synthetic only; "
                        f"{a.dataset} has one label set (trainId)")
    info = prepare(a.dataset, a.root, a.out, dataset=a.name or a.dataset, labels=a.labels,
                   allow_partial=a.allow_partial, progress=not a.quiet, **options)
    print(f"prepared {a.dataset} from {a.root} into {a.out}: {info['splits']}")
    return 0


# ---------------------------------------------------------------- train
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=_json_arg, required=True, help="resolved run spec as JSON or @file")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--threads", type=int, help="torch threads of the job, shared evenly by its train.devices processes")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="log the training live into this MLflow store (with --study; default: where "
                   "$SEGBENCH_MLFLOW_LIVE, set by the pipeline, says; neither: no live logging)")
    p.add_argument("--study", metavar="STUDY", help="with --tracking-uri: the study whose experiment it logs into")


@step("train", "train one run from its resolved spec", add_train_arguments)
def cmd_train(a) -> int:
    from segbench.engine.common import stop_on_signal
    from segbench.engine.train import Preempted, train_run
    from segbench.tracking import live_run_for

    # SIGTERM (SLURM's warning before a time limit or preemption, a cancelled job): finish the
    # step, write a checkpoint there, end the MLflow run KILLED and exit with 128 + 15 = 143,
    # the status a shell reports for a SIGTERM kill; the rerun resumes at that step
    stop_on_signal()
    live = live_run_for(a.spec["run_key"], tracking_uri=a.tracking_uri, study=a.study)
    try:
        train_run(a.spec, a.data, a.out, threads=a.threads, progress=not a.quiet, live=live)
    except Preempted as e:
        print(f"segbench train: error: {e}", file=sys.stderr)
        return 128 + e.signum
    return 0


# ---------------------------------------------------------------- evaluate
def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true")
    add_protocol_arguments(p)  # (defined with the robustness step, which shares it)


@step("evaluate", "evaluate a trained run on the val split", add_evaluate_arguments)
def cmd_evaluate(a) -> int:
    from segbench.engine.evaluate import evaluate_run

    evaluate_run(a.run_dir, a.data, batch_size=a.batch_size, samples=a.samples, threads=a.threads,
                 progress=not a.quiet, protocol=protocol_of(a))
    return 0


# ---------------------------------------------------------------- robustness
def _list_arg(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{value!r} must be a comma-separated list with no empty item")
    return items


def _int_list_arg(value: str) -> list[int]:
    try:
        return [int(v) for v in _list_arg(value)]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{value!r} must be comma-separated whole numbers, e.g. 1,3,5") from None


def _float_list_arg(value: str) -> list[float]:
    try:
        return [float(v) for v in _list_arg(value)]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{value!r} must be comma-separated numbers, e.g. 0.5,1.0,1.5") from None


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """The evaluation protocol (the config's eval.mode, crop, stride, scales, flip; docs/metrics.md)."""
    p.add_argument("--mode", choices=["whole", "slide"], default="whole",
                   help="whole-image or sliding-window inference (eval.mode)")
    p.add_argument("--crop", type=_size_arg, metavar="HxW", help="slide: the window size (eval.crop)")
    p.add_argument("--stride", type=_size_arg, metavar="HxW", help="slide: the step between windows (eval.stride)")
    p.add_argument("--scales", type=_float_list_arg, default=[1.0], metavar="S,...",
                   help="test-time scales, factors of the image size (eval.scales), e.g. 0.5,0.75,1.0,1.25,1.5,1.75")
    p.add_argument("--flip", action="store_true", help="test-time horizontal flip as well (eval.flip)")


def protocol_of(a) -> dict:
    return {"mode": a.mode, "crop": a.crop, "stride": a.stride, "scales": a.scales, "flip": a.flip}


def add_robustness_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--corruptions", type=_list_arg, metavar="NAME,...",
                   help="default all eight: rain,snow,fog,gaussian_noise,motion_blur,brightness,contrast,jpeg")
    p.add_argument("--severities", type=_int_list_arg, metavar="N,...",
                   help="1 (mild) to 5 (severe); default all five")
    p.add_argument("--batch-size", type=int, default=4,
                   help="as evaluate's, so that the clean mIoU is metrics.json's")
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true")
    add_protocol_arguments(p)


@step("robustness", "evaluate a trained run on corrupted copies of the val images", add_robustness_arguments)
def cmd_robustness(a) -> int:
    from segbench.data.corruptions import CORRUPTIONS, SEVERITIES
    from segbench.engine.robustness import evaluate_corruptions

    evaluate_corruptions(a.run_dir, a.data, corruptions=a.corruptions or CORRUPTIONS,
                         severities=a.severities or SEVERITIES, batch_size=a.batch_size, threads=a.threads,
                         progress=not a.quiet, protocol=protocol_of(a))
    return 0


# ---------------------------------------------------------------- profile
def add_profile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-spec", type=_json_arg, required=True, help='e.g. \'{"arch": "unet", "params": {}}\'')
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--size", type=_size_arg, required=True, help="HEIGHTxWIDTH")
    p.add_argument("--out", required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5,
                   help="timed blocks of --iterations passes: fps is their mean, fps_std their sample std")
    p.add_argument("--channels-last", choices=["auto", "true", "false"], default="auto",
                   help="memory format (as train.channels_last): auto = channels_last on a GPU only")
    p.add_argument("--threads", type=int)


@step("profile", "parameters, MACs, size and fps of a model at an input size", add_profile_arguments)
def cmd_profile(a) -> int:
    from segbench.io import write_json
    from segbench.profiling import profile_model

    spec = a.model_spec
    channels_last = {"auto": "auto", "true": True, "false": False}[a.channels_last]
    result = profile_model(spec["arch"], spec.get("params", {}), a.classes, a.size, warmup=a.warmup,
                           iterations=a.iterations, repeats=a.repeats, threads=a.threads, name=spec.get("name"),
                           channels_last=channels_last)
    write_json(a.out, result)
    spread = "" if result["fps_std"] is None else f" ± {result['fps_std']:.1f}"
    print(f"{result['model']} at {a.size[0]}x{a.size[1]}: {result['params'] / 1e6:.2f}M params, "
          f"{result['macs'] / 1e9:.2f} GMACs, {result['size_mb']:.1f} MB, {result['fps']:.1f}{spread} fps "
          f"on {result['device']}"
          f"{' (channels_last)' if result['channels_last'] else ''}")
    return 0


# ---------------------------------------------------------------- MLflow: track-init, track, track-study, sync
def _add_tracking_arguments(p: argparse.ArgumentParser, out_required: bool = False) -> None:
    """The options every step that writes to MLflow shares."""
    p.add_argument("--tracking-uri", help="default: sqlite:///results/mlflow.db (the pipeline passes the config's)")
    p.add_argument("--out", required=out_required, help="write the step's record (JSON) here")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                   help="skip: if the store fails, write a 'skipped' record and exit 0 (the pipeline's choice)")
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)  # see tracking.record_round


def _tracking_uri(value: str | None, results: str = "results") -> str:
    from segbench.tracking import default_tracking_uri

    # A tracking server that is down should be noticed in seconds, not minutes: fewer and
    # shorter HTTP retries than MLflow's defaults (7, backoff factor 2); the env wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    return value or default_tracking_uri(results)


def _tracked(a, step_name: str, log, **fields) -> int:
    """Run ``log()`` and write the step's record. With ``--on-error skip`` a store failure
    writes a "skipped" record (why, and how to sync later) and exits 0: MLflow is a view of
    the files, and its outage must not fail the pipeline."""
    from segbench.tracking import RECORD_LOGGED, RECORD_SKIPPED, TrackingError, write_record

    try:
        result = log()
    except TrackingError as e:
        if a.on_error != "skip":
            raise
        if a.out:
            write_record(a.out, status=RECORD_SKIPPED, round=a.round, reason=str(e), **fields)
        print(f"segbench {step_name}: warning: MLflow skipped, the pipeline goes on: {e}", file=sys.stderr)
        return 0
    if a.out:
        write_record(a.out, status=RECORD_LOGGED, round=a.round, **fields, **result)
    return 0


def add_track_init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", action="append", required=True)
    p.add_argument("--artifact-root", help="artifacts of new experiments (default: mlartifacts/ beside the sqlite "
                   "store beside a local store; the server's choice for http(s) URIs)")
    _add_tracking_arguments(p, out_required=True)


@step("track-init", "create the MLflow store and one experiment per study", add_track_init_arguments)
def cmd_track_init(a) -> int:
    from segbench.tracking import init_store

    uri = _tracking_uri(a.tracking_uri)
    root = Path(a.artifact_root).resolve() if a.artifact_root else None

    def log():
        ids = init_store(uri, a.study, root)
        print(f"MLflow store {uri}: experiments {ids}")
        return {"experiments": ids}

    return _tracked(a, "track-init", log, tracking_uri=uri, studies=a.study)


def add_track_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--study", action="append", required=True)
    p.add_argument("--profile")
    p.add_argument("--no-model", action="store_true",
                   help="leave model.pt out of the run's artifacts (the config's mlflow.log_models: false)")
    _add_tracking_arguments(p)


@step("track", "log a run directory to MLflow (idempotent)", add_track_arguments)
def cmd_track(a) -> int:
    from segbench.tracking import log_run

    uri = _tracking_uri(a.tracking_uri)

    def log():
        ids = log_run(a.run_dir, studies=a.study, tracking_uri=uri, profile_path=a.profile,
                      log_model=not a.no_model)
        print(f"logged {a.run_dir} to {uri}: {ids}")
        return {"runs": ids}

    return _tracked(a, "track", log, tracking_uri=uri, run_dir=a.run_dir, studies=a.study,
                    profile=a.profile)


def add_track_study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study")
    p.add_argument("--dir", required=True)
    p.add_argument("--note", type=_json_arg, default=None,
                   help="the experiment's description (Markdown) as a JSON string or @file (the pipeline passes "
                        "the study's: tracking.study_note)")
    p.add_argument("--register-best", action="store_true",
                   help="register the model of the study's best run (by final mIoU) as segbench-STUDY "
                        "(the config's mlflow.register_best)")
    _add_tracking_arguments(p)


@step("track-study", "log a study's tables and figures to MLflow", add_track_study_arguments)
def cmd_track_study(a) -> int:
    from segbench.tracking import log_study

    uri = _tracking_uri(a.tracking_uri)

    def log():
        run_id = log_study(a.study, a.dir, tracking_uri=uri, note=a.note, register_best=a.register_best)
        print(f"logged study {a.study} to {uri}: run {run_id}")
        return {"run_id": run_id}

    return _tracked(a, "track-study", log, tracking_uri=uri, study=a.study, dir=a.dir)


def add_sync_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="the workflow's config: studies, profiles, mlflow.tracking_uri "
                   "(default: config.yaml if present)")
    p.add_argument("--results", help="the results folder (default: the config's `results:`, else results)")
    p.add_argument("--tracking-uri", help="default: the config's mlflow.tracking_uri, else "
                   "sqlite:///RESULTS/mlflow.db")
    p.add_argument("--artifact-root", help="artifacts of new experiments (default as for track-init)")


@step("sync", "log every run directory and study under results/ into MLflow (idempotent; completes MLflow "
      "after an outage)", add_sync_arguments)
def cmd_sync(a) -> int:
    from segbench.tracking import study_note, sync

    plan_studies, plan_profiles, cfg_uri, results, log_model = {}, {}, None, a.results or "results", True
    notes, register_best = {}, False
    config = Path(a.config) if a.config else Path("config.yaml")
    if a.config or config.exists():
        from segbench.config import load_config
        from segbench.plan import Plan

        cfg = load_config(config)
        if not cfg["mlflow"]["enabled"] and not a.tracking_uri:
            raise UserError(f"{config} turns MLflow off (mlflow.enabled: false); give --tracking-uri to sync anyway")
        cfg_uri = cfg["mlflow"]["tracking_uri"]
        log_model = cfg["mlflow"]["log_models"]
        register_best = cfg["mlflow"]["register_best"]
        plan = Plan(cfg)
        results = a.results or plan.results
        if Path(results).resolve() != Path(plan.results).resolve():
            print(f"segbench sync: warning: --results {results} is not the folder {config} writes to "
                  f"({plan.results}); its profiles are looked up there", file=sys.stderr)
        plan_studies = {r.key: plan.studies_of(r) for r in plan.runs}
        plan_profiles = {r.key: plan.profile_path(r) for r in plan.runs}
        notes = {s: study_note(plan, s) for s in plan.studies}
    uri = _tracking_uri(a.tracking_uri or cfg_uri, results)
    out = sync(results, tracking_uri=uri, plan_studies=plan_studies, plan_profiles=plan_profiles,
               artifact_root=a.artifact_root, log_model=log_model, study_notes=notes, register_best=register_best)
    print(f"synced {len(out['runs'])} runs and {len(out['studies'])} studies into {uri}"
          + (f"; {len(out['unassigned'])} run directories belong to no study (see above)"
             if out["unassigned"] else ""))
    return 0


# ---------------------------------------------------------------- report
def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study")
    p.add_argument("--runs", type=_json_arg, required=True, help="the study's runs as JSON or @file")
    p.add_argument("--out", required=True)
    p.add_argument("--study-spec", type=_json_arg, default=None,
                   help="the study's paper and ablations as JSON or @file (Plan.study_spec); "
                        "default: summary tables and figures only")
    p.add_argument("--augment-data", default=None,
                   help="a prepared dataset whose first val image the augmentation figure shows")


@step("report", "tables and figures of one study", add_report_arguments)
def cmd_report(a) -> int:
    from segbench.report.build import build_report

    spec = a.study_spec or {"name": a.study, "paper": None, "cross": False, "ablations": {}}
    paths = build_report(spec, a.runs, a.out, augment_data=a.augment_data)
    print(f"study {a.study}: wrote {len(paths)} files under {a.out}")
    return 0


# ---------------------------------------------------------------- serve
def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help="a run directory (run.json + model.pt)")
    p.add_argument("--study", help="serve this study's best run by val mIoU instead")
    p.add_argument("--results", help="the results folder --study looks in (default: the `results:` folder of "
                   "--config, else results)")
    p.add_argument("--config", help="the workflow's config whose `results:` folder --study looks in "
                   "(default: config.yaml if present)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=4096 * 2048,
                   help="largest image in pixels, and largest padded image the model runs on, checked before "
                   "decoding (default 8388608 = 4096x2048)")
    p.add_argument("--max-memory", help="memory budget of one request, e.g. 2G or 1500M: an image whose estimated "
                   "memory is larger is refused (413) (default: half the memory available at start-up)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


@step("serve", "a web app (page + JSON/PNG endpoints) that segments uploaded images with a run",
      add_serve_arguments)
def cmd_serve(a) -> int:
    from segbench.serve.best_run import best_run_of_study  # no torch: bad choices fail at once

    if (a.run_dir is None) == (a.study is None):
        raise UserError("give a RUN_DIR or --study NAME (one of them)")
    if a.max_upload_mb <= 0 or a.max_pixels <= 0:
        raise UserError("--max-upload-mb and --max-pixels must be positive")
    run_dir = a.run_dir
    if a.study:
        results = a.results
        if results is None:  # the config's `results:` folder (config.yaml's when present)
            config = Path(a.config) if a.config else Path("config.yaml")
            results = "results"
            if a.config or config.exists():
                from segbench.config import load_config

                results = load_config(config)["results"]
        run_dir, candidates = best_run_of_study(a.study, results)
        for c in candidates:
            miou = "no metrics" if c["mIoU"] is None else f"val mIoU {c['mIoU']:.4f}"
            print(f"  {'*' if Path(c['run_dir']) == run_dir else ' '} {c['run_key']}: {miou}", flush=True)
        print(f"study {a.study}: serving its best run by val mIoU, {run_dir}", flush=True)
    for name in ("run.json", "model.pt"):  # before torch is imported: a wrong path fails at once
        if not (Path(run_dir) / name).is_file():
            raise UserError(f"{Path(run_dir) / name} is missing: give a trained run's directory "
                            "(results/runs/DATASET/MODEL/LOSS/sSEED) or train it first")
    from segbench.serve.app import serve
    from segbench.serve.inference import Limits, parse_memory

    limits = Limits(max_upload_bytes=int(a.max_upload_mb * 1_000_000), max_pixels=a.max_pixels,
                    max_memory_bytes=parse_memory(a.max_memory) if a.max_memory else None)
    serve(run_dir, host=a.host, port=a.port, limits=limits, threads=a.threads)
    return 0


# ---------------------------------------------------------------- models
def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="only these models (default: all)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (as in docs/models.md)")
    p.add_argument("--list", action="store_true", help="names and descriptions only, no counting (instant)")


@step("models", "list the model architectures with their parameters and MACs", add_models_arguments)
def cmd_models(a) -> int:
    from segbench.models import available

    names = list(available())
    unknown = [n for n in a.names if n not in names]
    if unknown:
        raise UserError(f"unknown model {', '.join(map(repr, unknown))}; known models: {', '.join(names)}")
    width = max(map(len, names))
    if not a.markdown:
        for name, desc in available().items():
            if not a.names or name in a.names:
                print(f"{name:<{width}}  {desc}")
        print()
    if a.list:
        return 0
    from segbench.models.summary import format_table, model_table

    # counted on the meta device: no weights allocated, nothing computed (a few seconds)
    print(format_table(model_table(a.names or None), markdown=a.markdown))
    if not a.markdown:
        print("\nparams: used by forward() (train-only embedding heads excluded); GMACs = 1e9 multiply-accumulates "
              "of one forward pass (torch.utils.flop_counter FLOPs / 2), batch 1, the paper's configuration and "
              "classes; paper input rounded to a multiple of 32. docs/models.md explains each figure.")
    return 0


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segbench",
        description="The segbench command line: one subcommand per pipeline step "
                    "(the Snakefile's rules run these; `segbench STEP --help` describes one).")
    p.add_argument("--version", action="version", version=f"segbench {__import__('segbench').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="STEP")
    for s in STEPS.values():
        sp = sub.add_parser(s.name, help=s.help, description=s.help)
        s.add_arguments(sp)
        sp.set_defaults(func=s.run)
    return p


def main(argv: list[str] | None = None) -> int:
    """``segbench STEP ...``: parse the arguments and run the step."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (UserError, FileNotFoundError) as e:  # a missing file: its message names the path
        print(f"segbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `segbench models | head`: the reader has gone; stop quietly like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail too
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
