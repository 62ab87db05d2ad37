"""Numba kernel behind :func:`tokcal.sketch.sketch_logits` for numpy logits.

One parallel pass per row: heap top-k (ties broken by the lower id), exact logsumexp in float64,
and a fine histogram (count, sum) of the tail offsets ``d = z_k - z`` through a lookup table.
Kept in its own module, imported on first use, so ``import tokcal`` does not load numba and the
compiled code is cached on disk (``cache=True`` needs module-level functions).
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def sift_down(hv, hi, pos, size):
    # min-heap on (value, -id): the root is the weakest of the current top-k
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and (hv[right] < hv[left] or (hv[right] == hv[left] and hi[right] > hi[left])):
            child = right
        if hv[child] < hv[pos] or (hv[child] == hv[pos] and hi[child] > hi[pos]):
            hv[pos], hv[child] = hv[child], hv[pos]
            hi[pos], hi[child] = hi[child], hi[pos]
            pos = child
        else:
            return

@numba.njit(cache=True, nogil=True, fastmath=True)
def sum_exp(row, mx):
    s = 0.0
    for j in range(row.shape[0]):
        s += np.exp(np.float64(row[j]) - mx)
    return s

@numba.njit(parallel=True, cache=True, nogil=True)
def sketch_rows(z, labels, k, lut, inv_res, top_ids, top_vals, log_norm, tail1, label_logit, cnt, sm, bad):
    n, v = z.shape
    qmax = lut.shape[0] - 1
    for i in numba.prange(n):
        row = z[i]
        finite = True
        for j in range(v):
            if not np.isfinite(row[j]):
                finite = False
                break
        if not finite:
            bad[i] = 1
            continue
        hv = top_vals[i]
        hi = top_ids[i]
        for j in range(k):
            hv[j] = row[j]
            hi[j] = j
        for p in range(k // 2 - 1, -1, -1):
            sift_down(hv, hi, p, k)
        for j in range(k, v):
            x = row[j]
            if x > hv[0]:
                hv[0] = x
                hi[0] = j
                sift_down(hv, hi, 0, k)
        # heap sort: repeatedly move the weakest to the end -> descending order
        for end in range(k - 1, 0, -1):
            hv[0], hv[end] = hv[end], hv[0]
            hi[0], hi[end] = hi[end], hi[0]
            sift_down(hv, hi, 0, end)
        mx = np.float64(hv[0])
        zk = hv[k - 1]
        s = sum_exp(row, mx)
        for j in range(v):
            x = row[j]
            d = zk - x
            q = 0
            if d > 0:
                q = min(int(d * inv_res), qmax)
            b = lut[q]
            cnt[i, b] += 1.0
            sm[i, b] += x
        stop = 0.0
        for t in range(k):
            x = hv[t]
            cnt[i, 0] -= 1.0
            sm[i, 0] -= x
            stop += np.exp(np.float64(x) - mx)
        log_norm[i] = mx + np.log(s)
        rest = s - stop
        tail1[i] = mx + np.log(rest) if rest > 0 else -np.inf
        if labels[i] >= 0:
            label_logit[i] = row[labels[i]]
        else:
            label_logit[i] = np.nan
