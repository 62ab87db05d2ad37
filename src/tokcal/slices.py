"""Slices: ways to split tokens into categories, each giving integer codes per token plus names.

A :class:`Slice` has a ``name``, a list of category ``labels`` and ``codes(table, probs)`` ->
int32 [N] with ``labels[codes[i]]`` the category of token i, or -1 where the token belongs to
none (only: a slice on the *gold* token where the label is unknown; those rows are excluded
from metrics anyway). On the labelled tokens every slice is therefore a partition. ``settings()`` says how a slice
defined its categories (for a frequency slice: which reference) and ``signature()`` turns that into a
signature string; :func:`tokcal.evaluate` records both.

Slices (and their CLI specs, parsed by :func:`parse_slice`):

* ``freq`` / ``freq:predicted`` -- frequency bucket of the gold / predicted token, by its rank in a
  reference frequency (:mod:`tokcal.frequency`: a counts file, a reference table or text corpus; by
  default the id order of a byte-level BPE vocabulary, else the evaluated table with a warning):
  ``top-100``, ``100-1k``, ``1k-10k``, ``10k+``, ``unseen`` (count 0).
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

from .errors import ParameterError, ValidationError
from .frequency import FrequencyReference, load_reference
from .metrics.signature import signature
from .table import TokenTable
from .validation import SliceParams, check_params
from .vocab import TOKEN_TYPE_RULES, TOKEN_TYPES

FREQ_EDGES = (100, 1000, 10000)
POSITION_EDGES = (1, 4, 16, 64, 256)


def _check_on(on: str) -> str:
    return check_params("slice", SliceParams, on=on).on


def _target_ids(table: TokenTable, probs: Any, on: str) -> np.ndarray:
    if on == "gold":
        return table.label
    return np.asarray(probs.predicted if probs is not None else table.predicted)


def codes_by_id(per_id: np.ndarray, table: TokenTable, probs: Any, on: str) -> np.ndarray:
    """The codes of a slice defined per token id (``per_id`` [V]) for the gold (``on="gold"``) or
    predicted id of every row; -1 where the gold label is unknown."""
    return _lookup(per_id, _target_ids(table, probs, on))


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

    def settings(self) -> dict[str, Any]:
        """How the categories were defined (JSON-able); recorded by :func:`tokcal.evaluate`."""
        return {"kind": self.name.partition(":")[0]}

    def signature(self) -> str:
        """The slice definition as a signature (:func:`tokcal.metrics.signature`)."""
        st = {k: v for k, v in self.settings().items() if k != "kind" and isinstance(v, (str, int, float, bool))}
        return signature(f"slice:{self.settings()['kind']}", **st)


@dataclass
class FrequencySlice(Slice):
    """Bucket of the gold or predicted token by its rank in a reference frequency (0 = most frequent).

    ``reference``: anything :func:`tokcal.frequency.load_reference` takes -- a
    :class:`~tokcal.frequency.FrequencyReference`, counts [V], a reference TokenTable, a path (counts
    JSON, Parquet, text corpus) -- or None: the id-order proxy for byte-level BPE vocabularies, else the
    evaluated table (with a warning). ``counts`` [V] is the same as ``reference=counts``. Ranks
    ``< edges[0]`` -> ``top-100`` etc.; ids the reference never saw are ``unseen``. After
    :meth:`codes`, ``used`` is the reference that ranked the ids (it goes into :meth:`settings`).
    """

    name: str = "freq"
    labels: list[str] = field(default_factory=list)
    on: str = "gold"
    counts: Any = None
    reference: Any = None
    edges: tuple[int, ...] = FREQ_EDGES
    used: FrequencyReference | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.edges = check_params("freq slice", SliceParams, on=self.on, edges=self.edges).edges
        if self.counts is not None and self.reference is not None:
            raise ValidationError("freq slice: give counts or reference, not both")
        names = [f"top-{_short(self.edges[0])}"]
        names += [f"{_short(a)}-{_short(b)}" for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)]
        self.labels = [*names, f"{_short(self.edges[-1])}+", "unseen"]

    def resolve(self, table: TokenTable) -> FrequencyReference:
        """The reference for ``table`` (see the class docstring)."""
        spec = self.counts if self.counts is not None else self.reference
        if isinstance(spec, FrequencyReference):
            spec.check_vocab_size(table.vocab_size)
            return spec
        return load_reference(spec, table)

    def id_buckets(self, table: TokenTable) -> np.ndarray:
        """int32 [V]: the bucket (index into ``labels``) of every id under the reference for ``table``."""
        ref = self.resolve(table)
        self.used = ref
        per_id = np.searchsorted(np.asarray(self.edges), ref.ranks(), side="right")
        return np.where(ref.seen, per_id, len(self.edges) + 1).astype(np.int32)

    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        return codes_by_id(self.id_buckets(table), table, probs, self.on)

    def settings(self) -> dict[str, Any]:
        ref = self.used.describe() if self.used is not None else None
        return {"kind": "freq", "on": self.on, "edges": list(self.edges), "reference": ref}

    def signature(self) -> str:
        return signature("slice:freq", on=self.on, edges=",".join(map(str, self.edges)),
                         ref=self.used.tag() if self.used is not None else "unresolved")


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
    convention: str | None = field(default=None, repr=False)  # of the last table (settings)

    def __post_init__(self) -> None:
        _check_on(self.on)

    def id_types(self, table: TokenTable) -> np.ndarray:
        """[V]: the type (index into ``labels``) of every id of ``table``'s vocabulary."""
        if table.vocabulary is None:
            raise ValidationError(f"slice '{self.name}': the table has no vocabulary (id -> string)")
        self.convention = table.vocabulary.convention
        return table.vocabulary.token_types()

    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        return codes_by_id(self.id_types(table), table, probs, self.on)

    def settings(self) -> dict[str, Any]:
        return {"kind": "type", "on": self.on, "convention": self.convention, "rules": TOKEN_TYPE_RULES}


