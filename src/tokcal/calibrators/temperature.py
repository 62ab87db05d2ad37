"""Temperature scaling fitted by Newton's method on the inverse temperature (Guo et al. 2017).

With beta = 1/T and p = softmax(beta z), the mean negative log-likelihood of the gold tokens is

    NLL(beta) = mean_i [ log Z_i(beta) - beta z_{i,y_i} ]
    NLL'(beta) = mean_i [ E_p[z]_i - z_{i,y_i} ]          NLL''(beta) = mean_i Var_p[z]_i >= 0,

so NLL is convex in beta and Newton's method converges quadratically. All three per-row quantities
come from :func:`tokcal.sketch.logit_moments` (the one definition of "softmax at temperature T",
docs/architecture.md), so a fit reads only the sketch: O(k + B) numbers per token, never the full logits.

The step is safeguarded: a bracket [lo, hi] on beta shrinks with the sign of the gradient; a step
leaving it bisects instead; beta is bounded to [1/T_max, 1/T_min] (T in [0.05, 20] by default) and
a bound that is hit gives a :class:`CalibrationWarning` (e.g. every token correct: the NLL falls
forever as T -> 0). A fit that does not converge raises :class:`~tokcal.errors.ConvergenceError`.
"""

from __future__ import annotations

import math
import os
import warnings
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import model_validator

from .. import sketch as _sketch
from ..bootstrap import resampling_units
from ..errors import ConvergenceError, TokcalWarning, ValidationError
from ..probs import TokenProbs, token_probs
from ..sketch import LogitSketch
from ..table import TokenTable
from ..validation import Params as _Params
from ..validation import Seed, TemperatureBounds, TemperatureValue
from .base import Calibrator, CalibratorDoc, check_logits, labeled_rows, scale_logits

DEFAULT_BOUNDS = (0.05, 20.0)
_CHUNK = 65536
_WARM_ROWS = 65536  # rows of the sub-sample that warm-starts Newton on big tables


class CalibrationWarning(TokcalWarning):
    """A fit stopped at a bound or on too little data, or a guarantee does not hold (usable but suspect)."""


# ----------------------------------------------------------------------------------------------
# per-row NLL, gradient and curvature in beta, from the sketch
# ----------------------------------------------------------------------------------------------


def sketch_rows(sk: LogitSketch, start: int, stop: int) -> LogitSketch:
    """Rows ``start:stop`` of a sketch (views, no copy)."""
    return LogitSketch(sk.top_ids[start:stop], sk.top_logits[start:stop], sk.label_logit[start:stop],
                       sk.log_normalizer[start:stop], sk.tail[start:stop], sk.layout, sk.vocab_size)


