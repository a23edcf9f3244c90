"""The ``segbench`` command line: one subcommand per pipeline step.

Snakemake rules call these (``python -m segbench STEP ...``); a person can run any step by
hand the same way. Heavy modules are imported inside the subcommand that needs them, so
``segbench check-config`` or ``segbench report`` never import torch or mlflow they don't use.
"""

from __future__ import annotations

import argparse
import json
import os
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
    if not a.cost:
        print(Plan(cfg).summary())
        return 0
    from segbench.cost import format_costs, run_costs

    plan = Plan(cfg)
    print(format_costs(plan, run_costs(plan), a.throughput_tflops))
    return 0


def _positive_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a number above 0")
    return v


def cmd_generate(a) -> int:
    from segbench.data.synthetic import generate

    counts = generate(a.out, seed=a.seed, splits={"train": a.train, "val": a.val}, height=a.height,
                      width=a.width, progress=not a.quiet)
    print(f"synthetic dataset written to {a.out}: {counts}")
    return 0


def cmd_prepare(a) -> int:
    from segbench.data.prepare import prepare

    options = {}
    if a.dataset == "voc":
        options = {"trainaug": not a.no_trainaug, "sbd_root": a.sbd_root}
    elif a.no_trainaug or a.sbd_root:
        raise SystemExit("segbench prepare: --no-trainaug and --sbd-root are for the voc dataset only")
    if a.dataset == "synthetic" and a.allow_partial:
        raise SystemExit("segbench prepare: --allow-partial is for the real datasets only")
    if a.labels != "trainId" and a.dataset not in ("cityscapes", "synthetic"):
        raise SystemExit(f"segbench prepare: --labels {a.labels} is for cityscapes and synthetic only; "
                         f"{a.dataset} has one label set (trainId)")
    info = prepare(a.dataset, a.root, a.out, dataset=a.name or a.dataset, labels=a.labels,
                   allow_partial=a.allow_partial, progress=not a.quiet, **options)
    print(f"prepared {a.dataset} from {a.root} into {a.out}: {info['splits']}")
    return 0


def _name_value(value: str) -> tuple[str, str]:
    name, sep, val = value.partition("=")
    if not sep or not name or not val:
        raise argparse.ArgumentTypeError(f"{value!r} must look like ARCHIVE=VALUE")
    return name, val


def cmd_download(a) -> int:
    from segbench.data.download import archives_of, download

    known = archives_of(a.dataset)
    names = a.archive or list(known)
    urls = dict(a.url or [])
    bad = [n for n in [*names, *urls] if n not in known]
    if bad:
        raise SystemExit(f"segbench download: unknown archive(s) {', '.join(bad)} for {a.dataset}; "
                         f"known: {', '.join(known)}")
    if a.dataset == "cityscapes":
        from segbench.data.cityscapes import SITE, download as download_cityscapes

        if urls:
            raise SystemExit("segbench download: Cityscapes archives come from the site (--site), not --url")
        download_cityscapes(names, a.dir, credentials_file=a.credentials, interactive=not a.no_input,
                            site=a.site or SITE, retries=a.retries, progress=not a.quiet)
        return 0
    if a.credentials or a.site:
        raise SystemExit("segbench download: --credentials and --site are for cityscapes only")
    if a.dataset == "bdd100k":
        from segbench.data.bdd100k import LICENCE_NOTE

        print(f"note: {LICENCE_NOTE}", file=sys.stderr)
    for name in names:
        download(urls.get(name) or known[name].url, Path(a.dir) / name, retries=a.retries, progress=not a.quiet)
    return 0


def cmd_verify(a) -> int:
    from segbench.data.download import expected_md5, verify
    from segbench.io import write_text

    expected = expected_md5(a.archive, a.source, a.md5)
    actual = verify(a.archive, expected, progress=not a.quiet)
    if a.out:
        write_text(a.out, f"{actual}  {Path(a.archive).name}\n")
    print(f"{a.archive}: MD5 {actual} as expected")
    return 0


