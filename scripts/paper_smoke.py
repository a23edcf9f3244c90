#!/usr/bin/env python3
"""`make paper-smoke`: every job of workflow/configs/paper.yaml, on CPU, on miniature data.

Runs the real Snakefile on the paper matrix (every study, ablation and the cross study, the
models at the papers' widths) with workflow/configs/overrides/paper-smoke.yaml on top, which
shrinks only the data's use (a few images, 64x64 crops), the steps (1 epoch) and the timing
loops. The datasets are miniature copies in each publisher's exact layout (Cityscapes'
gtFine/leftImg8bit zips behind a stand-in of its login site, ADE20K's zip, VOC 2012's tar and
SBD's benchmark.tgz, BDD100K's two zips) and, when paper.yaml names pretrained backbones,
checkpoints in the publishers' layouts with random values; all are served by a local HTTP
server on 127.0.0.1 that this script starts and stops (by its PID), so download, verify,
extract, prepare and the weights' fetch and check run as they would against the real sites.
A generated overlay (OVERLAY.yaml in the work folder) holds only the 127.0.0.1 URLs, the
checksums of the generated files, the login file's name and the weights folder (inside the
smoke's results, never ~/.cache).

    python scripts/paper_smoke.py [--dir /tmp/segbench-paper-smoke] [--cores 2]

The work folder is deleted at the start (only if it is one this script made) and kept at the
end: results under DIR/results/paper-smoke/, the server's files under DIR/serve/, Snakemake's
output in DIR/snakemake.log. Exit status 0 only when every job ran, every study's tables and
figures (paper tables included) were written, every MLflow step logged, every archive and
checkpoint was fetched and checked, and a second dry run finds nothing to do; the job count,
the wall time, the peak disk use of the folder (sampled every second) and the jobs' time per
step are printed at the end.

Disk: the override keeps the models out of MLflow (`mlflow.log_models: false`), and this
script deletes each run's resumable checkpoint (ckpt/, not a declared output; 2-3 times the
model) once its training has finished (run.json written). With both, the peak is the
paper-width models themselves (about 8 GB); without them it would be about three times that.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "workflow" / "configs" / "paper.yaml"
OVERRIDE = ROOT / "workflow" / "configs" / "overrides" / "paper-smoke.yaml"
MARKER = ".segbench-paper-smoke"  # the work folder is deleted at the start only if it holds this
DEFAULT_DIR = Path("/tmp/segbench-paper-smoke")
# the stand-in Cityscapes site's login (a made-up one: it exists only in this server)
CS_USER, CS_PASSWORD = "smoke@segbench.invalid", "paper-smoke-login"

sys.path.insert(0, str(ROOT / "src"))


def log(msg: str) -> None:
    print(f"[paper-smoke {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ miniature files
# the tests' builders of files in the publishers' formats (tests/datasets_support.py)
sys.path.insert(0, str(ROOT / "tests"))
from datasets_support import jpg, png, tar_bytes, zip_bytes  # noqa: E402


def _jpg(rng: np.random.Generator, h: int, w: int) -> bytes:
    return jpg(h, w, seed=int(rng.integers(2**31)))


def _rgb_png(rng: np.random.Generator, h: int, w: int) -> bytes:
    return png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _blocks(rng: np.random.Generator, h: int, w: int, values, block: int = 8) -> np.ndarray:
    """A label map of `block`-sized squares, each a value drawn from `values`."""
    values = np.asarray(values, dtype=np.uint8)
    small = rng.choice(values, size=(-(-h // block), -(-w // block)))
    return np.kron(small, np.ones((block, block), np.uint8))[:h, :w]


def cityscapes_archives(rng) -> dict[str, bytes]:
    """gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip: 2 train, 2 val, 1 test image of
    64x128 (the real 1024x2048 / 16), labelIds over every id 0..33 (-1 is license plates)."""
    h, w = 64, 128
    frames = [("train", "aachen", 0, 19), ("train", "bochum", 3, 19), ("val", "frankfurt", 0, 294),
              ("val", "lindau", 0, 19), ("test", "berlin", 0, 19)]
    gt, img = {}, {}
    for split, city, seq, frame in frames:
        stem = f"{city}_{seq:06d}_{frame:06d}"
        lab = _blocks(rng, h, w, range(34)) if split != "test" else np.zeros((h, w), np.uint8)
        base = f"gtFine/{split}/{city}/{stem}_gtFine"
        gt[f"{base}_labelIds.png"] = png(lab)
        gt[f"{base}_instanceIds.png"] = png(lab)
        gt[f"{base}_color.png"] = png(np.zeros((h, w, 3), np.uint8))
        gt[f"{base}_polygons.json"] = json.dumps({"imgHeight": h, "imgWidth": w, "objects": []}).encode()
        img[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = _rgb_png(rng, h, w)
    for files in (gt, img):
        files["README"] = b"The Cityscapes Dataset (a miniature stand-in made by scripts/paper_smoke.py)\n"
        files["license.txt"] = b"stand-in\n"
    return {"gtFine_trainvaltest.zip": zip_bytes(gt), "leftImg8bit_trainvaltest.zip": zip_bytes(img)}


def ade20k_archives(rng) -> dict[str, bytes]:
    """ADEChallengeData2016.zip: 2 training, 2 validation images of differing sizes, PNG
    annotations 0..150 (0 = other)."""
    files = {"ADEChallengeData2016/objectInfo150.csv": b"Idx,Ratio,Train,Val,Name\n",
             "ADEChallengeData2016/sceneCategories.txt": b""}
    for i, (folder, prefix, (h, w)) in enumerate([("training", "ADE_train", (64, 80)), ("training", "ADE_train", (72, 64)),
                                                   ("validation", "ADE_val", (64, 96)), ("validation", "ADE_val", (80, 64))]):
        stem = f"{prefix}_{i + 1:08d}"
        files[f"ADEChallengeData2016/images/{folder}/{stem}.jpg"] = _jpg(rng, h, w)
        files[f"ADEChallengeData2016/annotations/{folder}/{stem}.png"] = png(_blocks(rng, h, w, range(151)))
    return {"ADEChallengeData2016.zip": zip_bytes(files)}


def _voc_palette() -> list[int]:
    from segbench.data.voc import colormap

    return colormap(256).ravel().tolist()


def _sbd_mat(seg: np.ndarray) -> bytes:
    """A cls/*.mat as SBD ships it: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
    import scipy.io
    import scipy.sparse

    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix((seg == k + 1).astype(float))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"GTcls": {"Segmentation": seg, "Boundaries": boundaries,
                                     "CategoriesPresent": np.unique(seg[seg > 0]).astype(np.uint8)}})
    return buf.getvalue()


def voc_archives(rng) -> dict[str, bytes]:
    """VOCtrainval_11-May-2012.tar and benchmark.tgz. VOC: train 1, val 2 (palette PNGs, raw
    indices 0..20 and a 255 border); SBD: train 2 (one of them a VOC val image, which trainaug
    must leave out), val 1; trainaug = 3 images."""
    voc_train, voc_val = ["2007_000032"], ["2007_000033", "2007_000042"]
    sbd_train, sbd_val = ["2008_000002", "2007_000033"], ["2008_000003"]
    palette = _voc_palette()
    base, voc = "VOCdevkit/VOC2012", {}
    sizes = {}
    for name in sorted(set(voc_train + voc_val + sbd_train + sbd_val)):
        sizes[name] = (int(rng.integers(60, 80)), int(rng.integers(60, 90)))
        voc[f"{base}/JPEGImages/{name}.jpg"] = _jpg(rng, *sizes[name])
    for name in voc_train + voc_val:
        h, w = sizes[name]
        lab = _blocks(rng, h, w, range(21))
        lab[h // 4, :] = 255  # VOC's "void" border
        voc[f"{base}/SegmentationClass/{name}.png"] = png(lab, palette=palette)
        voc[f"{base}/SegmentationObject/{name}.png"] = png(lab, palette=palette)
        voc[f"{base}/Annotations/{name}.xml"] = f"<annotation><filename>{name}.jpg</filename></annotation>".encode()
    lists = f"{base}/ImageSets/Segmentation"
    voc[f"{lists}/train.txt"] = "".join(f"{n}\n" for n in voc_train).encode()
    voc[f"{lists}/val.txt"] = "".join(f"{n}\n" for n in voc_val).encode()
    voc[f"{lists}/trainval.txt"] = "".join(f"{n}\n" for n in voc_train + voc_val).encode()
    sbd, ds = {"benchmark_RELEASE/README": b"SBD (a miniature stand-in)\n"}, "benchmark_RELEASE/dataset"
    for name in sbd_train + sbd_val:
        seg = _blocks(rng, *sizes[name], range(21))
        sbd[f"{ds}/cls/{name}.mat"] = _sbd_mat(seg)
        sbd[f"{ds}/inst/{name}.mat"] = _sbd_mat(seg)
        sbd[f"{ds}/img/{name}.jpg"] = voc[f"{base}/JPEGImages/{name}.jpg"]
    sbd[f"{ds}/train.txt"] = "".join(f"{n}\n" for n in sbd_train).encode()
    sbd[f"{ds}/val.txt"] = "".join(f"{n}\n" for n in sbd_val).encode()
    return {"VOCtrainval_11-May-2012.tar": tar_bytes(voc, "w"), "benchmark.tgz": tar_bytes(sbd, "w:gz")}


def bdd100k_archives(rng) -> dict[str, bytes]:
    """bdd100k_images_10k.zip and bdd100k_sem_seg_labels_trainval.zip: 2 train, 2 val, 1 test
    image of 72x128 (1280x720 / 10), masks already in the 19 train ids with 255."""
    h, w = 72, 128
    names = {"train": ["0004a4c0-d4dff0ad", "00054602-3bf57337"], "val": ["7d2f7975-e0c1c5a7", "7d4a9094-0455564b"],
             "test": ["ac517380-00000000"]}
    images, labels = {}, {}
    for split, stems in names.items():
        for stem in stems:
            images[f"bdd100k/images/10k/{split}/{stem}.jpg"] = _jpg(rng, h, w)
            if split != "test":
                labels[f"bdd100k/labels/sem_seg/masks/{split}/{stem}.png"] = png(_blocks(rng, h, w, [*range(19), 255]))
                labels[f"bdd100k/labels/sem_seg/colormaps/{split}/{stem}.png"] = png(np.zeros((h, w, 3), np.uint8))
    for split in ("train", "val"):
        labels[f"bdd100k/labels/sem_seg/polygons/sem_seg_{split}.json"] = b"[]"
        labels[f"bdd100k/labels/sem_seg/rles/sem_seg_{split}.json"] = b'{"frames": []}'
    return {"bdd100k_images_10k.zip": zip_bytes(images), "bdd100k_sem_seg_labels_trainval.zip": zip_bytes(labels)}


ARCHIVE_BUILDERS = {"cityscapes": cityscapes_archives, "ade20k": ade20k_archives, "voc": voc_archives,
                    "bdd100k": bdd100k_archives}


# ------------------------------------------------------------------ pretrained checkpoints
def pretrained_names(paper: dict) -> list[str]:
    """The registered checkpoints (segbench.weights.REGISTRY) paper.yaml's models start from
    (`params.pretrained`, grids expanded); a path of the user's is not fetched, so not served."""
    from segbench.config import expand_grids

    try:
        from segbench.weights import REGISTRY
    except ImportError:  # before the pretrained-backbone work
        return []
    models = expand_grids(paper).get("models", {})
    return sorted({(m.get("params") or {}).get("pretrained") for m in models.values()} & set(REGISTRY))


def publisher_checkpoint(name: str, seed: int) -> bytes:
    """The file of a registered checkpoint in its publisher's layout, with random values: a
    freshly initialised backbone of the entry's size, its keys mapped back through
    segbench.models.pretrained's key table (torchvision: a plain state dict with the `fc`
    classifier; VAN-Classification: a dict whose `state_dict` holds the weights, `head`
    classifier and [C] layer scales, beside `epoch` and `arch`)."""
    import torch

    from segbench.models.pretrained import TABLES, backbone_arch
    from segbench.weights import REGISTRY

    entry = REGISTRY[name]
    torch.manual_seed(seed)
    if entry.family == "torchvision_resnet":
        from segbench.models.backbones.resnet import DilatedResNet

        backbone = DilatedResNet(depth=entry.arch["depth"], width=entry.arch["width"])
    elif entry.family == "van":
        from segbench.models.backbones.van import VAN

        backbone = VAN(variant=entry.arch["variant"])
    else:
        raise SystemExit(f"paper-smoke: no stand-in for {name!r} (family {entry.family!r}); add one here")
    family, ctx = backbone_arch(backbone)
    table = TABLES[family]
    state = {}
    for key, tensor in backbone.state_dict().items():
        theirs = table.to_theirs(key, ctx)
        if theirs is None:
            raise SystemExit(f"paper-smoke: {name}: no publisher key for the backbone's {key} "
                             "(segbench.models.pretrained's key table)")
        state[theirs] = tensor.reshape(-1) if theirs.endswith(("layer_scale_1", "layer_scale_2")) else tensor.clone()
    buf = io.BytesIO()
    if family == "torchvision_resnet":
        features = backbone.stem[0].out_channels * 32
        state.update({"fc.weight": torch.randn(1000, features) * 0.01, "fc.bias": torch.zeros(1000)})
        torch.save(state, buf)
    else:
        state.update({"head.weight": torch.randn(1000, backbone.dims[-1]) * 0.01, "head.bias": torch.zeros(1000)})
        torch.save({"epoch": 310, "arch": f"van_{entry.arch['variant']}", "state_dict": state}, buf)
    return buf.getvalue()


def weight_files(paper: dict, rng) -> dict[str, bytes]:
    """{registered name: file bytes} for every checkpoint paper.yaml's models start from."""
    return {name: publisher_checkpoint(name, int(rng.integers(2**31))) for name in pretrained_names(paper)}


# ------------------------------------------------------------------ the HTTP server (a child process)
def serve(args) -> int:
    """Serve DIR/serve/** at /<relative path>, and the Cityscapes archives behind a stand-in
    login site; write the base URL to --url-file; log every request to --requests; stop on TERM."""
    from datasets_support import CityscapesSite  # the tests' stand-in for cityscapes-dataset.com

    root = Path(args.root)
    site = CityscapesSite(CS_USER, CS_PASSWORD)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel.startswith("cityscapes/"):
                site.add_package(p.name, p.read_bytes())
            else:
                site.files["/" + rel] = p.read_bytes()
    requests_log = open(args.requests, "a", buffering=1)
    record = site._record

    def logged(h, method):
        record(h, method)
        requests_log.write(f"{method} {h.path}\n")

    site._record = logged
    site.start()
    Path(args.url_file + ".tmp").write_text(site.base)
    os.replace(args.url_file + ".tmp", args.url_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        if os.getppid() != args.parent:  # the smoke died without stopping us
            break
    site.stop()
    return 0


class Server:
    def __init__(self, work: Path):
        self.work, self.proc, self.base = work, None, None
        self.url_file = work / "server.url"
        self.requests = work / "server-requests.log"

    def start(self) -> str:
        self.proc = subprocess.Popen([sys.executable, __file__, "_serve", "--root", str(self.work / "serve"),
                                      "--url-file", str(self.url_file), "--requests", str(self.requests),
                                      "--parent", str(os.getpid())],
                                     stdout=open(self.work / "server.log", "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 60
        while not self.url_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the file server exited ({self.proc.returncode}): "
                                   f"{(self.work / 'server.log').read_text()[-2000:]}")
            if time.time() > deadline:
                raise RuntimeError("the file server did not start within 60 s")
            time.sleep(0.1)
        self.base = self.url_file.read_text().strip()
        log(f"file server pid {self.proc.pid} at {self.base}")
        return self.base

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        log(f"file server pid {self.proc.pid} stopped")

    def requested(self) -> list[str]:
        return self.requests.read_text().splitlines() if self.requests.exists() else []


# ------------------------------------------------------------------ disk use
class DiskSampler(threading.Thread):
    """The folder's disk use (allocated blocks, as du) every `every` seconds; keeps the peak.

    After each sample it deletes the resumable checkpoint (ckpt/, not a declared output) of
    every run whose training has finished (run.json, the train job's last file, exists): at
    the papers' widths a checkpoint is 2-3 times its model (weights + optimizer state), about
    0.45 GB for a ResNet-101, and a finished run never reads it again."""

    def __init__(self, folder: Path, runs: Path | None = None, every: float = 1.0):
        super().__init__(daemon=True)
        self.folder, self.runs, self.every, self.peak, self.samples = folder, runs, every, 0, 0
        self.pruned_bytes, self.pruned_runs = 0, 0
        self._halt = threading.Event()

    @staticmethod
    def usage(folder: Path) -> int:
        total = 0
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass  # a temporary file renamed away meanwhile
        return total

    def prune(self) -> None:
        if self.runs is None or not self.runs.is_dir():
            return
        for run_json in self.runs.glob("*/*/*/*/run.json"):
            ckpt = run_json.parent / "ckpt"
            if ckpt.is_dir():
                size = self.usage(ckpt)
                shutil.rmtree(ckpt, ignore_errors=True)
                self.pruned_bytes += size
                self.pruned_runs += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.usage(self.folder))
            self.samples += 1
            self.prune()
            self._halt.wait(self.every)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.usage(self.folder))
        self.prune()
        return self.peak


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


