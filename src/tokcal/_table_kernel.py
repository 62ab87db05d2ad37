"""Numba kernel behind :meth:`tokcal.table.TokenTable.validate`: one pass over the rows that says whether
every value check certainly passes. It is conservative: a row whose gold logit exceeds its top-1 logit at
all (within the allowed rounding or not) answers "not sure", and then the numpy checks run and name the
first bad row. So the errors are those of the numpy checks, and a valid table, the common case, costs one
pass instead of a dozen.

Kept in its own module, imported on first use, so ``import tokcal`` does not load numba.
"""

import numba
import numpy as np

MAX_STAMPED_VOCAB = 1 << 22  #: repeated top-k ids are found by one stamp per id up to this vocabulary size


@numba.njit(cache=True, nogil=True)
def surely_valid(label, top_ids, top_logits, label_logit, log_normalizer, tail, vocab_size):
    n, k = top_ids.shape
    if vocab_size > MAX_STAMPED_VOCAB:
        return False
    stamp = np.full(vocab_size, -1, np.int64)  # the last row that held each id
    for i in range(n):
        y = label[i]
        if y < -1 or y >= vocab_size:
            return False
        if not np.isfinite(log_normalizer[i]):
            return False
        prev = top_logits[i, 0]
        for j in range(k):
            t = top_ids[i, j]
            if t < 0 or t >= vocab_size:
                return False
            z = top_logits[i, j]
            if not np.isfinite(z) or z > prev:
                return False
            prev = z
            if stamp[t] == i:
                return False
            stamp[t] = i
        g = label_logit[i]
        if y >= 0 and not np.isfinite(g):
            return False
        if g > top_logits[i, 0]:
            return False
        for a in range(tail.shape[1]):
            for b in range(tail.shape[2]):
                v = tail[i, a, b]
                if np.isnan(v) or v == np.inf:
                    return False
    return True
