"""A dataset directory written as collection goes, by one or several writers, that a rerun resumes.

Layout::

    DATASET_DIR/manifest.json                 settings, their hash, and the merged list of parts
    DATASET_DIR/writers/WRITER.json           one journal per writer: its parts and their documents
    DATASET_DIR/part-WRITER-000000.parquet    TokenTable parts, each holding whole documents

A writer is one process that collects (the single process of ``tokcal collect``, one torchrun
rank, one Ray actor); it owns its journal and the part files named after it, and never touches
another writer's. So several writers share one directory without locks, on a local disk or on a
network file system.

Order of a flush: the part is written atomically (temp file + rename), then the writer's journal
is rewritten atomically. A crash between the two leaves a complete part that no journal lists; the
next writer of that name deletes it (and its own stale temp files) and its documents are redone.
Readers see only listed parts (:func:`dataset_parts`), so a directory never shows a half-written
or unlisted part, and every listed document appears exactly once.

Merge: :meth:`DatasetWriter.merge` (called by ``close`` of a single writer, and by rank 0 after
the others finished in a distributed run) rewrites ``manifest.json`` atomically with the union of
the journals. The journals stay: they are the record, the manifest their merged view.

Periodic flushing: finished documents are written when ``part_rows`` rows are buffered or when
``flush_seconds`` have passed since the last flush, whichever comes first, so a kill loses at most
the documents finished in the last ``flush_seconds`` plus those in flight. A document is the unit
of resumption: one in flight when the process dies is redone from its start.

Resume: documents listed by any journal (or by the manifest) are skipped, whichever writer wrote
them, so a rerun may use another number of ranks. A document is identified by its id; its content
hash and sequence id must match what was recorded, and the settings hash must match, otherwise
:class:`~tokcal.errors.TokcalError` refuses to mix two different collections.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from .._io import atomic_write, read_json
from ..errors import TokcalError
from ..table import TokenTable
from ..validation import Float, Params, PositiveInt, check_params

MANIFEST = "manifest.json"
WRITERS = "writers"
FORMAT = "tokcal-dataset"
JOURNAL_FORMAT = "tokcal-dataset-writer"
VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_PART_ROWS = 131072
DEFAULT_FLUSH_SECONDS = 5.0
DEFAULT_WRITER = "main"
_WRITER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,63}$")
_LEGACY_PART = re.compile(r"^part-\d{5}\.parquet$")  # version-1 part names


def _writer_name(name: str) -> str:
    if not _WRITER_NAME.match(name):
        raise ValueError("must be 1-64 letters, digits, '_' or '.', starting with a letter or digit")
    return name


class _WriterParams(Params):
    part_rows: PositiveInt
    flush_seconds: Annotated[Float, Field(ge=0)]  # finite: Params refuse infinity
    writer: Annotated[str, AfterValidator(_writer_name)]


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), hex."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _check_parts(path: Path, parts: Any) -> list[dict[str, Any]]:
    """Structural check of a ``parts`` list (manifest or journal)."""
    if not isinstance(parts, list):
        raise TokcalError(f"{path}: 'parts' must be a list, got {type(parts).__name__}")
    for i, p in enumerate(parts):
        if not isinstance(p, dict) or not isinstance(p.get("documents"), list) or "file" not in p or \
                not (p["file"] is None or isinstance(p["file"], str)):
            raise TokcalError(f"{path}: parts[{i}] must be an object with 'file' (string or null) and 'documents'")
        if isinstance(p["file"], str) and (Path(p["file"]).name != p["file"] or not p["file"].endswith(".parquet")):
            raise TokcalError(f"{path}: parts[{i}].file {p['file']!r} is not a part file name")
        for j, d in enumerate(p["documents"]):
            if not isinstance(d, dict) or not isinstance(d.get("id"), str) or not isinstance(d.get("hash"), str) \
                    or isinstance(d.get("sequence_id"), bool) or not isinstance(d.get("sequence_id"), int):
                raise TokcalError(f"{path}: parts[{i}].documents[{j}] must have 'id', 'hash' (strings) and "
                                  "'sequence_id' (integer)")
    return parts


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a dataset directory, or None when there is none.

    Its ``parts`` are the union of the merged list and of every writer's journal (so it is complete
    even while writers run or after a kill), sorted by file name.
    """
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    m = read_json(path, "dataset manifest")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise TokcalError(f"{path}: not a tokcal dataset manifest")
    if m.get("version") not in READABLE_VERSIONS:
        raise TokcalError(f"{path}: dataset manifest version {m.get('version')!r}; this tokcal reads "
                          f"{list(READABLE_VERSIONS)}")
    if not isinstance(m.get("settings_hash"), str) or not isinstance(m.get("settings"), dict):
        raise TokcalError(f"{path}: manifest lacks 'settings' and 'settings_hash'")
    parts = {_part_key(p, j): p for j, p in enumerate(_check_parts(path, m.get("parts", [])))}
    for jpath, journal in _journals(Path(out_dir)).items():
        if journal["settings_hash"] != m["settings_hash"]:
            raise TokcalError(f"{jpath}: written with other settings than {path}; the dataset mixes two collections")
        for j, p in enumerate(journal["parts"]):
            parts[_part_key(p, j)] = p
    return dict(m, parts=[parts[k] for k in sorted(parts)])


