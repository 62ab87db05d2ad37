"""The calibration gate behind ``tokcal check``: conditions on an evaluation, usable from Python.

A gate is a list of conditions, each checked on the JSON form of an evaluation
(:meth:`tokcal.evaluation.Evaluation.to_dict`):

* ``max_ece = X``: the overall ``metric`` (``ece``, ``ece_debiased`` or ``smooth_ece``) is at most X;
  an undefined value fails;
* ``slices + max_slice_ece = Y``: every value of each slice with at least ``min_slice_tokens`` tokens
  has a binned ECE of at most Y (smaller values are listed as not checked, they pass);
* ``baseline + max_regression = Z``: ``metric`` minus the baseline's ``metric`` is at most Z. The two
  numbers must carry the same signature; otherwise :class:`SignatureMismatch` is raised (two numbers
  computed differently are never compared silently).

The result holds one :class:`Outcome` per condition with its numbers (value, limit, interval), not
text; :func:`tokcal.report.terminal.outcome_line` words them. :func:`check` evaluates a table first
(with the baseline's bins and binning unless given) and then applies :func:`check_evaluation`.

Example::

    from tokcal import gate
    result = gate.check(table, calibrator=cal, max_ece=0.03, slices=["group:domain"], max_slice_ece=0.05)
    if not result.passed:
        print([o.condition for o in result.failures])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ParameterError, ValidationError
from .progress import ProgressCallback
from .report.data import interval as _ci
from .report.data import number as _num

METRICS = ("ece", "ece_debiased", "smooth_ece")
CONDITIONS = ("max_ece", "max_slice_ece", "max_regression")


class SignatureMismatch(ParameterError):
    """The checked metric and the baseline's are defined differently: their signatures differ in a setting or
    in the definition version (:func:`tokcal.metrics.definition_differences`; the tokcal version alone does not
    count)."""

    def __init__(self, metric: str, ours: str | None, theirs: str | None, baseline_name: str,
                 differences: Sequence[str] = ()) -> None:
        self.metric, self.ours, self.theirs, self.baseline_name = metric, ours, theirs, baseline_name
        self.differences = list(differences)
        why = f" ({'; '.join(self.differences)}, baseline vs now)" if self.differences else ""
        super().__init__(
            f"{metric} of this table and of {baseline_name} are defined differently and are not "
            f"comparable{why}:\n  this table: {ours}\n  baseline:   {theirs}\n"
            "re-run the baseline with the same settings (or pass matching {bins}/{binning})")


@dataclass(frozen=True)
class Outcome:
    """One checked condition.

    ``condition``: one of :data:`CONDITIONS`; ``ok``: did it pass; ``metric`` and ``value`` (None when
    undefined), ``limit``, ``ci`` (the value's 95 % interval, or None). Slice conditions also have
    ``slice``, ``slice_value`` and ``n`` (tokens); a slice's small values that were not checked come as one
    passing outcome with ``skipped`` (their values) and ``n`` = ``min_slice_tokens``. Regressions have
    ``baseline`` (the baseline's value) and ``baseline_name``.
    """

    condition: str
    ok: bool
    metric: str
    value: float | None
    limit: float
    ci: tuple[float, float] | None = None
    slice: str | None = None
    slice_value: str | None = None
    n: int | None = None
    baseline: float | None = None
    baseline_name: str | None = None
    skipped: tuple[str, ...] = ()

    @property
    def change(self) -> float | None:
        """``value - baseline`` for a regression condition (None when either is undefined)."""
        if self.value is None or self.baseline is None:
            return None
        return self.value - self.baseline


@dataclass(frozen=True)
class GateResult:
    """All outcomes of a gate, the signature of the checked metric, and the evaluation dict checked."""

    outcomes: list[Outcome]
    signature: str | None
    evaluation: dict[str, Any] = field(repr=False)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def passed(self) -> bool:
        return not self.failures


def validate_limits(*, max_ece: float | None = None, max_slice_ece: float | None = None,
                    max_regression: float | None = None, metric: str = "ece",
                    slices: Sequence[Any] = (), baseline: Any = None, min_slice_tokens: int = 100) -> None:
    """Raise :class:`~tokcal.errors.ValidationError` naming the parameter when the gate is ill-posed."""
    if metric not in METRICS:
        raise ParameterError(f"{{metric}} must be one of {', '.join(METRICS)}, got {metric!r}")
    for name, value in (("max_ece", max_ece), ("max_slice_ece", max_slice_ece),
                        ("max_regression", max_regression)):
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value < math.inf):
            raise ParameterError(f"{{{name}}} must be a finite number >= 0, got {value}")
    if isinstance(min_slice_tokens, bool) or not isinstance(min_slice_tokens, int) or min_slice_tokens < 0:
        raise ParameterError(f"{{min_slice_tokens}} must be an integer >= 0, got {min_slice_tokens!r}")
    if (baseline is None) != (max_regression is None):
        raise ParameterError("{baseline} and {max_regression} go together")
    if bool(slices) != (max_slice_ece is not None):
        raise ParameterError("{slices} and {max_slice_ece} go together")
    if max_ece is None and max_slice_ece is None and max_regression is None:
        raise ParameterError("nothing to check: give {max_ece}, {slices} with {max_slice_ece}, or {baseline} "
                             "with {max_regression}")


def check_overall(ev: Mapping[str, Any], metric: str, max_value: float) -> Outcome:
    """The overall ``metric`` of ``ev`` (an evaluation dict) is at most ``max_value``."""
    o = ev["overall"]
    value = _num(o.get(metric))
    return Outcome("max_ece", value is not None and value <= max_value, metric, value, float(max_value),
                   _ci((o.get("ci") or {}).get(metric)))


def check_slices(ev: Mapping[str, Any], names: Sequence[str], max_value: float, min_tokens: int) -> list[Outcome]:
    """Every value of each slice in ``names`` with at least ``min_tokens`` tokens has ECE <= ``max_value``."""
    slices = ev.get("slices") or {}
    outcomes = []
    for name in names:
        if name not in slices:
            have = ", ".join(slices) or "none"
            raise ValidationError(f"slice {name!r} is not in the evaluation (slices evaluated: {have})")
        small = []
        for r in slices[name]:
            n = int(r.get("n") or 0)
            if n < min_tokens:
                small.append(str(r.get("value")))
                continue
            value = _num(r.get("ece"))
            outcomes.append(Outcome("max_slice_ece", value is not None and value <= max_value, "ece", value,
                                    float(max_value), _ci(r.get("ece_ci")), slice=name,
                                    slice_value=str(r.get("value")), n=n))
        if small:
            outcomes.append(Outcome("max_slice_ece", True, "ece", None, float(max_value), slice=name,
                                    n=min_tokens, skipped=tuple(small)))
    return outcomes


def check_regression(ev: Mapping[str, Any], baseline: Mapping[str, Any], metric: str, max_increase: float,
                     baseline_name: str = "baseline") -> Outcome:
    """``metric`` rose by at most ``max_increase`` over the baseline; :class:`SignatureMismatch` when the two
    are defined differently."""
    ours = (ev.get("signatures") or {}).get(metric)
    theirs = (baseline.get("signatures") or {}).get(metric)
    if theirs is None:
        raise ValidationError(f"{baseline_name}: has no signature for {metric}; cannot compare")
    from .metrics.signature import definition_differences

    diffs = definition_differences(theirs, ours) if ours is not None else ["no signature"]
    if diffs:  # definitions, not strings: another tokcal version alone is comparable
        raise SignatureMismatch(metric, ours, theirs, baseline_name, diffs)
    now, before = _num(ev["overall"].get(metric)), _num(baseline["overall"].get(metric))
    ok = now is not None and before is not None and now - before <= max_increase
    return Outcome("max_regression", ok, metric, now, float(max_increase),
                   _ci((ev["overall"].get("ci") or {}).get(metric)), baseline=before, baseline_name=baseline_name)


def _as_dict(x: Any, what: str) -> dict[str, Any]:
    from .evaluation import Evaluation

    if isinstance(x, Evaluation):
        return x.to_dict()
    if isinstance(x, Mapping):
        return Evaluation.from_dict(dict(x)).to_dict()
    raise ValidationError(f"{what}: expected an Evaluation or its to_dict(), got {type(x).__name__}")


def check_evaluation(evaluation: Any, *, max_ece: float | None = None, metric: str = "ece",
                     slices: Sequence[str] = (), max_slice_ece: float | None = None, min_slice_tokens: int = 100,
                     baseline: Any = None, max_regression: float | None = None,
                     baseline_name: str = "baseline") -> GateResult:
    """Apply the gate's conditions (module docstring) to an evaluation (an Evaluation or its dict).

    ``slices``: names of slices in the evaluation (e.g. ``"group:domain"``); ``baseline``: an Evaluation
    or its dict. Conditions that are not given are not checked; at least one must be.
    """
    validate_limits(max_ece=max_ece, max_slice_ece=max_slice_ece, max_regression=max_regression, metric=metric,
                    slices=slices, baseline=baseline, min_slice_tokens=min_slice_tokens)
    ev = _as_dict(evaluation, "evaluation")
    outcomes: list[Outcome] = []
    if max_ece is not None:
        outcomes.append(check_overall(ev, metric, max_ece))
    if slices:
        outcomes += check_slices(ev, list(slices), float(max_slice_ece), min_slice_tokens)
    if baseline is not None:
        outcomes.append(check_regression(ev, _as_dict(baseline, baseline_name), metric, float(max_regression),
                                         baseline_name=baseline_name))
    sig = (ev.get("signatures") or {}).get(metric) or ev.get("signature")
    return GateResult(outcomes, sig, ev)


def check(table: Any, calibrator: Any = None, *, max_ece: float | None = None, metric: str = "ece",
          slices: Sequence[Any] = (), max_slice_ece: float | None = None, min_slice_tokens: int = 100,
          baseline: Any = None, max_regression: float | None = None, baseline_name: str = "baseline",
          bins: int | None = None, binning: str | None = None, bootstrap: int = 200, seed: int = 0,
          reference: Any = None, progress: ProgressCallback | None = None) -> GateResult:
    """Evaluate ``table`` (after ``calibrator``) on the ``slices`` checked, then :func:`check_evaluation`.

    ``bins``/``binning`` default to the baseline's settings (so the regression compares like with like),
    else 15 equal-width bins. ``slices``: specs or :class:`~tokcal.slices.Slice` objects; ``reference``: the
    frequency reference of ``freq`` slices (as :func:`tokcal.slices.parse_slices`). ``progress``: the
    evaluation's progress callback (:mod:`tokcal.progress`).
    """
    from .evaluation import evaluate
    from .slices import parse_slices

    validate_limits(max_ece=max_ece, max_slice_ece=max_slice_ece, max_regression=max_regression, metric=metric,
                    slices=slices, baseline=baseline, min_slice_tokens=min_slice_tokens)
    base = _as_dict(baseline, baseline_name) if baseline is not None else None
    settings = (base or {}).get("settings") or {}
    bins = bins if bins is not None else int(settings.get("bins") or 15)
    binning = binning if binning is not None else str(settings.get("binning") or "width")
    parsed = parse_slices(list(slices), table, reference=reference) if slices else []
    ev = evaluate(table, calibrator=calibrator, slices=parsed, bins=bins, binning=binning, bootstrap=bootstrap,
                  seed=seed, progress=progress)
    return check_evaluation(ev, max_ece=max_ece, metric=metric, slices=[s.name for s in parsed],
                            max_slice_ece=max_slice_ece, min_slice_tokens=min_slice_tokens, baseline=base,
                            max_regression=max_regression, baseline_name=baseline_name)


def _round_up(x: float, digits: int = 3) -> float:
    step = 10.0 ** -digits
    out = math.ceil(x / step - 1e-9) * step
    out = round(out, digits)
    return out if out >= x else round(out + step, digits)


def suggest_limits(evaluation: Any, slices: Sequence[str] = (), metric: str = "ece", min_slice_tokens: int = 100,
                   digits: int = 3) -> dict[str, float | None]:
    """Limits for :func:`check` derived from measured values, so that the same table passes and a clear
    regression fails.

    ``max_ece``: the upper end of the 95 % interval of the overall ``metric`` (the value itself without an
    interval), rounded up to ``digits`` decimals; ``max_slice_ece``: the largest upper end over the values of
    ``slices`` with at least ``min_slice_tokens`` tokens (None without such values), rounded up alike. Every
    limit is >= the value it bounds, so re-checking the evaluated table passes.
    """
    ev = _as_dict(evaluation, "evaluation")
    o = ev["overall"]
    ci = _ci((o.get("ci") or {}).get(metric))
    value = _num(o.get(metric))
    top = max(ci[1], value) if ci is not None and value is not None else value
    out: dict[str, float | None] = {"max_ece": None if top is None else _round_up(top, digits), "max_slice_ece": None}
    worst = None
    for name in slices:
        for r in (ev.get("slices") or {}).get(name, []):
            v = _num(r.get("ece"))
            if int(r.get("n") or 0) < min_slice_tokens or v is None:
                continue
            rci = _ci(r.get("ece_ci"))
            hi = max(rci[1], v) if rci is not None else v
            worst = hi if worst is None else max(worst, hi)
    if worst is not None:
        out["max_slice_ece"] = _round_up(worst, digits)
    return out
