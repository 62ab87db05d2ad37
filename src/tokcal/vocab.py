"""Vocabularies: each id's raw piece and the tokenizer's spelling convention, and what follows from them.

This is the one module that knows how tokenizers spell their pieces. A :class:`Vocabulary` holds
the raw pieces (``tokenizer.convert_ids_to_tokens``) and one **convention**; display strings, the
bytes a piece stands for, token types and word starts are all derived here.

Conventions (:data:`CONVENTIONS`):

* ``"byte-level"`` -- byte-level BPE (GPT-2, RoBERTa, Llama 3, Qwen, SmolLM, ...): every byte is
  spelled by one printable character of GPT-2's reversible table (``Ġ`` = space, ``Ċ`` = newline),
  so ``"Ġthe"`` is the bytes ``b" the"``. A piece with a character outside that table (an added
  token) stands for its own UTF-8 text.
* ``"sentencepiece"`` -- SentencePiece (Llama 2, Mistral, T5, Gemma; BPE or Unigram): ``▁`` is a
  space; with byte fallback, ``<0x0A>`` is the single byte 0x0A.
* ``"wordpiece"`` -- WordPiece (BERT): a piece starts a word unless it begins with ``##``; words are
  joined by spaces.
* ``"bytes"`` -- tiktoken-style: each id is a byte string. Pieces are stored in the byte-level
  spelling above (JSON holds printable text), read exactly as ``"byte-level"``.
* ``"text"`` -- pieces are already decoded text (API responses, tables of tokcal < 0.2): a leading
  whitespace character marks a word start.
* ``"none"`` -- strings with no known word-boundary information (tag names, plain word lists).

Token types (:data:`TOKEN_TYPES`), decided per id (:meth:`Vocabulary.token_types`):

1. an end-of-sequence id (the tokenizer's ``eos_token_id``, or a special piece in
   :data:`EOS_STRINGS`) -> ``eos``; another special id -> ``special``. Without the tokenizer's list of
   special ids, ``<...>``, ``<|...|>`` and ``[UPPER]`` pieces are special (``<0xNN>`` byte pieces are not).
2. The piece's text is its bytes decoded as UTF-8. A **word start** is a leading whitespace
   character (``Ġ``, ``▁``, a space, a newline) or, under WordPiece, the absence of ``##``.
3. What follows the word start decides: nothing or only whitespace -> ``whitespace``; a letter, or
   an incomplete UTF-8 character (a fragment of a multi-byte character, which sits inside the word
   it belongs to) -> ``word-initial`` with a word start, else ``continuation``; digits (and spaces)
   -> ``digits``; punctuation and symbols (Unicode categories P*, S*) -> ``punctuation``; else ``other``.
   Under ``"none"`` a piece with a letter is ``word-initial`` (nothing marks continuations).

References: Radford et al. (2019) for GPT-2's byte-to-unicode table; Kudo & Richardson (2018) for
SentencePiece's ``▁`` and byte fallback; Wu et al. (2016) for WordPiece's ``##``.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from .errors import SchemaError, ValidationError

CONVENTIONS = ("byte-level", "sentencepiece", "wordpiece", "bytes", "text", "none")
TOKEN_TYPES = ("word-initial", "continuation", "punctuation", "digits", "whitespace", "special", "eos", "other")
EOS_STRINGS = frozenset({"<eos>", "</s>", "<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<|end|>", "[SEP]",
                         "<|end_of_text|>", "<end_of_turn>"})
#: name of the rules above (recorded in the ``type`` slice's settings and signature)
TOKEN_TYPE_RULES = "tokcal-vocab-2"
_TYPE_INDEX = {t: i for i, t in enumerate(TOKEN_TYPES)}
_SP_SPACE = "▁"
_WP_CONT = "##"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (Radford et al. 2019, ``encoder.py``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


BYTE_TO_CHAR: dict[int, str] = _bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_CHAR.items()}


def byte_level_spelling(data: bytes) -> str:
    """``data`` in GPT-2's byte-level spelling (``b" the"`` -> ``"Ġthe"``)."""
    return "".join(BYTE_TO_CHAR[b] for b in data)


def byte_level_bytes(piece: str) -> bytes | None:
    """The bytes a byte-level piece spells, or None if a character is outside the table."""
    try:
        return bytes(CHAR_TO_BYTE[ch] for ch in piece)
    except KeyError:
        return None


