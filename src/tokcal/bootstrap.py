"""Resampling units and the bootstrap of :func:`tokcal.evaluate` (intervals: its module docstring).

**The resampling unit.** Tokens of one text are not independent (a model that is over-confident on a
passage is so for many tokens in a row), so the bootstrap resamples whole *units* of tokens, never
single tokens:

* ``sequence`` -- the unit is one ``sequence_id`` (a cluster bootstrap; Davison & Hinkley 1997, §3.8).
  Used when the table has at least :data:`MIN_SEQUENCES` sequences and none of them holds more than
  :data:`DOMINANT_SHARE` of the tokens.
* ``block`` -- otherwise (one book, a few transcripts, one long code file next to short snippets), the
  unit is a fixed, non-overlapping, contiguous block of ``B`` positions inside a sequence: token i is in
  block ``(sequence_id_i, floor(position_i / B))``, so a block never crosses a sequence boundary and a
  short sequence is one block. This is the non-overlapping block bootstrap of Carlstein (1986); the
  blocks must be long against the range of the serial dependence for the interval to hold (Künsch 1989,
  who also gives the moving-block variant). ``B`` is the collection window of the table's source
  (``source["max_length"]``: tokens of one window share their context), else :data:`DEFAULT_BLOCK_LENGTH`.
  When no sequence spans more than one block, the blocks *are* the sequences and the unit is reported
  as ``sequence``.

The rule looks only at the labelled tokens per sequence (:func:`choose_unit`), so it can be decided from
mergeable counts before streaming; a token's unit depends only on its own ``sequence_id`` and
``position`` (:func:`unit_keys`). Units are numbered densely in order of (sequence id, block index).

**Resamples.** Resample r gives unit u the weight ``w_ru``, the number of times u is drawn when U
units are drawn uniformly with replacement (multinomial counts). The weights depend only on (U, R, seed)
(:func:`replicate_weights`), so two evaluations with the same units and seed -- e.g. a table before and
after a calibrator -- see the same resamples, and their replicate values can be paired. Per-(unit,
slice value, bin) sufficient statistics are computed once and all R resamples are one matrix product
``W [R, U] @ X [U, M]`` (units in chunks) in :class:`UnitStats`. With fewer than 2 units a resample
cannot vary: there is no interval (None), never a zero-width one, and a :class:`ResamplingWarning` says
so; with fewer than :data:`FEW_UNITS` units the intervals are computed, with a warning that they are
rough. Intervals: percentile 95 %, and the basic (reverse-percentile) interval for calibration errors.

References: E. Carlstein (1986), The use of subseries values for estimating the variance of a general
statistic from a stationary sequence, Ann. Statist. 14(3); H. R. Künsch (1989), The jackknife and the
bootstrap for general stationary observations, Ann. Statist. 17(3); A. C. Davison & D. V. Hinkley
(1997), Bootstrap Methods and their Application, §3.8 and §8.2; A. C. Cameron, J. B. Gelbach &
D. L. Miller (2008), Bootstrap-based improvements for inference with clustered errors, Rev. Econ. Stat. 90(3).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import TokcalWarning, ValidationError
from .progress import ProgressCallback, report

_CHUNK_CELLS = 1 << 22  # dense entries of one chunk of the unit statistics
MIN_SEQUENCES = 30  #: fewer sequences than this: blocks
DOMINANT_SHARE = 0.5  #: one sequence holding more than this share of the tokens: blocks
DEFAULT_BLOCK_LENGTH = 256  #: block length when the table's source records no ``max_length``
UNITS = ("auto", "sequence", "block")
FEW_UNITS = 10  #: fewer units than this: the intervals come with a warning (none below 2)


class ResamplingWarning(TokcalWarning):
    """The bootstrap cannot give an interval (fewer than 2 units), or a split fell back to blocks."""


# -- resampling units -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResamplingUnits:
    """The bootstrap's units for a set of tokens.

    ``ids``: int64 [N], the dense unit index (0..n_units-1) of each token, in the order of the tokens
    given; ``sequence_of_unit``: int64 [n_units], the dense sequence index of each unit. ``kind`` is
    ``"sequence"`` or ``"block"``; ``block_length`` is B for blocks, else None; ``reason`` says why.
    """

    ids: np.ndarray
    sequence_of_unit: np.ndarray
    kind: str
    block_length: int | None
    n_sequences: int
    reason: str

    @property
    def n_units(self) -> int:
        return int(self.sequence_of_unit.size)

    def describe(self) -> str:
        """e.g. ``'64 blocks of 256 positions in 1 sequence'`` or ``'80 sequences'``."""
        s = "" if self.n_sequences == 1 else "s"
        if self.kind == "block":
            return (f"{self.n_units} block{'' if self.n_units == 1 else 's'} of {self.block_length} positions "
                    f"in {self.n_sequences} sequence{s}")
        return f"{self.n_sequences} sequence{s}"

    def signature_settings(self) -> dict[str, Any]:
        """What the ``ci`` signature records of the unit: ``unit`` (and ``block_length`` for blocks)."""
        if self.kind == "block":
            return {"unit": "block", "block_length": self.block_length}
        return {"unit": "sequence"}

    def to_dict(self) -> dict[str, Any]:
        """The ``settings["resampling"]`` entry of an evaluation."""
        return {"unit": self.kind, "block_length": self.block_length, "n_units": self.n_units,
                "n_sequences": self.n_sequences, "reason": self.reason}


def block_length_of(source: Mapping[str, Any] | None) -> int:
    """B for a table with this ``source`` metadata: its ``max_length`` (the collection window) if it is a
    positive integer, else :data:`DEFAULT_BLOCK_LENGTH`."""
    value = (source or {}).get("max_length")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1:
        return int(value)
    return DEFAULT_BLOCK_LENGTH


def choose_unit(tokens_per_sequence: Any, unit: str = "auto") -> tuple[str, str]:
    """``(kind, reason)``: ``"sequence"`` or ``"block"`` for sequences with these token counts.

    ``unit="auto"`` applies the rule of the module docstring (blocks with fewer than
    :data:`MIN_SEQUENCES` sequences or when one sequence holds more than :data:`DOMINANT_SHARE` of the
    tokens); ``"sequence"``/``"block"`` force a kind. The counts may be merged from shards first.
    """
    if unit not in UNITS:
        raise ValidationError(f"resampling unit must be one of {UNITS}, got {unit!r}")
    counts = np.asarray(tokens_per_sequence, dtype=np.float64)
    counts = counts[counts > 0]
    total = counts.sum()
    if unit != "auto":
        return unit, f"unit={unit} was asked for"
    if counts.size < MIN_SEQUENCES:
        return "block", f"{counts.size} sequence(s), fewer than {MIN_SEQUENCES}"
    share = counts.max() / total
    if share > DOMINANT_SHARE:
        return "block", f"one sequence holds {share:.0%} of the tokens"
    return "sequence", f"{counts.size} sequences, the largest holds {share:.0%} of the tokens"


def unit_keys(sequence_id: Any, position: Any, kind: str, block_length: int | None) -> np.ndarray:
    """int64 [N, 2] unit key of each token: ``(sequence_id, floor(position / B))`` for blocks,
    ``(sequence_id, 0)`` for sequences. Depends on the token alone, so shards agree on it."""
    seq = np.asarray(sequence_id, dtype=np.int64)
    if kind == "block":
        if block_length is None or block_length < 1:
            raise ValidationError(f"block_length must be a positive integer, got {block_length!r}")
        block = np.floor_divide(np.asarray(position, dtype=np.int64), int(block_length))
    else:
        block = np.zeros_like(seq)
    return np.stack([seq, block], axis=1)


def blocks_or_sequences(reason: str, n_blocks: int, n_sequences: int, unit: str, block_length: int) -> tuple[str, str]:
    """``(kind, reason)`` once blocks were chosen: with ``unit="auto"``, blocks that are the sequences
    (none spans more than one block) are reported as sequences."""
    if n_blocks == n_sequences and unit == "auto":
        return "sequence", f"{reason}; no sequence spans more than one block of {block_length}"
    return "block", reason


def units_from_arrays(sequence_id: Any, position: Any, *, unit: str = "auto",
                      block_length: int = DEFAULT_BLOCK_LENGTH) -> ResamplingUnits:
    """The :class:`ResamplingUnits` of tokens with these sequence ids and positions (module docstring)."""
    if isinstance(block_length, bool) or not isinstance(block_length, (int, np.integer)) or block_length < 1:
        raise ValidationError(f"block_length must be a positive integer, got {block_length!r}")
    seq = np.asarray(sequence_id, dtype=np.int64).ravel()
    pos = np.asarray(position, dtype=np.int64).ravel()
    if seq.shape != pos.shape or seq.size == 0:
        raise ValidationError(f"resampling units: {seq.size} sequence ids for {pos.size} positions (need >= 1)")
    seq_values, seq_idx = np.unique(seq, return_inverse=True)
    seq_idx = seq_idx.ravel()
    kind, reason = choose_unit(np.bincount(seq_idx), unit)
    if kind == "block":
        block = np.floor_divide(pos, int(block_length))
        block = block - block.min()
        key = seq_idx * (int(block.max()) + 1) + block
        keys, ids = np.unique(key, return_inverse=True)
        ids = ids.ravel()
        seq_of_unit = keys // (int(block.max()) + 1)
        kind, reason = blocks_or_sequences(reason, int(keys.size), int(seq_values.size), unit, block_length)
    else:
        ids, seq_of_unit = seq_idx, np.arange(seq_values.size)
    return ResamplingUnits(ids.astype(np.int64), np.asarray(seq_of_unit, dtype=np.int64), kind,
                           int(block_length) if kind == "block" else None, int(seq_values.size), reason)


def resampling_units(table: Any, rows: Any = None, *, unit: str = "auto",
                     block_length: int | None = None) -> ResamplingUnits:
    """The :class:`ResamplingUnits` of ``table``'s tokens (``rows``: a boolean mask or indices, default
    every row; :func:`tokcal.evaluate` passes the labelled rows). ``block_length`` defaults to
    :func:`block_length_of` the table's source."""
    b = block_length_of(table.source) if block_length is None else block_length
    seq, pos = table.sequence_id, table.position
    if rows is not None:
        seq, pos = seq[rows], pos[rows]
    return units_from_arrays(seq, pos, unit=unit, block_length=b)


