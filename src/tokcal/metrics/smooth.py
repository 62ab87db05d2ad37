"""Smooth ECE (Błasiok & Nakkiran 2023, "Smooth ECE: principled reliability diagrams via kernel
smoothing") and the smoothed reliability curve.

smECE_sigma = sum_t |r_sigma(t)| d_sigma(t) / sum_t d_sigma(t), where on a mesh t of
max(200, round(10 / sigma)) points r_sigma = K_sigma * (c - a) / (K_sigma * 1 + 1e-4) and
d_sigma = K_sigma * 1 + 1e-4 are reflected-Gaussian kernel smoothings (reflection at 0 and 1).
The bandwidth is the fixed point sigma* with smECE(sigma*) = sigma*, found by the same bisection as
the reference implementation (``relplot.smECE``: 10 halvings of [0, 1], eps = 1e-3).

This follows ``relplot`` step by step — tokens are spread linearly onto a grid of
max(2000, round(20 / sigma)) // 2 + 1 points, the grid is reflected and convolved with the
Gaussian, then interpolated onto the mesh — so the numbers agree with ``relplot.smECE`` to float
rounding. What is faster: one numba pass per distinct grid size (relplot: ``np.add.at`` twice per
bandwidth tried), cached across the bisection, and FFT convolution on large grids.
With ``sample_weight`` every token's grid mass is multiplied by its weight.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate as V
from ._kernels import kernels

_DENS_EPS = 1e-4  # relplot BaseKernelMixin.smooth eps
_SEARCH_EPS = 1e-3  # relplot smECE eps
_SEARCH_REFINE = 10
_MESH_MIN = 200  # relplot config.smECE_mesh_pts
#: smallest bandwidth accepted: the automatic search's floor (its grid then has ~10^4 points; a bandwidth
#: of 1e-6 would need ~10^7 points and gigabytes)
MIN_BANDWIDTH = 2.0**-_SEARCH_REFINE


def _grid_points(sigma: float) -> int:
    return max(2000, round(20 / sigma)) // 2 + 1


def _kernel(sigma: float, g: int) -> np.ndarray:
    t = np.linspace(0, 1, g)
    return np.exp(-(t - 0.5) * (t - 0.5) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)


def _reflect_convolve(values: np.ndarray, sigma: float) -> np.ndarray:
    """relplot ReflectedGaussianKernel.convolve on each row of ``values`` [r, g]."""
    g = values.shape[-1]
    ker = _kernel(sigma, g)
    ext = np.concatenate([values[:, ::-1][:, :-1], values, values[:, ::-1][:, 1:]], axis=1)
    if g <= 2001:
        conv = np.stack([np.convolve(row, ker, "valid") for row in ext])
    else:
        from scipy.signal import fftconvolve

        conv = fftconvolve(ext, ker[None, :], mode="valid", axes=1)
    return conv[:, g // 2: g // 2 + g]


def _interpolate(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """relplot kernels.interpolate (linear, grid i / (len(y) - 1)) on each row of ``y``."""
    g = y.shape[-1]
    size = 1 / (g - 1)
    inds = (t * (g - 1)).astype(int).clip(0, g - 2)
    res = (t - inds * size) / size
    return y[:, inds] * (1 - res) + y[:, inds + 1] * res


class _Smoother:
    """Grid histograms of one dataset, cached per grid size."""

    def __init__(self, confidence: Any, correct: Any, sample_weight: Any = None):
        self.c = V.confidence(confidence, check=False)
        self.a = V.correct(correct, check=False)
        V.same_length(confidence=self.c, correct=self.a)
        self.w = V.weights(sample_weight, self.c.shape[0])
        self._grids: dict[int, np.ndarray] = {}
        self._ece: dict[float, float] = {}

    def grid(self, g: int) -> np.ndarray:
        if g not in self._grids:
            out = np.zeros((3, g))
            i, what = kernels()["grid_hist"](self.c, self.a, np.empty(0) if self.w is None else self.w, g, out)
            if i >= 0:
                if what == 1:
                    raise V.bad_value("confidence", self.c, i, "finite and in [0, 1]")
                raise V.bad_value("correct", self.a, i, "0/1 (or booleans)")
            self._grids[g] = out
        return self._grids[g]

    def smoothed(self, sigma: float, t: np.ndarray) -> np.ndarray:
        """Rows: K*weight, K*(weight (c - a)), K*(weight a), evaluated at t."""
        return _interpolate(t, _reflect_convolve(self.grid(_grid_points(sigma)), sigma))

    def ece(self, sigma: float) -> float:
        if sigma not in self._ece:
            t = np.linspace(0, 1, max(round(10 / sigma), _MESH_MIN))
            dens_raw, resid, _ = self.smoothed(sigma, t)
            dens = dens_raw + _DENS_EPS
            self._ece[sigma] = float(np.sum(np.abs(resid / dens) * dens) / np.sum(dens))
        return self._ece[sigma]

    def fixed_point(self) -> float:
        """relplot's search_param(alpha < eps or alpha < smECE(alpha), start=1, refine=10)."""
        def too_small(alpha: float) -> bool:
            return alpha < _SEARCH_EPS or alpha < self.ece(alpha)

        if too_small(1.0):
            return 1.0
        start, end = 1.0, 0.0
        for _ in range(_SEARCH_REFINE):
            mid = (start + end) / 2
            if too_small(mid):
                end = mid
            else:
                start = mid
        return start


def _bandwidth(bandwidth: Any) -> float | None:
    if bandwidth is None:
        return None
    bw = float(bandwidth)
    if not (np.isfinite(bw) and MIN_BANDWIDTH <= bw):
        raise V.ValidationError(f"bandwidth: expected a number >= {MIN_BANDWIDTH:.6g} (2^-{_SEARCH_REFINE}, the "
                                f"smallest the automatic bandwidth reaches), got {bandwidth!r}")
    return bw


def smooth_ece(confidence: Any, correct: Any, bandwidth: float | None = None, sample_weight: Any = None,
               return_bandwidth: bool = False) -> float | tuple[float, float]:
    """Smooth ECE at ``bandwidth`` or, by default, at the fixed point sigma* (module docstring).

    ``return_bandwidth=True`` returns ``(smece, sigma)``.
    """
    bw = _bandwidth(bandwidth)
    sm = _Smoother(confidence, correct, sample_weight)
    sigma = sm.fixed_point() if bw is None else bw
    value = sm.ece(sigma)
    return (value, sigma) if return_bandwidth else value


def smooth_reliability(confidence: Any, correct: Any, bandwidth: float | None = None, grid: int = 200,
                       sample_weight: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed reliability curve for diagrams: ``(x, y, density)`` on ``grid`` mesh points.

    y(x) = K*a / (K*1 + 1e-4) — relplot's non-bootstrapped ``KernelSmoother`` curve ("mu") — and
    density(x) = K*1 / n, relplot's ``kde`` of the confidences; bandwidth sigma* by default.
    """
    if int(grid) < 2:
        raise V.ValidationError(f"grid: expected at least 2 mesh points, got {grid!r}")
    bw = _bandwidth(bandwidth)
    sm = _Smoother(confidence, correct, sample_weight)
    sigma = sm.fixed_point() if bw is None else bw
    x = np.linspace(0, 1, int(grid))
    dens_raw, _, acc = sm.smoothed(sigma, x)
    total = sm.c.shape[0] if sm.w is None else float(sm.w.sum())
    return x, acc / (dens_raw + _DENS_EPS), dens_raw / total