def cmd_extract(a) -> int:
    from segbench.data.download import extract

    counts = extract(a.archives, a.to, progress=not a.quiet)
    print(f"extracted into {a.to}: {counts}")
    return 0


def cmd_fetch_weights(a) -> int:
    from segbench.weights import fetch_weights

    fetch_weights(a.name, a.dir, url=a.url, sha256=a.sha256, retries=a.retries, progress=not a.quiet)
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
    channels_last = {"auto": "auto", "true": True, "false": False}[a.channels_last]
    result = profile_model(spec["arch"], spec.get("params", {}), a.classes, a.size, warmup=a.warmup,
                           iterations=a.iterations, threads=a.threads, name=spec.get("name"),
                           channels_last=channels_last)
    write_json(a.out, result)
    print(f"{result['model']} at {a.size[0]}x{a.size[1]}: {result['params'] / 1e6:.2f}M params, "
          f"{result['macs'] / 1e9:.2f} GMACs, {result['size_mb']:.1f} MB, {result['fps']:.1f} fps on {result['device']}"
          f"{' (channels_last)' if result['channels_last'] else ''}")
    return 0


def _tracking_uri(value: str | None, results: str = "results") -> str:
    import os

    from segbench.tracking import default_tracking_uri

    # A tracking server that is down should be noticed in seconds, not minutes: fewer and
    # shorter HTTP retries than MLflow's defaults (7, backoff factor 2); the env wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    return value or default_tracking_uri(results)


def _tracked(a, step: str, log, **fields) -> int:
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
        print(f"segbench {step}: warning: MLflow skipped, the pipeline goes on: {e}", file=sys.stderr)
        return 0
    if a.out:
        write_record(a.out, status=RECORD_LOGGED, round=a.round, **fields, **result)
    return 0


def cmd_track_init(a) -> int:
    from segbench.tracking import init_store

    uri = _tracking_uri(a.tracking_uri)
    root = Path(a.artifact_root).resolve() if a.artifact_root else None

    def log():
        ids = init_store(uri, a.study, root)
        print(f"MLflow store {uri}: experiments {ids}")
        return {"experiments": ids}

    return _tracked(a, "track-init", log, tracking_uri=uri, studies=a.study)


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


def cmd_track_study(a) -> int:
    from segbench.tracking import log_study

    uri = _tracking_uri(a.tracking_uri)

    def log():
        run_id = log_study(a.study, a.dir, tracking_uri=uri)
        print(f"logged study {a.study} to {uri}: run {run_id}")
        return {"run_id": run_id}

    return _tracked(a, "track-study", log, tracking_uri=uri, study=a.study, dir=a.dir)


def cmd_sync(a) -> int:
    from segbench.tracking import sync

    plan_studies, plan_profiles, cfg_uri, results, log_model = {}, {}, None, a.results or "results", True
    config = Path(a.config) if a.config else Path("config.yaml")
    if a.config or config.exists():
        from segbench.config import load_config
        from segbench.plan import Plan

        cfg = load_config(config)
        if not cfg["mlflow"]["enabled"] and not a.tracking_uri:
            print(f"segbench sync: error: {config} turns MLflow off (mlflow.enabled: false); "
                  "give --tracking-uri to sync anyway", file=sys.stderr)
            return 2
        cfg_uri = cfg["mlflow"]["tracking_uri"]
        log_model = cfg["mlflow"]["log_models"]
        plan = Plan(cfg)
        results = a.results or plan.results
        if Path(results).resolve() != Path(plan.results).resolve():
            print(f"segbench sync: warning: --results {results} is not the folder {config} writes to "
                  f"({plan.results}); its profiles are looked up there", file=sys.stderr)
        plan_studies = {r.key: plan.studies_of(r) for r in plan.runs}
        plan_profiles = {r.key: plan.profile_path(r) for r in plan.runs}
    uri = _tracking_uri(a.tracking_uri or cfg_uri, results)
    out = sync(results, tracking_uri=uri, plan_studies=plan_studies, plan_profiles=plan_profiles,
               artifact_root=a.artifact_root, log_model=log_model)
    print(f"synced {len(out['runs'])} runs and {len(out['studies'])} studies into {uri}"
          + (f"; {len(out['unassigned'])} run directories belong to no study (see above)"
             if out["unassigned"] else ""))
    return 0


