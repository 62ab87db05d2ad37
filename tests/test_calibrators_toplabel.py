"""Top-label calibrators against scikit-learn and brute force; Selective; conformal token sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from tokcal import TokenTable, synthetic
from tokcal.calibrators import (
    BetaCalibration,
    ConformalTokenSets,
    HistogramBinning,
    Isotonic,
    Selective,
    Temperature,
    split_by_sequence,
)
from tokcal.errors import ValidationError
from tokcal.probs import token_probs


@pytest.fixture(scope="module")
def full():
    """Full logits (so calibrated distributions can be checked by brute force) and their table."""
    z = synthetic.make_logits(3000, 400, seed=21)
    y = synthetic.sample_labels(z, 0.5, seed=22)
    return z, y, TokenTable.from_logits(z, y, sequence_ids=np.arange(3000) // 30, top_k=32)


def test_isotonic_matches_sklearn(full):
    _, _, t = full
    tp = token_probs(t)
    cal = Isotonic().fit(t)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(tp.confidence, tp.correct)
    grid = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(cal.map_confidence(grid), ref.predict(grid), atol=1e-12)


def test_beta_matches_unpenalised_logistic_regression(full):
    _, _, t = full
    tp = token_probs(t)
    c = np.clip(tp.confidence, 1e-7, 1 - 1e-7)
    x = np.stack([np.log(c), -np.log1p(-c)], axis=1)
    cal = BetaCalibration().fit(t)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(x, tp.correct)
    if min(ref.coef_[0]) >= 0:  # unconstrained optimum is feasible -> identical problem
        np.testing.assert_allclose([cal.a, cal.b, cal.m], [*ref.coef_[0], ref.intercept_[0]], rtol=1e-3, atol=1e-3)
    assert cal.a >= 0 and cal.b >= 0


def test_histogram_bins_hold_bin_accuracy(full):
    _, _, t = full
    tp = token_probs(t)
    cal = HistogramBinning(10).fit(t)
    b = np.searchsorted(cal.edges[1:-1], tp.confidence, side="right")
    for j in range(10):
        assert cal.values[j] == pytest.approx(tp.correct[b == j].mean())


@pytest.mark.parametrize("cls", [HistogramBinning, Isotonic, BetaCalibration])
def test_rescaled_distribution_matches_brute_force(full, cls):
    z, y, t = full
    cal = cls().fit(t)
    assert cal.preserves_argmax is False
    tp = cal.token_probs(t)
    p = softmax(z.astype(np.float64), axis=1)
    c = p.max(axis=1)
    # the map is evaluated at the table's confidence (float32 log-normaliser): a step of the isotonic map can
    # sit between that and the exact c
    c2 = cal.map_confidence(np.minimum(token_probs(t).confidence, 1.0))
    off = p.copy()
    off[np.arange(len(p)), p.argmax(1)] = 0.0
    rest = off.sum(1)  # mass off the argmax, without the cancellation of 1 - c near c = 1
    q = p * ((1 - c2) / rest)[:, None]
    q[np.arange(len(q)), p.argmax(1)] = c2
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-9)
    # top-label convention: the model's prediction stays first with its calibrated confidence c'; the other
    # ids keep their order (they are all rescaled by the same r)
    pred = p.argmax(1)
    order = np.argsort(-p, axis=1, kind="stable")[:, :32]
    np.testing.assert_array_equal(tp.top_ids, order)
    ref_top = np.take_along_axis(q, order, 1)
    # r = (1 - c') / (1 - c) amplifies the float32 rounding of the stored log-normaliser when c ~ 1
    np.testing.assert_allclose(tp.top_probs, ref_top, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tp.confidence, c2, atol=1e-9)
    np.testing.assert_array_equal(tp.predicted, pred)
    np.testing.assert_allclose(tp.label_prob, q[np.arange(len(y)), y], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(tp.sum_sq, (q * q).sum(1), rtol=1e-4)  # tail at beta=2 is interpolated
    ent = -(q * np.log(np.where(q > 0, q, 1))).sum(1)
    np.testing.assert_allclose(tp.entropy, ent, rtol=1e-4, atol=1e-6)
    # transform_logits gives the same distribution from raw logits, numpy and torch
    out = cal.transform_logits(z)
    q_exact = p * ((1 - cal.map_confidence(c)) / rest)[:, None]
    q_exact[np.arange(len(q)), p.argmax(1)] = cal.map_confidence(c)
    np.testing.assert_allclose(softmax(out.astype(np.float64), axis=1), q_exact, atol=1e-6)
    out_t = cal.transform_logits(torch.from_numpy(z))
    np.testing.assert_allclose(out_t.numpy(), out, atol=1e-5)


def test_selective_changes_only_low_confidence_rows(full):
    z, _, t = full
    sel = Selective(Temperature(), threshold=0.4).fit(t)
    base = token_probs(t)
    low = base.confidence < 0.4
    assert 0 < low.sum() < len(t)
    inner_only = Temperature().fit(t.select(low)).temperature
    assert sel.calibrator.temperature == pytest.approx(inner_only)
    tp = sel.token_probs(t)
    for name in ("top_ids", "top_probs", "label_prob", "sum_sq", "entropy"):
        np.testing.assert_array_equal(getattr(tp, name)[~low], getattr(base, name)[~low])
    assert not np.allclose(tp.top_probs[low], base.top_probs[low])
    out = sel.transform_logits(z)
    conf = softmax(z.astype(np.float64), axis=1).max(1)
    np.testing.assert_array_equal(out[conf >= 0.4], z[conf >= 0.4])
    low_z = z[conf < 0.4]
    np.testing.assert_allclose(out[conf < 0.4], (low_z - low_z.max(axis=1, keepdims=True)) / sel.calibrator.temperature,
                               rtol=1e-6)
    out_t = sel.transform_logits(torch.from_numpy(z))
    assert torch.equal(out_t[torch.from_numpy(conf >= 0.4)], torch.from_numpy(z[conf >= 0.4]))
    assert sel.preserves_argmax
    assert not Selective(Isotonic(), 0.4).preserves_argmax
    with pytest.raises(ValidationError, match="threshold"):
        Selective(Temperature(), 1.5)


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_conformal_coverage_on_held_out(score):
    # k = V: every set is listed in full (APS scores a gold id past the top-k as 1, which needs k = V to be exact)
    t = synthetic.make_table(40000, 200, beta_star=1.0, top_k=200, seed=31)
    cal_t, test = split_by_sequence(t, 0.5, seed=0)
    conf = ConformalTokenSets(alpha=0.1, score=score).fit(cal_t)
    cov = conf.coverage(test)
    assert cov["overall"]["n"] >= 19000
    assert abs(cov["overall"]["coverage"] - 0.9) < 0.015
    assert cov["overall"]["truncated"] == 0.0
    sets = conf.sets(test.select(np.arange(200)))
    ids, member, _ = conf.set_mask(test.select(np.arange(200)))
    assert [len(s) for s in sets] == member.sum(1).tolist()
    listed = np.array([y in s for s, y in zip(sets, test.label[:200], strict=True)])
    np.testing.assert_array_equal(listed, conf.scores(test.select(np.arange(200))) <= conf.threshold)


def test_conformal_finite_sample_quantile_and_slices():
    t = synthetic.make_table(3000, 200, domains={"x": 0.7, "y": 1.4}, seed=2)
    conf = ConformalTokenSets(alpha=0.2).fit(t)
    s = np.sort(conf.scores(t))
    n = len(s)
    assert conf.threshold == s[int(np.ceil((n + 1) * 0.8)) - 1]
    cov = conf.coverage(t, slices="domain")
    parts = cov["slices"]["domain"]
    assert set(parts) == {"x", "y"}
    total = sum(p["n"] * p["coverage"] for p in parts.values()) / n
    assert total == pytest.approx(cov["overall"]["coverage"])
    assert ConformalTokenSets(alpha=1 / 3001).fit(t).threshold == s[-1]  # rank ceil(3001 (1 - a)) = n
    assert ConformalTokenSets(alpha=1 / 4000).fit(t).threshold == np.inf  # rank n + 1: the whole vocabulary
    with pytest.raises(ValidationError):
        ConformalTokenSets(alpha=0.0)


@pytest.mark.parametrize("cls", [HistogramBinning, Isotonic])
def test_top_label_maps_remove_in_sample_miscalibration(cls):
    """Fitted and scored on the same strongly over-confident table, a binning/isotonic map of the
    prediction's confidence leaves (almost) no top-label ECE: it is the per-bin accuracy itself."""
    from tokcal import metrics
    from tokcal.synthetic import make_table

    t = make_table(20_000, 500, beta_star=0.5, seed=3)
    before = token_probs(t)
    after = cls().fit(t).token_probs(t)
    np.testing.assert_array_equal(after.predicted, before.predicted)
    ece_before = metrics.ece(before.confidence, before.correct)
    ece_after = metrics.ece(after.confidence, after.correct)
    assert ece_before > 0.1
    assert ece_after < 0.02, (ece_before, ece_after)
