"""Pass 1 of the streamed and distributed passes (:mod:`tokcal.distributed.stats`): what is known before
the metrics. :class:`DatasetSummary` reads only ``sequence_id``, ``position``, ``label`` and the group
columns -- labelled tokens per sequence (to choose the resampling unit, :func:`tokcal.bootstrap.choose_unit`),
the units themselves (:class:`StreamUnits`), gold-label counts (frequency slices, the classwise classes),
group categories and every sequence id (splits) -- and the parts' summaries merge in storage order
(:class:`OrderedMerge`). :func:`summarize` is the pass over a file or dataset directory; it also hashes
the table fingerprint (:func:`fingerprint` alone is that hash).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bootstrap import ResamplingUnits, block_length_of, blocks_or_sequences, choose_unit
from ..errors import ValidationError
from ..table import TokenTable, parquet_files

# -- pass 1: what is known before the metrics --------------------------------------------------------


@dataclass
class DatasetSummary:
    """Mergeable facts of a dataset read from its cheap columns (module docstring, pass 1)."""

    vocab_size: int
    block_length: int
    n_rows: int = 0
    label_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seq_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # every sequence (sorted)
    seq_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # its rows (labelled or not)
    labelled_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted, with counts
    labelled_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    block_keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # (seq, block), sorted
    groups: dict[str, set[str]] = field(default_factory=dict)
    first_labelled_seq: int | None = None

    def __post_init__(self) -> None:
        if self.label_counts.size == 0:
            self.label_counts = np.zeros(self.vocab_size)

    @classmethod
    def of_arrays(cls, vocab_size: int, block_length: int, sequence_id: np.ndarray, position: np.ndarray,
                  label: np.ndarray, groups: dict[str, Iterable[str]]) -> DatasetSummary:
        seq = np.asarray(sequence_id, np.int64)
        lab = np.asarray(label, np.int64)
        keep = lab >= 0
        s_lab = seq[keep]
        useq, cnt = _unique(s_lab, counts=True)
        blk = np.floor_divide(np.asarray(position, np.int64)[keep], block_length)
        all_seq, all_cnt = _unique(seq, counts=True)
        return cls(vocab_size, block_length, int(seq.size),
                   np.bincount(lab[keep], minlength=vocab_size).astype(np.float64), all_seq,
                   all_cnt.astype(np.int64), useq, cnt.astype(np.int64), _unique_pairs(s_lab, blk),
                   {k: set(v) for k, v in groups.items()}, int(s_lab[0]) if s_lab.size else None)

    @classmethod
    def of_table(cls, t: TokenTable, block_length: int) -> DatasetSummary:
        return cls.of_arrays(t.vocab_size, block_length, t.sequence_id, t.position, t.label,
                             {k: g.categories for k, g in t.groups.items()})

    def merge(self, other: DatasetSummary) -> DatasetSummary:
        """Add ``other`` (a later shard: its first labelled sequence counts only if this one has none)."""
        if (other.vocab_size, other.block_length) != (self.vocab_size, self.block_length):
            raise ValidationError(f"merge: summaries of vocab_size/block_length {other.vocab_size}/"
                                  f"{other.block_length} and {self.vocab_size}/{self.block_length}")
        if set(other.groups) != set(self.groups) and self.n_rows and other.n_rows:
            raise ValidationError(f"merge: shards have groups {sorted(self.groups)} and {sorted(other.groups)}")
        useq, lcnt = _add_counts(self.labelled_seq, self.labelled_count, other.labelled_seq, other.labelled_count)
        aseq, acnt = _add_counts(self.seq_ids, self.seq_counts, other.seq_ids, other.seq_counts)
        groups = {k: self.groups.get(k, set()) | other.groups.get(k, set()) for k in {*self.groups, *other.groups}}
        return DatasetSummary(
            self.vocab_size, self.block_length, self.n_rows + other.n_rows, self.label_counts + other.label_counts,
            aseq, acnt, useq, lcnt,
            _unique_pairs(*np.concatenate([self.block_keys, other.block_keys]).T), groups,
            self.first_labelled_seq if self.first_labelled_seq is not None else other.first_labelled_seq)

    def units(self, unit: str = "auto") -> StreamUnits:
        """The resampling units (same kind, numbering and reason as :func:`tokcal.bootstrap.resampling_units`)."""
        if not self.labelled_seq.size:
            raise ValidationError("evaluate: no token has a known label (all labels are -1)")
        kind, reason = choose_unit(self.labelled_count, unit)
        n_seq = int(self.labelled_seq.size)
        if kind == "block":
            keys = self.block_keys
            kind, reason = blocks_or_sequences(reason, int(keys.shape[0]), n_seq, unit, self.block_length)
        if kind == "sequence":
            keys = np.stack([self.labelled_seq, np.zeros(n_seq, np.int64)], axis=1)
        seq_of_unit = np.searchsorted(self.labelled_seq, keys[:, 0])
        info = ResamplingUnits(np.zeros(0, np.int64), seq_of_unit.astype(np.int64), kind,
                               self.block_length if kind == "block" else None, n_seq, reason)
        return StreamUnits(info, keys, self.block_length if kind == "block" else None)


class OrderedMerge:
    """Merges a stream of mergeable parts (:meth:`DatasetSummary.merge`, ...) in their order, pairing parts of
    equal size first, like a binary counter: n parts cost O(n log n) in all. Merging each part into one
    running total cost O(total) per part, which made a dataset of 2,000 parts take 8 s and one of a
    billion tokens hours. :meth:`result` merges what is left, earlier parts on the left."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, Any]] = []  # (parts merged in it, the merge), oldest at the bottom

    def add(self, part: Any) -> None:
        size = 1
        while self._stack and self._stack[-1][0] == size:
            n, left = self._stack.pop()
            part, size = left.merge(part), n + size
        self._stack.append((size, part))

    def result(self, empty: Any) -> Any:
        """The merge of every part added (``empty`` when none was)."""
        out = None
        for _, part in self._stack:
            out = part if out is None else out.merge(part)
        return empty if out is None else out