def cmd_report(a) -> int:
    from segbench.report.study import build_report

    spec = a.study_spec or {"name": a.study, "paper": None, "cross": False, "ablations": {}}
    paths = build_report(spec, a.runs, a.out, augment_data=a.augment_data)
    print(f"study {a.study}: wrote {len(paths)} files under {a.out}")
    return 0


def cmd_serve(a) -> int:
    from segbench.serve.study import best_run_of_study  # no torch: bad choices fail at once

    if (a.run_dir is None) == (a.study is None):
        print("segbench serve: error: give a RUN_DIR or --study NAME (one of them)", file=sys.stderr)
        return 2
    if a.max_upload_mb <= 0 or a.max_pixels <= 0:
        print("segbench serve: error: --max-upload-mb and --max-pixels must be positive", file=sys.stderr)
        return 2
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
            raise FileNotFoundError(f"{Path(run_dir) / name} is missing: give a trained run's directory "
                                    "(results/runs/DATASET/MODEL/LOSS/sSEED) or train it first")
    from segbench.serve.app import serve
    from segbench.serve.inference import Limits

    limits = Limits(max_upload_bytes=int(a.max_upload_mb * 1_000_000), max_pixels=a.max_pixels)
    serve(run_dir, host=a.host, port=a.port, limits=limits, threads=a.threads)
    return 0


