"""The bad-input catalogue: every kind of bad input segbench refuses (or accepts with a note),
one row each, called through the entry point a user hits.

Each row of ``CASES`` says how the bad input is built, which entry point meets it and what the
message must hold: the culprit (a file path, a config key or value, an archive member) and the
remedy (what to do). A row whose ``error`` is ``None`` is input segbench accepts on purpose,
with a note; its ``accept`` check says what it does with it.

Entry points (``entry``):

=============  =============================================================================
``config``     ``segbench check-config FILE`` (what the Snakefile runs at start-up: load + validate)
``prepare``    ``segbench prepare SOURCE --root ... --out ...``
``dataset``    the training/evaluation Dataset's ``__getitem__`` over a prepared folder
``download``   ``segbench download ...``
``verify``     ``segbench verify ...``
``extract``    ``segbench extract ...``
``serve``      the web app's upload check (``serve.inference.decode_image``)
=============  =============================================================================

Decisions for images (``segbench.data.images`` implements them):

* greyscale (L) and RGBA images are accepted and converted to RGB when read (grey copied to
  R, G and B; alpha dropped); ``prepare`` prints one warning per kind naming a file, the
  Dataset one note per kind and process;
* 16-bit images (grey or colour) are refused by ``prepare`` and the Dataset: Pillow would
  clip 16-bit grey to white, and how to scale the values is the user's call. The web app,
  which shows its result to the person who sent the image, scales them to 8 bits with a note;
* an empty, truncated or corrupt file is refused naming the file, at ``prepare`` (a PNG's
  checksums are read, a JPEG decoded at 1/8 scale) and again if it is damaged afterwards,
  at training time. It never becomes a black image;
* an image or label whose size differs from its partner is refused (prepare and Dataset);
* a file with the wrong extension (``_leftImg8bit.jpg`` where Cityscapes has ``.png``) is
  named with the extension the layout expects; a label holding JPEG data under a ``.png``
  name is refused (the lossy compression changes the ids).

Decisions for config files (``segbench.config`` implements them; the workflow's start-up gives
the same message, :func:`test_snakemake_start_up_gives_the_check_config_message`):

* numbers are finite; integers are written as integers (2, not 2.0 or true) and are at most
  2**32 - 1 (seeds included: training seeds torch with seed x 100003 + epoch), some keys less;
* names (datasets, models, losses, studies, ablations, grids and generated entries) are 1 to 64
  ASCII letters, digits, _ . - , so that each is a path component on any file system, and do
  not end in a piece repeated 20 times (Snakemake's wildcards refuse that);
* YAML merge keys (``<<: *anchor``) are read as Snakemake reads them, a UTF-8 byte-order mark is
  skipped; a key given twice, a file that is not UTF-8, not a mapping, or that expands to more
  than 100,000 values through aliases is refused. A file Snakemake itself cannot read (a folder,
  non-UTF-8 bytes, a list) stops Snakemake before segbench's check: ``segbench check-config``
  names it.

"""

from __future__ import annotations

import copy
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import MINIMAL_CONFIG
from datasets_support import CityscapesSite, FileServer, jpg, md5, png, tar_bytes, zip_bytes
from PIL import Image

from segbench.cli import main
from segbench.config import ConfigError
from segbench.data import DataError

USER, PASSWORD = "catalogue@example.org", "Cat-Pa55word-xyz"
H, W = 32, 64  # every image of the miniature trees


