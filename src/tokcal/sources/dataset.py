"""A dataset directory written as collection goes, that a rerun resumes.

Layout::

    DATASET_DIR/part-00000.parquet ...   TokenTable parts, each holding whole documents
    DATASET_DIR/manifest.json            settings, their hash, and for each part its documents

Order of a flush: the part is written atomically (temp file + rename), then the manifest is
rewritten atomically. A crash between the two leaves a complete part the manifest does not
list; on reopen such parts (and any stale temp files) are deleted and their documents redone.
So a directory never shows a half-written part, and every listed document appears exactly once.

Resume: documents listed in the manifest are skipped. A document is identified by its id; its
content hash and sequence id must match what was recorded, and the settings hash must match,
otherwise :class:`~tokcal.errors.TokcalError` refuses to mix two different collections.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .._io import atomic_write, read_json
from ..errors import TokcalError
from ..table import TokenTable

MANIFEST = "manifest.json"
FORMAT = "tokcal-dataset"
VERSION = 1
DEFAULT_PART_ROWS = 131072


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), hex."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a dataset directory, or None when there is none."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    m = read_json(path, "dataset manifest")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise TokcalError(f"{path}: not a tokcal dataset manifest")
    if m.get("version") != VERSION:
        raise TokcalError(f"{path}: dataset manifest version {m.get('version')!r}; this tokcal reads {VERSION}")
    return m


class DatasetWriter:
    """Append TokenTables of whole documents to a dataset directory in parts of ~``part_rows`` rows.

    ``settings``: everything that determines the table values (model, task, top_k, windows, ...);
    JSON-able. Use :meth:`is_done` to skip finished documents, :meth:`add` to buffer a table with
    the documents it covers, :meth:`close` (or the context manager) to flush the rest.
    """

    def __init__(self, out_dir: str | os.PathLike, settings: dict[str, Any], *,
                 part_rows: int = DEFAULT_PART_ROWS) -> None:
        if part_rows < 1:
            raise TokcalError(f"part_rows must be >= 1, got {part_rows}")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise TokcalError(f"{self.out_dir}: exists and is not a directory")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self.settings_hash = stable_hash(self.settings)
        self.part_rows = part_rows
        self._buffer: list[TokenTable] = []
        self._buffer_docs: list[dict[str, Any]] = []
        self._buffer_rows = 0
        m = read_manifest(self.out_dir)
        if m is None:
            stray = sorted(p.name for p in self.out_dir.glob("*.parquet"))
            if stray:
                raise TokcalError(f"{self.out_dir}: holds Parquet files but no {MANIFEST} "
                                  f"({stray[:3]}...); choose an empty or tokcal-collected directory")
            m = {"format": FORMAT, "version": VERSION, "settings_hash": self.settings_hash,
                 "settings": self.settings, "parts": []}
        elif m.get("settings_hash") != self.settings_hash:
            diff = sorted(k for k in set(m.get("settings", {})) | set(self.settings)
                          if m.get("settings", {}).get(k) != self.settings.get(k))
            raise TokcalError(f"{self.out_dir}: was collected with different settings (differs in {diff}); "
                              "refusing to mix. Use a new output directory or the original settings.")
        self.manifest = m
        self._cleanup()
        self.done: dict[str, dict[str, Any]] = {d["id"]: d for p in m["parts"] for d in p["documents"]}

    def _cleanup(self) -> None:
        listed = {p["file"] for p in self.manifest["parts"] if p["file"]}
        for p in self.out_dir.glob("part-*.parquet"):
            if p.name not in listed:
                p.unlink()
        for p in self.out_dir.glob(".*.tmp"):
            p.unlink()
        missing = [f for f in sorted(listed) if not (self.out_dir / f).exists()]
        if missing:
            raise TokcalError(f"{self.out_dir}: manifest lists missing part(s) {missing}; the dataset is damaged")

    def is_done(self, doc_id: str, content_hash: str, sequence_id: int) -> bool:
        """True when the document was written before; raises if it changed since."""
        rec = self.done.get(doc_id)
        if rec is None:
            return False
        if rec["hash"] != content_hash or rec["sequence_id"] != sequence_id:
            raise TokcalError(f"{self.out_dir}: document {doc_id!r} changed since it was collected "
                              f"(content or order of inputs differ); refusing to mix")
        return True

    def add(self, table: TokenTable | None, documents: list[dict[str, Any]]) -> None:
        """Buffer ``table`` (may be None when the documents had no tokens to predict) covering
        ``documents`` (dicts with ``id``, ``hash``, ``sequence_id``, ``rows``); flush when full."""
        if table is not None:
            self._buffer.append(table)
            self._buffer_rows += len(table)
        self._buffer_docs.extend(documents)
        if self._buffer_rows >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffer_docs:
            return
        parts = self.manifest["parts"]
        index = len(parts)
        entry: dict[str, Any] = {"file": None, "rows": self._buffer_rows, "documents": self._buffer_docs}
        if self._buffer:
            name = f"part-{index:05d}.parquet"
            TokenTable.concat(self._buffer).write_parquet(self.out_dir / name)
            entry["file"] = name
        new = dict(self.manifest, parts=[*parts, entry])
        atomic_write(self.out_dir / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(new, indent=1)))
        self.manifest = new
        for d in self._buffer_docs:
            self.done[d["id"]] = d
        self._buffer, self._buffer_docs, self._buffer_rows = [], [], 0

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