def _unique(x: np.ndarray, *, counts: bool = False, inverse: bool = False) -> Any:
    """``numpy.unique(x)`` (with ``return_counts`` or ``return_inverse``), in one linear pass when ``x`` is
    already sorted -- the usual case here: rows are stored in sequence order, and keys built from them
    (units, (unit, value) pairs, chunks added in storage order) come sorted."""
    x = np.asarray(x)
    if x.size and not (x[1:] >= x[:-1]).all():
        out = np.unique(x, return_counts=counts, return_inverse=inverse)
        return (out[0], out[1].ravel()) if inverse else out
    first = np.ones(x.size, bool)
    np.not_equal(x[1:], x[:-1], out=first[1:])
    keys = x[first]
    if counts:
        return keys, np.diff(np.append(np.flatnonzero(first), x.size))
    if inverse:
        return keys, np.cumsum(first) - 1
    return keys


def _add_counts(k1: np.ndarray, c1: np.ndarray, k2: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys, inv = np.unique(np.concatenate([k1, k2]), return_inverse=True)
    return keys, np.bincount(inv.ravel(), np.concatenate([c1, c2]), minlength=keys.size).astype(np.int64)


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted unique rows of ``[a, b]`` (int64 [M, 2]); one 1-D unique when both fit in one int64."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if not a.size:
        return np.zeros((0, 2), np.int64)
    a0, b0 = int(a.min()), int(b.min())
    span = int(b.max()) - b0 + 1
    if a0 >= 0 and b0 >= 0 and int(a.max()) < (1 << 62) // span:
        key = _unique(a * span + (b - b0))
        out = np.empty((key.size, 2), np.int64)
        out[:, 0], out[:, 1] = key // span, key % span + b0  # as np.stack(axis=1), faster
        return out
    return np.unique(np.stack([a, b], axis=1), axis=0)


@dataclass(frozen=True)
class StreamUnits:
    """Resampling units known from a summary; :meth:`ids` numbers the units of any batch of tokens."""

    info: ResamplingUnits
    keys: np.ndarray  # [U, 2] (sequence_id, block), sorted
    block_length: int | None

    @functools.cached_property
    def _combined(self) -> tuple[np.ndarray, int] | None:
        """The keys as one sorted int64 each, ``sequence_id * span + block`` (None when that could overflow
        or a key is negative: :meth:`ids` then searches the pairs)."""
        k = self.keys
        if not k.size or int(k.min()) < 0:
            return None
        span = int(k[:, 1].max()) + 1
        if int(k[:, 0].max()) >= (1 << 62) // span:
            return None
        return k[:, 0] * span + k[:, 1], span

    def ids(self, sequence_id: np.ndarray, position: np.ndarray) -> np.ndarray:
        seq = np.asarray(sequence_id, np.int64)
        blk = (np.floor_divide(np.asarray(position, np.int64), self.block_length) if self.block_length
               else np.zeros_like(seq))
        comb = self._combined
        if comb is not None and seq.size and int(seq.min()) >= 0 and int(blk.min()) >= 0 and \
                int(blk.max()) < comb[1] and int(seq.max()) < (1 << 62) // comb[1]:
            out = np.searchsorted(comb[0], seq * comb[1] + blk)  # one search (checked below, as the pairs)
        else:  # lexicographic search of (seq, blk) in the sorted keys
            lo = np.searchsorted(self.keys[:, 0], seq, side="left")
            hi = np.searchsorted(self.keys[:, 0], seq, side="right")
            out = lo.copy()
            for i in np.flatnonzero(hi - lo > 1):
                out[i] = lo[i] + np.searchsorted(self.keys[lo[i]:hi[i], 1], blk[i])
        ok = (out < len(self.keys)) & (self.keys[np.minimum(out, len(self.keys) - 1), 0] == seq) & \
             (self.keys[np.minimum(out, len(self.keys) - 1), 1] == blk)
        if not ok.all():
            raise ValidationError("evaluate: a token's resampling unit was not in the dataset summary "
                                  "(the data changed between the passes?)")
        return out


def _arrow_summary(path: Path) -> Iterator[tuple[Any, ...]]:
    import pyarrow.parquet as pq

    for file in parquet_files(path):
        pf = pq.ParquetFile(file)
        names = pf.schema_arrow.names
        cols = ["sequence_id", "position", "label", *(n for n in names if n.startswith("group:"))]
        for batch in pf.iter_batches(batch_size=1 << 20, columns=cols):
            groups = {}
            for n in cols[3:]:
                col = batch.column(n)
                groups[n[6:]] = [str(x) for x in (col.dictionary if hasattr(col, "dictionary")
                                                  else col.unique()).to_pylist()]
            yield (batch.column("sequence_id").to_numpy(), batch.column("position").to_numpy(),
                   batch.column("label").to_numpy(), groups)


def summarize(path: str | Path, *, block_length: int | None = None,
              hasher: Any = None) -> tuple[DatasetSummary, TokenTable]:
    """Pass 1 over a Parquet file or dataset directory; also returns its first rows (metadata carrier).
    ``hasher`` (a :mod:`hashlib` object): updated with :func:`tokcal.evaluation.fingerprint_rows` of
    every batch, in storage order (the table fingerprint, in the same pass)."""
    from ..evaluation import fingerprint_rows

    first = next(TokenTable.iter_parquet(path, batch_rows=1))
    b = block_length_of(first.source) if block_length is None else int(block_length)
    total = OrderedMerge()
    for seq, pos, lab, groups in _arrow_summary(Path(path)):
        total.add(DatasetSummary.of_arrays(first.vocab_size, b, seq, pos, lab, groups))
        if hasher is not None:
            hasher.update(fingerprint_rows(seq, pos, lab))
    return total.result(DatasetSummary(first.vocab_size, b)), first


def fingerprint(source: str | Path) -> str:
    """:func:`tokcal.evaluation.table_fingerprint` of every labelled token of a Parquet file or dataset
    directory, from one scan of its sequence_id, position and label columns."""
    import pyarrow.parquet as pq

    from ..evaluation import FINGERPRINT_PREFIX, fingerprint_rows

    h = hashlib.sha256()
    for f in parquet_files(source):
        for b in pq.ParquetFile(f).iter_batches(batch_size=1 << 20, columns=["sequence_id", "position", "label"]):
            h.update(fingerprint_rows(*(b.column(c).to_numpy() for c in ("sequence_id", "position", "label"))))
    return FINGERPRINT_PREFIX + h.hexdigest()


def _summarize_rows(source: str | Path, pick: Callable[[TokenTable], TokenTable | None],
                    block_length: int | None) -> tuple[DatasetSummary, TokenTable]:
    first = next(TokenTable.iter_parquet(source, batch_rows=1))
    b = block_length_of(first.source) if block_length is None else int(block_length)
    total = OrderedMerge()
    for batch in TokenTable.iter_parquet(source, batch_rows=1 << 20):
        part = pick(batch)
        if part is not None:
            total.add(DatasetSummary.of_table(part, b))
    return total.result(DatasetSummary(first.vocab_size, b)), first
