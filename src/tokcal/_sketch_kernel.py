"""Numba kernel behind :func:`tokcal.sketch.sketch_logits` for numpy logits.

Per row, in parallel over rows: block maxima (vectorised) give a threshold for the top-k (ties
broken by the lower id), then one pass computes the float32 exponentials for the exact
log-normaliser (summed in float64) and a fine log-linear histogram (count and mean position per
bin, packed in one int64) of the tail offsets ``d = z_k - z``, from which the tail cumulants at
the grid nodes follow. Each row chunk allocates its small buffers once, so nothing of size
N x bins is materialised. Sketch cost on this project's CPU: ~1-1.5 ns per logit (2 threads).

Kept in its own module, imported on first use, so ``import tokcal`` does not load numba and the
compiled code is cached on disk (``cache=True`` needs module-level functions).
"""

import numba
import numpy as np

_F = np.float32
# Cephes expf: exp(x) = 2^n exp(r), n = floor(x log2(e) + 1/2), r = x - n ln 2 (ln 2 in two parts),
# exp(r) by a degree-7 polynomial on |r| <= ln 2 / 2; max relative error 8.2e-8 (< 1 float32 ulp),
# checked against float64 in tests/test_sketch.py.
_LOG2E, _C1, _C2 = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
_P0, _P1, _P2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_P3, _P4, _P5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_LO, _HALF, _ONE, _ZERO = _F(-87.0), _F(0.5), _F(1.0), _F(0.0)


@numba.njit(cache=True, nogil=True)
def exp_block(x, m, ebuf, bits):
    """``ebuf[j] = exp(x[j] - m)`` for j < len(x) <= len(ebuf), with x - m <= 0 (float32,
    vectorisable: no library call; 2^n is built in ``bits`` and read back as float32). Below -87
    (and for -inf, a masked id) the value is exactly 0: float32 has no normal number below
    exp(-87.3), and a sum of probabilities is >= 1 wherever this is used.

    (Hot loops here index views with the loop variable itself: numba's negative-index check on
    ``x[a + j]`` would stop LLVM from vectorising.)"""
    pw = bits.view(np.float32)
    for j in range(x.shape[0]):
        d = x[j] - m
        keep = not (d < _LO)  # NaN is kept: it must reach the sums, which flag the row
        if not keep:
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
        bits[j] = (np.int32(n) + 127) << 23 if keep else 0  # float32 bits 0: +0.0
        ebuf[j] = p
    for j in range(x.shape[0]):
        ebuf[j] *= pw[j]


#: block length of the block-maximum pre-pass of the top-k selection
_BLOCK = 32


@numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})
def block_maxima(row, bmax):
    """``bmax[c] = max(row[c * _BLOCK:(c + 1) * _BLOCK])`` (vectorised; a NaN gives an arbitrary
    value, harmless: such rows are flagged by the NaN in their sum of exponentials)."""
    v = row.shape[0]
    nf = v // _BLOCK
    blocks = row[:nf * _BLOCK].reshape((nf, _BLOCK))
    for c in range(nf):
        m = blocks[c, 0]
        for j in range(1, _BLOCK):
            m = blocks[c, j] if blocks[c, j] > m else m
        bmax[c] = m
    if nf * _BLOCK < v:
        t = row[nf * _BLOCK:]
        m = t[0]
        for j in range(1, t.shape[0]):
            m = t[j] if t[j] > m else m
        bmax[nf] = m


_BUCKETS = 64


@numba.njit(cache=True, nogil=True)
def kth_largest_bound(x, k, counts):
    """A value tau with at least k entries of ``x`` >= tau, at most a bucket below the k-th
    largest: the entries above -inf counted in ``_BUCKETS`` equal-width buckets over their
    [min, max], the buckets walked down from the top until they hold k, tau = the smallest entry
    in those buckets. Branch-light, O(len(x)) (a heap mispredicts on every replacement). -inf
    (fewer than k entries above -inf, or a +inf / NaN row, flagged later) lets everything pass."""
    lo = np.inf
    hi = -np.inf
    n = 0
    for j in range(x.shape[0]):
        v = x[j]
        if v > -np.inf:
            lo = min(lo, v)
            hi = max(hi, v)
            n += 1
    if n < k or not hi < np.inf:
        return -np.inf
    if not hi > lo:
        return lo
    scale = (_BUCKETS - 1e-9) / (np.float64(hi) - np.float64(lo))
    counts[:] = 0
    for j in range(x.shape[0]):
        if x[j] > -np.inf:
            q = int((np.float64(x[j]) - lo) * scale)
            counts[min(max(q, 0), _BUCKETS - 1)] += 1
    total = 0
    q = _BUCKETS - 1
    while q > 0:
        total += counts[q]
        if total >= k:
            break
        q -= 1
    tau = hi
    for j in range(x.shape[0]):
        v = x[j]
        if v > -np.inf and v < tau and int((np.float64(v) - lo) * scale) >= q:
            tau = v
    return tau


