"""TokenTable: one row per predicted token, validated, sliceable, stored as Parquet."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._io import atomic_write, parse_json
from ._version import __version__
from .errors import SchemaError, TokcalError, ValidationError, first_bad_row
from .sketch import DEFAULT_TOP_K, MAX_VOCAB_SIZE, LogitSketch, TailLayout, sketch_logits, sketch_logprobs
from .validation import Params, PositiveInt, check_params
from .vocab import Vocabulary

#: 3: Parquet files store the vector columns packed (:data:`PACKED`); 2: the metadata holds the vocabulary's
#: raw pieces and convention (``"vocabulary"``, see :mod:`tokcal.vocab`); version 1 files (decoded strings
#: under ``"vocab"``) are still read, and every version's vector columns may be lists or packed.
SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
_META_KEY = b"tokcal"
#: sha256 (hex) of the bytes stored under ``_META_KEY``: the footer metadata has no Parquet checksum
_DIGEST_KEY = b"tokcal.sha256"
#: every TokenTable file is written with these: LZ4 pages, each with its CRC32 (verified on read), and
#: dictionary encoding only for the flat integer and category columns (:func:`dictionary_columns`; logits
#: rarely repeat, so a float column's dictionary page fills up, falls back to plain and only costs bytes
#: and decode time). Files written with any other codec or encoding are read alike.
PARQUET_WRITE_OPTIONS: dict[str, Any] = {"compression": "lz4", "write_page_checksum": True}
#: Parquet files store each row's vector (top_ids, top_logits, the tail's two halves, features) packed in
#: one ``fixed_size_binary`` value: little-endian int32 / float32, in order. A Parquet list column stores a
#: repetition level per element, and decoding those levels was two thirds of a table's read time; a
#: packed vector is one fixed-width value, read into a numpy view without a copy. With the two options
#: above, against zstd level 1 lists with dictionaries everywhere (benchmarks/README.md, "stream"): reading
#: a table ~3x less CPU, for about as many bytes. :meth:`TokenTable.to_arrow` keeps lists (Arrow's own,
#: self-describing form; what Ray Data passes around); a packed value decodes as
#: ``np.frombuffer(value, "<f4")``.
PACKED = True
_PLAIN = {"sequence_id": pa.int64(), "position": pa.int32(), "label": pa.int32(), "label_logit": pa.float32(),
          "log_normalizer": pa.float32()}
_LISTS = {"top_ids": pa.int32(), "top_logits": pa.float32(), "tail_logz": pa.float32(), "tail_mean": pa.float32(),
          "features": pa.float32()}
_REQUIRED = (*_PLAIN, "top_ids", "top_logits", "tail_logz", "tail_mean")


@dataclass(frozen=True)
class GroupColumn:
    """A dictionary-encoded categorical column: ``categories[codes[i]]`` is row i's value."""

    codes: np.ndarray  # int32 [N]
    categories: tuple[str, ...]

    @classmethod
    def from_values(cls, name: str, values: Any, n: int) -> GroupColumn:
        if isinstance(values, GroupColumn):
            col = values
        elif isinstance(values, str):
            col = cls(np.zeros(n, np.int32), (values,))
        else:
            arr = np.asarray(values).astype(str)
            if arr.shape != (n,):
                raise ValidationError(f"group '{name}': expected {n} values, got shape {arr.shape}")
            cats, codes = np.unique(arr, return_inverse=True)
            col = cls(codes.astype(np.int32), tuple(str(c) for c in cats))
        if col.codes.shape != (n,):
            raise ValidationError(f"group '{name}': expected {n} codes, got shape {col.codes.shape}")
        if col.codes.size and (col.codes.min() < 0 or col.codes.max() >= len(col.categories)):
            i = first_bad_row((col.codes < 0) | (col.codes >= len(col.categories)))
            raise ValidationError(f"group '{name}': row {i} has code {col.codes[i]} without a category")
        return col

    def values(self) -> np.ndarray:
        return np.asarray(self.categories, dtype=object)[self.codes]

    def take(self, idx: np.ndarray) -> GroupColumn:
        return GroupColumn(self.codes[idx], self.categories)



class _BatchParams(Params):
    batch_rows: PositiveInt