def few_units_message(units: ResamplingUnits, what: str = "evaluate") -> str | None:
    """The warning when ``units`` are too few for a trustworthy interval, or None (at least
    :data:`FEW_UNITS`). Fewer than 2: no interval at all; 2 to FEW_UNITS - 1: the interval is computed but
    too narrow (a bootstrap over few clusters under-covers; Cameron, Gelbach & Miller 2008). Says how many
    units there are, why, and what to do."""
    if units.n_units >= FEW_UNITS:
        return None
    n = int(units.ids.size)
    shorter = f", or resample shorter blocks (block_length / --block-length below {n})" if n > 1 else ""
    what_now = (f"{units.n_units} resampling unit ({units.describe()}, {n} tokens; {units.reason}); a bootstrap "
                "needs at least 2, so the intervals are undefined (null)" if units.n_units < 2 else
                f"only {units.n_units} resampling units ({units.describe()}, {n} tokens; {units.reason}); the "
                f"95 % intervals from fewer than {FEW_UNITS} units are rough and too narrow")
    return f"{what}: {what_now}. Evaluate more text or give each document its own sequence_id{shorter}"


_DRAWS_PER_CALL = 1 << 20  # unit draws per call of the generator in :func:`replicate_weights`


def replicate_weights(n_units: int, resamples: int, seed: int) -> np.ndarray:
    """float32 [resamples, n_units]: how often resample r draws unit u.

    Each resample draws ``n_units`` units uniformly with replacement (multinomial counts with equal
    probabilities). The draws come from one ``np.random.default_rng(seed)``, ``k = max(1, 2^20 //
    n_units)`` resamples per call ``rng.integers(0, n_units, (k, n_units), dtype=np.int32)``, in order. So the weights
    depend only on (n_units, seed) and the number of resamples, and fewer resamples are a prefix of more:
    the same units and seed give the same resamples.
    """
    rng = np.random.default_rng(seed)
    w = np.empty((resamples, n_units), np.float32)
    k = max(1, _DRAWS_PER_CALL // n_units)
    for r0 in range(0, resamples, k):
        rows = min(k, resamples - r0)
        draws = rng.integers(0, n_units, (k, n_units), dtype=np.int32)[:rows].astype(np.int64)
        draws += (np.arange(rows) * n_units)[:, None]
        w[r0:r0 + rows] = np.bincount(draws.ravel(), minlength=rows * n_units).reshape(rows, n_units)
    return w


# -- sufficient statistics per unit --------------------------------------------------------------


class UnitStats:
    """Per-(unit, cell) sums; cell = (part, value, bin). Part 0 is 'all tokens', part k a slice.

    Columns of a row of X: [count | conf sum | acc sum] over all cells, then NLL sum, Brier sum.
    """

    def __init__(self, units: ResamplingUnits, tok_bin: np.ndarray, bins: int, parts: list[np.ndarray],
                 sizes: list[int], c: np.ndarray, a: np.ndarray, nll: np.ndarray, brier: np.ndarray) -> None:
        self.units = units
        self.bins = bins
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(np.asarray(sizes) * bins)]).astype(np.int64)
        self.n_cells = int(self.offsets[-1])
        self.n_cols = 3 * self.n_cells + 2
        self.n_units = units.n_units
        order = np.argsort(units.ids, kind="stable")
        self.unit = units.ids[order]
        self.cells = [np.where(b[order] >= 0, off + b[order] * bins + tok_bin[order], -1)
                      for b, off in zip(parts, self.offsets[:-1], strict=True)]
        self.cell_matrix = np.stack(self.cells)
        self.c, self.a, self.nll, self.brier = c[order], a[order], nll[order], brier[order]
        self.unit_start = np.searchsorted(self.unit, np.arange(self.n_units + 1))
        total = np.zeros(self.n_cols)
        for cell in self.cells:
            m = cell >= 0
            for j, w in enumerate((None, self.c, self.a)):
                total[j * self.n_cells:(j + 1) * self.n_cells] += np.bincount(
                    cell[m], None if w is None else w[m], minlength=self.n_cells)
        total[-2], total[-1] = self.nll.sum(), self.brier.sum()
        self.total = total
        # per (part, value): how many units / sequences have a token there
        self.value_units = [self._value_count(k, self.unit) for k in range(len(sizes))]
        self.value_seqs = [self._value_count(k, units.sequence_of_unit[self.unit]) for k in range(len(sizes))]
        # units per bin of part 0 (all tokens)
        m0 = self.cells[0] >= 0
        per_bin = np.unique(self.unit[m0] * bins + self.cells[0][m0])
        self.bin_units = np.bincount(per_bin % bins, minlength=bins)

    def _value_count(self, k: int, group: np.ndarray) -> np.ndarray:
        cell = self.cells[k]
        m = cell >= 0
        value = (cell[m] - self.offsets[k]) // self.bins
        pairs = np.unique(group[m] * self.sizes[k] + value)
        return np.bincount(pairs % self.sizes[k], minlength=self.sizes[k])

    def value_sums(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """NLL and Brier sums per value of part k."""
        cell = self.cells[k]
        m = cell >= 0
        value = (cell[m] - self.offsets[k]) // self.bins
        return (np.bincount(value, self.nll[m], minlength=self.sizes[k]),
                np.bincount(value, self.brier[m], minlength=self.sizes[k]))

    def chunk_matrix(self, u0: int, u1: int) -> np.ndarray:
        """Dense X[u0:u1] (units u0..u1-1): one bincount per statistic over all parts."""
        t0, t1 = self.unit_start[u0], self.unit_start[u1]
        local = self.unit[t0:t1] - u0
        nu, nc = u1 - u0, self.n_cells
        cl = self.cell_matrix[:, t0:t1]
        m = cl >= 0
        key = (local * nc)[None, :] + cl
        key = key[m]
        x = np.empty((nu, self.n_cols))
        for j, w in enumerate((None, self.c[t0:t1], self.a[t0:t1])):
            wk = None if w is None else np.broadcast_to(w, cl.shape)[m]
            x[:, j * nc:(j + 1) * nc] = np.bincount(key, wk, minlength=nu * nc).reshape(nu, nc)
        x[:, -2] = np.bincount(local, self.nll[t0:t1], minlength=nu)
        x[:, -1] = np.bincount(local, self.brier[t0:t1], minlength=nu)
        return x

    def bootstrap(self, r: int, seed: int, progress: ProgressCallback | None = None) -> np.ndarray | None:
        """[R, n_cols] resampled sums (:func:`replicate_weights` times the unit statistics), or None when
        r == 0 or there are fewer than 2 units (the caller warns: :func:`few_units_message`).
        ``progress``: called as ``("bootstrap", units done, units)`` after each chunk of units."""
        if r == 0 or self.n_units < 2:
            return None
        w = replicate_weights(self.n_units, r, seed)
        out = np.zeros((r, self.n_cols))
        step = max(1, _CHUNK_CELLS // self.n_cols)
        for u0 in range(0, self.n_units, step):
            u1 = min(self.n_units, u0 + step)
            # float32 product per chunk (resample counts are small integers; per-unit sums need no
            # more than 1e-7 relative precision for a percentile), accumulated across chunks in float64
            out += w[:, u0:u1] @ self.chunk_matrix(u0, u1).astype(np.float32)
            report(progress, "bootstrap", u1, self.n_units)
        return out

    def part(self, sums: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """count, conf_sum, acc_sum of part k as [..., n_values, bins]."""
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