@numba.njit(cache=True, nogil=True)
def top_k_row(row, k, hv, hi, bmax, counts):
    """Top-k of ``row`` into ``hv``/``hi``, descending, ties broken by the lower id; returns the
    number of entries found (< k only when NaNs hide values).

    The maxima of blocks of ``_BLOCK`` logits give a threshold tau <= their k-th largest
    (:func:`kth_largest_bound`): at least k logits are >= tau, so nothing below it is in the
    top-k. Only the blocks whose maximum reaches tau (about k of them) are scanned, and their
    few logits >= tau are insertion-sorted into the top-k (scanned in id order, so an equal
    value never passes an earlier id). A streaming heap over the whole row would do about
    ``k ln(V / k)`` insertions."""
    v = row.shape[0]
    nb = (v + _BLOCK - 1) // _BLOCK
    tau = -np.inf
    if nb > k:
        block_maxima(row, bmax)
        tau = kth_largest_bound(bmax[:nb], k, counts)
    else:
        bmax[:nb] = np.inf  # scan every block
    size = 0
    for c in range(nb):
        if not (bmax[c] >= tau):
            continue
        a = c * _BLOCK
        x = row[a:min(v, a + _BLOCK)]
        for j in range(x.shape[0]):
            xj = x[j]
            if xj >= tau and (size < k or xj > hv[k - 1]):
                if size < k:
                    pos = size
                    size += 1
                else:
                    pos = k - 1  # the weakest drops out
                while pos > 0 and hv[pos - 1] < xj:
                    hv[pos] = hv[pos - 1]
                    hi[pos] = hi[pos - 1]
                    pos -= 1
                hv[pos] = xj
                hi[pos] = a + j
    return size


_ONE_BITS = np.int32(0x3F800000)
#: the histogram's int64 accumulators: count in the bits from ``_COUNT_SHIFT`` up (vocabularies
#: below 2^23), the sum of each logit's 12-bit position inside its bin below (< 2^35)
_COUNT_SHIFT = 40
_FRAC_BITS = 12
_FRAC_MASK = (1 << _FRAC_BITS) - 1


