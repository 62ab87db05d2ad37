"""Adaptive temperature: a per-token inverse temperature from a small log-linear model.

``log beta_i = w . phi_i + b`` with standardised features phi_i (Joy et al. 2023 "Sample-dependent
adaptive temperature scaling"; Xie et al. 2024 "Calibrating language models with adaptive
temperature scaling" use the same idea with a neural head). The features, all from the model's own
distribution at T = 1 plus context:

* entropy H (nats), top-1 log-prob, top-1 minus top-2 logit (the margin),
* ``log(1 + position)``,
* ``floor(log2(1 + count))`` of the predicted id in the fitting table's gold labels, or in a reference
  frequency (``fit(table, freq_reference=...)``, :mod:`tokcal.frequency`) (frequency bucket),
* one-hots of the chosen group columns, and the table's ``features`` columns (optional).

Objective: mean NLL + (l2 / 2) |w|^2, minimised by L-BFGS (scipy) with the analytic gradient
``dNLL/dbeta_i = E_p[z]_i - z_{i,y_i}`` chained through ``dbeta_i/dtheta = beta_i [phi_i, 1]``; log beta
is clipped to the temperature bounds (zero gradient outside). The same feature function runs on raw
logits at apply time (:meth:`AdaptiveTemperature.transform_logits`), so decoding can use it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, model_validator
from scipy.optimize import minimize

from .. import sketch as _sketch
from ..errors import ConvergenceError, ValidationError
from ..table import TokenTable
from ..validation import Bool, Float, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from .base import CalibratorDoc, as_rows, is_tensor, labeled_rows
from .temperature import (
    DEFAULT_BOUNDS,
    CalibrationWarning,
    TemperatureFamily,
    TemperatureFamilyParams,
    fit_beta,
    json_info,
    nll_terms,
)

BASE_FEATURES = ("entropy", "top1_logprob", "margin", "log_position", "freq_bucket")


def _names(v: Any) -> Any:
    """Group names as a tuple (a single string is one name, not its characters)."""
    if isinstance(v, str):
        return (v,)
    return tuple(v) if isinstance(v, list | tuple) else v


def _freq_bucket(counts: np.ndarray) -> np.ndarray:
    return np.floor(np.log2(1.0 + counts))


def logit_features(logits: Any) -> np.ndarray:
    """``[entropy, top-1 log-prob, margin]`` per row of raw logits [N, V] at T = 1 (numpy or torch).

    Matches :func:`tokcal.sketch.entropy` / ``top_logprobs`` on the sketch of the same logits.
    """
    if is_tensor(logits):
        import torch

        # one float32 exp pass on the device (this runs at every decoding step), sums in float64:
        # with c = z - max z, log Z - max z = log sum e^c, entropy = that - sum(e^c c) / sum(e^c)
        top2 = logits.detach().float().topk(min(2, logits.shape[-1]), dim=-1).values
        c = logits.detach().float() - top2[:, :1]
        e = c.exp()
        s = e.sum(dim=-1, dtype=torch.float64)
        log_s = s.log()
        ent = log_s - (e * c).sum(dim=-1, dtype=torch.float64) / s
        margin = (top2[:, 0] - top2[:, 1]).double() if top2.shape[1] > 1 else torch.zeros_like(ent)
        return torch.stack([ent, -log_s, margin], dim=1).cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    mx = z.max(axis=1, keepdims=True)
    logp = z - mx - np.log(np.exp(z - mx).sum(axis=1, keepdims=True))
    ent = -(np.exp(logp) * logp).sum(axis=1)
    if z.shape[1] > 1:
        top2 = -np.partition(-z, 1, axis=1)[:, :2]
        margin = top2[:, 0] - top2[:, 1]
    else:
        margin = np.zeros(len(z))
    return np.stack([ent, logp.max(axis=1), margin], axis=1)


def table_logit_features(table: TokenTable) -> np.ndarray:
    """The same three features from a TokenTable's sketch (exact at T = 1)."""
    sk = table.sketch
    ent = _sketch.entropy(sk, 1.0)
    top1 = sk.top_logits[:, 0].astype(np.float64) - sk.log_normalizer.astype(np.float64)
    margin = (sk.top_logits[:, 0] - sk.top_logits[:, 1]).astype(np.float64) if sk.k > 1 else np.zeros(len(sk))
    return np.stack([ent, top1, margin], axis=1)