class TokenTable:
    """Per-token predictions: the logit sketch of each token plus ids, groups and features.

    Build one with :meth:`from_logits` (full logits), :meth:`from_logprobs` (API top-k
    log-probs) or :meth:`read_parquet`. Columns are numpy arrays; rows with ``label == -1`` are
    kept (for annotation) but excluded from every metric. ``vocabulary`` (:class:`tokcal.vocab.Vocabulary`)
    holds the raw pieces and their convention; ``vocab`` is its display strings.
    """

    vocabulary: Vocabulary | None

    def __init__(
        self,
        *,
        sequence_id: Any,
        position: Any,
        label: Any,
        top_ids: Any,
        top_logits: Any,
        label_logit: Any,
        log_normalizer: Any,
        tail: Any,
        layout: TailLayout,
        vocab_size: int,
        groups: Mapping[str, Any] | None = None,
        features: Any = None,
        vocab: Sequence[str] | Vocabulary | None = None,
        source: Mapping[str, Any] | None = None,
        validate: bool = True,
    ) -> None:
        self.sequence_id = np.asarray(sequence_id, dtype=np.int64)
        self.position = np.asarray(position, dtype=np.int32)
        self.label = np.asarray(label, dtype=np.int32)
        self.top_ids = np.asarray(top_ids, dtype=np.int32)
        self.top_logits = np.asarray(top_logits, dtype=np.float32)
        self.label_logit = np.asarray(label_logit, dtype=np.float32)
        self.log_normalizer = np.asarray(log_normalizer, dtype=np.float32)
        self.tail = np.asarray(tail, dtype=np.float32)
        self.layout = layout
        self.vocab_size = int(vocab_size)
        n = len(self.label)
        self.groups: dict[str, GroupColumn] = {
            str(k): GroupColumn.from_values(str(k), v, n) for k, v in (groups or {}).items()
        }
        self.features = None if features is None else np.asarray(features, dtype=np.float32)
        self.vocab = vocab
        self.source = dict(source or {})
        if validate:
            self.validate()

    @property
    def vocab(self) -> list[str] | None:
        """Display string of every id (:meth:`tokcal.vocab.Vocabulary.display`), or None."""
        return None if self.vocabulary is None else self.vocabulary.display_strings()

    @vocab.setter
    def vocab(self, value: Sequence[str] | Vocabulary | None) -> None:
        """A :class:`~tokcal.vocab.Vocabulary`, or id -> string (its convention detected from the strings)."""
        if value is None or isinstance(value, Vocabulary):
            self.vocabulary = value
        else:
            self.vocabulary = Vocabulary.from_pieces(list(value))

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_sketch(
        cls,
        sk: LogitSketch,
        labels: Any = None,
        *,
        sequence_ids: Any = None,
        positions: Any = None,
        groups: Mapping[str, Any] | None = None,
        features: Any = None,
        vocab: Sequence[str] | Vocabulary | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> TokenTable:
        n = len(sk)
        labels = np.full(n, -1, np.int32) if labels is None else np.asarray(labels)
        seq = np.zeros(n, np.int64) if sequence_ids is None else np.asarray(sequence_ids)
        pos = np.arange(n, dtype=np.int32) if positions is None else np.asarray(positions)
        return cls(
            sequence_id=seq, position=pos, label=labels, top_ids=sk.top_ids, top_logits=sk.top_logits,
            label_logit=sk.label_logit, log_normalizer=sk.log_normalizer, tail=sk.tail,
            layout=sk.layout, vocab_size=sk.vocab_size, groups=groups, features=features,
            vocab=vocab, source=source,
        )

    @classmethod
    def from_logits(
        cls,
        logits: Any,
        labels: Any = None,
        *,
        sequence_ids: Any = None,
        positions: Any = None,
        top_k: int = DEFAULT_TOP_K,
        groups: Mapping[str, Any] | None = None,
        features: Any = None,
        vocab: Sequence[str] | Vocabulary | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> TokenTable:
        """Sketch full ``logits`` [N, V] (numpy or torch) with gold ``labels`` [N] (-1 = unknown).

        ``sequence_ids`` default to one sequence; ``positions`` to 0..N-1.
        """
        sk = sketch_logits(logits, labels, top_k=top_k)
        return cls.from_sketch(
            sk, labels, sequence_ids=sequence_ids, positions=positions, groups=groups,
            features=features, vocab=vocab, source=source,
        )

    @classmethod
    def from_logprobs(
        cls,
        top_ids: Any,
        top_logprobs: Any,
        labels: Any,
        label_logprob: Any,
        *,
        vocab_size: int,
        sequence_ids: Any = None,
        positions: Any = None,
        groups: Mapping[str, Any] | None = None,
        vocab: Sequence[str] | Vocabulary | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> TokenTable:
        """Build from top-k ``logprobs`` only (API outputs); the tail is unknown."""
        sk = sketch_logprobs(top_ids, top_logprobs, label_logprob, vocab_size=vocab_size)
        return cls.from_sketch(
            sk, labels, sequence_ids=sequence_ids, positions=positions, groups=groups,
            vocab=vocab, source=source,
        )

    # -- validation ----------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`ValidationError` naming the column and first bad row of any violation."""
        n = len(self.label)
        if n == 0:
            raise ValidationError("empty TokenTable: 0 tokens")
        if self.top_ids.ndim != 2 or self.top_ids.shape[0] != n:
            raise ValidationError(f"top_ids: expected shape ({n}, k), got {self.top_ids.shape}")
        k = self.top_ids.shape[1]
        for name, arr, shape in (
            ("sequence_id", self.sequence_id, (n,)),
            ("position", self.position, (n,)),
            ("label_logit", self.label_logit, (n,)),
            ("log_normalizer", self.log_normalizer, (n,)),
            ("top_logits", self.top_logits, (n, k)),
            ("tail", self.tail, (n, self.layout.n_nodes, 2)),
        ):
            if arr.shape != shape:
                raise ValidationError(f"{name}: expected shape {shape}, got {arr.shape}")
        if not 1 <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise ValidationError(f"vocab_size={self.vocab_size} outside [1, {MAX_VOCAB_SIZE:,}] (2^23 - 1, the most "
                                  "ids a TokenTable holds)")
        if not 1 <= k <= self.vocab_size:
            raise ValidationError(f"top_ids: k={k} must be in [1, vocab_size={self.vocab_size}]")
        if self.layout.kind == "empty" and k != self.vocab_size:
            raise ValidationError(f"tail layout 'empty' needs k == vocab_size, got k={k}")
        if self.features is not None and (self.features.ndim != 2 or self.features.shape[0] != n):
            raise ValidationError(f"features: expected shape ({n}, F), got {self.features.shape}")
        if not self._surely_valid():
            self._check_values()
        if self.vocabulary is not None and self.vocabulary.size != self.vocab_size:
            raise ValidationError(f"vocab: {self.vocabulary.size} strings for vocab_size={self.vocab_size}")

    def _check_values(self) -> None:
        """The value checks of :meth:`validate`, each naming its first bad row."""
        k = self.top_ids.shape[1]
        self._check((self.label < -1) | (self.label >= self.vocab_size), "label",
                    f"outside [0, {self.vocab_size}) and not -1", self.label)
        self._check((self.top_ids < 0).any(1) | (self.top_ids >= self.vocab_size).any(1), "top_ids",
                    f"has an id outside [0, {self.vocab_size})", self.top_ids)
        if k > 1:
            srt = np.sort(self.top_ids, axis=1)
            self._check((srt[:, 1:] == srt[:, :-1]).any(1), "top_ids", "repeats an id", self.top_ids)
        self._check(~np.isfinite(self.top_logits).all(1), "top_logits", "is not finite", self.top_logits)
        self._check((np.diff(self.top_logits, axis=1) > 0).any(1), "top_logits", "is not sorted descending",
                    self.top_logits)
        self._check(~np.isfinite(self.log_normalizer), "log_normalizer", "is not finite", self.log_normalizer)
        known = self.label >= 0
        self._check(known & ~np.isfinite(self.label_logit), "label_logit",
                    "is not finite for a known label", self.label_logit)
        self._check(self.label_logit > self.top_logits[:, 0] + 1e-4 * (1 + np.abs(self.top_logits[:, 0])),
                    "label_logit", "exceeds the top-1 logit", self.label_logit)
        bad_tail = np.isnan(self.tail).any((1, 2)) | np.isposinf(self.tail).any((1, 2))
        self._check(bad_tail, "tail", "contains NaN or +inf", self.tail)
        if self.features is not None:
            self._check(~np.isfinite(self.features).all(1), "features", "is not finite", self.features)

    def _surely_valid(self) -> bool:
        """One compiled pass: True when every check of :meth:`_check_values` certainly passes
        (``tokcal._table_kernel``; tables with features take the numpy checks)."""
        if self.features is not None or min(len(self.label), self.top_ids.shape[1]) == 0:
            return False
        from ._table_kernel import surely_valid

        return bool(surely_valid(self.label, self.top_ids, self.top_logits, self.label_logit, self.log_normalizer,
                                 np.ascontiguousarray(self.tail), self.vocab_size))

    @staticmethod
    def _check(mask: np.ndarray, column: str, what: str, values: np.ndarray) -> None:
        if mask.any():
            i = first_bad_row(mask)
            raise ValidationError(f"{column}: row {i} {what} (value {values[i].tolist()!r})")

    # -- basic accessors -----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def __repr__(self) -> str:
        return (f"TokenTable(n={len(self)}, k={self.k}, vocab_size={self.vocab_size}, "
                f"sequences={self.n_sequences}, groups={list(self.groups)}, tail={self.layout.kind!r})")

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[1])

    @property
    def n_sequences(self) -> int:
        return int(np.unique(self.sequence_id).size)

    @property
    def labeled(self) -> np.ndarray:
        """Mask of rows with a known gold label (the rows metrics count)."""
        return self.label >= 0

    @property
    def predicted(self) -> np.ndarray:
        """argmax id of each row (calibrators that preserve the argmax keep it)."""
        return self.top_ids[:, 0]

    @property
    def correct(self) -> np.ndarray:
        """``1[argmax == label]`` (False where the label is unknown)."""
        return self.top_ids[:, 0] == self.label

    @property
    def sketch(self) -> LogitSketch:
        return LogitSketch(self.top_ids, self.top_logits, self.label_logit, self.log_normalizer,
                           self.tail, self.layout, self.vocab_size)

    def group(self, name: str) -> GroupColumn:
        if name not in self.groups:
            raise ValidationError(f"no group column '{name}'; this table has {sorted(self.groups)}")
        return self.groups[name]

    def token_strings(self, ids: Any) -> list[str]:
        """Display strings of ``ids`` (``<id>`` where the table has no vocabulary)."""
        ids = np.asarray(ids).ravel()
        if self.vocabulary is None:
            return [f"<{int(i)}>" for i in ids]
        return [self.vocabulary.display(int(i)) for i in ids]

    # -- selection and concatenation -----------------------------------------------------------

    def select(self, rows: Any) -> TokenTable:
        """Rows by boolean mask or integer index (a new table sharing metadata)."""
        idx = np.asarray(rows)
        if idx.size == 0:
            raise ValidationError("select: selection is empty (0 tokens)")
        if idx.dtype != bool and not np.issubdtype(idx.dtype, np.integer):
            raise ValidationError(f"select: expected a boolean mask or integer row indices, got dtype {idx.dtype}")
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValidationError(f"select: boolean mask of shape {idx.shape} for {len(self)} rows")
            idx = np.flatnonzero(idx)
        return TokenTable(
            sequence_id=self.sequence_id[idx], position=self.position[idx], label=self.label[idx],
            top_ids=self.top_ids[idx], top_logits=self.top_logits[idx], label_logit=self.label_logit[idx],
            log_normalizer=self.log_normalizer[idx], tail=self.tail[idx], layout=self.layout,
            vocab_size=self.vocab_size, groups={k: g.take(idx) for k, g in self.groups.items()},
            features=None if self.features is None else self.features[idx], vocab=self.vocabulary,
            source=self.source, validate=False,
        ).checked_nonempty()

    __getitem__ = select

    def checked_nonempty(self) -> TokenTable:
        if len(self) == 0:
            raise ValidationError("selection is empty (0 tokens)")
        return self

    def with_groups(self, **groups: Any) -> TokenTable:
        """A copy with extra group columns (name=values)."""
        new = self.select(np.arange(len(self)))
        for k, v in groups.items():
            new.groups[k] = GroupColumn.from_values(k, v, len(self))
        return new

    @staticmethod
    def concat(tables: Sequence[TokenTable]) -> TokenTable:
        """Stack tables row-wise; vocabularies, k and tail layouts must agree; groups are unioned."""
        tables = list(tables)
        if not tables:
            raise ValidationError("concat: no tables given")
        first = tables[0]
        for i, t in enumerate(tables[1:], 1):
            if t.vocab_size != first.vocab_size:
                raise ValidationError(f"concat: table {i} has vocab_size {t.vocab_size}, table 0 {first.vocab_size}")
            if t.k != first.k or t.layout != first.layout:
                raise ValidationError(f"concat: table {i} has k={t.k}/{t.layout.kind}, table 0 k={first.k}/"
                                      f"{first.layout.kind}")
            if set(t.groups) != set(first.groups):
                raise ValidationError(
                    f"concat: table {i} has groups {sorted(t.groups)}, table 0 {sorted(first.groups)}"
                )
            if (t.features is None) != (first.features is None):
                raise ValidationError(f"concat: table {i} and table 0 disagree on having features")
            if (t.vocabulary is not first.vocabulary and t.vocabulary is not None and first.vocabulary is not None
                    and t.vocabulary != first.vocabulary):
                raise ValidationError(f"concat: table {i} has another vocabulary ({t.vocabulary!r}) than table 0 "
                                      f"({first.vocabulary!r})")
        groups = {}
        for name in first.groups:
            cats = sorted(set().union(*(t.groups[name].categories for t in tables)))
            lookup = {c: i for i, c in enumerate(cats)}
            codes = [np.asarray([lookup[c] for c in t.groups[name].categories], np.int32)[t.groups[name].codes]
                     for t in tables]
            groups[name] = GroupColumn(np.concatenate(codes), tuple(cats))

        def cat(attr: str) -> np.ndarray:
            return np.concatenate([getattr(t, attr) for t in tables])

        return TokenTable(
            sequence_id=cat("sequence_id"), position=cat("position"), label=cat("label"),
            top_ids=cat("top_ids"), top_logits=cat("top_logits"), label_logit=cat("label_logit"),
            log_normalizer=cat("log_normalizer"), tail=cat("tail"), layout=first.layout,
            vocab_size=first.vocab_size, groups=groups,
            features=None if first.features is None else cat("features"),
            vocab=first.vocabulary, source=first.source, validate=False,
        )

    # -- Arrow / Parquet -----------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "tokcal_version": __version__, "vocab_size": self.vocab_size,
            "k": self.k, "tail_layout": self.layout.to_dict(), "source": self.source,
            "vocabulary": None if self.vocabulary is None else self.vocabulary.to_dict(),
            "groups": sorted(self.groups),  # the footer's column names have no checksum: these do (schema 3)
        }

    def to_arrow(self, *, packed: bool = False) -> pa.Table:
        """The table as Arrow, the tokcal metadata in its schema. ``packed``: the vector columns as
        ``fixed_size_binary`` (:data:`PACKED`, the Parquet layout), else fixed-size lists."""
        n, k, b = len(self), self.k, self.layout.n_nodes

        def fixed(arr: np.ndarray, width: int, typ: pa.DataType) -> pa.Array:
            if packed:
                data = np.ascontiguousarray(arr, dtype=_packed_dtype(typ))
                return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width * data.itemsize), n,
                                                            [None, pa.py_buffer(data)])
            return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), typ), width)

        cols = {
            "sequence_id": pa.array(self.sequence_id), "position": pa.array(self.position),
            "label": pa.array(self.label), "top_ids": fixed(self.top_ids, k, pa.int32()),
            "top_logits": fixed(self.top_logits, k, pa.float32()), "label_logit": pa.array(self.label_logit),
            "log_normalizer": pa.array(self.log_normalizer),
            "tail_logz": fixed(np.ascontiguousarray(self.tail[:, :, 0]), b, pa.float32()),
            "tail_mean": fixed(np.ascontiguousarray(self.tail[:, :, 1]), b, pa.float32()),
        }
        for name, g in self.groups.items():
            cols[f"group:{name}"] = pa.DictionaryArray.from_arrays(pa.array(g.codes), pa.array(list(g.categories)))
        if self.features is not None:
            cols["features"] = fixed(self.features, self.features.shape[1], pa.float32())
        table = pa.table(cols)
        assert table.num_rows == n
        meta = json.dumps(self.metadata(), allow_nan=False).encode()
        return table.replace_schema_metadata({_META_KEY: meta, _DIGEST_KEY: hashlib.sha256(meta).hexdigest().encode()})

    @classmethod
    def from_arrow(cls, table: pa.Table, where: str = "table", *,
                   parsed: tuple[dict[str, Any], Vocabulary | None] | None = None, view: bool = False,
                   stored: bool = False) -> TokenTable:
        """The TokenTable stored in ``table`` (as :meth:`to_arrow` builds it). Column types, nulls and the
        metadata are checked here (:class:`SchemaError` naming ``where``), values by :meth:`validate`.
        ``parsed``: the metadata and vocabulary of ``table``'s file, already read (batches of one file).
        ``view``: columns are views of ``table``'s buffers where possible (a streamed batch: faster; a
        whole table read to be kept is copied, which frees Arrow's buffers and keeps the peak lower).
        ``stored``: ``table`` was read from a file, whose group columns must be those its metadata lists
        (a Dataset or table a user edited may drop some)."""
        meta, vocab = parsed if parsed is not None else (_read_meta(table.schema.metadata, where), None)
        missing = [c for c in _REQUIRED if c not in table.column_names]
        if missing:
            raise SchemaError(f"{where}: missing column(s) {missing}")
        cols = {name: _column(table, name, where, view) for name in (*_REQUIRED, "features")
                if name in table.column_names}
        if cols["top_ids"].shape[1] != meta["k"]:
            raise SchemaError(f"{where}: top_ids has {cols['top_ids'].shape[1]} ids per row, the metadata says "
                              f"k={meta['k']}")
        groups = {}
        for name in table.column_names:
            if name.startswith("group:"):
                groups[name[6:]] = _group_column(table, name, where)
        declared = meta.get("groups") if stored else None
        if declared is not None and sorted(groups) != declared:
            raise SchemaError(f"{where}: group columns {sorted(groups)}, the tokcal metadata lists {declared} "
                              "(the file is damaged, or was edited without tokcal)")
        try:
            layout = _tail_layout(meta["tail_layout"])
            logz, mean = cols.pop("tail_logz"), cols.pop("tail_mean")
            if logz.shape != mean.shape:
                raise ValidationError(f"tail_logz has {logz.shape[1]} nodes, tail_mean {mean.shape[1]}")
            tail = np.empty((*logz.shape, 2), np.result_type(logz, mean))
            tail[..., 0], tail[..., 1] = logz, mean  # as np.stack(axis=-1), which is ~7x slower here
            return cls(**cols, tail=tail, layout=layout, vocab_size=meta["vocab_size"], groups=groups,
                       vocab=_vocabulary(meta, where) if parsed is None else vocab, source=meta.get("source"))
        except ValidationError as e:
            raise ValidationError(f"{where}: {e}") from None

    def write_parquet(self, path: str | os.PathLike, *, row_group_size: int = 65536) -> Path:
        """Write atomically (temp file in the same folder, then rename). Returns the path."""
        path = Path(path)
        table = self.to_arrow(packed=PACKED)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size,
                                                      use_dictionary=dictionary_columns(table.schema),
                                                      **PARQUET_WRITE_OPTIONS))
        return path

    @classmethod
    def read_parquet(cls, path: str | os.PathLike) -> TokenTable:
        """Read a Parquet file, or a directory of parts (``*.parquet``, in name order)."""
        parts = list(cls.iter_parquet(path, batch_rows=None))
        return parts[0] if len(parts) == 1 else cls.concat(parts)

    @classmethod
    def iter_parquet(cls, path: str | os.PathLike, batch_rows: int | None = 262144) -> Iterator[TokenTable]:
        """Stream a file or dataset directory as tables of at most ``batch_rows`` rows
        (``None``: one table per file). Memory stays bounded by the batch size."""
        yield from cls.iter_pieces([(f, None) for f in parquet_files(path)], batch_rows)

    @classmethod
    def iter_pieces(cls, pieces: Sequence[tuple[Path, Sequence[int] | None]], batch_rows: int | None = 262144, *,
                    threads: bool = True) -> Iterator[TokenTable]:
        """:meth:`iter_parquet` of ``(file, row groups)`` pieces, in order (row groups None: all of the file).
        ``threads``: pyarrow decodes a batch's columns on its thread pool; off for readers that are each
        already one of several threads (:mod:`tokcal.distributed.workers`)."""
        if batch_rows is not None:
            batch_rows = check_params("iter_parquet", _BatchParams, batch_rows=batch_rows).batch_rows
        for file, row_groups in pieces:
            try:
                pf = _open_parquet(file)
                meta_raw = pf.schema_arrow.metadata
                parsed = _file_meta(meta_raw, str(file))  # once per file (once per dataset), not per batch
                if batch_rows is None:
                    tbl = pf.read(use_threads=threads) if row_groups is None else \
                        pf.read_row_groups(list(row_groups), use_threads=threads)
                    yield cls.from_arrow(tbl, str(file), parsed=parsed, stored=True)
                    continue
                groups = None if row_groups is None else list(row_groups)
                for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, use_threads=threads):
                    tbl = pa.Table.from_batches([batch]).replace_schema_metadata(meta_raw)
                    yield cls.from_arrow(tbl, str(file), parsed=parsed, view=True, stored=True)
            except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
                if isinstance(e, TokcalError):
                    raise
                raise SchemaError(f"{file}: not a readable Parquet file ({e})") from None


