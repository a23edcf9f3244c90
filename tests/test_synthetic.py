"""The embedded synthetic dataset: Cityscapes layout, determinism, content, difficulty.

Expectations are written out by hand from the Cityscapes conventions (file names, label
ids), not derived from the generator's own helpers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.data.synthetic import generate

H, W = 64, 128
SPLITS = {"train": 4, "val": 2}

# Cityscapes label ids (cityscapesscripts labels.py)
ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN, VEGETATION, SKY, PERSON, CAR = 7, 8, 11, 17, 20, 21, 23, 24, 26
VOID_IDS = {0, 1, 2, 3, 4, 5, 6}
# Cityscapes trainIds of the ids above, written out by hand (255 = ignore)
TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
            26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

EXPECTED_STEMS = {
    "train": ["synthburg/synthburg_000000_000019", "pixelstadt/pixelstadt_000000_000019",
              "voxelheim/voxelheim_000000_000019", "synthburg/synthburg_000001_000019"],
    "val": ["rastertal/rastertal_000000_000019", "meshdorf/meshdorf_000000_000019"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("synthetic")
    counts = generate(root, seed=0, splits=SPLITS, height=H, width=W, progress=False)
    return root, counts


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _pairs(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for split, stems in EXPECTED_STEMS.items():
        for s in stems:
            im = np.asarray(Image.open(root / "leftImg8bit" / split / f"{s}_leftImg8bit.png"))
            lab = np.asarray(Image.open(root / "gtFine" / split / f"{s}_gtFine_labelIds.png"))
            out.append((im, lab))
    return out


def test_layout_and_names_follow_cityscapes(data: tuple[Path, dict[str, int]]) -> None:
    root, counts = data
    assert counts == SPLITS
    expected = sorted(
        [f"leftImg8bit/{split}/{s}_leftImg8bit.png" for split, ss in EXPECTED_STEMS.items() for s in ss]
        + [f"gtFine/{split}/{s}_gtFine_labelIds.png" for split, ss in EXPECTED_STEMS.items() for s in ss]
    )
    assert _files(root) == expected  # nothing else: no README, no temporary files
    pattern = re.compile(r"^(?:leftImg8bit|gtFine)/(train|val)/([a-z]+)/\2_\d{6}_\d{6}_(leftImg8bit|gtFine_labelIds)\.png$")
    assert all(pattern.match(f) for f in expected)


def test_png_formats(data: tuple[Path, dict[str, int]]) -> None:
    root, _ = data
    for split, stems in EXPECTED_STEMS.items():
        for s in stems:
            with Image.open(root / "leftImg8bit" / split / f"{s}_leftImg8bit.png") as im:
                assert (im.mode, im.size) == ("RGB", (W, H))
            with Image.open(root / "gtFine" / split / f"{s}_gtFine_labelIds.png") as lab:
                assert (lab.mode, lab.size) == ("L", (W, H))


def test_label_content(data: tuple[Path, dict[str, int]]) -> None:
    root, _ = data
    union: set[int] = set()
    runs: list[int] = []
    for im, lab in _pairs(root):
        ids = set(np.unique(lab).tolist())
        union |= ids
        assert ids <= set(range(34)), "only Cityscapes label ids 0..33"
        assert len(ids - VOID_IDS) >= 7, f"several classes per image, got {sorted(ids)}"
        assert {ROAD, BUILDING, POLE} <= ids
        for row in lab == POLE:  # horizontal runs of pole pixels
            d = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
            runs += (np.nonzero(d == -1)[0] - np.nonzero(d == 1)[0]).tolist()
    # poles are thin: most rows cross them in 1-3 px at this size (near ones are wider)
    assert np.mean(np.array(runs) <= 3) >= 0.75
    assert {SIDEWALK, TRAFFIC_SIGN, VEGETATION, SKY, PERSON, CAR} <= union
    assert union & VOID_IDS, "some void pixels exercise ignore handling"


def test_colour_alone_does_not_solve_it(data: tuple[Path, dict[str, int]]) -> None:
    root, _ = data
    pairs = _pairs(root)
    x = np.concatenate([im.reshape(-1, 3) for im, _ in pairs]).astype(np.float64)
    ids = np.concatenate([lab.ravel() for _, lab in pairs])
    y = np.array([TRAIN_ID.get(int(i), 255) for i in range(256)])[ids]
    keep = y != 255
    x, y = x[keep], y[keep]
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    pred = classes[np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    acc = float((pred == y).mean())
    assert acc < 0.7, f"a per-pixel nearest-class-mean colour classifier scores {acc:.2f}"


def test_deterministic_and_seed_dependent(data: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    root, _ = data
    again = tmp_path / "again"
    generate(again, seed=0, splits=SPLITS, height=H, width=W, progress=False)
    files = _files(root)
    assert _files(again) == files
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)

    other = tmp_path / "other"
    generate(other, seed=1, splits=SPLITS, height=H, width=W, progress=False)
    assert all((root / f).read_bytes() != (other / f).read_bytes() for f in files if "leftImg8bit" in f)


def test_images_do_not_depend_on_count_and_stale_files_go(data: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    root, _ = data
    out = tmp_path / "few"
    generate(out, seed=0, splits={"train": 6}, height=H, width=W, progress=False)
    counts = generate(out, seed=0, splits={"train": 2}, height=H, width=W, progress=False)
    assert counts == {"train": 2}
    files = _files(out)
    assert len(files) == 4  # the 4 extra scenes of the first run are gone
    assert all((root / f).read_bytes() == (out / f).read_bytes() for f in files)


# SHA-256 of render()'s raw arrays (RGB bytes, then label bytes) for these scenes, taken from the
# generator as it was before _compose was split into one function per scene part (issue 17), with
# numpy 2.4.6 and Pillow 13.0.0. Reorganising the drawing code must not move a pixel: each part
# draws from the scene's random stream in turn, so a reordered call changes this hash. A numpy
# or Pillow upgrade that changes it (a new bicubic resize or blur) is a new dataset: regenerate
# and re-pin it deliberately.
PINNED_SCENES = [(0, "train", 16, 64, 128), (5, "val", 8, 96, 192)]
PINNED_SHA256 = "996ce9df1ed9f0421b660eaf62e822d6465d51bfc6438cfa266ceacd8cb436be"


def test_scenes_are_pinned() -> None:
    import hashlib

    import PIL

    from segbench.data.synthetic import render

    h = hashlib.sha256()
    for seed, split, n, height, width in PINNED_SCENES:
        for i in range(n):
            image, label = render(seed, split, i, height, width)
            h.update(image.tobytes())
            h.update(label.tobytes())
    assert h.hexdigest() == PINNED_SHA256, (
        f"the synthetic scenes changed (numpy {np.__version__}, Pillow {PIL.__version__}); see PINNED_SHA256")
