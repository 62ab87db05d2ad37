"""Exact order statistics of float64 values in [0, 2) seen in passes of mergeable counts (bounded memory):
confidences, which rounding can put a hair above 1 before they are clipped.

Equal-mass bin edges (:func:`tokcal.metrics.mass_edges`) are quantiles of every confidence. Here they are
found exactly, without holding the values, by a selection over the values' bit patterns: a float64
``x >= 0`` and its IEEE-754 bits read as an int64 order alike, so every value lies in an integer range
``[L, H)`` of bit patterns, and a *group* is such a range together with the rank of its first value.

* Pass 1 counts the values in ``2^20`` equal-width bins ``floor(x 2^20)`` (bit ranges
  ``[bits(j 2^-20), bits((j + 1) 2^-20))``, the last one holding everything from 1 - 2^-20 up) and
  collects the distinct values with their counts while they are at most :data:`CAP`.
* If the collection held everything, every order statistic is read off it. Otherwise the bin of each
  wanted rank becomes a group; each later pass counts the values of the open groups in ``2^D`` sub-ranges
  of their bit range and again collects their distinct values (at most :data:`CAP` in all; groups whose
  values overflow are dropped from the collection, never from the counts). A group whose values were
  collected, or whose range is one bit pattern (ties: one value, however many tokens), is resolved.

Every pass narrows an unresolved range by ``2^D`` (``D = 16`` for up to 64 groups), so at most
``ceil(62 / D)`` further passes follow pass 1; typically none (``n`` distinct values <= :data:`CAP`)
or one. Memory: ``2^20`` counts, at most ``2^22`` sub-range counts and ``2 CAP`` collected values
(~60 MB), independent of the number of values. Counts and collections are sums and unions, so shards
merge in any order (:meth:`PassCounts.merge`). The quantiles interpolate the order statistics exactly as
``numpy.quantile``'s default ``"linear"`` method does (:func:`linear_quantiles`), so the edges are
bit-for-bit those of the in-memory path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from ..errors import ValidationError

FIRST_BITS = 20  #: pass 1 bins: floor(x * 2^FIRST_BITS)
CAP = 1 << 20  #: distinct values collected per pass, at most
_TWO = int(np.float64(2.0).view(np.int64))  # one past the largest value


def bits_of(values: np.ndarray) -> np.ndarray:
    """int64 bit patterns of float64 values >= 0, ordered as the values (``-0.0`` read as ``0.0``)."""
    x = np.asarray(values, dtype=np.float64) + 0.0
    return x.view(np.int64)


def _value_of(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype=np.int64).view(np.float64)


def _first_edge(j: np.ndarray) -> np.ndarray:
    """Bit pattern of ``j 2^-20`` (j = 2^20: that of 2, so the last bin holds 1 and a hair above)."""
    j = np.asarray(j, dtype=np.int64)
    b = bits_of(j.astype(np.float64) * 2.0 ** -FIRST_BITS)
    return np.where(j >= 1 << FIRST_BITS, _TWO, b)


class PassCounts:
    """The mergeable counts of one pass of :class:`OrderStatistics` (make it with :meth:`OrderStatistics.counter`)."""

    def __init__(self, lo: np.ndarray | None, hi: np.ndarray | None, shift: np.ndarray | None, digits: int) -> None:
        self.lo, self.hi, self.shift, self.digits = lo, hi, shift, digits
        groups = 1 if lo is None else lo.size
        self.hist = np.zeros((1, 1 << FIRST_BITS) if lo is None else (groups, 1 << digits), np.int64)
        self.overflow = np.zeros(groups, bool)
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self._held = 0

    def _group(self, b: np.ndarray) -> np.ndarray:
        if self.lo is None:
            return np.zeros(b.size, np.int64)
        return np.searchsorted(self.lo, b, side="right") - 1

    def update(self, values: np.ndarray) -> PassCounts:
        """Count ``values`` (float64 in [0, 2); NaN is an error)."""
        x = np.asarray(values, dtype=np.float64)
        if not x.size:
            return self
        if np.isnan(x).any() or x.min() < 0.0 or x.max() >= 2.0:
            raise ValidationError("equal-mass edges: a confidence is NaN or outside [0, 2)")
        b = bits_of(x)
        if self.lo is None:
            j = np.minimum((x * float(1 << FIRST_BITS)).astype(np.int64), (1 << FIRST_BITS) - 1)
            self.hist[0] += np.bincount(j, minlength=1 << FIRST_BITS)
            g = np.zeros(b.size, np.int64)
        else:
            g = self._group(b)
            inside = g >= 0
            inside[inside] = b[inside] < self.hi[g[inside]]
            b, g = b[inside], g[inside]
            if not b.size:
                return self
            width = 1 << self.digits
            digit = (b - self.lo[g]) >> self.shift[g]
            self.hist += np.bincount(g * width + digit, minlength=self.hist.size).reshape(self.hist.shape)
        if not self.overflow.all():
            keep = ~self.overflow[g]
            u, cnt = np.unique(b[keep], return_counts=True)
            self._chunks.append((u, cnt.astype(np.int64)))
            self._held += u.size
            if self._held > 2 * CAP:
                self._compact()
        return self

    def merge(self, other: PassCounts) -> PassCounts:
        """Add another shard's counts of the same pass."""
        self.hist += other.hist
        self.overflow |= other.overflow
        self._chunks.extend(other._chunks)
        self._held += other._held
        self._compact()
        return self

    def _compact(self) -> None:
        """One sorted (value, count) list; the groups with the most distinct values dropped beyond :data:`CAP`."""
        if not self._chunks:
            return
        u = np.concatenate([c[0] for c in self._chunks])
        cnt = np.concatenate([c[1] for c in self._chunks])
        g = self._group(u)
        keep = ~self.overflow[g]
        u, cnt, g = u[keep], cnt[keep], g[keep]
        uniq, inv = np.unique(u, return_inverse=True)
        cnt = np.bincount(inv.ravel(), cnt, minlength=uniq.size).astype(np.int64)
        g = self._group(uniq)
        per_group = np.bincount(g, minlength=self.overflow.size)
        if uniq.size > CAP:
            order = np.argsort(-per_group, kind="stable")
            excess = uniq.size - CAP
            drop = order[:int(np.searchsorted(np.cumsum(per_group[order]), excess)) + 1]
            self.overflow[drop] = True
            keep = ~self.overflow[g]
            uniq, cnt = uniq[keep], cnt[keep]
        self._chunks = [(uniq, cnt)]
        self._held = uniq.size

    def collected(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct bit patterns of the groups that did not overflow, with their counts."""
        self._compact()
        if not self._chunks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return self._chunks[0]


class OrderStatistics:
    """Exact ``x_(k)`` (0-based ranks in sorted order) of float64 values in [0, 2), by passes (module docstring).

    Loop: ``while not s.done: c = s.counter(); <c.update(values) for every batch>; s.absorb(c)``. The ranks
    come from ``ranks(n)`` once pass 1 has counted the ``n`` values; :meth:`values` returns the statistics.
    """

    def __init__(self, ranks: Callable[[int], np.ndarray]) -> None:
        self._ranks_of = ranks
        self.n: int | None = None
        self.ranks = np.zeros(0, np.int64)
        self.passes = 0
        self._value: dict[int, int] = {}  # rank -> bit pattern
        # open groups: bit range [lo, hi), rank of the first value, and the ranks they hold
        self._open: list[tuple[int, int, int, list[int]]] = []

    @property
    def done(self) -> bool:
        return self.n is not None and not self._open

    def counter(self) -> PassCounts:
        """Empty counts for the next pass."""
        if self.n is None:
            return PassCounts(None, None, None, 0)
        lo = np.asarray([g[0] for g in self._open], np.int64)
        hi = np.asarray([g[1] for g in self._open], np.int64)
        digits = 16 if lo.size <= 64 else max(8, 22 - math.ceil(math.log2(lo.size)))
        shift = np.asarray([max(0, int(h - lo_ - 1).bit_length() - digits) for lo_, h in zip(lo, hi, strict=True)],
                           np.int64)
        return PassCounts(lo, hi, shift, digits)

    def absorb(self, counts: PassCounts) -> None:
        """Take the merged counts of a pass: resolve what they determine, open narrower groups for the rest."""
        self.passes += 1
        u, cnt = counts.collected()
        cum = np.cumsum(cnt)
        if self.n is None:
            self.n = int(counts.hist.sum())
            if self.n == 0:
                raise ValidationError("equal-mass edges: no values")
            self.ranks = np.unique(np.asarray(self._ranks_of(self.n), np.int64))
            groups = [(0, _TWO, 0, self.ranks.tolist())]
        else:
            groups = self._open
        opened: dict[int, tuple[int, int, int, list[int]]] = {}
        for gi, (lo, hi, first, ranks) in enumerate(groups):
            if not counts.overflow[gi]:
                a, b = np.searchsorted(u, [lo, hi])
                local = cum[a:b] - (cum[a - 1] if a else 0)
                for k in ranks:
                    self._value[k] = int(u[a + np.searchsorted(local, k - first, side="right")])
                continue
            h = counts.hist[gi]
            hcum = np.cumsum(h)
            for k in ranks:
                j = int(np.searchsorted(hcum, k - first, side="right"))
                start = first + (int(hcum[j - 1]) if j else 0)
                if counts.lo is None:
                    sub = (int(_first_edge(j)), int(_first_edge(j + 1)))
                else:
                    s = int(counts.shift[gi])
                    sub = (lo + (j << s), min(hi, lo + ((j + 1) << s)))
                if sub[1] - sub[0] == 1:
                    self._value[k] = sub[0]
                else:
                    opened.setdefault(sub[0], (sub[0], sub[1], start, []))[3].append(k)
        self._open = [opened[k] for k in sorted(opened)]

    def values(self) -> np.ndarray:
        """float64 ``x_(k)`` for :attr:`ranks`, in that order."""
        if not self.done:
            raise RuntimeError("OrderStatistics.values: passes are still needed")
        return _value_of(np.asarray([self._value[int(k)] for k in self.ranks], np.int64))

    def quantiles(self, q: np.ndarray) -> np.ndarray:
        """:func:`linear_quantiles` at ``q`` (its ranks must be among :attr:`ranks`)."""
        lookup = dict(zip(self.ranks.tolist(), self.values().tolist(), strict=True))
        return linear_quantiles(int(self.n), q, lambda r: np.asarray([lookup[int(k)] for k in r], np.float64))

    def run(self, passes: Callable[[], Iterable[np.ndarray]]) -> np.ndarray:
        """All passes locally: ``passes()`` yields the values once per call, in any batches."""
        while not self.done:
            c = self.counter()
            for x in passes():
                c.update(x)
            self.absorb(c)
        return self.values()


def linear_quantiles(n: int, q: np.ndarray, order_stat: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``numpy.quantile(x, q)`` (method ``"linear"``, Hyndman & Fan's 7th) of ``n`` values from their order
    statistics ``order_stat(ranks)``, with numpy's own arithmetic: virtual index ``(n - 1) q``, neighbours
    ``floor`` and ``floor + 1`` (both ``n - 1`` at or beyond the end), and its two-sided lerp."""
    q = np.asarray(q, dtype=np.float64)
    v = (n - 1) * q
    prev = np.floor(v)
    above = v >= n - 1
    lo = np.where(above, n - 1, prev).astype(np.int64)
    hi = np.where(above, n - 1, prev + 1).astype(np.int64)
    gamma = v - np.where(above, -1.0, prev)
    a, b = order_stat(lo), order_stat(hi)
    diff = b - a
    out = a + diff * gamma
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), out)


