"""Accumulators, signatures and hypothesis properties of the metrics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokcal.errors import TokcalError, ValidationError
from tokcal.metrics import (
    BinnedAccumulator,
    ScoreAccumulator,
    brier,
    check_same_signature,
    ece,
    nll,
    parse_signature,
    reliability_bins,
    signature,
    top_label_brier,
)

probs = st.floats(0.0, 1.0, allow_nan=False)
tokens = st.lists(st.tuples(probs, st.booleans(), st.integers(0, 2)), min_size=1, max_size=60)


def _arrays(data):
    c = np.array([t[0] for t in data])
    a = np.array([t[1] for t in data])
    s = np.array([t[2] for t in data])
    return c, a, s


@settings(max_examples=60, deadline=None)
@given(tokens, st.integers(1, 20), st.sampled_from(["width", "mass"]), st.sampled_from(["l1", "l2", "max"]),
       st.booleans(), st.randoms(use_true_random=False))
def test_ece_in_unit_interval_and_order_invariant(data, bins, binning, norm, debias, rnd):
    c, a, _ = _arrays(data)
    v = ece(c, a, bins=bins, binning=binning, norm=norm, debias=debias)
    assert 0.0 <= v <= 1.0
    perm = list(range(len(c)))
    rnd.shuffle(perm)
    assert ece(c[perm], a[perm], bins=bins, binning=binning, norm=norm, debias=debias) == pytest.approx(v, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(tokens, st.integers(1, 60), st.integers(1, 20))
def test_merge_equals_one_pass_and_slices_partition(data, cut, bins):
    c, a, s = _arrays(data)
    cut = min(cut, len(c))
    one = BinnedAccumulator(bins, n_slices=3)
    one.update(c, a, slice_codes=s)
    left, right = BinnedAccumulator(bins, 3), BinnedAccumulator(bins, 3)
    left.update(c[:cut], a[:cut], slice_codes=s[:cut])
    if cut < len(c):
        right.update(c[cut:], a[cut:], slice_codes=s[cut:])
    merged = left.merge(right).compute()
    res = one.compute()
    for key in res:
        np.testing.assert_allclose(merged[key], res[key], atol=1e-12, equal_nan=True)
    # slices partition the tokens: per-slice counts and sums add up to the whole
    whole = BinnedAccumulator(bins)
    whole.update(c, a)
    np.testing.assert_allclose(one.state.sum(1), whole.state[:, 0], atol=1e-12)
    assert res["n"].sum() == len(c)
    for k in range(3):
        m = s == k
        if m.any():
            assert res["ece"][k] == pytest.approx(ece(c[m], a[m], bins=bins), abs=1e-12)
            assert res["debiased_rmsce"][k] == pytest.approx(ece(c[m], a[m], bins=bins, norm="l2", debias=True),
                                                             abs=1e-12)
        else:
            assert res["n"][k] == 0 and np.isnan(res["ece"][k])


def test_accumulator_matches_functional_and_streams():
    rng = np.random.default_rng(0)
    c = rng.random(50_000).astype(np.float32)
    a = rng.random(c.size) < c**1.3
    acc = BinnedAccumulator(15)
    for lo in range(0, c.size, 7_000):
        acc.update(c[lo:lo + 7_000], a[lo:lo + 7_000])
    out = acc.compute()
    assert out["ece"][0] == pytest.approx(ece(c, a), abs=1e-12)
    assert out["mce"][0] == pytest.approx(ece(c, a, norm="max"), abs=1e-12)
    assert out["debiased"][0] == pytest.approx(ece(c, a, debias=True), abs=1e-12)
    rb = reliability_bins(c, a)
    np.testing.assert_allclose(acc.reliability().count, rb.count)
    assert out["accuracy"][0] == pytest.approx(a.mean())
    with pytest.raises(ValidationError, match="slice_codes.*index 1"):
        acc.update(c[:3], a[:3], slice_codes=np.array([0, 1, 0]))
    with pytest.raises(ValidationError, match="confidence.*index 2"):
        acc.update(np.array([0.1, 0.2, 2.0]), a[:3])
    assert acc.compute()["n"][0] == c.size  # a refused batch leaves no trace
    with pytest.raises(ValidationError, match="merge"):
        acc.merge(BinnedAccumulator(10))


def test_score_accumulator():
    rng = np.random.default_rng(1)
    n = 1000
    py = rng.random(n)
    sq = np.clip(py**2 + rng.random(n) * 0.1, 0, 1)
    c = rng.random(n)
    a = rng.random(n) < 0.5
    codes = rng.integers(-1, 2, n)
    acc1, acc2 = ScoreAccumulator(2), ScoreAccumulator(2)
    acc1.update(label_prob=py[:400], sum_sq=sq[:400], confidence=c[:400], correct=a[:400], slice_codes=codes[:400])
    acc2.update(label_prob=py[400:], sum_sq=sq[400:], confidence=c[400:], correct=a[400:], slice_codes=codes[400:])
    out = acc1.merge(acc2).compute()
    for k in range(2):
        m = codes == k
        assert out["brier"][k] == pytest.approx(brier(sq[m], py[m]), abs=1e-12)
        assert out["nll"][k] == pytest.approx(nll(label_prob=py[m]), abs=1e-12)
        assert out["top_label_brier"][k] == pytest.approx(top_label_brier(c[m], a[m]), abs=1e-12)
        assert out["n_brier"][k] == m.sum()


def test_signature():
    sig = signature("ece")
    assert sig == "ece|bins=15|binning=width|norm=l1|conf=top1|labels=teacher-forced|def=1|tokcal=0.1.0"
    assert signature("ece", bins=10).startswith("ece|bins=10|binning=width")
    metric, settings_ = parse_signature(signature("smooth_ece", temperature=1.5))
    assert metric == "smooth_ece" and settings_["temperature"] == "1.5"
    check_same_signature(sig, signature("ece", bins=15))
    with pytest.raises(TokcalError, match="bins: 15 vs 10"):
        check_same_signature(sig, signature("ece", bins=10))
    with pytest.raises(TokcalError, match="metric"):
        check_same_signature(sig, signature("rmsce"))
    check_same_signature(sig, signature("ece", bins=10), ignore=("bins",))
    with pytest.raises(TokcalError, match="not allowed"):
        signature("ece", slice="a|b")
