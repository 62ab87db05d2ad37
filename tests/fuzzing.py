"""A seeded mutation fuzzer for tokcal's readers: byte-level and JSON-aware mutations of valid seeds.

Each case is reproducible from ``(seed, case index)``. The oracle every test applies: the reader
either raises a :class:`~tokcal.errors.TokcalError` or returns a result that passes the test's own
correctness check; any other exception is a bug. ``TOKCAL_FUZZ_CASES`` scales the number of cases
(``make fuzz`` runs many more than CI).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

from tokcal.errors import TokcalError

SCALE = float(os.environ.get("TOKCAL_FUZZ_SCALE", "1"))

INTERESTING_BYTES = [0x00, 0xFF, 0x7F, 0x80, 0xC0, 0xED, 0xEF, 0xBB, 0xBF, ord("\n"), ord("\r"), ord('"'),
                     ord("\\"), ord("{"), ord("}"), ord("["), ord("]"), ord(","), ord(":"), ord("-"), ord("9"),
                     ord(" "), ord("\t")]
INTERESTING_TEXT = ["\x00", "\ufeff", "\u2028", "\r\n", "\r", "\ud800", "é", "💥", "[/INST]", "$x$", "-DOCSTART-",
                    " ", "\t", "\n\n", "\\", '"', "null", "1e999", "NaN", "-Infinity", "9" * 400]
INTERESTING_JSON: list[Any] = [None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 1e308, -1e308,
                               1e-320, 0.5, "", "x", "-1", "100000000", "[/x]", [], {}, [None], {"": None},
                               [[[[[[[[[[[]]]]]]]]]]], "\ud800", "a" * 1000]


def cases(n: int) -> int:
    """``n`` scaled by ``TOKCAL_FUZZ_SCALE`` (at least 1)."""
    return max(1, int(n * SCALE))


# -- byte mutations -----------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to three byte-level edits: flip, replace, insert, delete, duplicate, truncate, splice."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        pos = rng.randrange(len(b) + 1) if b else 0
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[min(pos, len(b) - 1)] = rng.choice(INTERESTING_BYTES)
        elif op == 2:
            b[pos:pos] = bytes(rng.choice(INTERESTING_BYTES) for _ in range(rng.randint(1, 4)))
        elif op == 3 and b:
            del b[pos:pos + rng.randint(1, 16)]
        elif op == 4 and b:
            start = rng.randrange(len(b))
            b[pos:pos] = b[start:start + rng.randint(1, 64)]
        elif op == 5:
            del b[pos:]
        elif op == 6:
            b[pos:pos] = rng.choice(INTERESTING_TEXT).encode("utf-8", "surrogatepass")
        else:
            lines = bytes(b).split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i] = lines[j]
            b = bytearray(b"\n".join(lines))
    return bytes(b)


# -- JSON-aware mutations -----------------------------------------------------------------------


def _nodes(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, (*path, i))


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return obj


def _delete(obj: Any, path: tuple) -> Any:
    if not path:
        return None
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    del parent[path[-1]]
    return obj


def _interesting(rng: random.Random) -> Any:
    """A fresh copy of one of :data:`INTERESTING_JSON` (later edits must not change the shared list)."""
    return json.loads(json.dumps(rng.choice(INTERESTING_JSON)))


def mutate_json(obj: Any, rng: random.Random) -> Any:
    """One to three structural edits of a parsed JSON document: replace a node by an interesting
    value, another node or a wrapped copy; delete a key/element; add a key; duplicate an element."""
    obj = json.loads(json.dumps(obj))
    for _ in range(rng.randint(1, 3)):
        nodes = list(_nodes(obj))
        path, node = rng.choice(nodes)
        op = rng.randrange(6)
        if op == 0:
            obj = _set(obj, path, _interesting(rng))
        elif op == 1:
            obj = _set(obj, path, json.loads(json.dumps(rng.choice(nodes)[1])))
        elif op == 2 and path:
            obj = _delete(obj, path)
        elif op == 3 and isinstance(node, dict):
            node[rng.choice(["", "x", "token", "logprob", "id", *map(str, node)])] = _interesting(rng)
        elif op == 4 and isinstance(node, list) and node:
            node.insert(rng.randrange(len(node) + 1), json.loads(json.dumps(rng.choice(node))))
        elif op == 5:
            obj = _set(obj, path, [node] if rng.random() < 0.5 else {"x": node})
        if obj is None:
            obj = {}
    return obj


def dump_json(obj: Any, rng: random.Random) -> str:
    """Serialise, sometimes with non-standard constants (NaN, Infinity) that Python's json writes."""
    return json.dumps(obj, allow_nan=True, ensure_ascii=rng.random() < 0.5)


def mutate_jsonl(text: str, rng: random.Random) -> bytes:
    """A JSON-lines file with one line mutated structurally, or the whole file mutated as bytes."""
    lines = text.splitlines()
    if rng.random() < 0.6 and lines:
        i = rng.randrange(len(lines))
        try:
            lines[i] = dump_json(mutate_json(json.loads(lines[i]), rng), rng)
        except ValueError:
            pass
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    return mutate_bytes(text.encode(), rng)


# -- the oracle ---------------------------------------------------------------------------------


def run_case(call: Callable[[], Any], check: Callable[[Any], None], where: str) -> str:
    """``"error"`` when ``call`` raises a TokcalError (with a message), ``"ok"`` when its result passes
    ``check``; any other exception propagates, annotated with ``where`` (how to reproduce the case)."""
    try:
        result = call()
    except TokcalError as e:
        assert str(e).strip(), f"{where}: a TokcalError without a message"
        return "error"
    except Exception as e:
        raise AssertionError(f"{where}: {type(e).__name__}: {e}") from e
    try:
        check(result)
    except TokcalError:
        return "error"  # a downstream step refused the result clearly: fine
    except AssertionError as e:
        raise AssertionError(f"{where}: wrong result: {e}") from e
    except Exception as e:
        raise AssertionError(f"{where}: downstream {type(e).__name__}: {e}") from e
    return "ok"
