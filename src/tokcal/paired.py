"""Paired comparison of two evaluations of the same tokens (e.g. before and after a calibrator).

Two evaluations *pair* when they were computed on the same tokens (equal ``table_fingerprint``) with the
same bootstrap (``ci`` signatures that agree on resamples, seed, resampling unit and definition; the tokcal
version does not count), and both stored their
replicate values. The bootstrap's weights depend only on the units and the seed, so replicate r of
both is the same resample, and the difference of a metric has the replicates d_r = b_r - a_r
(Koehn 2004's paired bootstrap, as in sacrebleu). Its 95 % interval is the basic bootstrap interval
[2 d - q97.5, 2 d - q2.5] for calibration errors (ECE), matching the intervals of the ECEs themselves
(their resamples are biased upward; much of that bias cancels in d but not all), and the percentile
interval for the other metrics (NLL, Brier, accuracy, signed gap). Unpaired evaluations give no interval
for the difference, and :attr:`Difference.paired` says why.

The words a report uses follow from the interval: *lower*/*higher* only when the interval of the
difference excludes 0 (see :func:`verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

_BASIC = ("ece", "ece_debiased")


@dataclass(frozen=True)
class Difference:
    """``b - a`` of one metric (overall, or of one slice value), with its paired 95 % interval.

    ``paired``: both evaluations share tokens and resamples; ``reason``: why not, when not. ``ci``: None
    when unpaired or undefined. ``a``/``b``: the two values.
    """

    metric: str
    a: float | None
    b: float | None
    diff: float | None
    ci: tuple[float, float] | None
    paired: bool
    reason: str = ""
    slice: str | None = None
    value: str | None = None

    @property
    def significant(self) -> bool:
        """The paired interval of the difference excludes 0."""
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)


def pairing(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[bool, str]:
    """``(True, "")`` when two evaluation dicts pair (module docstring), else ``(False, reason)``."""
    fa, fb = a.get("table_fingerprint"), b.get("table_fingerprint")
    if not fa or not fb:
        return False, "an evaluation has no table fingerprint (written by an older tokcal)"
    if fa != fb:
        if fa.split(":")[0] != fb.split(":")[0]:
            return False, ("their table fingerprints have different definitions (one was written by an older "
                           "tokcal): evaluate both with this one to pair them")
        return False, "they were computed on different tokens (table fingerprints differ)"
    from .metrics.signature import definition_differences

    ca, cb = (a.get("signatures") or {}).get("ci"), (b.get("signatures") or {}).get("ci")
    diffs = ["no ci signature"] if ca is None or cb is None else definition_differences(ca, cb)
    if diffs:  # resamples, seed, unit or definition; the tokcal version alone does not count
        return False, f"their bootstraps differ ({'; '.join(diffs)})"
    if not a.get("replicates") or not b.get("replicates"):
        return False, "an evaluation has no bootstrap replicates (bootstrap=0)"
    return True, ""


def _replicates(ev: Mapping[str, Any], metric: str, slice_name: str | None, value: str | None) -> np.ndarray | None:
    rep = ev.get("replicates") or {}
    if slice_name is None:
        x = (rep.get("overall") or {}).get(metric)
    else:
        x = (((rep.get("slices") or {}).get(slice_name) or {}).get(str(value)) or {}).get(metric)
    if x is None:
        return None
    return np.asarray([np.nan if v is None else v for v in x], dtype=np.float64)


def _point(ev: Mapping[str, Any], metric: str, slice_name: str | None, value: str | None) -> float | None:
    if slice_name is None:
        v = (ev.get("overall") or {}).get(metric)
    else:
        key = "signed_gap" if metric == "signed_gap" else metric
        row = next((r for r in (ev.get("slices") or {}).get(slice_name, []) if str(r.get("value")) == str(value)),
                   None)
        v = None if row is None else row.get(key)
    return None if v is None or not math.isfinite(float(v)) else float(v)


def difference(a: Mapping[str, Any], b: Mapping[str, Any], metric: str = "ece", slice_name: str | None = None,
               value: str | None = None) -> Difference:
    """``b - a`` of ``metric`` (overall, or of slice ``slice_name`` = ``value``) with its paired interval.

    ``a``, ``b``: evaluation dicts (``Evaluation.to_dict()``). ``metric``: a key of ``overall`` with stored
    replicates (``ece``, ``nll``, ``brier``, ``accuracy``, ``signed_gap``, ...), or for a slice ``ece`` or
    ``signed_gap``.
    """
    va, vb = _point(a, metric, slice_name, value), _point(b, metric, slice_name, value)
    d = None if va is None or vb is None else vb - va
    ok, reason = pairing(a, b)
    ci = None
    if ok and d is not None:
        ra, rb = _replicates(a, metric, slice_name, value), _replicates(b, metric, slice_name, value)
        if ra is None or rb is None or ra.shape != rb.shape:
            where = f" for {slice_name}={value}" if slice_name else ""
            ok, reason = False, f"no stored replicates of {metric}{where}"
        else:
            rd = rb - ra
            rd = rd[np.isfinite(rd)]
            if rd.size >= 2:
                lo, hi = np.percentile(rd, [2.5, 97.5])
                if metric in _BASIC:
                    lo, hi = 2.0 * d - hi, 2.0 * d - lo
                ci = (float(min(lo, d)), float(max(hi, d)))
    return Difference(metric, va, vb, d, ci, ok, reason, slice_name, value)


def verdict(diff: Difference) -> str:
    """``"lower"``, ``"higher"`` (the paired interval excludes 0), ``"no significant change"`` (it holds 0),
    or ``"unpaired"`` (no interval for the difference: the evaluations do not pair)."""
    if diff.ci is None:
        return "unpaired" if not diff.paired else "no significant change"
    if diff.ci[1] < 0:
        return "lower"
    if diff.ci[0] > 0:
        return "higher"
    return "no significant change"