# ============================================================== builders of bad input
class Ctx:
    """What a case's builder gets: a fresh folder, pytest's monkeypatch, a way to clean up."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp, self.mp = tmp, monkeypatch
        self.cleanups: list[Callable[[], None]] = []

    def defer(self, fn: Callable[[], None]) -> None:
        self.cleanups.append(fn)


def noise(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def label_ids(h: int = H, w: int = W) -> np.ndarray:
    """Cityscapes label ids: road (7), sidewalk (8), car (26)."""
    ids = np.full((h, w), 7, np.uint8)
    ids[: h // 3] = 8
    ids[h // 2:, w // 2:] = 26
    return ids


def cs_paths(root: Path, split: str, city: str, n: int) -> tuple[Path, Path]:
    stem = f"{city}_{n:06d}_000019"
    return (root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
            root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def cs_tree(ctx: Ctx) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """A valid miniature Cityscapes tree: one train (aachen) and one val (lindau) frame."""
    root = ctx.tmp / "cityscapes"
    frames = {}
    for i, (split, city) in enumerate((("train", "aachen"), ("val", "lindau"))):
        img, lab = cs_paths(root, split, city, i)
        write(img, png(noise(seed=i)))
        write(lab, png(label_ids()))
        frames[split] = (img, lab)
    return root, frames


def prepare_cs(root: Path, out: Path) -> Callable[[], int]:
    return lambda: main(["prepare", "cityscapes", "--root", str(root), "--out", str(out), "--allow-partial",
                         "--quiet"])


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG: grey for [H, W], RGB for [H, W, 3] (Pillow writes no 16-bit colour PNG)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array.astype(np.uint16)))
    assert ok
    return buf.tobytes()


def image_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """[H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA, as ``fmt``."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def corrupted(data: bytes) -> bytes:
    """The same length, 200 bytes in the middle of the pixel data overwritten."""
    b = bytearray(data)
    mid = len(b) // 2
    b[mid:mid + 200] = bytes((i * 37 + 11) % 256 for i in range(200))
    return bytes(b)


# -- prepare on a Cityscapes tree with one file replaced
def cs_with(image: bytes | None = None, label: bytes | None = None, *, split: str = "train"):
    """A builder: the valid tree with the ``split`` frame's image and/or label replaced."""

    def build(ctx: Ctx):
        root, frames = cs_tree(ctx)
        img, lab = frames[split]
        if image is not None:
            img.write_bytes(image)
        if label is not None:
            lab.write_bytes(label)
        return prepare_cs(root, ctx.tmp / "out"), [str(lab if label is not None else img)]

    return build


# -- ADE20K layout (JPEG images)
def ade_tree(ctx: Ctx, image: bytes | None = None, label: bytes | None = None):
    root = ctx.tmp / "ade"
    paths = {}
    for i, (folder, stem) in enumerate((("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001"))):
        img = write(root / "images" / folder / f"{stem}.jpg", jpg(H, W, seed=i))
        lab = write(root / "annotations" / folder / f"{stem}.png", png(np.full((H, W), 3, np.uint8)))
        paths[folder] = (img, lab)
    img, lab = paths["training"]
    if image is not None:
        img.write_bytes(image)
    if label is not None:
        lab.write_bytes(label)
    run = lambda: main(["prepare", "ade20k", "--root", str(root), "--out", str(ctx.tmp / "out"),  # noqa: E731
                        "--allow-partial", "--quiet"])
    return run, img, lab


# -- a prepared folder whose files are damaged afterwards: the Dataset meets them at training time
def prepared(ctx: Ctx) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    root, frames = cs_tree(ctx)
    out = ctx.tmp / "prepared"
    assert prepare_cs(root, out)() == 0
    import csv

    with open(out / "manifest.csv", newline="") as f:
        rows = {r["split"]: (out / r["image"], out / r["label"]) for r in csv.DictReader(f)}
    return out, rows


def dataset_item(out: Path, split: str = "train", index: int = 0):
    from segbench.data.dataset import SegmentationDataset

    return lambda: SegmentationDataset(out / "manifest.csv", split)[index]


def after_prepare(change: Callable[[Path, Path], Path], split: str = "train"):
    """A builder: prepare the valid tree, then ``change(image, label)`` (returns the culprit)."""

    def build(ctx: Ctx):
        out, rows = prepared(ctx)
        img, lab = rows[split]
        culprit = change(img, lab)
        return dataset_item(out, split), [str(culprit)]

    return build


# -- config files
def config_file(change: Callable[[dict], Any], text: Callable[[str], str] | None = None):
    def build(ctx: Ctx):
        raw = copy.deepcopy(MINIMAL_CONFIG)
        change(raw)
        body = yaml.safe_dump(raw, sort_keys=False)
        if text:
            body = text(body)
        path = ctx.tmp / "config.yaml"
        path.write_text(body)
        return (lambda: main(["check-config", str(path)])), [str(path)]

    return build


def set_key(path: str, value: Any) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        *parents, leaf = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value

    return change


def duplicate_model_key(body: str) -> str:
    """The models section written with `unet:` twice (YAML loaders keep the last silently)."""
    return body.replace("models:\n", "models:\n  unet:\n    arch: segnet\n", 1)


def grid_clash(raw: dict) -> None:
    raw["losses"]["ce_label_smoothing0.1"] = {"type": "ce", "label_smoothing": 0.1}
    raw["grids"] = {"losses": {"ce": {"base": {"type": "ce"}, "product": {"label_smoothing": [0.1, 0.2]}}}}


def config_bytes(data: bytes, name: str = "config.yaml"):
    """A config file holding exactly ``data`` (not built from the minimal config)."""
    def build(ctx: Ctx):
        path = write(ctx.tmp / name, data)
        return (lambda: main(["check-config", str(path)])), [str(path)]

    return build


def config_folder(ctx: Ctx):
    """A folder given where the config file belongs."""
    path = ctx.tmp / "configs"
    path.mkdir()
    return (lambda: main(["check-config", str(path)])), [str(path)]


def rename_model(new: str) -> Callable[[dict], None]:
    """models.unet renamed to ``new`` (and the study naming it)."""
    def change(raw: dict) -> None:
        raw["models"] = {(new if k == "unet" else k): v for k, v in raw["models"].items()}
        raw["studies"]["unet_segnet"]["models"] = [new, "segnet"]

    return change


def long_grid_name(raw: dict) -> None:
    raw["grids"] = {"losses": {"ce_" + "x" * 50: {"base": {"type": "ce"}, "product": {"label_smoothing": [0.1]}}}}


def merge_keys(body: str) -> str:
    """segnet written as a YAML merge of unet's entry (`<<: *unet`) overriding `arch`."""
    assert "  unet:\n    arch: unet\n" in body and "  segnet:\n    arch: segnet\n" in body
    body = body.replace("  unet:\n    arch: unet\n", "  unet: &unet\n    arch: unet\n", 1)
    return body.replace("  segnet:\n    arch: segnet\n    params:\n      width: 16\n",
                        "  segnet:\n    <<: *unet\n    arch: segnet\n", 1)


def merge_then_duplicate(body: str) -> str:
    """A merge key beside a key given twice: the merge is fine, the repeat is not."""
    merged = "    <<: *unet\n    arch: segnet\n"
    return merge_keys(body).replace(merged, merged + "    arch: unet\n")


def merged_segnet_is_segnet(ctx: Ctx, culprits: list[str], out: str) -> None:
    from segbench.config import load_config

    assert f"{culprits[0]}: valid" in out and "segnet" in out
    text = Path(culprits[0]).read_text()
    assert "<<: *unet" in text
    # the merged entry as Snakemake's own loader (PyYAML's FullLoader) reads it: unet's keys, arch overridden
    assert load_config(culprits[0])["models"]["segnet"] == {"arch": "segnet", "params": {"width": 16}}
    assert yaml.load(text, Loader=yaml.FullLoader)["models"]["segnet"] == {"arch": "segnet", "params": {"width": 16}}


def bom_is_ignored(ctx: Ctx, culprits: list[str], out: str) -> None:
    assert Path(culprits[0]).read_bytes().startswith(b"\xef\xbb\xbf")
    assert f"{culprits[0]}: valid" in out and "unet" in out


#: "billion laughs": 9 levels of 9 aliases, 9**9 = 387 million strings once expanded
ALIAS_BOMB = "\n".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["datasets: {d: {source: synthetic}}", "models: {m: {arch: unet}}", "losses: {c: {type: ce}}",
       "studies: {s: {datasets: [d], models: [m], losses: [c], description: *l8}}"]).encode() + b"\n"