def _part_key(part: dict[str, Any], j: int) -> tuple[str, str, int]:
    """(writer, index) of a part; version-1 parts (one writer, no name) by file name or position."""
    if isinstance(part.get("writer"), str) and isinstance(part.get("index"), int):
        return (part["writer"], "", part["index"])
    return ("", str(part.get("file") or ""), j)


def _journals(out_dir: Path) -> dict[Path, dict[str, Any]]:
    out = {}
    folder = out_dir / WRITERS
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        j = read_json(path, "dataset writer journal")
        if not isinstance(j, dict) or j.get("format") != JOURNAL_FORMAT or not isinstance(j.get("settings_hash"), str):
            raise TokcalError(f"{path}: not a tokcal dataset writer journal")
        _check_parts(path, j.get("parts"))
        out[path] = j
    return out


def dataset_parts(out_dir: str | os.PathLike) -> list[Path] | None:
    """The part files a dataset directory lists (manifest and journals), in name order; None when
    the directory has no manifest (a plain folder of Parquet files)."""
    m = read_manifest(out_dir)
    if m is None:
        return None
    files = sorted({p["file"] for p in m["parts"] if p["file"]})
    missing = [f for f in files if not (Path(out_dir) / f).exists()]
    if missing:
        raise TokcalError(f"{out_dir}: manifest lists missing part(s) {missing[:3]}; the dataset is damaged")
    return [Path(out_dir) / f for f in files]


