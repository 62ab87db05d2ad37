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

_F = np.float32
# Cephes expf: exp(x) = 2^n exp(r), n = floor(x log2(e) + 1/2), r = x - n ln 2 (ln 2 in two parts),
# exp(r) by a degree-7 polynomial on |r| <= ln 2 / 2; max relative error 8.2e-8 (< 1 float32 ulp),
# checked against float64 in tests/test_sketch.py.
_LOG2E, _C1, _C2 = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
_P0, _P1, _P2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_P3, _P4, _P5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_LO, _HALF, _ONE, _ZERO = _F(-87.0), _F(0.5), _F(1.0), _F(0.0)


@numba.njit(cache=True, nogil=True)
def exp_block(x, a, stop, m, ebuf, bits):
    """``ebuf[j] = exp(x[a + j] - m)`` for j < stop - a, with x - m <= 0 (float32, vectorisable:
    no library call; 2^n is built in ``bits`` and read back as float32). Below -87 the value is
    clamped to exp(-87) ~ 1.6e-38, negligible in any sum of probabilities."""
    pw = bits.view(np.float32)
    for j in range(stop - a):
        d = x[a + j] - m
        if d < _LO:
            d = _LO
        n = np.floor(d * _LOG2E + _HALF)
        r = d - n * _C1 - n * _C2
        p = _P0
        p = p * r + _P1
        p = p * r + _P2
        p = p * r + _P3
        p = p * r + _P4
        p = p * r + _P5
        p = p * r * r + r + _ONE
        bits[j] = (np.int32(n) + 127) << 23
        ebuf[j] = p
    for j in range(stop - a):
        ebuf[j] *= pw[j]


@numba.njit(cache=True, nogil=True)
def sum_exp(row, mx, zk):
    """``(sum_j exp(row_j - mx), sum_{row_j < zk} exp(row_j - mx))`` for a row with max ``mx``.

    float32 exponentials (:func:`exp_block`, < 1 ulp) in blocks of 256, each block summed in four
    interleaved float32 lanes and added in float64. The order of the additions is fixed (no fastmath
    reassociation), so the same logits give the same bits whatever the row's memory alignment. The
    second sum is the tail below the k-th logit, taken directly so it keeps its relative precision."""
    ebuf = np.empty(256, np.float32)
    bits = np.empty(256, np.int32)
    total = 0.0
    below = 0.0
    m = _F(mx)
    v = row.shape[0]
    for a in range(0, v, 256):
        stop = min(v, a + 256)
        exp_block(row, a, stop, m, ebuf, bits)
        p0 = _ZERO
        p1 = _ZERO
        p2 = _ZERO
        p3 = _ZERO
        b0 = _ZERO
        b1 = _ZERO
        b2 = _ZERO
        b3 = _ZERO
        cnt = stop - a
        j = 0
        while j + 3 < cnt:
            p0 += ebuf[j]
            p1 += ebuf[j + 1]
            p2 += ebuf[j + 2]
            p3 += ebuf[j + 3]
            b0 += ebuf[j] if row[a + j] < zk else _ZERO
            b1 += ebuf[j + 1] if row[a + j + 1] < zk else _ZERO
            b2 += ebuf[j + 2] if row[a + j + 2] < zk else _ZERO
            b3 += ebuf[j + 3] if row[a + j + 3] < zk else _ZERO
            j += 4
        while j < cnt:
            p0 += ebuf[j]
            b0 += ebuf[j] if row[a + j] < zk else _ZERO
            j += 1
        total += np.float64(p0) + np.float64(p1) + np.float64(p2) + np.float64(p3)
        below += np.float64(b0) + np.float64(b1) + np.float64(b2) + np.float64(b3)
    return total, below


