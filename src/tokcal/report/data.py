"""The report's input: an :class:`~tokcal.evaluation.Evaluation` or its ``to_dict()``, read-only.

The report never computes a metric; it only reads the numbers (and their signatures) that
``tokcal.evaluate`` produced. This module turns the accepted inputs into plain dicts and checks that
the parts the report draws are there, naming the evaluation and the missing key when they are not.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._io import atomic_write, read_json
from ..errors import SchemaError, ValidationError

REQUIRED_KEYS = ("signature", "overall", "bins")


def as_dict(evaluation: Any, name: str = "evaluation") -> dict[str, Any]:
    """The ``to_dict()`` form of ``evaluation`` (an Evaluation or a dict of that shape)."""
    if hasattr(evaluation, "to_dict") and not isinstance(evaluation, Mapping):
        evaluation = evaluation.to_dict()
    if not isinstance(evaluation, Mapping):
        raise ValidationError(
            f"{name}: expected a tokcal Evaluation or its to_dict(), got {type(evaluation).__name__}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in evaluation]
    if missing:
        raise SchemaError(f"{name}: not a tokcal evaluation, missing key(s) {', '.join(missing)}")
    if not isinstance(evaluation["overall"], Mapping):
        raise SchemaError(f"{name}: 'overall' must be an object, got {type(evaluation['overall']).__name__}")
    if not isinstance(evaluation["bins"], list):
        raise SchemaError(f"{name}: 'bins' must be a list, got {type(evaluation['bins']).__name__}")
    return dict(evaluation)


def as_dicts(evaluations: Any) -> dict[str, dict[str, Any]]:
    """``{name: evaluation dict}`` from a mapping of names to evaluations, or a single evaluation."""
    if hasattr(evaluations, "to_dict") or (isinstance(evaluations, Mapping) and "overall" in evaluations):
        evaluations = {"evaluation": evaluations}
    if not isinstance(evaluations, Mapping) or not evaluations:
        raise ValidationError("expected a non-empty mapping {name: Evaluation or its to_dict()}")
    return {str(k): as_dict(v, name=f"evaluation '{k}'") for k, v in evaluations.items()}


def load_evaluation(path: str | os.PathLike) -> dict[str, Any]:
    """Read the JSON that ``tokcal evaluate --json`` wrote (``Evaluation.to_dict()``)."""
    return as_dict(read_json(path, "evaluation file"), name=str(path))


def write_file(path: str | os.PathLike, write: Any) -> Path:
    """``atomic_write(path, write)``, returning the path (parent created, permissions kept)."""
    path = Path(path)
    atomic_write(path, write)
    return path


def number(x: Any) -> float | None:
    """``x`` as a float, or None where it is missing or not finite (undefined in the evaluation)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def interval(ci: Any) -> tuple[float, float] | None:
    """A ``[lo, hi]`` interval as a float pair, or None where it is undefined."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    lo, hi = number(ci[0]), number(ci[1])
    return None if lo is None or hi is None else (lo, hi)


def slice_definition(ev: Mapping[str, Any], slice_name: str) -> str | None:
    """One line saying how slice ``slice_name`` was defined (a frequency slice: its reference), or None."""
    st = ((ev.get("settings") or {}).get("slices") or {}).get(slice_name)
    if not isinstance(st, Mapping):
        return None
    ref = st.get("reference")
    if st.get("kind") == "freq" and isinstance(ref, Mapping):
        what = {"counts": "counts file", "table": "reference table", "text": "text corpus",
                "id-order": "proxy: id order (BPE merge rank)",
                "evaluated-table": "the evaluated table itself (no reference given)"}.get(str(ref.get("kind")),
                                                                                       str(ref.get("kind")))
        n = ref.get("n_tokens")
        name = ref.get("name")
        extra = ", ".join(x for x in (str(name) if name and ref.get("kind") in ("counts", "table", "text") else "",
                                      f"{n:,} tokens" if isinstance(n, int) else "") if x)
        return f"frequency reference: {what}" + (f" ({extra})" if extra else "")
    if st.get("kind") == "type":
        return f"token types under the {st.get('convention')} convention ({st.get('rules')})"
    return None