# -- archives
def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ok = tarfile.TarInfo("data/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        info.size = 1 if kind == tarfile.REGTYPE else 0
        tf.addfile(info, io.BytesIO(b"x") if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


BIG = {"top/a.bin": bytes(range(256)) * 400, "top/b.bin": np.random.default_rng(1).bytes(120_000)}


def extract_of(name: str, data: bytes):
    def build(ctx: Ctx):
        archive = write(ctx.tmp / name, data)
        return (lambda: main(["extract", str(archive), "--to", str(ctx.tmp / "out"), "--quiet"])), [archive.name]

    return build


def corrupt_zip_member() -> bytes:
    z = bytearray(zip_bytes(BIG))
    at = z.find(b"top/b.bin") + 1000  # inside b.bin's (stored as incompressible) data
    z[at:at + 64] = bytes(64)
    return bytes(z)


def disk_usage_free(ctx: Ctx, free: int) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    ctx.mp.setattr(shutil, "disk_usage", lambda path: usage(10 * free + 1, 9 * free + 1, free))


def extract_disk_full(ctx: Ctx):
    archive = write(ctx.tmp / "big.tar", tar_bytes({"big/file.bin": bytes(3 << 20)}))
    disk_usage_free(ctx, 40 << 20)  # 40 MB free; 3 MB + the 64 MB margin needed
    target = ctx.tmp / "out"
    return (lambda: main(["extract", str(archive), "--to", str(target), "--quiet"])), [
        "big.tar", str(target), "needs 3.0 MB", "only 40.0 MB is free"]


def download_disk_full(ctx: Ctx):
    server = FileServer().start()
    server._httpd.handle_error = lambda request, address: None  # the client hangs up at once: no traceback
    ctx.defer(server.stop)
    server.files["/f/ADEChallengeData2016.zip"] = bytes(5 << 20)
    disk_usage_free(ctx, 1 << 20)
    dest = ctx.tmp / "dl"
    return (lambda: main(["download", "ade20k", "--dir", str(dest), "--quiet", "--url",
                          f"ADEChallengeData2016.zip={server.url('/f/ADEChallengeData2016.zip')}"])), [
        "ADEChallengeData2016.zip", str(dest), "needs 5.0 MB", "only 1.0 MB is free"]


def extract_enospc(ctx: Ctx):
    import errno

    from segbench.data import download as dl

    archive = write(ctx.tmp / "a.zip", zip_bytes(BIG))

    def full(src, dst, bar):
        dst.write_bytes(b"partial")
        dst.unlink()
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    ctx.mp.setattr(dl, "_copy", full)
    target = ctx.tmp / "out"
    return (lambda: main(["extract", str(archive), "--to", str(target), "--quiet"])), ["a.zip", str(target)]


def verify_mismatch(ctx: Ctx):
    f = write(ctx.tmp / "ADEChallengeData2016.zip", b"not the archive")
    return (lambda: main(["verify", str(f), "--source", "ade20k", "--quiet"])), [
        f.name, "expected MD5 7328b3957e407ddae1d3cbf487f149ef", f"got {md5(b'not the archive')}"]


# -- credentials
def no_login(ctx: Ctx) -> None:
    for var in ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD"):
        ctx.mp.delenv(var, raising=False)
    ctx.mp.setenv("XDG_DATA_HOME", str(ctx.tmp / "xdg"))  # no csDownload login either


def cs_download(ctx: Ctx, *extra: str) -> Callable[[], int]:
    site = CityscapesSite(USER, PASSWORD)
    site.add_package("gtFine_trainvaltest.zip", zip_bytes({"gtFine/README": b"x"}))
    site.start()
    ctx.defer(site.stop)
    return lambda: main(["download", "cityscapes", "--dir", str(ctx.tmp / "dl"), "--site", site.base,
                         "--archive", "gtFine_trainvaltest.zip", "--no-input", "--quiet", *extra])


def credentials_missing(ctx: Ctx):
    no_login(ctx)
    return cs_download(ctx), ["no Cityscapes login found"]


def credentials_file(ctx: Ctx, text: str) -> Path:
    f = ctx.tmp / "login.json"
    f.write_text(text)
    f.chmod(0o600)
    return f


def credentials_wrong(ctx: Ctx):
    no_login(ctx)
    f = credentials_file(ctx, json.dumps({"username": USER, "password": "wrong-" + PASSWORD}))
    return cs_download(ctx, "--credentials", str(f)), [str(f), "refused the login"]


def credentials_half(ctx: Ctx):
    no_login(ctx)
    ctx.mp.setenv("CITYSCAPES_USERNAME", USER)
    return cs_download(ctx), ["CITYSCAPES_USERNAME is set but CITYSCAPES_PASSWORD is not"]


def credentials_broken(ctx: Ctx):
    no_login(ctx)
    f = credentials_file(ctx, '{"username": "%s", "password": ' % USER)
    return cs_download(ctx, "--credentials", str(f)), [str(f), "is not readable JSON"]


# -- serve
def upload(data: bytes):
    def build(ctx: Ctx):
        from segbench.serve.inference import decode_image

        return (lambda: decode_image(data)), []

    return build


# -- a run directory evaluated on a prepared dataset
def trained_run(ctx: Ctx, *, width: int = 4, classes: int = 19, saved_width: int | None = None) -> Path:
    """A run directory as training leaves it (run.json + model.pt of a width-``width`` U-Net)."""
    import torch

    from segbench.models import build_model

    run = ctx.tmp / "runs" / "cs" / "unet" / "ce" / "s0"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "run_key": "cs/unet/ce/s0", "dataset": "cs", "model": "unet", "loss": "ce", "seed": 0, "epochs": 1,
        "num_classes": classes,
        "class_names": [f"c{i}" for i in range(classes)],
        "config": {"model": {"name": "unet", "arch": "unet", "params": {"width": width}}}}))
    torch.save(build_model("unet", classes, width=saved_width or width).state_dict(), run / "model.pt")
    return run


def evaluate_with(change: Callable[[Path], list[str]] | None = None, **run_options):
    def build(ctx: Ctx):
        out, _ = prepared(ctx)
        run = trained_run(ctx, **run_options)
        culprits = change(run) if change else []
        return (lambda: main(["evaluate", str(run), "--data", str(out), "--quiet"])), culprits

    return build


def _truncate_model(run: Path) -> list[str]:
    (run / "model.pt").write_bytes(truncated((run / "model.pt").read_bytes(), 0.5))
    return [str(run / "model.pt")]