@numba.njit(parallel=True, cache=True, nogil=True)
def sketch_rows(z, labels, k, lut, inv_res, top_ids, top_vals, log_norm, tail1, label_logit, cnt, sm, bad):
    """Per row: heap top-k, exact log-normaliser, fine histogram of the tail offsets, gold logit."""
    n, v = z.shape
    qmax = lut.shape[0] - 1
    for i in numba.prange(n):
        row = z[i]
        hv = top_vals[i]
        hi = top_ids[i]
        finite = True
        for j in range(k):
            hv[j] = row[j]
            hi[j] = j
            if not np.isfinite(row[j]):
                finite = False
        for p in range(k // 2 - 1, -1, -1):
            sift_down(hv, hi, p, k)
        for j in range(k, v):
            x = row[j]
            if x > hv[0]:
                if x == np.inf:
                    finite = False
                    break
                hv[0] = x
                hi[0] = j
                sift_down(hv, hi, 0, k)
            elif not (x > -np.inf):  # NaN or -inf
                finite = False
                break
        if not finite:
            bad[i] = 1
            continue
        # heap sort: repeatedly move the weakest to the end -> descending order
        for end in range(k - 1, 0, -1):
            hv[0], hv[end] = hv[end], hv[0]
            hi[0], hi[end] = hi[end], hi[0]
            sift_down(hv, hi, 0, end)
        mx = np.float64(hv[0])
        zk = hv[k - 1]
        s, below = sum_exp(row, mx, zk)
        n_at_zk = 0
        for j in range(v):
            x = row[j]
            d = zk - x
            q = 0
            if d > 0:
                q = min(int(d * inv_res), qmax)
            elif d == 0:
                n_at_zk += 1
            b = lut[q]
            cnt[i, b] += 1.0
            sm[i, b] += x
        for t in range(k):
            x = hv[t]
            cnt[i, 0] -= 1.0
            sm[i, 0] -= x
            if x == zk:
                n_at_zk -= 1
        log_norm[i] = mx + np.log(s)
        # the tail: everything below z_k, plus the ids tied with z_k that did not make the top-k
        rest = below + n_at_zk * np.exp(np.float64(zk) - mx)
        tail1[i] = mx + np.log(rest) if rest > 0 else -np.inf
        if labels[i] >= 0:
            label_logit[i] = row[labels[i]]
        else:
            label_logit[i] = np.nan


@numba.njit(parallel=True, cache=True, nogil=True)
def tail_nodes(cnt, sm, tail1, betas, var, out):
    """Tail cumulants at the grid nodes from the fine histogram (count, sum) of each row's tail.

    Each fine bin j is a Gaussian cluster (count c_j, mean m_j, variance var_j = w_j^2 / 12):
    ``f(beta) = log sum_j c_j exp(beta m_j + beta^2 var_j / 2)``, ``f'(beta)`` its tilted mean.
    The beta = 1 node takes the exact ``tail1`` where the kernel could compute it (finite).
    Rows without a tail get (-inf, 0).
    """
    n, nj = cnt.shape
    nb = betas.shape[0]
    for i in numba.prange(n):
        mean = np.empty(nj)
        logc = np.empty(nj)
        vv = np.empty(nj)
        m = 0
        for j in range(nj):
            if cnt[i, j] > 0.5:
                mean[m] = sm[i, j] / cnt[i, j]
                logc[m] = np.log(cnt[i, j])
                vv[m] = var[j]
                m += 1
        for b in range(nb):
            beta = betas[b]
            if m == 0:
                out[i, b, 0] = -np.inf
                out[i, b, 1] = 0.0
                continue
            amax = -np.inf
            for j in range(m):
                a = logc[j] + beta * mean[j] + 0.5 * beta * beta * vv[j]
                if a > amax:
                    amax = a
            s = 0.0
            s1 = 0.0
            for j in range(m):
                w = np.exp(logc[j] + beta * mean[j] + 0.5 * beta * beta * vv[j] - amax)
                s += w
                s1 += w * (mean[j] + beta * vv[j])
            out[i, b, 0] = amax + np.log(s)
            out[i, b, 1] = s1 / s
            if beta == 1.0 and tail1[i] > -np.inf:
                out[i, b, 0] = tail1[i]


@numba.njit(cache=True, nogil=True, inline="always")
def hermite_tail(tail, i, nodes, beta, want):
    """Tail cumulants at ``beta`` for row i: f, f' and f'' by cubic Hermite interpolation between
    the nodes (linear beyond the last node). ``want`` 0: value only. Empty tail: (-inf, 0, 0)."""
    m = nodes.shape[0]
    if beta >= nodes[m - 1]:
        fl = np.float64(tail[i, m - 1, 0])
        gl = np.float64(tail[i, m - 1, 1])
        if fl == -np.inf:
            return -np.inf, 0.0, 0.0
        return fl + (beta - nodes[m - 1]) * gl, gl, 0.0
    j = 0
    while j < m - 2 and nodes[j + 1] <= beta:
        j += 1
    x0 = nodes[j]
    h = nodes[j + 1] - x0
    t = (beta - x0) / h
    f0 = np.float64(tail[i, j, 0])
    f1 = np.float64(tail[i, j + 1, 0])
    if f0 == -np.inf or f1 == -np.inf:
        return -np.inf, 0.0, 0.0
    g0 = np.float64(tail[i, j, 1]) * h
    g1 = np.float64(tail[i, j + 1, 1]) * h
    t2 = t * t
    t3 = t2 * t
    val = (2 * t3 - 3 * t2 + 1) * f0 + (t3 - 2 * t2 + t) * g0 + (-2 * t3 + 3 * t2) * f1 + (t3 - t2) * g1
    if want == 0:
        return val, 0.0, 0.0
    d1 = ((6 * t2 - 6 * t) * f0 + (3 * t2 - 4 * t + 1) * g0 + (-6 * t2 + 6 * t) * f1 + (3 * t2 - 2 * t) * g1) / h
    d2 = ((12 * t - 6) * f0 + (6 * t - 4) * g0 + (-12 * t + 6) * f1 + (6 * t - 2) * g1) / (h * h)
    return val, d1, d2 if d2 > 0.0 else 0.0


@numba.njit(parallel=True, cache=True, nogil=True)
def temperature_stats(top, tail, nodes, beta, exact_logz, logz_out, mean_out, var_out, sumsq_out,
                      probs_out, want_probs):
    """Per row, one pass over the top-k: log Z(beta), E_p[z], Var_p[z], sum_j p_j^2 (and p_top).

    The tail enters through its cumulants f(beta), f'(beta), f''(beta) and f(2 beta); rows with
    beta == 1 take the stored exact normaliser ``exact_logz`` as log Z.
    """
    n, k = top.shape
    for i in numba.prange(n):
        b = beta[i]
        ft, ft1, ft2 = hermite_tail(tail, i, nodes, b, 1)
        f2b = hermite_tail(tail, i, nodes, 2.0 * b, 0)[0]
        mx = b * np.float64(top[i, 0])
        s = 0.0
        s1 = 0.0
        s2 = 0.0
        q = 0.0
        for j in range(k):
            x = np.float64(top[i, j])
            e = np.exp(b * x - mx)
            s += e
            s1 += e * x
            s2 += e * x * x
            q += e * e
            if want_probs:
                probs_out[i, j] = e
        et = np.exp(ft - mx) if ft > -np.inf else 0.0
        logz = mx + np.log(s + et)
        if b == 1.0:
            logz = np.float64(exact_logz[i])
        scale = np.exp(mx - logz)
        pt = et * scale
        mean = s1 * scale + pt * ft1
        second = s2 * scale + pt * (ft2 + ft1 * ft1)
        var = second - mean * mean
        logz_out[i] = logz
        mean_out[i] = mean
        var_out[i] = var if var > 0.0 else 0.0
        sq = q * scale * scale + (np.exp(f2b - 2.0 * logz) if f2b > -np.inf else 0.0)
        sumsq_out[i] = sq if sq < 1.0 else 1.0  # a probability vector's sum of squares is <= 1
        if want_probs:
            for j in range(k):
                probs_out[i, j] *= scale
