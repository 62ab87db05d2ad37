"""Binned ECE family against netcal, scikit-learn, relplot and torchmetrics, plus edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokcal.errors import ValidationError
from tokcal.metrics import ece, over_under, reliability_bins

netcal_ece = pytest.importorskip("netcal.metrics").ECE


def _data(n, bins, seed, edges=True, power=1.0):
    """Confidences with exact 0s and 1s, and (if ``edges``) values exactly on the interior edges k/bins."""
    rng = np.random.default_rng(seed)
    c = rng.random(n)
    if edges:
        c[: n // 10] = rng.integers(0, bins + 1, n // 10) / bins
    c[-3:] = [0.0, 1.0, 1.0]
    a = rng.random(n) < c**power
    return c, a


def _away_from_edges(n, bins, seed, power=1.0):
    """Confidences in [0, 1] at least 1e-6 away from the interior edges (0 and 1 included)."""
    c, a = _data(n, bins, seed, edges=False, power=power)
    frac = c * bins - np.round(c * bins)
    near = (np.abs(frac) < 1e-6) & (c > 0) & (c < 1)
    c[near] += 2e-6
    return c, a


@pytest.mark.parametrize("bins", [10, 15, 16])
@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_width_ece_equals_netcal(bins, power):
    # netcal: np.histogramdd on linspace edges ([lo, hi), last closed) after clipping c to
    # [eps, 1 - eps]: the same bins as ours, edges and exact 0/1 included.
    c, a = _data(3000, bins, seed=bins, power=power)
    ref = netcal_ece(bins).measure(c, a.astype(int))
    assert ece(c, a, bins=bins) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("bins", [5, 10, 15])
def test_mass_ece_equals_netcal(bins):
    c, a = _data(2001, bins, seed=3 + bins, power=1.5)
    ref = netcal_ece(bins, equal_intervals=False).measure(c, a.astype(int))
    assert ece(c, a, bins=bins, binning="mass") == pytest.approx(ref, abs=1e-12)


def _sklearn_ece(c, a, bins, strategy):
    from sklearn.calibration import calibration_curve

    prob_true, prob_pred = calibration_curve(a.astype(int), c, n_bins=bins, strategy=strategy)
    # calibration_curve drops empty bins and returns no counts: recount with its own bin rule
    # (searchsorted(edges[1:-1], c), i.e. (lo, hi] bins).
    if strategy == "uniform":
        edges = np.linspace(0, 1, bins + 1)
    else:
        edges = np.percentile(c, np.linspace(0, 1, bins + 1) * 100)
    counts = np.bincount(np.searchsorted(edges[1:-1], c), minlength=bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / c.size * np.abs(prob_true - prob_pred)))


@pytest.mark.parametrize("bins", [10, 15])
def test_width_ece_equals_sklearn(bins):
    # scikit-learn bins are (lo, hi]: a confidence exactly on an interior edge goes one bin lower
    # than ours, so its data stays away from interior edges (0 and 1 included).
    c, a = _away_from_edges(4000, bins, seed=7)
    assert ece(c, a, bins=bins) == pytest.approx(_sklearn_ece(c, a, bins, "uniform"), abs=1e-12)


@pytest.mark.parametrize("bins", [10, 15])
def test_mass_ece_equals_sklearn(bins):
    # scikit-learn's quantile edges equal ours (np.percentile vs np.quantile, both linear); with
    # n = 1000 tokens and distinct confidences the interior edges fall strictly between data points
    # ((n-1) q is never an integer), so (lo, hi] and [lo, hi) bins hold the same tokens.
    c, a = _away_from_edges(1000, bins, seed=11)
    c[-2] = 0.999  # distinct values only
    assert ece(c, a, bins=bins, binning="mass") == pytest.approx(_sklearn_ece(c, a, bins, "quantile"), abs=1e-12)



def test_width_bin_equals_searchsorted_on_numpys_linspace_edges():
    """The kernels' width bin (no edge array: the edges are b * (1 / B), as numpy's linspace computes them)
    against numpy.searchsorted on linspace(0, 1, B + 1), on and next to every edge, for B = 1 .. 2000."""
    from tokcal.metrics._kernels import kernels

    bin_index = kernels()["bin_index"]
    rng = np.random.default_rng(0)
    for bins in (*range(1, 200), 255, 256, 1000, 1023, 1024, 1999, 2000):
        edges = np.linspace(0.0, 1.0, bins + 1)
        c = np.clip(np.concatenate([edges, np.nextafter(edges, 2), np.nextafter(edges, -1), rng.random(50)]), 0, 1)
        got = np.empty(c.size, np.int64)
        assert bin_index(c, bins, edges, True, got)[0] == -1
        want = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, bins - 1)
        np.testing.assert_array_equal(got, want, err_msg=f"bins={bins}")

def test_width_bins_equal_relplot_binning_including_edges():
    # relplot.estimators.Binning: bucket = min(floor(c * B), B - 1) -- the documented formula exactly.
    from relplot.estimators import Binning

    bins = 16  # k / 16 is exact in binary, so edge values land identically
    c, a = _data(3000, bins, seed=5)
    est = Binning(bins).fit(c.reshape(-1, 1), a.astype(float))
    rb = reliability_bins(c, a, bins=bins)
    np.testing.assert_array_equal(rb.count, est.bucket_sizes_)
    np.testing.assert_allclose(np.nan_to_num(rb.accuracy), est.bucket_predictions_, atol=1e-12, rtol=0)


@pytest.mark.parametrize("bins", [10, 15, 16])
def test_width_ece_equals_relplot_binned_ece(bins):
    # relplot.metrics.binnedECE puts c = 1 in an extra (B+1)-th bin, so no exact 1s here;
    # exact 0s and (for 16 bins, exactly representable) interior edges are included.
    import relplot.metrics

    c, a = _data(3000, bins, seed=bins + 1, edges=(bins == 16))
    keep = c < 1
    c, a = c[keep], a[keep]
    ref = relplot.metrics.binnedECE(c, a.astype(float), nbins=bins)
    assert ece(c, a, bins=bins) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_torchmetrics_agrees_within_float32(norm):
    # torchmetrics bins with bucketize(right=True) on float32 linspace edges and puts c = 1 in an
    # extra bin; we keep c < 1 and away from the edges, and compare within its float32 error.
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import binary_calibration_error

    for n in (100, 10_000, 100_000):
        c, a = _away_from_edges(n, 15, seed=n)
        c = np.minimum(c, 0.99999).astype(np.float32)
        ref = binary_calibration_error(torch.from_numpy(c), torch.from_numpy(a.astype(np.int64)), n_bins=15,
                                       norm=norm).item()
        assert ece(c, a, bins=15, norm=norm) == pytest.approx(ref, abs=2e-6)


def test_torchmetrics_multiclass_top_label():
    torch = pytest.importorskip("torch")
    from torchmetrics.classification import MulticlassCalibrationError

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20_000, 7)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((20_000, 1))).argmax(1)  # y ~ Categorical(p)
    metric = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")
    ref = metric(torch.from_numpy(p.astype(np.float32)), torch.from_numpy(y)).item()
    conf = p.max(1).astype(np.float32)
    assert ece(conf, p.argmax(1) == y, bins=15) == pytest.approx(ref, abs=2e-6)


def test_norms_and_debias_by_hand():
    c = np.array([0.05, 0.1, 0.15, 0.9, 0.95, 1.0])
    a = np.array([0, 0, 1, 1, 1, 0])
    rb = reliability_bins(c, a, bins=2)
    # bin 0: n=3 conf=0.1 acc=1/3; bin 1: n=3 conf=0.95 acc=2/3
    g = np.array([0.1 - 1 / 3, 0.95 - 2 / 3])
    assert ece(c, a, bins=2) == pytest.approx(np.mean(np.abs(g)), abs=1e-15)
    assert ece(c, a, bins=2, norm="l2") == pytest.approx(np.sqrt(np.mean(g**2)), abs=1e-15)
    assert ece(c, a, bins=2, norm="max") == pytest.approx(np.abs(g).max(), abs=1e-15)
    var = np.array([1 / 3 * 2 / 3, 2 / 3 * 1 / 3]) / 2
    d = g**2 - var
    assert ece(c, a, bins=2, norm="l2", debias=True) == pytest.approx(np.sqrt(max(np.mean(d), 0)), abs=1e-15)
    assert ece(c, a, bins=2, debias=True) == pytest.approx(np.mean(np.sqrt(np.maximum(d, 0))), abs=1e-15)
    lst = rb.to_list()
    assert lst[0]["n"] == 3 and lst[0]["lo"] == 0.0 and lst[1]["hi"] == 1.0
    assert lst[0]["acc_ci"][0] < 1 / 3 < lst[0]["acc_ci"][1]


def test_wilson_interval_matches_statsmodels_formula():
    rb = reliability_bins(np.full(20, 0.75), np.r_[np.ones(15), np.zeros(5)].astype(bool), bins=4)
    lo, hi = rb.accuracy_interval()
    z, n, p = 1.959963984540054, 20, 0.75
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert lo[3] == pytest.approx(centre - half) and hi[3] == pytest.approx(centre + half)
    assert np.isnan(lo[0]) and rb.to_list()[0]["accuracy"] is None


def test_one_token_and_one_class_are_defined():
    assert ece([0.7], [True]) == pytest.approx(0.3)
    assert ece([0.7], [True], debias=True) == 0.0
    assert ece([0.7], [True], binning="mass") == pytest.approx(0.3)
    assert ece(np.full(5, 0.6), np.zeros(5, bool), norm="l2", debias=True) == pytest.approx(0.6)
    for v in (ece([1.0, 1.0], [1, 1]), ece([0.0], [0], norm="max")):
        assert v == 0.0


def test_sample_weight_equals_repetition():
    c, a = _data(500, 15, seed=2)
    w = np.random.default_rng(0).integers(0, 4, c.size)
    rep_c, rep_a = np.repeat(c, w), np.repeat(a, w)
    assert ece(c, a, sample_weight=w) == pytest.approx(ece(rep_c, rep_a), abs=1e-12)


def test_over_under():
    c = np.array([0.9, 0.9, 0.9, 0.9, 0.2, 0.2])
    a = np.array([1, 0, 0, 0, 1, 1])
    r = over_under(c, a, bins=10)
    assert r["signed_gap"] == pytest.approx(c.mean() - a.mean())
    assert r["ece"] == pytest.approx(ece(c, a, bins=10))
    assert r["over_share"] + r["under_share"] == pytest.approx(1.0)
    assert r["over_share"] == pytest.approx((4 / 6 * 0.65) / (4 / 6 * 0.65 + 2 / 6 * 0.8))
    assert over_under([0.5, 0.5], [1, 0])["over_share"] == 0.0
    # every bin over-confident: the under share is +0.0, not -0.0 (which prints as "-0%")
    only_over = over_under([0.9, 0.6, 0.3], [1, 0, 0], bins=2)
    assert only_over["over_share"] == 1.0 and only_over["under_share"] == 0.0
    assert math.copysign(1.0, only_over["under_share"]) == 1.0
    assert f"{only_over['under_share']:.0%}" == "0%"
    only_under = over_under([0.1, 0.2], [1, 1], bins=10)
    assert math.copysign(1.0, only_under["over_share"]) == 1.0 and only_under["under_share"] == 1.0


@pytest.mark.parametrize("bad, msg", [
    (dict(confidence=[0.5, np.nan]), "confidence.*index 1"),
    (dict(confidence=[0.5, 1.5]), "confidence.*index 1"),
    (dict(confidence=[-0.1, 0.5]), "confidence.*index 0"),
    (dict(correct=[1, 2]), "correct.*index 1"),
    (dict(correct=[1, 0, 1]), "correct.*3 entries"),
    (dict(confidence=[], correct=[]), "empty"),
    (dict(sample_weight=[1.0, -1.0]), "sample_weight.*index 1"),
    (dict(bins=0), "bins"),
    (dict(norm="l3"), "norm"),
    (dict(binning="quantile"), "binning"),
])
def test_bad_input_names_the_problem(bad, msg):
    args = dict(confidence=[0.5, 0.7], correct=[1, 0])
    args.update(bad)
    with pytest.raises(ValidationError, match=msg):
        ece(**args)
    if "bins" not in bad and "norm" not in bad:
        with pytest.raises(ValidationError, match=msg):
            ece(**{**args, "binning": args.get("binning", "mass")})


def test_ece_shrinks_with_n_on_calibrated_data():
    rng = np.random.default_rng(42)
    vals = []
    for n in (1_000, 10_000, 100_000, 1_000_000):
        c = rng.beta(5, 2, n)
        a = rng.random(n) < c  # true probabilities are the confidences
        vals.append(ece(c, a))
    assert vals[0] > vals[1] > vals[2] > vals[3]
    assert vals[-1] < 0.003
    # debiasing removes most of the finite-sample bias of the squared error
    c = rng.beta(5, 2, 2000)
    a = rng.random(2000) < c
    assert ece(c, a, norm="l2", debias=True) < ece(c, a, norm="l2")