def quantile_ranks(n: int, q: np.ndarray) -> np.ndarray:
    """The order statistics :func:`linear_quantiles` reads for ``n`` values."""
    v = (n - 1) * np.asarray(q, dtype=np.float64)
    prev = np.floor(v)
    above = v >= n - 1
    return np.unique(np.concatenate([np.where(above, n - 1, prev), np.where(above, n - 1, prev + 1)]).astype(np.int64))


def mass_edges_of(passes: Callable[[], Iterable[np.ndarray]], bins: int) -> tuple[np.ndarray, int]:
    """:func:`tokcal.metrics.mass_edges` of all values that ``passes()`` yields (called once per pass),
    exactly; and the number of passes it took."""
    def count(c: PassCounts) -> PassCounts:
        for x in passes():
            c.update(x)
        return c

    return mass_edges_by(count, bins)


def mass_edges_by(count: Callable[[PassCounts], PassCounts], bins: int) -> tuple[np.ndarray, int]:
    """:func:`mass_edges_of` where ``count(empty counts)`` returns one pass's counts of every value (for
    shards elsewhere: the merge of their :class:`PassCounts`, each started from the empty one's layout)."""
    q = np.linspace(0.0, 1.0, bins + 1)
    stats = OrderStatistics(lambda n: quantile_ranks(n, q))
    while not stats.done:
        stats.absorb(count(stats.counter()))
    edges = stats.quantiles(q)
    edges[0], edges[-1] = 0.0, 1.0
    return edges, stats.passes