class AdaptiveTemperatureParams(TemperatureFamilyParams):
    """``groups``: group columns to one-hot encode; ``use_features``: ``"auto"``, True or False; ``l2``: ridge
    penalty (>= 0); ``max_iter``: L-BFGS iterations."""

    groups: Annotated[tuple[str, ...], BeforeValidator(_names)] = ()
    use_features: Literal["auto"] | Bool = "auto"
    l2: NonNegativeFloat = 1e-3
    max_iter: PositiveInt = 500


class AdaptiveTemperatureDoc(CalibratorDoc):
    settings: AdaptiveTemperatureParams = AdaptiveTemperatureParams()
    feature_names: list[str]
    categories: dict[str, list[str]]
    n_user_features: NonNegativeInt
    freq_ids: list[NonNegativeInt]
    freq_counts: list[NonNegativeFloat]
    mean: list[Float]
    scale: list[PositiveFloat]
    weights: list[Float]
    bias: Float
    fit: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AdaptiveTemperatureDoc:
        groups = self.settings.groups
        if sorted(self.categories) != sorted(groups):
            raise ValueError(f"categories must have one entry per settings.groups {list(groups)}, "
                             f"got {sorted(self.categories)}")
        expect = feature_names(groups, self.categories, self.n_user_features)
        if self.feature_names != expect:
            raise ValueError(f"feature_names must be {expect} (from groups, categories and n_user_features), "
                             f"got {self.feature_names}")
        f = len(expect)
        for name in ("mean", "scale", "weights"):
            if len(getattr(self, name)) != f:
                raise ValueError(f"{name} must have {f} values (one per feature), got {len(getattr(self, name))}")
        if len(self.freq_ids) != len(self.freq_counts):
            raise ValueError(f"freq_ids and freq_counts must have the same length, got {len(self.freq_ids)} "
                             f"and {len(self.freq_counts)}")
        if any(b <= a for a, b in zip(self.freq_ids, self.freq_ids[1:], strict=False)):
            raise ValueError("freq_ids must be strictly increasing")
        return self


def feature_names(groups: Sequence[str], categories: dict[str, list[str]], n_user: int) -> list[str]:
    """Names of the feature columns: the base features, one per (group, category), one per user feature."""
    return [*BASE_FEATURES, *(f"{g}={c}" for g in groups for c in categories[g]),
            *(f"feature{j}" for j in range(n_user))]