# ------------------------------------------------------------------ the run
def prepare_folder(work: Path) -> None:
    work = work.resolve()
    if work.exists():
        if not (work / MARKER).exists():
            raise SystemExit(f"paper-smoke: {work} exists and was not made by this script (no {MARKER} in it); "
                             "give another --dir or delete it yourself")
        shutil.rmtree(work)
        log(f"deleted the previous run's folder {work}")
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by scripts/paper_smoke.py; deleted at the start of its next run\n")


def build_files(work: Path, paper: dict) -> dict:
    """Write every served file under work/serve/; returns {source: {archive: (path, md5)}, "weights": ...}."""
    rng = np.random.default_rng(2024)
    sources = sorted({ds["source"] for ds in paper["datasets"].values() if not ds.get("root")})
    out: dict = {}
    for source in sources:
        out[source] = {}
        for name, data in ARCHIVE_BUILDERS[source](rng).items():
            path = work / "serve" / source / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            out[source][name] = (path, hashlib.md5(data).hexdigest())
    out["weights"] = {}
    for name, data in weight_files(paper, rng).items():
        from segbench.weights import REGISTRY

        path = work / "serve" / "weights" / REGISTRY[name].file  # the publisher's file name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out["weights"][name] = (path, hashlib.sha256(data).hexdigest())
    return out


