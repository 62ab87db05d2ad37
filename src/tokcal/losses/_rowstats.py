"""Per-token statistics of a logit row, with one chunked pass forward and one backward.

Every loss in :mod:`tokcal.losses` is a function of a few numbers per row of logits z (length V):

* ``lse = log sum_j exp(z_j)`` (the log-normaliser), gradient ``p = softmax(z)``;
* ``z_y``, the gold logit, gradient ``e_y``;
* optionally ``z_max`` and its id (the top-1 logit: confidence, correctness), gradient ``e_argmax``;
* optionally ``z_mean = (1/V) sum_j z_j`` (label smoothing), gradient ``1/V``;
* optionally ``s = sum_j p_j z_j`` (entropy ``H = lse - s``), gradient ``p * (1 + z - s)``;
* optionally ``z_below = max{z_j : z_j < z_y}`` and its id (dual focal), gradient ``e_below``.

:class:`RowStats` computes them chunk by chunk in float32 (any input dtype: bfloat16 / float16 rows
are upcast one chunk at a time) and, in backward, writes the gradient of the logits once:
``dz = p * (g_lse + g_s * (1 + z - s)) + g_mean / V + scatter(g_y, g_max, g_below)``, computed in
place in the gradient's own rows for float32 logits. Only the statistics a loss asks for are
computed (a focal loss reads two per row: ``lse`` and ``z_y``). Nothing of
size [N, V] is kept for backward beyond the logits themselves (``F.cross_entropy`` keeps its
log-softmax output), and the only [N, V] allocation is the gradient, so peak extra memory is one
``[N, V]`` tensor in the logits' dtype plus one chunk of float32 temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ..errors import ValidationError

REDUCTIONS = ("mean", "sum", "none")
#: float32 elements per chunk (rows x V, 16 MB on a CPU): few enough chunks that the per-op thread
#: synchronisation does not dominate on a loaded machine (2^18 measured 2x slower there); accelerators
#: take larger chunks
_CPU_CHUNK_ELEMENTS = 1 << 22
_DEVICE_CHUNK_ELEMENTS = 1 << 26


def _chunk_rows(n: int, v: int, device: torch.device) -> int:
    budget = _CPU_CHUNK_ELEMENTS if device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    return max(1, min(n, budget // max(1, v)))


class _RowStatsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, labels, want_top, want_mean, want_s, want_below):
        # z [N, V]; labels [N] valid ids (ignored rows carry 0); only the asked-for statistics are computed
        n, v = z.shape
        f32 = dict(device=z.device, dtype=torch.float32)
        lse, zy = torch.empty(n, **f32), torch.empty(n, **f32)
        zmax = torch.empty(n, **f32) if want_top else lse.new_zeros(0)
        amax = torch.empty(n, device=z.device, dtype=torch.long) if want_top else labels.new_zeros(0)
        zmean = torch.empty(n, **f32) if want_mean else lse.new_zeros(0)
        s = torch.empty(n, **f32) if want_s else lse.new_zeros(0)
        zb = torch.empty(n, **f32) if want_below else lse.new_zeros(0)
        ib = torch.empty(n, device=z.device, dtype=torch.long) if want_below else labels.new_zeros(0)
        step = _chunk_rows(n, v, z.device)
        for a in range(0, n, step):
            b = min(n, a + step)
            c = z[a:b].float()
            if want_top:
                # the row maximum serves as logsumexp's shift too: one pass over the chunk fewer
                torch.max(c, dim=1, out=(zmax[a:b], amax[a:b]))
                shift = zmax[a:b].masked_fill(zmax[a:b].abs() == float("inf"), 0.0)  # as logsumexp
                ls = torch.sub(c, shift[:, None]).exp_().sum(dim=1).log_().add_(shift)
            else:
                ls = torch.logsumexp(c, dim=1)
            lse[a:b] = ls
            zy[a:b] = c.gather(1, labels[a:b, None])[:, 0]
            if want_mean:
                zmean[a:b] = c.mean(dim=1)
            if want_s:
                p = torch.exp(c - ls[:, None]).mul_(c)  # p * z, NaN only where p = 0 and z = -inf (masked)
                s[a:b] = torch.nansum(p, dim=1)
            if want_below:
                below = torch.where(c < zy[a:b, None], c, float("-inf"))
                torch.max(below, dim=1, out=(zb[a:b], ib[a:b]))
        ctx.save_for_backward(z, labels, lse, amax, s, ib)
        ctx.flags = (want_top, want_mean, want_s, want_below)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(amax)
        return lse, zy, zmax, amax, zmean, s, zb

    @staticmethod
    @once_differentiable  # a second derivative raises instead of being silently wrong
    def backward(ctx, g_lse, g_y, g_max, _g_amax, g_mean, g_s, g_below):
        z, labels, lse, amax, s, ib = ctx.saved_tensors
        want_top, want_mean, want_s, want_below = ctx.flags
        n, v = z.shape
        zero = torch.zeros(n, device=z.device, dtype=torch.float32)
        coef = zero if g_lse is None else g_lse.float()
        g_y = zero if g_y is None else g_y.float()
        use_s = want_s and g_s is not None
        if use_s:
            g_s = g_s.float()
            coef = coef + g_s * (1.0 - s)
        use_max = want_top and g_max is not None
        use_mean = want_mean and g_mean is not None
        use_below = want_below and g_below is not None
        gz = torch.empty_like(z)
        direct = gz.dtype == torch.float32
        step = _chunk_rows(n, v, z.device)
        for a in range(0, n, step):
            b = min(n, a + step)
            c = z[a:b].float()
            g = gz[a:b] if direct else torch.empty(c.shape, device=c.device, dtype=torch.float32)
            torch.sub(c, lse[a:b, None], out=g)
            g.exp_()  # p
            if use_s:
                # p * (coef + g_s * z); 0 * -inf = NaN at masked ids (p = 0) is set to 0
                g.mul_(torch.addcmul(coef[a:b, None], c, g_s[a:b, None]))
                g.nan_to_num_(nan=0.0)
            else:
                g.mul_(coef[a:b, None])
            if use_mean:
                g.add_((g_mean[a:b].float() / v)[:, None])
            g.scatter_add_(1, labels[a:b, None], g_y[a:b, None])
            if use_max:
                g.scatter_add_(1, amax[a:b, None], g_max[a:b, None].float())
            if use_below:
                g.scatter_add_(1, ib[a:b, None], g_below[a:b, None].float())
            if not direct:
                gz[a:b] = g
        return gz, None, None, None, None, None


@dataclass
class Stats:
    """Per-row statistics of the kept (non-ignored) rows, each a float32 tensor [n] (see module doc);
    the optional ones are None unless asked for."""

    lse: torch.Tensor
    z_y: torch.Tensor
    z_max: torch.Tensor | None  # with top=True
    z_mean: torch.Tensor | None  # with mean=True
    argmax: torch.Tensor | None  # long [n], with top=True
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


def row_stats(logits: Any, labels: Any, *, ignore_index: int = -100, top: bool = False, mean: bool = False,
              entropy: bool = False, below: bool = False) -> Rows:
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
    out = list(_RowStatsFn.apply(z, torch.where(keep, y, 0), top, mean, entropy, below))
    idx = torch.nonzero(keep)[:, 0]
    if idx.numel() < keep.numel():
        out = [t.index_select(0, idx) if t.numel() else t for t in out]
        y = y.index_select(0, idx)
    lse, zy, zmax, amax, zmean, s, zb = out
    st = Stats(lse, zy, zmax if top else None, zmean if mean else None, amax if top else None, y,
               s if entropy else None, zb if below else None, v)
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
