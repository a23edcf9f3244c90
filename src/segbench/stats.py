"""Bootstrap confidence intervals for segmentation scores, and verdicts on papers' claims.

The method is documented in one place, ``docs/statistics.md``; :data:`CI_METHOD` names it
under every table. In short:

* A *statistic* maps a summed count array (leading batch dimensions allowed) to one number
  per leading index: :func:`miou` ([..., C, C] confusion -> mIoU), :func:`biou`
  ([..., 2, C] boundary counts -> mBIoU), :func:`recall` ([..., 3, 2] segment counts ->
  recall of one size bin), :func:`class_miou` (mIoU over a subset of classes). All follow
  mmsegmentation's convention: a class (or bin) with nothing to measure is NaN and skipped
  by the mean; if every class is NaN the statistic is NaN. Values are fractions in [0, 1].
* Per-image arrays have the image axis first: [N, ...], the val images in manifest order.
  A bootstrap replicate draws N image indices with replacement, sums the per-image arrays
  over the drawn images and applies the statistic to the sum.
* Intervals are percentile intervals (``level`` = 0.95 by default: the 2.5th and 97.5th
  percentiles of the replicates). Replicates whose statistic is NaN (a resample in which
  nothing of a class or bin is left) are dropped; if all are NaN the interval is (nan, nan).
* Comparisons are paired: both runs use the same resampled image indices. With several
  seeds per method, :func:`bootstrap_delta_seeds` also resamples the seeds.
* Deterministic: the draws come from ``numpy.random.default_rng(seed)``;
  :func:`resample_indices` returns exactly the image indices every function here uses.

Cost and memory: replicate sums are one float64 matrix product of resample counts [B, N]
with the per-image arrays flattened to [N, F] (exact: every value is an integer below 2**53,
which is checked). The replicates are processed in blocks so that the extra memory stays
bounded (about 100 MB plus what the statistic allocates on one block, whatever N, C and
``n_boot``: a 64 MB block of sums and a 32 MB float64 column slice; see :func:`_replicate_sums`):
2000 resamples of N = 200 ADE20K-sized [150, 150] confusions never hold [2000, 150, 150]
at once. The image indices themselves are held as one int64 [n_boot, N] array
(2000 x 2000 images: 32 MB).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from segbench.errors import UserError

__all__ = [
    "CI_METHOD",
    "SIZE_BINS",
    "StatsError",
    "biou",
    "bootstrap_ci",
    "bootstrap_delta",
    "bootstrap_delta_seeds",
    "class_miou",
    "format_ci",
    "format_delta",
    "mean_spread",
    "miou",
    "recall",
    "resample_indices",
    "verdict",
]

CI_METHOD = (
    "Intervals: 95% percentile bootstrap over val images (2000 resamples; comparisons paired, "
    "the same resampled images for both runs; with several seeds, seeds resampled too); "
    "verdict 'holds' = the interval excludes 0 on the paper's side (docs/statistics.md)."
)

SIZE_BINS = ("small", "medium", "large")

# Budgets of the blocked replicate sums (bytes); see _replicate_sums.
_BLOCK_BYTES = 64 * 2**20     # one block of replicate sums [B, F] float64
_COLUMN_BYTES = 32 * 2**20    # one float64 column slice [N, F_block] of the per-image array
_EXACT_LIMIT = 2**53          # float64 holds every integer below this exactly


class StatsError(UserError):
    """Per-image count arrays or bootstrap settings that cannot be used; the message says why."""


# --------------------------------------------------------------------------- statistics


def _nanmean_last(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over the last axis of ``values`` where ``valid``; NaN where nothing is valid."""
    count = valid.sum(axis=-1)
    total = np.where(valid, values, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (no warning)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _class_iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU [..., C] of confusion matrices [..., C, C] (rows ground truth); NaN if union 0."""
    conf = np.asarray(conf)
    if conf.ndim < 2 or conf.shape[-1] != conf.shape[-2]:
        raise StatsError(
            f"a confusion array must have shape [..., C, C] (rows ground truth, columns "
            f"prediction), got shape {conf.shape}"
        )
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    union = conf.sum(axis=-1) + conf.sum(axis=-2) - tp
    return _ratio(tp, union)


def miou(conf: np.ndarray) -> np.ndarray | float:
    """mIoU of confusion matrices ``conf`` [..., C, C] (rows ground truth) -> [...] (a float for [C, C]).

    mmsegmentation's convention: IoU_c = TP / (TP + FP + FN); a class whose union is 0 is NaN
    and skipped by the mean; NaN if every class is NaN. A fraction in [0, 1].
    """
    iou = _class_iou(conf)
    return _nanmean_last(iou, ~np.isnan(iou))[()]


def class_miou(conf: np.ndarray, classes: Sequence[int]) -> np.ndarray | float:
    """mIoU over the class indices ``classes`` only (e.g. the thin classes); NaN if ``classes`` is empty.

    ``conf`` [..., C, C] as for :func:`miou`; IoU is computed from the full matrix (a pixel of
    class k predicted as any other class counts against k), then averaged over ``classes``
    with NaN classes skipped. Use ``functools.partial(class_miou, classes=...)`` as a statistic.
    """
    iou = _class_iou(conf)
    num_classes = iou.shape[-1]
    index = np.asarray(list(classes), dtype=np.int64)
    bad = index[(index < 0) | (index >= num_classes)]
    if bad.size:
        raise StatsError(f"class index {int(bad[0])} is outside [0, {num_classes}) for a {num_classes}-class confusion")
    subset = iou[..., index]
    return _nanmean_last(subset, ~np.isnan(subset))[()]


def iou_counts(conf: np.ndarray) -> np.ndarray:
    """The intersection and union per class of confusion matrices [..., C, C] -> int64
    [..., 2, C] ([0] TP, [1] TP + FP + FN): all that mIoU needs, C times smaller, and still
    a sum over images. ``mean_iou(iou_counts(conf)) == miou(conf)``."""
    conf = np.asarray(conf)
    if conf.ndim < 2 or conf.shape[-1] != conf.shape[-2]:
        raise StatsError(f"confusion matrices must have shape [..., C, C], got shape {conf.shape}")
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    union = conf.sum(axis=-1) + conf.sum(axis=-2) - tp
    return np.stack([tp, union], axis=-2).astype(np.int64)


def mean_iou(counts: np.ndarray) -> np.ndarray | float:
    """Mean over classes of intersection / union from counts [..., 2, C] -> [...] (a float for
    [2, C]); a class whose union is 0 is NaN and skipped, NaN if every class is. On
    :func:`iou_counts` it is the mIoU; on Boundary IoU counts, the mBIoU (:func:`biou`)."""
    return biou(counts)


def biou(counts: np.ndarray) -> np.ndarray | float:
    """mBIoU of boundary counts ``counts`` [..., 2, C] -> [...] (a float for [2, C]).

    ``counts[..., 0, c]`` = |G_band ∩ P_band|, ``counts[..., 1, c]`` = |G_band ∪ P_band| of
    class c (segbench.metrics.boundary_iou_counts). BIoU_c = intersection / union, NaN if the
    union is 0 and skipped by the mean; NaN if every class is NaN.
    """
    counts = np.asarray(counts)
    if counts.ndim < 2 or counts.shape[-2] != 2:
        raise StatsError(
            f"boundary counts must have shape [..., 2, C] ([0] intersection, [1] union), got shape {counts.shape}"
        )
    per_class = _ratio(counts[..., 0, :], counts[..., 1, :])
    return _nanmean_last(per_class, ~np.isnan(per_class))[()]


def recall(counts: np.ndarray, bin: int | str) -> np.ndarray | float:
    """Recall of ground-truth segments of one size bin from ``counts`` [..., 3, 2] -> [...].

    ``counts[..., k, 0]`` = ground-truth segments in bin k (0 small, 1 medium, 2 large),
    ``counts[..., k, 1]`` = those recalled (segbench.metrics.segment_recall_counts).
    ``bin`` is 0, 1, 2 or "small", "medium", "large". NaN where the bin has no segment.
    Use ``functools.partial(recall, bin="small")`` as a statistic.
    """
    counts = np.asarray(counts)
    if counts.ndim < 2 or counts.shape[-2:] != (3, 2):
        raise StatsError(
            f"segment counts must have shape [..., 3, 2] (bins small/medium/large x "
            f"[ground-truth segments, recalled]), got shape {counts.shape}"
        )
    if isinstance(bin, str):
        if bin not in SIZE_BINS:
            raise StatsError(f"size bin {bin!r} is not one of {', '.join(SIZE_BINS)}")
        k = SIZE_BINS.index(bin)
    elif isinstance(bin, (int, np.integer)) and 0 <= bin < len(SIZE_BINS):
        k = int(bin)
    else:
        raise StatsError(f"size bin {bin!r} must be 0, 1, 2 or one of {', '.join(SIZE_BINS)}")
    return _ratio(counts[..., k, 1], counts[..., k, 0])[()]


# --------------------------------------------------------------------------- resampling


def resample_indices(n_images: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """The image indices of every bootstrap replicate: int64 [n_boot, n_images], drawn with replacement.

    Exactly the draws :func:`bootstrap_ci`, :func:`bootstrap_delta` and
    :func:`bootstrap_delta_seeds` use for the same ``n_boot`` and ``seed`` (the first draw
    of ``numpy.random.default_rng(seed)``).
    """
    _check_settings(n_boot, 0.5)
    return _draw_images(np.random.default_rng(seed), n_images, n_boot)


def _draw_images(rng: np.random.Generator, n_images: int, n_boot: int) -> np.ndarray:
    return rng.integers(0, n_images, size=(n_boot, n_images), dtype=np.int64)


def _check_settings(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise StatsError(f"n_boot must be a positive integer (e.g. 2000), got {n_boot!r}")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise StatsError(f"level must be a fraction strictly between 0 and 1 (e.g. 0.95), got {level!r}")


def _check_per_image(array: np.ndarray, name: str) -> np.ndarray:
    """The per-image count array as a numpy array, after checking it can be resampled."""
    array = np.asarray(array)
    if array.ndim < 1 or array.shape[0] < 1:
        raise StatsError(f"{name} must be a per-image array [N, ...] with at least one image, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise StatsError(
            f"{name} must hold integer counts (e.g. confusion_per_image.npy, int64), got dtype {array.dtype}"
        )
    if array.size and array.min() < 0:
        raise StatsError(f"{name} holds a negative count ({int(array.min())}); counts must be >= 0")
    if array.size and int(array.max()) * array.shape[0] >= _EXACT_LIMIT:
        raise StatsError(
            f"{name} holds counts too large to sum exactly in float64 "
            f"(max {int(array.max())} x {array.shape[0]} images >= 2**53)"
        )
    return array


def _check_same_images(arrays: Sequence[np.ndarray], names: Sequence[str]) -> None:
    first = arrays[0].shape
    for array, name in zip(arrays[1:], names[1:]):
        if array.shape != first:
            raise StatsError(
                f"{names[0]} has shape {first} but {name} has shape {array.shape}: a paired comparison needs "
                f"per-image arrays of the same val images in the same order (same N) with the same classes"
            )


def _apply(statistic: Callable, sums: np.ndarray, expected: int) -> np.ndarray:
    """statistic(sums) as float64 [expected], checking it gives one number per leading index."""
    values = np.asarray(statistic(sums), dtype=np.float64)
    if values.shape != (expected,):
        raise StatsError(
            f"the statistic must map summed arrays [{expected}, ...] to [{expected}] numbers, got shape "
            f"{values.shape} from input shape {sums.shape}"
        )
    return values


def _point(statistic: Callable, per_image: np.ndarray, name: str) -> float:
    """statistic of the sum over all images (no resampling); a shape error names the array."""
    total = per_image.sum(axis=0)[None]
    try:
        return float(_apply(statistic, total, 1)[0])
    except StatsError as error:
        raise StatsError(
            f"{name} (shape {per_image.shape}) does not fit the statistic: {error}; is the image axis first "
            f"in the per-image array ([N, ...])?"
        ) from error


def _replicate_sums(per_image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sums over resampled images: float64 [B, *per_image.shape[1:]] = weights [B, N] @ per_image.

    ``weights[b, i]`` is how often image i was drawn in replicate b. The per-image array is
    converted to float64 one column slice at a time (at most ``_COLUMN_BYTES``), so no float
    copy of the whole array is made, and each product is written straight into ``out``.
    Exact: every partial sum is an integer below 2**53.
    """
    n = per_image.shape[0]
    flat = per_image.reshape(n, -1)
    features = flat.shape[1]
    out = np.empty((weights.shape[0], features), dtype=np.float64)
    step = max(1, _COLUMN_BYTES // (8 * n))
    for start in range(0, features, step):
        stop = min(features, start + step)
        np.matmul(weights, flat[:, start:stop].astype(np.float64), out=out[:, start:stop])
    return out.reshape(weights.shape[0], *per_image.shape[1:])


def _block_size(per_image: np.ndarray) -> int:
    """Replicates per block so that one block of sums (and its matmul product) fits _BLOCK_BYTES."""
    features = max(1, math.prod(per_image.shape[1:]))
    return max(1, _BLOCK_BYTES // (8 * features))


def _weights(indices: np.ndarray, n_images: int) -> np.ndarray:
    """Draw counts float64 [B, N] of image indices [B, N] (one bincount over offset indices)."""
    rows = indices.shape[0]
    offset = indices + (np.arange(rows, dtype=np.int64) * n_images)[:, None]
    counts = np.bincount(offset.ravel(), minlength=rows * n_images)
    return counts.reshape(rows, n_images).astype(np.float64)


def _replicates(per_image: np.ndarray, indices: np.ndarray, statistic: Callable) -> np.ndarray:
    """statistic of each replicate's resampled sum: float64 [n_boot], computed block by block."""
    n_boot, n = indices.shape
    values = np.empty(n_boot, dtype=np.float64)
    block = _block_size(per_image)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        sums = _replicate_sums(per_image, _weights(indices[start:stop], n))
        values[start:stop] = _apply(statistic, sums, stop - start)
        del sums  # free this block before the next one is allocated
    return values


def _percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the non-NaN replicates; (nan, nan) if all are NaN."""
    finite = replicates[~np.isnan(replicates)]
    if finite.size == 0:
        return (math.nan, math.nan)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return (float(low), float(high))


# --------------------------------------------------------------------------- intervals


def bootstrap_ci(
    per_image: np.ndarray,
    statistic: Callable = miou,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of ``statistic`` over the images of one run.

    ``per_image`` [N, ...]: integer counts, image axis first (e.g. confusion_per_image.npy).
    Each of ``n_boot`` replicates sums the per-image arrays over N images drawn with
    replacement (:func:`resample_indices`) and applies ``statistic``. NaN replicates are
    dropped; (nan, nan) if all are NaN. Extra memory is bounded (module docstring).
    """
    _check_settings(n_boot, level)
    per_image = _check_per_image(per_image, "per_image")
    _point(statistic, per_image, "per_image")  # checks the statistic fits the array before the loop
    indices = resample_indices(per_image.shape[0], n_boot, seed)
    return _percentile_interval(_replicates(per_image, indices, statistic), level)


def bootstrap_delta(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Callable = miou,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Paired percentile bootstrap of statistic(a) - statistic(b) over the same images.

    ``a``, ``b`` [N, ...]: per-image integer counts of two runs on the same val images in the
    same order. ``delta`` = statistic(sum of a) - statistic(sum of b); every replicate uses
    one draw of image indices for both runs, so difficulty the runs share cancels.
    Returns ``dict(delta=, low=, high=, n_images=, n_boot=, level=)`` (fractions; low/high
    NaN if every replicate is NaN).
    """
    _check_settings(n_boot, level)
    a = _check_per_image(a, "a")
    b = _check_per_image(b, "b")
    _check_same_images([a, b], ["a", "b"])
    delta = _point(statistic, a, "a") - _point(statistic, b, "b")
    indices = resample_indices(a.shape[0], n_boot, seed)
    replicates = _replicates(a, indices, statistic) - _replicates(b, indices, statistic)
    low, high = _percentile_interval(replicates, level)
    return {"delta": delta, "low": low, "high": high, "n_images": int(a.shape[0]), "n_boot": int(n_boot),
            "level": float(level)}


def bootstrap_delta_seeds(
    runs_a: Sequence[np.ndarray],
    runs_b: Sequence[np.ndarray],
    statistic: Callable = miou,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Two-level paired bootstrap of a method difference over images and seeds.

    ``runs_a``, ``runs_b``: lists of per-image arrays [N, ...] (one per training seed), all on
    the same val images in the same order. Point ``delta`` = mean over a's seeds of
    statistic(sum over images) - the same for b. Each replicate draws one set of image
    indices (shared by both methods and all seeds), then, independently for a and for b,
    as many seeds as the side has, with replacement; the replicate is the mean over a's
    drawn seeds of statistic(sum over drawn images) minus the same for b. With one seed per
    side this equals :func:`bootstrap_delta` for the same ``seed``. The draws come from
    ``numpy.random.default_rng(seed)`` in this order: image indices int [n_boot, N] (as
    :func:`resample_indices`), a's seed indices [n_boot, len(runs_a)], b's [n_boot, len(runs_b)].
    Returns bootstrap_delta's dict plus ``n_seeds_a`` and ``n_seeds_b``.
    """
    _check_settings(n_boot, level)
    if len(runs_a) < 1 or len(runs_b) < 1:
        raise StatsError(f"each method needs at least one run, got {len(runs_a)} for a and {len(runs_b)} for b")
    names = [f"runs_a[{i}]" for i in range(len(runs_a))] + [f"runs_b[{i}]" for i in range(len(runs_b))]
    arrays = [_check_per_image(array, name) for array, name in zip([*runs_a, *runs_b], names)]
    _check_same_images(arrays, names)
    side_a, side_b = arrays[: len(runs_a)], arrays[len(runs_a):]
    points = [_point(statistic, array, name) for array, name in zip(arrays, names)]
    delta = float(np.mean(points[: len(side_a)])) - float(np.mean(points[len(side_a):]))

    rng = np.random.default_rng(seed)
    n_images = arrays[0].shape[0]
    indices = _draw_images(rng, n_images, n_boot)  # first draw: the same as resample_indices
    seeds_a = rng.integers(0, len(side_a), size=(n_boot, len(side_a)), dtype=np.int64)
    seeds_b = rng.integers(0, len(side_b), size=(n_boot, len(side_b)), dtype=np.int64)

    def side_mean(side: list[np.ndarray], drawn: np.ndarray) -> np.ndarray:
        # per_seed[s, r]: statistic of seed s on replicate r's images; then mean over drawn seeds
        per_seed = np.stack([_replicates(x, indices, statistic) for x in side])
        return np.take_along_axis(per_seed.T, drawn, axis=1).mean(axis=1)

    replicates = side_mean(side_a, seeds_a) - side_mean(side_b, seeds_b)
    low, high = _percentile_interval(replicates, level)
    return {"delta": delta, "low": low, "high": high, "n_images": int(n_images), "n_boot": int(n_boot),
            "level": float(level), "n_seeds_a": len(side_a), "n_seeds_b": len(side_b)}


def bootstrap_ci_seeds(
    runs: Sequence[np.ndarray],
    statistic: Callable = miou,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval (low, high) of one method's mean over seeds of ``statistic``: one
    side of :func:`bootstrap_delta_seeds`. ``runs``: per-image arrays [N, ...], one per seed,
    on the same val images. Each replicate draws image indices (shared by every seed), then
    as many seeds as there are, with replacement, and averages the drawn seeds' statistic on
    the drawn images. With one run this equals :func:`bootstrap_ci` for the same ``seed``."""
    _check_settings(n_boot, level)
    if len(runs) < 1:
        raise StatsError("bootstrap_ci_seeds needs at least one run")
    names = [f"runs[{i}]" for i in range(len(runs))]
    arrays = [_check_per_image(array, name) for array, name in zip(runs, names)]
    _check_same_images(arrays, names)
    for array, name in zip(arrays, names):
        _point(statistic, array, name)
    rng = np.random.default_rng(seed)
    indices = _draw_images(rng, arrays[0].shape[0], n_boot)
    drawn = rng.integers(0, len(arrays), size=(n_boot, len(arrays)), dtype=np.int64)
    per_seed = np.stack([_replicates(x, indices, statistic) for x in arrays])  # [S, n_boot]
    return _percentile_interval(np.take_along_axis(per_seed.T, drawn, axis=1).mean(axis=1), level)


# --------------------------------------------------------------------------- verdicts and formatting


def verdict(low: float, high: float, expected_sign: int) -> str:
    """"holds", "not significant" or "reversed": the interval [low, high] against the paper's sign.

    ``expected_sign`` +1 (the paper claims a > b) or -1 (a < b). "holds": the interval excludes
    0 on the claimed side (low > 0 for +1, high < 0 for -1); "reversed": it excludes 0 on the
    other side; "not significant": it contains 0 (an interval touching 0 counts as containing
    it). A NaN bound (nothing to measure) gives "not significant".
    """
    if expected_sign not in (1, -1):
        raise StatsError(f"expected_sign must be +1 or -1 (the paper's claimed direction), got {expected_sign!r}")
    if math.isnan(low) or math.isnan(high):
        return "not significant"
    if low > high:
        raise StatsError(f"interval low {low} is above high {high}")
    if low > 0:
        return "holds" if expected_sign == 1 else "reversed"
    if high < 0:
        return "holds" if expected_sign == -1 else "reversed"
    return "not significant"


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation, ddof=1) of repeated measurements, e.g. fps repeats.

    The spread of a single value is unknown: NaN. Units are those of ``values``.
    """
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        raise StatsError("mean_spread needs at least one value")
    spread = float(np.std(data, ddof=1)) if data.size > 1 else math.nan
    return (float(np.mean(data)), spread)


def _points(value: float, digits: int, signed: bool) -> str:
    """A fraction in points (x100) with ``digits`` decimals; "n/a" for NaN; ASCII '-' for minus."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100 * value:+.{digits}f}" if signed else f"{100 * value:.{digits}f}"


def format_delta(d: dict, digits: int = 2) -> str:
    """A delta dict (bootstrap_delta) in points: "+1.23 [-0.40, +2.80]" (ASCII '-', always signed)."""
    delta, low, high = (_points(d[key], digits, True) for key in ("delta", "low", "high"))
    return f"{delta} [{low}, {high}]"


def format_ci(point: float, low: float, high: float, digits: int = 2) -> str:
    """A single value with its interval in points: "72.31 [70.02, 74.55]" (fractions in, x100 out)."""
    return f"{_points(point, digits, False)} [{_points(low, digits, False)}, {_points(high, digits, False)}]"