def write_overlay(work: Path, paper: dict, files: dict, base: str) -> Path:
    creds = work / "cityscapes-login.json"
    creds.write_text(json.dumps({"username": CS_USER, "password": CS_PASSWORD}))
    creds.chmod(0o600)
    datasets = {}
    for name, ds in paper["datasets"].items():
        if ds.get("root"):
            continue
        if ds["source"] == "cityscapes":
            datasets[name] = {"download": {"site": base, "credentials": str(creds)}}
        else:
            archives = files[ds["source"]]
            datasets[name] = {"download": {
                "urls": {a: f"{base}/{ds['source']}/{a}" for a in archives},
                "md5": {a: md5 for a, (_, md5) in archives.items()}}}
    overlay: dict = {"datasets": datasets}
    if files["weights"]:
        overlay["weights"] = {"dir": f"{smoke_results()}/weights", "sources": {
            name: {"url": f"{base}/weights/{path.name}", "sha256": sha} for name, (path, sha) in files["weights"].items()}}
    path = work / "OVERLAY.yaml"
    path.write_text("# generated by scripts/paper_smoke.py: the 127.0.0.1 addresses and checksums of this run's files\n"
                    + yaml.safe_dump(overlay, sort_keys=False))
    return path


def smoke_results() -> str:
    return yaml.safe_load(OVERRIDE.read_text())["results"]


