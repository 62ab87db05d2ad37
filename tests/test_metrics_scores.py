"""Brier, NLL, classwise ECE, per-token shares and AURC against brute force on full probabilities."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tokcal.errors import ValidationError
from tokcal.metrics import (
    aurc,
    brier,
    classwise_calibration,
    classwise_ece,
    ece,
    nll,
    per_token_reliability,
    risk_coverage,
    top_label_brier,
)


def _softmax_data(n, v, seed, beta=1.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, v)) * 2.5 - 0.6 * np.log1p(np.arange(v))  # Zipf-like frequencies
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = p**beta / (p**beta).sum(1, keepdims=True)  # the true distribution
    y = (q.cumsum(1) > rng.random((n, 1))).argmax(1)
    return p, y


def test_brier_nll_brute_force():
    p, y = _softmax_data(2000, 30, seed=0)
    onehot = np.eye(30)[y]
    py = p[np.arange(len(y)), y]
    assert brier((p**2).sum(1), py) == pytest.approx(((p - onehot) ** 2).sum(1).mean(), abs=1e-12)
    assert nll(label_prob=py) == pytest.approx(-np.log(py).mean(), abs=1e-12)
    assert nll(label_logprob=np.log(py)) == pytest.approx(-np.log(py).mean(), abs=1e-12)
    c, a = p.max(1), p.argmax(1) == y
    assert top_label_brier(c, a) == pytest.approx(((c - a) ** 2).mean(), abs=1e-15)


def test_nll_floors_a_zero_probability_as_evaluate_does():
    floor = -np.log(np.finfo(np.float64).tiny)  # 708.4 nats
    assert nll(label_prob=[1.0, 0.0]) == pytest.approx(floor / 2)
    assert nll([0.0, 0.5]) == pytest.approx((floor + np.log(2)) / 2)
    assert nll(label_logprob=[0.0, -np.inf]) == pytest.approx(floor / 2)
    assert nll(label_logprob=[0.0, -np.inf], sample_weight=[1, 0]) == 0.0
    with pytest.raises(ValidationError, match="exactly one"):
        nll()
    with pytest.raises(ValidationError, match="exactly one"):
        nll(label_prob=[0.5], label_logprob=[-1.0])
    with pytest.raises(ValidationError, match="label_logprob.*index 1"):
        nll(label_logprob=[-1.0, 0.5])
    with pytest.raises(ValidationError, match="label_prob.*index 0"):
        brier([0.5], [1.2])


def test_brier_accepts_float_rounding_of_one_and_refuses_real_excess():
    one = 1.0000000000000002  # sum of squares of a one-hot distribution after float rounding
    assert one > 1.0
    assert brier([one, 0.5], [1.0, 0.5]) == pytest.approx(((1 - 2 + 1) + (0.5 - 1 + 1)) / 2, abs=1e-15)
    assert brier(np.array([1 + 5e-10], np.float64), [1.0]) == 0.0  # clipped to 1
    with pytest.raises(ValidationError, match=r"sum_sq.*index 1 holds.*1\.001"):
        brier([0.3, 1.001], [0.5, 0.5])
    with pytest.raises(ValidationError, match="sum_sq.*index 0"):
        brier([1 + 1e-8], [0.5])
    with pytest.raises(ValidationError, match="sum_sq.*index 0 holds.*nan"):
        brier([np.nan], [0.5])


def _classwise_brute(p, y, classes, bins, approx=None):
    """A loop over classes on full [N, V] probabilities (``approx`` replaces unknown entries)."""
    q = p if approx is None else approx
    vals = []
    for j in classes:
        vals.append(ece(q[:, j], y == j, bins=bins))
    return np.array(vals)


@pytest.mark.parametrize("v", [8, 200])
def test_classwise_exact_with_full_distributions(v):
    p, y = _softmax_data(3000, v, seed=v)
    ids = np.argsort(-p, axis=1, kind="stable")
    probs = np.take_along_axis(p, ids, 1)
    res = classwise_calibration(ids, probs, y, top_m=5, bins=10)
    counts = np.bincount(y, minlength=v)
    expected_cls = np.lexsort((np.arange(v), -counts))[:5]
    np.testing.assert_array_equal(res.classes, expected_cls)
    np.testing.assert_array_equal(res.support, counts[expected_cls])
    brute = _classwise_brute(p, y, expected_cls, 10)
    np.testing.assert_allclose(res.ece, brute, atol=1e-12)
    assert classwise_ece(ids, probs, y, top_m=5, bins=10) == pytest.approx(brute.mean(), abs=1e-12)


def test_classwise_from_topk_sketch_matches_brute_force_approximation():
    n, v, k = 2500, 300, 8
    p, y = _softmax_data(n, v, seed=9)
    ids = np.argsort(-p, axis=1, kind="stable")[:, :k]
    probs = np.take_along_axis(p, ids, 1)
    py = p[np.arange(n), y]
    tail = (1 - probs.sum(1)) / (v - k)
    # brute force: every entry outside the top-k is the row's mean tail, except the gold entry
    approx = np.repeat(tail[:, None], v, 1)
    np.put_along_axis(approx, ids, probs, 1)
    approx[np.arange(n), y] = py
    res = classwise_calibration(ids, probs, y, label_prob=py, vocab_size=v, top_m=12, bins=15)
    np.testing.assert_allclose(res.ece, _classwise_brute(p, y, res.classes, 15, approx), atol=1e-12)
    res2 = classwise_calibration(ids, probs, y, tail_prob=tail, label_prob=py, top_m=12, bins=15)
    np.testing.assert_allclose(res2.ece, res.ece, atol=1e-15)
    # scikit-learn loop as an independent oracle of the same per-class numbers
    from sklearn.calibration import calibration_curve

    j = res.classes[0]
    pt, pp = calibration_curve(y == j, approx[:, j], n_bins=15)
    assert res.ece[0] == pytest.approx(np.nan_to_num(res.count[0][res.count[0] > 0] / n) @ np.abs(pt - pp),
                                       abs=1e-9)


def test_classwise_unlabeled_rows_and_one_class():
    ids = np.array([[0, 1], [1, 0], [0, 1]])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3]])
    y = np.array([0, -1, 0])
    res = classwise_calibration(ids, probs, y)
    assert res.classes.tolist() == [0] and res.support.tolist() == [1 * 2]
    assert res.mean == pytest.approx(ece([0.9, 0.7], [1, 1]))
    with pytest.raises(ValidationError, match="no labeled"):
        classwise_ece(ids, probs, np.full(3, -1))
    with pytest.raises(ValidationError, match="top_probs"):
        classwise_ece(ids, probs + 1, y)


def test_per_token_shares_sum_to_ece():
    p, y = _softmax_data(5000, 40, seed=4, beta=1.6)
    pred, c = p.argmax(1), p.max(1)
    a = pred == y
    r = per_token_reliability(pred, c, a, bins=15)
    assert r["ece_share"].sum() == pytest.approx(ece(c, a, bins=15), abs=1e-12)
    for t in r["id"][:5]:
        m = pred == t
        row = np.flatnonzero(r["id"] == t)[0]
        assert r["n"][row] == m.sum()
        assert r["confidence"][row] == pytest.approx(c[m].mean())
        assert r["gap"][row] == pytest.approx(c[m].mean() - a[m].mean())
    big = per_token_reliability(pred * 10**9, c, a)  # sparse huge ids take the np.unique path
    np.testing.assert_allclose(big["ece_share"], r["ece_share"])
    assert (per_token_reliability(pred, c, a, min_count=200)["n"] >= 200).all()


def _aurc_brute(c, a):
    order = np.argsort(-c, kind="stable")
    err = 1 - a[order]
    k = np.arange(1, len(c) + 1)
    return float((np.cumsum(err) / k).mean())


def test_aurc_brute_force_and_ties():
    rng = np.random.default_rng(1)
    c = rng.random(3000)
    a = (rng.random(3000) < c).astype(int)
    assert aurc(c, a) == pytest.approx(_aurc_brute(c, a), abs=1e-14)
    # ties: the expectation over every order inside the tie groups
    c = np.array([0.9, 0.7, 0.7, 0.7, 0.2, 0.2])
    a = np.array([1, 0, 1, 1, 0, 1])
    vals = []
    for perm in itertools.permutations(range(3)):
        for perm2 in itertools.permutations(range(2)):
            order = np.r_[0, 1 + np.array(perm), 4 + np.array(perm2)]
            err = 1 - a[order]
            vals.append((np.cumsum(err) / np.arange(1, 7)).mean())
    assert aurc(c, a) == pytest.approx(np.mean(vals), abs=1e-14)
    cov, risk = risk_coverage(c, a)
    np.testing.assert_allclose(cov, [1 / 6, 4 / 6, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 4, 2 / 6])
    assert aurc([0.5], [1]) == 0.0
