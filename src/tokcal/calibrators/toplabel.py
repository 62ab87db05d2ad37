"""Top-label calibrators: remap the confidence of the predicted token, rescale the rest.

A map g: [0, 1] -> [0, 1] is fitted on (c_i, a_i) = (top-1 probability at T = 1, 1[argmax = label]).
The calibrated distribution puts ``c' = g(c)`` on the model's argmax and multiplies every other
probability by ``r = (1 - c') / (1 - c)``, so rows still sum to 1 and the ranking of the other ids is
kept. Then

    p'(y) = c' if y is the argmax else r p(y);      sum_j p'_j^2 = c'^2 + r^2 sum_{j != argmax} p_j^2;
    H' = -c' log c' - (1 - c') log r - r sum_{j != argmax} p_j log p_j.

Top-label convention (Gupta & Ramdas 2022, "Top-label calibration and multiclass-to-binary
reductions"): the prediction stays the model's argmax and ``c'`` is its calibrated confidence, so
:meth:`token_probs` keeps the predicted id first even in the rare rows where ``c' < r * p_2`` (the
metrics then score exactly the calibrated confidence of the prediction). The calibrated
*distribution* can then have another mode, so for decoding these calibrators **can change the
argmax** (``preserves_argmax = False``: the generate processor refuses them unless allowed).

* :class:`HistogramBinning` — Zadrozny & Elkan 2001: the accuracy of the bin (equal-mass bins).
* :class:`Isotonic` — Zadrozny & Elkan 2002, scikit-learn ``IsotonicRegression``; applied by
  linear interpolation between its thresholds (what scikit-learn's ``predict`` does).
* :class:`BetaCalibration` — Kull, Silva Filho & Flach 2017: ``logit g(c) = a ln c - b ln(1 - c) + m``
  with a, b >= 0 (monotone), fitted by bounded L-BFGS on the log-loss.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator
from scipy.optimize import minimize
from scipy.special import expit

from .. import sketch as _sketch
from ..probs import TokenProbs, token_probs
from ..table import TokenTable
from ..validation import MAX_BINS, Binning, Float, Int, NonNegativeFloat, Params, PositiveInt, Probability
from .base import Calibrator, CalibratorDoc, check_logits, is_tensor, labeled_rows

_EPS = 1e-12


class TopLabelCalibrator(Calibrator):
    """Base class: subclasses implement :meth:`_fit_map` and :meth:`map_confidence`."""

    preserves_argmax = False

    @abstractmethod
    def map_confidence(self, c: np.ndarray) -> np.ndarray:
        """Calibrated confidence g(c) in [0, 1]."""

    @abstractmethod
    def _fit_map(self, c: np.ndarray, a: np.ndarray) -> None:
        """Fit g on confidences ``c`` and correctness ``a`` (float64)."""

    def fit(self, table: TokenTable, **_: Any) -> TopLabelCalibrator:
        lab = labeled_rows(table, f"{type(self).__name__}.fit")
        tp = token_probs(lab)
        self._fit_map(tp.confidence.astype(np.float64), tp.correct.astype(np.float64))
        return self

    def _mapped(self, c: np.ndarray, rest: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(c', r)``; ``rest``: the mass off the argmax summed directly (more precise than ``1 - c``)."""
        c = np.minimum(c, 1.0)
        c2 = np.clip(self.map_confidence(c), 0.0, 1.0)
        denom = 1.0 - c if rest is None else rest
        r = (1.0 - c2) / np.maximum(denom, _EPS)
        return c2, r

    def token_probs(self, table: TokenTable) -> TokenProbs:
        self._require_fitted()
        base = token_probs(table)
        c = np.minimum(base.top_probs[:, 0], 1.0)
        # Sums over the ids off the argmax are taken directly (other top-k ids + the tail, from the tail
        # cumulants f(1), f'(1), f(2)), not as differences like 1 - c: near c = 1 the float32 log-normaliser
        # would leave those differences with a large relative error.
        sk = table.sketch
        n = len(sk)
        logz = sk.log_normalizer.astype(np.float64)
        f1, g1, _ = _sketch.tail_cumulants(sk, np.ones(n))
        f2 = _sketch.tail_cumulants(sk, np.full(n, 2.0))[0]
        others = base.top_probs[:, 1:]
        with np.errstate(invalid="ignore", over="ignore"):
            tail_mass = np.where(np.isfinite(f1), np.exp(f1 - logz), 0.0)
            tail_sq = np.where(np.isfinite(f2), np.exp(f2 - 2.0 * logz), 0.0)
            tail_h = np.where(tail_mass > 0, tail_mass * (logz - g1), 0.0)
        rest = others.sum(axis=1) + tail_mass
        sq_rest = (others * others).sum(axis=1) + tail_sq
        h_rest = -_xlogx(others).sum(axis=1) + tail_h
        c2, r = self._mapped(c, rest)
        top = base.top_probs * r[:, None]
        top[:, 0] = c2
        ids = base.top_ids
        is_top = base.label == ids[:, 0]
        label_prob = np.where(is_top, c2, r * base.label_prob)
        sum_sq = c2 * c2 + r * r * sq_rest
        log_r = np.log(np.where(r > 0, r, 1.0))
        ent = -_xlogx(c2) - (1.0 - c2) * log_r + r * h_rest
        return TokenProbs(ids, top, base.label, label_prob, sum_sq, np.maximum(ent, 0.0))

    def transform_logits(self, logits: Any, context: dict[str, Any] | None = None) -> Any:
        """Log-probabilities of the calibrated distribution (valid logits: softmax gives it back)."""
        self._require_fitted()
        check_logits(logits)
        if is_tensor(logits):
            import torch

            logp = torch.log_softmax(logits.double() if logits.device.type == "cpu" else logits.float(), dim=-1)
            lc, arg = logp.max(dim=-1)
            c = lc.exp().cpu().numpy().astype(np.float64)
            rest = logp.exp().scatter(1, arg[:, None], 0.0).sum(dim=-1).cpu().numpy().astype(np.float64)
            c2, r = self._mapped(c, rest)
            log_r = torch.as_tensor(np.log(np.maximum(r, 1e-300)), dtype=logp.dtype, device=logp.device)
            out = logp + log_r[:, None]
            out.scatter_(1, arg[:, None], torch.as_tensor(np.log(np.maximum(c2, 1e-300)), dtype=logp.dtype,
                                                          device=logp.device)[:, None])
            return out.to(logits.dtype)
        z = np.asarray(logits)
        z64 = z.astype(np.float64)
        mx = z64.max(axis=1, keepdims=True)
        logp = z64 - mx - np.log(np.exp(z64 - mx).sum(axis=1, keepdims=True))
        arg = logp.argmax(axis=1)
        rows = np.arange(len(arg))
        c = np.exp(logp[rows, arg])
        p = np.exp(logp)
        p[rows, arg] = 0.0
        c2, r = self._mapped(c, p.sum(axis=1))
        out = logp + np.log(np.maximum(r, 1e-300))[:, None]
        out[rows, arg] = np.log(np.maximum(c2, 1e-300))
        return out.astype(z.dtype if np.issubdtype(z.dtype, np.floating) else np.float64, copy=False)