# ============================================================== checks of accepted input
def accepted_as_rgb(expect: Callable[[np.ndarray], np.ndarray], note: str):
    """prepare succeeded with a warning naming the file; the Dataset gives the converted RGB."""

    def check(ctx: Ctx, culprits: list[str], out: str) -> None:
        assert note in out and culprits[0] in out, out
        from segbench.data.dataset import SegmentationDataset, read_image

        ds = SegmentationDataset(ctx.tmp / "out" / "manifest.csv", "train")
        image, label, _ = ds[0]
        assert image.shape == (3, H, W) and label.shape == (H, W)
        rgb = read_image(culprits[0])
        np.testing.assert_array_equal(rgb, expect(np.asarray(Image.open(culprits[0]))))
        assert rgb.any(), "never a black image"

    return check


def grey_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def upload_16bit_scaled(ctx: Ctx, culprits: list[str], out: str, result: Any = None) -> None:
    assert result.rgb.shape == (H, W, 3) and int(result.rgb[0, 0, 0]) == round(40000 / 257)
    assert any("16-bit" in n for n in result.notes)


# ============================================================== the catalogue
CLI = "exit status 2"  # a command-line entry point: exits 2, the message on stderr


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    entry: str
    build: Callable[[Ctx], tuple[Callable[[], Any], list[str]]]
    #: the exception expected (``CLI``: exit status 2 with the message on stderr); None: accepted
    error: Any
    #: words of the remedy the message must hold (the culprit comes from ``build``)
    remedy: tuple[str, ...] = ()
    #: what segbench decided for this kind of input, where it is not plainly an error
    decision: str = ""
    #: accepted input: a check(ctx, culprits, stderr[, result])
    accept: Callable[..., None] | None = None
    #: strings that must never appear in the message (secrets)
    forbidden: tuple[str, ...] = ()
    #: config messages still lacking a remedy (strict xfail; segbench.config is edited elsewhere)
    xfail: str = ""


def _image_16bit_grey():
    return png16(np.full((H, W), 40000))


def _rgb_label() -> bytes:
    return png(np.repeat(label_ids()[..., None], 3, axis=2))


def _jpeg_label() -> bytes:
    return image_bytes(label_ids(), fmt="JPEG")


def _replace(data_of: Callable[[Path, Path], tuple[Path, bytes]]):
    def change(img: Path, lab: Path) -> Path:
        path, data = data_of(img, lab)
        path.write_bytes(data)
        return path

    return change


def _wrong_extension(ctx: Ctx):
    root, frames = cs_tree(ctx)
    img, lab = frames["train"]
    jpg_path = img.with_suffix(".jpg")
    Image.open(img).convert("RGB").save(jpg_path, format="JPEG")
    img.unlink()
    return prepare_cs(root, ctx.tmp / "out"), [str(jpg_path), "_leftImg8bit.png files"]


def _one_wrong_extension(ctx: Ctx):
    root, _ = cs_tree(ctx)
    img, lab = cs_paths(root, "train", "bremen", 4)
    write(lab, png(label_ids()))
    jpg_path = write(img.with_suffix(".jpg"), jpg(H, W))
    return prepare_cs(root, ctx.tmp / "out"), [str(lab), str(img), jpg_path.name]


def _orphan_image(ctx: Ctx):
    root, _ = cs_tree(ctx)
    img, lab = cs_paths(root, "train", "aachen", 5)
    write(img, png(noise()))
    return prepare_cs(root, ctx.tmp / "out"), [str(img), str(lab)]


def _orphan_label(ctx: Ctx):
    root, _ = cs_tree(ctx)
    img, lab = cs_paths(root, "val", "lindau", 6)
    write(lab, png(label_ids()))
    return prepare_cs(root, ctx.tmp / "out"), [str(lab), str(img)]


def _missing_split(ctx: Ctx):
    root, _ = cs_tree(ctx)
    import shutil

    shutil.rmtree(root / "leftImg8bit" / "val")
    shutil.rmtree(root / "gtFine" / "val")
    return prepare_cs(root, ctx.tmp / "out"), ["split 'val'", str(root / "leftImg8bit" / "val")]


def _empty_split(ctx: Ctx):
    root, frames = cs_tree(ctx)
    for p in frames["val"]:
        p.unlink()
    return prepare_cs(root, ctx.tmp / "out"), ["split 'val'", str(root / "leftImg8bit" / "val")]


def _root_missing(ctx: Ctx):
    root = ctx.tmp / "no-such-copy"
    return prepare_cs(root, ctx.tmp / "out"), [str(root)]


def _partial_copy(ctx: Ctx):
    root, _ = cs_tree(ctx)
    return (lambda: main(["prepare", "cityscapes", "--root", str(root), "--out", str(ctx.tmp / "out"), "--quiet"])), [
        "split 'train': 1 of the 2,975 published samples", str(root)]


def _ade_truncated_jpeg(ctx: Ctx):
    run, img, _ = ade_tree(ctx, image=truncated(jpg(H, W, seed=3)))
    return run, [str(img)]


def _ade_value_outside(ctx: Ctx):
    bad = np.full((H, W), 3, np.uint8)
    bad[0, 0] = 200
    run, _, lab = ade_tree(ctx, label=png(bad))
    return run, [str(lab), "200", "0..150"]


def _val_rows_missing(ctx: Ctx):
    out, _ = prepared(ctx)
    manifest = out / "manifest.csv"
    manifest.write_text("".join(line for line in manifest.read_text().splitlines(keepends=True)
                                if not line.startswith("val,")))
    from segbench.data.dataset import SegmentationDataset

    return (lambda: SegmentationDataset(manifest, "val")), [str(manifest), "split 'val'"]


def _class_outside_at_training(img: Path, lab: Path) -> Path:
    ids = np.asarray(Image.open(lab)).copy()
    ids[0, :3] = 40  # the prepared set has 19 classes
    lab.write_bytes(png(ids))
    return lab