def _open_parquet(file: Path) -> pq.ParquetFile:
    """``file`` for reading, page checksums verified. Group columns are read as dictionaries from the Parquet
    dictionary pages even where the stored Arrow schema says otherwise (a damaged footer, another writer),
    so their categories keep the stored order."""
    pf = pq.ParquetFile(file, page_checksum_verification=True)
    plain = [f.name for f in pf.schema_arrow if f.name.startswith("group:") and not pa.types.is_dictionary(f.type)]
    return pq.ParquetFile(file, page_checksum_verification=True, read_dictionary=plain) if plain else pf


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet columns written with dictionary encoding: the flat integer and category columns."""
    return [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_dictionary(f.type)]


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files behind ``path``: itself, the parts a dataset directory's manifest lists, or the
    ``*.parquet`` files of a plain directory."""
    path = Path(path)
    if path.is_dir():
        from .sources.dataset import dataset_parts

        listed = dataset_parts(path)  # a collected dataset: only the parts its journals list
        if listed is not None:
            if not listed:
                raise SchemaError(f"{path}: dataset directory lists no parts yet")
            return listed
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise SchemaError(f"{path}: directory holds no *.parquet parts")
        return files
    if not path.exists():
        raise SchemaError(f"{path}: no such file or directory")
    return [path]


