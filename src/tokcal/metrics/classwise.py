"""Classwise ECE over the M most frequent gold token ids.

For class j: ECE_j = sum_b (n_jb / n) |mean_{i in b} p_i(j) - mean_{i in b} 1[y_i = j]|, bins of
equal width over p_i(j) (the width convention of :mod:`.binned`), over all n labeled tokens.
Classwise ECE = the unweighted mean of ECE_j over the classes.

From a sketch p_i(j) is known exactly when j is in row i's top-k (``top_probs``) or j = y_i
(``label_prob``, when given). Every other p_i(j) is approximated by the row's mean tail probability
``tail_prob[i]`` — by default (1 - sum_k top_probs[i]) / (vocab_size - k) when ``vocab_size`` is
given, else 0. With k = V (full distributions) the result is exact.

Classes: ``classes`` if given, else the ``top_m`` most frequent gold ids (ties: smaller id first).
Cost O(N k + M B): rows add their tail mass to bins shared by all classes and only their top-k and
gold ids move mass to class-specific bins (numba), so V = 50k costs no more than V = 1000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ValidationError, first_bad_row
from . import _validate as V
from ._kernels import kernels
from .binned import stats_metrics


@dataclass
class ClasswiseCalibration:
    """Per-class detail: ids, support (gold count), ECE_j, and the [M, B] bin sums."""

    classes: np.ndarray
    support: np.ndarray
    ece: np.ndarray
    count: np.ndarray
    conf_sum: np.ndarray
    acc_sum: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.ece.mean())


def _int_matrix(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValidationError(f"{name}: expected a non-empty [N, k] array, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValidationError(f"{name}: expected integer token ids, got dtype {arr.dtype}")
    return arr


def _prepare(top_ids: Any, top_probs: Any, label: Any, tail_prob: Any, label_prob: Any,
             vocab_size: int | None) -> tuple[np.ndarray, ...]:
    """Validated ``(ids, probs, y, lp, tail, labeled)`` for the classwise kernel (``tail`` empty: the kernel
    derives it from ``vocab_size``, see :func:`_sums`)."""
    ids = _int_matrix("top_ids", top_ids)  # any integer dtype: the kernel compiles per dtype, no copy
    probs = np.asarray(top_probs, dtype=np.float64)
    if probs.shape != ids.shape:
        raise ValidationError(f"top_probs: shape {probs.shape} differs from top_ids {ids.shape}")
    y = V.as_1d("label", label)
    if y.dtype.kind not in "iu":
        raise ValidationError(f"label: expected integer token ids, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    n, k = ids.shape
    V.same_length(top_ids=ids, label=y)
    if (y < -1).any():
        raise ValidationError(f"label: ids must be >= 0 (labels: -1 = unknown); row {first_bad_row(y < -1)}")
    labeled = y >= 0
    if not labeled.any():
        raise ValidationError("label: no labeled tokens (all -1)")
    if tail_prob is not None:
        tail = V.confidence(tail_prob, "tail_prob").astype(np.float64, copy=False)
        V.same_length(label=y, tail_prob=tail)
    else:  # the kernel computes (1 - sum_k top_probs) / (vocab_size - k), clipped to [0, 1] (0 without vocab_size)
        tail = np.zeros(0)
    lp = np.zeros(n) if label_prob is None else np.asarray(label_prob, dtype=np.float64)
    if label_prob is not None:
        V.same_length(label=y, label_prob=lp)  # unknown labels carry NaN: the kernel skips those rows
    return ids, probs, y, lp, tail, labeled


def _sums(ids: np.ndarray, probs: np.ndarray, y: np.ndarray, lp: np.ndarray, tail: np.ndarray, cls: np.ndarray,
          bins: int, has_label_prob: bool, vocab_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    m = cls.shape[0]
    size = int(max(y.max(), cls.max())) + 1  # larger ids are in no class (the kernel checks ids >= 0)
    lookup = np.full(size, m, np.int64)  # row m (and the three after it): the spare rows of no class
    lookup[cls] = np.arange(m)
    base = np.zeros((2, bins))
    hit = np.zeros((m + 4, bins, 3))
    moved = np.zeros((m + 4, bins, 2))
    i, what = kernels()["classwise"](ids, probs, y, lp, tail, vocab_size or 0, lookup, bins, has_label_prob, base,
                                     hit, moved)
    if i >= 0:
        if what == 4:
            raise ValidationError(f"top_ids: ids must be >= 0; row {i} holds {ids[i]!r}")
        name, arr = {1: ("top_probs", probs), 2: ("label_prob", lp), 3: ("tail_prob", tail)}[what]
        arr = arr[i]
        raise ValidationError(f"{name}: probabilities must be finite and in [0, 1]; row {i} holds {arr!r}")
    hit, moved = hit[:m], moved[:m]
    corr = np.stack([hit[..., 0] - moved[..., 0], hit[..., 1] - moved[..., 1], hit[..., 2]])
    return base, corr


def classwise_sums(top_ids: Any, top_probs: Any, label: Any, classes: Any, bins: int = 15, tail_prob: Any = None,
                   label_prob: Any = None, vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mergeable sums behind :func:`classwise_calibration` for fixed ``classes`` (unique ids):
    ``base`` [2, bins] (count and probability sum of every token in every class's bins, as if no class
    were in its top-k) and ``corr`` [3, n_classes, bins] (the corrections, and the correct counts).
    Sums of shards add up to the sums of their union."""
    ids, probs, y, lp, tail, _ = _prepare(top_ids, top_probs, label, tail_prob, label_prob, vocab_size)
    cls = np.asarray(classes, dtype=np.int64)
    return _sums(ids, probs, y, lp, tail, cls, V.n_bins(bins), label_prob is not None, vocab_size)