CASES: list[Case] = [
    # ---------------------------------------------------------------- config
    Case("config-unknown-key", "config", "config", config_file(set_key("trian", {"epochs": 2})), CLI,
         ("unknown key 'trian'", "did you mean 'train'", "allowed keys:")),
    Case("config-unknown-nested-key", "config", "config",
         config_file(set_key("models.unet.params.widht", 8)), CLI,
         ("models.unet.params", "'widht'", "did you mean 'width'")),
    Case("config-wrong-type", "config", "config", config_file(set_key("train.epochs", "four")), CLI,
         ("train.epochs", "'four'", "expected integer")),
    Case("config-wrong-type-section", "config", "config", config_file(set_key("models", ["unet"])), CLI,
         ("'models'", "expected object")),
    Case("config-impossible-crop", "config", "config", config_file(set_key("train.crop", [100, 256])), CLI,
         ("train.crop[0]", "100", "multiple of 32")),
    Case("config-impossible-batch-size", "config", "config", config_file(set_key("train.batch_size", 0)), CLI,
         ("train.batch_size", "minimum of 1")),
    Case("config-impossible-eval-samples", "config", "config", config_file(set_key("eval.samples", 99)), CLI,
         ("eval.samples", "99", "maximum of 16")),
    Case("config-undefined-name", "config", "config",
         config_file(set_key("studies.unet_segnet.models", ["unet", "deeplab"])), CLI,
         ("'deeplab' is not defined under 'models'", "allowed values: unet, segnet")),
    Case("config-empty-matrix", "config", "config", config_file(set_key("studies.unet_segnet.models", [])), CLI,
         ("studies.unet_segnet.models", "at least one")),
    Case("config-no-studies", "config", "config", config_file(set_key("studies", {})), CLI,
         ("'studies'", "at least one")),
    Case("config-duplicate-in-matrix", "config", "config",
         config_file(set_key("studies.unet_segnet.models", ["unet", "segnet", "unet"])), CLI,
         ("studies.unet_segnet.models", "'unet'", "twice")),
    Case("config-duplicate-yaml-key", "config", "config", config_file(lambda raw: None, duplicate_model_key), CLI,
         ("duplicate key 'unet'", "line")),
    Case("config-duplicate-generated-name", "config", "config", config_file(grid_clash), CLI,
         ("grids.losses.ce", "'ce_label_smoothing0.1'", "already defined under 'losses'", "rename")),
    # numbers the schema's bounds let through, or that crash training later (issue 18, item 8)
    Case("config-nan-lr", "config", "config", config_file(set_key("train.lr", float("nan"))), CLI,
         ("train.lr", ".nan is not a finite number", "give a number")),
    Case("config-inf-lr", "config", "config", config_file(set_key("train.lr", float("inf"))), CLI,
         ("train.lr", ".inf is not a finite number", "give a number")),
    Case("config-negative-inf-lr", "config", "config", config_file(set_key("train.lr", float("-inf"))), CLI,
         ("train.lr", "-.inf is not a finite number", "give a number")),
    Case("config-zero-lr", "config", "config", config_file(set_key("train.lr", 0)), CLI,
         ("train.lr", "0 is less than or equal to the minimum of 0", "give a value above 0")),
    Case("config-negative-lr", "config", "config", config_file(set_key("train.lr", -0.01)), CLI,
         ("train.lr", "-0.01", "give a value above 0")),
    Case("config-negative-batch-size", "config", "config", config_file(set_key("eval.batch_size", -4)), CLI,
         ("eval.batch_size", "-4", "give a value 1 or more")),
    Case("config-inf-batch-size", "config", "config", config_file(set_key("train.batch_size", float("inf"))), CLI,
         ("train.batch_size", ".inf is not a finite number")),
    Case("config-float-epochs", "config", "config", config_file(set_key("train.epochs", 2.0)), CLI,
         ("train.epochs", "got 2.0", "write 2, without the decimal point")),
    Case("config-float-seed", "config", "config", config_file(set_key("studies.unet_segnet.seeds", [0, 1.0])), CLI,
         ("studies.unet_segnet.seeds[1]", "got 1.0", "write 1")),
    Case("config-float-enum-integer", "config", "config",
         config_file(set_key("losses.bal", {"type": "bal", "down": 2.0})), CLI,
         ("losses.bal.down", "got 2.0", "write 2")),
    Case("config-exponent-as-text", "config", "config",
         config_file(lambda raw: None, lambda body: body.replace("train:\n", "train:\n  lr: 1e-3\n", 1)), CLI,
         ("train.lr", "got '1e-3'", "needs a decimal point", "write 0.001")),
    Case("config-bool-epochs", "config", "config", config_file(set_key("train.epochs", True)), CLI,
         ("train.epochs", "expected integer, got True", "true/false are not numbers")),
    Case("config-huge-seed", "config", "config", config_file(set_key("studies.unet_segnet.seeds", [2**64])), CLI,
         ("studies.unet_segnet.seeds[0]", "18446744073709551616", "at most 4294967295", "smaller number")),
    Case("config-seed-above-2-32", "config", "config",
         config_file(set_key("datasets.synthetic.generate.seed", 2**32)), CLI,
         ("datasets.synthetic.generate.seed", "4294967296", "at most 4294967295")),
    Case("config-huge-integer-param", "config", "config", config_file(set_key("models.unet.params.width", 10**30)), CLI,
         ("models.unet.params.width", str(10**30), "at most 4294967295")),
    Case("config-huge-epochs", "config", "config", config_file(set_key("train.epochs", 10**6)), CLI,
         ("train.epochs", "1000000", "give a value at most 100000")),
    Case("config-huge-threads", "config", "config", config_file(set_key("profile.threads", 5000)), CLI,
         ("profile.threads", "5000", "at most 1024")),
    # names: each is a folder of every run's path (results/runs/<dataset>/<model>/<loss>/s<seed>)
    Case("config-name-too-long", "config", "config", config_file(rename_model("u" * 250)), CLI,
         ("config key 'models'", "u" * 250, "250 characters long; at most 64", "shorter name")),
    Case("config-name-path-separator", "config", "config", config_file(rename_model("runs/unet")), CLI,
         ("config key 'models'", "'runs/unet'", "ASCII letters, digits, _ . -", "rename it")),
    Case("config-name-parent-folder", "config", "config", config_file(rename_model("..")), CLI,
         ("config key 'models'", "'..'", "starting with a letter or digit", "rename it")),
    Case("config-name-unicode", "config", "config", config_file(rename_model("ünet")), CLI,
         ("config key 'models'", "'ünet'", "ASCII letters", "rename it")),
    Case("config-name-empty", "config", "config", config_file(rename_model("")), CLI,
         ("config key 'models'", "name ''", "1 to 64", "rename it")),
    Case("config-name-periodic", "config", "config", config_file(rename_model("unet" + "x" * 20)), CLI,
         ("config key 'models'", "'unet" + "x" * 20 + "'", "'x' repeated 20 times", "rename it")),
    Case("config-generated-name-too-long", "config", "config", config_file(long_grid_name), CLI,
         ("grids.losses.ce_" + "x" * 50 + ".product", "more than 64", "shorten")),
    # the file itself
    Case("config-empty-file", "config", "config", config_bytes(b""), CLI,
         ("the configuration is empty", "config.yaml")),
    Case("config-top-level-list", "config", "config", config_bytes(b"- datasets\n- models\n"), CLI,
         ("is a list, not a mapping of keys", "`datasets:`")),
    Case("config-top-level-scalar", "config", "config", config_bytes(b"datasets\n"), CLI,
         ("is a single string ('datasets'), not a mapping of keys", "`datasets:`")),
    Case("config-not-utf8", "config", "config",
         config_bytes(yaml.safe_dump(MINIMAL_CONFIG).replace("unet_segnet", "caf\xe9").encode("latin-1")), CLI,
         ("not UTF-8 text", "byte 0xe9 on line", "save the file as UTF-8")),
    Case("config-a-folder", "config", "config", config_folder, CLI,
         ("is a folder, not a config file", "config.yaml")),
    Case("config-tab-indent", "config", "config",
         config_file(lambda raw: None, lambda body: body.replace("  unet:\n", "\tunet:\n", 1)), CLI,
         ("not valid YAML", "line", "indent with spaces")),
    Case("config-alias-bomb", "config", "config", config_bytes(ALIAS_BOMB), CLI,
         ("values once its YAML aliases", "more than 100000", "fewer aliases")),
    Case("config-duplicate-key-beside-merge", "config", "config",
         config_file(lambda raw: None, merge_then_duplicate), CLI, ("duplicate key 'arch'", "line")),
    Case("config-merge-keys", "config", "config", config_file(lambda raw: None, merge_keys), None,
         decision="YAML 1.1 merge keys (`<<: *anchor`) are read as Snakemake reads them (the entry's own keys "
                  "override the merged ones); only a key the entry itself gives twice is refused",
         accept=merged_segnet_is_segnet),
    Case("config-utf8-bom", "config", "config",
         config_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(MINIMAL_CONFIG, sort_keys=False).encode()), None,
         decision="a UTF-8 byte-order mark is skipped, as YAML and Snakemake skip it", accept=bom_is_ignored),
    # ---------------------------------------------------------------- images
    Case("image-truncated-png", "image", "prepare", cs_with(image=truncated(png(noise()))), CLI,
         ("truncated or corrupt", "re-extract")),
    Case("image-corrupt-png-data", "image", "prepare", cs_with(image=corrupted(png(noise()))), CLI,
         ("truncated or corrupt", "re-extract")),
    Case("image-not-an-image", "image", "prepare", cs_with(image=b"<html>404 Not Found</html>\n" * 4), CLI,
         ("not an image file", "re-extract")),
    Case("image-zero-bytes", "image", "prepare", cs_with(image=b""), CLI, ("empty file (0 bytes)", "re-extract")),
    Case("image-truncated-jpeg", "image", "prepare", _ade_truncated_jpeg, CLI, ("truncated or corrupt", "re-extract")),
    Case("image-greyscale", "image", "prepare", cs_with(image=png(noise()[..., 0])), None,
         decision="accepted: grey copied to R, G and B, with a warning naming the file",
         accept=accepted_as_rgb(grey_to_rgb, "greyscale (mode L): converted to RGB")),
    Case("image-rgba", "image", "prepare",
         cs_with(image=image_bytes(np.dstack([noise(), np.full((H, W), 128, np.uint8)]))), None,
         decision="accepted: the alpha channel is dropped, with a warning naming the file",
         accept=accepted_as_rgb(lambda a: a[..., :3], "the alpha channel is dropped")),
    Case("image-16bit-grey", "image", "prepare", cs_with(image=_image_16bit_grey()), CLI,
         ("16-bit greyscale", "convert the file to 8-bit RGB"),
         decision="refused: Pillow would clip it to white; scaling is the user's call"),
    Case("image-16bit-rgb", "image", "prepare", cs_with(image=png16(noise().astype(np.uint16) * 257)), CLI,
         ("16-bit RGB PNG", "convert the file to 8-bit RGB"),
         decision="refused: Pillow would keep the high byte only"),
    Case("image-wrong-extension", "image", "prepare", _wrong_extension, CLI,
         ("another extension", "rename them if they are PNG files, else convert them to PNG"),
         decision="Cityscapes images are *_leftImg8bit.png; a .jpg beside the expected name is pointed out"),
    Case("image-wrong-extension-one-file", "image", "prepare", _one_wrong_extension, CLI,
         ("label without an image", "instead", "rename it if it is a PNG file, else convert it to PNG")),
    Case("image-truncated-at-training", "image", "dataset",
         after_prepare(_replace(lambda img, lab: (img, truncated(img.read_bytes())))), DataError,
         ("truncated or corrupt", "re-extract")),
    Case("image-16bit-at-training", "image", "dataset",
         after_prepare(_replace(lambda img, lab: (img, _image_16bit_grey()))), DataError,
         ("16-bit", "convert the file to 8-bit RGB")),
    Case("image-upload-empty", "image", "serve", upload(b""), "ImageRejected",
         ("the upload is empty", "choose an image")),
    Case("image-upload-truncated", "image", "serve", upload(truncated(png(noise()))), "ImageRejected",
         ("PNG image cannot be decoded", "truncated", "send the complete file again")),
    Case("image-upload-16bit", "image", "serve", upload(png16(np.full((H, W), 40000))), None,
         decision="accepted by the web app: scaled to 8 bits (value / 257) with a note in the answer",
         accept=upload_16bit_scaled),
    # ---------------------------------------------------------------- labels
    Case("label-id-outside-set", "label", "prepare",
         cs_with(label=png(np.where(label_ids() == 26, 200, label_ids()).astype(np.uint8))), CLI,
         ("contains label id 200", "valid ids: 0..33", "labelIds file from gtFine", "Fix or remove")),
    Case("label-value-outside-set-ade20k", "label", "prepare", _ade_value_outside, CLI,
         ("Fix or remove the files listed",)),
    Case("label-rgb", "label", "prepare", cs_with(label=_rgb_label()), CLI,
         ("3-channel RGB", "use the *_gtFine_labelIds.png files")),
    Case("label-16bit", "label", "prepare", cs_with(label=png16(label_ids())), CLI,
         ("16-bit", "expected single-channel 8-bit")),
    Case("label-jpeg-named-png", "label", "prepare", cs_with(label=_jpeg_label()), CLI,
         ("JPEG data, not PNG", "use the original PNG label")),
    Case("label-size-mismatch", "label", "prepare", cs_with(label=png(label_ids(16, 64))), CLI,
         ("label size 64x16 differs from image", "64x32", "of the same size")),
    Case("label-size-mismatch-at-training", "label", "dataset",
         after_prepare(_replace(lambda img, lab: (lab, png(np.zeros((16, 64), np.uint8))))), DataError,
         ("64x16", "run `segbench prepare` again")),
    Case("label-rgb-at-training", "label", "dataset",
         after_prepare(_replace(lambda img, lab: (lab, png(np.zeros((H, W, 3), np.uint8))))), DataError,
         ("has mode RGB", "run `segbench prepare` again")),
    Case("label-class-outside-set-at-training", "label", "dataset", after_prepare(_class_outside_at_training),
         DataError, ("contains id 40", "19 classes", "run `segbench prepare` again")),
    # ---------------------------------------------------------------- datasets
    Case("dataset-missing-split", "dataset", "prepare", _missing_split, CLI, ("is missing", "re-extract")),
    Case("dataset-orphan-image", "dataset", "prepare", _orphan_image, CLI,
         ("image without a label file", "Fix or remove the files listed")),
    Case("dataset-orphan-label", "dataset", "prepare", _orphan_label, CLI,
         ("label without an image", "Fix or remove the files listed")),
    Case("dataset-empty-split-folder", "dataset", "prepare", _empty_split, CLI,
         ("no {city}/*_leftImg8bit.png files", "re-extract")),
    Case("dataset-root-missing", "dataset", "prepare", _root_missing, CLI,
         ("does not exist", "point it at the folder that holds leftImg8bit/ and gtFine/")),
    Case("dataset-partial-copy", "dataset", "prepare", _partial_copy, CLI,
         ("2,974 missing", "re-extract the archives", "--allow-partial")),
    Case("dataset-split-rows-missing-at-training", "dataset", "dataset", _val_rows_missing, DataError,
         ("has no rows", "run `segbench prepare` again")),
    Case("dataset-file-deleted-at-training", "dataset", "dataset",
         after_prepare(lambda img, lab: (img.unlink(), img)[1]), DataError, ("file not found", "re-extract")),
    # ---------------------------------------------------------------- archives
    Case("archive-checksum-mismatch", "archive", "verify", verify_mismatch, CLI,
         ("was deleted", "run the download again")),
    Case("archive-truncated-zip", "archive", "extract", extract_of("a.zip", truncated(zip_bytes(BIG))), CLI,
         ("not a readable archive", "download it again")),
    Case("archive-truncated-tgz", "archive", "extract", extract_of("a.tgz", truncated(tar_bytes(BIG, "w:gz"))), CLI,
         ("not a readable archive", "download it again")),
    Case("archive-corrupt-member", "archive", "extract", extract_of("a.zip", corrupt_zip_member()), CLI,
         ("is damaged", "Bad CRC-32", "top/b.bin", "download it again")),
    Case("archive-path-traversal", "archive", "extract",
         extract_of("evil.zip", zip_bytes({"data/ok.txt": b"ok", "../evil.txt": b"x"})), CLI,
         ("refusing to extract", "'../evil.txt'", "'..'", "download it again")),
    Case("archive-absolute-path", "archive", "extract", extract_of("evil.tgz", tar_member("/tmp/evil.txt")), CLI,
         ("'/tmp/evil.txt': absolute path", "download it again")),
    Case("archive-symlink-out", "archive", "extract",
         extract_of("evil.tgz", tar_member("data/link", tarfile.SYMTYPE, "../../outside")), CLI,
         ("'data/link': symbolic link to '../../outside' points outside", "download it again")),
    Case("archive-unknown-type", "archive", "extract", extract_of("a.rar", b"Rar!\x1a\x07\x00"), CLI,
         ("unknown archive type", "expected .zip, .tar, .tgz or .tar.gz")),
    Case("archive-disk-full-extract", "archive", "extract", extract_disk_full, CLI,
         ("not enough disk space", "free some space")),
    Case("archive-disk-full-download", "archive", "download", download_disk_full, CLI,
         ("not enough disk space", "free some space")),
    Case("archive-disk-fills-during-extract", "archive", "extract", extract_enospc, CLI,
         ("the disk filled up", "no space left on device", "free some space", "run the same command again")),
    # ---------------------------------------------------------------- run directories (evaluate, serve)
    Case("run-model-truncated", "run", "evaluate", evaluate_with(_truncate_model), CLI,
         ("cannot be read as a state_dict", "train the run again")),
    Case("run-model-of-another-training", "run", "evaluate",
         evaluate_with(lambda run: [str(run / "model.pt"), str(run / "run.json")], saved_width=8), CLI,
         ("does not fit the model", "different trainings", "train the run again")),
    Case("run-evaluated-on-another-dataset", "run", "evaluate",
         evaluate_with(lambda run: [str(run), "7 classes", "19"], classes=7), CLI,
         ("evaluate it on the dataset it was trained on",)),
    # ---------------------------------------------------------------- credentials
    Case("credentials-missing", "credentials", "download", credentials_missing, CLI,
         ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD", "download.credentials", "root:")),
    Case("credentials-wrong", "credentials", "download", credentials_wrong, CLI,
         ("check the username and password",), forbidden=(USER, PASSWORD)),
    Case("credentials-half-set", "credentials", "download", credentials_half, CLI, ("set both",),
         forbidden=(USER,)),
    Case("credentials-file-broken", "credentials", "download", credentials_broken, CLI,
         ('{"username": "...", "password": "..."}',), forbidden=(USER,)),
]

