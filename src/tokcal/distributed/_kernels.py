"""Numba kernel of :meth:`tokcal.distributed.stats.EvaluationSums.update`: one pass over a batch's tokens
for the per-cell sums, the per-unit bootstrap rows and the (unit, value) and (unit, bin) marks. Each cell's
sums add its tokens in token order, as ``numpy.bincount`` does, so the sums are those of the bincounts.

Kept in its own module, imported on first use, so ``import tokcal`` does not load numba.
"""

import numba

from ..metrics._compiled import edge_bin, width_bin


@numba.njit(cache=True, nogil=True)
def cell_sums(codes, offsets, value_offsets, bins, edges, uniform, c, a, nll, brier, local, nc, n_values,
              total, cell_nll, cell_brier, x, pair_seen, bin_seen):
    """``codes`` [P, n] (< 0: not in that part), cell = offsets[p] + code * bins + bin(c), the bin of
    ``edges`` (``uniform``: equal widths, :func:`tokcal.metrics._compiled.width_bin`; else
    :func:`~tokcal.metrics._compiled.edge_bin`). Adds count, confidence and correctness sums to
    ``total[:3 nc]`` and ``x[local]`` (when ``x`` has rows; its last two columns get NLL and Brier),
    NLL/Brier to ``cell_nll``/``cell_brier``, and sets ``pair_seen[local * n_values + value]`` and
    ``bin_seen[local * bins + bin]``."""
    n_parts, n = codes.shape
    has_x = x.shape[0] > 0
    last = x.shape[1] - 1
    for i in range(n):
        u = local[i]
        ci, ai = c[i], a[i]
        b = width_bin(ci, bins) if uniform else edge_bin(ci, bins, edges)
        bin_seen[u * bins + b] = 1
        for p in range(n_parts):
            k = codes[p, i]
            if k < 0:
                continue
            cell = offsets[p] + k * bins + b
            total[cell] += 1.0
            total[nc + cell] += ci
            total[2 * nc + cell] += ai
            cell_nll[cell] += nll[i]
            cell_brier[cell] += brier[i]
            pair_seen[u * n_values + value_offsets[p] + k] = 1
            if has_x:
                x[u, cell] += 1.0
                x[u, nc + cell] += ci
                x[u, 2 * nc + cell] += ai
        if has_x:
            x[u, last - 1] += nll[i]
            x[u, last] += brier[i]


@numba.njit(cache=True, nogil=True)
def confidence_hists(c, a, aurc, hist):
    """In place: ``aurc[0, min(floor(c n), n - 1)] += 1`` and ``aurc[1, ...] += 1 - a`` (n = aurc's width),
    and ``hist`` counts ``c`` in equal-width bins as ``numpy.histogram(c, len(hist), (0, 1))``."""
    n_aurc = aurc.shape[1]
    nb = hist.shape[0]
    for i in range(c.shape[0]):
        ci = c[i]
        j = int(ci * n_aurc)
        if j > n_aurc - 1:
            j = n_aurc - 1
        aurc[0, j] += 1.0
        aurc[1, j] += 1.0 - a[i]
        hist[width_bin(ci, nb)] += 1.0


@numba.njit(cache=True, nogil=True)
def smooth_grids(c, a, sizes, starts, out):
    """:func:`tokcal.metrics._compiled.grid_hist` (unweighted) for every grid size ``sizes[q]`` in one
    pass: grid q's [3, g] sums at ``out[starts[q]:starts[q] + 3 g]``, each added in token order with the
    same products, so each grid equals its own ``grid_hist``. ``c`` in [0, 1], ``a`` 0/1 (the caller's)."""
    n_grids = sizes.shape[0]
    for i in range(c.shape[0]):
        f = c[i]
        ai = a[i]
        r = f - ai
        for q in range(n_grids):
            g = sizes[q]
            o = starts[q]
            x = f * (g - 1)
            b = int(x)
            if b > g - 2:
                b = g - 2
            frac = x - b
            lo = 1.0 - frac
            out[o + b] += lo
            out[o + b + 1] += frac
            out[o + g + b] += lo * r
            out[o + g + b + 1] += frac * r
            out[o + 2 * g + b] += lo * ai
            out[o + 2 * g + b + 1] += frac * ai
