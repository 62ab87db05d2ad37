"""Frequency-weighted cross-entropy: per-token-class weights from a reference frequency."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import ValidationError
from ._rowstats import reduce, row_stats


def frequency_weights(counts: Any, alpha: float = 0.5, smoothing: float = 1.0) -> np.ndarray:
    """Weights ``w_j ∝ (count_j + smoothing)^(-alpha)`` per token id, normalised so that their mean under
    the reference frequency is 1 (``sum_j f_j w_j = 1``, ``f_j = count_j / sum(count)``).

    ``alpha > 0`` up-weights rare tokens (alpha = 1: inverse frequency), ``alpha < 0`` down-weights
    them, 0 gives plain cross-entropy. ``counts`` [V]: occurrences of each id in a reference corpus
    (e.g. the fine-tuning data, or the demo's ``token_counts.json``). float64 [V].
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValidationError(f"counts: expected a 1-D array [V], got shape {c.shape}")
    bad = ~np.isfinite(c) | (c < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValidationError(f"counts: id {i} has {c[i]}, expected a finite count >= 0")
    if not (math.isfinite(alpha) and smoothing > 0):
        raise ValidationError(f"alpha must be finite and smoothing > 0, got alpha={alpha}, smoothing={smoothing}")
    if c.sum() <= 0:
        raise ValidationError("counts: all zero, no reference frequency")
    w = (c + smoothing) ** (-float(alpha))
    return w / float((c / c.sum()) @ w)


def frequency_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: Any, *, ignore_index: int = -100,
                          reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with one weight per gold token id: ``w[y] * (-log p_y)``.

    ``reduction="mean"`` divides by ``sum w[y]`` over the kept tokens, the convention (and value) of
    ``F.cross_entropy(weight=w)``; ``"sum"`` and ``"none"`` are unnormalised. Build ``weights`` [V] with
    :func:`frequency_weights` to up- or down-weight rare tokens, the token classes most prone to
    miscalibration. Reference: class-weighted cross-entropy (e.g. King & Zeng, "Logistic Regression in
    Rare Events Data", 2001); for rare-token weighting in generation, Gu et al., "Token-level Adaptive
    Training for Neural Machine Translation", EMNLP 2020.
    """
    w = torch.as_tensor(weights, device=logits.device, dtype=torch.float32)
    v = logits.shape[-1]
    if w.shape != (v,):
        raise ValidationError(f"weights: expected shape ({v},), one per token id, got {tuple(w.shape)}")
    if bool((~torch.isfinite(w) | (w < 0)).any()):
        i = int(torch.nonzero(~torch.isfinite(w) | (w < 0))[0, 0])
        raise ValidationError(f"weights: id {i} has {float(w[i])}, expected a finite weight >= 0")
    rows = row_stats(logits, labels, ignore_index=ignore_index)
    st = rows.stats
    return reduce(rows, st.nll, reduction, weight=w[st.labels])
