"""Records of a log file: JSON lines, server-sent events, one JSON document, a JSON array.

* **JSON lines**: one response per line (what most logging code writes), streamed line by line;
* **server-sent events** saved verbatim: ``data: {...}`` lines (``data: [DONE]`` and comments skipped);
* **one document**: a pretty-printed response, several concatenated ones, or a JSON array of
  responses (read whole: such files are written by hand or by small scripts);
* the **OpenAI Batch API** output wrapper ``{"custom_id", "response": {"status_code", "body"},
  "error"}`` is unwrapped; a failed request (``error`` set, no ``response`` or a status other than 200)
  is a response without log-probs.

Each record comes with the line it starts on, for error messages ``file:line``. orjson parses
when it is installed (the ``api`` extra), the standard library otherwise (and for lines orjson
refuses, such as ``-Infinity``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import TokcalError

try:
    import orjson

    def _loads(s: bytes) -> Any:
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return json.loads(s)
except ImportError:  # pragma: no cover - the standard library is enough, only slower
    _loads = json.loads


def _iter_document(p: Path, text: str) -> Iterator[tuple[int, Any]]:
    dec = json.JSONDecoder()
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise TokcalError(f"{p}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise TokcalError(f"{p}:{line}: not valid JSON (nested too deeply)") from None
        if isinstance(obj, list):
            for j, item in enumerate(obj):
                yield line, (item, f"[{j}]")
        else:
            yield line, (obj, "")


def iter_records(path: str | Path) -> Iterator[tuple[int, Any, str]]:
    """``(line, object, index)`` of every response in a log file (``index`` names an array element)."""
    p = Path(path)
    if not p.is_file():
        raise TokcalError(f"{p}: no such file")
    with open(p, "rb") as f:
        head = f.read(65536)
        first = head.lstrip()[:1]
        if first == b"[":
            yield from ((ln, o, ix) for ln, (o, ix) in _iter_document(p, _read_text(p)))
            return
        f.seek(0)
        for lineno, raw in enumerate(f, 1):
            s = raw.strip()
            if not s or s.startswith(b":"):
                continue
            if s.startswith(b"data:"):
                s = s[5:].strip()
                if s == b"[DONE]":
                    continue
            elif s.startswith((b"event:", b"id:", b"retry:")):
                continue
            try:
                obj = _loads(s)
            except RecursionError:
                raise TokcalError(f"{p}:{lineno}: not valid JSON (nested too deeply)") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if lineno == 1 and s[:1] == b"{":  # a pretty-printed document
                    yield from ((ln, o, ix) for ln, (o, ix) in _iter_document(p, _read_text(p)))
                    return
                raise TokcalError(f"{p}:{lineno}: not valid JSON ({e})") from None
            yield lineno, obj, ""


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokcalError(f"{p}: not UTF-8 text ({e})") from None


def unwrap_batch(obj: dict) -> tuple[dict | None, str | None]:
    """``(body, None)`` of an OpenAI Batch output line, ``(None, reason)`` for a failed request, or
    ``(obj, None)`` unchanged when it is not a Batch line."""
    if not ("custom_id" in obj and "response" in obj):
        return obj, None
    if obj.get("error"):
        return None, f"batch request {obj.get('custom_id')!r} failed ({obj['error']})"
    resp = obj["response"]
    if not isinstance(resp, dict):
        return None, f"batch request {obj.get('custom_id')!r} has no response"
    if resp.get("status_code") not in (None, 200):
        return None, f"batch request {obj.get('custom_id')!r} returned status {resp.get('status_code')}"
    body = resp.get("body")
    if not isinstance(body, dict):
        raise TokcalError(f"batch request {obj.get('custom_id')!r}: response.body must be an object")
    for key in ("reference_token_ids", "reference_tokens", "reference"):
        if key in obj and key not in body:
            body = {**body, key: obj[key]}
    return body, None