@numba.njit(cache=True, nogil=True)
def sum_exp_hist(row, mx, zk, inv_a, shift, acc, ebuf, bits, ubuf, bins, packed):
    """One pass over the row: ``(sum_j exp(row_j - mx), sum_{row_j < zk} exp(row_j - mx),
    #{row_j == zk})`` and the fine histogram of the offsets d = zk - row_j into ``acc``.

    Exponentials: float32 (:func:`exp_block`, < 1 ulp) in blocks of 256, each block summed in
    four interleaved float32 lanes and added in float64, in a fixed order (no fastmath
    reassociation): the same logits give the same bits whatever the row's memory alignment. The
    second sum is the tail below the k-th logit, taken directly so it keeps its relative precision.

    Fine bins are log-linear in u = 1 + d / a: bin = (bits(u) - bits(1)) >> shift, i.e.
    2^(23 - shift) equal bins per octave of u (the float32 exponent and top mantissa bits), no
    table and no logarithm; d <= 0 (the top-k and ties) lands in bin 0, offsets past the last
    bin (and -inf) in the overflow bin ``len(acc) - 1``. The next 12 mantissa bits are the
    logit's position inside its bin (u is linear in d): each logit adds ``2^40 + position`` to
    its bin's int64 accumulator, one exact integer add instead of a float count and sum."""
    nj = acc.shape[0] - 1
    total = 0.0
    below = 0.0
    n_at = 0
    m = _F(mx)
    zkf = _F(zk)
    inva = _F(inv_a)
    ub = ubuf.view(np.int32)
    low = shift - _FRAC_BITS
    one = np.int64(1) << _COUNT_SHIFT
    v = row.shape[0]
    for a in range(0, v, 256):
        x = row[a:min(v, a + 256)]
        cnt_ = x.shape[0]
        exp_block(x, m, ebuf, bits)
        for j in range(cnt_):  # u = 1 + max(d, 0) / a >= 1: the top-k (d <= 0) fall in bin 0
            d = zkf - x[j]
            ubuf[j] = (d if d > _ZERO else _ZERO) * inva + _ONE
        for j in range(cnt_):
            b = (ub[j] - _ONE_BITS) >> shift
            bins[j] = b if b < nj else nj
            packed[j] = one + ((ub[j] >> low) & _FRAC_MASK)
        p0 = _ZERO
        p1 = _ZERO
        p2 = _ZERO
        p3 = _ZERO
        b0 = _ZERO
        b1 = _ZERO
        b2 = _ZERO
        b3 = _ZERO
        j = 0
        while j + 3 < cnt_:
            p0 += ebuf[j]
            p1 += ebuf[j + 1]
            p2 += ebuf[j + 2]
            p3 += ebuf[j + 3]
            b0 += ebuf[j] if x[j] < zkf else _ZERO
            b1 += ebuf[j + 1] if x[j + 1] < zkf else _ZERO
            b2 += ebuf[j + 2] if x[j + 2] < zkf else _ZERO
            b3 += ebuf[j + 3] if x[j + 3] < zkf else _ZERO
            j += 4
        while j < cnt_:
            p0 += ebuf[j]
            b0 += ebuf[j] if x[j] < zkf else _ZERO
            j += 1
        total += np.float64(p0) + np.float64(p1) + np.float64(p2) + np.float64(p3)
        below += np.float64(b0) + np.float64(b1) + np.float64(b2) + np.float64(b3)
        for j in range(cnt_):
            n_at += x[j] == zkf
        for j in range(cnt_):
            acc[bins[j]] += packed[j]
    return total, below, n_at


@numba.njit(cache=True, nogil=True)
def hist_moments(acc, k, row, zk, inv_a, edges, cnt, sm):
    """Count and sum of logits per fine bin (``cnt``, ``sm``) from the packed accumulators, the
    top-k taken out of bin 0. Inside a bin the mean offset is the bin's lower edge plus the mean
    position (the truncated 12 bits count half a step). The rare overflow bin gets its exact sum
    from a second look at the row, which also drops the -inf logits (masked ids: probability 0
    at every temperature, so no part of the tail)."""
    nj = acc.shape[0] - 1
    for b in range(nj + 1):
        c = acc[b] >> _COUNT_SHIFT
        if b == 0:
            c -= k
        cnt[b] = c
        if c > 0 and b < nj:
            frac = ((acc[b] & ((np.int64(1) << _COUNT_SHIFT) - 1)) / c + 0.5) / (1 << _FRAC_BITS)
            sm[b] = c * (np.float64(zk) - (edges[b] + frac * (edges[b + 1] - edges[b])))
        else:
            sm[b] = 0.0
    if cnt[nj] > 0:
        far = np.float32(1.0 + edges[nj] * inv_a)
        zkf = np.float32(zk)
        inva = np.float32(inv_a)
        s = 0.0
        for j in range(row.shape[0]):
            x = row[j]
            if (zkf - x) * inva + _ONE >= far:
                if x == -np.inf:
                    cnt[nj] -= 1.0
                else:
                    s += x
        sm[nj] = s


@numba.njit(cache=True, nogil=True)
def node_workspace(nj, nb):
    """Scratch buffers of :func:`row_nodes` for ``nj`` fine bins and ``nb`` nodes (allocate once
    per row chunk)."""
    return (np.empty((3, nj)), np.empty((nj, nb)), np.empty((nj, nb), np.float32),
            np.empty((nj, nb), np.float32), np.empty((nj, nb), np.int32), np.empty((3, nb)))