def classwise_calibration(top_ids: Any, top_probs: Any, label: Any, tail_prob: Any = None,
                          classes: Any = None, top_m: int = 50, bins: int = 15, label_prob: Any = None,
                          vocab_size: int | None = None) -> ClasswiseCalibration:
    """Per-class binned calibration of p_i(j) against 1[y_i = j] (module docstring)."""
    bins = V.n_bins(bins)
    ids, probs, y, lp, tail, labeled = _prepare(top_ids, top_probs, label, tail_prob, label_prob, vocab_size)
    if classes is None:
        counts = np.bincount(y[labeled])
        m = min(int(top_m), int((counts > 0).sum()))
        order = np.lexsort((np.arange(counts.shape[0]), -counts))
        cls = order[:m].astype(np.int64)
    else:
        cls = np.unique(V.as_1d("classes", classes).astype(np.int64))
        if (cls < 0).any():
            raise ValidationError("classes: ids must be >= 0")
    base, corr = _sums(ids, probs, y, lp, tail, cls, bins, label_prob is not None, vocab_size)
    size = int(max(y.max(), cls.max())) + 1
    count = np.maximum(base[0][None, :] + corr[0], 0.0)  # exact small integers; max() drops -0.0
    conf_sum = base[1][None, :] + corr[1]
    support = np.bincount(y[labeled], minlength=size)[cls]
    per_class = stats_metrics(count, conf_sum, corr[2], "l1")
    return ClasswiseCalibration(cls, support, per_class, count, conf_sum, corr[2])


def classwise_ece(top_ids: Any, top_probs: Any, label: Any, tail_prob: Any = None, classes: Any = None,
                  top_m: int = 50, bins: int = 15, label_prob: Any = None, vocab_size: int | None = None) -> float:
    """Mean over classes of the binned ECE of p_i(j) vs 1[y_i = j] (see :func:`classwise_calibration`)."""
    return classwise_calibration(top_ids, top_probs, label, tail_prob, classes, top_m, bins, label_prob,
                                 vocab_size).mean
