"""Cityscapes (Cordts et al., CVPR 2016): login, download through cityscapesscripts, prepare.

The archives sit behind a login at www.cityscapes-dataset.com. The credentials are taken,
in this order, from

1. a JSON file ``{"username": ..., "password": ...}`` named by ``--credentials FILE`` (the
   config's ``datasets.NAME.download.credentials``),
2. the environment variables ``CITYSCAPES_USERNAME`` and ``CITYSCAPES_PASSWORD``,
3. the file cityscapesscripts' own ``csDownload`` keeps
   (``~/.local/share/cityscapesscripts/credentials.json``),
4. a prompt, only when asked for (``interactive=True``) and a terminal is attached.

Otherwise :func:`find_credentials` fails at once with a message saying how to provide
them, so a workflow never waits on a prompt. The credentials live only in memory: they
are sent in the site's login form and never printed, logged or written anywhere
(:class:`Credentials` hides them from ``repr``).

The download itself is cityscapesscripts' (``cityscapesscripts.download.downloader``,
version 2.3.0): :func:`login` opens a ``requests`` session with the same form post as its
``login()`` (which can only read the credentials from its file or a prompt), and its
``download_packages`` lists the packages, fetches the MD5 the site serves, downloads in
chunks with a progress bar, resumes with an HTTP ``Range`` request and checks the MD5. Around
it, :func:`download` keeps the partial file in ``{dir}/.partial/`` (a workflow deletes the
declared outputs of a failed job, never this), resumes after a cut connection, turns an MD5
mismatch into a :class:`~segbench.data.DataError` showing both checksums (the file is
deleted), and leaves ``{archive}.md5`` beside the archive for ``segbench verify``.

:func:`prepare_cityscapes` reads the Cityscapes on-disk layout (``cityscapesscripts``), of
the real data and of the synthetic scenes (:mod:`segbench.data.synthetic`) alike::

    {root}/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png   RGB image
    {root}/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png     8-bit label ids 0..33

and writes, as ``docs/outputs.md`` specifies, under ``out``:

* ``labels/{split}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png`` - the 19 train ids
  (``label_set="trainId"``), or ``..._gtFine_labelCategoryIds.png`` - the 7 scored
  categories (``label_set="category"``); 255 = ignore. The conversion follows the label
  table in :mod:`segbench.data.cityscapes_labels`.
* ``meta.json`` - dataset, num_classes, class_names, palette, ignore_index, splits, source.
* ``manifest.csv`` - ``split,image,label,city``; paths relative to ``out``.

The inputs are checked as :mod:`segbench.data.prepare` describes (its shared helpers do the
image checks); besides, label values that are not Cityscapes label ids (0..33) and a file
name found in two cities of one split are errors. :func:`prepare` is the entry point for a
real copy: it finds the tree under ``root`` and checks the published split sizes.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segbench import catalog
from segbench.data import DataError
from segbench.data.cityscapes_labels import (
    CATEGORY_CLASSES,
    CATEGORY_PALETTE,
    IGNORE_INDEX,
    TRAIN_CLASSES,
    TRAIN_PALETTE,
    VALID_IDS,
    id_to_category_lut,
    id_to_train_id_lut,
)
from segbench.data.download import Archive, md5sum
from segbench.data.prepare import (
    MODE_NAMES,
    NOT_PNG,
    PARTIAL_HINT,
    ImageNotes,
    check_split_sizes,
    drop_stale_labels,
    found_instead,
    image_size,
    other_extensions,
)
from segbench.io import atomic_path, write_json, write_text

__all__ = [
    "ARCHIVES",
    "SPLIT_SIZES",
    "SITE",
    "ENV_USERNAME",
    "ENV_PASSWORD",
    "Credentials",
    "find_credentials",
    "login",
    "download",
    "find_root",
    "prepare",
    "prepare_cityscapes",
    "IMAGE_SUFFIX",
    "LABEL_SUFFIX",
    "OUTPUT_SUFFIX",
]

SITE = "https://www.cityscapes-dataset.com"
#: the packages behind the login; their MD5 is served by the site at download time
ARCHIVES: Mapping[str, Archive] = {
    "gtFine_trainvaltest.zip": Archive("gtFine_trainvaltest.zip", None, None, "241 MB"),
    "leftImg8bit_trainvaltest.zip": Archive("leftImg8bit_trainvaltest.zip", None, None, "11 GB"),
}
#: published number of fine-annotated images per split, classes per label set (segbench.catalog)
SPLIT_SIZES: Mapping[str, int] = catalog.DATASET_SOURCES["cityscapes"].splits
NUM_CLASSES: Mapping[str, int] = catalog.DATASET_SOURCES["cityscapes"].classes
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
#: suffix of the converted label files, per label set
OUTPUT_SUFFIX = {"trainId": "_gtFine_labelTrainIds.png", "category": "_gtFine_labelCategoryIds.png"}
MANIFEST_COLUMNS = ("split", "image", "label", "city")
_MAX_ID = max(VALID_IDS)
ENV_USERNAME = "CITYSCAPES_USERNAME"
ENV_PASSWORD = "CITYSCAPES_PASSWORD"

HOW_TO_LOG_IN = (
    "Cityscapes downloads need an account (register at https://www.cityscapes-dataset.com/register/). "
    f"Provide the login in one of these ways: set the environment variables {ENV_USERNAME} and {ENV_PASSWORD} "
    "before running; or write a JSON file {\"username\": \"...\", \"password\": \"...\"} (readable only by you, "
    "outside results/) and name it in the config as `datasets.NAME.download.credentials: FILE` "
    "(`segbench download cityscapes --credentials FILE` by hand); or run cityscapesscripts' `csDownload -l` once "
    "and let it store the login. If you already have the dataset, set `datasets.NAME.root:` to it instead and "
    "nothing is downloaded."
)


@dataclass(frozen=True)
class Credentials:
    """A Cityscapes login; never shown by ``repr`` or ``str``."""

    username: str = field(repr=False)
    password: str = field(repr=False)
    #: where they came from (a file path or an environment variable name), for messages
    origin: str = ""

    def __str__(self) -> str:
        return f"Cityscapes credentials from {self.origin or 'memory'}"


def _cityscapesscripts_file() -> Path:
    """The credentials file ``csDownload`` keeps (``appdirs.user_data_dir``)."""
    try:
        import appdirs

        return Path(appdirs.user_data_dir("cityscapesscripts", "cityscapes")) / "credentials.json"
    except ImportError:  # pragma: no cover - appdirs comes with cityscapesscripts
        base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        return Path(base) / "cityscapesscripts" / "credentials.json"


def _read_credentials_file(path: Path) -> Credentials:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"Cityscapes credentials file {path} does not exist. {HOW_TO_LOG_IN}") from None
    except (OSError, ValueError) as e:
        # the message never quotes the file's content
        raise DataError(f"Cityscapes credentials file {path} is not readable JSON ({e.__class__.__name__}); it must "
                        "hold {\"username\": \"...\", \"password\": \"...\"}") from None
    if not isinstance(data, dict) or not data.get("username") or not data.get("password"):
        raise DataError(f"Cityscapes credentials file {path} must hold a JSON object with non-empty \"username\" "
                        "and \"password\"")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        print(f"warning: {path} can be read by other users; restrict it with `chmod 600 {path}`", file=sys.stderr)
    return Credentials(str(data["username"]), str(data["password"]), str(path))


def find_credentials(file: str | os.PathLike[str] | None = None, *, interactive: bool = False,
                     environ: Mapping[str, str] | None = None) -> Credentials:
    """The Cityscapes login from ``file``, the environment, csDownload's file, or a prompt.

    The prompt is used only when ``interactive`` and both stdin and stderr are terminals;
    otherwise missing credentials raise :class:`DataError` at once saying how to give them.
    """
    env = os.environ if environ is None else environ
    if file:
        return _read_credentials_file(Path(file).expanduser())
    user, password = env.get(ENV_USERNAME), env.get(ENV_PASSWORD)
    if user and password:
        return Credentials(user, password, f"${ENV_USERNAME}/${ENV_PASSWORD}")
    if user or password:
        missing = ENV_PASSWORD if user else ENV_USERNAME
        raise DataError(f"{ENV_USERNAME if user else ENV_PASSWORD} is set but {missing} is not: set both. "
                        f"{HOW_TO_LOG_IN}")
    stored = _cityscapesscripts_file()
    if stored.is_file():
        return _read_credentials_file(stored)
    if interactive and sys.stdin.isatty() and sys.stderr.isatty():
        user = input("Cityscapes username or email address: ").strip()
        password = getpass.getpass("Cityscapes password: ")
        if user and password:
            return Credentials(user, password, "prompt")
    raise DataError(f"no Cityscapes login found. {HOW_TO_LOG_IN}")


def _site_session(site: str):
    """A ``requests`` session that sends cityscapesscripts' fixed site URLs to ``site``
    (the real site unless a test serves a stand-in on 127.0.0.1)."""
    import requests

    site = site.rstrip("/")

    class SiteSession(requests.Session):
        def request(self, method, url, *args, **kwargs):  # type: ignore[override]
            if site != SITE and isinstance(url, str) and url.startswith(SITE):
                url = site + url[len(SITE):]
            return super().request(method, url, *args, **kwargs)

    return SiteSession()


def login(credentials: Credentials, site: str = SITE):
    """A logged-in ``requests`` session; the same form post as cityscapesscripts' ``login()``."""
    import requests

    session = _site_session(site)
    try:
        r = session.get(f"{SITE}/login", allow_redirects=False, timeout=60)
        r.raise_for_status()
        form = {"username": credentials.username, "password": credentials.password, "submit": "Login"}
        r = session.post(f"{SITE}/login", data=form, allow_redirects=False, timeout=60)
        r.raise_for_status()
    except requests.RequestException as e:
        raise DataError(f"cannot reach the Cityscapes site {site} ({e.__class__.__name__}); check the network "
                        "and run again") from None
    if r.status_code != 302:  # the site redirects after a successful login
        raise DataError(f"the Cityscapes site refused the login ({credentials}): check the username and "
                        f"password. {HOW_TO_LOG_IN}")
    return session