GROUPS = ("config", "image", "label", "dataset", "archive", "credentials", "run")


def test_catalogue_covers_every_group():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids are unique"
    assert {c.group for c in CASES} == set(GROUPS)
    assert len([c for c in CASES if not c.xfail]) >= 24
    # the kinds the issue names, each present
    for word in ("unknown-key", "wrong-type", "impossible", "empty-matrix", "duplicate", "truncated", "corrupt",
                 "greyscale", "rgba", "16bit", "zero-bytes", "wrong-extension", "outside-set", "label-rgb",
                 "size-mismatch", "missing-split", "orphan", "empty-split", "checksum", "truncated-zip",
                 "path-traversal", "symlink-out", "disk-full", "credentials-missing", "credentials-wrong"):
        assert any(word in c.id for c in CASES), word


def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else []
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("SEGBENCH_NO_PROGRESS", "1")
    ctx = Ctx(tmp_path, monkeypatch)
    try:
        call, culprits = case.build(ctx)
        capsys.readouterr()
        if case.error is None:
            result = call()
            out = capsys.readouterr()
            assert result in (0, None) or case.entry == "serve", out.err
            args = (ctx, culprits, out.out + out.err) + ((result,) if case.entry == "serve" else ())
            assert case.accept is not None
            case.accept(*args)
            return
        if case.error is CLI:
            rc = call()
            captured = capsys.readouterr()
            assert rc == 2, f"exit status {rc}; stderr:\n{captured.err}\nstdout:\n{captured.out}"
            head = f"segbench {case_command(case)}: error: "
            assert head in captured.err, captured.err
            message = captured.err[captured.err.index(head):]  # the error, after any progress lines
        else:
            if case.error == "ImageRejected":
                from segbench.serve.inference import ImageRejected

                expected: Any = ImageRejected
            else:
                expected = case.error
            with pytest.raises(expected) as e:
                call()
            message = str(e.value)
    finally:
        for fn in reversed(ctx.cleanups):
            fn()
    for want in [*culprits, *case.remedy]:
        assert want in message, f"{want!r} missing from the message:\n{message}"
    for secret in case.forbidden:
        assert secret not in message, "a credential is quoted in the message"
    assert "Traceback" not in message