def nll_terms(sk: LogitSketch, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: ``log Z(beta) - beta z_y``, ``E_p[z] - z_y`` and ``Var_p[z]`` (beta one per row)."""
    logz, mean, var = _sketch.logit_moments(sk, 1.0 / beta)
    zy = sk.label_logit.astype(np.float64)
    return logz - beta * zy, mean - zy, var


def nll_sums(sk: LogitSketch, beta: float, chunk: int = _CHUNK) -> np.ndarray:
    """``[sum NLL, sum NLL', sum NLL'']`` over all rows of a labelled sketch at a scalar beta."""
    out = np.zeros(3)
    for s in range(0, len(sk), chunk):
        part = sketch_rows(sk, s, min(len(sk), s + chunk))
        nll, grad, hess = nll_terms(part, np.full(len(part), beta))
        out += (nll.sum(), grad.sum(), hess.sum())
    return out


# ----------------------------------------------------------------------------------------------
# safeguarded 1-D Newton
# ----------------------------------------------------------------------------------------------


def newton_beta(
    evaluate: Callable[[float], np.ndarray],
    beta0: float,
    bounds: tuple[float, float],
    *,
    rtol: float = 1e-4,
    max_iter: int = 60,
    what: str = "temperature",
) -> tuple[float, dict[str, Any]]:
    """Minimise a convex NLL(beta) on ``[lo, hi]`` from ``evaluate(beta) -> [nll, grad, hess]`` (means).

    Stops when the Newton step is below ``rtol * beta`` and returns ``beta + step``: the error after
    a step of relative size d is O(d^2), so ``rtol = 1e-4`` leaves ~1e-8 relative error while
    sparing one pass over the data. Returns ``(beta, info)``; ``info["at_bound"]`` names a bound that
    was hit.
    """
    lo, hi = bounds
    a, b = lo, hi  # bracket of the minimiser
    checked: dict[float, bool] = {}
    beta = float(min(max(beta0, lo), hi))
    for it in range(1, max_iter + 1):
        nll, grad, hess = (float(v) for v in evaluate(beta))
        if not (math.isfinite(nll) and math.isfinite(grad) and math.isfinite(hess)):
            raise ConvergenceError(f"{what}: NLL is not finite at beta={beta:.6g} (T={1 / beta:.6g})")
        if grad > 0:
            b = beta
        else:
            a = beta
        at_edge = beta in (lo, hi)
        if at_edge:
            checked[beta] = True
            if (beta == hi and grad <= 0) or (beta == lo and grad >= 0):
                return beta, {"iterations": it, "nll": nll, "grad": grad, "hess": hess,
                              "at_bound": "T_min" if beta == hi else "T_max"}
        step = -grad / hess if hess > 0 else math.copysign(math.inf, -grad)
        if abs(step) <= rtol * beta:
            new = min(max(beta + step, a), b)
            return new, {"iterations": it, "nll": nll, "grad": grad, "hess": hess, "at_bound": None}
        new = beta + step
        if new >= hi and not checked.get(hi):
            new = hi
        elif new <= lo and not checked.get(lo):
            new = lo
        elif not a < new < b:
            new = 0.5 * (a + b)
        if b - a <= 1e-12 * b:
            return 0.5 * (a + b), {"iterations": it, "nll": nll, "grad": grad, "hess": hess, "at_bound": None}
        beta = new
    raise ConvergenceError(f"{what}: Newton did not converge in {max_iter} iterations "
                           f"(last beta={beta:.6g}, bracket [{a:.6g}, {b:.6g}])")


def _warn_bound(info: dict[str, Any], what: str, bounds_t: tuple[float, float]) -> None:
    if info.get("at_bound"):
        t = bounds_t[0] if info["at_bound"] == "T_min" else bounds_t[1]
        warnings.warn(f"{what}: the fitted temperature hit the bound T={t:g} ({info['at_bound']}); the data "
                      f"(n={info.get('n')}) do not pin it down (e.g. every token correct, or very few tokens)",
                      CalibrationWarning, stacklevel=3)


def fit_beta(sk: LogitSketch, bounds_t: tuple[float, float] = DEFAULT_BOUNDS, *, beta0: float = 1.0,
             seed: int = 0, what: str = "temperature") -> tuple[float, dict[str, Any]]:
    """ML inverse temperature of a labelled sketch (no label may be -1). Warm-starts big tables on a
    random sub-sample, then polishes on all rows (usually two full passes)."""
    n = len(sk)
    bounds = (1.0 / bounds_t[1], 1.0 / bounds_t[0])
    if n > 2 * _WARM_ROWS:
        idx = np.sort(np.random.default_rng(seed).choice(n, _WARM_ROWS, replace=False))
        sub = LogitSketch(sk.top_ids[idx], sk.top_logits[idx], sk.label_logit[idx], sk.log_normalizer[idx],
                          sk.tail[idx], sk.layout, sk.vocab_size)
        beta0, _ = newton_beta(lambda b: nll_sums(sub, b) / len(sub), beta0, bounds, rtol=1e-3, what=what)
    beta, info = newton_beta(lambda b: nll_sums(sk, b) / n, beta0, bounds, what=what)
    info["n"] = n
    return beta, info


def cluster_se(grad: np.ndarray, hess_sum: float, clusters: np.ndarray) -> float:
    """Cluster-robust (sandwich) standard error of beta at the optimum: sqrt(sum_s G_s^2) / sum_i h_i,
    with G_s the gradient summed over cluster s: a resampling unit of :mod:`tokcal.bootstrap` (a sequence, or
    a contiguous block of one long document), since tokens of one text are not independent."""
    _, inv = np.unique(clusters, return_inverse=True)
    g = np.bincount(inv, weights=grad)
    return float(np.sqrt(np.sum(g * g)) / hess_sum) if hess_sum > 0 else math.inf


# ----------------------------------------------------------------------------------------------
# calibrators
# ----------------------------------------------------------------------------------------------


class TemperatureFamilyParams(_Params):
    """Settings shared by the temperature calibrators: allowed ``(T_min, T_max)`` and the seed of the
    sub-sample that warm-starts Newton on big tables."""

    bounds: TemperatureBounds = DEFAULT_BOUNDS
    seed: Seed = 0


class TemperatureFamily(Calibrator):
    """Calibrators that divide each row's logits by a positive temperature: the argmax never changes.

    ``transform_logits`` returns ``(z - max_j z_j) / T`` row by row: subtracting the row maximum first leaves
    the distribution unchanged (softmax is shift-invariant) and keeps ``z / T`` from overflowing for small
    T (T = 0.05 on float16 logits of 6e4).
    """

    preserves_argmax = True
    Params = TemperatureFamilyParams

    @abstractmethod
    def row_temperatures(self, table: TokenTable) -> np.ndarray:
        """Temperature of every row of ``table`` (float64 [N])."""

    @abstractmethod
    def logit_temperatures(self, logits: Any, context: dict[str, Any] | None) -> np.ndarray:
        """Temperature of every row of raw ``logits`` given the apply-time ``context``."""

    def token_probs(self, table: TokenTable) -> TokenProbs:
        self._require_fitted()
        return token_probs(table, temperature=self.row_temperatures(table))

    def transform_logits(self, logits: Any, context: dict[str, Any] | None = None) -> Any:
        self._require_fitted()
        check_logits(logits)
        return scale_logits(logits, self.logit_temperatures(logits, context))


class TemperatureParams(TemperatureFamilyParams):
    """``temperature``: a given temperature (None: learned by :meth:`Temperature.fit`), inside ``bounds``."""

    temperature: TemperatureValue | None = None

    @model_validator(mode="after")
    def _given_inside_bounds(self) -> TemperatureParams:
        t, (lo, hi) = self.temperature, self.bounds
        if t is not None and not lo <= t <= hi:
            raise ValueError(f"temperature must lie within bounds [{lo:g}, {hi:g}] (widen bounds= to allow it), "
                             f"got {t!r}")
        return self


def _inside(t: float, bounds: tuple[float, float], rtol: float = 1e-9) -> bool:
    """``t`` within ``bounds`` up to rounding (a fit at a bound stores 1 / (1 / T_max))."""
    return bounds[0] * (1 - rtol) <= t <= bounds[1] * (1 + rtol)


class TemperatureDoc(CalibratorDoc):
    """A temperature calibrator's file: ``"temperature"`` is the effective value (given or learned)."""

    settings: TemperatureParams = TemperatureParams()
    temperature: TemperatureValue
    fit: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TemperatureDoc:
        given, bounds = self.settings.temperature, self.settings.bounds
        if given is not None and self.temperature != given:
            raise ValueError(f"temperature must equal settings.temperature ({given!r}), got {self.temperature!r}")
        if not _inside(self.temperature, bounds):
            raise ValueError(f"temperature must lie within settings.bounds [{bounds[0]:g}, {bounds[1]:g}], "
                             f"got {self.temperature!r}")
        return self


class Temperature(TemperatureFamily):
    """One temperature for every token: ``p = softmax(z / T)``.

    ``Temperature()`` is fitted by :meth:`fit` (from a TokenTable), :meth:`fit_logits` (full logits,
    sketched in chunks) or :meth:`fit_parquet` (a table on disk, streamed); ``Temperature(temperature=T)``
    is a given temperature and :meth:`fit` leaves it unchanged. ``bounds``: allowed (T_min, T_max); a given
    temperature must lie inside them. ``cal.temperature`` is the effective value (the given one, else the
    learned one, kept apart in ``learned_temperature``); a loaded calibrator that learned its temperature
    refits on new data. After a fit, ``fit_info`` holds n, iterations, NLL, gradient, curvature,
    ``se_beta`` and ``at_bound``.
    """

    type_name = "temperature"
    Params = TemperatureParams
    Doc = TemperatureDoc
    legacy_settings = ("bounds",)

    def __init__(self, temperature: float | None = None, *, bounds: tuple[float, float] = DEFAULT_BOUNDS,
                 seed: int = 0) -> None:
        super().__init__(temperature=temperature, bounds=bounds, seed=seed)
        self.learned_temperature: float | None = None
        self.fit_info: dict[str, Any] = {}

    @property
    def temperature(self) -> float | None:  # type: ignore[override]
        """The effective temperature: the given one, else the learned one (None before a fit)."""
        given = self.params.temperature
        return given if given is not None else self.learned_temperature

    @property
    def fixed(self) -> bool:
        """True for a given temperature (:meth:`fit` leaves it unchanged)."""
        return self.params.temperature is not None

    @property
    def fitted(self) -> bool:
        return self.temperature is not None

    @property
    def beta(self) -> float:
        self._require_fitted()
        return 1.0 / self.temperature

    def row_temperatures(self, table: TokenTable) -> np.ndarray:
        return np.full(len(table), self.temperature)

    def logit_temperatures(self, logits: Any, context: dict[str, Any] | None) -> np.ndarray:
        return np.full(int(logits.shape[0]), self.temperature)

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, table: TokenTable, **_: Any) -> Temperature:
        """ML temperature on the labelled rows of ``table`` (rows with label -1 are ignored)."""
        if self.fixed:
            return self
        lab = labeled_rows(table, "Temperature.fit")
        return self._fit_sketch(lab.sketch, resampling_units(lab).ids)

    def fit_logits(self, logits: Any, labels: Any, *, top_k: int = _sketch.DEFAULT_TOP_K,
                   chunk_rows: int = 2048, sequence_ids: Any = None) -> Temperature:
        """Fit from full ``logits`` [N, V] (numpy or torch, any device): one sketching pass in chunks of
        ``chunk_rows`` rows (memory O(chunk_rows * V)), then Newton on the O(k + B)-per-row sketch."""
        if self.fixed:
            return self
        sk = _sketch.sketch_logits(logits, labels, top_k=top_k, chunk_rows=chunk_rows)
        labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
        keep = labels >= 0
        if not keep.any():
            raise ValidationError("Temperature.fit_logits: no labelled rows (all labels are -1)")
        seq = np.arange(len(sk)) if sequence_ids is None else np.asarray(sequence_ids)
        if not keep.all():
            idx = np.flatnonzero(keep)
            sk = LogitSketch(sk.top_ids[idx], sk.top_logits[idx], sk.label_logit[idx], sk.log_normalizer[idx],
                             sk.tail[idx], sk.layout, sk.vocab_size)
            seq = seq[idx]
        return self._fit_sketch(sk, seq)

    def _fit_sketch(self, sk: LogitSketch, clusters: np.ndarray) -> Temperature:
        beta, info = fit_beta(sk, self.bounds, seed=self.seed)
        _, grad, hess = nll_terms(sk, np.full(len(sk), beta))
        info["se_beta"] = cluster_se(grad, float(hess.sum()), clusters)
        self._set(beta, info)
        return self

    def _set(self, beta: float, info: dict[str, Any]) -> None:
        self.learned_temperature = 1.0 / beta
        self.fit_info = info
        _warn_bound(info, "Temperature", self.bounds)

    def fit_parquet(self, path: str | os.PathLike, *, batch_rows: int = 262144, max_passes: int = 6) -> Temperature:
        """Fit on a Parquet table or dataset directory larger than memory, streaming ``batch_rows`` rows.

        I/O plan: the first batch alone gives a Newton estimate beta0 (it is read anyway). One pass
        over the data then accumulates the summed NLL, gradient and curvature at three inverse
        temperatures ``beta0 * (1 - w, 1, 1 + w)``; between them the summed gradient is interpolated
        by a cubic Hermite spline (values and derivatives known exactly), whose root is the optimum to
        O(w^4). If the root lies outside the three points the grid moves by a Newton step, widens and
        the pass repeats. Usually one pass; memory stays O(batch_rows).
        """
        if self.fixed:
            return self
        from ..table import TokenTable as _TT

        first = None
        for part in _TT.iter_parquet(path, batch_rows=batch_rows):
            if part.labeled.any():
                first = part.select(part.labeled)
                break
        if first is None:
            raise ValidationError(f"Temperature.fit_parquet: {path} has no labelled rows")
        lo_b, hi_b = 1.0 / self.bounds[1], 1.0 / self.bounds[0]
        centre, _ = fit_beta(first.sketch, self.bounds, seed=self.seed)
        width = 0.05
        for p in range(1, max_passes + 1):
            grid = np.unique(np.clip(centre * np.array([1 - width, 1.0, 1 + width]), lo_b, hi_b))
            sums = np.zeros((len(grid), 3))
            n = 0
            for part in _TT.iter_parquet(path, batch_rows=batch_rows):
                if not part.labeled.any():
                    continue
                sk = part.select(part.labeled).sketch if not part.labeled.all() else part.sketch
                n += len(sk)
                for j, b in enumerate(grid):
                    sums[j] += nll_sums(sk, float(b))
            g, h = sums[:, 1], sums[:, 2]
            info = {"n": n, "passes": p, "grid": grid.tolist(), "at_bound": None}
            if g[0] >= 0 and grid[0] == lo_b:
                info.update(at_bound="T_max", nll=sums[0, 0] / n)
                self._set(lo_b, info)
                return self
            if g[-1] <= 0 and grid[-1] == hi_b:
                info.update(at_bound="T_min", nll=sums[-1, 0] / n)
                self._set(hi_b, info)
                return self
            inside = np.flatnonzero((g[:-1] <= 0) & (g[1:] >= 0))
            if inside.size:
                j = int(inside[0])
                beta = _hermite_root(grid[j], grid[j + 1], g[j], g[j + 1], h[j], h[j + 1])
                info["nll"] = float(np.interp(beta, grid, sums[:, 0]) / n)
                info["se_beta"] = math.nan  # needs per-sequence gradients: not kept when streaming
                self._set(beta, info)
                return self
            k = 0 if g[0] > 0 else len(grid) - 1
            centre = float(np.clip(grid[k] - g[k] / h[k] if h[k] > 0 else grid[k] * (0.5 if k == 0 else 2.0),
                                   lo_b, hi_b))
            width = min(4 * width, 0.5)
        raise ConvergenceError(f"Temperature.fit_parquet: {path}: optimum not bracketed after {max_passes} passes")

    # -- intervals -----------------------------------------------------------------------------

    def interval(self, table: TokenTable, level: float = 0.95, n_boot: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
        """Cluster-bootstrap interval for T (sequences resampled) by one Newton step from the fit.

        Each replicate b draws sequence weights w_s ~ Multinomial and takes
        ``beta_b = beta - sum_s w_s G_s / sum_s w_s H_s`` (G_s, H_s: per-sequence gradient and
        curvature sums at the fitted beta) — the linearised bootstrap, accurate to O(1/n).
        Returns the percentile interval of T.
        """
        self._require_fitted()
        lab = labeled_rows(table, "Temperature.interval")
        _, grad, hess = nll_terms(lab.sketch, np.full(len(lab), self.beta))
        _, inv = np.unique(lab.sequence_id, return_inverse=True)
        gs, hs = np.bincount(inv, weights=grad), np.bincount(inv, weights=hess)
        rng = np.random.default_rng(seed)
        w = rng.multinomial(len(gs), np.full(len(gs), 1.0 / len(gs)), size=n_boot)
        betas = self.beta - (w @ gs) / (w @ hs)
        q = np.quantile(1.0 / betas, [(1 - level) / 2, (1 + level) / 2])
        return float(q[0]), float(q[1])

    # -- persistence ---------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "fit": json_info(self.fit_info)}

    def _load_state(self, doc: TemperatureDoc) -> None:
        if not self.fixed:
            self.learned_temperature = doc.temperature
        self.fit_info = dict(doc.fit or {})

    def _learned_summary(self) -> dict[str, Any]:
        return {} if self.fixed else {"temperature": self.temperature}


def json_info(info: dict[str, Any]) -> dict[str, Any]:
    """The scalar entries of a fit's ``info`` dict, JSON-safe (non-finite numbers become None)."""
    out = {k: v for k, v in info.items() if isinstance(v, int | float | str) or v is None}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _hermite_root(x0: float, x1: float, g0: float, g1: float, h0: float, h1: float) -> float:
    """Root in [x0, x1] of the cubic Hermite interpolant of g (g0 <= 0 <= g1, slopes h0, h1)."""
    dx = x1 - x0

    def g(t: float) -> float:
        t2, t3 = t * t, t * t * t
        return ((2 * t3 - 3 * t2 + 1) * g0 + (t3 - 2 * t2 + t) * dx * h0 + (-2 * t3 + 3 * t2) * g1
                + (t3 - t2) * dx * h1)

    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if g(mid) > 0:
            hi = mid
        else:
            lo = mid
    return x0 + 0.5 * (lo + hi) * dx
