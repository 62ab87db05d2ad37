"""Binned top-label calibration: ECE (l1), RMSCE (l2), MCE (max), debiased ECE, reliability bins.

Definitions. Token i has confidence c_i and correctness a_i; bin b holds n_b tokens
(sum of weights), conf_b = mean c, acc_b = mean a, w_b = n_b / n and gap_b = conf_b - acc_b.

* ``binning="width"``: edges linspace(0, 1, B + 1), bin = min(floor(c B), B - 1) — so c = 1 lands in
  the last bin — corrected by one where float rounding of c B disagrees with the edges (as
  ``numpy.histogram`` does). Same bins as netcal ``ECE(bins)`` and relplot's ``Binning``.
* ``binning="mass"``: edges = ``np.quantile(c, linspace(0, 1, B + 1))`` (numpy's default linear
  interpolation) with edges[0] = 0 and edges[B] = 1, bins [lo, hi) with the last one closed — the
  convention of netcal ``ECE(bins, equal_intervals=False)``. Tied confidences can make edges
  coincide; such bins are simply empty. With ``sample_weight`` the edges come from the tokens of
  positive weight, unweighted.
* ``norm="l1"``: ECE = sum_b w_b |gap_b|; ``"l2"``: RMSCE = sqrt(sum_b w_b gap_b^2);
  ``"max"``: MCE = max over non-empty bins of |gap_b|.
* ``debias=True`` (Kumar, Liang & Ma 2019, "Verified uncertainty calibration"): per bin
  d_b = gap_b^2 - acc_b (1 - acc_b) / (n_b - 1), and d_b = 0 for bins with n_b <= 1 (as in their
  reference code). l2: sqrt(max(0, sum_b w_b d_b)) — their unbiased estimator of the squared CE, the
  total clipped at 0; l1: sum_b w_b sqrt(max(0, d_b)); max: max_b sqrt(max(0, d_b)).

A one-token input is defined: its ECE is |c - a| and its debiased value 0 (n_b = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ValidationError
from . import _validate as V
from ._kernels import kernels

WILSON_Z = 1.959963984540054  # two-sided 95 %
NORMS = ("l1", "l2", "max")
BINNINGS = ("width", "mass")


def width_edges(bins: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, bins + 1)


def mass_edges(confidence: np.ndarray, bins: int, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Quantile edges (netcal's equal-mass convention): np.quantile with edges[0] = 0, edges[-1] = 1."""
    c = confidence if sample_weight is None else confidence[sample_weight > 0]
    edges = np.quantile(c.astype(np.float64, copy=False), np.linspace(0.0, 1.0, bins + 1))
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValidationError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


def binned_sums(c: np.ndarray, a: np.ndarray, edges: np.ndarray, uniform: bool,
                w: np.ndarray | None = None, codes: np.ndarray | None = None, n_slices: int = 1,
                out: np.ndarray | None = None) -> np.ndarray:
    """float64 [3, n_slices, B] sums (weight, weight*c, weight*a), added into ``out`` if given.

    ``c``/``a`` come from :func:`_validate.confidence`/``correct`` with ``check=False``: the kernel
    checks the values.
    """
    bins = edges.shape[0] - 1
    if out is None:
        out = np.zeros((3, n_slices, bins))
    flat = out.reshape(3, n_slices * bins)
    if uniform:
        kernel = kernels()["binned_stats_parallel" if c.shape[0] >= 1 << 20 else "binned_stats"]
        i, what = kernel(c, a, np.empty(0) if w is None else w,
                         np.empty(0, np.int64) if codes is None else codes, bins, flat)
    else:
        idx = np.empty(c.shape[0], np.int64)
        i, what = kernels()["bin_index"](c, bins, edges, False, idx)
        if i < 0:
            bad = (a != 0) & (a != 1)
            if bad.any():
                i, what = int(np.flatnonzero(bad)[0]), 2
        if i < 0:
            keep = slice(None) if codes is None else codes >= 0
            k = idx if codes is None else codes * bins + idx
            ww = np.ones(c.shape[0]) if w is None else w
            for j, vals in enumerate((ww, ww * c, ww * a)):
                flat[j] += np.bincount(k[keep], weights=vals[keep], minlength=n_slices * bins)
    if i >= 0:
        if what == 1:
            raise V.bad_value("confidence", c, i, "finite and in [0, 1]")
        raise V.bad_value("correct", a, i, "0/1 (or booleans)")
    return out


