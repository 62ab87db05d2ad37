"""Metric signatures: every number carries its settings, and numbers with different
signatures are never compared silently.

``signature("ece", bins=15)`` -> ``ece|bins=15|binning=width|norm=l1|conf=top1|labels=teacher-forced|tokcal=0.1.0``:
the metric name, then its default settings (:data:`DEFAULTS`, then ``labels``) overridden/extended by
``settings`` (defaults first in their own order, extra keys after), then the tokcal version. This is the
only place a signature string is built: :func:`tokcal.evaluate` calls it for every number it reports.
"""

from __future__ import annotations

from typing import Any

from .._version import __version__
from ..errors import TokcalError

_TOP1 = {"conf": "top1"}
_BINNED = {"bins": 15, "binning": "width"}
LABELS = "teacher-forced"
#: default settings per metric, named as the keys of ``Evaluation["overall"]`` (``ci``: the bootstrap)
DEFAULTS: dict[str, dict[str, Any]] = {
    "ece": {**_BINNED, "norm": "l1", **_TOP1},
    "rmsce": {**_BINNED, "norm": "l2", **_TOP1},
    "mce": {**_BINNED, "norm": "max", **_TOP1},
    "ece_debiased": {**_BINNED, "norm": "l1", "debias": "kumar2019", **_TOP1},
    "smooth_ece": {"bandwidth": "auto", "kernel": "reflected-gaussian", **_TOP1},
    "brier": {"dist": "full"},
    "top_label_brier": {**_TOP1},
    "nll": {},
    "classwise_ece": {**_BINNED, "top_m": 50, "tail": "mean"},
    "aurc": {"ties": "grouped", **_TOP1},
    "ci": {"method": "cluster-bootstrap", "unit": "sequence", "resamples": 200, "seed": 0, "level": 0.95,
           "interval": "percentile", "ece_interval": "basic"},
}


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    if any(ch in text or ch in key for ch in "|="):
        raise TokcalError(f"signature: '|' and '=' are not allowed in settings ({key}={text!r})")
    return f"{key}={text}"


def signature(metric: str, **settings: Any) -> str:
    """Signature string of ``metric`` with ``settings`` (module docstring)."""
    if not metric or "|" in metric or "=" in metric:
        raise TokcalError(f"signature: bad metric name {metric!r}")
    merged = {**DEFAULTS.get(metric, {}), "labels": LABELS, **settings}
    merged.pop("tokcal", None)
    return "|".join([metric, *(_fmt(k, v) for k, v in merged.items()), f"tokcal={__version__}"])


def parse_signature(sig: str) -> tuple[str, dict[str, str]]:
    """(metric, settings) of a signature string (values as strings)."""
    parts = str(sig).split("|")
    out: dict[str, str] = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq:
            raise TokcalError(f"signature: {sig!r} is not a tokcal signature (part {part!r})")
        out[key] = value
    return parts[0], out


def check_same_signature(a: str, b: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise TokcalError naming the differences unless ``a`` and ``b`` match (keys in ``ignore`` aside)."""
    (ma, sa), (mb, sb) = parse_signature(a), parse_signature(b)
    diffs = [f"metric {ma!r} vs {mb!r}"] if ma != mb else []
    for key in sorted(set(sa) | set(sb)):
        if key not in ignore and sa.get(key) != sb.get(key):
            diffs.append(f"{key}: {sa.get(key, '<missing>')} vs {sb.get(key, '<missing>')}")
    if diffs:
        raise TokcalError("refusing to compare numbers with different signatures: " + "; ".join(diffs))
