"""Metric signatures: every number carries its settings, and numbers with different definitions are never
compared silently.

``signature("ece", bins=15)`` ->
``ece|bins=15|binning=width|norm=l1|conf=top1|labels=teacher-forced|def=1|tokcal=0.1.0``: the metric
name, then its default settings (:data:`DEFAULTS`, then ``labels``) overridden/extended by ``settings``
(defaults first in their own order, extra keys after), then ``def``, the definition
version of the metric (:data:`DEFINITION_VERSIONS`), then the tokcal version. This is the only place a
signature string is built: :func:`tokcal.evaluate` calls it for every number and slice it reports
(slices as ``slice:KIND``, e.g. ``slice:type|on=gold|def=1|...``).

Comparing two numbers compares their *definitions* (:func:`definition_differences`): the metric, every
setting and ``def``, but not the tokcal version, so a new tokcal release does not make stored baselines
unusable; a change of what a metric or slice means bumps its entry in :data:`DEFINITION_VERSIONS`
instead. Signatures written before ``def`` existed read as ``def=1``.
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
#: definition version of each metric and slice kind (``slice:KIND``), carried by its signature as
#: ``def=N``. Bump an entry, here and only here, when the meaning of the number changes (a formula, a
#: bucket rule, a token-type rule); unknown names are version 1.
DEFINITION_VERSIONS: dict[str, int] = {
    "ece": 1, "rmsce": 1, "mce": 1, "ece_debiased": 1, "smooth_ece": 1, "brier": 1, "top_label_brier": 1,
    "nll": 1, "classwise_ece": 1, "aurc": 1, "ci": 1,
    # freq 2: ranks from a stated frequency reference (tokcal.frequency), no longer the evaluated table;
    # type 2: types from raw pieces + the tokenizer's convention (tokcal.vocab), no longer decoded strings
    "slice:freq": 2, "slice:type": 2, "slice:position": 1, "slice:group": 1, "slice:words": 1,
}
#: signature keys that are not part of a number's definition
NOT_DEFINITION = ("tokcal",)


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
    merged.pop("def", None)
    merged["def"] = DEFINITION_VERSIONS.get(metric, 1)
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


def definition(sig: str) -> tuple[str, dict[str, str]]:
    """(metric, settings) that define the number: :func:`parse_signature` without :data:`NOT_DEFINITION`
    keys, and ``def`` filled in as ``"1"`` for signatures written before it existed."""
    metric, settings = parse_signature(sig)
    out = {k: v for k, v in settings.items() if k not in NOT_DEFINITION}
    out.setdefault("def", "1")
    return metric, out


def definition_differences(a: str, b: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """What differs between the definitions of ``a`` and ``b`` (keys in ``ignore`` aside), e.g.
    ``["bins: 15 vs 10"]``; empty when the two numbers mean the same thing."""
    (ma, sa), (mb, sb) = definition(a), definition(b)
    diffs = [f"metric {ma!r} vs {mb!r}"] if ma != mb else []
    for key in [*sa, *(k for k in sb if k not in sa)]:
        if key not in ignore and sa.get(key) != sb.get(key):
            label = "definition version (def)" if key == "def" else key
            diffs.append(f"{label}: {sa.get(key, '<missing>')} vs {sb.get(key, '<missing>')}")
    return diffs


def check_same_signature(a: str, b: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise TokcalError naming the differences unless ``a`` and ``b`` have the same definition
    (:func:`definition_differences`; the tokcal version never counts)."""
    diffs = definition_differences(a, b, ignore)
    if diffs:
        raise TokcalError("refusing to compare numbers with different signatures: " + "; ".join(diffs))
