"""Numba kernels of the metrics, at module level so that ``cache=True`` stores them on disk.

Every kernel makes one pass over the tokens, checks the values it reads (so callers need no extra
validation pass) and returns ``(first_bad_index, what)`` with ``what`` 0 when all is well.
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def width_bin(ci, nb):
    """bin = min(floor(c * B), B - 1), corrected by one where float rounding of c * B disagrees with the
    reported edges ``linspace(0, 1, B + 1)`` (as numpy.histogram does). Those edges are ``b * (1 / B)``
    exactly (numpy's linspace arithmetic; tests/test_metrics_binned.py), so no edge array is passed:
    with an array argument the call cost 3-4x a loop with the arithmetic written out (numba counts the
    array's references on every call), without one it costs nothing."""
    b = int(ci * nb)
    if b > nb - 1:
        b = nb - 1
    step = 1.0 / nb
    if b > 0 and ci < b * step:
        b -= 1
    elif b < nb - 1 and ci >= (b + 1) * step:
        b += 1
    return b

@numba.njit(cache=True, nogil=True)
def edge_bin(ci, nb, edges):
    # [lo, hi) bins, the last one closed: searchsorted(edges, c, 'right') - 1 clipped to [0, B-1]
    b = np.searchsorted(edges, ci, side="right") - 1
    if b > nb - 1:
        b = nb - 1
    if b < 0:
        b = 0
    return b

@numba.njit(cache=True, nogil=True)
def binned_stats(c, a, w, codes, nb, out):
    """Width bins: out[0|1|2, s * B + b] += weight, weight * c, weight * a.

    Four interleaved partial sums break the store-to-load dependency of consecutive tokens
    falling into the same bin (about 2x faster); they are added at the end.
    """
    has_w = w.shape[0] > 0
    has_s = codes.shape[0] > 0
    m = out.shape[1]
    acc = np.zeros((4, 3, m))
    for i in range(c.shape[0]):
        ci = c[i]
        if not (ci >= 0.0 and ci <= 1.0):
            return i, 1
        ai = a[i]
        if not (ai == 0 or ai == 1):
            return i, 2
        s = 0
        if has_s:
            s = codes[i]
            if s < 0:
                continue
        k = s * nb + width_bin(ci, nb)
        lane = i & 3
        if has_w:
            wi = w[i]
            acc[lane, 0, k] += wi
            acc[lane, 1, k] += wi * ci
            acc[lane, 2, k] += wi * ai
        else:
            acc[lane, 0, k] += 1.0
            acc[lane, 1, k] += ci
            acc[lane, 2, k] += ai
    for lane in range(4):
        for j in range(3):
            for k in range(m):
                out[j, k] += acc[lane, j, k]
    return -1, 0

@numba.njit(cache=True, nogil=True)
def bin_index(c, nb, edges, uniform, out):
    for i in range(c.shape[0]):
        ci = c[i]
        if not (ci >= 0.0 and ci <= 1.0):
            return i, 1
        out[i] = width_bin(ci, nb) if uniform else edge_bin(ci, nb, edges)
    return -1, 0

@numba.njit(cache=True, nogil=True)
def grid_hist(c, a, w, g, out):
    """Linear-interpolation mass of each token on the grid i / (g - 1) (relplot's
    ``smooth_round_to_grid``): out[0] weight, out[1] weight * (c - a), out[2] weight * a."""
    has_w = w.shape[0] > 0
    for i in range(c.shape[0]):
        f = np.float64(c[i])
        if not (f >= 0.0 and f <= 1.0):
            return i, 1
        ai = a[i]
        if not (ai == 0 or ai == 1):
            return i, 2
        x = f * (g - 1)
        b = int(x)
        if b > g - 2:
            b = g - 2
        frac = x - b
        wi = w[i] if has_w else 1.0
        r = f - ai
        lo = (1.0 - frac) * wi
        hi = frac * wi
        out[0, b] += lo
        out[0, b + 1] += hi
        out[1, b] += (1.0 - frac) * r * wi
        out[1, b + 1] += frac * r * wi
        out[2, b] += lo * ai
        out[2, b + 1] += hi * ai
    return -1, 0

@numba.njit(cache=True, nogil=True)
def classwise(top_ids, top_probs, label, label_prob, tail, tail_vocab, lookup, nb, use_label_prob,
              base, hit, moved):
    """Per-class binned sums of p_i(j) vs 1[y_i = j] without materialising [N, M].

    Every labeled row adds its tail probability (``tail``, or computed from ``tail_vocab`` when ``tail`` is
    empty) to ``base`` [2, B] (shared by all classes); each class
    in the row's top-k (and the gold class) moves that row from the tail bin to its own bin:
    ``hit[m, b]`` += (1, p, 1[correct]) and ``moved[m, bt]`` += (1, t), subtracted by the caller (when
    b is the tail bin, only ``hit[m, b, 1] += p - t``: the count does not change).
    ``lookup`` maps ids to class rows and every other id to one of the four spare rows at the end
    (``hit.shape[0] - 4`` onwards, a lane per j % 4): no branch on membership, and consecutive
    misses do not wait on each other's store (about 3x faster than branching on ``m >= 0``).
    """
    n, k = top_ids.shape
    nlook = lookup.shape[0]
    spare = hit.shape[0] - 4
    given = tail.shape[0] > 0  # else the mean tail probability (1 - sum_j p_j) / (tail_vocab - k), in [0, 1]
    for i in range(n):
        y = label[i]
        if y < 0:
            continue
        if given:
            t = tail[i]
            if not (t >= 0.0 and t <= 1.0):
                return i, 3
        elif tail_vocab > k:
            s = 0.0
            for j in range(k):
                s += top_probs[i, j]
            t = min(max((1.0 - s) / (tail_vocab - k), 0.0), 1.0)
        else:
            t = 0.0
        bt = width_bin(t, nb)
        base[0, bt] += 1.0
        base[1, bt] += t
        y_in_top = False
        for j in range(k):
            tid = top_ids[i, j]
            if tid < 0:
                return i, 4
            m = lookup[tid] if tid < nlook else spare
            m += (m == spare) * (j & 3)
            p = top_probs[i, j]
            if not (p >= 0.0 and p <= 1.0):
                return i, 1
            b = width_bin(p, nb)
            if b == bt:  # from the tail bin to the same bin (most ids beyond the first few): p - t only
                hit[m, b, 1] += p - t
            else:
                hit[m, b, 0] += 1.0
                hit[m, b, 1] += p
                moved[m, bt, 0] += 1.0
                moved[m, bt, 1] += t
            if tid == y:
                hit[m, b, 2] += 1.0
                y_in_top = True
        ycls = lookup[y] if y < nlook else spare
        if ycls < spare and not y_in_top:
            p = label_prob[i] if use_label_prob else t
            if not (p >= 0.0 and p <= 1.0):
                return i, 2
            b = width_bin(p, nb)
            hit[ycls, b, 0] += 1.0
            hit[ycls, b, 1] += p
            hit[ycls, b, 2] += 1.0
            moved[ycls, bt, 0] += 1.0
            moved[ycls, bt, 1] += t
    return -1, 0



@numba.njit(parallel=True, cache=True, nogil=True)
def binned_stats_parallel(c, a, w, codes, nb, out):
    """:func:`binned_stats` over ``n_chunks`` contiguous chunks in parallel, each into its own partial
    sums (float64), added in chunk order at the end; the first bad token is the first bad index of
    the first chunk that has one."""
    n = c.shape[0]
    n_chunks = 8
    size = (n + n_chunks - 1) // n_chunks
    m = out.shape[1]
    part = np.zeros((n_chunks, 3, m))
    bad_i = np.full(n_chunks, -1, np.int64)
    bad_what = np.zeros(n_chunks, np.int64)
    has_w = w.shape[0] > 0
    has_s = codes.shape[0] > 0
    for ch in numba.prange(n_chunks):
        lo = ch * size
        hi = min(n, lo + size)
        if lo >= hi:
            continue
        i, what = binned_stats(c[lo:hi], a[lo:hi], w[lo:hi] if has_w else w, codes[lo:hi] if has_s else codes,
                               nb, part[ch])
        if i >= 0:
            bad_i[ch] = lo + i
            bad_what[ch] = what
    for ch in range(n_chunks):
        if bad_i[ch] >= 0:
            return bad_i[ch], bad_what[ch]
    for ch in range(n_chunks):
        for j in range(3):
            for k in range(m):
                out[j, k] += part[ch, j, k]
    return -1, 0
