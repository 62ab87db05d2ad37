"""Cluster bootstrap over sequences for :func:`tokcal.evaluate` (see its module docstring).

Per-(sequence, slice value, bin) sufficient statistics are computed once; every resample is a
multinomial reweighting of the sequences, so all R resamples are one matrix product
``W [R, S] @ X [S, M]`` (sequences in chunks). Intervals: percentile 95 %, and the basic
(reverse-percentile) interval for calibration errors.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

_CHUNK_CELLS = 1 << 22  # dense entries of one chunk of the sequence statistics


class SequenceStats:
    """Per-(sequence, cell) sums; cell = (block, value, bin). Block 0 is 'all tokens'.

    Columns of a row of X: [count | conf sum | acc sum] over all cells, then NLL sum, Brier sum.
    """

    def __init__(self, seq_idx: np.ndarray, tok_bin: np.ndarray, bins: int, blocks: list[np.ndarray],
                 sizes: list[int], c: np.ndarray, a: np.ndarray, nll: np.ndarray, brier: np.ndarray) -> None:
        self.bins = bins
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(np.asarray(sizes) * bins)]).astype(np.int64)
        self.n_cells = int(self.offsets[-1])
        self.n_cols = 3 * self.n_cells + 2
        self.n_seq = int(seq_idx.max()) + 1
        order = np.argsort(seq_idx, kind="stable")
        self.seq = seq_idx[order]
        self.cells = [np.where(b[order] >= 0, off + b[order] * bins + tok_bin[order], -1)
                      for b, off in zip(blocks, self.offsets[:-1], strict=True)]
        self.cell_matrix = np.stack(self.cells)
        self.c, self.a, self.nll, self.brier = c[order], a[order], nll[order], brier[order]
        self.seq_start = np.searchsorted(self.seq, np.arange(self.n_seq + 1))
        total = np.zeros(self.n_cols)
        for cell in self.cells:
            m = cell >= 0
            for j, w in enumerate((None, self.c, self.a)):
                total[j * self.n_cells:(j + 1) * self.n_cells] += np.bincount(
                    cell[m], None if w is None else w[m], minlength=self.n_cells)
        total[-2], total[-1] = self.nll.sum(), self.brier.sum()
        self.total = total
        # sequences per (block, value): does the sequence have a token there
        self.value_seqs = [self._value_sequences(k) for k in range(len(sizes))]

    def _value_sequences(self, k: int) -> np.ndarray:
        cell = self.cells[k]
        m = cell >= 0
        value = (cell[m] - self.offsets[k]) // self.bins
        pairs = np.unique(self.seq[m] * self.sizes[k] + value)
        return np.bincount(pairs % self.sizes[k], minlength=self.sizes[k])

    def chunk_matrix(self, s0: int, s1: int) -> np.ndarray:
        """Dense X[s0:s1] (sequences s0..s1-1): one bincount per statistic over all blocks."""
        t0, t1 = self.seq_start[s0], self.seq_start[s1]
        local = self.seq[t0:t1] - s0
        ns, nc = s1 - s0, self.n_cells
        cl = self.cell_matrix[:, t0:t1]
        m = cl >= 0
        key = (local * nc)[None, :] + cl
        key = key[m]
        x = np.empty((ns, self.n_cols))
        for j, w in enumerate((None, self.c[t0:t1], self.a[t0:t1])):
            wk = None if w is None else np.broadcast_to(w, cl.shape)[m]
            x[:, j * nc:(j + 1) * nc] = np.bincount(key, wk, minlength=ns * nc).reshape(ns, nc)
        x[:, -2] = np.bincount(local, self.nll[t0:t1], minlength=ns)
        x[:, -1] = np.bincount(local, self.brier[t0:t1], minlength=ns)
        return x

    def bootstrap(self, r: int, seed: int) -> np.ndarray | None:
        """[R, n_cols] resampled sums, or None when r == 0."""
        if r == 0:
            return None
        rng = np.random.default_rng(seed)
        w = rng.multinomial(self.n_seq, np.full(self.n_seq, 1.0 / self.n_seq), size=r).astype(np.float32)
        out = np.zeros((r, self.n_cols))
        step = max(1, _CHUNK_CELLS // self.n_cols)
        for s0 in range(0, self.n_seq, step):
            s1 = min(self.n_seq, s0 + step)
            # float32 product per chunk (resample counts are small integers; per-sequence sums need no
            # more than 1e-7 relative precision for a percentile), accumulated across chunks in float64
            out += w[:, s0:s1] @ self.chunk_matrix(s0, s1).astype(np.float32)
        return out

    def block(self, sums: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """count, conf_sum, acc_sum of block k as [..., n_values, bins]."""
        lo, hi = self.offsets[k], self.offsets[k + 1]
        shape = (*sums.shape[:-1], self.sizes[k], self.bins)
        return tuple(sums[..., j * self.n_cells + lo:j * self.n_cells + hi].reshape(shape) for j in range(3))


def gap_acc(count: np.ndarray, conf: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, ...]:
    n = count.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return n, conf.sum(-1) / n, acc.sum(-1) / n


def interval(x: np.ndarray | None) -> list[float | None] | np.ndarray:
    """Percentile 95 % interval over axis 0 (NaN resamples ignored); [None, None] when undefined."""
    if x is None:
        return [None, None]
    ok = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        xs = np.where(ok, x, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            q = np.nanpercentile(xs, [2.5, 97.5], axis=0)
    return q


def ci_pair(q: Any, *idx: int) -> list[float | None]:
    if isinstance(q, list):
        return q
    lo, hi = q[(0, *idx)], q[(1, *idx)]
    return [None if not np.isfinite(lo) else float(lo), None if not np.isfinite(hi) else float(hi)]


def basic_interval(ci: list[float | None], theta: float) -> list[float | None]:
    """Basic (reverse-percentile) interval [2 t - q_hi, 2 t - q_lo], clipped at 0 (module docstring)."""
    if ci[0] is None or ci[1] is None:
        return ci
    lo, hi = max(0.0, 2.0 * float(theta) - ci[1]), max(0.0, 2.0 * float(theta) - ci[0])
    return [min(lo, float(theta)), max(hi, float(theta))]  # always holds the point estimate
