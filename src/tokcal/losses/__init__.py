"""Calibration-aware training losses (torch).

Every loss takes ``logits [..., V]`` and ``labels [...]`` like ``F.cross_entropy`` (keyword
``ignore_index=-100``, ``reduction="mean" | "sum" | "none"``) and works in float32 inside, for
float32 / bfloat16 / float16 logits alike, through one chunked custom autograd function
(:mod:`tokcal.losses._rowstats`): no [N, V] log-softmax is kept, the backward writes the logits'
gradient once. Importing this package imports torch; ``import tokcal`` does not.

=============================  =========================================================
``cross_entropy``              ``-log p_y`` (the same as ``F.cross_entropy``)
``focal``                      Lin et al. 2017
``flsd53``                     Mukhoti et al. 2020 (gamma 5 below p_y = 0.2, else 3)
``AdaFocal``                   Ghosh et al. 2022 (gamma per confidence bin, ``update(evaluation)``)
``dual_focal``                 Tao et al. 2023
``label_smoothing``            Szegedy et al. 2016 (as ``F.cross_entropy(label_smoothing=...)``)
``graduated_label_smoothing``  Wang et al. 2020 (per-token epsilon from a model's confidence)
``confidence_penalty``         Pereyra et al. 2017: CE - beta * H(p)
``mmce``                       Kumar et al. 2018, an auxiliary term (batch statistic)
``soft_binned_ece``            Karandikar et al. 2021, an auxiliary term (batch statistic)
``cross_entropy_plus``         CE + lam * (mmce | soft_binned_ece) in one pass
``frequency_weighted_ce``      ``w[y] * -log p_y``, ``frequency_weights(counts, alpha)``
=============================  =========================================================
"""

from __future__ import annotations

import torch

from ._rowstats import reduce, row_stats
from .auxiliary import cross_entropy_plus, mmce, soft_binned_ece
from .focal import AdaFocal, dual_focal, flsd53, focal
from .smoothing import confidence_penalty, graduated_epsilon, graduated_label_smoothing, label_smoothing
from .weighted import frequency_weighted_ce, frequency_weights

__all__ = [
    "cross_entropy", "focal", "flsd53", "AdaFocal", "dual_focal", "label_smoothing", "graduated_label_smoothing",
    "graduated_epsilon", "confidence_penalty", "mmce", "soft_binned_ece", "cross_entropy_plus",
    "frequency_weighted_ce", "frequency_weights",
]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
                  reduction: str = "mean") -> torch.Tensor:
    """``-log softmax(z)_y`` per token, the value of ``F.cross_entropy`` from the chunked row statistics."""
    rows = row_stats(logits, labels, ignore_index=ignore_index)
    return reduce(rows, rows.stats.nll, reduction)
