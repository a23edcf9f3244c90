"""segbench.stats: statistics, bootstrap intervals, verdicts (issue 20).

Independent truths: hand-computed scores on tiny arrays; scipy.stats.bootstrap (paired,
percentile) on the same data; brute-force Python loops over the exposed resample draws;
the structure of the problem (identical runs, a run better on every image); tracemalloc.
"""

from __future__ import annotations

import functools
import math
import tracemalloc

import numpy as np
import pytest

from segbench import stats
from segbench.errors import UserError

nan = math.nan


# --------------------------------------------------------------------------- helpers (independent of stats)


def reference_miou(conf: np.ndarray) -> float:
    """mIoU of one [C, C] confusion matrix, class by class in plain Python."""
    ious = []
    for c in range(conf.shape[0]):
        tp = int(conf[c, c])
        fn = int(conf[c, :].sum()) - tp
        fp = int(conf[:, c].sum()) - tp
        if tp + fn + fp > 0:
            ious.append(tp / (tp + fn + fp))
    return sum(ious) / len(ious) if ious else nan


def make_runs(n_images: int, num_classes: int, seed: int, noise: int = 30, skill: int = 400) -> np.ndarray:
    """Random per-image confusions [N, C, C]: a strong diagonal plus off-diagonal noise."""
    rng = np.random.default_rng(seed)
    conf = rng.integers(0, noise, size=(n_images, num_classes, num_classes))
    diagonal = rng.integers(skill // 2, skill, size=(n_images, num_classes))
    conf[:, np.arange(num_classes), np.arange(num_classes)] += diagonal
    return conf.astype(np.int64)


def brute_percentiles(values: list[float], level: float) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    tail = 100 * (1 - level) / 2
    return tuple(float(x) for x in np.percentile(finite, [tail, 100 - tail]))


# --------------------------------------------------------------------------- (1) statistics, by hand


def test_miou_by_hand_with_absent_class_and_batch_dims():
    # class 0: TP 3, FN 1, FP 2 -> 3/6; class 1: TP 4, FN 2, FP 1 -> 4/7; class 2 absent -> NaN, skipped
    conf = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    expected = (3 / 6 + 4 / 7) / 2
    assert stats.miou(conf) == pytest.approx(expected)
    # a class only predicted (FP) has IoU 0 and counts: class 2 column only
    conf_fp = np.array([[3, 1, 2], [2, 4, 0], [0, 0, 0]])  # class 0: 3/(3+3+2)=3/8, class 2: 0/2
    assert stats.miou(conf_fp) == pytest.approx((3 / 8 + 4 / 7 + 0) / 3)
    batch = np.stack([np.stack([conf, conf_fp]), np.stack([np.zeros((3, 3), int), conf])])  # [2, 2, 3, 3]
    got = stats.miou(batch)
    assert got.shape == (2, 2)
    assert got[0, 0] == pytest.approx(expected) and got[0, 1] == pytest.approx((3 / 8 + 4 / 7) / 3)
    assert math.isnan(got[1, 0])  # every class absent -> NaN
    assert got[1, 1] == pytest.approx(expected)


def test_class_miou_biou_recall_by_hand():
    conf = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    assert stats.class_miou(conf, [1]) == pytest.approx(4 / 7)
    assert stats.class_miou(conf, [0, 2]) == pytest.approx(3 / 6)  # class 2 NaN, skipped
    assert math.isnan(stats.class_miou(conf, [2]))
    assert math.isnan(stats.class_miou(conf, []))  # no thin classes -> NaN

    # boundary counts [2, C]: class 0: 2/4, class 1: 0/3, class 2: union 0 -> NaN
    counts = np.array([[2, 0, 0], [4, 3, 0]])
    assert stats.biou(counts) == pytest.approx((0.5 + 0.0) / 2)
    assert math.isnan(stats.biou(np.zeros((2, 3), int)))
    assert stats.biou(np.stack([counts, counts])).shape == (2,)

    # segments [3, 2]: small 1 of 4, medium none, large 2 of 2
    seg = np.array([[4, 1], [0, 0], [2, 2]])
    assert stats.recall(seg, "small") == pytest.approx(0.25)
    assert stats.recall(seg, 0) == pytest.approx(0.25)
    assert math.isnan(stats.recall(seg, "medium"))
    assert stats.recall(seg, "large") == 1.0
    assert stats.recall(np.stack([seg, seg, seg]), 2).shape == (3,)


def test_miou_matches_reference_on_random_matrices():
    conf = make_runs(20, 6, seed=3)
    conf[:, 4, :] = 0
    conf[:, :, 4] = 0  # class 4 absent everywhere
    assert np.allclose(stats.miou(conf), [reference_miou(c) for c in conf], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- (2) against scipy.stats.bootstrap


def test_bootstrap_delta_agrees_with_scipy_paired_percentile():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = make_runs(60, 5, seed=1)
    b = make_runs(60, 5, seed=2, skill=380)
    n_boot = 20000

    def statistic(ia, ib, axis):
        assert np.array_equal(ia, ib)  # paired: scipy hands both samples the same indices
        return np.array([reference_miou(m) for m in a[ia].sum(axis=-3)]) - np.array(
            [reference_miou(m) for m in b[ib].sum(axis=-3)])

    ids = np.arange(60)
    ref = scipy_stats.bootstrap((ids, ids), statistic, paired=True, vectorized=True, n_resamples=n_boot,
                                batch=2000, method="percentile", confidence_level=0.95, random_state=7)
    ours = stats.bootstrap_delta(a, b, n_boot=n_boot, seed=0)
    assert ours["delta"] == pytest.approx(reference_miou(a.sum(0)) - reference_miou(b.sum(0)), abs=1e-12)
    # Monte-Carlo tolerance: with n_boot = 20000 the standard error of a 2.5% / 97.5% percentile
    # is about sqrt(0.025 * 0.975 / 20000) / phi(1.96) = 0.019 bootstrap SDs; two independent
    # estimates differ by about 0.027 SD. 0.15 SD is more than 5 such standard errors.
    sd = float(ref.standard_error)
    assert abs(ours["low"] - ref.confidence_interval.low) < 0.15 * sd
    assert abs(ours["high"] - ref.confidence_interval.high) < 0.15 * sd
    assert ours["high"] - ours["low"] > 3 * sd  # the interval is not degenerate: the check has teeth


# --------------------------------------------------------------------------- (3) brute force with the same draws


def test_bootstrap_matches_brute_force_loop_with_exposed_draws():
    a = make_runs(25, 4, seed=4)
    b = make_runs(25, 4, seed=5)
    a[3:, 3, :] = 0
    a[3:, :, 3] = 0  # class 3 only in images 0-2 of a: absent from some resamples
    n_boot, seed, level = 300, 11, 0.9
    indices = stats.resample_indices(25, n_boot, seed)
    assert indices.shape == (n_boot, 25)
    rep_a = [reference_miou(a[idx].sum(0)) for idx in indices]
    rep_b = [reference_miou(b[idx].sum(0)) for idx in indices]
    assert stats.bootstrap_ci(a, n_boot=n_boot, seed=seed, level=level) == pytest.approx(
        brute_percentiles(rep_a, level), abs=1e-12)
    got = stats.bootstrap_delta(a, b, n_boot=n_boot, seed=seed, level=level)
    want = brute_percentiles([x - y for x, y in zip(rep_a, rep_b)], level)
    assert (got["low"], got["high"]) == pytest.approx(want, abs=1e-12)
    assert got["n_images"] == 25 and got["n_boot"] == n_boot and got["level"] == level


def test_nan_replicates_are_dropped_and_all_nan_gives_nan():
    # small-bin segments only in image 0 of 6: resamples without it have NaN recall, dropped
    seg = np.zeros((6, 3, 2), dtype=np.int64)
    seg[0, 0] = [4, 3]
    seg[:, 2] = [[2, 1], [2, 2], [2, 0], [2, 2], [2, 1], [2, 2]]
    indices = stats.resample_indices(6, 500, 0)
    small = [seg[idx, 0, 1].sum() / seg[idx, 0, 0].sum() if seg[idx, 0, 0].sum() else nan for idx in indices]
    assert any(math.isnan(x) for x in small) and not all(math.isnan(x) for x in small)
    got = stats.bootstrap_ci(seg, functools.partial(stats.recall, bin="small"), n_boot=500, seed=0)
    assert got == pytest.approx(brute_percentiles(small, 0.95), abs=1e-12)
    low, high = stats.bootstrap_ci(seg, functools.partial(stats.recall, bin="medium"), n_boot=100)
    assert math.isnan(low) and math.isnan(high)


def test_blocking_does_not_change_results(monkeypatch):
    a = make_runs(40, 7, seed=6)
    b = make_runs(40, 7, seed=8)
    whole = stats.bootstrap_delta(a, b, n_boot=500, seed=3)
    monkeypatch.setattr(stats, "_BLOCK_BYTES", 7 * 7 * 8 * 13)  # blocks of 13 replicates
    monkeypatch.setattr(stats, "_COLUMN_BYTES", 40 * 8 * 5)  # column slices of 5 entries
    assert stats.bootstrap_delta(a, b, n_boot=500, seed=3) == whole


# --------------------------------------------------------------------------- (4) structure of the problem


def test_identical_runs_give_zero_and_dominant_run_holds():
    a = make_runs(30, 5, seed=9)
    same = stats.bootstrap_delta(a, a.copy(), n_boot=400)
    assert (same["delta"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    assert stats.verdict(same["low"], same["high"], +1) == "not significant"

    better = a.copy()
    better[:, np.arange(5), np.arange(5)] += 200  # more true positives on every image and class
    d = stats.bootstrap_delta(better, a, n_boot=400)
    assert 0 < d["low"] <= d["delta"] <= d["high"]
    assert stats.verdict(d["low"], d["high"], +1) == "holds"
    assert stats.verdict(d["low"], d["high"], -1) == "reversed"
    flipped = stats.bootstrap_delta(a, better, n_boot=400)
    assert flipped["high"] < 0 and stats.verdict(flipped["low"], flipped["high"], -1) == "holds"


def test_verdict_and_formatting():
    assert stats.verdict(-0.01, 0.02, +1) == "not significant"
    assert stats.verdict(0.0, 0.02, +1) == "not significant"  # touching 0 is not excluding it
    assert stats.verdict(0.001, 0.02, +1) == "holds"
    assert stats.verdict(-0.03, -0.001, +1) == "reversed"
    assert stats.verdict(nan, nan, -1) == "not significant"
    with pytest.raises(UserError, match="expected_sign"):
        stats.verdict(0.1, 0.2, 0)
    assert stats.format_delta({"delta": 0.0123, "low": -0.004, "high": 0.028}) == "+1.23 [-0.40, +2.80]"
    assert stats.format_delta({"delta": -0.016, "low": nan, "high": nan}, digits=1) == "-1.6 [n/a, n/a]"
    assert stats.format_ci(0.7231, 0.7002, 0.7455) == "72.31 [70.02, 74.55]"
    assert stats.mean_spread([10.0, 12.0, 14.0]) == (12.0, 2.0)
    mean, spread = stats.mean_spread([5.0])
    assert mean == 5.0 and math.isnan(spread)
    assert "bootstrap" in stats.CI_METHOD and "docs/statistics.md" in stats.CI_METHOD


# --------------------------------------------------------------------------- (5) seeds


def test_seeds_one_each_equals_bootstrap_delta():
    a = make_runs(30, 4, seed=12)
    b = make_runs(30, 4, seed=13)
    single = stats.bootstrap_delta(a, b, n_boot=300, seed=5)
    seeds = stats.bootstrap_delta_seeds([a], [b], n_boot=300, seed=5)
    assert seeds == {**single, "n_seeds_a": 1, "n_seeds_b": 1}


def test_seeds_match_brute_force_and_widen_the_interval():
    a1 = make_runs(30, 4, seed=14)
    b = make_runs(30, 4, seed=15)
    a2 = a1.copy()
    a2[:, np.arange(4), np.arange(4)] //= 2  # a second seed of a that is much worse
    n_boot, seed = 300, 2
    got = stats.bootstrap_delta_seeds([a1, a2], [b], n_boot=n_boot, seed=seed)
    # brute force: the documented draw order, one replicate at a time
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, 30, size=(n_boot, 30))
    drawn_a = rng.integers(0, 2, size=(n_boot, 2))
    drawn_b = rng.integers(0, 1, size=(n_boot, 1))
    reps = []
    for r in range(n_boot):
        mean_a = np.mean([reference_miou([a1, a2][s][indices[r]].sum(0)) for s in drawn_a[r]])
        mean_b = np.mean([reference_miou([b][s][indices[r]].sum(0)) for s in drawn_b[r]])
        reps.append(mean_a - mean_b)
    assert (got["low"], got["high"]) == pytest.approx(brute_percentiles(reps, 0.95), abs=1e-12)
    assert got["delta"] == pytest.approx(
        (reference_miou(a1.sum(0)) + reference_miou(a2.sum(0))) / 2 - reference_miou(b.sum(0)), abs=1e-12)
    assert (got["n_seeds_a"], got["n_seeds_b"]) == (2, 1)
    images_only = stats.bootstrap_delta(a1, b, n_boot=n_boot, seed=seed)
    assert got["high"] - got["low"] > 3 * (images_only["high"] - images_only["low"])


# --------------------------------------------------------------------------- (6) bad input


def test_bad_input_errors_name_the_problem():
    a = make_runs(10, 3, seed=0)
    with pytest.raises(UserError, match=r"\(10, 3, 3\).*\(9, 3, 3\).*same val images in the same order"):
        stats.bootstrap_delta(a, a[:9])
    with pytest.raises(UserError, match=r"runs_a\[0\].*runs_b\[1\].*same val images"):
        stats.bootstrap_delta_seeds([a], [a, a[:, :2, :2]])
    negative = a.copy()
    negative[0, 0, 0] = -1
    with pytest.raises(UserError, match="negative count"):
        stats.bootstrap_ci(negative)
    with pytest.raises(UserError, match="integer counts.*float64"):
        stats.bootstrap_ci(a.astype(float))
    with pytest.raises(UserError, match=r"\[\.\.\., C, C\].*\(3, 4\)"):
        stats.miou(np.zeros((3, 4), int))
    with pytest.raises(UserError, match="image axis first"):
        stats.bootstrap_ci(a[0])  # one [C, C] matrix without the image axis
    with pytest.raises(UserError, match=r"\[\.\.\., 2, C\]"):
        stats.biou(np.zeros((3, 5), int))
    with pytest.raises(UserError, match="size bin 'tiny'"):
        stats.recall(np.zeros((3, 2), int), "tiny")
    with pytest.raises(UserError, match="class index 5"):
        stats.class_miou(a[0], [0, 5])
    with pytest.raises(UserError, match="level"):
        stats.bootstrap_ci(a, level=95)
    with pytest.raises(UserError, match="n_boot"):
        stats.bootstrap_delta(a, a, n_boot=0)


# --------------------------------------------------------------------------- (7) memory at ADE20K size


def test_ade20k_sized_confusions_run_in_bounded_memory():
    n, c = 200, 150
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, size=(n, c, c), dtype=np.int64)  # 36 MB each
    b = a.copy()
    b[:, np.arange(c), np.arange(c)] += 1
    tracemalloc.start()
    try:
        d = stats.bootstrap_delta(b, a, n_boot=2000, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # [2000, 150, 150] float64 would be 360 MB per run; the blocked sums stay near 100 MB
    # (a 64 MB block of sums + a 32 MB float column slice + small arrays).
    assert peak < 130 * 2**20, f"peak {peak / 2**20:.0f} MB"
    assert 0 < d["low"] <= d["delta"] <= d["high"]


def test_ci_seeds_is_one_side_of_the_delta_and_equals_bootstrap_ci_for_one_seed():
    """bootstrap_ci_seeds against a brute-force loop over the documented draws, and against
    bootstrap_ci when there is one seed."""
    rng = np.random.default_rng(3)
    runs = [rng.integers(0, 30, size=(12, 3, 3)) for _ in range(3)]
    assert stats.bootstrap_ci_seeds(runs[:1], n_boot=300, seed=5) == stats.bootstrap_ci(runs[0], n_boot=300, seed=5)

    draws = np.random.default_rng(5)
    images = draws.integers(0, 12, size=(300, 12))
    seeds = draws.integers(0, 3, size=(300, 3))
    values = [np.mean([stats.miou(runs[s][images[r]].sum(0)) for s in seeds[r]]) for r in range(300)]
    low, high = np.percentile(values, [2.5, 97.5])
    assert stats.bootstrap_ci_seeds(runs, n_boot=300, seed=5) == pytest.approx((low, high))