def _first_null(arr: pa.Array) -> int:
    return first_bad_row(arr.is_null().to_numpy(zero_copy_only=False))


def _column(table: pa.Table, name: str, where: str, view: bool = False) -> np.ndarray:
    """Column ``name`` as numpy, of the type :meth:`TokenTable.to_arrow` writes (a vector column: fixed-size
    lists, or packed, :data:`PACKED`); SchemaError on a type it cannot be read as without loss, or on a null
    (tokcal never writes one). ``view``: a view of a one-chunk column's Arrow buffer when its type is already
    right (no copy; it keeps the buffer alive)."""
    col = table.column(name)
    if name in _LISTS:
        if pa.types.is_fixed_size_binary(col.type):
            return _packed(col, name, where, view)
        if not pa.types.is_fixed_size_list(col.type):
            raise SchemaError(f"{where}: column {name!r} has type {col.type}, expected fixed_size_list<{_LISTS[name]}>"
                              " or fixed_size_binary")
        target: pa.DataType = pa.list_(_LISTS[name], col.type.list_size)
    else:
        target = _PLAIN[name]
    same = col.type == target or (pa.types.is_fixed_size_list(col.type) and col.type.list_size == target.list_size
                                  and col.type.value_type == target.value_type)  # only the field name differs
    try:
        col = col if same else col.cast(target, safe=True)
        arr = col.chunk(0) if view and col.num_chunks == 1 else col.combine_chunks()  # which copies even one chunk
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise SchemaError(f"{where}: column {name!r} of type {col.type} cannot be read as {target} ({e})") from None
    if arr.null_count:
        raise SchemaError(f"{where}: column {name!r}: row {_first_null(arr)} is null")
    if name not in _LISTS:
        return arr.to_numpy(zero_copy_only=False)
    width = target.list_size
    values = arr.flatten()
    if values.null_count:
        raise SchemaError(f"{where}: column {name!r}: row {_first_null(values) // max(width, 1)} holds a null")
    return values.to_numpy(zero_copy_only=False).reshape(len(arr), width)


