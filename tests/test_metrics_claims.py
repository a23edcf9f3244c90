"""Claim-specific metrics of segbench.metrics (issue 20): Boundary IoU counts, object-size
recall, thin classes. Checked against hand-computed cases and against independent
implementations written here differently (per-class scipy / cv2 erosion, a flood fill)."""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from segbench.metrics import (
    THIN_CLASSES,
    boundary_dilation,
    boundary_iou_counts,
    segment_recall_counts,
    size_thresholds,
    thin_class_indices,
)

IGNORE = 255


# --- references ------------------------------------------------------------------------------------


def scipy_band(mask: np.ndarray, d: int) -> np.ndarray:
    """The mask minus its erosion by a 3x3 square d times, outside the image = background."""
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=d, border_value=0)
    return mask & ~eroded


def cv2_band(mask: np.ndarray, d: int) -> np.ndarray:
    """The Boundary IoU reference code's recipe: pad by one background pixel, erode d times
    with a 3x3 kernel, crop."""
    m = mask.astype(np.uint8)
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:-1, 1:-1]
    return (m - eroded).astype(bool)


def reference_counts(pred: np.ndarray, target: np.ndarray, classes: int, band, ratio: float = 0.02):
    h, w = target.shape
    d = max(1, int(round(ratio * (h * h + w * w) ** 0.5)))
    labelled = target != IGNORE
    inter, union = np.zeros(classes, np.int64), np.zeros(classes, np.int64)
    for c in range(classes):
        g = band(target == c, d) & labelled
        p = band(pred == c, d) & labelled
        inter[c] = (g & p).sum()
        union[c] = (g | p).sum()
    return inter, union


def check_against_references(pred: np.ndarray, target: np.ndarray, classes: int, ratio: float = 0.02):
    inter, union = boundary_iou_counts(torch.from_numpy(pred), torch.from_numpy(target), classes,
                                       dilation_ratio=ratio)
    assert inter.dtype == torch.int64 and union.dtype == torch.int64
    assert inter.shape == (classes,) and union.shape == (classes,)
    for band in (scipy_band, cv2_band):
        ri, ru = reference_counts(pred, target, classes, band, ratio)
        np.testing.assert_array_equal(inter.numpy(), ri, err_msg=f"intersection vs {band.__name__}")
        np.testing.assert_array_equal(union.numpy(), ru, err_msg=f"union vs {band.__name__}")
    return inter, union