def _site_md5(session, package_id: str) -> str:
    r = session.get(f"{SITE}/md5-sum/?packageID={package_id}", allow_redirects=False, timeout=60)
    r.raise_for_status()
    return r.text.split()[0].lower()


def download(
    archives: Sequence[str],
    dest_dir: str | os.PathLike[str],
    *,
    credentials_file: str | os.PathLike[str] | None = None,
    interactive: bool = False,
    site: str = SITE,
    retries: int = 3,
    progress: bool = True,
    environ: Mapping[str, str] | None = None,
) -> list[Path]:
    """Download Cityscapes packages into ``dest_dir`` with cityscapesscripts' downloader.

    Archives already in ``dest_dir`` are skipped. Credentials are looked up (and missing
    ones reported) before anything goes over the network.
    """
    unknown = [a for a in archives if a not in ARCHIVES]
    if unknown:
        raise DataError(f"unknown Cityscapes archive(s) {', '.join(unknown)}; known: {', '.join(ARCHIVES)}")
    dest = Path(dest_dir)
    todo = [a for a in archives if not (dest / a).is_file()]
    for a in archives:
        if a not in todo:
            print(f"{dest / a} is already downloaded")
    if not todo:
        return [dest / a for a in archives]
    credentials = find_credentials(credentials_file, interactive=interactive, environ=environ)

    import requests
    import urllib3
    from cityscapesscripts.download import downloader

    session = login(credentials, site)
    try:
        packages = {p["name"]: p for p in downloader.get_available_packages(session=session)}
    except (requests.RequestException, ValueError) as e:
        raise DataError(f"cannot list the Cityscapes packages at {site} ({e.__class__.__name__}: {e})") from None
    staging = dest / ".partial"
    dest.mkdir(parents=True, exist_ok=True)
    # Several download jobs (one per archive) share the staging folder: each holds a shared
    # lock on the destination folder while it works, and the folder is removed only by a job
    # that finds no other one at work (else it would vanish under a running download).
    users = _share_folder(dest)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        _download_packages(todo, dest, staging, session, packages, retries=retries, progress=progress)
    finally:
        _leave_folder(users, staging)
    return [dest / a for a in archives]