def _xlogx(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def _ascending(name: str, v: list[float], strict: bool = False) -> None:
    bad = [i for i in range(1, len(v)) if (v[i] <= v[i - 1] if strict else v[i] < v[i - 1])]
    if bad:
        raise ValueError(f"{name} must be {'strictly ' if strict else ''}ascending, got {v[bad[0] - 1]!r} then "
                         f"{v[bad[0]]!r} at [{bad[0]}]")


class HistogramBinningParams(Params):
    """``bins`` (1 to MAX_BINS), ``binning`` ("mass" or "width"), ``min_count`` (>= 1)."""

    bins: Annotated[Int, Field(ge=1, le=MAX_BINS)] = 15
    binning: Binning = "mass"
    min_count: PositiveInt = 1


class HistogramBinningDoc(CalibratorDoc):
    settings: HistogramBinningParams = HistogramBinningParams()
    edges: list[Probability]
    values: list[Probability]

    @model_validator(mode="after")
    def _consistent(self) -> HistogramBinningDoc:
        if len(self.edges) != len(self.values) + 1 or not self.values:
            raise ValueError(f"edges must have one more value than values, got {len(self.edges)} and "
                             f"{len(self.values)}")
        if len(self.values) > self.settings.bins:
            raise ValueError(f"values must have at most settings.bins={self.settings.bins} entries, "
                             f"got {len(self.values)}")
        if self.edges[0] != 0.0 or self.edges[-1] != 1.0:
            raise ValueError(f"edges must run from 0 to 1, got {self.edges[0]!r} to {self.edges[-1]!r}")
        _ascending("edges", self.edges)
        return self


class HistogramBinning(TopLabelCalibrator):
    """Map each confidence to the accuracy of its bin (``bins`` equal-mass bins by default).

    A bin with fewer than ``min_count`` fitting tokens falls back to its mean confidence.
    """

    type_name = "histogram_binning"
    Params = HistogramBinningParams
    Doc = HistogramBinningDoc
    legacy_settings = ("bins", "binning", "min_count")

    def __init__(self, bins: int = 15, *, binning: str = "mass", min_count: int = 1) -> None:
        super().__init__(bins=bins, binning=binning, min_count=min_count)
        self.edges: np.ndarray | None = None
        self.values: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self.values is not None

    def inner_quantiles(self) -> np.ndarray:
        """The quantile levels of the inner edges (``binning="mass"``)."""
        return np.linspace(0, 1, self.bins + 1)[1:-1]

    def _fit_map(self, c: np.ndarray, a: np.ndarray) -> None:
        if self.binning == "mass":
            inner = np.unique(np.quantile(c, self.inner_quantiles()))
        else:
            inner = np.linspace(0, 1, self.bins + 1)[1:-1]
        self.set_bins(inner, *self.bin_sums(inner, c, a))

    @staticmethod
    def bin_sums(inner: np.ndarray, c: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count, correctness and confidence sums of ``c`` in the bins of the inner edges ``inner``
        (mergeable: sums of shards add up)."""
        b = np.searchsorted(inner, c, side="right")
        nb = len(inner) + 1
        return (np.bincount(b, minlength=nb).astype(np.float64), np.bincount(b, weights=a, minlength=nb),
                np.bincount(b, weights=c, minlength=nb))

    def set_bins(self, inner: np.ndarray, cnt: np.ndarray, acc: np.ndarray, conf: np.ndarray) -> None:
        """The fitted map from the inner edges and the sums of :meth:`bin_sums` over the fitting tokens."""
        self.edges = np.concatenate([[0.0], inner, [1.0]])
        mid = 0.5 * (self.edges[:-1] + self.edges[1:])
        self.values = np.where(cnt >= max(self.min_count, 1), acc / np.maximum(cnt, 1),
                               np.where(cnt > 0, conf / np.maximum(cnt, 1), mid))

    def map_confidence(self, c: np.ndarray) -> np.ndarray:
        return self.values[np.searchsorted(self.edges[1:-1], c, side="right")]

    def _state(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "values": self.values.tolist()}

    def _load_state(self, doc: HistogramBinningDoc) -> None:
        self.edges, self.values = np.asarray(doc.edges, np.float64), np.asarray(doc.values, np.float64)

    def _learned_summary(self) -> dict[str, Any]:
        return {"bins_fitted": len(self.values)}


class IsotonicDoc(CalibratorDoc):
    x: list[Probability]
    y: list[Probability]

    @model_validator(mode="after")
    def _consistent(self) -> IsotonicDoc:
        if len(self.x) != len(self.y) or not self.x:
            raise ValueError(f"x and y must have the same, non-zero length, got {len(self.x)} and {len(self.y)}")
        _ascending("x", self.x)
        _ascending("y", self.y)
        return self


class Isotonic(TopLabelCalibrator):
    """Isotonic regression of correctness on confidence (scikit-learn), clipped outside the data."""

    type_name = "isotonic"
    Doc = IsotonicDoc

    def __init__(self) -> None:
        super().__init__()
        self.x: np.ndarray | None = None
        self.y: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self.x is not None

    def _fit_map(self, c: np.ndarray, a: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(c, a)
        self.x = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def map_confidence(self, c: np.ndarray) -> np.ndarray:
        return np.interp(c, self.x, self.y)

    def _state(self) -> dict[str, Any]:
        return {"x": self.x.tolist(), "y": self.y.tolist()}

    def _load_state(self, doc: IsotonicDoc) -> None:
        self.x, self.y = np.asarray(doc.x, np.float64), np.asarray(doc.y, np.float64)

    def _learned_summary(self) -> dict[str, Any]:
        return {"points": len(self.x)}


class BetaCalibrationDoc(CalibratorDoc):
    a: NonNegativeFloat
    b: NonNegativeFloat
    m: Float


class BetaCalibration(TopLabelCalibrator):
    """Beta calibration (Kull et al. 2017): ``g(c) = 1 / (1 + exp(-(a ln c - b ln(1 - c) + m)))``."""

    type_name = "beta"
    Doc = BetaCalibrationDoc

    def __init__(self) -> None:
        super().__init__()
        self.a: float | None = None
        self.b: float | None = None
        self.m: float | None = None

    @property
    def fitted(self) -> bool:
        return self.a is not None

    @staticmethod
    def _design(c: np.ndarray) -> np.ndarray:
        c = np.clip(c, 1e-7, 1 - 1e-7)
        return np.stack([np.log(c), -np.log1p(-c)], axis=1)

    def _fit_map(self, c: np.ndarray, a: np.ndarray) -> None:
        x = self._design(c)
        n = len(c)

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            s = x @ theta[:2] + theta[2]
            # log-loss = log(1 + e^s) - a s, gradient (sigmoid(s) - a)
            val = np.logaddexp(0.0, s) - a * s
            d = (expit(s) - a) / n
            return float(val.mean()), np.concatenate([x.T @ d, [d.sum()]])

        res = minimize(loss, np.array([1.0, 1.0, 0.0]), jac=True, method="L-BFGS-B",
                       bounds=[(0.0, None), (0.0, None), (None, None)])
        self.a, self.b, self.m = (float(v) for v in res.x)

    def map_confidence(self, c: np.ndarray) -> np.ndarray:
        return expit(self._design(c) @ np.array([self.a, self.b]) + self.m)

    def _state(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "m": self.m}

    def _load_state(self, doc: BetaCalibrationDoc) -> None:
        self.a, self.b, self.m = doc.a, doc.b, doc.m
