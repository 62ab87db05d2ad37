"""Abstention thresholds, risk-coverage before/after calibration, Abstainer persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from tokcal import synthetic
from tokcal.calibrators import Temperature
from tokcal.errors import SchemaError, ValidationError
from tokcal.integrations.abstain import Abstainer, clopper_pearson_upper, risk_coverage_report, select_threshold
from tokcal.probs import token_probs


def _brute_force_empirical(c, a, target):
    """Lowest threshold among the confidences whose accepted tokens have error rate <= target."""
    best = math.inf
    for tau in np.unique(c):
        keep = c >= tau
        if (~a[keep]).sum() / keep.sum() <= target:
            best = min(best, tau)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_empirical_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    c = np.round(rng.random(300), 2)  # ties on purpose
    a = rng.random(300) < c
    for target in (0.05, 0.2, 0.4):
        ch = select_threshold(c, a, target_risk=target, method="empirical")
        assert ch.threshold == _brute_force_empirical(c, a, target)
        if math.isfinite(ch.threshold):
            keep = c >= ch.threshold
            assert ch.coverage == keep.mean() and ch.risk == pytest.approx(1 - a[keep].mean())


def test_clopper_pearson_matches_scipy_exact_interval():
    for e, n in [(0, 10), (3, 50), (40, 400), (7, 7)]:
        ub = clopper_pearson_upper(np.array(e), np.array(n), 0.05)
        # one-sided 95 % upper bound = upper end of the two-sided 90 % exact interval
        ref = binomtest(e, n).proportion_ci(confidence_level=0.90, method="exact").high
        assert float(ub) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("seed", range(2))
def test_bound_threshold_meets_target_risk_on_held_out_synthetic_data(seed):
    target = 0.25
    val = synthetic.make_table(12000, 400, beta_star=0.8, seed=seed)
    test = synthetic.make_table(12000, 400, beta_star=0.8, seed=100 + seed)
    cal = Temperature().fit(val)
    ab = Abstainer.fit(val, cal, target_risk=target, method="bound", delta=0.05)
    assert 0.05 < ab.coverage < 1.0
    probs = cal.token_probs(test)
    keep = ~ab.flag(probs.confidence)
    held_out_risk = 1.0 - probs.correct[keep].mean()
    assert held_out_risk <= target
    # the empirical choice covers more, and its held-out risk is close to the target
    emp = select_threshold(cal.token_probs(val).confidence, cal.token_probs(val).correct, target_risk=target,
                           method="empirical")
    assert emp.coverage >= ab.coverage
    keep_e = probs.confidence >= emp.threshold
    assert abs((1.0 - probs.correct[keep_e].mean()) - target) < 0.02


def test_target_accuracy_is_one_minus_risk_and_impossible_target():
    rng = np.random.default_rng(0)
    c = rng.random(500)
    a = rng.random(500) < c
    by_acc, by_risk = select_threshold(c, a, target_accuracy=0.8), select_threshold(c, a, target_risk=0.2)
    assert (by_acc.threshold, by_acc.coverage) == (by_risk.threshold, by_risk.coverage)
    never = select_threshold(np.full(50, 0.9), np.zeros(50, bool), target_risk=0.1)
    assert never.threshold == math.inf and never.coverage == 0.0
    assert Abstainer(never.threshold).flag([0.99, 1.0]).all()
    with pytest.raises(ValidationError, match="exactly one"):
        select_threshold(c, a, target_risk=0.1, target_accuracy=0.9)
    with pytest.raises(ValidationError, match="row 2"):
        select_threshold([0.1, 0.2, np.nan], [1, 0, 1], target_risk=0.1)


def test_risk_coverage_before_and_after_calibration():
    table = synthetic.make_table(5000, 300, beta_star=0.6, seed=3)
    cal = Temperature().fit(table)
    rep = risk_coverage_report(table, cal)
    raw, after = token_probs(table), cal.token_probs(table)
    for key, probs in (("before", raw), ("after", after)):
        cov, risk = np.asarray(rep[key]["coverage"]), np.asarray(rep[key]["risk"])
        assert cov[-1] == 1.0 and risk[-1] == pytest.approx(1.0 - probs.correct.mean())
        # brute-force AURC: mean over k of the error rate of the k most confident tokens (ties, rare, move it by < 1e-5)
        order = np.argsort(-probs.confidence, kind="stable")
        err = np.cumsum(~probs.correct[order]) / np.arange(1, len(order) + 1)
        assert rep[key]["aurc"] == pytest.approx(err.mean(), rel=1e-5)


def test_abstainer_save_load_roundtrip(tmp_path):
    ab = Abstainer(0.42, target_risk=0.1, coverage=0.7)
    path = ab.save(tmp_path / "abstain.json")
    assert Abstainer.load(path) == ab
    inf = Abstainer(math.inf, target_risk=0.1, coverage=0.0)
    assert Abstainer.load(inf.save(tmp_path / "inf.json")).threshold == math.inf
    (tmp_path / "bad.json").write_text("{\"type\": \"temperature\"}")
    with pytest.raises(SchemaError, match="bad.json"):
        Abstainer.load(tmp_path / "bad.json")


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.5", True])
def test_abstainer_threshold_is_validated(bad):
    with pytest.raises(ValidationError, match=r"^Abstainer: threshold must"):
        Abstainer(bad)
    with pytest.raises(ValidationError, match=r"^Abstainer: coverage must"):
        Abstainer(0.5, coverage=2.0)
