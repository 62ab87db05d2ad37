"""Focal-type losses: focal, FLSD-53, dual focal, AdaFocal.

All take ``logits [..., V]`` and ``labels [...]`` like ``F.cross_entropy`` (``ignore_index``,
``reduction``), compute in float32 from the chunked row statistics of :mod:`._rowstats` (never a
full log-softmax), and return the logits' dtype. ``p_y = softmax(z)_y``; ``-log p_y`` is the NLL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import ValidationError
from ._rowstats import reduce, row_stats


def _focal_factor(nll: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    """(1 - p_y)^gamma with 1 - p_y = -expm1(-nll) (exact for p_y near 1)."""
    one_minus_p = -torch.expm1(-nll)
    return one_minus_p.clamp(min=0.0).pow(gamma)


def _check_gamma(name: str, gamma: float) -> float:
    gamma = float(gamma)
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValidationError(f"{name} must be a finite number >= 0, got {gamma}")
    return gamma


def focal(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0, *, ignore_index: int = -100,
          reduction: str = "mean") -> torch.Tensor:
    """Focal loss, ``-(1 - p_y)^gamma * log p_y`` per token (gamma = 0: cross-entropy).

    Reference: Lin, Goyal, Girshick, He & Dollár, "Focal Loss for Dense Object Detection", ICCV 2017;
    as a calibration loss: Mukhoti et al., "Calibrating Deep Neural Networks using Focal Loss",
    NeurIPS 2020 (their ``FocalLoss``, ported as the test oracle).
    """
    gamma = _check_gamma("gamma", gamma)
    rows = row_stats(logits, labels, ignore_index=ignore_index)
    nll = rows.stats.nll
    return reduce(rows, _focal_factor(nll, gamma) * nll, reduction)


def flsd53(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
           reduction: str = "mean") -> torch.Tensor:
    """Sample-dependent focal loss FLSD-53: gamma = 5 where p_y < 0.2, else gamma = 3.

    The gamma is chosen from the detached p_y (Lambert-W argument of the paper: gamma 5 below 0.2,
    3 up to 0.5; 3 above). Reference: Mukhoti et al., NeurIPS 2020, section 5 (their
    ``FocalLossAdaptive`` with gamma=3, ported as the test oracle).
    """
    rows = row_stats(logits, labels, ignore_index=ignore_index)
    nll = rows.stats.nll
    p = torch.exp(-nll.detach())
    gamma = torch.where(p < 0.2, 5.0, 3.0)
    return reduce(rows, _focal_factor(nll, gamma) * nll, reduction)


def dual_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 5.0, *, ignore_index: int = -100,
               reduction: str = "mean") -> torch.Tensor:
    """Dual focal loss, ``-(1 - p_y + p_j)^gamma * log p_y`` with p_j the largest probability below p_y.

    ``p_j = max{p_k : p_k < p_y}`` (0 when p_y is the smallest), differentiated through p_j too.
    Reference: Tao, Dong & Xu, "Dual Focal Loss for Calibration", ICML 2023 (their ``DualFocalLoss``,
    ported as the test oracle).
    """
    gamma = _check_gamma("gamma", gamma)
    rows = row_stats(logits, labels, ignore_index=ignore_index, below=True)
    st = rows.stats
    nll = st.nll
    p_j = torch.exp(st.z_below - st.lse)  # exp(-inf) = 0 where nothing is below
    base = (-torch.expm1(-nll) + p_j).clamp(min=0.0)
    return reduce(rows, base.pow(gamma) * nll, reduction)


def _bins_from(evaluation: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """lo, hi, n, gap (confidence - accuracy) per bin of an Evaluation, its dict, or ReliabilityBins."""
    if hasattr(evaluation, "edges") and hasattr(evaluation, "count"):  # metrics.ReliabilityBins
        edges = np.asarray(evaluation.edges, float)
        n = np.asarray(evaluation.count, float)
        gap = np.asarray(evaluation.confidence, float) - np.asarray(evaluation.accuracy, float)
        lo, hi = edges[:-1], edges[1:]
    else:
        d = evaluation.to_dict() if hasattr(evaluation, "to_dict") else evaluation
        if not isinstance(d, Mapping) or "bins" not in d:
            raise ValidationError("AdaFocal.update: expected an Evaluation, its dict, or metrics.ReliabilityBins")
        rows = d["bins"]
        lo = np.array([r["lo"] for r in rows], float)
        hi = np.array([r["hi"] for r in rows], float)
        n = np.array([r["n"] or 0 for r in rows], float)
        gap = np.array([np.nan if r.get("gap") is None else r["gap"] for r in rows], float)
    if len(lo) != n_bins:
        raise ValidationError(f"AdaFocal.update: the evaluation has {len(lo)} bins, this AdaFocal has {n_bins} "
                              f"(evaluate with bins={n_bins})")
    return lo, hi, n, gap


class AdaFocal:
    """AdaFocal: focal loss with one gamma per confidence bin, adapted from validation calibration.

    A token whose p_y falls in bin b (boundaries from the last validation evaluation) gets
    ``gamma_b``: ``-(1 - p_y)^gamma_b log p_y`` when gamma_b > 0, and the inverse-focal
    ``-(1 + p_y)^|gamma_b| log p_y`` when gamma_b < 0. After each validation evaluation,
    :meth:`update` sets, per bin with gap_b = confidence_b - accuracy_b,

        gamma_b <- gamma_b * exp(+lam * gap_b) if gamma_b > 0, else gamma_b * exp(-lam * gap_b);
        |gamma_b| < switch_pt switches sign (focal <-> inverse focal) to +-switch_pt;
        gamma_b clipped to [gamma_min, gamma_max]; empty bins keep their gamma.

    The bin boundaries follow the evaluation (equal-mass bins in the paper: evaluate with
    ``binning="mass"``). Defaults are the authors' (bins 15, lam 1, gamma 1, [-2, 20], switch 0.2).
    Reference: Ghosh, Schaaf & Gormley, "AdaFocal: Calibration-aware Adaptive Focal Loss", NeurIPS
    2022 (their ``AdaFocal``, ported as the test oracle).
    """

    def __init__(self, bins: int = 15, *, lam: float = 1.0, gamma_initial: float = 1.0, gamma_min: float = -2.0,
                 gamma_max: float = 20.0, switch_pt: float = 0.2):
        if int(bins) < 1:
            raise ValidationError(f"bins must be >= 1, got {bins}")
        if not gamma_min <= gamma_initial <= gamma_max:
            raise ValidationError(f"gamma_initial={gamma_initial} must lie in [gamma_min, gamma_max] = "
                                  f"[{gamma_min}, {gamma_max}]")
        self.bins = int(bins)
        self.lam, self.switch_pt = float(lam), float(switch_pt)
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        self.gammas = np.full(self.bins, float(gamma_initial))
        self.edges = np.linspace(0.0, 1.0, self.bins + 1)
        self.history: list[list[float]] = []

    def update(self, evaluation: Any) -> AdaFocal:
        """One gamma update from a validation evaluation (``Evaluation``, its dict or ``ReliabilityBins``)."""
        lo, hi, n, gap = _bins_from(evaluation, self.bins)
        g = self.gammas.copy()
        ok = (n > 0) & np.isfinite(gap)
        nxt = np.where(g > 0, g * np.exp(self.lam * np.nan_to_num(gap)), g * np.exp(-self.lam * np.nan_to_num(gap)))
        small = np.abs(nxt) < self.switch_pt
        nxt = np.where(small, np.where(nxt > 0, -self.switch_pt, self.switch_pt), nxt)
        nxt = np.clip(nxt, self.gamma_min, self.gamma_max)
        self.gammas = np.where(ok, nxt, g)
        self.edges = np.append(lo, hi[-1])
        self.history.append(self.gammas.tolist())
        return self

    def gamma_of(self, p: torch.Tensor) -> torch.Tensor:
        """The gamma of each p_y: its bin among the current boundaries (first/last bins open-ended)."""
        inner = torch.as_tensor(self.edges[1:-1], dtype=p.dtype, device=p.device)
        b = torch.bucketize(p, inner, right=True)
        return torch.as_tensor(self.gammas, dtype=p.dtype, device=p.device)[b]

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
                 reduction: str = "mean") -> torch.Tensor:
        rows = row_stats(logits, labels, ignore_index=ignore_index)
        nll = rows.stats.nll
        p = torch.exp(-nll)
        gamma = self.gamma_of(p.detach())
        base = torch.where(gamma >= 0, -torch.expm1(-nll), 1.0 + p).clamp(min=0.0)
        return reduce(rows, base.pow(gamma.abs()) * nll, reduction)

    def to_dict(self) -> dict[str, Any]:
        return {"bins": self.bins, "lam": self.lam, "switch_pt": self.switch_pt, "gamma_min": self.gamma_min,
                "gamma_max": self.gamma_max, "gammas": self.gammas.tolist(), "edges": self.edges.tolist()}

    def __repr__(self) -> str:
        return f"AdaFocal(bins={self.bins}, gammas={np.round(self.gammas, 3).tolist()})"