class DatasetWriter:
    """Append TokenTables of whole documents to a dataset directory, as writer ``writer``.

    ``settings``: everything that determines the table values (model, task, top_k, windows, ...);
    JSON-able, identical for every writer of a directory. ``part_rows``: rows per part (a part is
    written once that many are buffered); ``flush_seconds``: also write what is buffered once this
    long has passed since the last write (0: after every :meth:`add`). ``writer``: this writer's
    name (letters, digits, ``_`` and ``.``), unique among the processes writing at the same time.

    Use :meth:`is_done` to skip finished documents, :meth:`add` to buffer a table with the
    documents it covers, :meth:`close` (or the context manager) to flush the rest and merge the
    manifest (``merge=False``: leave that to a coordinator calling :meth:`merge`).
    """

    def __init__(self, out_dir: str | os.PathLike, settings: dict[str, Any], *,
                 part_rows: int = DEFAULT_PART_ROWS, flush_seconds: float = DEFAULT_FLUSH_SECONDS,
                 writer: str = DEFAULT_WRITER) -> None:
        args = check_params("DatasetWriter", _WriterParams, part_rows=part_rows, flush_seconds=flush_seconds,
                            writer=writer)
        part_rows, flush_seconds, writer = args.part_rows, args.flush_seconds, args.writer
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise TokcalError(f"{self.out_dir}: exists and is not a directory")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / WRITERS).mkdir(exist_ok=True)
        except OSError as e:
            raise TokcalError(f"{self.out_dir}: cannot create the output directory ({e.strerror or e})") from None
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self.settings_hash = stable_hash(self.settings)
        self.part_rows = part_rows
        self.flush_seconds = float(flush_seconds)
        self.writer = writer
        self.journal_path = self.out_dir / WRITERS / f"{writer}.json"
        self._buffer: list[TokenTable] = []
        self._buffer_docs: list[dict[str, Any]] = []
        self._buffer_rows = 0
        self._last_flush = time.monotonic()
        m = read_manifest(self.out_dir)
        if m is None:
            stray = sorted(p.name for p in self.out_dir.glob("*.parquet"))
            if stray:
                raise TokcalError(f"{self.out_dir}: holds Parquet files but no {MANIFEST} "
                                  f"({stray[:3]}...); choose an empty or tokcal-collected directory")
            m = {"format": FORMAT, "version": VERSION, "settings_hash": self.settings_hash,
                 "settings": self.settings, "parts": []}
            # every writer writes the same bytes, so concurrent creators cannot disagree
            self._write_json(self.out_dir / MANIFEST, m)
        elif m["settings_hash"] != self.settings_hash:
            diff = sorted(k for k in set(m["settings"]) | set(self.settings)
                          if m["settings"].get(k) != self.settings.get(k))
            raise TokcalError(f"{self.out_dir}: was collected with different settings (differs in {diff}); "
                              "refusing to mix. Use a new output directory or the original settings.")
        self.parts: list[dict[str, Any]] = []
        if self.journal_path.exists():
            self.parts = _journals(self.out_dir)[self.journal_path]["parts"]
        self._cleanup(m)
        self.done: dict[str, dict[str, Any]] = {d["id"]: d for p in m["parts"] for d in p["documents"]}
        self._next = 1 + max([int(p["index"]) for p in self.parts if isinstance(p.get("index"), int)], default=-1)

    @staticmethod
    def _write_json(path: Path, obj: Any) -> None:
        text = json.dumps(obj, indent=1, allow_nan=False)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def part_name(self, index: int) -> str:
        return f"part-{self.writer}-{index:06d}.parquet"

    def _cleanup(self, manifest: dict[str, Any]) -> None:
        """Delete this writer's unlisted parts and stale temp files (a crash between part and journal)."""
        listed = {p["file"] for p in manifest["parts"] if p["file"]}
        own = f"part-{self.writer}-"
        for p in self.out_dir.glob("part-*.parquet"):
            if p.name not in listed and (p.name.startswith(own) or _LEGACY_PART.match(p.name)):
                p.unlink()
        for p in [*self.out_dir.glob(f".{own}*.tmp"), *(self.out_dir / WRITERS).glob(f".{self.writer}.json.*.tmp")]:
            p.unlink(missing_ok=True)
        missing = [f for f in sorted(listed) if not (self.out_dir / f).exists()]
        if missing:
            raise TokcalError(f"{self.out_dir}: manifest lists missing part(s) {missing}; the dataset is damaged")

    def is_done(self, doc_id: str, content_hash: str, sequence_id: int) -> bool:
        """True when the document was written before (by any writer); raises if it changed since."""
        rec = self.done.get(doc_id)
        if rec is None:
            return False
        if rec["hash"] != content_hash or rec["sequence_id"] != sequence_id:
            raise TokcalError(f"{self.out_dir}: document {doc_id!r} changed since it was collected "
                              f"(content or order of inputs differ); refusing to mix")
        return True

    @property
    def buffered_documents(self) -> int:
        return len(self._buffer_docs)

    def add(self, table: TokenTable | None, documents: list[dict[str, Any]]) -> None:
        """Buffer ``table`` (may be None when the documents had no tokens to predict) covering
        ``documents`` (dicts with ``id``, ``hash``, ``sequence_id``, ``rows``); flush when
        ``part_rows`` rows are buffered or ``flush_seconds`` have passed."""
        if table is not None:
            self._buffer.append(table)
            self._buffer_rows += len(table)
        self._buffer_docs.extend(documents)
        if self._buffer_rows >= self.part_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered documents as one part, then this writer's journal (both atomic)."""
        self._last_flush = time.monotonic()
        if not self._buffer_docs:
            return
        entry: dict[str, Any] = {"file": None, "writer": self.writer, "index": self._next,
                                 "rows": self._buffer_rows, "documents": self._buffer_docs}
        if self._buffer:
            name = self.part_name(self._next)
            TokenTable.concat(self._buffer).write_parquet(self.out_dir / name)
            entry["file"] = name
        parts = [*self.parts, entry]
        self._write_json(self.journal_path, {"format": JOURNAL_FORMAT, "version": VERSION, "writer": self.writer,
                                             "settings_hash": self.settings_hash, "parts": parts})
        self.parts = parts
        self._next += 1
        for d in self._buffer_docs:
            self.done[d["id"]] = d
        self._buffer, self._buffer_docs, self._buffer_rows = [], [], 0
        self._last_flush = time.monotonic()

    def merge(self) -> dict[str, Any]:
        """:func:`merge_manifest` of this writer's directory."""
        return merge_manifest(self.out_dir)

    def close(self, merge: bool = True) -> None:
        self.flush()
        if merge:
            self.merge()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.flush()  # finished documents survive an exception or Ctrl-C (KeyboardInterrupt)


def merge_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Rewrite ``manifest.json`` atomically with the union of all journals; returns it. Call it when no
    writer of the directory is running (a coordinator after a barrier, or after its actors finished)."""
    out_dir = Path(out_dir)
    m = read_manifest(out_dir)
    if m is None:
        raise TokcalError(f"{out_dir}: no {MANIFEST} to merge")
    merged = {"format": FORMAT, "version": VERSION, "settings_hash": m["settings_hash"],
              "settings": m["settings"], "parts": m["parts"]}
    seen: dict[str, str] = {}
    for p in merged["parts"]:
        for d in p["documents"]:
            if d["id"] in seen:
                raise TokcalError(f"{out_dir}: document {d['id']!r} is listed by two parts "
                                  f"({seen[d['id']]} and {p['file']}); two collections ran at once")
            seen[d["id"]] = str(p["file"])
    DatasetWriter._write_json(out_dir / MANIFEST, merged)
    return merged
