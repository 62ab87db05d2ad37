"""Per-predicted-token reliability and each token's share of the binned ECE.

With width bins b, G_b = sum_{i in b} (c_i - a_i) and n tokens, ECE = sum_b |G_b| / n. Token t's
share is ece_share_t = sum_b sign(G_b) G_tb / n, G_tb the same sum over the tokens of bin b predicted
as t: the part of its bins' gap that t pushes in the bin's direction. The shares of all tokens sum to
the ECE exactly (with ``min_count=1``); a negative share means t's tokens pull their bins toward
calibration.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ValidationError
from . import _validate as V
from ._kernels import kernels
from .binned import width_edges


def per_token_reliability(predicted: Any, confidence: Any, correct: Any, bins: int = 15,
                          min_count: int = 1) -> dict[str, np.ndarray]:
    """For each predicted id with at least ``min_count`` tokens, sorted by id: id, n, confidence
    (mean), accuracy, gap (= confidence - accuracy) and ece_share (module docstring)."""
    bins = V.n_bins(bins)
    pred = V.as_1d("predicted", predicted)
    if pred.dtype.kind not in "iu":
        raise ValidationError(f"predicted: expected integer token ids, got dtype {pred.dtype}")
    if (pred < 0).any():
        raise ValidationError(f"predicted: ids must be >= 0; index {int(np.flatnonzero(pred < 0)[0])}")
    c = V.confidence(confidence, check=False)
    a = V.correct(correct)
    n = V.same_length(predicted=pred, confidence=c, correct=a)
    idx = np.empty(n, np.int64)
    i, _ = kernels()["bin_index"](c, bins, width_edges(bins), True, idx)
    if i >= 0:
        raise V.bad_value("confidence", c, i, "finite and in [0, 1]")
    resid = c.astype(np.float64) - a
    sign = np.sign(np.bincount(idx, weights=resid, minlength=bins))
    if pred.max() < 4 * n + 1024:
        inv, size = pred.astype(np.int64), int(pred.max()) + 1
        ids = None
    else:
        ids, inv = np.unique(pred, return_inverse=True)
        size = ids.shape[0]
    cnt = np.bincount(inv, minlength=size).astype(np.float64)
    conf = np.bincount(inv, weights=c, minlength=size)
    acc = np.bincount(inv, weights=a, minlength=size)
    share = np.bincount(inv, weights=sign[idx] * resid, minlength=size) / n
    keep = cnt >= max(int(min_count), 1)
    token = np.flatnonzero(keep) if ids is None else ids[keep]
    cnt, conf, acc, share = cnt[keep], conf[keep] / cnt[keep], acc[keep] / cnt[keep], share[keep]
    return {"id": token.astype(np.int64), "n": cnt.astype(np.int64), "confidence": conf, "accuracy": acc,
            "gap": conf - acc, "ece_share": share}
