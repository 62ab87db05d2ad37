"""Proper scores, averaged over tokens (optionally weighted).

* ``brier(sum_sq, label_prob)`` = mean_i(sum_j p_ij^2 - 2 p_i(y_i) + 1): the full-distribution Brier
  score, from the sum of squared probabilities and the gold probability (both exact from a sketch).
* ``top_label_brier(confidence, correct)`` = mean_i (c_i - a_i)^2.
* ``nll(label_prob=...)`` or ``nll(label_logprob=...)`` = mean_i -log max(p_i(y_i), p_min), with
  p_min = :data:`NLL_FLOOR` (the smallest normal float64, 2.2e-308): a gold probability of exactly 0 (a
  masked id, or a probability that underflowed) costs -log p_min = 708.4 nats instead of inf, so a mean
  and its bootstrap stay finite. The same per-token definition (:func:`token_nll`) is what
  :func:`tokcal.evaluate` reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ValidationError, first_bad_row
from . import _validate as V


def _mean(x: np.ndarray, w: np.ndarray | None) -> float:
    if w is None:
        return float(np.mean(x, dtype=np.float64))
    return float(np.dot(x, w) / w.sum())


#: how far above 1 a sum of squared probabilities may be from float rounding (clipped to 1)
SUM_SQ_ROUNDING = 1e-9


def brier(sum_sq: Any, label_prob: Any, sample_weight: Any = None) -> float:
    """Full-distribution Brier score mean(sum_sq - 2 p_y + 1) in [0, 2]. ``sum_sq`` up to
    :data:`SUM_SQ_ROUNDING` above 1 (float rounding) counts as 1."""
    s = V.confidence(sum_sq, "sum_sq", above_one=SUM_SQ_ROUNDING).astype(np.float64, copy=False)
    p = V.confidence(label_prob, "label_prob").astype(np.float64, copy=False)
    V.same_length(sum_sq=s, label_prob=p)
    return _mean(s - 2.0 * p + 1.0, V.weights(sample_weight, s.shape[0]))


def top_label_brier(confidence: Any, correct: Any, sample_weight: Any = None) -> float:
    """Top-label Brier score mean((c - a)^2) in [0, 1]."""
    c = V.confidence(confidence).astype(np.float64, copy=False)
    a = V.correct(correct)
    V.same_length(confidence=c, correct=a)
    return _mean((c - a) ** 2, V.weights(sample_weight, c.shape[0]))


#: smallest gold probability the NLL distinguishes (module docstring): -log of it is 708.4 nats
NLL_FLOOR = float(np.finfo(np.float64).tiny)


def token_nll(label_prob: np.ndarray) -> np.ndarray:
    """Per-token NLL ``-log max(p, NLL_FLOOR)`` of gold probabilities already checked to lie in [0, 1]."""
    return -np.log(np.maximum(np.asarray(label_prob, dtype=np.float64), NLL_FLOOR))


def nll(label_prob: Any = None, *, label_logprob: Any = None, sample_weight: Any = None) -> float:
    """Mean negative log-likelihood of the gold token; give exactly one of the two inputs.

    ``label_prob`` in [0, 1], or ``label_logprob`` in [-inf, 0] (NaN and +inf refused). A probability below
    :data:`NLL_FLOOR` (0 included) counts as NLL_FLOOR (module docstring).
    """
    if (label_prob is None) == (label_logprob is None):
        raise ValidationError("nll: give exactly one of label_prob=... or label_logprob=...")
    if label_prob is not None:
        loss = token_nll(V.confidence(label_prob, "label_prob"))
    else:
        lp = V.as_1d("label_logprob", label_logprob).astype(np.float64, copy=False)
        bad = np.isnan(lp) | (lp > 0)
        if bad.any():
            i = first_bad_row(bad)
            raise ValidationError(f"label_logprob: values must be <= 0 and not NaN; index {i} holds {lp[i]!r}")
        loss = np.minimum(-lp, -np.log(NLL_FLOOR))
    return _mean(loss, V.weights(sample_weight, loss.shape[0]))