def _sp_byte(piece: str) -> int | None:
    """The byte of a SentencePiece byte-fallback piece ``<0xNN>``, else None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def looks_special(piece: str) -> bool:
    """``<...>`` / ``<|...|>`` without spaces, or ``[UPPER]``: the usual spellings of special tokens."""
    if piece[:1] not in ("<", "[") or _sp_byte(piece) is not None:
        return False
    if piece.startswith("<") and piece.endswith(">") and len(piece) > 2 and " " not in piece:
        return True
    return piece.startswith("[") and piece.endswith("]") and piece[1:-1].isupper()


def detect_convention(pieces: Iterable[str | None]) -> str:
    """Guess the convention of a list of strings (used only when no tokenizer says it).

    ``wordpiece`` if at least 1 % of the pieces start with ``##`` and more; ``sentencepiece`` if a
    piece starts with ``▁``; ``byte-level`` if one starts with ``Ġ``; ``text`` if at least 2 % of the
    pieces with a letter start with whitespace; else ``none``.
    """
    n = wp = sp = bl = lettered = spaced = 0
    for p in pieces:
        if not p or looks_special(p):
            continue
        n += 1
        if p.startswith(_WP_CONT) and len(p) > 2 and p[2] != "#":
            wp += 1
        c = p[0]
        sp += c == _SP_SPACE
        bl += c == "Ġ"
        if any(ch.isalpha() for ch in p):
            lettered += 1
            spaced += c.isspace()
    if wp and wp >= 0.01 * n:
        return "wordpiece"
    if sp:
        return "sentencepiece"
    if bl:
        return "byte-level"
    if spaced and spaced >= 0.02 * lettered:
        return "text"
    return "none"


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def _body_type(body: str, partial: bool, start: bool, convention: str) -> str:
    """Type of the text after a piece's word start (steps 2-3 of the module docstring)."""
    if (body == "" or body.isspace()) and not partial:
        return "whitespace" if (body or start) else "other"
    if partial or any(ch.isalpha() for ch in body):
        if convention == "none":
            return "word-initial"
        return "word-initial" if start else "continuation"
    core = body.strip()
    if core.isdigit():
        return "digits"
    if all(_is_punct(ch) or ch.isspace() for ch in core):
        return "punctuation"
    return "other"


