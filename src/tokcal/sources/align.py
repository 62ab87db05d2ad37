"""Labels for free generation: align generated tokens to a reference by minimum edit distance.

Inference-time calibration (Wang, Tu, Shi & Liu 2020, "On the Inference Calibration of Neural
Machine Translation"): a generated token counts as correct when a minimum edit-distance
(Levenshtein) alignment of the hypothesis to the reference matches it to an equal reference
token. Substituted tokens are wrong and get the reference token they replace as their label;
inserted tokens (no reference counterpart) are wrong and have no gold label (-1).

Costs: match 0, substitution 1, insertion 1, deletion 1. Among alignments of minimal cost the
backtrace prefers a diagonal step (match or substitution), then a deletion, then an insertion,
so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MATCH, SUBSTITUTE, INSERT = "match", "sub", "ins"


@dataclass(frozen=True)
class TokenAlignment:
    """Per hypothesis token: its label, whether it is correct, and the edit operation.

    ``labels[i]``: the reference token aligned to hypothesis token i, -1 for an insertion.
    ``correct[i]``: ``ops[i] == "match"``. ``ref_index[i]``: index of that reference token or -1.
    ``deleted``: indices of reference tokens the hypothesis skipped. ``distance``: the edit distance.
    """

    labels: np.ndarray
    correct: np.ndarray
    ref_index: np.ndarray
    ops: tuple[str, ...]
    deleted: np.ndarray
    distance: int


def _dp_kernel():
    import numba

    @numba.njit(cache=True)
    def dp(h, r):
        n, m = h.shape[0], r.shape[0]
        d = np.empty((n + 1, m + 1), np.int64)
        for i in range(n + 1):
            d[i, 0] = i
        for j in range(m + 1):
            d[0, j] = j
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                sub = d[i - 1, j - 1] + (0 if h[i - 1] == r[j - 1] else 1)
                best = min(sub, d[i - 1, j] + 1, d[i, j - 1] + 1)
                d[i, j] = best
        return d

    return dp


_DP = None


def _as_codes(hyp: Sequence[Any], ref: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary hashable tokens (ids or strings) to shared integer codes."""
    codes: dict[Any, int] = {}
    h = np.array([codes.setdefault(t, len(codes)) for t in hyp], np.int64)
    r = np.array([codes.setdefault(t, len(codes)) for t in ref], np.int64)
    return h, r


def align_labels(hypothesis_tokens: Sequence[Any], reference_tokens: Sequence[Any]) -> TokenAlignment:
    """Minimum edit-distance alignment of a hypothesis to a reference (token ids or strings).

    Returns a :class:`TokenAlignment`; ``labels`` holds reference tokens (ids if ids were given).
    """
    global _DP
    if _DP is None:
        _DP = _dp_kernel()
    hyp, ref = list(hypothesis_tokens), list(reference_tokens)
    h, r = _as_codes(hyp, ref)
    d = _DP(h, r)
    i, j = len(h), len(r)
    ref_index = np.full(len(h), -1, np.int64)
    ops = [INSERT] * len(h)
    deleted = []
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i, j] == d[i - 1, j - 1] + (0 if h[i - 1] == r[j - 1] else 1):
            ref_index[i - 1] = j - 1
            ops[i - 1] = MATCH if h[i - 1] == r[j - 1] else SUBSTITUTE
            i, j = i - 1, j - 1
        elif j > 0 and d[i, j] == d[i, j - 1] + 1:
            deleted.append(j - 1)
            j -= 1
        else:
            ops[i - 1] = INSERT
            i -= 1
    labels_list = [ref[k] if k >= 0 else -1 for k in ref_index]
    labels = np.asarray(labels_list, dtype=object if any(isinstance(x, str) for x in labels_list) else np.int64)
    correct = np.array([op == MATCH for op in ops], bool)
    return TokenAlignment(labels, correct, ref_index, tuple(ops), np.array(sorted(deleted), np.int64),
                          int(d[len(h), len(r)]))