def check_small(configfiles: list[Path]):
    """The merged config must be the miniature one: 1 epoch, batch 2, 64x64 crops, 1 thread for
    every run (a model or dataset entry of paper.yaml that sets one of these wins over the
    override's `train:` and must be overridden there too)."""
    from snakemake.utils import update_config

    from segbench.config import validate_config
    from segbench.plan import Plan

    merged: dict = {}
    for f in configfiles:
        update_config(merged, yaml.safe_load(f.read_text()))
    plan = Plan(validate_config(merged))
    want = {"epochs": 1, "batch_size": 2, "crop": [64, 64], "threads": 1, "workers": 0}
    bad = sorted({f"{r.dataset}/{r.model}: {k}={plan.train_spec(r.dataset, r.model)[k]}"
                  for r in plan.runs for k, v in want.items() if plan.train_spec(r.dataset, r.model)[k] != v})
    if bad:
        raise SystemExit("paper-smoke: the override leaves runs at paper scale (set these in "
                         f"{OVERRIDE.relative_to(ROOT)}):\n  " + "\n  ".join(bad))
    log(f"{len(plan.runs)} runs in {len(plan.studies)} studies, each 1 epoch of batch 2 on 64x64 crops")
    return plan


def snakemake_cmd(work: Path, configfiles: list[Path], cores: int, *extra: str) -> list[str]:
    return [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(work), "--cores", str(cores), *extra, "--configfile", *map(str, configfiles)]


