"""Selective prediction: keep the most confident tokens, measure the error among them.

Tokens are ranked by confidence, highest first; tokens with equal confidence form one group that is
kept or dropped together. ``risk_coverage`` gives one point per group end: coverage = kept / n and
risk = errors among the kept / kept.

``aurc`` is the area under the risk-coverage curve in the usual discrete form (Geifman et al. 2019)
AURC = (1/n) sum_{k=1..n} risk(k), risk(k) the error rate of the k most confident tokens. Inside a
tie group the order is undefined, so risk(k) there is its expectation over the orders of the group:
(E_before + (k - n_before) e_g / n_g) / k. Without ties this is exactly the sort-based value.
Weights are not supported (a selective curve ranks individual tokens).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate as V


def _groups(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray, int]:
    c = V.confidence(confidence)
    a = V.correct(correct)
    n = V.same_length(confidence=c, correct=a)
    order = np.argsort(-c.astype(np.float64), kind="stable")
    cs = c[order]
    err = 1.0 - a[order].astype(np.float64)
    ends = np.flatnonzero(np.r_[cs[1:] != cs[:-1], True])  # last index of each tie group
    cum_err = np.cumsum(err)
    return ends, cum_err, n


def risk_coverage(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk) at the end of every tie group, coverage increasing up to 1."""
    ends, cum_err, n = _groups(confidence, correct)
    kept = ends + 1.0
    return kept / n, cum_err[ends] / kept


def aurc(confidence: Any, correct: Any) -> float:
    """Area under the risk-coverage curve (module docstring), in [0, 1]."""
    ends, cum_err, n = _groups(confidence, correct)
    starts = np.r_[0, ends[:-1] + 1]
    sizes = ends - starts + 1
    err_before = np.r_[0.0, cum_err[ends[:-1]]]
    rate = (cum_err[ends] - err_before) / sizes
    gid = np.repeat(np.arange(ends.shape[0]), sizes)
    k = np.arange(1, n + 1, dtype=np.float64)
    risk = (err_before[gid] + (k - starts[gid]) * rate[gid]) / k
    return float(risk.mean())