def blobs(rng, h: int, w: int, classes, cells: int = 6) -> np.ndarray:
    """A label map of irregular regions: a coarse random grid of classes, upsampled, with
    the region edges jittered."""
    coarse = rng.choice(classes, size=(cells, cells))
    ys = np.clip((np.arange(h)[:, None] * cells // h) + (rng.random((h, w)) < 0.15), 0, cells - 1)
    xs = np.clip((np.arange(w)[None, :] * cells // w) + (rng.random((h, w)) < 0.15), 0, cells - 1)
    return coarse[ys, xs].astype(np.int64)


def noisy_prediction(rng, target: np.ndarray, classes: int, wrong: float = 0.1) -> np.ndarray:
    pred = np.roll(np.where(target == IGNORE, 0, target), (1, 2), (0, 1))
    flip = rng.random(target.shape) < wrong
    return np.where(flip, rng.integers(0, classes, target.shape), pred).astype(np.int64)


# --- Boundary IoU: against the references ----------------------------------------------------------


@pytest.mark.parametrize("h,w", [(37, 53), (64, 64), (101, 30), (9, 200), (3, 3), (1, 17)])
def test_boundary_random_maps_match_erosion_references(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    classes = 5
    target = blobs(rng, h, w, classes)
    target[rng.random((h, w)) < 0.05] = IGNORE
    pred = noisy_prediction(rng, target, classes)
    check_against_references(pred, target, classes)
    # pixel noise everywhere: nearly every pixel in a band
    check_against_references(rng.integers(0, classes, (h, w)), rng.integers(0, classes, (h, w)), classes)


def test_boundary_structured_maps_match_erosion_references():
    h, w = 120, 90  # d = round(0.02 * 150) = 3
    target = np.zeros((h, w), np.int64)
    target[:, 40] = 1  # a one-pixel-wide vertical line
    target[60, 5:80] = 2  # a one-pixel-wide horizontal line crossing it
    target[0:30, 60:90] = 3  # a class touching the top and right edges
    target[100:120, 0:20] = IGNORE  # an ignored corner
    target[50:70, 70:80] = IGNORE  # an ignored block inside
    pred = target.copy()
    pred[target == IGNORE] = 3  # predictions on ignored pixels still shape the prediction's masks
    pred[:, 41] = 1  # the line predicted two pixels wide
    pred[10:20, 60:70] = 0  # a hole in the edge-touching class
    check_against_references(pred, target, 4)
    # a larger band than the image: the whole masks are band
    check_against_references(pred, target, 4, ratio=0.5)


def test_boundary_150_classes_sparse_matches_reference():
    rng = np.random.default_rng(150)
    present = rng.choice(150, size=12, replace=False)  # a few of the 150, high indices among them
    target = blobs(rng, 96, 128, present, cells=8)
    target[rng.random(target.shape) < 0.02] = IGNORE
    pred = noisy_prediction(rng, target, 150, wrong=0.05)
    inter, union = check_against_references(pred, target, 150)
    absent = np.setdiff1d(np.arange(150), np.union1d(target[target != IGNORE], pred))
    assert (union.numpy()[absent] == 0).all()


# --- Boundary IoU: hand-computed cases -------------------------------------------------------------


def square_image(size: int = 20, top: int = 5, left: int = 5, side: int = 5) -> torch.Tensor:
    img = torch.zeros(size, size, dtype=torch.long)
    img[top:top + side, left:left + side] = 1
    return img


def test_boundary_square_by_hand():
    # 20x20: d = max(1, round(0.02 * 28.3)) = 1. The 5x5 square's band is its outer ring,
    # 25 - 9 = 16 pixels; the background's band is the image's border (76) plus the ring of
    # 7x7 - 5x5 = 24 pixels around the square: 100.
    target = square_image()
    inter, union = boundary_iou_counts(target, target, 2)
    assert inter.tolist() == [100, 16] and union.tolist() == [100, 16]  # perfect: intersection == union
    # the prediction shifted right by one pixel (columns 6..10): the two rings share their top
    # and bottom rows inside columns 6..9 (4 + 4 = 8); background rings share the image
    # border (76) and rows 4 and 10 at columns 5..10 (6 + 6 = 12)
    pred = square_image(left=6)
    inter, union = boundary_iou_counts(pred, target, 2)
    assert inter.tolist() == [88, 8]
    assert union.tolist() == [100 + 100 - 88, 16 + 16 - 8]


def test_boundary_dilation_from_diagonal():
    assert boundary_dilation(100, 100) == 3  # round(0.02 * 141.4) = round(2.83)
    assert boundary_dilation(10, 10) == 1  # round(0.28) = 0 -> at least 1
    assert boundary_dilation(512, 1024) == 23  # round(22.9)
    assert boundary_dilation(1024, 2048) == 46
    assert boundary_dilation(100, 100, dilation_ratio=0.05) == 7  # round(7.07)
    # used by boundary_iou_counts: a 40x40 square in a 100x100 image has a band 3 wide
    target = torch.zeros(100, 100, dtype=torch.long)
    target[30:70, 30:70] = 1
    inter, union = boundary_iou_counts(target, target, 2)
    assert int(union[1]) == 40 * 40 - 34 * 34


def test_boundary_ignored_pixels_in_neither_band():
    # 20x20 (d = 1), all class 0 except an ignored column 10. G (class 0) excludes the
    # column, so its band is the image border without the column's two border pixels (74)
    # plus columns 9 and 11 on rows 1..18 (36): 110. The prediction is 0 everywhere: its
    # band is the image border (76) less the two ignored pixels: 74, all of them in G's band.
    target = torch.zeros(20, 20, dtype=torch.long)
    target[:, 10] = IGNORE
    pred = torch.zeros(20, 20, dtype=torch.long)
    inter, union = boundary_iou_counts(pred, target, 3)
    assert inter.tolist() == [74, 0, 0]
    assert union.tolist() == [110, 0, 0]


def test_boundary_batch_is_sum_of_images_and_stays_on_device():
    rng = np.random.default_rng(7)
    targets = np.stack([blobs(rng, 48, 80, 4) for _ in range(3)])
    preds = np.stack([noisy_prediction(rng, t, 4) for t in targets])
    inter, union = boundary_iou_counts(torch.from_numpy(preds), torch.from_numpy(targets), 4)
    singles = [boundary_iou_counts(torch.from_numpy(p), torch.from_numpy(t), 4) for p, t in zip(preds, targets)]
    assert torch.equal(inter, sum(s[0] for s in singles))
    assert torch.equal(union, sum(s[1] for s in singles))
    assert inter.device == torch.device("cpu")
    # label maps as uint8 (as PNG labels load): the same counts
    inter8, union8 = boundary_iou_counts(torch.from_numpy(preds.astype(np.uint8)),
                                         torch.from_numpy(targets.astype(np.uint8)), 4)
    assert torch.equal(inter8, inter) and torch.equal(union8, union)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_boundary_on_cuda_matches_cpu():
    rng = np.random.default_rng(11)
    target = blobs(rng, 70, 90, 6)
    target[rng.random(target.shape) < 0.05] = IGNORE
    pred = torch.from_numpy(noisy_prediction(rng, target, 6))
    target = torch.from_numpy(target)
    on_cpu = boundary_iou_counts(pred, target, 6)
    on_gpu = boundary_iou_counts(pred.cuda(), target.cuda(), 6)
    assert on_gpu[0].is_cuda and on_gpu[1].is_cuda
    assert torch.equal(on_gpu[0].cpu(), on_cpu[0]) and torch.equal(on_gpu[1].cpu(), on_cpu[1])


def test_boundary_bad_input_is_refused():
    t = torch.zeros(8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="shape"):
        boundary_iou_counts(t, torch.zeros(8, 9, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="scores"):
        boundary_iou_counts(t.float(), t, 2)
    bad = t.clone()
    bad[3, 3] = 7
    with pytest.raises(ValueError, match="target holds value 7 outside"):
        boundary_iou_counts(t, bad, 2)
    with pytest.raises(ValueError, match="pred holds value 7 outside"):
        boundary_iou_counts(bad, t, 2)
    # a prediction outside [0, C) on an ignored pixel is not an error
    target = t.clone()
    target[3, 3] = IGNORE
    boundary_iou_counts(bad, target, 2)


# --- object-size recall ----------------------------------------------------------------------------


def flood_fill_counts(pred: np.ndarray, target: np.ndarray, t_small: float, t_large: float) -> np.ndarray:
    """Brute force: breadth-first flood fill of every segment (8 neighbours, same class)."""
    h, w = target.shape
    seen = np.zeros((h, w), bool)
    counts = np.zeros((3, 2), np.int64)
    for y0 in range(h):
        for x0 in range(w):
            c = target[y0, x0]
            if seen[y0, x0] or c == IGNORE:
                continue
            seen[y0, x0] = True
            queue, pixels = deque([(y0, x0)]), []
            while queue:
                y, x = queue.popleft()
                pixels.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and target[ny, nx] == c:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            area = len(pixels)
            hits = sum(pred[y, x] == c for y, x in pixels)
            size_bin = 0 if area < t_small else (1 if area < t_large else 2)
            counts[size_bin, 0] += 1
            counts[size_bin, 1] += hits / area >= 0.5
    return counts


def test_size_thresholds_scale_with_the_image():
    assert size_thresholds(480, 640) == (1024.0, 9216.0)  # COCO's 32^2, 96^2
    assert size_thresholds(240, 320) == (256.0, 2304.0)  # a quarter of the pixels
    t_small, t_large = size_thresholds(512, 1024)
    assert t_small == pytest.approx(1024 * 512 * 1024 / 307200) and t_large == pytest.approx(9 * t_small)


def test_segment_recall_two_blobs_one_recalled():
    # 64x64: thresholds 1024 * 4096 / 307200 = 13.65 and 122.9 pixels
    target = np.full((64, 64), IGNORE, np.int64)
    target[2:6, 2:6] = 1  # 16 px: medium
    target[30:42, 30:42] = 1  # 144 px: large
    pred = np.zeros_like(target)
    pred[2:6, 2:6] = 1  # the medium one recalled, the large one missed
    counts = segment_recall_counts(torch.from_numpy(pred), torch.from_numpy(target), 2)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [[0, 0], [1, 1], [1, 0]]


def test_segment_recall_half_counts_and_diagonals_connect():
    target = np.full((64, 64), IGNORE, np.int64)
    target[10:14, 10:14] = 2  # 16 px
    target[14:18, 14:18] = 2  # touches the first at one corner only: the same segment (32 px)
    pred = np.zeros_like(target)
    pred[10:14, 10:14] = 2  # exactly half of the 32 pixels
    assert segment_recall_counts(pred, target, 3).tolist() == [[0, 0], [1, 1], [0, 0]]
    pred[13, 13] = 0  # one pixel less than half
    assert segment_recall_counts(pred, target, 3).tolist() == [[0, 0], [1, 0], [0, 0]]


def test_segment_recall_bins_at_the_thresholds():
    # 480x640: thresholds exactly 1024 and 9216 pixels
    target = np.full((480, 640), IGNORE, np.int64)
    target[0:31, 0:33] = 1  # 1023: small
    target[100:132, 0:32] = 1  # 1024: medium
    target[200:295, 100:197] = 1  # 95 x 97 = 9215: medium
    target[300:396, 300:396] = 1  # 9216: large
    pred = target.copy()
    counts = segment_recall_counts(pred, target, 2)
    assert counts.tolist() == [[1, 1], [2, 2], [1, 1]]
    # explicit bins
    assert segment_recall_counts(pred, target, 2, bins=(2000, 9216)).tolist() == [[2, 2], [1, 1], [1, 1]]
    with pytest.raises(ValueError, match="t_small <= t_large"):
        segment_recall_counts(pred, target, 2, bins=(10, 5))


@pytest.mark.parametrize("seed", range(4))
def test_segment_recall_matches_flood_fill(seed):
    rng = np.random.default_rng(seed)
    h, w, classes = 40, 56, 4
    target = blobs(rng, h, w, classes, cells=7)
    target[rng.random((h, w)) < 0.08] = 3  # speckles: many one-pixel segments
    target[rng.random((h, w)) < 0.05] = IGNORE
    pred = noisy_prediction(rng, target, classes, wrong=0.3)
    bins = (5.0, 60.0)
    got = segment_recall_counts(torch.from_numpy(pred), torch.from_numpy(target), classes, bins=bins)
    np.testing.assert_array_equal(got.numpy(), flood_fill_counts(pred, target, *bins))
    # default bins: 40x56 -> 7.47 and 67.2 pixels
    got = segment_recall_counts(pred, target, classes)
    np.testing.assert_array_equal(got.numpy(), flood_fill_counts(pred, target, *size_thresholds(h, w)))


def test_segment_recall_bad_input_is_refused():
    t = np.zeros((8, 8), np.int64)
    with pytest.raises(ValueError, match="one image"):
        segment_recall_counts(t[None], t[None], 2)
    with pytest.raises(ValueError, match="target holds value 5 outside"):
        segment_recall_counts(t, t + 5, 2)


# --- thin classes ----------------------------------------------------------------------------------


def test_thin_classes_of_the_packaged_datasets():
    from segbench.data.ade20k import CLASSES as ADE20K
    from segbench.data.cityscapes_labels import CATEGORY_CLASSES, TRAIN_CLASSES
    from segbench.data.voc import CLASSES as VOC

    def names(classes):
        return {classes[i] for i in thin_class_indices(classes)}

    assert thin_class_indices(TRAIN_CLASSES) == [5, 6, 7, 11, 12, 17, 18]
    assert names(TRAIN_CLASSES) == {"pole", "traffic light", "traffic sign", "person", "rider", "motorcycle",
                                    "bicycle"}
    assert names(CATEGORY_CLASSES) == {"object", "human"}
    assert names(ADE20K) == {"pole", "streetlight", "traffic light", "signboard", "person", "bicycle", "minibike",
                             "chair", "bottle"}
    assert names(VOC) == {"person", "bicycle", "motorbike", "bottle", "chair", "pottedplant"}
    assert thin_class_indices([" Pole", "ROAD", "Traffic Light"]) == [0, 2]
    assert thin_class_indices(["road", "sky"]) == []
    assert all(name == name.lower() for name in THIN_CLASSES)


def test_thin_classes_cover_what_the_synthetic_scenes_draw():
    from segbench.data import synthetic
    from segbench.data.cityscapes_labels import TRAIN_CLASSES, id_to_train_id_lut

    drawn = [synthetic.POLE, synthetic.LIGHT, synthetic.SIGN, synthetic.PERSON, synthetic.RIDER, synthetic.BICYCLE]
    train_ids = id_to_train_id_lut()[drawn].tolist()
    assert set(train_ids) <= set(thin_class_indices(TRAIN_CLASSES))
    not_thin = [synthetic.ROAD, synthetic.BUILDING, synthetic.SKY, synthetic.CAR, synthetic.VEGETATION]
    assert not set(id_to_train_id_lut()[not_thin].tolist()) & set(thin_class_indices(TRAIN_CLASSES))
