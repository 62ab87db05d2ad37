"""Smooth ECE and the smoothed reliability curve against relplot."""

from __future__ import annotations

import numpy as np
import pytest

from tokcal.errors import ValidationError
from tokcal.metrics import smooth_ece, smooth_reliability

relplot = pytest.importorskip("relplot")


def _data(n, power, seed):
    rng = np.random.default_rng(seed)
    c = rng.beta(4, 2, n)
    a = rng.random(n) < c**power  # power 1: calibrated; > 1: over-confident; < 1: under-confident
    return c, a


@pytest.mark.parametrize("n", [100, 1_000, 10_000, 100_000])
@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_smooth_ece_equals_relplot(n, power):
    c, a = _data(n, power, seed=n)
    ours, sigma = smooth_ece(c, a, return_bandwidth=True)
    ref, ref_sigma = relplot.smECE(c, a.astype(float), return_width=True)
    assert sigma == ref_sigma
    assert ours == pytest.approx(ref, abs=1e-3)
    assert ours == pytest.approx(ref, abs=1e-9)  # same algorithm: float rounding only


def test_fixed_bandwidth_and_edges():
    c, a = _data(5_000, 1.5, seed=1)
    c[:10], c[10:20] = 0.0, 1.0
    for sigma in (0.3, 0.05, 0.004):  # 0.004: grid of 2501 points, FFT convolution
        assert smooth_ece(c, a, bandwidth=sigma) == pytest.approx(relplot.smECE_sigma(c, a.astype(float), sigma),
                                                                  abs=1e-9)


def test_smooth_reliability_equals_relplot_curve():
    from relplot.estimators import KernelSmoother
    from relplot.kernels import ReflectedGaussianKernel

    c, a = _data(3_000, 2.0, seed=2)
    _, sigma = relplot.smECE(c, a.astype(float), return_width=True)
    x, y, dens = smooth_reliability(c, a)
    ker = ReflectedGaussianKernel(sigma)
    mu = KernelSmoother(ker).fit(c.reshape(-1, 1), a.astype(float)).predict(x.reshape(-1, 1))
    np.testing.assert_allclose(y, mu, atol=1e-12)
    np.testing.assert_allclose(dens, ker.kde(c, x), atol=1e-12)
    assert x.shape == (200,)


def test_weights_equal_repetition_and_small_inputs():
    c, a = _data(400, 1.3, seed=3)
    w = np.random.default_rng(0).integers(1, 4, c.size)
    assert smooth_ece(c, a, sample_weight=w) == pytest.approx(smooth_ece(np.repeat(c, w), np.repeat(a, w)),
                                                              abs=1e-9)
    for v in (smooth_ece([0.7], [1]), smooth_ece([0.2, 0.2], [0, 0])):
        assert np.isfinite(v) and 0 <= v <= 1


def test_bad_input():
    with pytest.raises(ValidationError, match="confidence.*index 2"):
        smooth_ece([0.1, 0.2, np.inf], [0, 1, 1])
    with pytest.raises(ValidationError, match="bandwidth"):
        smooth_ece([0.1], [0], bandwidth=0)