def cmd_models(a) -> int:
    from segbench.models import available

    names = list(available())
    unknown = [n for n in a.names if n not in names]
    if unknown:
        print(f"segbench models: error: unknown model {', '.join(map(repr, unknown))}; known models: "
              f"{', '.join(names)}", file=sys.stderr)
        return 2
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


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from segbench.data.download import SOURCES

    p = argparse.ArgumentParser(prog="segbench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"segbench {__import__('segbench').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="STEP")

    def add(name, func, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    sp = add("check-config", cmd_check_config, "validate a config file and list the runs it plans")
    sp.add_argument("config", nargs="?", default="config.yaml")
    sp.add_argument("--cost", action="store_true",
                    help="instead of the run list, estimate each run's compute (MACs counted on the meta device "
                    "x images x epochs x 3, plus the final evaluation) and the total GPU-hours; imports torch")
    sp.add_argument("--throughput-tflops", type=_positive_float, default=50.0, metavar="TFLOPS",
                    help="with --cost: effective training throughput of one GPU in TFLOP/s (1 MAC = 2 FLOPs; "
                    "default 50, i.e. 25 TMAC/s)")

    sp = add("generate", cmd_generate, "generate the embedded synthetic dataset (Cityscapes layout)")
    sp.add_argument("out")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--train", type=int, default=160)
    sp.add_argument("--val", type=int, default=40)
    sp.add_argument("--height", type=int, default=128)
    sp.add_argument("--width", type=int, default=256)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("download", cmd_download, "download a dataset's archives (resumable; Cityscapes needs a login)")
    sp.add_argument("dataset", choices=SOURCES)
    sp.add_argument("--dir", required=True, help="folder for the archives")
    sp.add_argument("--archive", action="append", help="only this archive (repeatable; default: all of them)")
    sp.add_argument("--url", action="append", type=_name_value, metavar="ARCHIVE=URL",
                    help="download ARCHIVE from URL instead of the official address (repeatable)")
    sp.add_argument("--credentials", help="cityscapes: JSON file {\"username\": ..., \"password\": ...}; default: "
                    "$CITYSCAPES_USERNAME/$CITYSCAPES_PASSWORD, then csDownload's stored login")
    sp.add_argument("--site", help="cityscapes: base URL of the site (default: the official one)")
    sp.add_argument("--no-input", action="store_true", help="never prompt for a login (workflows pass this)")
    sp.add_argument("--retries", type=int, default=3, help="resume attempts after a cut connection (default 3)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("verify", cmd_verify, "check an archive's MD5; a mismatch deletes it and shows both checksums")
    sp.add_argument("archive")
    sp.add_argument("--source", choices=SOURCES, help="look the published MD5 up by archive name")
    sp.add_argument("--md5", help="the expected MD5 (overrides the published one)")
    sp.add_argument("--out", help="write 'MD5  NAME' here once verified")
    sp.add_argument("--quiet", action="store_true")

    sp = add("extract", cmd_extract, "unpack archives safely (no absolute paths, '..' or outward links)")
    sp.add_argument("archives", nargs="+")
    sp.add_argument("--to", required=True, help="target folder")
    sp.add_argument("--quiet", action="store_true")

    sp = add("fetch-weights", cmd_fetch_weights, "download a registered ImageNet backbone checkpoint once "
             "(resumable, SHA-256 checked) into the weights folder")
    sp.add_argument("name", metavar="NAME",
                    help="torchvision:resnet50, torchvision:resnet101, van:b0, van:b1 or van:b2")
    sp.add_argument("--dir", required=True, help="the weights folder (the config's weights.dir; what $SEGBENCH_WEIGHTS "
                    "points training at)")
    sp.add_argument("--url", help="download from URL instead of the publisher's address (a mirror)")
    sp.add_argument("--sha256", help="the expected SHA-256 (64 hex digits, or a prefix of 8+) instead of the "
                    "published one")
    sp.add_argument("--retries", type=int, default=3, help="resume attempts after a cut connection (default 3)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("prepare", cmd_prepare, "convert a dataset tree into manifest.csv + train-id label PNGs")
    sp.add_argument("dataset", choices=["synthetic", *SOURCES])
    sp.add_argument("--root", required=True, help="the dataset's root folder")
    sp.add_argument("--out", required=True, help="output folder (manifest.csv, labels/, meta.json)")
    sp.add_argument("--labels", choices=["trainId", "category"], default="trainId",
                    help="cityscapes/synthetic: 19 trainIds or 7 categories")
    sp.add_argument("--name", help="the dataset's name in meta.json (default: DATASET)")
    sp.add_argument("--allow-partial", action="store_true",
                    help="warn instead of failing when a split has fewer files than published")
    sp.add_argument("--no-trainaug", action="store_true", help="voc: train on VOC train (1,464), not trainaug")
    sp.add_argument("--sbd-root", help="voc: SBD's folder (default: benchmark_RELEASE/ beside VOCdevkit/)")
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
    sp.add_argument("--channels-last", choices=["auto", "true", "false"], default="auto",
                    help="memory format (as train.channels_last): auto = channels_last on a GPU only")
    sp.add_argument("--threads", type=int)

    def tracking_args(sp, out_required=False):
        sp.add_argument("--tracking-uri", help="default: sqlite:///results/mlflow.db (the pipeline passes the config's)")
        sp.add_argument("--out", required=out_required, help="write the step's record (JSON) here")
        sp.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                        help="skip: if the store fails, write a 'skipped' record and exit 0 (the pipeline's choice)")
        sp.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)  # see tracking.record_round

    sp = add("track-init", cmd_track_init, "create the MLflow store and one experiment per study")
    sp.add_argument("--study", action="append", required=True)
    sp.add_argument("--artifact-root", help="artifacts of new experiments (default: mlartifacts/ beside the sqlite store "
                    "beside a local store; the server's choice for http(s) URIs)")
    tracking_args(sp, out_required=True)

    sp = add("track", cmd_track, "log a run directory to MLflow (idempotent)")
    sp.add_argument("run_dir")
    sp.add_argument("--study", action="append", required=True)
    sp.add_argument("--profile")
    sp.add_argument("--no-model", action="store_true",
                    help="leave model.pt out of the run's artifacts (the config's mlflow.log_models: false)")
    tracking_args(sp)

    sp = add("track-study", cmd_track_study, "log a study's tables and figures to MLflow")
    sp.add_argument("study")
    sp.add_argument("--dir", required=True)
    tracking_args(sp)

    sp = add("sync", cmd_sync, "log every run directory and study under results/ into MLflow "
             "(idempotent; completes MLflow after an outage)")
    sp.add_argument("--config", help="the workflow's config: studies, profiles, mlflow.tracking_uri "
                    "(default: config.yaml if present)")
    sp.add_argument("--results", help="the results folder (default: the config's `results:`, else results)")
    sp.add_argument("--tracking-uri", help="default: the config's mlflow.tracking_uri, else sqlite:///RESULTS/mlflow.db")
    sp.add_argument("--artifact-root", help="artifacts of new experiments (default as for track-init)")

    sp = add("report", cmd_report, "tables and figures of one study")
    sp.add_argument("study")
    sp.add_argument("--runs", type=_json_arg, required=True, help="the study's runs as JSON or @file")
    sp.add_argument("--out", required=True)
    sp.add_argument("--study-spec", type=_json_arg, default=None,
                    help="the study's paper and ablations as JSON or @file (Plan.study_spec); "
                         "default: summary tables and figures only")
    sp.add_argument("--augment-data", default=None,
                    help="a prepared dataset whose first val image the augmentation figure shows")

    sp = add("serve", cmd_serve, "a web app (page + JSON/PNG endpoints) that segments uploaded images with a run")
    sp.add_argument("run_dir", nargs="?", help="a run directory (run.json + model.pt)")
    sp.add_argument("--study", help="serve this study's best run by val mIoU instead")
    sp.add_argument("--results", help="the results folder --study looks in (default: the `results:` folder of "
                    "--config, else results)")
    sp.add_argument("--config", help="the workflow's config whose `results:` folder --study looks in "
                    "(default: config.yaml if present)")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    sp.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    sp.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    sp.add_argument("--max-pixels", type=int, default=4096 * 2048,
                    help="largest image in pixels, checked before decoding (default 8388608 = 4096x2048)")
    sp.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")

    sp = add("models", cmd_models, "list the model architectures with their parameters and MACs")
    sp.add_argument("names", nargs="*", help="only these models (default: all)")
    sp.add_argument("--markdown", action="store_true", help="print the table as Markdown (as in the README)")
    sp.add_argument("--list", action="store_true", help="names and descriptions only, no counting (instant)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``segbench STEP ...``: run the step, in a child of the pipeline's fork server when the
    Snakefile started one for this job (see segbench.forkserver), else in this process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED and os.environ.get("SEGBENCH_FORKSERVER"):
        from segbench import forkserver

        code = forkserver.delegate(["segbench", *argv])
        if code is not None:
            return code
    return run(argv)


# the steps that import torch, mlflow or matplotlib: a fork server runs them. Data steps
# stay in their own process (a download may prompt for a login).
_DELEGATED = frozenset({"train", "evaluate", "profile", "track-init", "track", "track-study", "sync", "report"})


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the step in this process."""
    args = build_parser().parse_args(argv)
    from segbench.config import ConfigError
    from segbench.data import DataError
    from segbench.weights import WeightsError

    known: tuple[type[BaseException], ...] = (ConfigError, DataError, FileNotFoundError, WeightsError)
    try:
        from segbench.tracking import TrackingError

        known += (TrackingError,)
    except ImportError:
        pass
    try:
        return args.func(args)
    except Exception as e:
        # a NaN/inf loss (engine.train, imported only by the steps that train: no torch here)
        train = sys.modules.get("segbench.engine.train")
        if not (isinstance(e, known) or (train is not None and isinstance(e, train.NonFiniteLoss))):
            raise
        print(f"segbench {args.command}: error: {e}", file=sys.stderr)
        return 2
