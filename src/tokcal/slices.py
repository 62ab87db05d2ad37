"""Slices: ways to split tokens into categories, each giving integer codes per token plus names.

A :class:`Slice` has a ``name``, a list of category ``labels`` and ``codes(table, probs)`` ->
int32 [N] with ``labels[codes[i]]`` the category of token i, or -1 where the token belongs to
none (only: a slice on the *gold* token where the label is unknown; those rows are excluded
from metrics anyway). On the labelled tokens every slice is therefore a partition.

Slices (and their CLI specs, parsed by :func:`parse_slice`):

* ``freq`` / ``freq:predicted`` -- frequency bucket of the gold / predicted token, by its rank in
  counts the user passes or counted (gold labels) on a reference table, default the evaluated
  table: ``top-100``, ``100-1k``, ``1k-10k``, ``10k+``, ``unseen`` (count 0).
* ``type`` / ``type:predicted`` -- token type of the id under its tokenizer's convention
  (:data:`tokcal.vocab.TOKEN_TYPES`, rules in :mod:`tokcal.vocab`).
* ``group:NAME`` -- a group column of the table (domain, split, ...).
* ``position`` -- position bucket of the predicted token in its sequence: ``0``, ``1-3``,
  ``4-15``, ``16-63``, ``64-255``, ``256+``.
* ``words:FILE`` -- a challenge list (one token or word per line; ``#`` comments): gold tokens whose
  display text, stripped and lower-cased, is listed (``listed`` vs ``other``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ValidationError
from .table import TokenTable
from .vocab import TOKEN_TYPES

FREQ_EDGES = (100, 1000, 10000)
POSITION_EDGES = (1, 4, 16, 64, 256)


def _check_on(on: str) -> str:
    if on not in ("gold", "predicted"):
        raise ValidationError(f"slice target must be 'gold' or 'predicted', got {on!r}")
    return on


def _target_ids(table: TokenTable, probs: Any, on: str) -> np.ndarray:
    if on == "gold":
        return table.label
    return np.asarray(probs.predicted if probs is not None else table.predicted)


def _lookup(per_id: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``per_id[ids]`` with -1 where ``ids`` is -1 (unknown gold label)."""
    ids = np.asarray(ids)
    return np.where(ids >= 0, per_id[np.maximum(ids, 0)], -1).astype(np.int32)


@dataclass
class Slice(ABC):
    """Base class: ``name``, ``labels`` (category names) and ``codes(table, probs=None)``."""

    name: str
    labels: list[str]

    @abstractmethod
    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        """Integer code per token (-1: in no category)."""


@dataclass
class FrequencySlice(Slice):
    """Bucket of the gold or predicted token by its frequency rank (0 = most frequent).

    ``counts`` [V] gives the frequency of each id; else gold labels are counted on ``reference``
    (a TokenTable), else on the evaluated table. Ranks ``< edges[0]`` -> ``top-100`` etc.; ids with
    count 0 are ``unseen``.
    """

    name: str = "freq"
    labels: list[str] = field(default_factory=list)
    on: str = "gold"
    counts: Any = None
    reference: TokenTable | None = None
    edges: tuple[int, ...] = FREQ_EDGES

    def __post_init__(self) -> None:
        _check_on(self.on)
        if list(self.edges) != sorted(set(self.edges)) or not self.edges or self.edges[0] < 1:
            raise ValidationError(f"freq slice: edges must be increasing positive ranks, got {self.edges}")
        names = [f"top-{_short(self.edges[0])}"]
        names += [f"{_short(a)}-{_short(b)}" for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)]
        self.labels = [*names, f"{_short(self.edges[-1])}+", "unseen"]

    def id_counts(self, table: TokenTable) -> np.ndarray:
        if self.counts is not None:
            c = np.asarray(self.counts, dtype=np.float64)
            if c.shape != (table.vocab_size,) or not np.isfinite(c).all() or (c < 0).any():
                raise ValidationError(f"freq slice: counts must be {table.vocab_size} finite values >= 0, "
                                      f"got shape {c.shape}")
            return c
        ref = self.reference if self.reference is not None else table
        if ref.vocab_size != table.vocab_size:
            raise ValidationError(f"freq slice: reference vocab_size {ref.vocab_size} != table's {table.vocab_size}")
        lab = ref.label[ref.label >= 0]
        return np.bincount(lab, minlength=table.vocab_size).astype(np.float64)

    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        c = self.id_counts(table)
        order = np.argsort(-c, kind="stable")
        rank = np.empty(c.size, np.int64)
        rank[order] = np.arange(c.size)
        per_id = np.searchsorted(np.asarray(self.edges), rank, side="right")
        per_id = np.where(c > 0, per_id, len(self.edges) + 1).astype(np.int32)
        return _lookup(per_id, _target_ids(table, probs, self.on))


def _short(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1000)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


@dataclass
class TokenTypeSlice(Slice):
    """Token type (:meth:`tokcal.vocab.Vocabulary.token_types`) of the gold or predicted token; needs
    the table's vocabulary."""

    name: str = "type"
    labels: list[str] = field(default_factory=lambda: list(TOKEN_TYPES))
    on: str = "gold"

    def __post_init__(self) -> None:
        _check_on(self.on)

    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        if table.vocabulary is None:
            raise ValidationError(f"slice '{self.name}': the table has no vocabulary (id -> string)")
        return _lookup(table.vocabulary.token_types(), _target_ids(table, probs, self.on))


@dataclass
class GroupSlice(Slice):
    """The categories of a group column (``table.groups[group]``)."""

    name: str = "group"
    labels: list[str] = field(default_factory=list)
    group: str = ""

    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        g = table.group(self.group)
        self.labels = list(g.categories)
        return g.codes.astype(np.int32)