def stats_metrics(count: np.ndarray, conf_sum: np.ndarray, acc_sum: np.ndarray, norm: str = "l1",
                  debias: bool = False) -> np.ndarray:
    """Metric from bin sums over the last axis (any leading shape); NaN where a row has no tokens."""
    count = np.asarray(count, dtype=np.float64)
    n = count.sum(-1)
    nonempty = count > 0
    safe = np.where(nonempty, count, 1.0)
    conf = conf_sum / safe
    acc = acc_sum / safe
    gap2 = np.where(nonempty, (conf - acc) ** 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = count / n[..., None]
    if debias:
        var = np.where(count > 1, acc * (1.0 - acc) / np.where(count > 1, count - 1.0, 1.0), 0.0)
        d = np.where(count > 1, gap2 - var, 0.0)
        if norm == "l2":
            out = np.sqrt(np.maximum((w * d).sum(-1), 0.0))
        else:
            per_bin = np.sqrt(np.maximum(d, 0.0))
            out = (w * per_bin).sum(-1) if norm == "l1" else per_bin.max(-1)
    elif norm == "l1":
        out = (w * np.sqrt(gap2)).sum(-1)
    elif norm == "l2":
        out = np.sqrt((w * gap2).sum(-1))
    else:
        out = np.sqrt(gap2).max(-1)
    return np.where(n > 0, out, np.nan)


@dataclass
class ReliabilityBins:
    """Per-bin sums (float64) of a reliability diagram; weights count as tokens."""

    edges: np.ndarray
    count: np.ndarray
    conf_sum: np.ndarray
    acc_sum: np.ndarray

    @property
    def n(self) -> float:
        return float(self.count.sum())

    def _mean(self, s: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, s / self.count, np.nan)

    @property
    def confidence(self) -> np.ndarray:
        """Mean confidence per bin (NaN for an empty bin)."""
        return self._mean(self.conf_sum)

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy per bin (NaN for an empty bin)."""
        return self._mean(self.acc_sum)

    @property
    def gap(self) -> np.ndarray:
        """confidence - accuracy per bin: positive = over-confident."""
        return self.confidence - self.accuracy

    def accuracy_interval(self, z: float = WILSON_Z) -> tuple[np.ndarray, np.ndarray]:
        """Wilson score interval of each bin's accuracy (NaN for an empty bin)."""
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            p = self.acc_sum / n
            denom = 1.0 + z * z / n
            centre = (p + z * z / (2 * n)) / denom
            half = z * np.sqrt(np.maximum(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
        lo = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        hi = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
        return lo, hi

    def metric(self, norm: str = "l1", debias: bool = False) -> float:
        _check_choice("norm", norm, NORMS)
        return float(stats_metrics(self.count, self.conf_sum, self.acc_sum, norm, debias))

    def to_list(self, acc_ci: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict[str, Any]]:
        """One JSON-safe dict per bin: lo, hi, n, confidence, accuracy, gap, acc_ci = [lo, hi] (None when
        empty). ``acc_ci``: per-bin interval bounds to report (default: :meth:`accuracy_interval`, Wilson)."""
        conf, acc, gap = self.confidence, self.accuracy, self.gap
        lo, hi = self.accuracy_interval() if acc_ci is None else acc_ci

        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)

        def count(x: float) -> int | float:
            return int(x) if float(x).is_integer() else float(x)

        return [
            {"lo": float(self.edges[b]), "hi": float(self.edges[b + 1]), "n": count(self.count[b]),
             "confidence": num(conf[b]), "accuracy": num(acc[b]), "gap": num(gap[b]),
             "acc_ci": [num(lo[b]), num(hi[b])] if self.count[b] > 0 else [None, None]}
            for b in range(self.count.shape[0])
        ]


def ece_shares(conf_sum: np.ndarray, acc_sum: np.ndarray, n: float) -> tuple[float, float]:
    """(over_share, under_share): the fractions of the binned ECE from bins with conf_b > acc_b and
    conf_b < acc_b; both +0.0 when the ECE is 0."""
    contrib = (np.asarray(conf_sum) - np.asarray(acc_sum)) / n  # w_b * gap_b
    total = float(np.abs(contrib).sum())
    if total <= 0:
        return 0.0, 0.0
    return float(contrib[contrib > 0].sum()) / total, float(np.abs(contrib[contrib < 0]).sum()) / total


def _prepare(confidence: Any, correct: Any, sample_weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    c = V.confidence(confidence, check=False)
    a = V.correct(correct, check=False)
    V.same_length(confidence=c, correct=a)
    w = V.weights(sample_weight, c.shape[0])
    return c, a, w


def reliability_bins(confidence: Any, correct: Any, bins: int = 15, binning: str = "width",
                     sample_weight: Any = None) -> ReliabilityBins:
    """Bin sums of a top-label reliability diagram (see the module docstring for the bin convention)."""
    bins = V.n_bins(bins)
    _check_choice("binning", binning, BINNINGS)
    c, a, w = _prepare(confidence, correct, sample_weight)
    if binning == "width":
        edges, uniform = width_edges(bins), True
    else:
        V.confidence(c)  # quantiles need valid values before the kernel runs
        edges, uniform = mass_edges(c, bins, w), False
    s = binned_sums(c, a, edges, uniform, w)[:, 0, :]
    return ReliabilityBins(edges, s[0], s[1], s[2])


def ece(confidence: Any, correct: Any, bins: int = 15, binning: str = "width", norm: str = "l1",
        debias: bool = False, sample_weight: Any = None) -> float:
    """Binned top-label calibration error: ECE (l1), RMSCE (l2) or MCE (max), optionally debiased.

    Formulas and bin conventions: module docstring. float64 sums, one numba pass over the tokens.
    """
    _check_choice("norm", norm, NORMS)
    return reliability_bins(confidence, correct, bins, binning, sample_weight).metric(norm, debias)


def over_under(confidence: Any, correct: Any, bins: int = 15, binning: str = "width",
               sample_weight: Any = None) -> dict[str, float]:
    """Direction of miscalibration.

    ``signed_gap`` = mean(c) - mean(a) (positive: over-confident); ``over_share``/``under_share``: the
    fractions of the binned ECE from bins with conf_b > acc_b / conf_b < acc_b (both 0 when the ECE
    is 0); ``ece`` the binned ECE itself.
    """
    rb = reliability_bins(confidence, correct, bins, binning, sample_weight)
    over, under = ece_shares(rb.conf_sum, rb.acc_sum, rb.n)
    return {
        "signed_gap": float((rb.conf_sum.sum() - rb.acc_sum.sum()) / rb.n),
        "over_share": over,
        "under_share": under,
        "ece": rb.metric("l1"),
    }