def case_command(case: Case) -> str:
    return {"config": "check-config"}.get(case.entry, case.entry)


# ============================================================== the same config at the workflow's start-up
ROOT = Path(__file__).resolve().parents[1]
#: Snakemake reads a --configfile itself, in its command line, before the Snakefile runs: a file
#: it cannot read as a mapping stops it there, with its own message (a traceback for a folder or
#: non-UTF-8 bytes, "Config file must be given as JSON or YAML with keys at top level." without
#: the file's name for a list), which no code of segbench's sees (snakemake/common/configfile.py)
SNAKEMAKE_READS_FIRST = "Snakemake loads --configfile before the Snakefile runs; `segbench check-config FILE` names it"
START_UP = ("config-nan-lr", "config-huge-seed", "config-float-epochs", "config-name-too-long", "config-alias-bomb",
            "config-duplicate-key-beside-merge", "config-merge-keys",
            *(pytest.param(c, marks=pytest.mark.xfail(reason=SNAKEMAKE_READS_FIRST, strict=True))
              for c in ("config-not-utf8", "config-a-folder", "config-top-level-list")))


@pytest.mark.parametrize("case_id", START_UP)
def test_snakemake_start_up_gives_the_check_config_message(case_id, tmp_path, monkeypatch, capsys):
    """`snakemake -n --configfile FILE` through the real Snakefile: the message of
    `segbench check-config FILE`, naming the file, and no traceback; accepted input plans runs."""
    import subprocess
    import sys

    case = next(c for c in CASES if c.id == case_id)
    call, culprits = case.build(Ctx(tmp_path, monkeypatch))
    config = culprits[0]
    capsys.readouterr()
    rc = call()
    err = capsys.readouterr().err
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path / "wd"), "--cores", "1", "-n", "--configfile", config],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"))
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    if case.error is None:
        assert rc == 0 and proc.returncode == 0, output
        assert "This was a dry-run" in output
        return
    assert rc == 2 and proc.returncode != 0, output
    message = err.split("segbench check-config: error: ", 1)[1].strip()
    assert message.startswith(config), message
    for line in message.splitlines():
        assert line.strip() in output, f"{line!r} missing from snakemake's output:\n{output}"