def _packed_dtype(typ: pa.DataType) -> np.dtype:
    """The numpy dtype of a packed vector's values (:data:`PACKED`): ``typ``, little-endian."""
    return np.dtype(typ.to_pandas_dtype()).newbyteorder("<")


def _packed(col: pa.ChunkedArray, name: str, where: str, view: bool) -> np.ndarray:
    """A packed vector column (:data:`PACKED`) as an [N, width] numpy array: a view of the Arrow buffer for a
    streamed batch of one chunk, else a copy."""
    dtype = _packed_dtype(_LISTS[name])
    if col.type.byte_width % dtype.itemsize:
        raise SchemaError(f"{where}: column {name!r} has type {col.type}: {col.type.byte_width} bytes per row is "
                          f"not a whole number of {dtype.itemsize}-byte {_LISTS[name]} values")
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if arr.null_count:
        raise SchemaError(f"{where}: column {name!r}: row {_first_null(arr)} is null")
    width = col.type.byte_width // dtype.itemsize
    out = np.frombuffer(arr.buffers()[1], dtype, count=len(arr) * width, offset=arr.offset * col.type.byte_width)
    out = out.reshape(len(arr), width)
    if not dtype.isnative:
        return out.astype(dtype.newbyteorder("="))
    return out if view and col.num_chunks == 1 else out.copy()


