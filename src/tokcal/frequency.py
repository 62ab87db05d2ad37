"""Reference frequencies of token ids: what "rare" means for the ``freq`` slices and frequency features.

A token is rare by its rank in a **reference** -- ideally the model's training data -- not by its
count in the few thousand tokens being evaluated (where almost nothing is rare). A
:class:`FrequencyReference` is one of (``kind``):

* ``"counts"`` -- a JSON counts file, ``{"counts": [c_0, c_1, ..., c_{V-1}]}`` (one non-negative
  number per id, any other keys ignored; the shipped ``demo/assets/token_counts.json`` is one), or
  counts given in Python;
* ``"table"`` -- gold labels counted on a reference TokenTable (a Parquet file or dataset directory);
* ``"text"`` -- a text corpus (plain text files, one document per line, or any text) tokenized with
  the model's tokenizer (no special tokens added) and counted;
* ``"id-order"`` -- no reference given, byte-level BPE vocabulary (``byte-level`` / ``bytes``
  convention, :mod:`tokcal.vocab`): ids are ranked by id. Byte-level BPE assigns ids in merge order
  after its byte alphabet, and a pair merged earlier was more frequent in the tokenizer's training
  corpus (Sennrich, Haddow & Birch 2016; Radford et al. 2019), so a lower id is a more frequent token
  (a proxy: the tokenizer's corpus, not the model's; the first ids are the single bytes);
* ``"evaluated-table"`` -- no reference and no proxy (other conventions, or no vocabulary): gold labels
  counted on the evaluated table itself, with a :class:`~tokcal.errors.TokcalWarning`.

Rank r_i of id i: its position when ids are sorted by decreasing count (ties by id), or its id
order for ``id-order``. Ids of count 0 (and ids without a piece under ``id-order``) are *unseen*.
:meth:`FrequencyReference.describe` (kind, name, token count, digest of the counts) goes into the
slice settings and :meth:`FrequencyReference.tag` into the slice signature.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write, read_json
from .errors import SchemaError, TokcalWarning, ValidationError
from .table import TokenTable, parquet_files
from .validation import FrequencyCountsDoc, validate_doc
from .vocab import Vocabulary

KINDS = ("counts", "table", "text", "id-order", "evaluated-table")
#: conventions whose id order is a frequency proxy (byte-level BPE: merge order)
ID_ORDER_CONVENTIONS = ("byte-level", "bytes")
_TEXT_CHUNK = 2048  # lines tokenized at once


@dataclass(frozen=True, eq=False)
class FrequencyReference:
    """Per-id reference counts (or the id-order proxy); see the module docstring.

    ``counts``: float64 [V] (None for ``id-order``); ``seen``: bool [V], the ids with a rank.
    """

    kind: str
    vocab_size: int
    counts: np.ndarray | None
    seen: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValidationError(f"frequency reference kind must be one of {KINDS}, got {self.kind!r}")

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_counts(cls, counts: Any, *, vocab_size: int | None = None, name: str = "counts",
                    kind: str = "counts") -> FrequencyReference:
        """Counts [V] per id (finite, >= 0); ``vocab_size`` checks the length."""
        c = np.asarray(counts, dtype=np.float64) if not isinstance(counts, np.ndarray) else counts.astype(np.float64)
        if c.ndim != 1:
            raise ValidationError(f"frequency reference {name}: counts must be one list, got shape {c.shape}")
        if vocab_size is not None and c.size != vocab_size:
            raise ValidationError(f"frequency reference {name}: {c.size} counts for a vocabulary of {vocab_size} "
                                  "ids (give one count per id of the model's vocabulary)")
        bad = ~np.isfinite(c) | (c < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValidationError(f"frequency reference {name}: counts[{i}] is {float(c[i])!r}, expected a finite "
                                  "number >= 0")
        return cls(kind, int(c.size), c, c > 0, name)

    @classmethod
    def from_json(cls, path: str | os.PathLike, *, vocab_size: int | None = None) -> FrequencyReference:
        """A counts file ``{"counts": [...]}`` (module docstring)."""
        path = Path(path)
        obj = read_json(path, "frequency counts file")
        if not isinstance(obj, dict) or not isinstance(obj.get("counts"), list):
            raise SchemaError(f'{path}: a frequency counts file is a JSON object {{"counts": [count per id]}}')
        doc = validate_doc(FrequencyCountsDoc, obj, str(path))
        try:
            return cls.from_counts(doc.counts, vocab_size=vocab_size, name=path.name)
        except ValidationError as e:
            raise SchemaError(str(e).replace(f"frequency reference {path.name}", str(path))) from None

    @classmethod
    def from_table(cls, table: TokenTable | str | os.PathLike, *, vocab_size: int | None = None,
                   kind: str = "table") -> FrequencyReference:
        """Gold labels counted on a TokenTable, or on a Parquet file / dataset directory (streamed)."""
        if isinstance(table, TokenTable):
            tables: Iterable[TokenTable] = [table]
            name = "evaluated table" if kind == "evaluated-table" else "table"
        else:
            parquet_files(table)  # a clear error for a missing path
            tables = TokenTable.iter_parquet(table)
            name = Path(table).name
        counts: np.ndarray | None = None
        for t in tables:
            if vocab_size is not None and t.vocab_size != vocab_size:
                raise ValidationError(f"frequency reference {name}: vocab_size {t.vocab_size}, but the evaluated "
                                      f"table's is {vocab_size}")
            c = np.bincount(t.label[t.label >= 0], minlength=t.vocab_size).astype(np.float64)
            counts = c if counts is None else counts + c
        assert counts is not None
        return cls(kind, int(counts.size), counts, counts > 0, name)

    @classmethod
    def from_text(cls, paths: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: Any, *,
                  vocab_size: int | None = None) -> FrequencyReference:
        """Token ids of text files counted with ``tokenizer`` (a transformers tokenizer; no special
        tokens added), line chunk by line chunk (bounded memory). ``vocab_size``: the model's V
        (default: the tokenizer's length)."""
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        V = int(vocab_size if vocab_size is not None else len(tokenizer))
        counts = np.zeros(V, np.float64)
        for p in map(Path, paths):
            try:
                with p.open(encoding="utf-8") as f:
                    lines: list[str] = []
                    for line in f:
                        lines.append(line)
                        if len(lines) >= _TEXT_CHUNK:
                            counts += _count_lines(tokenizer, lines, V, p)
                            lines = []
                    if lines:
                        counts += _count_lines(tokenizer, lines, V, p)
            except OSError as e:
                raise ValidationError(f"frequency reference: cannot read {p} ({e.strerror})") from None
            except UnicodeDecodeError:
                raise ValidationError(f"frequency reference: {p} is not UTF-8 text") from None
        return cls("text", V, counts, counts > 0, ", ".join(p.name for p in map(Path, paths)))

    @classmethod
    def id_order(cls, vocabulary: Vocabulary) -> FrequencyReference:
        """The byte-level BPE proxy: rank = id among the ids with a piece (module docstring)."""
        seen = np.fromiter((p is not None for p in vocabulary.pieces), bool, vocabulary.size)
        return cls("id-order", vocabulary.size, None, seen, f"{vocabulary.convention} id order")

    # -- use ------------------------------------------------------------------------------------

    def ranks(self) -> np.ndarray:
        """int64 [V]: rank of every id (0 = most frequent; ties by id). Unseen ids get ranks too;
        use :attr:`seen`."""
        if self.counts is None:
            return np.cumsum(self.seen) - 1
        order = np.argsort(-self.counts, kind="stable")
        rank = np.empty(self.vocab_size, np.int64)
        rank[order] = np.arange(self.vocab_size)
        return rank

    def check_vocab_size(self, vocab_size: int) -> None:
        if self.vocab_size != vocab_size:
            raise ValidationError(f"frequency reference {self.name}: {self.vocab_size} ids, but the table's "
                                  f"vocabulary has {vocab_size}")

    @property
    def digest(self) -> str:
        """12 hex digits of sha256 over the counts (float64) or, for id-order, the seen mask."""
        data = self.counts if self.counts is not None else self.seen
        return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()[:12]

    @property
    def n_tokens(self) -> int | None:
        return None if self.counts is None else int(round(float(self.counts.sum())))

    def tag(self) -> str:
        """``kind:digest`` (signature value: two slices agree only on the same reference)."""
        return f"{self.kind}:{self.digest}"

    def describe(self) -> dict[str, Any]:
        """JSON-able: kind, name, n_tokens, digest."""
        return {"kind": self.kind, "name": self.name, "n_tokens": self.n_tokens, "digest": self.digest}

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write ``{"counts": [...], "what": ...}`` atomically (readable by :meth:`from_json`)."""
        import json

        if self.counts is None:
            raise ValidationError("an id-order reference has no counts to write")
        c = self.counts
        values = [int(x) for x in c] if np.all(c == np.round(c)) else c.tolist()
        text = json.dumps({"what": f"token counts ({self.kind}: {self.name})", "counts": values}) + "\n"
        path = Path(path)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path


def _count_lines(tokenizer: Any, lines: list[str], V: int, where: Path) -> np.ndarray:
    ids = tokenizer(lines, add_special_tokens=False, verbose=False)["input_ids"]
    flat = np.fromiter((i for row in ids for i in row), np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= V):
        raise ValidationError(f"frequency reference {where}: the tokenizer gave id {int(flat.max())} outside the "
                              f"vocabulary of {V} ids")
    return np.bincount(flat, minlength=V).astype(np.float64)


def default_reference(table: TokenTable, labelled_counts: np.ndarray | None = None) -> FrequencyReference:
    """No reference given: the id-order proxy for byte-level BPE, else the evaluated table (warned).
    ``labelled_counts``: the evaluated data's gold counts when ``table`` holds only part of it (streaming)."""
    v = table.vocabulary
    if v is not None and v.convention in ID_ORDER_CONVENTIONS:
        return FrequencyReference.id_order(v)
    what = "no vocabulary" if v is None else f"a {v.convention!r} vocabulary"
    n = int(table.labeled.sum()) if labelled_counts is None else int(labelled_counts.sum())
    warnings.warn(f"freq slice: no frequency reference, and {what} has no frequency proxy, so token frequency "
                  f"is counted on the evaluated table itself ({n} tokens: few ids rank as "
                  "rare). Pass a reference: --freq-ref COUNTS.json, a TokenTable or a text corpus",
                  TokcalWarning, stacklevel=4)
    if labelled_counts is not None:
        c = np.asarray(labelled_counts, dtype=np.float64)
        return FrequencyReference("evaluated-table", int(c.size), c, c > 0, "evaluated table")
    return FrequencyReference.from_table(table, kind="evaluated-table")


def load_reference(spec: Any, table: TokenTable, *, tokenizer: Any = None) -> FrequencyReference:
    """A :class:`FrequencyReference` for ``table`` from ``spec``:

    None (:func:`default_reference`); a FrequencyReference; counts (array or list); a TokenTable;
    or a path: ``*.json`` (counts file), ``*.parquet`` or a directory (TokenTable), anything else a
    text corpus, tokenized with ``tokenizer`` or else the table's tokenizer when its source names a
    local tokenizer folder.
    """
    V = table.vocab_size
    if spec is None:
        return default_reference(table)
    if isinstance(spec, FrequencyReference):
        spec.check_vocab_size(V)
        return spec
    if isinstance(spec, TokenTable):
        return FrequencyReference.from_table(spec, vocab_size=V)
    if isinstance(spec, (str, os.PathLike)):
        p = Path(spec)
        if not p.exists():
            raise ValidationError(f"--freq-ref {p}: no such file or directory")
        if p.suffix == ".json":
            return FrequencyReference.from_json(p, vocab_size=V)
        if p.is_dir() or p.suffix == ".parquet":
            return FrequencyReference.from_table(p, vocab_size=V)
        tok = tokenizer if tokenizer is not None else _table_tokenizer(table, p)
        return FrequencyReference.from_text(p, tok, vocab_size=V)
    return FrequencyReference.from_counts(spec, vocab_size=V)


def _table_tokenizer(table: TokenTable, corpus: Path) -> Any:
    name = str(table.source.get("tokenizer") or "")
    if not name or not Path(name).is_dir():
        raise ValidationError(f"--freq-ref {corpus}: counting a text corpus needs the model's tokenizer, and the "
                              f"table's source names none that is a local folder ({name!r}); count it in Python "
                              "with tokcal.frequency.FrequencyReference.from_text(...).to_json(...) and pass the JSON")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, local_files_only=True)
