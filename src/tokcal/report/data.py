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

from .._io import atomic_write
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
    """``{name: evaluation dict}`` from a mapping of names to evaluations, or a single evaluation.
    Evaluations whose numbers are defined differently are refused (:func:`check_comparable`)."""
    if hasattr(evaluations, "to_dict") or (isinstance(evaluations, Mapping) and "overall" in evaluations):
        evaluations = {"evaluation": evaluations}
    if not isinstance(evaluations, Mapping) or not evaluations:
        raise ValidationError("expected a non-empty mapping {name: Evaluation or its to_dict()}")
    evs = {str(k): as_dict(v, name=f"evaluation '{k}'") for k, v in evaluations.items()}
    check_comparable(evs)
    return evs


def _signature_maps(ev: Mapping[str, Any]) -> dict[str, str]:
    """``{what: signature}`` of the numbers an evaluation reports side by side with others: its metrics
    (not the intervals, ``ci``) and its slices (``slice NAME``)."""
    out = {k: v for k, v in (ev.get("signatures") or {}).items() if k != "ci" and isinstance(v, str)}
    slices = (ev.get("settings") or {}).get("slices") or {}
    out.update({f"slice {k}": v["signature"] for k, v in slices.items()
                if isinstance(v, Mapping) and isinstance(v.get("signature"), str)})
    return out


def definition_conflicts(evs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per metric or slice whose definition differs between the evaluations (each against the
    first that has it; :func:`tokcal.metrics.definition_differences`, so the tokcal version never counts)."""
    from ..metrics.signature import definition_differences

    first: dict[str, tuple[str, str]] = {}
    out = []
    for name, ev in evs.items():
        for what, sig in _signature_maps(ev).items():
            if what not in first:
                first[what] = (name, sig)
                continue
            diffs = definition_differences(first[what][1], sig)
            if diffs:
                out.append(f"{what}: '{first[what][0]}' vs '{name}': {'; '.join(diffs)}")
    return out


def check_comparable(evs: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise :class:`~tokcal.ValidationError` when :func:`definition_conflicts` finds any: a report puts
    the evaluations' numbers in the same columns, so they must mean the same thing."""
    conflicts = definition_conflicts(evs)
    if conflicts:
        raise ValidationError("refusing to report evaluations whose numbers are defined differently side by "
                              "side:\n  " + "\n  ".join(conflicts) + "\nre-run them with the same settings "
                              "(tokcal evaluate --bins/--binning/--slice ...)")


def interval_notes(evs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per evaluation whose intervals were computed differently from the first one's (the ``ci``
    signature: resamples, seed, resampling unit), e.g. ``"'a' vs 'b': unit: sequence vs block"``."""
    from ..metrics.signature import definition_differences

    sigs = [(name, (ev.get("signatures") or {}).get("ci")) for name, ev in evs.items()]
    sigs = [(name, sig) for name, sig in sigs if isinstance(sig, str)]
    if len(sigs) < 2:
        return []
    (first, ref), out = sigs[0], []
    for name, sig in sigs[1:]:
        diffs = definition_differences(ref, sig)
        if diffs:
            out.append(f"'{first}' vs '{name}': {'; '.join(diffs)}")
    return out


def unit_text(ev: Mapping[str, Any]) -> str:
    """The bootstrap's resampling unit in words: ``"sequences"`` or ``"blocks of 256 positions"``."""
    res = (ev.get("settings") or {}).get("resampling") or {}
    if res.get("unit") == "block":
        return f"blocks of {res.get('block_length')} positions"
    return "sequences"


def load_evaluation(path: str | os.PathLike) -> dict[str, Any]:
    """The dict of :meth:`tokcal.evaluation.Evaluation.from_json` (one reader, one error type: SchemaError)."""
    from ..evaluation import Evaluation

    return Evaluation.from_json(path).data


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
