"""Per-token statistics of a logit row, with one chunked pass forward and one backward.

Every loss in :mod:`tokcal.losses` is a function of a few numbers per row of logits z (length V):

* ``lse = log sum_j exp(z_j)`` (the log-normaliser), gradient ``p = softmax(z)``;
* ``z_y``, the gold logit, gradient ``e_y``;
* ``z_max`` and its id (the top-1 logit), gradient ``e_argmax``;
* ``z_mean = (1/V) sum_j z_j`` (label smoothing), gradient ``1/V``;
* optionally ``s = sum_j p_j z_j`` (entropy ``H = lse - s``), gradient ``p * (1 + z - s)``;
* optionally ``z_below = max{z_j : z_j < z_y}`` and its id (dual focal), gradient ``e_below``.

:class:`RowStats` computes them chunk by chunk in float32 (any input dtype: bfloat16 / float16 rows
are upcast one chunk at a time) and, in backward, writes the gradient of the logits once:
``dz = p * (g_lse + g_s * (1 + z - s)) + g_mean / V + scatter(g_y, g_max, g_below)``. Nothing of
size [N, V] is kept for backward beyond the logits themselves (``F.cross_entropy`` keeps its
log-softmax output), and the only [N, V] allocation is the gradient, so peak extra memory is one
``[N, V]`` tensor in the logits' dtype plus one chunk of float32 temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ValidationError

REDUCTIONS = ("mean", "sum", "none")
#: float32 elements per chunk (rows x V): small enough to stay in cache on a CPU, large enough that
#: per-op overheads do not dominate; accelerators take larger chunks
_CPU_CHUNK_ELEMENTS = 1 << 18
_DEVICE_CHUNK_ELEMENTS = 1 << 26


def _chunk_rows(n: int, v: int, device: torch.device) -> int:
    budget = _CPU_CHUNK_ELEMENTS if device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    return max(1, min(n, budget // max(1, v)))


class _RowStatsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, labels, want_s, want_below):  # z [N, V], labels [N] (valid ids; ignored rows clamped)
        n, v = z.shape
        f32 = dict(device=z.device, dtype=torch.float32)
        lse, zy, zmax, zmean = (torch.empty(n, **f32) for _ in range(4))
        amax = torch.empty(n, device=z.device, dtype=torch.long)
        s = torch.empty(n, **f32) if want_s else None
        zb = torch.empty(n, **f32) if want_below else None
        ib = torch.empty(n, device=z.device, dtype=torch.long) if want_below else None
        step = _chunk_rows(n, v, z.device)
        for a in range(0, n, step):
            b = min(n, a + step)
            c = z[a:b].float()
            mx, am = c.max(dim=1)
            zmax[a:b], amax[a:b] = mx, am
            ls = torch.logsumexp(c, dim=1)
            lse[a:b] = ls
            y = labels[a:b]
            zy[a:b] = c.gather(1, y[:, None])[:, 0]
            zmean[a:b] = c.mean(dim=1)
            if want_s:
                p = torch.exp(c - ls[:, None])
                s[a:b] = torch.where(p > 0, p * c, 0.0).sum(dim=1)
            if want_below:
                below = torch.where(c < zy[a:b, None], c, float("-inf"))
                zb[a:b], ib[a:b] = below.max(dim=1)
        ctx.save_for_backward(z, labels, lse, amax, s, ib)
        ctx.want_s, ctx.want_below = want_s, want_below
        ctx.mark_non_differentiable(amax)
        outs = [lse, zy, zmax, zmean, amax, s if want_s else lse.new_zeros(0),
                zb if want_below else lse.new_zeros(0)]
        return tuple(outs)

    @staticmethod
    def backward(ctx, g_lse, g_y, g_max, g_mean, _g_amax, g_s, g_below):
        z, labels, lse, amax, s, ib = ctx.saved_tensors
        n, v = z.shape
        zero = torch.zeros(n, device=z.device, dtype=torch.float32)
        g_lse = zero if g_lse is None else g_lse.float()
        g_y = zero if g_y is None else g_y.float()
        g_max = zero if g_max is None else g_max.float()
        g_mean = zero if g_mean is None else g_mean.float()
        use_s = ctx.want_s and g_s is not None and g_s.numel() == n
        use_below = ctx.want_below and g_below is not None and g_below.numel() == n
        coef = g_lse + g_s.float() * (1.0 - s) if use_s else g_lse
        gz = torch.empty_like(z)
        step = _chunk_rows(n, v, z.device)
        for a in range(0, n, step):
            b = min(n, a + step)
            c = z[a:b].float()
            p = torch.exp(c - lse[a:b, None])
            if use_s:
                # p * (coef + g_s * z), with 0 where p == 0 (masked ids, z = -inf)
                w = coef[a:b, None] + g_s[a:b, None].float() * torch.where(p > 0, c, 0.0)
                g = p * w
            else:
                g = p * coef[a:b, None]
            g += (g_mean[a:b] / v)[:, None]
            g.scatter_add_(1, labels[a:b, None], g_y[a:b, None])
            g.scatter_add_(1, amax[a:b, None], g_max[a:b, None])
            if use_below:
                g.scatter_add_(1, ib[a:b, None], g_below[a:b, None].float())
            gz[a:b] = g
        return gz, None, None, None


@dataclass
class Stats:
    """Per-row statistics of the kept (non-ignored) rows, each a float32 tensor [n] (see module doc)."""

    lse: torch.Tensor
    z_y: torch.Tensor
    z_max: torch.Tensor
    z_mean: torch.Tensor
    argmax: torch.Tensor  # long [n]
    labels: torch.Tensor  # long [n]
    s: torch.Tensor | None
    z_below: torch.Tensor | None
    vocab_size: int

    @property
    def nll(self) -> torch.Tensor:
        """-log p_y = lse - z_y."""
        return self.lse - self.z_y

    @property
    def confidence(self) -> torch.Tensor:
        """max_j p_j = exp(z_max - lse)."""
        return torch.exp(self.z_max - self.lse)

    @property
    def correct(self) -> torch.Tensor:
        """1[argmax = y] as float32 (no gradient)."""
        return (self.argmax == self.labels).float()

    @property
    def entropy(self) -> torch.Tensor:
        """H(p) = lse - sum_j p_j z_j."""
        return self.lse - self.s


@dataclass
class Rows:
    """The flattened input of a loss: which rows count, and their statistics."""

    stats: Stats
    keep: torch.Tensor  # bool, labels' shape
    shape: torch.Size  # labels' shape
    dtype: torch.dtype  # logits' dtype


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValidationError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def row_stats(logits: Any, labels: Any, *, ignore_index: int = -100, entropy: bool = False,
              below: bool = False) -> Rows:
    """Validate ``logits [..., V]`` / ``labels [...]`` and compute the statistics of the kept rows."""
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValidationError("logits and labels must be torch tensors")
    if logits.dim() < 1 or not logits.is_floating_point():
        raise ValidationError(f"logits: expected a floating point tensor [..., V], got {logits.dtype} "
                              f"of shape {tuple(logits.shape)}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValidationError(f"labels: expected shape {tuple(logits.shape[:-1])} to match logits "
                              f"{tuple(logits.shape)}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValidationError(f"labels: expected integer token ids, got {labels.dtype}")
    v = logits.shape[-1]
    z = logits.reshape(-1, v)
    y = labels.reshape(-1).long()
    keep = y != ignore_index
    bad = keep & ((y < 0) | (y >= v))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise ValidationError(f"labels: token {i} has id {int(y[i])}, outside [0, {v}) "
                              f"(use ignore_index={ignore_index} to skip a token)")
    # every row goes through the kernel (ignored ones with label 0: no [N, V] copy of the kept rows);
    # the [N] statistics are then indexed, so ignored rows get a zero gradient
    lse, zy, zmax, zmean, amax, s, zb = _RowStatsFn.apply(z, torch.where(keep, y, 0), entropy, below)
    idx = torch.nonzero(keep)[:, 0]
    if idx.numel() < keep.numel():
        lse, zy, zmax, zmean, amax, y = (t.index_select(0, idx) for t in (lse, zy, zmax, zmean, amax, y))
        s = s.index_select(0, idx) if entropy else s
        zb = zb.index_select(0, idx) if below else zb
    st = Stats(lse, zy, zmax, zmean, amax, y, s if entropy else None, zb if below else None, v)
    return Rows(st, keep.reshape(labels.shape), labels.shape, logits.dtype)


def reduce(rows: Rows, per_row: torch.Tensor, reduction: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``none``: the labels' shape with 0 at ignored tokens; ``sum``; ``mean`` over kept tokens (or,
    with ``weight`` per kept row, ``sum(w * loss) / sum(w)``, like ``F.cross_entropy(weight=...)``)."""
    check_reduction(reduction)
    if reduction == "none":
        out = per_row.new_zeros(rows.keep.numel())
        out[rows.keep.reshape(-1)] = per_row if weight is None else weight * per_row
        return out.reshape(rows.shape).to(rows.dtype)
    total = per_row.sum() if weight is None else (weight * per_row).sum()
    if reduction == "sum":
        return total.to(rows.dtype)
    denom = per_row.new_tensor(float(per_row.numel())) if weight is None else weight.sum()
    return (total / denom).to(rows.dtype)  # 0 / 0 = nan when every token is ignored, like F.cross_entropy