def _group_column(table: pa.Table, name: str, where: str) -> GroupColumn:
    col = table.column(name).combine_chunks()
    if not pa.types.is_dictionary(col.type):
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise SchemaError(f"{where}: column {name!r} has type {col.type}, expected dictionary<string>")
        col = col.dictionary_encode()
    if col.null_count:
        raise SchemaError(f"{where}: column {name!r}: row {_first_null(col)} is null")
    cats = col.dictionary.to_pylist()
    if not all(isinstance(c, str) for c in cats) or len(set(cats)) != len(cats):
        raise SchemaError(f"{where}: column {name!r}: its categories must be distinct strings")
    return GroupColumn(col.indices.to_numpy(zero_copy_only=False).astype(np.int32), tuple(cats))


def _read_meta(raw: Mapping[bytes, bytes] | None, where: str) -> dict[str, Any]:
    """The tokcal metadata of a Parquet file, its digest verified (files written before the digest
    existed have none) and its shape checked; SchemaError naming ``where`` otherwise."""
    if not raw or _META_KEY not in raw:
        raise SchemaError(f"{where}: not a tokcal TokenTable (no 'tokcal' metadata)")
    digest = raw.get(_DIGEST_KEY)
    if digest is not None and hashlib.sha256(raw[_META_KEY]).hexdigest().encode() != digest:
        raise SchemaError(f"{where}: the tokcal metadata does not match its checksum (the file is damaged)")
    try:
        meta = parse_json(raw[_META_KEY], f"{where}: tokcal metadata")
    except SchemaError as e:
        raise SchemaError(f"{e} (the file is damaged)") from None
    if not isinstance(meta, dict):
        raise SchemaError(f"{where}: corrupt tokcal metadata (a JSON {type(meta).__name__}, expected an object)")
    version = meta.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise SchemaError(f"{where}: TokenTable schema version {version!r}; this tokcal reads "
                          f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
    for key, ok in (("vocab_size", lambda v: type(v) is int), ("k", lambda v: type(v) is int),
                    ("tail_layout", lambda v: isinstance(v, dict)),
                    ("source", lambda v: v is None or isinstance(v, dict))):
        if key not in meta and key == "source":
            continue
        if key not in meta or not ok(meta[key]):
            got = repr(meta.get(key))[:80] if key in meta else "missing"
            raise SchemaError(f"{where}: corrupt tokcal metadata: {key!r} is {got}")
    return meta


def _file_meta(raw: Mapping[bytes, bytes] | None, where: str) -> tuple[dict[str, Any], Vocabulary | None]:
    """:func:`_read_meta` and :func:`_vocabulary` of a file's schema metadata; the parts of one dataset
    carry the same bytes, which are checked and parsed once (the latest bytes are remembered)."""
    key = (raw or {}).get(_META_KEY), (raw or {}).get(_DIGEST_KEY)
    hit = _META_CACHE[-1:]  # one (key, value) pair, read at once: the streamed passes read on several threads
    if key[0] is not None and hit and hit[0][0] == key:
        return hit[0][1]
    meta = _read_meta(raw, where)
    parsed = meta, _vocabulary(meta, where)
    _META_CACHE[:] = [(key, parsed)]
    return parsed


_META_CACHE: list[tuple[Any, Any]] = []


def _tail_layout(d: Any) -> TailLayout:
    """:meth:`TailLayout.from_dict`, the latest layout remembered (every batch of a dataset has the same)."""
    hit = _LAYOUT_CACHE[-1:]
    if hit and hit[0][0] == d:
        return hit[0][1]
    layout = TailLayout.from_dict(d)  # immutable (a frozen dataclass): tables can share it
    _LAYOUT_CACHE[:] = [(d, layout)]
    return layout


_LAYOUT_CACHE: list[tuple[Any, TailLayout]] = []


def _vocabulary(meta: Mapping[str, Any], where: str) -> Vocabulary | None:
    """The table's vocabulary: raw pieces + convention (version 2), or version 1's decoded strings
    (convention ``"text"`` when their leading spaces mark word starts, see :func:`tokcal.vocab.detect_convention`).

    The batches and parts of one dataset share one object (and its derived arrays) while their
    metadata is equal."""
    key = [meta.get("vocabulary"), meta.get("vocab")]
    hit = _VOCAB_CACHE[-1:]
    if hit and hit[0][0] == key:  # equal parsed JSON: equal vocabularies
        return hit[0][1]
    if meta.get("vocabulary") is not None:
        vocabulary = Vocabulary.from_dict(meta["vocabulary"], where)
    else:
        old = meta.get("vocab")
        if old is None:
            return None
        if not isinstance(old, list) or not all(isinstance(x, str) for x in old):
            raise SchemaError(f"{where}: metadata 'vocab' must be a list of strings")
        vocabulary = Vocabulary.from_pieces(old)
    _VOCAB_CACHE[:] = [(key, vocabulary)]  # keep only the latest: bounded memory
    return vocabulary


_VOCAB_CACHE: list[tuple[Any, Any]] = []