# ============================================================== beyond the message
def test_corrupt_image_is_never_read_as_zeros(tmp_path, monkeypatch):
    """Pillow's LOAD_TRUNCATED_IMAGES would fill a truncated image's missing rows with black:
    segbench never turns it on, and reads a truncated file as an error even if a library did."""
    from PIL import ImageFile

    from segbench.data.dataset import read_image

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    f = write(tmp_path / "x.png", truncated(png(noise())))
    with pytest.raises(DataError, match="x.png"):
        read_image(str(f))


def test_failed_prepare_leaves_no_manifest(tmp_path, monkeypatch):
    """A refused tree leaves no manifest.csv behind that a later job would trust."""
    ctx = Ctx(tmp_path, monkeypatch)
    root, frames = cs_tree(ctx)
    out = tmp_path / "out"
    assert prepare_cs(root, out)() == 0 and (out / "manifest.csv").is_file()
    frames["val"][0].write_bytes(truncated(frames["val"][0].read_bytes()))
    assert prepare_cs(root, out)() == 2
    assert not (out / "manifest.csv").exists() and not (out / "meta.json").exists()


def test_damaged_archive_leaves_no_half_written_member(tmp_path):
    archive = write(tmp_path / "a.zip", corrupt_zip_member())
    assert main(["extract", str(archive), "--to", str(tmp_path / "out"), "--quiet"]) == 2
    assert not (tmp_path / "out" / "top" / "b.bin").exists()


def test_config_error_is_a_config_error():
    """The config cases above go through the CLI; the library raises ConfigError."""
    from segbench.config import validate_config

    raw = copy.deepcopy(MINIMAL_CONFIG)
    raw["trian"] = {}
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        validate_config(raw)
