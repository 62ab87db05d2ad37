"""Auxiliary calibration terms for the multi-task form ``loss = CE + lam * term``: MMCE and the
soft-binned ECE. Both are statistics of the batch (not sums over tokens): ``reduction="mean"`` is the
term itself, ``"sum"`` is the term times the number of kept tokens (so that micro-batches can be
combined by token count, an approximation of the term over their union).

``cross_entropy_plus`` computes ``CE + lam * term`` from one pass of the row statistics, so the term
costs little more than the cross-entropy alone.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ..errors import ValidationError
from ._rowstats import Rows, check_reduction, reduce, row_stats

TERMS = ("mmce", "soft_binned_ece")


def _batch_term(rows: Rows, value: torch.Tensor, reduction: str) -> torch.Tensor:
    check_reduction(reduction)
    if reduction == "none":
        raise ValidationError("a batch statistic has no per-token value: use reduction='mean' or 'sum'")
    n = rows.stats.lse.numel()
    return (value * n if reduction == "sum" else value).to(rows.dtype)


#: smallest kernel width of the exact sum: the factors exp(+-(r - r_mid) / width) stay within float64's
#: range for confidences in [0, 1] (|exponent| <= 500)
MIN_KERNEL_WIDTH = 1e-3


class _LaplaceKernelSum(torch.autograd.Function):
    """``sum_ij d_i d_j exp(-|r_i - r_j| / w)`` exactly, in O(n log n), and its gradient in r and d.

    Sorted by r, with the distinct values u_1 < ... < u_G and D_g = sum of d over the tokens at u_g:
    for a token at u_g, ``A = L_g + D_g + R_g`` with ``L_g = e^{-u_g/w} sum_{h<g} D_h e^{u_h/w}``
    (prefix sums) and ``R_g = e^{u_g/w} sum_{h>g} D_h e^{-u_h/w}`` (suffix sums), the exponents taken
    from the midpoint of the range. The value is ``sum_i d_i A_i``; ``dV/dd_i = 2 A_i`` and
    ``dV/dr_i = -(2 / w) d_i (L_i - R_i)`` (tied pairs contribute 0, the subgradient of |0| that
    torch's ``abs`` takes). float64 inside.
    """

    @staticmethod
    def forward(ctx, r, d, width):
        r64, d64 = r.double(), d.double()
        u, inverse = torch.unique(r64, sorted=True, return_inverse=True)  # group of each token
        dg = torch.zeros_like(u).index_add_(0, inverse, d64)
        mid = 0.5 * (u[0] + u[-1])
        up, down = torch.exp((u - mid) / width), torch.exp((mid - u) / width)
        zero = u.new_zeros(1)
        below = torch.cat([zero, torch.cumsum(dg * up, 0)[:-1]]) * down  # L_g
        above = torch.cat([torch.cumsum((dg * down).flip(0), 0)[:-1].flip(0), zero]) * up  # R_g
        a_g = below + dg + above
        ctx.save_for_backward(d64, inverse, a_g, below - above)
        ctx.width = width
        return (dg * a_g).sum().to(r.dtype)

    @staticmethod
    @once_differentiable  # a second derivative raises instead of being silently wrong
    def backward(ctx, g):
        d64, inverse, a_g, b_g = ctx.saved_tensors
        g64 = g.double()
        grad_d = 2.0 * g64 * a_g[inverse]
        grad_r = (-2.0 / ctx.width) * g64 * d64 * b_g[inverse]
        return grad_r.to(g.dtype), grad_d.to(g.dtype), None


def _mmce_value(conf: torch.Tensor, correct: torch.Tensor, width: float) -> torch.Tensor:
    n = conf.numel()
    if n == 0:
        return conf.new_zeros(())
    return _LaplaceKernelSum.apply(conf, correct - conf, float(width)) / (n * n)


def _check_width(width: float) -> float:
    width = float(width)
    if not (width >= MIN_KERNEL_WIDTH and math.isfinite(width)):
        raise ValidationError(f"kernel_width must be a finite number >= {MIN_KERNEL_WIDTH}, got {width}")
    return width


def mmce(logits: torch.Tensor, labels: torch.Tensor, *, kernel_width: float = 0.4, ignore_index: int = -100,
         reduction: str = "mean") -> torch.Tensor:
    """Maximum mean calibration error, a kernel estimate of calibration error over the batch.

    With r_i the top-1 confidence, c_i = 1[argmax = y_i] and the Laplacian kernel
    k(r, r') = exp(-|r - r'| / w) (w = ``kernel_width``, 0.4 as in the paper), the value returned is
    the squared estimate ``MMCE_m^2 = sum_ij (c_i - r_i)(c_j - r_j) k(r_i, r_j) / n^2`` (smooth at 0,
    unlike its square root). Computed exactly in O(n log n) time and O(n) memory over the n kept tokens
    of the batch (sorted by confidence, the kernel factorises into prefix and suffix sums), not as the
    n x n kernel matrix of the authors' code; ``kernel_width >= 0.001``. Reference: Kumar, Sarawagi &
    Jain, "Trainable Calibration Measures For Neural Networks From Kernel Mean Embeddings", ICML 2018,
    eq. (2) (the ``MMCE`` of Mukhoti et al.'s public code is the test oracle).
    """
    width = _check_width(kernel_width)
    rows = row_stats(logits, labels, ignore_index=ignore_index, top=True)
    st = rows.stats
    return _batch_term(rows, _mmce_value(st.confidence, st.correct, width), reduction)


def _soft_ece_value(conf: torch.Tensor, correct: torch.Tensor, bins: int, temperature: float) -> torch.Tensor:
    if conf.numel() == 0:
        return conf.new_zeros(())
    anchors = (torch.arange(bins, device=conf.device, dtype=torch.float32) + 0.5) / bins
    u = torch.softmax(-((conf[:, None] - anchors[None, :]) ** 2) / temperature, dim=1)  # [n, B] memberships
    mass = u.sum(0)
    denom = mass.clamp(min=1e-5)
    bin_conf = (u * conf[:, None]).sum(0) / denom
    bin_acc = (u * correct[:, None]).sum(0) / denom
    return torch.sqrt(((bin_conf - bin_acc) ** 2 * (mass / mass.sum())).sum())


def soft_binned_ece(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15, *, temperature: float = 0.01,
                    ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Soft-binned ECE (l2), a differentiable ECE: each confidence belongs to every bin softly.

    Anchors xi_b = (b + 1/2) / B; memberships u_ib = softmax_b(-(r_i - xi_b)^2 / T); per bin the
    soft mass S_b = sum_i u_ib, confidence sum_i u_ib r_i / S_b and accuracy sum_i u_ib c_i / S_b;
    ``SB-ECE = sqrt(sum_b (S_b / n) (conf_b - acc_b)^2)``. T (``temperature``) -> 0 recovers the
    hard-binned l2 ECE. Reference: Karandikar, Cain, Tran, Lakshminarayanan, Shlens, Mozer & Roelofs,
    "Soft Calibration Objectives for Neural Networks", NeurIPS 2021, eq. (11) (the authors'
    ``get_soft_binning_ece_tensor`` is the test oracle).
    """
    if int(bins) < 1 or not (temperature > 0 and math.isfinite(temperature)):
        raise ValidationError(f"bins must be >= 1 and temperature > 0, got bins={bins}, temperature={temperature}")
    rows = row_stats(logits, labels, ignore_index=ignore_index, top=True)
    st = rows.stats
    return _batch_term(rows, _soft_ece_value(st.confidence, st.correct, int(bins), float(temperature)), reduction)


def cross_entropy_plus(logits: torch.Tensor, labels: torch.Tensor, term: str = "mmce", lam: float = 1.0, *,
                       ignore_index: int = -100, reduction: str = "mean", **term_kwargs) -> torch.Tensor:
    """The multi-task loss ``CE + lam * term`` (term ``"mmce"`` or ``"soft_binned_ece"``, with their
    keyword arguments) from one pass over the logits.

    ``reduction="mean"``: mean CE + lam * term; ``"sum"``: summed CE + lam * n * term (n kept tokens),
    which a caller divides by a token count shared by several micro-batches (gradient accumulation).
    """
    if term not in TERMS:
        raise ValidationError(f"term must be one of {', '.join(TERMS)}, got {term!r}")
    rows = row_stats(logits, labels, ignore_index=ignore_index, top=True)
    st = rows.stats
    if term == "mmce":
        width = _check_width(term_kwargs.pop("kernel_width", 0.4))
        value = _mmce_value(st.confidence, st.correct, width)
    else:
        value = _soft_ece_value(st.confidence, st.correct, int(term_kwargs.pop("bins", 15)),
                                float(term_kwargs.pop("temperature", 0.01)))
    if term_kwargs:
        raise ValidationError(f"unknown arguments for {term}: {', '.join(sorted(term_kwargs))}")
    ce = reduce(rows, st.nll, reduction if reduction != "none" else "mean")
    if reduction == "none":
        raise ValidationError("CE + a batch statistic has no per-token value: use reduction='mean' or 'sum'")
    n = st.lse.numel()
    return ce + (lam * (value * n if reduction == "sum" else value)).to(rows.dtype)