def _share_folder(folder: Path) -> int | None:
    """A shared ``flock`` on ``folder`` (an open descriptor), or None where flock is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _leave_folder(fd: int | None, staging: Path) -> None:
    """Remove the empty ``staging`` folder unless another download holds the lock; unlock."""
    if fd is None:
        return
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # another download is at work: it (or the last one) removes the folder
    else:
        try:
            staging.rmdir()
        except OSError:
            pass  # not empty: a partial download to resume later
    finally:
        os.close(fd)


def _download_packages(todo: Sequence[str], dest: Path, staging: Path, session, packages: dict, *, retries: int,
                       progress: bool) -> None:
    import requests
    import urllib3
    from cityscapesscripts.download import downloader

    for name in todo:
        if name not in packages:
            raise DataError(f"the Cityscapes site offers no package {name} to this account; "
                            f"available: {', '.join(sorted(packages))}")
        expected = _site_md5(session, packages[name]["packageID"])
        part = staging / name
        attempt = 0
        while True:
            if part.exists() and md5sum(part, progress=progress) == expected:
                break  # a complete earlier download
            try:
                downloader.download_packages(session=session, package_names=[name],
                                             destination_path=str(staging), resume=part.exists())
                break
            except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                status = getattr(getattr(e, "response", None), "status_code", None)
                if status == 416:  # the partial file is longer than the package: start over
                    part.unlink(missing_ok=True)
                if attempt >= retries:
                    size = part.stat().st_size if part.exists() else 0
                    raise DataError(f"downloading Cityscapes package {name} was interrupted after {size:,} bytes "
                                    f"({e.__class__.__name__}); the partial file {part} is kept: run the same "
                                    "command again to resume") from None
                attempt += 1
                print(f"{name}: connection lost; resuming (attempt {attempt}/{retries})", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - cityscapesscripts raises bare Exceptions
                if "MD5" not in str(e) or not part.exists():
                    raise DataError(f"cityscapesscripts could not download {name}: {e}") from None
                actual = md5sum(part, progress=progress)
                part.unlink()
                raise DataError(f"checksum mismatch for {name}: expected MD5 {expected} (served by the Cityscapes "
                                f"site), got {actual}. The file was deleted; run the download again") from None
        final = dest / name
        # the checksum first (atomically): an archive in place always has its .md5 beside it
        write_text(dest / f"{name}.md5", f"{expected}  {name}\n")
        shutil.move(str(part), final)  # a rename within the folder: atomic
        print(f"downloaded {final}")


# ---------------------------------------------------------------------------- preparation
def find_root(root: str | os.PathLike[str]) -> Path:
    """The folder holding ``leftImg8bit/`` and ``gtFine/`` (``root`` itself or ``root/cityscapes``)."""
    root_p = Path(root)
    for cand in (root_p, root_p / "cityscapes"):
        if (cand / "leftImg8bit").is_dir() and (cand / "gtFine").is_dir():
            return cand
    return root_p  # prepare_cityscapes names what is missing


def prepare(root: str | os.PathLike[str], out: str | os.PathLike[str], *, dataset: str = "cityscapes",
            labels: str = "trainId", allow_partial: bool = False, progress: bool = True,
            splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:
    """Prepare a real Cityscapes copy (trainIds or categories), split sizes checked."""
    return prepare_cityscapes(find_root(root), out, label_set=labels, splits=splits, dataset=dataset,
                              progress=progress, expected=SPLIT_SIZES, allow_partial=allow_partial)


def _find(folder: Path, suffix: str) -> dict[str, Path]:
    """stem -> file for every ``{city}/{stem}{suffix}`` in ``folder``."""
    found: dict[str, Path] = {}
    for p in sorted(folder.glob(f"*/*{suffix}")):
        found.setdefault(f"{p.parent.name}/{p.name[: -len(suffix)]}", p)
    return found


def _scan_split(root: Path, split: str, problems: list[str]) -> list[tuple[str, str, Path, Path]]:
    """Pair images and labels of one split: [(city, stem, image, label)], problems appended."""
    img_dir = root / "leftImg8bit" / split
    lab_dir = root / "gtFine" / split
    ok = True
    for folder, suffix in ((img_dir, IMAGE_SUFFIX), (lab_dir, LABEL_SUFFIX)):
        if not folder.is_dir():
            problems.append(f"split '{split}': folder {folder} is missing")
            ok = False
    if not ok:
        return []
    images = _find(img_dir, IMAGE_SUFFIX)
    labels = _find(lab_dir, LABEL_SUFFIX)
    if not images:
        problems.append(f"split '{split}': no {{city}}/*{IMAGE_SUFFIX} files in {img_dir}"
                        f"{found_instead(img_dir, '*/*' + IMAGE_SUFFIX)}")
    if not labels:
        problems.append(f"split '{split}': no {{city}}/*{LABEL_SUFFIX} files in {lab_dir}"
                        f"{found_instead(lab_dir, '*/*' + LABEL_SUFFIX)}")
    if not images or not labels:
        return []
    pairs = []
    for key, img in images.items():
        city, stem = key.split("/", 1)
        lab = labels.get(key)
        if lab is None:
            want = lab_dir / city / (stem + LABEL_SUFFIX)
            problems.append(f"{img}: image without a label file (expected {want}){other_extensions(want)}")
        else:
            pairs.append((city, stem, img, lab))
    for key, lab in labels.items():
        if key not in images:
            city, stem = key.split("/", 1)
            want = img_dir / city / (stem + IMAGE_SUFFIX)
            problems.append(f"{lab}: label without an image (expected {want}){other_extensions(want)}")
    seen: dict[str, str] = {}
    for city, stem, img, _ in pairs:
        if stem in seen:
            problems.append(f"{img}: file name {stem} also exists in city '{seen[stem]}' of split '{split}'; "
                            "output labels of a split share one folder, so names must be unique")
        seen[stem] = city
    return pairs


def _check_pair(img: Path, lab: Path, problems: list[str], notes: ImageNotes) -> np.ndarray | None:
    """The label ids of a valid pair, or None (problems appended)."""
    img_size = image_size(img, problems, notes)
    if img_size is None:
        return None
    try:
        with Image.open(lab) as lb:
            lab_size, mode = lb.size, lb.mode
            if lb.format != "PNG":
                problems.append(f"{lab}: " + NOT_PNG.format(fmt=lb.format, named=" (named .png)"))
                return None
            if mode not in ("L", "P"):
                what = MODE_NAMES.get(mode, f"mode {mode}")
                problems.append(f"{lab}: label PNG is {what} (mode {mode}); expected single-channel 8-bit "
                                "(mode L) holding Cityscapes label ids - use the *_gtFine_labelIds.png files, "
                                "not *_color.png or *_instanceIds.png")
                return None
            arr = np.asarray(lb)
    except Exception as e:  # noqa: BLE001
        problems.append(f"{lab}: cannot read label ({e.__class__.__name__}: {e})")
        return None
    if lab_size != img_size:
        problems.append(f"{lab}: label size {lab_size[0]}x{lab_size[1]} differs from image {img.name} "
                        f"size {img_size[0]}x{img_size[1]} (width x height)")
        return None
    counts = np.bincount(arr.ravel(), minlength=256)
    bad = np.nonzero(counts[_MAX_ID + 1:])[0] + _MAX_ID + 1
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        word = "id" if bad.size == 1 else "ids"
        problems.append(f"{lab}: contains label {word} {shown} (valid ids: 0..{_MAX_ID}); "
                        "is this a labelIds file from gtFine?")
        return None
    return arr


def prepare_cityscapes(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    label_set: str = "trainId",
    splits: Sequence[str] = ("train", "val"),
    dataset: str = "cityscapes",
    progress: bool = True,
    expected: Mapping[str, int] | None = None,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Convert the Cityscapes tree at ``root`` into ``out/{labels/, meta.json, manifest.csv}``.

    ``label_set`` is ``"trainId"`` (19 classes) or ``"category"`` (7 categories); ``dataset``
    is the name recorded in ``meta.json``. ``expected`` (split -> published number of
    images, e.g. :data:`segbench.data.cityscapes.SPLIT_SIZES`) turns on the split-size
    check, a warning only with ``allow_partial``. Returns the ``meta.json`` content. Raises
    :class:`DataError` listing every problem found in the input (nothing is written to
    the manifest then), and ``ValueError`` for a bad argument.
    """
    if label_set not in OUTPUT_SUFFIX:
        raise ValueError(f"label_set must be one of {sorted(OUTPUT_SUFFIX)}, got {label_set!r}")
    if isinstance(splits, str) or not splits:
        raise ValueError(f"splits must be a non-empty sequence of split names, got {splits!r}")
    root_p = Path(root).absolute()
    out_p = Path(out).absolute()
    if not root_p.is_dir():
        raise DataError(f"Cityscapes root {root_p} does not exist or is not a folder; point it at the folder "
                        "that holds leftImg8bit/ and gtFine/")
    manifest_path = out_p / "manifest.csv"
    meta_path = out_p / "meta.json"
    manifest_path.unlink(missing_ok=True)  # a manifest must only ever describe a complete run
    meta_path.unlink(missing_ok=True)

    if label_set == "trainId":
        lut, names, palette = id_to_train_id_lut(), TRAIN_CLASSES, TRAIN_PALETTE
    else:
        lut, names, palette = id_to_category_lut(), CATEGORY_CLASSES, CATEGORY_PALETTE
    suffix = OUTPUT_SUFFIX[label_set]

    problems: list[str] = []
    notes = ImageNotes()
    pairs_by_split = {split: _scan_split(root_p, split, problems) for split in splits}
    count_problems = check_split_sizes({s: len(p) for s, p in pairs_by_split.items()}, expected or {},
                                       where=str(root_p), allow_partial=allow_partial)
    problems += count_problems
    rows: list[tuple[str, str, str, str]] = []
    written: dict[str, set[Path]] = {split: set() for split in splits}
    for split, pairs in pairs_by_split.items():
        it: Any = pairs
        if progress:
            from tqdm import tqdm

            it = tqdm(pairs, desc=f"prepare {split}", unit="img")
        for city, stem, img, lab in it:
            ids = _check_pair(img, lab, problems, notes)
            if ids is None or problems:  # once anything is wrong, only keep checking
                continue
            dst = out_p / "labels" / split / f"{stem}{suffix}"
            with atomic_path(dst) as tmp:
                Image.fromarray(lut[ids]).save(tmp, format="PNG")
            written[split].add(dst)
            rows.append((split, Path(os.path.relpath(img, out_p)).as_posix(),
                         Path(os.path.relpath(dst, out_p)).as_posix(), city))
    notes.warn()
    if problems:
        raise DataError.from_problems(
            f"Cityscapes tree {root_p} cannot be prepared",
            problems,
            "Each leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png needs gtFine/{split}/{city}/"
            "{stem}_gtFine_labelIds.png of the same size holding label ids 0..33. Fix or remove the files "
            "listed (re-extracting the archives helps for a real copy), then run again."
            + (f" {PARTIAL_HINT}" if count_problems else ""),
        )

    # converted labels of this label set that an earlier run left and this one did not write
    drop_stale_labels(out_p, written, f"*{suffix}")

    meta: dict[str, Any] = {
        "dataset": dataset,
        "num_classes": len(names),
        "class_names": list(names),
        "palette": [list(c) for c in palette],
        "ignore_index": IGNORE_INDEX,
        "splits": {split: len(written[split]) for split in splits},
        "source": str(root_p),
    }
    write_json(meta_path, meta)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    write_text(manifest_path, buf.getvalue())  # last: its presence means the run completed
    return meta
