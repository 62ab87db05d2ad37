"""Losses that read the whole distribution: label smoothing, graduated label smoothing, confidence
penalty. Computed from the chunked row statistics (log-normaliser, mean logit, sum_j p_j z_j), so no
[N, V] log-softmax or smoothed target is ever built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ValidationError
from ._rowstats import reduce, row_stats


def _check_epsilon(name: str, eps: float) -> float:
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:
        raise ValidationError(f"{name} must lie in [0, 1], got {eps}")
    return eps


def label_smoothing(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1, *, ignore_index: int = -100,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against the smoothed target ``(1 - eps) * onehot(y) + eps / V``.

    Per token: ``(1 - eps) * (-log p_y) + eps * mean_j(-log p_j) = lse - (1 - eps) z_y - eps * mean_j z_j``;
    the same convention (and value) as ``F.cross_entropy(label_smoothing=eps)``. Reference: Szegedy et
    al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016; Müller, Kornblith &
    Hinton, "When Does Label Smoothing Help?", NeurIPS 2019.
    """
    eps = _check_epsilon("epsilon", epsilon)
    rows = row_stats(logits, labels, ignore_index=ignore_index, mean=True)
    st = rows.stats
    return reduce(rows, st.lse - (1.0 - eps) * st.z_y - eps * st.z_mean, reduction)


def graduated_epsilon(confidence: Any, thresholds: Sequence[float] = (0.3, 0.7),
                      epsilons: Sequence[float] = (0.0, 0.1, 0.3)) -> torch.Tensor:
    """Per-token smoothing from a calibration model's confidence: ``epsilons[b]`` where
    ``thresholds[b-1] <= c < thresholds[b]`` (default: 0 below 0.3, 0.1 in [0.3, 0.7), 0.3 from 0.7 up;
    Wang et al. 2020)."""
    c = torch.as_tensor(confidence, dtype=torch.float32)
    th = [float(t) for t in thresholds]
    eps = [_check_epsilon("epsilons", e) for e in epsilons]
    if len(eps) != len(th) + 1 or any(b <= a for a, b in zip(th, th[1:], strict=False)):
        raise ValidationError(f"graduated label smoothing: {len(th)} increasing thresholds need {len(th) + 1} "
                              f"epsilons, got thresholds={th}, epsilons={eps}")
    b = torch.bucketize(c, torch.tensor(th, device=c.device), right=True)  # th[b-1] <= c < th[b]
    return torch.tensor(eps, device=c.device)[b]


def graduated_label_smoothing(logits: torch.Tensor, labels: torch.Tensor, confidence: Any, *,
                              thresholds: Sequence[float] = (0.3, 0.7), epsilons: Sequence[float] = (0.0, 0.1, 0.3),
                              ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Label smoothing whose epsilon is chosen per token from ``confidence [...]`` (same shape as labels).

    ``confidence`` is a calibration model's top-1 probability for that token (e.g. the model before
    fine-tuning, read from a TokenTable); tokens predicted confidently get more smoothing:
    eps_i = 0 for c_i < 0.3, 0.1 for 0.3 <= c_i < 0.7 and 0.3 for c_i >= 0.7 (:func:`graduated_epsilon`),
    then ``lse - (1 - eps_i) z_y - eps_i * mean_j z_j`` as in :func:`label_smoothing`.
    Reference: Wang, Tu, Shi & Liu, "On the Inference Calibration of Neural Machine Translation", ACL 2020,
    section 5 (graduated label smoothing).
    """
    conf = torch.as_tensor(confidence, device=logits.device)
    if tuple(conf.shape) != tuple(labels.shape):
        raise ValidationError(f"confidence: expected shape {tuple(labels.shape)} like labels, got {tuple(conf.shape)}")
    if bool(((conf < 0) | (conf > 1) | torch.isnan(conf)).any()):
        i = int(torch.nonzero(((conf < 0) | (conf > 1) | torch.isnan(conf)).reshape(-1))[0, 0])
        raise ValidationError(f"confidence: token {i} has {float(conf.reshape(-1)[i])}, outside [0, 1]")
    rows = row_stats(logits, labels, ignore_index=ignore_index, mean=True)
    st = rows.stats
    eps = graduated_epsilon(conf.reshape(-1)[rows.keep.reshape(-1)], thresholds, epsilons)
    return reduce(rows, st.lse - (1.0 - eps) * st.z_y - eps * st.z_mean, reduction)


def confidence_penalty(logits: torch.Tensor, labels: torch.Tensor, beta: float = 0.1, *, ignore_index: int = -100,
                       reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy minus beta times the entropy of the prediction: ``-log p_y - beta * H(p)``.

    Minimising it *raises* the entropy (penalises confident, low-entropy outputs), so beta > 0 makes
    predictions less confident; ``H(p) = lse - sum_j p_j z_j``. (Adding ``+ beta * H`` instead, a sign
    error seen in public code, rewards over-confidence.) Reference: Pereyra, Tucker, Chorowski, Kaiser &
    Hinton, "Regularizing Neural Networks by Penalizing Confident Output Distributions", ICLR 2017
    workshop, eq. (2): L(theta) = -sum log p_theta(y|x) - beta H(p_theta(y|x)).
    """
    beta = float(beta)
    if not math.isfinite(beta):
        raise ValidationError(f"beta must be finite, got {beta}")
    rows = row_stats(logits, labels, ignore_index=ignore_index, entropy=True)
    st = rows.stats
    return reduce(rows, st.nll - beta * st.entropy, reduction)
