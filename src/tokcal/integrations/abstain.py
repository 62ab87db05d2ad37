"""Abstention: a confidence threshold that meets a target token risk, and an ``Abstainer`` that flags.

Selective prediction: a token is *accepted* when its calibrated confidence c_i (top-1
probability) is >= a threshold tau; coverage(tau) = #{c_i >= tau} / n and selective risk(tau) =
#{accepted and wrong} / #{accepted}. :func:`select_threshold` picks the lowest tau (largest coverage)
whose risk on a labelled validation set meets a target:

* ``method="bound"`` (default) — *selection with guaranteed risk* (Geifman & El-Yaniv, "Selective
  classification for deep neural networks", NeurIPS 2017): a binary search over the sorted confidences
  in which each candidate's risk is replaced by its one-sided Clopper–Pearson upper bound at level
  delta / ceil(log2 m) (a union bound over the m-candidate search), so with probability >= 1 - delta
  the risk on new tokens from the same distribution is at most the target.
* ``method="empirical"`` — the largest coverage whose validation risk is <= target (no margin).

:func:`risk_coverage_report` gives the risk–coverage curves and AURC of the model before and after a
calibrator (tokens ranked by confidence, :mod:`tokcal.metrics`). :class:`Abstainer` holds a chosen
threshold, flags tokens below it and merges flagged tokens into character spans for review.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._io import atomic_write, read_json
from ..errors import SchemaError, ValidationError
from ..validation import OpenProbability, Params, Probability, check_params, validate_abstainer

Method = Literal["bound", "empirical"]


@dataclass(frozen=True)
class ThresholdChoice:
    """A chosen threshold: accept tokens with confidence >= ``threshold``.

    ``coverage`` and ``risk`` are measured on the validation tokens; ``risk_bound`` is the
    Clopper–Pearson upper bound used by ``method="bound"`` (NaN for ``"empirical"``). When no
    threshold meets the target, ``threshold`` is +inf and ``coverage`` 0 (abstain on everything).
    """

    threshold: float
    target_risk: float
    coverage: float
    risk: float
    risk_bound: float
    n: int
    method: str
    delta: float


class _AbstainerParams(Params):
    threshold: Probability | None  # None: +inf, abstain on every token
    target_risk: Probability | None = None
    coverage: Probability | None = None


class _ThresholdParams(Params):
    target_risk: Probability | None = None
    target_accuracy: Probability | None = None
    method: Method = "bound"
    delta: OpenProbability = 0.05


def _target(target_risk: float | None, target_accuracy: float | None) -> float:
    if (target_risk is None) == (target_accuracy is None):
        raise ValidationError("give exactly one of target_risk or target_accuracy")
    r = float(target_risk) if target_risk is not None else 1.0 - float(target_accuracy)  # type: ignore[arg-type]
    if not 0.0 <= r < 1.0:
        raise ValidationError(f"target risk must be in [0, 1), got {r!r}")
    return r


def _validated(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    a = np.asarray(correct).reshape(-1)
    if c.shape != a.shape:
        raise ValidationError(f"confidence has {c.size} values but correct has {a.size}")
    if c.size == 0:
        raise ValidationError("select_threshold: no validation tokens")
    bad = ~np.isfinite(c) | (c < 0) | (c > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValidationError(f"confidence: row {i} has value {c[i]!r}, expected a probability in [0, 1]")
    return c, a.astype(bool)


def clopper_pearson_upper(errors: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """One-sided (1 - delta) upper confidence bound on a binomial rate: Beta(1 - delta; e + 1, n - e)."""
    from scipy.stats import beta

    e = np.asarray(errors, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ub = beta.ppf(1.0 - delta, e + 1.0, np.maximum(n - e, 1e-300))
    return np.where(e >= n, 1.0, ub)


def select_threshold(
    confidence: Any,
    correct: Any,
    *,
    target_risk: float | None = None,
    target_accuracy: float | None = None,
    method: Method = "bound",
    delta: float = 0.05,
) -> ThresholdChoice:
    """Lowest confidence threshold whose selective risk meets the target (see module docstring).

    ``confidence`` [n] calibrated top-1 probabilities and ``correct`` [n] booleans of labelled
    validation tokens; ``target_accuracy`` a is the same as ``target_risk = 1 - a``.
    """
    args = check_params("select_threshold", _ThresholdParams, target_risk=target_risk,
                        target_accuracy=target_accuracy, method=method, delta=delta)
    r_target = _target(args.target_risk, args.target_accuracy)
    method, delta = args.method, args.delta
    c, a = _validated(confidence, correct)
    order = np.argsort(-c, kind="stable")
    cs, errs = c[order], np.cumsum(~a[order])
    # candidate thresholds: the distinct confidences; accepting c >= tau keeps a prefix ending at a tie's end
    last = np.flatnonzero(np.r_[cs[1:] != cs[:-1], True])
    taus, k, e = cs[last], last + 1, errs[last]
    risk = e / k
    n = c.size
    if method == "empirical":
        ok = np.flatnonzero(risk <= r_target)
        j = int(ok[-1]) if ok.size else -1
        bound = math.nan
    else:
        m = taus.size
        d = delta / max(1, math.ceil(math.log2(m)) if m > 1 else 1)
        lo, hi, j = 0, m - 1, -1  # search over candidate index (more index = more coverage)
        while lo <= hi:
            mid = (lo + hi) // 2
            if clopper_pearson_upper(e[mid], k[mid], d) <= r_target:
                j, lo = mid, mid + 1
            else:
                hi = mid - 1
        bound = float(clopper_pearson_upper(e[j], k[j], d)) if j >= 0 else math.nan
    if j < 0:
        return ThresholdChoice(math.inf, r_target, 0.0, math.nan, math.nan, n, method, delta)
    return ThresholdChoice(float(taus[j]), r_target, float(k[j] / n), float(risk[j]), bound, n, method, delta)


def risk_coverage_report(table: Any, calibrator: Any = None) -> dict[str, Any]:
    """Risk–coverage curves and AURC of ``table``'s labelled tokens before and after ``calibrator``.

    Returns ``{"before": {...}, "after": {...}}`` (``"after"`` only with a calibrator), each with
    ``"coverage"``, ``"risk"`` (lists, tokens ranked by confidence as in :func:`tokcal.metrics.risk_coverage`)
    and ``"aurc"``.
    """
    from .. import metrics
    from ..probs import token_probs

    def curve(probs: Any) -> dict[str, Any]:
        lab = probs.labeled
        conf, corr = probs.confidence[lab], probs.correct[lab]
        cov, risk = metrics.risk_coverage(conf, corr)[:2]
        return {"coverage": np.asarray(cov).tolist(), "risk": np.asarray(risk).tolist(),
                "aurc": float(metrics.aurc(conf, corr))}

    out = {"before": curve(token_probs(table))}
    if calibrator is not None:
        out["after"] = curve(calibrator.token_probs(table))
    return out


@dataclass
class Abstainer:
    """Flags tokens whose calibrated confidence is below ``threshold`` (they need review).

    Build one from a validation table with :meth:`fit`, or directly with a threshold.
    """

    threshold: float
    target_risk: float = math.nan
    coverage: float = math.nan

    def __post_init__(self) -> None:
        def nan_as_none(x: Any) -> Any:  # NaN: undefined
            return None if isinstance(x, float) and math.isnan(x) else x

        inf = isinstance(self.threshold, float) and self.threshold == math.inf
        args = check_params("Abstainer", _AbstainerParams, threshold=None if inf else self.threshold,
                            target_risk=nan_as_none(self.target_risk), coverage=nan_as_none(self.coverage))
        self.threshold = math.inf if args.threshold is None else float(args.threshold)
        self.target_risk = math.nan if args.target_risk is None else float(args.target_risk)
        self.coverage = math.nan if args.coverage is None else float(args.coverage)

    @classmethod
    def fit(
        cls,
        table: Any,
        calibrator: Any = None,
        *,
        target_risk: float | None = None,
        target_accuracy: float | None = None,
        method: Method = "bound",
        delta: float = 0.05,
    ) -> Abstainer:
        """Choose the threshold on the labelled rows of a TokenTable, confidences after ``calibrator``."""
        from ..probs import token_probs

        probs = calibrator.token_probs(table) if calibrator is not None else token_probs(table)
        lab = probs.labeled
        choice = select_threshold(probs.confidence[lab], probs.correct[lab], target_risk=target_risk,
                                  target_accuracy=target_accuracy, method=method, delta=delta)
        return cls(choice.threshold, choice.target_risk, choice.coverage)

    def flag(self, confidence: Any) -> np.ndarray:
        """True where the confidence is below the threshold (NaN confidence — no prediction — is not flagged)."""
        c = np.asarray(confidence, dtype=np.float64)
        return c < self.threshold

    @staticmethod
    def review_spans(flags: Any, spans: Any, max_gap: int = 1) -> list[tuple[int, int]]:
        """Merge the character spans ``[start, end)`` of flagged tokens into review regions.

        Two flagged tokens whose indices differ by at most ``max_gap`` fall in one region (the
        default 1 merges only adjacent tokens; 2 also bridges one confident token between them).
        """
        f = np.asarray(flags, dtype=bool)
        s = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        out: list[tuple[int, int]] = []
        last_i = -(10**9)
        for i in np.flatnonzero(f):
            if out and i - last_i <= max_gap:
                out[-1] = (out[-1][0], int(s[i, 1]))
            else:
                out.append((int(s[i, 0]), int(s[i, 1])))
            last_i = i
        return [r for r in out if r[1] > r[0]]

    def to_dict(self) -> dict[str, Any]:
        d = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}
        return {"type": "abstainer", **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "abstainer") -> Abstainer:
        if not isinstance(d, dict) or d.get("type") != "abstainer":
            raise SchemaError(f"{where}: not a tokcal abstainer")
        doc = validate_abstainer(d, where)
        undefined = {k: (math.nan if v is None else v) for k, v in
                     (("target_risk", doc.target_risk), ("coverage", doc.coverage))}
        return cls(math.inf if doc.threshold is None else doc.threshold, **undefined)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1)

        def write(tmp: str) -> None:
            Path(tmp).write_text(text + "\n", encoding="utf-8")

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Abstainer:
        return cls.from_dict(read_json(path, "abstainer file"), where=str(path))