@numba.njit(cache=True, nogil=True)
def row_nodes(cnt, sm, tail1, betas, var, out, ws):
    """Tail cumulants of one row at the grid nodes from its fine histogram (count, sum).

    Each fine bin j is a Gaussian cluster (count c_j, mean m_j, variance var_j = w_j^2 / 12):
    ``f(beta) = log sum_j c_j exp(beta m_j + beta^2 var_j / 2)``, ``f'(beta)`` its tilted mean.
    The beta = 1 node takes the exact ``tail1`` where it is finite. No tail: (-inf, 0).
    All nodes at once, vectorised over beta: exponents a[j, b], their maximum per node, float32
    exponentials of the offsets (<= 0), sums in float64. ``ws``: :func:`node_workspace`."""
    per_bin, a, d, e, bits, acc = ws
    mean, cw, vv = per_bin[0], per_bin[1], per_bin[2]
    amax, s, t = acc[0], acc[1], acc[2]
    nj = cnt.shape[0]
    nb = betas.shape[0]
    m = 0
    for j in range(nj):
        if cnt[j] > 0.5:
            mean[m] = sm[j] / cnt[j]
            cw[m] = cnt[j]
            vv[m] = var[j]
            m += 1
    if m == 0:
        for b in range(nb):
            out[b, 0] = -np.inf
            out[b, 1] = 0.0
        return
    for b in range(nb):
        amax[b] = -np.inf
        s[b] = 0.0
        t[b] = 0.0
    for j in range(m):
        mj = mean[j]
        vj = vv[j]
        aj = a[j]
        for b in range(nb):
            x = betas[b] * mj + 0.5 * betas[b] * betas[b] * vj
            aj[b] = x
            amax[b] = x if x > amax[b] else amax[b]
    for j in range(m):
        aj = a[j]
        dj = d[j]
        for b in range(nb):
            dj[b] = aj[b] - amax[b]
    exp_block(d[:m].reshape(m * nb), _ZERO, e[:m].reshape(m * nb), bits[:m].reshape(m * nb))
    for j in range(m):
        ej = e[j]
        cj = cw[j]
        mj = mean[j]
        vj = vv[j]
        for b in range(nb):
            w = cj * np.float64(ej[b])
            s[b] += w
            t[b] += w * (mj + betas[b] * vj)
    for b in range(nb):
        out[b, 0] = amax[b] + np.log(s[b])
        out[b, 1] = t[b] / s[b]
        if betas[b] == 1.0 and tail1 > -np.inf:
            out[b, 0] = tail1


