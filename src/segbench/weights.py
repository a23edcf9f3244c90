"""ImageNet-pretrained backbone checkpoints: the registered names, where their files live,
and the one step that downloads them.

A model's ``pretrained`` option (``DeepLabV3``, ``DeepLabV3PAC``, the ``van_fpn_*`` models)
is either a registered name of :data:`REGISTRY` or the path of a checkpoint file:

==========================  ==========================  ===========================================
name                        file                        published by
==========================  ==========================  ===========================================
``torchvision:resnet50``    resnet50-0676ba61.pth       torchvision (ResNet-50 V1, acc@1 76.13)
``torchvision:resnet101``   resnet101-63fe2227.pth      torchvision (ResNet-101 V1, acc@1 77.37)
``van:b0``                  van_tiny_754.pth.tar        VAN-Classification (VAN-Tiny = b0, 75.4)
``van:b1``                  van_small_811.pth.tar       VAN-Classification (VAN-Small = b1, 81.1)
``van:b2``                  van_base_828.pth.tar        VAN-Classification (VAN-Base = b2, 82.8)
==========================  ==========================  ===========================================

Checksums: torchvision's file names end in the first 8 hex digits of the file's SHA-256,
the only check torch.hub makes (``check_hash``); that prefix is all that is published, so
it is all :func:`fetch_weights` can check for them. The VAN files sit in Git LFS on Hugging
Face, whose pointers publish the full SHA-256 and the size (recorded below with the commit
that added each file); they are checked in full.

A registered name is looked up in the weights folder, :func:`weights_dir`: ``$SEGBENCH_WEIGHTS``
if set, else ``~/.cache/segbench/weights`` (the workflow sets the variable to the config's
``weights.dir`` for every job). Building a model never downloads: a missing file is an error
that says to run the workflow (its ``fetch_weights`` rule downloads it) or
``segbench fetch-weights NAME``. :func:`fetch_weights` downloads once, resumably (a ``.part``
file continued with HTTP Range, :func:`segbench.data.download.download_part`), checks the
SHA-256 and only then moves the file into place (``os.replace``); a mismatch deletes the
``.part`` file and names both hashes.

No torch here (the Snakefile and the config check import this module).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from segbench.catalog import ARCHITECTURES
from segbench.errors import UserError

__all__ = ["WeightsError", "Weights", "REGISTRY", "DEFAULT_DIR", "ENV", "weights_dir", "is_registered",
           "looks_like_path", "check_source", "registered_mismatch", "config_mismatch", "resolve", "sha256sum",
           "hash_matches", "fetch_weights"]

ENV = "SEGBENCH_WEIGHTS"
DEFAULT_DIR = "~/.cache/segbench/weights"


class WeightsError(UserError, ValueError):
    """A pretrained checkpoint that cannot be found, fetched or used; the message names the
    file or name and says what to do."""


@dataclass(frozen=True)
class Weights:
    """One registered checkpoint."""

    name: str
    #: file name in the weights folder (the publisher's own)
    file: str
    url: str
    #: the published SHA-256: 64 hex digits, or torchvision's 8-digit prefix
    sha256: str
    #: key layout of the file: ``torchvision_resnet`` or ``van`` (segbench.models.pretrained)
    family: str
    #: the backbone it fits, as the models' options (paper width only)
    arch: dict = field(default_factory=dict)
    #: published size in bytes, where known (Hugging Face LFS pointer)
    size: int | None = None
    #: where the checksum comes from
    checksum_source: str = ""


_TV = "https://download.pytorch.org/models/"
_HF = "https://huggingface.co/Visual-Attention-Network/{repo}/resolve/main/{file}"
_TV_NOTE = "torchvision: the file name's 8 hex digits are the SHA-256 prefix that torch.hub checks"
_HF_NOTE = "Hugging Face Git LFS pointer of Visual-Attention-Network/{repo}, commit {commit}"

REGISTRY: dict[str, Weights] = {w.name: w for w in (
    Weights("torchvision:resnet50", "resnet50-0676ba61.pth", _TV + "resnet50-0676ba61.pth", "0676ba61",
            "torchvision_resnet", {"depth": 50, "width": 64}, None, _TV_NOTE),
    Weights("torchvision:resnet101", "resnet101-63fe2227.pth", _TV + "resnet101-63fe2227.pth", "63fe2227",
            "torchvision_resnet", {"depth": 101, "width": 64}, None, _TV_NOTE),
    Weights("van:b0", "van_tiny_754.pth.tar", _HF.format(repo="VAN-Tiny-original", file="van_tiny_754.pth.tar"),
            "058bda07d27a89f27bbec8f3e47e6bda5de4f51dc59d0fb1f3cb835acb9130d8", "van", {"variant": "b0"},
            49627991, _HF_NOTE.format(repo="VAN-Tiny-original", commit="b13047f")),
    Weights("van:b1", "van_small_811.pth.tar", _HF.format(repo="VAN-Small-original", file="van_small_811.pth.tar"),
            "7515c3da81dfd7f00413a8fa1e1d93dc7ecd13340a29fba0c02aed0deea9660b", "van", {"variant": "b1"},
            166671913, _HF_NOTE.format(repo="VAN-Small-original", commit="7c6fc22")),
    Weights("van:b2", "van_base_828.pth.tar", _HF.format(repo="VAN-Base-original", file="van_base_828.pth.tar"),
            "3fbae1db35c4f1f96c4d66f1c8b13cac9194043171ff8a7e87fd21eb43a93725", "van", {"variant": "b2"},
            319560855, _HF_NOTE.format(repo="VAN-Base-original", commit="110abc6")),
)}

#: the family of backbone each architecture with a ``pretrained`` option has (declared in
#: segbench.catalog), and the defaults of the options a registered name pins (the
#: constructors' defaults; tests/test_pretrained.py checks them against the models)
ARCH_FAMILY = {name: a.pretrained for name, a in ARCHITECTURES.items() if a.pretrained}
ARCH_DEFAULTS = {"deeplabv3": {"depth": 101, "width": 64}, "deeplabv3_pac": {"depth": 101, "width": 64},
                 "van_fpn_frm": {"variant": "b1", "width": None}, "van_fpn_ppm": {"variant": "b1", "width": None},
                 "van_fpn_dappm": {"variant": "b1", "width": None}}
#: the first VAN stage's width of each variant (what ``width: null`` stands for)
VAN_WIDTH = {"b0": 32, "b1": 64, "b2": 64}
_FAMILY_TITLE = {"torchvision_resnet": "ResNet", "van": "VAN"}

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt", ".pkl")


def weights_dir() -> Path:
    """The folder registered names are looked up in: ``$SEGBENCH_WEIGHTS``, else
    ``~/.cache/segbench/weights`` (``~`` expanded)."""
    return Path(os.path.expanduser(os.environ.get(ENV) or DEFAULT_DIR))


def is_registered(source: str) -> bool:
    return source in REGISTRY


def looks_like_path(source: str) -> bool:
    """Whether an unregistered ``pretrained`` value is meant as a file path: it has a folder
    separator, starts with ``~`` or ``.``, or ends like a checkpoint file."""
    return ("/" in source or os.sep in source or source.startswith(("~", "."))
            or source.lower().endswith(_CHECKPOINT_SUFFIXES))


def _names() -> str:
    return ", ".join(REGISTRY)


def _did_you_mean(source: str) -> str:
    """' (did you mean 'torchvision:resnet50'?)' for 'resnet50', 'van_b1', 'VAN:B1' ..."""
    tail = re.split(r"[:/]", source.strip().lower())[-1]
    close = [n for n in REGISTRY if n.split(":", 1)[1] == tail or n.lower() == source.strip().lower()]
    close = close or difflib.get_close_matches(source, list(REGISTRY), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_source(source: object) -> str | None:
    """Why ``source`` is not a usable ``pretrained`` value (None when it is): a registered
    name or a path-like string."""
    if not isinstance(source, str) or not source.strip():
        return f"expected a registered name ({_names()}) or the path of a checkpoint file, got {source!r}"
    if is_registered(source) or looks_like_path(source):
        return None
    return (f"{source!r} is not a registered name{_did_you_mean(source)}; registered: {_names()}. A checkpoint "
            "file of your own is given by its path (with a '/', e.g. ./weights/my_resnet101.pth)")


def _describe(family: str, opts: dict) -> str:
    if family == "torchvision_resnet":
        return f"ResNet-{opts.get('depth')} at width {opts.get('width')}"
    return f"VAN-{opts.get('variant')} at width {opts.get('width')}"


def registered_mismatch(name: str, family: str, opts: dict) -> str | None:
    """Why registered checkpoint ``name`` does not fit a backbone of ``family`` with ``opts``
    (ResNet ``depth``, ``width``; VAN ``variant``, ``width`` as the first stage's channels);
    None when it fits. A registered checkpoint fits its own depth / variant at the paper width."""
    w = REGISTRY[name]
    want = dict(w.arch)
    if w.family == "van":
        want["width"] = VAN_WIDTH[w.arch["variant"]]
    if family != w.family:
        return (f"'{name}' holds a {_describe(w.family, want)} ({w.family} layout), but the model's backbone is "
                f"{_FAMILY_TITLE[family]}; use a {_FAMILY_TITLE[family]} checkpoint "
                f"({', '.join(n for n, x in REGISTRY.items() if x.family == family)})")
    if all(opts.get(k) == v for k, v in want.items()):
        return None
    if w.family == "torchvision_resnet":
        fix = f"set depth: {want['depth']} and width: {want['width']} (or leave them out)"
        other = f"torchvision:resnet{opts.get('depth')}"
    else:
        fix = f"set variant: {want['variant']} and leave width out"
        other = f"van:{opts.get('variant')}"
    if other != name and other in REGISTRY and registered_mismatch(other, family, opts) is None:
        fix += f", or name '{other}'"
    return (f"'{name}' holds a {_describe(w.family, want)}, but the model's backbone is a "
            f"{_describe(family, opts)}: {fix}")


def config_mismatch(name: str, arch: str, params: dict) -> str | None:
    """:func:`registered_mismatch` for a config's model entry (``arch`` and its ``params``,
    the constructor defaults filled in), without building the model."""
    family = ARCH_FAMILY.get(arch)
    if family is None:
        return f"{arch} has no pretrained backbone; {', '.join(ARCH_FAMILY)} have one"
    opts = {**ARCH_DEFAULTS[arch], **{k: v for k, v in params.items() if k in ARCH_DEFAULTS[arch]}}
    if family == "van" and opts["width"] is None:
        opts["width"] = VAN_WIDTH.get(opts["variant"])
    return registered_mismatch(name, family, opts)


def resolve(source: str, directory: str | os.PathLike[str] | None = None) -> tuple[Path, Weights | None]:
    """The file a ``pretrained`` value stands for, and its registry entry (None for a path).
    Never downloads: a registered file missing from the weights folder is an error."""
    problem = check_source(source)
    if problem:
        raise WeightsError(f"pretrained: {problem}")
    if is_registered(source):
        w = REGISTRY[source]
        folder = Path(directory).expanduser() if directory is not None else weights_dir()
        path = folder / w.file
        if not path.is_file():
            raise WeightsError(
                f"pretrained weights '{source}' ({w.file}) are not in the weights folder {folder}: run the workflow "
                f"(its fetch_weights rule downloads them) or `segbench fetch-weights {source} --dir {folder}`; "
                f"offline, copy the file there from {w.url}, or point ${ENV} (the workflow: the config's "
                "`weights.dir`) at the folder that has it. Training never downloads")
        return path, w
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(f"pretrained checkpoint {path} does not exist (pretrained: {source!r}); give the path "
                           f"of an existing file, or a registered name ({_names()})")
    return path, None


# ------------------------------------------------------------------ checksums, download
def sha256sum(path: str | os.PathLike[str], *, progress: bool = False) -> str:
    from segbench.data.download import file_digest

    return file_digest(path, "sha256", progress=progress)


def hash_matches(actual: str, expected: str) -> bool:
    """Full-hash equality, or (torchvision) the published prefix of the hash."""
    return actual.lower().startswith(expected.lower())


def _expected(w: Weights, sha256: str | None) -> str:
    expected = (sha256 or w.sha256).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise WeightsError(f"--sha256 {sha256!r} is not a SHA-256 (64 hex digits) or a prefix of one (8+)")
    return expected


def _what_checked(expected: str) -> str:
    return "SHA-256" if len(expected) == 64 else f"SHA-256 prefix {expected} (all that is published)"


def fetch_weights(name: str, directory: str | os.PathLike[str], url: str | None = None, sha256: str | None = None,
                  *, progress: bool = True, retries: int = 3, backoff: float = 1.0) -> Path:
    """Download registered checkpoint ``name`` into ``directory`` once and check it.

    ``url`` and ``sha256`` override the registry's (a mirror; a test server): the hash may be
    full or a prefix. An existing file is checked, not fetched again. Returns its path.
    """
    from segbench.data import DataError
    from segbench.data.download import download_part

    if name not in REGISTRY:
        raise WeightsError(f"unknown pretrained weights {name!r}{_did_you_mean(name)}; registered: {_names()}")
    w = REGISTRY[name]
    expected = _expected(w, sha256)
    dest = Path(directory).expanduser() / w.file
    if dest.exists():
        actual = sha256sum(dest, progress=progress)
        if not hash_matches(actual, expected):
            raise WeightsError(f"{dest} is already there but its SHA-256 is {actual}, not the expected {expected}; "
                               "delete it and fetch again (or, for a file of your own, give its path as "
                               "`pretrained:` instead of a registered name)")
        print(f"{dest} is already there ({_what_checked(expected)} as expected)")
        return dest
    try:
        part = download_part(url or w.url, dest, progress=progress, retries=retries, backoff=backoff,
                             url_hint=f"the config's `weights.sources: {{{name}: {{url: ...}}}}` or "
                                      "`segbench fetch-weights --url` sets another one")
    except DataError as e:
        raise WeightsError(str(e)) from None
    actual = sha256sum(part, progress=progress)
    size = part.stat().st_size
    if not hash_matches(actual, expected):
        part.unlink()
        raise WeightsError(
            f"checksum mismatch for {w.file} from {url or w.url}: expected SHA-256 {expected}"
            f"{' (prefix)' if len(expected) < 64 else ''}, got {actual} ({size} bytes"
            f"{f', published size {w.size}' if w.size and not sha256 else ''}). The partial file was deleted and "
            "nothing was put in place; run again to download it anew. If it fails again, the file at the URL is "
            "not the published one: check the URL (a mirror?) and the expected hash (`weights.sources` in the "
            "config, or --sha256)")
    os.replace(part, dest)
    print(f"fetched {dest} ({size} bytes, {_what_checked(expected)} verified)")
    return dest