def job_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(NO_ALBUMENTATIONS_UPDATE="1", MPLBACKEND="Agg", SEGBENCH_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return env


def time_sinks(results: Path, top: int = 8) -> str:
    """Seconds per step (rule folder of results/benchmarks) and the longest jobs."""
    per_step: dict[str, float] = {}
    jobs = []
    for p in (results / "benchmarks").rglob("*.tsv"):
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        s = float(rows[-1]["s"])
        rel = p.relative_to(results / "benchmarks").with_suffix("").as_posix()
        step = rel.split("/")[0] if not rel.startswith("mlflow/") else "/".join(rel.split("/")[:2])
        per_step[step] = per_step.get(step, 0.0) + s
        jobs.append((s, rel))
    lines = ["job seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(per_step.items(), key=lambda x: -x[1]))]
    lines += [f"  {s:6.1f} s  {rel}" for s, rel in sorted(jobs, reverse=True)[:top]]
    return "\n".join(lines)


def verify(work: Path, plan, files: dict, server: Server) -> list[str]:
    """Every check after the run; returns the problems (none: pass)."""
    from segbench.report.outputs import study_outputs

    results = work / plan.results
    problems = []
    # every study's tables and figures (the declared outputs of its report), paper tables named
    for study in plan.studies:
        runs = [plan.report_run(study, r) for r in plan.studies[study]]
        spec = plan.study_spec(study)
        expected = study_outputs(spec, runs)
        missing = [rel for rel in expected if not (results / "studies" / study / rel).is_file()
                   or (results / "studies" / study / rel).stat().st_size == 0]
        papers = sorted(rel for rel in expected if re.match(r"tables/(paper_|cross_study)", rel) and rel.endswith(".md"))
        problems += [f"study {study}: {rel} missing or empty" for rel in missing]
        log(f"study {study}: {len(expected) - len(missing)}/{len(expected)} report files; "
            f"paper tables: {', '.join(Path(p).name for p in papers) or 'none (the study reproduces no paper table)'}")
        if spec.get("paper") and not any("paper_tables" in p for p in papers):
            problems.append(f"study {study}: declares paper {spec['paper']!r} but no paper table")
    # MLflow: every record logged, none skipped
    records = sorted((results / "mlflow").rglob("*.json"))
    want = 1 + len(plan.runs) + len(plan.studies)
    not_logged = [p for p in records if json.loads(p.read_text()).get("status") != "logged"]
    if len(records) != want or not_logged:
        problems.append(f"MLflow: {len(records)} records (want {want}), not logged: "
                        f"{[str(p.relative_to(results)) for p in not_logged][:5]}")
    # downloads: every served archive was fetched, verified and extracted; Cityscapes logged in
    asked = server.requested()
    if "POST /login" not in asked:
        problems.append("the Cityscapes stand-in saw no login")
    for source, archives in files.items():
        if source == "weights":
            continue
        for name in archives:
            if not (results / "downloads" / source / f"{name}.verified").is_file():
                problems.append(f"{source}/{name}: no .verified stamp")
            if source != "cityscapes" and f"GET /{source}/{name}" not in asked:
                problems.append(f"{source}/{name} was never downloaded from the server")
        if not (results / "raw" / source).is_dir():
            problems.append(f"{source}: not extracted")
    for name, (path, sha) in files["weights"].items():
        fetched = results / "weights" / path.name
        if f"GET /weights/{path.name}" not in asked:
            problems.append(f"pretrained checkpoint {name} was never fetched from the server")
        elif not fetched.is_file() or hashlib.sha256(fetched.read_bytes()).hexdigest() != sha:
            problems.append(f"pretrained checkpoint {name}: {fetched} missing or not the served file")
    # every run whose model starts from a registered checkpoint loaded the served file
    served = {name: sha for name, (_, sha) in files["weights"].items()}
    started = 0
    for run in plan.runs:
        source = (plan.cfg["models"][run.model].get("params") or {}).get("pretrained")
        if source not in served:
            continue
        got = (json.loads((work / plan.run_dir(run) / "run.json").read_text()).get("pretrained") or {}).get("sha256")
        if got != served[source]:
            problems.append(f"run {run.key}: run.json says pretrained sha256 {got}, the served {source} is {served[source]}")
        started += 1
    if served:
        log(f"pretrained: {started} runs started from the served {', '.join(served)} checkpoints")
    for name, ds in plan.cfg["datasets"].items():
        meta = results / "data" / name / "meta.json"
        if not meta.is_file():
            problems.append(f"dataset {name}: not prepared")
    return problems


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    sp = sub.add_parser("_serve")  # internal: the file server
    sp.add_argument("--root", required=True)
    sp.add_argument("--url-file", required=True)
    sp.add_argument("--requests", required=True)
    sp.add_argument("--parent", type=int, required=True)
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                    help=f"the work folder, deleted at the start and kept at the end (default {DEFAULT_DIR})")
    ap.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    a = ap.parse_args(argv)
    if a.cmd == "_serve":
        return serve(a)

    t0 = time.time()
    work = a.dir.resolve()
    prepare_folder(work)
    paper = yaml.safe_load(PAPER.read_text())
    log(f"work folder {work}; building miniature archives in the publishers' layouts")
    files = build_files(work, paper)
    for source, archives in files.items():
        for name, (path, _) in archives.items():
            log(f"  {source}/{name}: {path.stat().st_size / 1e3:.0f} KB")
    if not files["weights"]:
        log("pretrained checkpoints: paper.yaml's models name no registered `pretrained:` backbone; none served, "
            "fetch_weights NOT TESTED")

    server = Server(work)
    sampler = None
    status = 1
    # a TERM (a CI time-out) ends the run like Ctrl-C: Snakemake is interrupted, the server stopped
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        base = server.start()
        overlay = write_overlay(work, paper, files, base)
        configfiles = [PAPER, OVERRIDE, overlay]
        plan = check_small(configfiles)
        results = work / plan.results
        env = job_env()
        dry = subprocess.run(snakemake_cmd(work, configfiles, a.cores, "-n"), capture_output=True, text=True,
                             env=env, cwd=work)
        m = re.search(r"^total\s+(\d+)\s*$", dry.stdout + dry.stderr, re.M)
        if dry.returncode != 0 or not m:
            log(f"the dry run failed ({dry.returncode}):\n{(dry.stdout + dry.stderr)[-4000:]}")
            return 1
        jobs = int(m.group(1))
        log(f"{jobs} jobs to run (snakemake -n); running them with --cores {a.cores}, log {work / 'snakemake.log'}")
        sampler = DiskSampler(work, runs=results / "runs")
        sampler.start()
        t1 = time.time()
        log_path = work / "snakemake.log"
        with open(log_path, "w") as f:
            proc = subprocess.Popen(snakemake_cmd(work, configfiles, a.cores, "--keep-going"), stdout=f,
                                    stderr=subprocess.STDOUT, env=env, cwd=work)
            try:
                proc.wait()
            except BaseException:
                proc.send_signal(signal.SIGINT)  # Snakemake stops its jobs and removes their outputs
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
        run_wall = time.time() - t1
        peak = sampler.stop()
        text = log_path.read_text()
        done = re.findall(r"^(\d+) of (\d+) steps \((\d+)%\) done", text, re.M)
        print(time_sinks(results), flush=True)
        if proc.returncode != 0:
            errors = re.findall(r"^Error in rule (\S+):", text, re.M)
            ran = int(done[-1][0]) if done else 0
            log(f"snakemake FAILED (exit {proc.returncode}): {len(errors)} failed jobs (rules "
                f"{', '.join(sorted(set(errors))) or '?'}), {ran} of {jobs} jobs done; log: {log_path}")
            for block in text.split("Error in rule")[1:4]:
                for logfile in re.findall(r"^\s+log: (\S+)", block, re.M)[:1]:
                    path = work / logfile.rstrip(",")
                    if path.is_file():
                        print(f"== {path}\n{path.read_text()[-3000:]}", file=sys.stderr)
            print(text[-3000:], file=sys.stderr)
            return 1
        ran = int(done[-1][0]) if done else 0
        problems = [] if ran == jobs else [f"snakemake ran {ran} of the {jobs} jobs the dry run listed"]
        problems += verify(work, plan, files, server)
        again = subprocess.run(snakemake_cmd(work, configfiles, a.cores, "-n"), capture_output=True, text=True,
                               env=env, cwd=work)
        if again.returncode != 0 or "Nothing to be done" not in again.stdout + again.stderr:
            problems.append("a second dry run still finds work:\n" + (again.stdout + again.stderr)[-2000:])
        du = DiskSampler.usage(work)
        log(f"checkpoints of finished runs deleted as they finished: {sampler.pruned_runs} runs, "
            f"{gb(sampler.pruned_bytes)}")
        log(f"{ran} of {jobs} jobs done in {run_wall / 60:.1f} min (snakemake --cores {a.cores}); "
            f"{(time.time() - t0) / 60:.1f} min in all; peak disk use of {work}: {gb(peak)} "
            f"({sampler.samples} samples, 1 s apart), at the end {gb(du)}")
        if problems:
            log("FAILED:\n  " + "\n  ".join(problems))
            return 1
        log(f"PASS: all {jobs} jobs of workflow/configs/paper.yaml on miniature data; results in {results}")
        status = 0
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        server.stop()
        if status != 0:
            log(f"paper-smoke failed; everything is kept in {work}")


if __name__ == "__main__":
    sys.exit(main())