@dataclass
class PositionSlice(Slice):
    """Position of the predicted token in its sequence, bucketed at ``edges`` (1, 4, 16, 64, 256)."""

    name: str = "position"
    labels: list[str] = field(default_factory=list)
    edges: tuple[int, ...] = POSITION_EDGES

    def __post_init__(self) -> None:
        if list(self.edges) != sorted(set(self.edges)) or not self.edges or self.edges[0] < 1:
            raise ValidationError(f"position slice: edges must be increasing and >= 1, got {self.edges}")
        lo = (0, *self.edges)
        self.labels = [str(a) if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(lo[:-1], lo[1:], strict=True)]
        self.labels.append(f"{self.edges[-1]}+")

    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        return np.searchsorted(np.asarray(self.edges), table.position, side="right").astype(np.int32)


def normalize_word(s: str) -> str:
    """A listed word as matched against :meth:`tokcal.vocab.Vocabulary.normalized`: without surrounding
    whitespace, lower-cased."""
    return s.strip().lower()


@dataclass
class WordListSlice(Slice):
    """Gold (or predicted) tokens on a challenge list (``listed``) vs the rest (``other``).

    ``words`` are strings (matched, stripped and lower-cased, against each id's display text) or integer ids.
    """

    name: str = "words"
    labels: list[str] = field(default_factory=lambda: ["listed", "other"])
    words: Sequence[Any] = ()
    on: str = "gold"

    def __post_init__(self) -> None:
        _check_on(self.on)
        if not len(self.words):
            raise ValidationError(f"slice '{self.name}': the word list is empty")

    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        ids = {int(w) for w in self.words if isinstance(w, (int, np.integer))}
        strings = {normalize_word(str(w)) for w in self.words if not isinstance(w, (int, np.integer))}
        listed = np.zeros(table.vocab_size, bool)
        bad = [i for i in ids if not 0 <= i < table.vocab_size]
        if bad:
            raise ValidationError(f"slice '{self.name}': token id {bad[0]} outside [0, {table.vocab_size})")
        listed[list(ids)] = True
        if strings:
            if table.vocabulary is None:
                raise ValidationError(f"slice '{self.name}': word list needs the table's vocabulary")
            norm = table.vocabulary.normalized()
            listed |= np.fromiter((s in strings for s in norm), bool, len(norm))
        return _lookup(np.where(listed, 0, 1).astype(np.int32), _target_ids(table, probs, self.on))

    @classmethod
    def from_file(cls, path: str | os.PathLike, on: str = "gold") -> WordListSlice:
        p = Path(path)
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValidationError(f"words slice: cannot read {p} ({e.strerror})") from None
        except UnicodeDecodeError:
            raise ValidationError(f"words slice: {p} is not UTF-8 text") from None
        words = [w.strip() for w in lines if w.strip() and not w.lstrip().startswith("#")]
        if not words:
            raise ValidationError(f"words slice: {p} lists no words")
        return cls(name=f"words:{p.stem}", words=words, on=on)


def parse_slice(spec: str | Slice, *, reference: TokenTable | None = None, counts: Any = None) -> Slice:
    """A :class:`Slice` from a CLI spec (see the module docstring); a Slice passes through.

    ``reference``/``counts`` feed the frequency slices.
    """
    if isinstance(spec, Slice):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValidationError(f"slice spec must be a non-empty string, got {spec!r}")
    kind, _, arg = spec.strip().partition(":")
    if kind == "freq":
        on = arg or "gold"
        return FrequencySlice(name="freq" if on == "gold" else f"freq:{on}", on=_check_spec(spec, on),
                              counts=counts, reference=reference)
    if kind == "type":
        on = arg or "gold"
        return TokenTypeSlice(name="type" if on == "gold" else f"type:{on}", on=_check_spec(spec, on))
    if kind == "group":
        if not arg:
            raise ValidationError(f"slice spec {spec!r}: give the group column, e.g. 'group:domain'")
        return GroupSlice(name=f"group:{arg}", group=arg)
    if kind == "position" and not arg:
        return PositionSlice()
    if kind == "words":
        if not arg:
            raise ValidationError(f"slice spec {spec!r}: give a file, e.g. 'words:challenge.txt'")
        return WordListSlice.from_file(arg)
    raise ValidationError(f"unknown slice spec {spec!r}; use freq, freq:predicted, type, type:predicted, "
                          "group:NAME, position or words:FILE")


def _check_spec(spec: str, on: str) -> str:
    if on not in ("gold", "predicted"):
        raise ValidationError(f"slice spec {spec!r}: expected ':gold' or ':predicted', got ':{on}'")
    return on


def default_slices(table: TokenTable) -> list[Slice]:
    """``freq``, ``freq:predicted``, ``type`` (with a vocabulary), ``position`` and every group column."""
    out: list[Slice] = [FrequencySlice(), FrequencySlice(name="freq:predicted", on="predicted")]
    if table.vocabulary is not None:
        out.append(TokenTypeSlice())
    out.append(PositionSlice())
    out += [GroupSlice(name=f"group:{g}", group=g) for g in table.groups]
    return out


def parse_slices(specs: Iterable[str | Slice] | None, table: TokenTable, **kw: Any) -> list[Slice]:
    """Parse many specs (``None``: :func:`default_slices`); names must be unique."""
    out = default_slices(table) if specs is None else [parse_slice(s, **kw) for s in specs]
    names = [s.name for s in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValidationError(f"slice names must be unique; repeated: {sorted(dup)}")
    return out
