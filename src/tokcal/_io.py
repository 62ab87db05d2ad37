"""File plumbing shared by every reader and writer: atomic writes, strict JSON parsing, path checks.

* :func:`atomic_write` writes through a temp file beside the target, then renames it over the
  target (POSIX ``rename`` is atomic), so a crash leaves the old file or none, never half of one.
  Temp files are named ``.<name>.<host>.<pid>.<random>.tmp``; a later write of the same file
  removes the ones whose process is gone (same host) or that nobody touched for a day.
* :func:`parse_json` reads RFC 8259 JSON strictly: ``NaN``/``Infinity`` constants, numbers that
  overflow a float (``1e999``), integers of more than 4300 digits and nesting deeper than
  :data:`MAX_JSON_DEPTH` are :class:`~tokcal.errors.SchemaError` naming the file, never a Python
  ``RecursionError`` or a silent ``inf``.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import SchemaError, TokcalError

MAX_JSON_DEPTH = 200
"""Deepest nesting of arrays/objects accepted in a loaded JSON document (tokcal's own formats need < 10)."""

STALE_TEMP_SECONDS = 24 * 3600
_HOST = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:32] or "host"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files :func:`atomic_write` left beside ``path`` when a writer was killed.

    A temp is stale when the process that made it (same host) no longer runs, or when it was not
    modified for :data:`STALE_TEMP_SECONDS`; temps of live writers are kept. Returns what was removed.
    """
    path = Path(path)
    prefix = _temp_prefix(path)
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    now = time.time()
    for p in candidates:
        parts = p.name[len(prefix):-len(".tmp")].split(".")
        try:
            st = p.lstat()
        except OSError:
            continue
        dead = len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit() and not _pid_alive(int(parts[1]))
        if dead or now - st.st_mtime > STALE_TEMP_SECONDS:
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``.

    Creates the parent folder. The result keeps the permission bits of the file it replaces (a
    new file gets 0666 less the umask). A crash leaves either the old file or none, never half
    of one. A path that cannot be written (no permission, a directory, a parent that is a file)
    raises :class:`~tokcal.errors.TokcalError` naming it.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{_HOST}.{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise TokcalError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise TokcalError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} overflows a float")
    return value


def _depth(obj: Any) -> int:
    """Nesting depth of arrays/objects (a scalar is 0), level by level without recursion."""
    depth, level = 0, [obj]
    while True:
        containers = [o for o in level if isinstance(o, (dict, list))]
        if not containers:
            return depth
        depth += 1
        level = [v for o in containers for v in (o.values() if isinstance(o, dict) else o)]


def parse_json(text: str | bytes, where: str, *, allow_nonfinite: bool = False) -> Any:
    """Strict JSON: the document, or :class:`SchemaError` ``"<where>: not valid JSON (...)"``.

    ``allow_nonfinite=True`` reads ``NaN``, ``Infinity``, ``-Infinity`` and overflowing numbers as
    floats, as Python's ``json`` writes them (servers' log-prob files hold ``-Infinity``); the
    caller then validates the values."""
    hooks: dict[str, Any] = {} if allow_nonfinite else {"parse_constant": _reject_constant,
                                                         "parse_float": _finite_float}
    try:
        obj = json.loads(text, **hooks)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise SchemaError(f"{where}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SchemaError(f"{where}: not valid JSON ({e})") from None
    if isinstance(obj, (dict, list)) and _depth(obj) > MAX_JSON_DEPTH:
        raise SchemaError(f"{where}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)")
    return obj


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read and :func:`parse_json` a UTF-8 file; a missing or unreadable file is a :class:`SchemaError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise SchemaError(f"{path}: is a directory, expected a {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SchemaError(f"{path}: cannot read {what} ({e})") from None
    return parse_json(text, str(path))