def _decode_partial(data: bytes) -> tuple[str, bool]:
    """UTF-8 text of ``data`` and whether it holds an incomplete character (dropped from the text)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="ignore"), True


class Vocabulary:
    """Raw pieces of a tokenizer (id -> piece) and their convention; display, bytes, types, word starts.

    ``pieces[i]`` is the tokenizer's spelling of id i (None: an id the tokenizer does not define,
    e.g. padding rows of a model's output layer). ``special_ids`` / ``eos_ids``: the tokenizer's
    special and end-of-sequence ids (None: recognised by spelling, :func:`looks_special`). Derived
    arrays are computed once per object and shared by every table that holds it.
    """

    def __init__(self, pieces: Sequence[str | None], convention: str, *,
                 special_ids: Iterable[int] | None = None, eos_ids: Iterable[int] | None = None,
                 name: str = "") -> None:
        if convention not in CONVENTIONS:
            raise ValidationError(f"vocabulary convention must be one of {CONVENTIONS}, got {convention!r}")
        self.pieces: tuple[str | None, ...] = tuple(None if p is None else str(p) for p in pieces)
        self.convention = convention
        self.name = str(name)
        n = len(self.pieces)
        self.special_ids = None if special_ids is None else frozenset(int(i) for i in special_ids)
        self.eos_ids = None if eos_ids is None else frozenset(int(i) for i in eos_ids)
        for what, ids in (("special_ids", self.special_ids), ("eos_ids", self.eos_ids)):
            bad = sorted(i for i in ids or () if not 0 <= i < n)
            if bad:
                raise ValidationError(f"vocabulary {what}: id {bad[0]} outside [0, {n})")

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_pieces(cls, pieces: Sequence[str | None], convention: str | None = None, **kw: Any) -> Vocabulary:
        """Pieces as spelled, with ``convention`` (None: :func:`detect_convention`)."""
        pieces = list(pieces)
        return cls(pieces, convention or detect_convention(pieces), **kw)

    @classmethod
    def from_bytes(cls, pieces: Sequence[bytes | None], *, special: Mapping[str, int] | None = None,
                   eos_ids: Iterable[int] | None = None, size: int | None = None, name: str = "") -> Vocabulary:
        """tiktoken-style: ``pieces[i]`` is id i's byte string; ``special`` maps special strings to ids.

        Special ids are spelled by their string; ids past the pieces (``size``) are undefined.
        """
        special = dict(special or {})
        n = max(len(pieces), size or 0, *(i + 1 for i in special.values()))
        out: list[str | None] = [None] * n
        for i, b in enumerate(pieces):
            if b is not None:
                out[i] = byte_level_spelling(bytes(b))
        for s, i in special.items():
            out[i] = s
        eos = set(eos_ids or ()) | {i for s, i in special.items() if s in EOS_STRINGS}
        return cls(out, "bytes", special_ids=special.values(), eos_ids=eos, name=name)

    @classmethod
    def from_tiktoken(cls, encoding: Any) -> Vocabulary:
        """From a ``tiktoken.Encoding`` (its byte pieces and special tokens)."""
        special = dict(getattr(encoding, "_special_tokens", {}) or {})
        n = int(encoding.n_vocab)
        special_ids = set(special.values())
        pieces: list[bytes | None] = []
        for i in range(n):
            if i in special_ids:
                pieces.append(None)
                continue
            try:
                pieces.append(encoding.decode_single_token_bytes(i))
            except KeyError:
                pieces.append(None)
        return cls.from_bytes(pieces, special=special, size=n, name=str(getattr(encoding, "name", "tiktoken")))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, size: int | None = None) -> Vocabulary:
        """From a Hugging Face tokenizer (``transformers`` fast or slow) or a ``tokenizers.Tokenizer``.

        The convention comes from the tokenizer's pipeline (byte-level decoder or pre-tokenizer,
        ``▁`` Metaspace/Replace decoder, WordPiece model or decoder, a SentencePiece model), else from
        the pieces. ``size``: the model's vocabulary size; ids past the tokenizer get no piece.
        """
        if hasattr(tokenizer, "convert_ids_to_tokens"):
            n = len(tokenizer)
            raw = tokenizer.convert_ids_to_tokens(list(range(n)))
            special = set(getattr(tokenizer, "all_special_ids", None) or [])
            for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
                if getattr(tok, "special", False):
                    special.add(int(i))
            eos = {getattr(tokenizer, "eos_token_id", None)}
            backend = getattr(tokenizer, "backend_tokenizer", None)
            name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        elif hasattr(tokenizer, "id_to_token"):
            n = int(tokenizer.get_vocab_size(with_added_tokens=True))
            raw = [tokenizer.id_to_token(i) for i in range(n)]
            special = {int(i) for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
            eos = set()
            backend = tokenizer
            name = "tokenizers.Tokenizer"
        else:
            raise ValidationError(f"cannot read a vocabulary from {type(tokenizer).__name__}: expected a "
                                  "transformers tokenizer or a tokenizers.Tokenizer")
        size = n if size is None else int(size)
        pieces: list[str | None] = [None if p is None else str(p) for p in raw[:size]] + [None] * max(0, size - n)
        special = {i for i in special if i is not None and 0 <= i < size}
        eos = {i for i in eos if i is not None and 0 <= i < size}
        eos |= {i for i in special if pieces[i] in EOS_STRINGS}
        conv = _pipeline_convention(backend) if backend is not None else None
        if conv is None and hasattr(tokenizer, "sp_model"):
            conv = "sentencepiece"
        return cls(pieces, conv or detect_convention(p for i, p in enumerate(pieces) if i not in special),
                   special_ids=special, eos_ids=eos, name=name)

    # -- (de)serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"convention": self.convention, "pieces": list(self.pieces),
                "special_ids": None if self.special_ids is None else sorted(self.special_ids),
                "eos_ids": None if self.eos_ids is None else sorted(self.eos_ids), "name": self.name}

    @classmethod
    def from_dict(cls, d: Any, where: str = "vocabulary") -> Vocabulary:
        if not isinstance(d, Mapping) or not isinstance(d.get("pieces"), list):
            raise SchemaError(f"{where}: vocabulary must be an object with a 'pieces' list")
        if d.get("convention") not in CONVENTIONS:
            raise SchemaError(f"{where}: vocabulary convention {d.get('convention')!r} is not one of {CONVENTIONS}")
        bad = next((i for i, p in enumerate(d["pieces"]) if p is not None and not isinstance(p, str)), None)
        if bad is not None:
            raise SchemaError(f"{where}: vocabulary piece {bad} is {d['pieces'][bad]!r}, not a string or null")
        for key in ("special_ids", "eos_ids"):
            ids = d.get(key)
            if ids is not None and (not isinstance(ids, list) or
                                    not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
                raise SchemaError(f"{where}: vocabulary '{key}' must be a list of integers or null")
        try:
            return cls(d["pieces"], d["convention"], special_ids=d.get("special_ids"), eos_ids=d.get("eos_ids"),
                       name=str(d.get("name") or ""))
        except ValidationError as e:
            raise SchemaError(f"{where}: {e}") from None

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def size(self) -> int:
        return len(self.pieces)

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size}, convention={self.convention!r}, name={self.name!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocabulary) and self.convention == other.convention
                and self.pieces == other.pieces and self.special_ids == other.special_ids
                and self.eos_ids == other.eos_ids)

    __hash__ = None  # type: ignore[assignment]  # compared by value, not hashed

    # -- per-id properties ---------------------------------------------------------------------

    def is_special(self, i: int) -> bool:
        p = self.pieces[i]
        if p is None:
            return False
        if self.special_ids is not None:
            return i in self.special_ids or i in (self.eos_ids or ())
        return looks_special(p) or p in EOS_STRINGS

    def is_eos(self, i: int) -> bool:
        p = self.pieces[i]
        if self.eos_ids is not None:
            return i in self.eos_ids
        return p in EOS_STRINGS

    def piece_bytes(self, i: int) -> bytes | None:
        """The bytes id i contributes to a text (None: undefined or special ids). WordPiece: without
        ``##`` and without the space a word start brings (see :meth:`decode`)."""
        return self._bytes[i]

    @cached_property
    def _bytes(self) -> list[bytes | None]:
        out: list[bytes | None] = []
        conv = self.convention
        special = self._special_list
        for i, p in enumerate(self.pieces):
            if p is None or special[i]:
                out.append(None)
            elif conv in ("byte-level", "bytes"):
                b = byte_level_bytes(p)
                out.append(p.encode("utf-8") if b is None else b)
            elif conv == "sentencepiece":
                b1 = _sp_byte(p)
                out.append(bytes([b1]) if b1 is not None else p.replace(_SP_SPACE, " ").encode("utf-8"))
            elif conv == "wordpiece":
                out.append((p[2:] if p.startswith(_WP_CONT) and len(p) > 2 else p).encode("utf-8"))
            else:
                out.append(p.encode("utf-8"))
        return out

    @cached_property
    def _starts(self) -> np.ndarray:
        out = np.zeros(self.size, bool)
        special = self._special_list
        for i, p in enumerate(self.pieces):
            if p is None or special[i]:
                continue
            if self.convention == "wordpiece":
                out[i] = not (p.startswith(_WP_CONT) and len(p) > 2)
            elif self.convention != "none":
                b = self._bytes[i]
                out[i] = bool(b) and b[:1].isspace()
        return out

    def word_starts(self) -> np.ndarray:
        """bool [V]: the piece begins a new word by its spelling (leading whitespace, ``Ġ``, ``▁``;
        WordPiece: no ``##``). Specials and undefined ids: False."""
        return self._starts

    def ends_with_space(self) -> np.ndarray:
        """bool [V]: the piece's text ends in whitespace (the next piece then starts a word)."""
        return np.fromiter((bool(b) and b[-1:].isspace() for b in self._bytes), bool, self.size)

    def starts_word(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """bool per token of one sequence ``ids``: token j starts a word if its piece does, or it is the
        first token, or the previous token is special or ends in whitespace (and j is not special)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return np.zeros(0, bool)
        starts = self._starts[ids].copy()
        special = self._special_mask
        after = np.ones(ids.size, bool)
        after[1:] = special[ids[:-1]] | self.ends_with_space()[ids[:-1]]
        if self.convention == "wordpiece":
            return starts
        return (starts | after) & ~special[ids]

    @cached_property
    def _special_list(self) -> list[bool]:
        return [self.is_special(i) for i in range(self.size)]

    @cached_property
    def _special_mask(self) -> np.ndarray:
        return np.asarray(self._special_list, dtype=bool).reshape(self.size)

    @cached_property
    def _display(self) -> list[str]:
        out = []
        for i, p in enumerate(self.pieces):
            b = self._bytes[i]
            if p is None:
                out.append(f"<{i}>")
            elif b is None:
                out.append(p)
            else:
                out.append(b.decode("utf-8", errors="backslashreplace"))
        return out

    def display(self, i: int) -> str:
        """Readable text of id i: its decoded bytes (an incomplete UTF-8 byte as ``\\xNN``); a special
        token as spelled; ``<i>`` for an undefined id."""
        if not 0 <= i < self.size:
            return f"<{int(i)}>"
        return self._display[i]

    def display_strings(self) -> list[str]:
        """:meth:`display` of every id (a list shared with the object: do not modify)."""
        return self._display

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a run of ids: their bytes joined and decoded (incomplete characters as U+FFFD),
        WordPiece words separated by spaces, specials as spelled."""
        parts: list[bytes] = []
        wp = self.convention == "wordpiece"
        for j, i in enumerate(int(x) for x in ids):
            if not 0 <= i < self.size:
                parts.append(f"<{i}>".encode())
                continue
            b = self._bytes[i]
            if b is None:
                b = self._display[i].encode("utf-8")
            if wp and j and self._starts[i]:
                parts.append(b" ")
            parts.append(b)
        return b"".join(parts).decode("utf-8", errors="replace")

    @cached_property
    def _types(self) -> np.ndarray:
        out = np.empty(self.size, np.int32)
        for i, p in enumerate(self.pieces):
            out[i] = _TYPE_INDEX[self._type_of(i, p)]
        out.flags.writeable = False
        return out

    def _type_of(self, i: int, p: str | None) -> str:
        if p is None:
            return "other"
        if self.is_eos(i):
            return "eos"
        if self._special_list[i]:
            return "special"
        b = self._bytes[i]
        if b is None:
            return "other"
        if self.convention == "wordpiece":
            text, partial = _decode_partial(b)
            return _body_type(text, partial, bool(self._starts[i]), "wordpiece")
        start = bool(self._starts[i])
        text, partial = _decode_partial(b)
        body = text.lstrip() if start else text
        return _body_type(body, partial, start, self.convention)

    def token_types(self) -> np.ndarray:
        """int32 [V] (read-only): index into :data:`TOKEN_TYPES` of every id's type (module docstring)."""
        return self._types

    def token_type(self, i: int) -> str:
        return TOKEN_TYPES[int(self._types[i])]

    @cached_property
    def _normalized(self) -> list[str]:
        return [d.strip().lower() for d in self._display]

    def normalized(self) -> list[str]:
        """Every id's display text without surrounding whitespace, lower-cased (word-list matching)."""
        return self._normalized

    # -- lookups (string / bytes -> id) ----------------------------------------------------------

    @cached_property
    def _by_piece(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, p in enumerate(self.pieces):
            if p is not None:
                out.setdefault(p, i)
        return out

    @cached_property
    def _by_bytes(self) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for i, b in enumerate(self._bytes):
            if b is not None and self.convention != "wordpiece":
                out.setdefault(b, i)
        return out

    @cached_property
    def _by_display(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, s in enumerate(self._display):
            if self.pieces[i] is not None:
                out.setdefault(s, i)
        return out

    def id_of_piece(self, piece: str) -> int | None:
        """The id spelled ``piece`` (first one if repeated), else None."""
        return self._by_piece.get(piece)

    def id_of_bytes(self, data: bytes) -> int | None:
        """The id whose bytes are ``data`` (not for WordPiece, whose pieces carry no bytes), else None."""
        return self._by_bytes.get(bytes(data))

    def id_of_text(self, text: str) -> int | None:
        """The id whose display text is ``text`` (what APIs return as ``token``), else None."""
        return self._by_display.get(text)


def _pipeline_convention(backend: Any) -> str | None:
    """Convention from a ``tokenizers.Tokenizer`` pipeline (its JSON: model, pre-tokenizer, decoder)."""
    try:
        spec = json.loads(backend.to_str())
    except Exception:  # noqa: BLE001 - a backend without a JSON form: fall back to the pieces
        return None

    def kinds(node: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                found.add(node["type"])
                if node["type"] == "Replace" and (node.get("pattern") or {}).get("String") == _SP_SPACE:
                    found.add("Metaspace")
            for key in ("decoders", "pretokenizers"):
                for sub in node.get(key) or []:
                    found |= kinds(sub)
        return found

    model = (spec.get("model") or {}).get("type")
    found = kinds(spec.get("decoder")) | kinds(spec.get("pre_tokenizer"))
    if "ByteLevel" in found:
        return "byte-level"
    if model == "WordPiece" or "WordPiece" in found:
        return "wordpiece"
    if "Metaspace" in found or model == "Unigram":
        return "sentencepiece"
    return None


def type_counts(vocab: Vocabulary) -> dict[str, int]:
    """How many ids have each type (for summaries and tests)."""
    c = np.bincount(vocab.token_types(), minlength=len(TOKEN_TYPES))
    return {t: int(c[k]) for k, t in enumerate(TOKEN_TYPES)}
