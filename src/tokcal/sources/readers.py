"""Input readers: plain text, JSONL documents, JSONL source/target pairs, CoNLL token/tag files.

Every reader returns items with a stable ``id`` (``"<file>#<n>"``) used by the dataset manifest
to resume, and reports a bad line as ``TokcalError("<file>:<line>: <problem>")``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._io import parse_json
from ..errors import TokcalError


@dataclass(frozen=True)
class Document:
    """One text to score (causal LM). ``groups``: categorical metadata, e.g. ``{"domain": "bible"}``."""

    id: str
    text: str
    groups: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pair:
    """A source/target pair (seq2seq): the decoder is teacher-forced on ``target``."""

    id: str
    source: str
    target: str
    groups: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaggedSentence:
    """Words with one tag each (token classification); ``tags`` may be None (unknown)."""

    id: str
    words: tuple[str, ...]
    tags: tuple[str, ...] | None
    groups: dict[str, str] = field(default_factory=dict)


def _read_lines(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise TokcalError(f"{p}: no such file")
    try:
        return p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TokcalError(f"{p}: not UTF-8 text ({e})") from None


def read_text(path: str | os.PathLike, *, split: str = "file", groups: dict[str, str] | None = None
              ) -> list[Document]:
    """Plain text: the whole file as one document (``split="file"``) or one document per
    blank-line-separated paragraph (``split="paragraph"``; lines of a paragraph keep their newlines)."""
    if split not in ("file", "paragraph"):
        raise TokcalError(f"split must be 'file' or 'paragraph', got {split!r}")
    lines = _read_lines(path)
    g = dict(groups or {})
    if split == "file":
        text = "\n".join(lines)
        return [Document(f"{path}#0", text, g)] if text.strip() else []
    docs, cur = [], []
    for line in [*lines, ""]:
        if line.strip():
            cur.append(line)
        elif cur:
            docs.append(Document(f"{path}#{len(docs)}", "\n".join(cur), g))
            cur = []
    return docs


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line of a JSON-lines file, streamed; a
    :class:`TokcalError` names ``file:line`` for a line that is not a JSON object."""
    p = Path(path)
    if not p.is_file():
        raise TokcalError(f"{p}: no such file")
    try:
        with p.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                obj = parse_json(line, f"{p}:{lineno}", allow_nonfinite=True)
                if not isinstance(obj, dict):
                    raise TokcalError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except UnicodeDecodeError as e:
        raise TokcalError(f"{p}: not UTF-8 text ({e})") from None


def _field(path, lineno: int, obj: dict, name: str) -> str:
    if name not in obj:
        raise TokcalError(f"{path}:{lineno}: missing field '{name}' (fields: {sorted(obj)})")
    val = obj[name]
    if not isinstance(val, str):
        raise TokcalError(f"{path}:{lineno}: field '{name}' must be a string, got {type(val).__name__}")
    return val


def _groups(path, lineno: int, obj: dict, names: Sequence[str], extra: dict[str, str] | None) -> dict[str, str]:
    g = dict(extra or {})
    for name in names:
        if name not in obj or obj[name] is None:
            raise TokcalError(f"{path}:{lineno}: missing group field '{name}'")
        if not isinstance(obj[name], (str, int, bool)):
            raise TokcalError(f"{path}:{lineno}: group field '{name}' must be a string or number")
        g[name] = str(obj[name])
    return g


def read_jsonl(path: str | os.PathLike, *, text_field: str = "text", group_fields: Sequence[str] = (),
               groups: dict[str, str] | None = None) -> list[Document]:
    """JSON Lines, one document per line: ``{"text": ..., "domain": ...}``; blank lines skipped."""
    return [Document(f"{path}#{lineno}", _field(path, lineno, obj, text_field),
                     _groups(path, lineno, obj, group_fields, groups))
            for lineno, obj in iter_jsonl(path)]


def read_pairs_jsonl(path: str | os.PathLike, *, source_field: str = "source", target_field: str = "target",
                     group_fields: Sequence[str] = (), groups: dict[str, str] | None = None) -> list[Pair]:
    """JSON Lines of source/target pairs: ``{"source": ..., "target": ...}``."""
    return [Pair(f"{path}#{lineno}", _field(path, lineno, obj, source_field), _field(path, lineno, obj, target_field),
                 _groups(path, lineno, obj, group_fields, groups))
            for lineno, obj in iter_jsonl(path)]


def read_conll(path: str | os.PathLike, *, word_column: int = 0, tag_column: int = -1,
               groups: dict[str, str] | None = None) -> list[TaggedSentence]:
    """CoNLL-style: one ``word ... tag`` line per token (whitespace-separated columns), blank
    lines between sentences, ``-DOCSTART-`` lines ignored. Every line needs the same column count."""
    sents: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    ncols = None
    start = 0
    lines = _read_lines(path)
    for lineno, line in enumerate([*lines, ""], 1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if words:
                sents.append(TaggedSentence(f"{path}#{start}", tuple(words), tuple(tags), dict(groups or {})))
                words, tags = [], []
            continue
        if ncols is None:
            ncols = len(cols)
            if ncols < 2:
                raise TokcalError(f"{path}:{lineno}: expected at least 2 columns (word and tag), got 1: {line!r}")
        if len(cols) != ncols:
            raise TokcalError(f"{path}:{lineno}: expected {ncols} columns like the first token line, "
                              f"got {len(cols)}: {line!r}")
        if not words:
            start = lineno
        try:
            words.append(cols[word_column])
            tags.append(cols[tag_column])
        except IndexError:
            raise TokcalError(f"{path}:{lineno}: no column {word_column}/{tag_column} in {line!r}") from None
    return sents
