"""Temperature scaling: recovery of beta*, exactness against brute force on full logits, bounds, streaming."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from tokcal import TokenTable, synthetic
from tokcal.calibrators import CalibrationWarning, Temperature
from tokcal.calibrators.temperature import newton_beta
from tokcal.errors import ConvergenceError, ValidationError
from tokcal.probs import token_probs


def brute_force_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """ML temperature on full logits: bounded 1-D minimisation of the exact mean NLL."""
    z64 = z.astype(np.float64)
    zy = z64[np.arange(len(y)), y]
    res = minimize_scalar(lambda t: np.mean(logsumexp(z64 / t, axis=1) - zy / t), bounds=(0.05, 20.0),
                          method="bounded", options={"xatol": 1e-10})
    return float(res.x)


@pytest.mark.parametrize("beta_star", [0.5, 1.0, 2.0])
def test_recovers_beta_star_within_bootstrap_interval(beta_star):
    # (the estimator is unbiased with the interval's width: over 30 seeds at beta*=0.5, mean T 2.001,
    # sd 0.018, interval-implied se 0.019; a 99 % interval keeps the three checks from failing by chance)
    table = synthetic.make_table(12000, 500, beta_star=beta_star, seed=0)
    cal = Temperature().fit(table)
    lo, hi = cal.interval(table, level=0.99, n_boot=2000, seed=1)
    assert lo < cal.temperature < hi
    assert lo <= 1.0 / beta_star <= hi, (lo, cal.temperature, hi)
    assert cal.fit_info["at_bound"] is None


def test_linearised_interval_matches_refit_bootstrap():
    table = synthetic.make_table(3000, 300, beta_star=0.7, seed=5)
    cal = Temperature().fit(table)
    lo, hi = cal.interval(table, n_boot=400, seed=0)
    rng = np.random.default_rng(0)
    seqs = np.unique(table.sequence_id)
    temps = []
    for _ in range(60):
        pick = rng.choice(seqs, len(seqs))
        rows = np.concatenate([np.flatnonzero(table.sequence_id == s) for s in pick])
        temps.append(Temperature().fit(table.select(rows)).temperature)
    ref_lo, ref_hi = np.quantile(temps, [0.025, 0.975])
    width = hi - lo
    assert abs(lo - ref_lo) < 0.35 * width and abs(hi - ref_hi) < 0.35 * width


@pytest.mark.parametrize("beta_star", [0.4, 2.0])
def test_sketch_fit_equals_brute_force_on_32k_vocab(beta_star):
    z = synthetic.make_logits(160, 32000, seed=3)
    y = synthetic.sample_labels(z, beta_star, seed=4)
    cal = Temperature().fit_logits(z, y, chunk_rows=64)
    ref = brute_force_temperature(z, y)
    assert abs(cal.temperature / ref - 1) < 1e-3
    if beta_star != 0.4:
        return
    # same from a stored table, and from torch logits
    table = TokenTable.from_logits(z, y)
    assert Temperature().fit(table).temperature == pytest.approx(cal.temperature, rel=1e-12)
    t_torch = Temperature().fit_logits(torch.from_numpy(z), torch.from_numpy(y), chunk_rows=100).temperature
    assert t_torch == pytest.approx(cal.temperature, rel=1e-5)


def test_unknown_labels_are_excluded():
    z = synthetic.make_logits(600, 500, seed=8)
    y = synthetic.sample_labels(z, 0.6, seed=9)
    y_masked = y.copy()
    y_masked[::3] = -1
    keep = y_masked >= 0
    a = Temperature().fit(TokenTable.from_logits(z, y_masked)).temperature
    b = Temperature().fit(TokenTable.from_logits(z[keep], y[keep])).temperature
    assert a == pytest.approx(b, rel=1e-10)
    assert Temperature().fit_logits(z, y_masked).temperature == pytest.approx(b, rel=1e-10)
    with pytest.raises(ValidationError, match="no labelled rows"):
        Temperature().fit(TokenTable.from_logits(z, np.full(600, -1)))


def test_large_table_warm_start_matches_direct_newton():
    # > 2 * 65536 rows triggers the sub-sample warm start; the answer must not depend on it
    base = synthetic.make_table(4000, 200, beta_star=0.8, seed=2)
    big = base.select(np.random.default_rng(0).integers(0, len(base), 140_000))
    fast = Temperature().fit(big).temperature
    from tokcal.calibrators.temperature import newton_beta as nb
    from tokcal.calibrators.temperature import nll_sums

    sk = big.sketch
    beta, _ = nb(lambda b: nll_sums(sk, b) / len(sk), 1.0, (0.05, 20.0), rtol=1e-9)
    assert fast == pytest.approx(1.0 / beta, rel=1e-7)


def test_fit_parquet_streaming_equals_in_memory(tmp_path):
    table = synthetic.make_table(6000, 300, beta_star=0.6, seed=4)
    d = tmp_path / "ds"
    d.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(table)), 3)):
        table.select(rows).write_parquet(d / f"part-{i}.parquet")
    mem = Temperature().fit(table)
    stream = Temperature().fit_parquet(d, batch_rows=1000)
    assert stream.temperature == pytest.approx(mem.temperature, rel=1e-6)
    assert stream.fit_info["passes"] == 1


def test_fixed_temperature_is_not_fitted_and_scales_logits():
    cal = Temperature(temperature=1.3)
    table = synthetic.make_table(500, 100, beta_star=0.5, seed=1)
    assert cal.fit(table).temperature == 1.3
    z = synthetic.make_logits(4, 50, seed=0)
    shifted = z - z.max(axis=1, keepdims=True)  # the row maximum is subtracted first (same softmax)
    np.testing.assert_allclose(cal.transform_logits(z), shifted / 1.3, rtol=1e-6)
    zt = torch.from_numpy(z)
    out = cal.transform_logits(zt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), shifted / 1.3, rtol=1e-6)
    tp = cal.token_probs(table)
    ref = token_probs(table, temperature=1.3)
    np.testing.assert_array_equal(tp.top_probs, ref.top_probs)
    np.testing.assert_array_equal(cal.confidence(table), ref.confidence)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 20.0), st.integers(2, 40))
def test_temperature_never_changes_argmax(seed, temperature, vocab):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((16, vocab)) * rng.uniform(0.1, 10)).astype(np.float32)
    out = Temperature(temperature=temperature).transform_logits(z)
    np.testing.assert_array_equal(out.argmax(axis=1), z.argmax(axis=1))
    table = TokenTable.from_logits(z, rng.integers(0, vocab, 16), top_k=min(vocab, 4))
    tp = Temperature(temperature=temperature).token_probs(table)
    np.testing.assert_array_equal(tp.predicted, table.predicted)


def test_degenerate_all_correct_hits_bound_with_warning():
    z = synthetic.make_logits(5, 50, seed=0)
    y = z.argmax(axis=1)
    with pytest.warns(CalibrationWarning, match="bound"):
        cal = Temperature().fit(TokenTable.from_logits(z, y))
    assert cal.temperature == pytest.approx(0.05)
    assert cal.fit_info["at_bound"] == "T_min"
    # all wrong and far from the top: the flattest allowed temperature, also with a warning
    y_worst = z.argmin(axis=1)
    with pytest.warns(CalibrationWarning):
        cal = Temperature(bounds=(0.1, 5.0)).fit(TokenTable.from_logits(z, y_worst))
    assert 0 < cal.temperature <= 5.0 and np.isfinite(cal.temperature)


def test_convergence_error_and_bad_arguments():
    with pytest.raises(ConvergenceError, match="not finite"):
        newton_beta(lambda b: np.array([np.nan, 0.0, 1.0]), 1.0, (0.05, 20.0))
    # a wrong (near-zero) curvature makes every Newton step overshoot: bisection cannot finish in 4 steps
    with pytest.raises(ConvergenceError, match="did not converge"):
        newton_beta(lambda b: np.array([0.0, b - 3.0, 1e-9]), 1.0, (0.05, 20.0), max_iter=4)
    beta, info = newton_beta(lambda b: np.array([0.0, b - 3.0, 1e-9]), 1.0, (0.05, 20.0))
    assert beta == pytest.approx(3.0, rel=1e-6) and info["at_bound"] is None
    with pytest.raises(ValidationError, match="bounds"):
        Temperature(bounds=(2.0, 1.0))
    with pytest.raises(ValidationError, match="temperature"):
        Temperature(temperature=-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Temperature().fit(synthetic.make_table(400, 50, beta_star=1.0, seed=3))