@numba.njit(parallel=True, cache=True, nogil=True)
def sketch_rows(z, labels, k, inv_a, shift, edges, betas, var, top_ids, top_vals, log_norm, label_logit, tail,
                bad, n_chunks):
    """Per row: top-k, exact log-normaliser, gold logit and the tail nodes, in two passes over the
    row (block maxima, then exponentials + fine histogram) plus a scan of ~k blocks. ``edges``:
    the fine bins' offset edges, ``var``: their variances plus 0 for the overflow bin."""
    n, v = z.shape
    nj = var.shape[0]  # fine bins + the overflow bin
    n_chunks = min(n, n_chunks)
    for c in numba.prange(n_chunks):
        bmax = np.empty((v + _BLOCK - 1) // _BLOCK, np.float32)
        counts = np.empty(_BUCKETS, np.int64)
        acc = np.empty(nj, np.int64)
        cnt = np.empty(nj)
        sm = np.empty(nj)
        ebuf = np.empty(256, np.float32)
        bits = np.empty(256, np.int32)
        ubuf = np.empty(256, np.float32)
        bins = np.empty(256, np.uint32)
        packed = np.empty(256, np.int64)
        ws = node_workspace(nj, betas.shape[0])
        for i in range((c * n) // n_chunks, ((c + 1) * n) // n_chunks):
            row = z[i]
            hv = top_vals[i]
            hi = top_ids[i]
            if top_k_row(row, k, hv, hi, bmax, counts) < k or not np.isfinite(hv[0]) or hv[k - 1] == -np.inf:
                bad[i] = 1  # a NaN hid values from the top-k, +inf, or fewer than k finite logits
                continue
            mx = np.float64(hv[0])
            zk = hv[k - 1]
            acc[:] = 0
            s, below, n_at_zk = sum_exp_hist(row, mx, zk, inv_a, shift, acc, ebuf, bits, ubuf, bins, packed)
            if not np.isfinite(s):  # a NaN makes the sum NaN (-inf ids add exactly 0)
                bad[i] = 1
                continue
            hist_moments(acc, k, row, zk, inv_a, edges, cnt, sm)
            for t in range(k):
                if hv[t] == zk:
                    n_at_zk -= 1
            log_norm[i] = mx + np.log(s)
            # the tail: everything below z_k, plus the ids tied with z_k that did not make the top-k
            rest = below + n_at_zk * np.exp(np.float64(zk) - mx)
            tail1 = mx + np.log(rest) if rest > 0 else -np.inf
            row_nodes(cnt, sm, tail1, betas, var, tail[i], ws)
            if labels[i] >= 0:
                label_logit[i] = row[labels[i]]
            else:
                label_logit[i] = np.nan


@numba.njit(parallel=True, cache=True, nogil=True)
def tail_nodes(cnt, sm, tail1, betas, var, out, n_chunks):
    """:func:`row_nodes` for every row of histograms computed elsewhere (the torch path)."""
    n, nj = cnt.shape
    n_chunks = min(n, n_chunks)
    for c in numba.prange(n_chunks):
        ws = node_workspace(nj, betas.shape[0])
        for i in range((c * n) // n_chunks, ((c + 1) * n) // n_chunks):
            row_nodes(cnt[i], sm[i], tail1[i], betas, var, out[i], ws)


@numba.njit(cache=True, nogil=True, inline="always")
def hermite_basis(nodes, beta):
    """The part of :func:`hermite_row` that depends on ``beta`` alone (computed once for all rows at that
    beta): the node interval j (-1: beyond the last node, then the second value is beta - last node), its
    width h, the position t in it, and the cubic Hermite basis of the value, the first and the second
    derivative."""
    m = nodes.shape[0]
    if beta >= nodes[m - 1]:
        z = 0.0
        return -1, beta - nodes[m - 1], z, z, z, z, z, z, z, z, z, z, z, z, z
    j = 0
    while j < m - 2 and nodes[j + 1] <= beta:
        j += 1
    x0 = nodes[j]
    h = nodes[j + 1] - x0
    t = (beta - x0) / h
    t2 = t * t
    t3 = t2 * t
    return (j, h, t, 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + t, -2 * t3 + 3 * t2, t3 - t2,
            6 * t2 - 6 * t, 3 * t2 - 4 * t + 1, -6 * t2 + 6 * t, 3 * t2 - 2 * t,
            12 * t - 6, 6 * t - 4, -12 * t + 6, 6 * t - 2)


@numba.njit(cache=True, nogil=True, inline="always")
def hermite_row(tail, i, m, bs):
    """Tail cumulants of row i at the beta of ``bs`` (:func:`hermite_basis`; m nodes): f, f' and f'' by
    cubic Hermite interpolation between the nodes, kept within the convexity bounds (linear beyond the
    last node). Empty tail: (-inf, 0, 0)."""
    j, h, t, c0, c1, c2, c3, e0, e1, e2, e3, q0, q1, q2, q3 = bs
    if j < 0:
        fl = np.float64(tail[i, m - 1, 0])
        gl = np.float64(tail[i, m - 1, 1])
        if fl == -np.inf:
            return -np.inf, 0.0, 0.0
        return fl + h * gl, gl, 0.0
    f0 = np.float64(tail[i, j, 0])
    f1 = np.float64(tail[i, j + 1, 0])
    if f0 == -np.inf or f1 == -np.inf:
        return -np.inf, 0.0, 0.0
    g0 = np.float64(tail[i, j, 1]) * h
    g1 = np.float64(tail[i, j + 1, 1]) * h
    val = c0 * f0 + c1 * g0 + c2 * f1 + c3 * g1
    d1 = (e0 * f0 + e1 * g0 + e2 * f1 + e3 * g1) / h
    d2 = (q0 * f0 + q1 * g0 + q2 * f1 + q3 * g1) / (h * h)
    # convexity: f stays between the end tangents and the chord (tokcal.sketch._convex_clamp)
    lo0 = f0 + g0 * t
    lo1 = f1 - g1 * (1.0 - t)
    chord = f0 + (f1 - f0) * t
    if val < lo0 and lo0 >= lo1:
        return lo0, g0 / h, 0.0
    if val < lo1 and lo1 > lo0:
        return lo1, g1 / h, 0.0
    if val > chord:
        return chord, (f1 - f0) / h, 0.0
    return val, d1, d2 if d2 > 0.0 else 0.0


# Cephes exp (double): exp(d) = 2^n exp(r), n = floor(d log2(e) + 1/2), r = d - n ln 2 (ln 2 in two
# parts), exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)); within 2 ulp of numpy's exp (tests/test_sketch.py).
_DLOG2E, _DC1, _DC2 = 1.4426950408889634073599, 6.93145751953125e-1, 1.42860682030941723212e-6
_DP0, _DP1, _DP2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
_DQ0, _DQ1, _DQ2, _DQ3 = 3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1, 2.0
_DLO = -708.0  # exp(-708) is about the smallest normal double; below it (and -inf): exactly 0


@numba.njit(parallel=True, cache=True, nogil=True)
def temperature_stats(top, tail, nodes, beta, exact_logz, logz_out, mean_out, var_out, sumsq_out,
                      probs_out, want_probs):
    """Per row, one pass over the top-k: log Z(beta), E_p[z], Var_p[z], sum_j p_j^2 (and p_top).

    The tail enters through its cumulants f(beta), f'(beta), f''(beta) and f(2 beta); rows with
    beta == 1 take the stored exact normaliser ``exact_logz`` as log Z. Rows in chunks (in parallel),
    each chunk with its own work space for the exponentials: ``exp(b z_j - b z_1)`` by the Cephes
    formula above, vectorised (no library call; 2^n is built in ``bits`` and read back as float64),
    ~4x faster than a scalar ``np.exp`` per logit. Written out here: a call per row costs more. The tail's
    Hermite basis is computed once per run of rows with the same beta (:func:`hermite_basis`).
    """
    n, k = top.shape
    n_chunks = min(n, 64)
    for ch in numba.prange(n_chunks):
        e = np.empty(k)
        bits = np.empty(k, np.int64)
        pw = bits.view(np.float64)
        m = nodes.shape[0]
        last = np.nan  # the beta of the bases below: most calls have one temperature for all rows
        bs1 = hermite_basis(nodes, 1.0)  # typed before the loop; replaced at its first row
        bs2 = hermite_basis(nodes, 2.0)
        for i in range(ch * n // n_chunks, (ch + 1) * n // n_chunks):
            b = beta[i]
            if b != last:
                bs1 = hermite_basis(nodes, b)
                bs2 = hermite_basis(nodes, 2.0 * b)
                last = b
            ft, ft1, ft2 = hermite_row(tail, i, m, bs1)
            f2b = hermite_row(tail, i, m, bs2)[0]
            mx = b * np.float64(top[i, 0])
            for j in range(k):
                d = b * np.float64(top[i, j]) - mx
                small = d < _DLO  # NaN is kept: it must reach the sums, which flag the row
                if small:
                    d = _DLO
                nn = np.floor(d * _DLOG2E + 0.5)
                r = d - nn * _DC1 - nn * _DC2
                rr = r * r
                pp = r * ((_DP0 * rr + _DP1) * rr + _DP2)
                qq = ((_DQ0 * rr + _DQ1) * rr + _DQ2) * rr + _DQ3
                e[j] = 1.0 + 2.0 * (pp / (qq - pp))
                bits[j] = 0 if small else (np.int64(nn) + 1023) << 52
            for j in range(k):
                e[j] *= pw[j]
            s = 0.0
            s1 = 0.0
            s2 = 0.0
            q = 0.0
            for j in range(k):
                x = np.float64(top[i, j])
                ej = e[j]
                s += ej
                s1 += ej * x
                s2 += ej * x * x
                q += ej * ej
            et = np.exp(ft - mx) if ft > -np.inf else 0.0
            if b == 1.0:
                logz = np.float64(exact_logz[i])
            else:
                logz = mx + np.log(s + et)
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
                    probs_out[i, j] = e[j] * scale
