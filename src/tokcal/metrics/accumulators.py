"""Mergeable accumulators: stream tokens in batches (or shards), merge, compute once.

State is O(bins x slices), float64 sums (so 10 M tokens lose nothing to float32 rounding). Binned
accumulators use width bins only — equal-mass edges need all confidences up front. ``update`` takes
optional ``slice_codes`` in [-1, n_slices) (-1: the token counts in no slice) and ``sample_weight``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ValidationError
from . import _validate as V
from .binned import ReliabilityBins, binned_sums, stats_metrics, width_edges
from .scores import NLL_FLOOR, token_nll


class BinnedAccumulator:
    """Sums of weight, weight*confidence, weight*correct per (slice, width bin)."""

    def __init__(self, bins: int = 15, n_slices: int = 1):
        self.bins = V.n_bins(bins)
        if int(n_slices) < 1:
            raise ValidationError(f"n_slices: expected a positive integer, got {n_slices!r}")
        self.n_slices = int(n_slices)
        self.edges = width_edges(self.bins)
        self.state = np.zeros((3, self.n_slices, self.bins))

    def update(self, confidence: Any, correct: Any, slice_codes: Any = None, sample_weight: Any = None) -> None:
        c = V.confidence(confidence, check=False)
        a = V.correct(correct, check=False)
        n = V.same_length(confidence=c, correct=a)
        codes = V.codes(slice_codes, n, self.n_slices)
        w = V.weights(sample_weight, n)
        new = binned_sums(c, a, self.edges, True, w, codes, self.n_slices)  # all-or-nothing on bad input
        self.state += new

    def merge(self, other: BinnedAccumulator) -> BinnedAccumulator:
        """Add ``other``'s sums into this one (same bins and slices); returns self."""
        if not isinstance(other, BinnedAccumulator) or (other.bins, other.n_slices) != (self.bins, self.n_slices):
            raise ValidationError("merge: accumulators differ in type, bins or n_slices")
        self.state += other.state
        return self

    def reliability(self, slice_index: int = 0) -> ReliabilityBins:
        count, conf, acc = self.state[:, slice_index, :]
        return ReliabilityBins(self.edges.copy(), count.copy(), conf.copy(), acc.copy())

    def compute(self) -> dict[str, np.ndarray]:
        """Per slice ([n_slices] arrays): n, confidence, accuracy, ece, rmsce, mce, debiased (l1) and
        debiased_rmsce (Kumar et al.'s l2 estimator). NaN for a slice without tokens."""
        count, conf, acc = self.state
        n = count.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_c = np.where(n > 0, conf.sum(-1) / n, np.nan)
            mean_a = np.where(n > 0, acc.sum(-1) / n, np.nan)
        return {
            "n": n, "confidence": mean_c, "accuracy": mean_a,
            "ece": stats_metrics(count, conf, acc, "l1"),
            "rmsce": stats_metrics(count, conf, acc, "l2"),
            "mce": stats_metrics(count, conf, acc, "max"),
            "debiased": stats_metrics(count, conf, acc, "l1", debias=True),
            "debiased_rmsce": stats_metrics(count, conf, acc, "l2", debias=True),
        }


class ScoreAccumulator:
    """Sums for Brier, top-label Brier and NLL per slice; each score keeps its own token weight."""

    _SCORES = ("brier", "top_label_brier", "nll")

    def __init__(self, n_slices: int = 1):
        if int(n_slices) < 1:
            raise ValidationError(f"n_slices: expected a positive integer, got {n_slices!r}")
        self.n_slices = int(n_slices)
        self.sums = np.zeros((len(self._SCORES), self.n_slices))
        self.weights = np.zeros((len(self._SCORES), self.n_slices))

    def update(self, *, label_prob: Any = None, sum_sq: Any = None, label_logprob: Any = None,
               confidence: Any = None, correct: Any = None, slice_codes: Any = None,
               sample_weight: Any = None) -> None:
        """Brier needs ``sum_sq`` and ``label_prob``; NLL ``label_prob`` or ``label_logprob``;
        top-label Brier ``confidence`` and ``correct``. Scores whose inputs are absent are not updated."""
        losses: dict[int, np.ndarray] = {}
        if label_prob is not None:
            p = V.confidence(label_prob, "label_prob").astype(np.float64, copy=False)
            if sum_sq is not None:
                s = V.confidence(sum_sq, "sum_sq").astype(np.float64, copy=False)
                V.same_length(label_prob=p, sum_sq=s)
                losses[0] = s - 2.0 * p + 1.0
            if label_logprob is None:
                losses[2] = token_nll(p)
        if label_logprob is not None:
            lp = V.as_1d("label_logprob", label_logprob).astype(np.float64, copy=False)
            if np.isnan(lp).any() or (lp > 0).any():
                raise ValidationError("label_logprob: values must be <= 0 and not NaN")
            losses[2] = np.minimum(-lp, -np.log(NLL_FLOOR))
        if confidence is not None or correct is not None:
            c = V.confidence(confidence).astype(np.float64, copy=False)
            a = V.correct(correct)
            V.same_length(confidence=c, correct=a)
            losses[1] = (c - a) ** 2
        if not losses:
            raise ValidationError("update: no score inputs given")
        n = V.same_length(**{self._SCORES[j]: x for j, x in losses.items()})
        codes = V.codes(slice_codes, n, self.n_slices)
        w = V.weights(sample_weight, n)
        w = np.ones(n) if w is None else w
        if codes is not None:
            w = np.where(codes >= 0, w, 0.0)
            codes = np.maximum(codes, 0)
        else:
            codes = np.zeros(n, np.int64)
        for j, loss in losses.items():
            contrib = np.where(w > 0, loss * w, 0.0)
            self.sums[j] += np.bincount(codes, weights=contrib, minlength=self.n_slices)
            self.weights[j] += np.bincount(codes, weights=w, minlength=self.n_slices)

    def merge(self, other: ScoreAccumulator) -> ScoreAccumulator:
        if not isinstance(other, ScoreAccumulator) or other.n_slices != self.n_slices:
            raise ValidationError("merge: accumulators differ in type or n_slices")
        self.sums += other.sums
        self.weights += other.weights
        return self

    def compute(self) -> dict[str, np.ndarray]:
        """Per slice: brier, top_label_brier, nll (NaN where that score saw no tokens) and their n."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.weights > 0, self.sums / np.where(self.weights > 0, self.weights, 1.0), np.nan)
        out = {name: mean[j] for j, name in enumerate(self._SCORES)}
        out.update({f"n_{name}": self.weights[j] for j, name in enumerate(self._SCORES)})
        return out