class AdaptiveTemperature(TemperatureFamily):
    """Per-token temperature ``T_i = exp(-(w . phi_i + b))`` (see the module docstring).

    ``groups``: group columns to one-hot encode; ``use_features``: ``"auto"`` (use ``table.features``
    when present), True or False; ``l2``: ridge penalty on w (standardised features). A fit whose
    temperatures reach a bound for some tokens gives a :class:`CalibrationWarning` with their share.
    """

    type_name = "adaptive_temperature"
    Params = AdaptiveTemperatureParams
    Doc = AdaptiveTemperatureDoc
    legacy_settings = ("groups", "use_features", "l2", "bounds")

    def __init__(self, *, groups: Sequence[str] = (), use_features: bool | str = "auto", l2: float = 1e-3,
                 bounds: tuple[float, float] = DEFAULT_BOUNDS, max_iter: int = 500, seed: int = 0) -> None:
        super().__init__(groups=groups, use_features=use_features, l2=l2, bounds=bounds, max_iter=max_iter,
                         seed=seed)
        self.feature_names: list[str] = []
        self.categories: dict[str, list[str]] = {}
        self.n_user_features = 0
        self.freq_ids = np.zeros(0, np.int64)
        self.freq_counts = np.zeros(0, np.float64)
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.weights: np.ndarray | None = None
        self.bias: float | None = None
        self.fit_info: dict[str, Any] = {}

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    # -- features ------------------------------------------------------------------------------

    def _counts_of(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.freq_ids, ids)
        pos = np.clip(pos, 0, max(len(self.freq_ids) - 1, 0))
        hit = (self.freq_ids[pos] == ids) if len(self.freq_ids) else np.zeros(len(ids), bool)
        return np.where(hit, self.freq_counts[pos] if len(self.freq_ids) else 0.0, 0.0)

    def _assemble(self, base3: np.ndarray, position: np.ndarray, predicted: np.ndarray,
                  group_values: dict[str, np.ndarray], user: np.ndarray | None) -> np.ndarray:
        cols = [base3, np.log1p(np.maximum(position, 0))[:, None], _freq_bucket(self._counts_of(predicted))[:, None]]
        for name in self.groups:
            vals = group_values[name]
            cols.append(np.stack([vals == c for c in self.categories[name]], axis=1).astype(np.float64))
        if self.n_user_features:
            if user is None or user.shape != (len(base3), self.n_user_features):
                raise ValidationError(f"AdaptiveTemperature: expected features of shape ({len(base3)}, "
                                      f"{self.n_user_features}), got {None if user is None else user.shape}")
            cols.append(user.astype(np.float64))
        return np.concatenate(cols, axis=1)

    def table_features(self, table: TokenTable) -> np.ndarray:
        """Raw (unstandardised) feature matrix of a TokenTable."""
        gv = {name: table.group(name).values().astype(str) for name in self.groups}
        return self._assemble(table_logit_features(table), table.position.astype(np.float64), table.predicted,
                              gv, table.features)

    def context_features(self, logits: Any, context: dict[str, Any] | None) -> np.ndarray:
        """Raw feature matrix of raw logits + context (``position``, group values, ``features``)."""
        context = context or {}
        n = int(logits.shape[0])
        top = logits.argmax(dim=-1).cpu().numpy() if is_tensor(logits) else np.asarray(logits).argmax(axis=1)
        if "position" not in context:
            raise ValidationError("AdaptiveTemperature.transform_logits: context must give 'position' "
                                  "(index of each predicted token in its sequence)")
        pos = as_rows(context["position"], n, "position")
        gv = {}
        for name in self.groups:
            if name not in context:
                raise ValidationError(f"AdaptiveTemperature.transform_logits: context must give group '{name}'")
            gv[name] = as_rows(context[name], n, name, dtype=None).astype(str)
        user = context.get("features")
        if user is not None:
            user = np.asarray(user.detach().cpu().numpy() if is_tensor(user) else user, dtype=np.float64)
        return self._assemble(logit_features(logits), pos, top, gv, user)

    def _log_beta(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        phi = (raw - self.mean) / self.scale
        lb = phi @ self.weights + self.bias
        return lb, phi

    def _temps(self, raw: np.ndarray) -> np.ndarray:
        lb, _ = self._log_beta(raw)
        lo, hi = math.log(1.0 / self.bounds[1]), math.log(1.0 / self.bounds[0])
        return np.exp(-np.clip(lb, lo, hi))

    def row_temperatures(self, table: TokenTable) -> np.ndarray:
        return self._temps(self.table_features(table))

    def logit_temperatures(self, logits: Any, context: dict[str, Any] | None) -> np.ndarray:
        return self._temps(self.context_features(logits, context))

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, table: TokenTable, *, freq_reference: Any = None, **_: Any) -> AdaptiveTemperature:
        """Fit on ``table``; ``freq_reference`` (anything :func:`tokcal.frequency.load_reference` takes
        except None) gives the counts of the frequency feature instead of the table's gold labels."""
        lab = labeled_rows(table, "AdaptiveTemperature.fit")
        for name in self.groups:
            self.categories[name] = list(lab.group(name).categories)
        use = self.use_features
        self.n_user_features = int(lab.features.shape[1]) if (lab.features is not None and use) else 0
        if use is True and lab.features is None:
            raise ValidationError("AdaptiveTemperature(use_features=True): the table has no features column")
        if freq_reference is not None:
            from ..frequency import load_reference

            ref = load_reference(freq_reference, table)
            if ref.counts is None:
                raise ValidationError(f"AdaptiveTemperature: the frequency reference {ref.name} has no counts")
            ids = np.flatnonzero(ref.counts > 0)
            self.freq_ids, self.freq_counts = ids.astype(np.int64), ref.counts[ids]
            freq_note = f"{ref.tag()} ({ref.name})"
        else:
            freq_note = "fitting table"
            ids, counts = np.unique(lab.label, return_counts=True)
            self.freq_ids, self.freq_counts = ids.astype(np.int64), counts.astype(np.float64)
        self.feature_names = feature_names(self.groups, self.categories, self.n_user_features)
        raw = self.table_features(lab)
        self.mean = raw.mean(axis=0)
        sd = raw.std(axis=0)
        self.scale = np.where(sd > 1e-12, sd, 1.0)
        phi = (raw - self.mean) / self.scale
        sk = lab.sketch
        beta0, _ = fit_beta(sk, self.bounds, seed=self.seed, what="AdaptiveTemperature (warm start)")
        lo, hi = math.log(1.0 / self.bounds[1]), math.log(1.0 / self.bounds[0])
        n, f = phi.shape

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:f], theta[f]
            lb = phi @ w + b
            inside = (lb > lo) & (lb < hi)
            beta = np.exp(np.clip(lb, lo, hi))
            nll, dbeta, _ = nll_terms(sk, beta)
            dl = np.where(inside, dbeta * beta, 0.0) / n
            grad = np.concatenate([phi.T @ dl + self.l2 * w, [dl.sum()]])
            return float(nll.mean() + 0.5 * self.l2 * w @ w), grad

        theta0 = np.concatenate([np.zeros(f), [math.log(beta0)]])
        res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": self.max_iter, "gtol": 1e-9, "ftol": 1e-13})
        if not np.all(np.isfinite(res.x)) or (not res.success and res.nit >= self.max_iter):
            raise ConvergenceError(f"AdaptiveTemperature: L-BFGS did not converge ({res.message})")
        self.weights, self.bias = res.x[:f].copy(), float(res.x[f])
        lb = phi @ self.weights + self.bias
        at_lo, at_hi = float(np.mean(lb <= lo)), float(np.mean(lb >= hi))
        self.fit_info = {"n": n, "iterations": int(res.nit), "nll": float(res.fun), "message": str(res.message),
                         "global_temperature": 1.0 / beta0, "freq_reference": freq_note,
                         "share_at_T_max": at_lo, "share_at_T_min": at_hi}
        for share, bound in ((at_hi, "T_min"), (at_lo, "T_max")):
            if share > 0:
                t = self.bounds[0] if bound == "T_min" else self.bounds[1]
                warnings.warn(f"AdaptiveTemperature: the temperature of {share:.1%} of the fitting tokens hit the "
                              f"bound T={t:g} ({bound}); the model wants a temperature outside bounds="
                              f"{self.bounds}: widen the bounds or check those tokens", CalibrationWarning,
                              stacklevel=2)
        return self

    def coefficients(self) -> dict[str, float]:
        """Weight of each (standardised) feature, plus ``"bias"``."""
        self._require_fitted()
        return {**dict(zip(self.feature_names, self.weights.tolist(), strict=True)), "bias": self.bias}

    # -- persistence ---------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"feature_names": self.feature_names, "categories": self.categories,
                "n_user_features": self.n_user_features, "freq_ids": self.freq_ids.tolist(),
                "freq_counts": self.freq_counts.tolist(), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": self.bias, "fit": json_info(self.fit_info)}

    def _load_state(self, doc: AdaptiveTemperatureDoc) -> None:
        self.feature_names, self.categories = list(doc.feature_names), dict(doc.categories)
        self.n_user_features = doc.n_user_features
        self.freq_ids = np.asarray(doc.freq_ids, dtype=np.int64)
        self.freq_counts = np.asarray(doc.freq_counts, dtype=np.float64)
        self.mean, self.scale = np.asarray(doc.mean, np.float64), np.asarray(doc.scale, np.float64)
        self.weights, self.bias = np.asarray(doc.weights, np.float64), doc.bias
        self.fit_info = dict(doc.fit or {})

    def _learned_summary(self) -> dict[str, Any]:
        return {"features": len(self.feature_names), "bias": self.bias}