@dataclass
class GroupSlice(Slice):
    """The categories of a group column (``table.groups[group]``)."""

    name: str = "group"
    labels: list[str] = field(default_factory=list)
    group: str = ""

    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        if self.group not in table.groups:
            have = ", ".join(sorted(table.groups)) or "none"
            raise ParameterError(f"{{slices}} must name a group column of the table ({ParameterError.quote(have)}), "
                                 f"got {ParameterError.quote(repr(self.name))}", "slice")
        g = table.group(self.group)
        self.labels = list(g.categories)
        return g.codes.astype(np.int32)

    def settings(self) -> dict[str, Any]:
        return {"kind": "group", "group": self.group}


@dataclass
class PositionSlice(Slice):
    """Position of the predicted token in its sequence, bucketed at ``edges`` (1, 4, 16, 64, 256)."""

    name: str = "position"
    labels: list[str] = field(default_factory=list)
    edges: tuple[int, ...] = POSITION_EDGES

    def __post_init__(self) -> None:
        self.edges = check_params("position slice", SliceParams, edges=self.edges).edges
        lo = (0, *self.edges)
        self.labels = [str(a) if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(lo[:-1], lo[1:], strict=True)]
        self.labels.append(f"{self.edges[-1]}+")

    def codes(self, table: TokenTable, probs: Any = None) -> np.ndarray:
        return np.searchsorted(np.asarray(self.edges), table.position, side="right").astype(np.int32)

    def settings(self) -> dict[str, Any]:
        return {"kind": "position", "edges": ",".join(map(str, self.edges))}


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

    def settings(self) -> dict[str, Any]:
        return {"kind": "words", "on": self.on, "n_words": len(self.words)}

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


def parse_slice(spec: str | Slice, *, reference: Any = None, counts: Any = None) -> Slice:
    """A :class:`Slice` from a CLI spec (see the module docstring); a Slice passes through.

    ``reference``/``counts`` feed the frequency slices (:class:`FrequencySlice`).
    """
    if isinstance(spec, Slice):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError(f"{{slices}} must be a non-empty string, got {ParameterError.quote(repr(spec))}", "slice")
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
            raise ParameterError(f"{{slices}} must name the group column, e.g. group:domain, got {spec!r}", "slice")
        return GroupSlice(name=f"group:{arg}", group=arg)
    if kind == "position" and not arg:
        return PositionSlice()
    if kind == "words":
        if not arg:
            raise ParameterError(f"{{slices}} must name a file, e.g. words:challenge.txt, got {spec!r}", "slice")
        return WordListSlice.from_file(arg)
    raise ParameterError("{slices} must be freq, freq:predicted, type, type:predicted, group:NAME, position or "
                         f"words:FILE, got {ParameterError.quote(repr(spec))}", "slice")


def _check_spec(spec: str, on: str) -> str:
    if on not in ("gold", "predicted"):
        kind = spec.strip().partition(":")[0]
        raise ParameterError(f"{{slices}} must be {kind}, {kind}:gold or {kind}:predicted, "
                             f"got {ParameterError.quote(repr(spec))}", "slice")
    return on


def default_slices(table: TokenTable, *, reference: Any = None, counts: Any = None) -> list[Slice]:
    """``freq``, ``freq:predicted``, ``type`` (with a vocabulary), ``position`` and every group column.

    ``reference``/``counts``: the frequency reference of both freq slices (resolved once)."""
    ref = reference if counts is None else counts
    ref = load_reference(ref, table) if not isinstance(ref, FrequencyReference) else ref
    out: list[Slice] = [FrequencySlice(reference=ref), FrequencySlice(name="freq:predicted", on="predicted",
                                                                      reference=ref)]
    if table.vocabulary is not None:
        out.append(TokenTypeSlice())
    out.append(PositionSlice())
    out += [GroupSlice(name=f"group:{g}", group=g) for g in table.groups]
    return out


def parse_slices(specs: Iterable[str | Slice] | None, table: TokenTable, **kw: Any) -> list[Slice]:
    """Parse many specs (``None``: :func:`default_slices`); names must be unique. ``reference`` /
    ``counts`` (keywords) feed the frequency slices; the reference is resolved once for all of them."""
    if specs is not None and (kw.get("reference") is not None or kw.get("counts") is not None):
        specs = list(specs)
        if any(isinstance(s, str) and s.strip().startswith("freq") for s in specs):
            ref = kw["counts"] if kw.get("counts") is not None else kw["reference"]
            kw = {"reference": ref if isinstance(ref, FrequencyReference) else load_reference(ref, table)}
    out = default_slices(table, **kw) if specs is None else [parse_slice(s, **kw) for s in specs]
    names = [s.name for s in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValidationError(f"slice names must be unique; repeated: {sorted(dup)}")
    return out
