"""Logit sketches: everything tokcal needs from a row of V logits, in O(k + B) numbers.

A row of logits z (length V) is summarised by

* the top-k ids and logits, descending;
* the exact log-normaliser ``log Z(1) = logsumexp(z)``;
* the gold logit ``z_y``;
* a *tail summary* of the V - k logits outside the top-k: at each inverse temperature
  beta_b of a fixed grid (``TailLayout.betas``) the tail log-partition
  ``f(beta_b) = log sum_{j not in top-k} exp(beta_b * z_j)`` and its derivative
  ``f'(beta_b)`` (the tail's mean logit under the tilted distribution).

``f`` is a cumulant generating function: smooth and convex in beta. Between grid nodes it is
interpolated by cubic Hermite splines (value + derivative at both ends), so the log-partition at
any temperature is ``log Z(beta) = logaddexp(logsumexp(beta * top), f(beta))``. At beta = 1 the
stored exact normaliser is used, so every temperature-1 quantity is exact. Off the
grid nodes the error is the Hermite interpolation error (fourth derivative of f), well below
1e-3 nats for 0.25 <= T <= 4 on Zipf-like and Gaussian logits (tests/test_sketch.py).

The node values themselves come from a fine, non-uniform histogram of the tail offsets
``d = z_k - z_j`` (bins narrow near the top, wider far below it), with a per-bin count and mean
and the uniform-density variance ``w^2 / 12`` as the second cumulant; the beta = 1 node is exact.

Sources that return only top-k log-probs (APIs) have an unknown tail; ``sketch_logprobs``
spreads the remaining mass uniformly over the V - k other ids and records
``TailLayout.kind == "uniform-remainder"``.

Every public function takes its input kind explicitly: ``logits`` (unnormalised) or
``logprobs``; temperatures are T (probabilities are softmax(z / T)), scalar or one per row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ValidationError, first_bad_row
from .validation import SketchParams, check_logit_array, check_params

DEFAULT_TOP_K = 32
#: log2 of the inverse-temperature grid nodes (beta = 0 is added in front).
_LOG2_BETA_NODES = np.linspace(-3.0, 3.0, 17)
#: Fine histogram of tail offsets d = z_k - z, log-linear in u = 1 + d / a: 2^(23 - shift) equal
#: bins per octave of u, read off the float32 bits of u (no table, no logarithm); 8 octaves up
#: to d = a * 255 ~ 82, farther offsets in one more overflow bin (count and exact sum).
_FINE_A, _FINE_SHIFT, _FINE_J = 0.32, 19, 128
_FINE_PER_OCTAVE = 1 << (23 - _FINE_SHIFT)
#: the kernel's per-bin int64 accumulator keeps the count above bit 40 (see tokcal._sketch_kernel)
_MAX_KERNEL_VOCAB = 1 << 23
#: the largest vocabulary a TokenTable holds (the numpy kernel's counters, also bounding O(V) buffers)
MAX_VOCAB_SIZE = _MAX_KERNEL_VOCAB - 1
_FINE_EDGES = _FINE_A * (
    2.0 ** (np.arange(_FINE_J + 1) // _FINE_PER_OCTAVE) * (1 + (np.arange(_FINE_J + 1) % _FINE_PER_OCTAVE)
                                                            / _FINE_PER_OCTAVE) - 1.0)
#: per-bin variance of the Gaussian clusters (uniform density in a bin), 0 for the overflow bin of
#: offsets beyond the last edge (kept exactly, as count and sum)
_FINE_VAR = np.append(np.diff(_FINE_EDGES) ** 2 / 12.0, 0.0)


#: the tail summaries a TokenTable can hold (see :class:`TailLayout`)
TAIL_KINDS = ("binned", "uniform-remainder", "empty")


@dataclass(frozen=True)
class TailLayout:
    """How the ``tail`` column is to be read.

    ``kind``: ``"binned"`` (from full logits), ``"uniform-remainder"`` (from top-k log-probs:
    remaining mass spread evenly over the other ids) or ``"empty"`` (k == V).
    ``betas``: inverse temperatures of the nodes, ascending, starting at 0.
    """

    kind: str = "binned"
    betas: tuple[float, ...] = field(
        default_factory=lambda: (0.0, *(float(2.0**e) for e in _LOG2_BETA_NODES))
    )

    def __post_init__(self) -> None:
        if self.kind not in TAIL_KINDS:
            raise ValidationError(f"tail layout: unknown kind {self.kind!r} (known: {', '.join(TAIL_KINDS)})")
        b = np.asarray(self.betas, dtype=np.float64)
        if b.ndim != 1 or b.size < 2 or b[0] != 0.0 or not np.isfinite(b).all() or (np.diff(b) <= 0).any():
            raise ValidationError(f"tail layout: betas must be finite, strictly ascending and start at 0 "
                                  f"(at least 2 nodes), got {list(self.betas)[:20]!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "betas": list(self.betas)}

    @classmethod
    def from_dict(cls, d: Any) -> TailLayout:
        """The layout stored by :meth:`to_dict`; :class:`ValidationError` on anything else."""
        if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or not isinstance(d.get("betas"), list) \
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in d["betas"]):
            raise ValidationError(f"tail layout: expected {{'kind': str, 'betas': [numbers]}}, got {str(d)[:200]}")
        return cls(kind=d["kind"], betas=tuple(float(x) for x in d["betas"]))

    @property
    def n_nodes(self) -> int:
        return len(self.betas)

    @property
    def tail_known(self) -> bool:
        return self.kind != "uniform-remainder"


@dataclass
class LogitSketch:
    """The sketch of N rows: the TokenTable's numeric columns, without the bookkeeping."""

    top_ids: np.ndarray  # int32 [N, k]
    top_logits: np.ndarray  # float32 [N, k], descending
    label_logit: np.ndarray  # float32 [N]; NaN where the label is unknown
    log_normalizer: np.ndarray  # float32 [N], exact logsumexp at T = 1
    tail: np.ndarray  # float32 [N, B, 2]: f(beta_b), f'(beta_b)
    layout: TailLayout
    vocab_size: int

    def __len__(self) -> int:
        return int(self.top_logits.shape[0])

    @property
    def k(self) -> int:
        return int(self.top_logits.shape[1])


# ----------------------------------------------------------------------------------------------
# Building sketches
# ----------------------------------------------------------------------------------------------


def _check_logits_shape(shape: tuple[int, ...], top_k: int) -> None:
    if len(shape) != 2:
        raise ValidationError(f"logits: expected a 2-D array [tokens, vocab], got shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValidationError("logits: empty (0 tokens)")
    if not 1 <= top_k <= shape[1]:
        raise ValidationError(f"top_k={top_k} must be in [1, vocab size {shape[1]}]")


def _check_labels(labels: np.ndarray | None, n: int, vocab_size: int) -> np.ndarray:
    if labels is None:
        return np.full(n, -1, dtype=np.int32)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValidationError(f"labels: expected shape ({n},) to match logits, got {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValidationError(f"labels: expected integer token ids, got dtype {labels.dtype}")
    bad = (labels < -1) | (labels >= vocab_size)
    if bad.any():
        i = first_bad_row(bad)
        raise ValidationError(
            f"labels: row {i} has id {int(labels[i])}, outside [0, {vocab_size}) (use -1 for unknown)"
        )
    return labels.astype(np.int32)


_KERNEL = None


def _n_chunks() -> int:
    """Row chunks of a kernel call: a few per core (each chunk allocates its buffers once). Not
    numba's thread count: asking numba starts its thread pool, see :mod:`tokcal._threads`."""
    return 8 * (os.cpu_count() or 1)


def _sketch_chunk_numpy(z: np.ndarray, labels: np.ndarray, k: int, betas: np.ndarray):
    global _KERNEL
    if _KERNEL is None:
        from ._sketch_kernel import sketch_rows
        from ._threads import torch_aligned

        _KERNEL = torch_aligned(sketch_rows)
    n = z.shape[0]
    top_ids = np.empty((n, k), np.int32)
    top_vals = np.empty((n, k), np.float32)
    log_norm = np.empty(n, np.float64)
    label_logit = np.empty(n, np.float32)
    tail = np.empty((n, len(betas), 2), np.float64)
    bad = np.zeros(n, np.uint8)
    _KERNEL(
        np.ascontiguousarray(z, dtype=np.float32), labels, k, 1.0 / _FINE_A, _FINE_SHIFT, _FINE_EDGES, betas, _FINE_VAR,
        top_ids, top_vals, log_norm, label_logit, tail, bad, _n_chunks(),
    )
    return top_ids, top_vals, log_norm, label_logit, tail, bad


def _fine_bins_torch(d):
    """The fine bin of each offset ``d`` (float32 tensor), as in the numba kernel."""
    import torch

    u = (d.clamp(min=0.0) * (1.0 / _FINE_A) + 1.0).to(torch.float32)
    b = (u.view(torch.int32) - 0x3F800000) >> _FINE_SHIFT
    return b.clamp_(0, _FINE_J).long()  # bin _FINE_J: beyond the last edge


def _sketch_chunk_torch(z, labels: np.ndarray, k: int, betas: np.ndarray):
    import torch

    z = z.detach()
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    dev = z.device
    ok = ~(torch.isnan(z) | torch.isposinf(z)).any(dim=1)  # -inf: a masked id, probability 0
    if not bool(ok.all()):
        z = torch.where(ok[:, None], z, torch.zeros((), dtype=z.dtype, device=dev))
    vals, ids = z.topk(k, dim=1)
    bad = (~ok | torch.isneginf(vals[:, -1])).to(torch.uint8).cpu().numpy()  # or fewer than k finite
    log_norm = torch.logsumexp(z.double() if dev.type == "cpu" else z, dim=1)
    masked = z.scatter(1, ids, float("-inf"))
    tail1 = torch.logsumexp(masked, dim=1) if k < z.shape[1] else torch.full_like(log_norm, float("-inf"))
    b = _fine_bins_torch((vals[:, -1:] - z).float())
    b.masked_fill_(torch.isneginf(z), _FINE_J + 1)  # masked ids are no part of the tail
    b.scatter_(1, ids, _FINE_J + 1)  # top-k go to a discard bin
    ones = torch.ones_like(z)
    cnt = torch.zeros(z.shape[0], _FINE_J + 2, device=dev, dtype=z.dtype).scatter_add_(1, b, ones)
    sm = torch.zeros(z.shape[0], _FINE_J + 2, device=dev, dtype=z.dtype).scatter_add_(1, b, z)
    lab = torch.as_tensor(labels, device=dev, dtype=torch.long)
    lab_logit = z.gather(1, lab.clamp(min=0)[:, None])[:, 0]
    lab_logit = torch.where(lab >= 0, lab_logit, torch.full_like(lab_logit, float("nan")))

    def cpu(t, dtype):
        return t.cpu().numpy().astype(dtype, copy=False)

    tail = _tail_nodes(cpu(cnt[:, :-1], np.float64), cpu(sm[:, :-1], np.float64), cpu(tail1, np.float64), betas)
    return cpu(ids, np.int32), cpu(vals, np.float32), cpu(log_norm, np.float64), cpu(lab_logit, np.float32), tail, bad


def _tail_nodes(cnt: np.ndarray, sm: np.ndarray, tail1: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Node values f(beta_b), f'(beta_b) [n, B, 2] from a fine histogram (count, sum) of the tail."""
    from ._sketch_kernel import tail_nodes
    from ._threads import torch_aligned

    out = np.empty((cnt.shape[0], len(betas), 2), np.float64)
    torch_aligned(tail_nodes)(np.ascontiguousarray(cnt, np.float64), np.ascontiguousarray(sm, np.float64),
               np.ascontiguousarray(tail1, np.float64), np.asarray(betas, np.float64), _FINE_VAR, out, _n_chunks())
    return out


def _bad_row_message(row: Any, i: int, k: int) -> str:
    """Why row ``i`` cannot be sketched: its first NaN or +inf logit, or too few finite logits."""
    r = np.asarray(row.detach().float().cpu().numpy() if hasattr(row, "detach") else row, dtype=np.float64)
    bad = np.flatnonzero(np.isnan(r) | np.isposinf(r))
    if len(bad):
        return f"logits: row {i} contains NaN or inf (id {int(bad[0])} is {r[bad[0]]})"
    return (f"logits: row {i} has {int(np.isfinite(r).sum())} finite logits (the rest -inf, masked ids), "
            f"fewer than top_k={k}")


def _check_float32_range(z: np.ndarray, start: int) -> None:
    """float64 logits beyond float32's range would round to +-inf in the float32 sketch: say so."""
    big = np.isfinite(z) & (np.abs(z) > np.finfo(np.float32).max)
    if big.any():
        i, j = (int(v[0]) for v in np.nonzero(big))
        raise ValidationError(f"logits: row {start + i} id {j} is {float(z[i, j])!r}, beyond the float32 range "
                              f"(+-{float(np.finfo(np.float32).max):.3g}) the sketch stores; logits that large "
                              "are not log-probabilities of any model (rescale them)")


def sketch_logits(
    logits: Any,
    labels: Any = None,
    *,
    top_k: int = DEFAULT_TOP_K,
    chunk_rows: int = 2048,
) -> LogitSketch:
    """Sketch full ``logits`` [N, V] (numpy array or torch tensor, any device).

    Numpy input runs a parallel numba kernel on float32 values (float64 input is rounded chunk by
    chunk to float32, the precision the sketch stores: its top-k then agree with the stored
    logits); torch input is processed on its own device in chunks of ``chunk_rows`` rows, so full
    logits never need to leave the accelerator. ``labels``: gold ids [N] (-1 = unknown) or None.
    A logit of -inf (a masked id) has probability 0 at every temperature and is no part of the
    tail; NaN, +inf, or fewer than ``top_k`` finite logits in a row raise a ValidationError.
    """
    args = check_params("sketch_logits", SketchParams, top_k=top_k, chunk_rows=chunk_rows)
    top_k, chunk_rows = args.top_k, args.chunk_rows
    shape = check_logit_array(logits)
    is_torch = not isinstance(logits, np.ndarray)
    _check_logits_shape(shape, top_k)
    n, vocab = shape
    labels = _check_labels(None if labels is None else _to_numpy(labels), n, vocab)
    if not is_torch:
        if logits.dtype not in (np.float32, np.float64):
            logits = logits.astype(np.float32)
        if vocab >= _MAX_KERNEL_VOCAB:
            raise ValidationError(f"logits: vocabulary of {vocab:,} ids; the numpy sketch kernel counts at most "
                                  f"{_MAX_KERNEL_VOCAB - 1:,} per row (pass a torch tensor instead)")
    layout = TailLayout(kind="binned" if top_k < vocab else "empty")
    betas = np.asarray(layout.betas)
    parts = []
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        z = logits[start:stop]
        lab = labels[start:stop]
        if not is_torch and z.dtype == np.float64:
            _check_float32_range(z, start)
        chunk = _sketch_chunk_torch if is_torch else _sketch_chunk_numpy
        ids, vals, lnorm, lab_logit, tail, bad = chunk(z, lab, top_k, betas)
        if bad.any():
            i = first_bad_row(bad.astype(bool))
            raise ValidationError(_bad_row_message(z[i], start + i, top_k))
        parts.append((ids, vals, lab_logit, lnorm.astype(np.float32), tail.astype(np.float32)))
    cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
    return LogitSketch(*cols, layout=layout, vocab_size=vocab)


def sketch_logprobs(
    top_ids: Any,
    top_logprobs: Any,
    label_logprob: Any,
    *,
    vocab_size: int,
) -> LogitSketch:
    """Sketch from top-k log-probs alone (API outputs: OpenAI, vLLM), tail unknown.

    The mass left outside the top-k, ``r = 1 - sum(exp(top_logprobs))``, is spread evenly over the
    other ``V - k`` ids: ``f(beta) = log(V - k) + beta * log(r / (V - k))``. The log-probs act as
    logits with ``log Z(1) = logaddexp(logsumexp(top), log r) = 0``. ``label_logprob`` [N] is the
    gold token's log-prob (NaN where unknown). Rows are re-sorted descending.
    """
    ids = np.asarray(top_ids)
    lp = np.asarray(top_logprobs, dtype=np.float64)
    if lp.ndim != 2 or ids.shape != lp.shape:
        raise ValidationError(f"top_logprobs: expected matching 2-D arrays, got {ids.shape} and {lp.shape}")
    n, k = lp.shape
    if n == 0:
        raise ValidationError("top_logprobs: empty (0 tokens)")
    if k > vocab_size:
        raise ValidationError(f"top_logprobs: k={k} exceeds vocab_size={vocab_size}")
    if (ids < 0).any() or (ids >= vocab_size).any():
        i = first_bad_row(((ids < 0) | (ids >= vocab_size)).any(axis=1))
        raise ValidationError(f"top_ids: row {i} has an id outside [0, {vocab_size})")
    bad = np.isnan(lp).any(axis=1) | (lp > 1e-6).any(axis=1)
    if bad.any():
        i = first_bad_row(bad)
        raise ValidationError(f"top_logprobs: row {i} has NaN or a log-prob above 0: {lp[i].tolist()}")
    lp = np.maximum(lp, -1e4)  # APIs write -9999 or -inf for "practically zero"
    order = np.argsort(-lp, axis=1, kind="stable")
    lp = np.take_along_axis(lp, order, 1)
    ids = np.take_along_axis(ids, order, 1).astype(np.int32)
    lab = np.asarray(label_logprob, dtype=np.float64)
    lab = np.where(np.isnan(lab), np.nan, np.maximum(lab, -1e4))
    top_mass = np.exp(lp).sum(axis=1)
    rest = vocab_size - k
    layout = TailLayout(kind="uniform-remainder" if rest > 0 else "empty")
    betas = np.asarray(layout.betas)
    tail = np.zeros((n, len(betas), 2), np.float32)  # computed in float64, stored rounded (no float64 copy)
    if rest > 0:
        remainder = np.clip(1.0 - top_mass, 1e-12, 1.0)
        per_id = np.log(remainder / rest)
        tail[:, :, 0] = np.log(rest) + betas[None, :] * per_id[:, None]
        tail[:, :, 1] = per_id[:, None]
        log_norm = np.logaddexp(_logsumexp(lp), np.log(remainder))
    else:
        tail[:, :, 0] = -np.inf
        log_norm = _logsumexp(lp)
    return LogitSketch(
        ids, lp.astype(np.float32), lab.astype(np.float32), log_norm.astype(np.float32),
        tail, layout, int(vocab_size),
    )


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _logsumexp(a: np.ndarray, axis: int = 1) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


# ----------------------------------------------------------------------------------------------
# Quantities at any temperature
# ----------------------------------------------------------------------------------------------


def _beta(temperature: Any, n: int) -> np.ndarray:
    t = np.asarray(temperature, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(n, float(t))
    if t.shape != (n,):
        raise ValidationError(f"temperature: expected a scalar or shape ({n},), got {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        i = first_bad_row(~np.isfinite(t) | (t <= 0))
        raise ValidationError(f"temperature: row {i} has {t[i]}, must be finite and > 0")
    return 1.0 / t


def _convex_clamp(val, d1, d2, t, f0, f1, s0, s1, h):
    """Keep an interpolant of the convex f between its tangents and its chord on [x0, x1].

    With value f0, f1 and slopes s0, s1 at the ends, convexity gives
    ``max(f0 + s0 (b - x0), f1 + s1 (b - x1)) <= f(b) <= f0 + (f1 - f0) t``. A cubic Hermite can
    leave these bounds when f bends sharply inside the interval: a few ids 100+ below the rest make
    f'(0), their weight at beta = 0, very negative while they vanish by beta ~ 0.01. Where it
    leaves them the active bound (a line) is used, with its slope and zero curvature.
    """
    lo0 = f0 + s0 * t * h
    lo1 = f1 - s1 * (1.0 - t) * h
    chord = f0 + (f1 - f0) * t
    use0 = (val < lo0) & (lo0 >= lo1)
    use1 = (val < lo1) & (lo1 > lo0)
    high = val > chord
    val = np.where(use0, lo0, np.where(use1, lo1, np.where(high, chord, val)))
    d1 = np.where(use0, s0, np.where(use1, s1, np.where(high, (f1 - f0) / h, d1)))
    d2 = np.where(use0 | use1 | high, 0.0, d2)
    return val, d1, d2


def tail_cumulants(sk: LogitSketch, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tail log-partition f(beta), f'(beta), f''(beta) per row by cubic Hermite interpolation.

    Above the last node f is extended linearly (f'' = 0), the asymptote of a log-partition.
    Rows without a tail (k == V) get f = -inf, f' = f'' = 0.
    """
    nodes = np.asarray(sk.layout.betas)
    n = len(sk)
    if sk.layout.kind == "empty":
        z = np.zeros(n)
        return np.full(n, -np.inf), z, z
    rows = np.arange(n)
    beyond = beta >= nodes[-1]
    j = np.clip(np.searchsorted(nodes, beta, side="right") - 1, 0, len(nodes) - 2)
    x0, x1 = nodes[j], nodes[j + 1]
    h = x1 - x0
    t = np.clip((beta - x0) / h, 0.0, 1.0)
    f0 = sk.tail[rows, j, 0].astype(np.float64)
    f1 = sk.tail[rows, j + 1, 0].astype(np.float64)
    g0 = sk.tail[rows, j, 1] * h
    g1 = sk.tail[rows, j + 1, 1] * h
    empty = np.isneginf(f0) | np.isneginf(f1)
    if empty.any():
        f0, f1 = np.where(empty, 0.0, f0), np.where(empty, 0.0, f1)
    t2, t3 = t * t, t * t * t
    val = (2 * t3 - 3 * t2 + 1) * f0 + (t3 - 2 * t2 + t) * g0 + (-2 * t3 + 3 * t2) * f1 + (t3 - t2) * g1
    d1 = ((6 * t2 - 6 * t) * f0 + (3 * t2 - 4 * t + 1) * g0 + (-6 * t2 + 6 * t) * f1 + (3 * t2 - 2 * t) * g1) / h
    d2 = ((12 * t - 6) * f0 + (6 * t - 4) * g0 + (-12 * t + 6) * f1 + (6 * t - 2) * g1) / (h * h)
    val, d1, d2 = _convex_clamp(val, d1, d2, t, f0, f1, g0 / h, g1 / h, h)
    if beyond.any():
        last_f = sk.tail[:, -1, 0].astype(np.float64)
        last_g = sk.tail[:, -1, 1].astype(np.float64)
        val = np.where(beyond, last_f + (beta - nodes[-1]) * last_g, val)
        d1 = np.where(beyond, last_g, d1)
        d2 = np.where(beyond, 0.0, d2)
    d2 = np.maximum(d2, 0.0)
    if empty.any():
        val, d1, d2 = np.where(empty, -np.inf, val), np.where(empty, 0.0, d1), np.where(empty, 0.0, d2)
    return val, d1, d2


@dataclass
class TemperatureStats:
    """Row statistics of ``p = softmax(beta z)``: ``log Z``, ``E_p[z]``, ``Var_p[z]``, ``sum_j p_j^2``
    and, when asked for, the top-k probabilities [N, k]."""

    beta: np.ndarray
    logz: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    sum_sq: np.ndarray
    top_probs: np.ndarray | None = None

    @property
    def entropy(self) -> np.ndarray:
        """Shannon entropy in nats, ``H = log Z(beta) - beta E_p[z]``."""
        return np.maximum(self.logz - self.beta * self.mean, 0.0)


def temperature_stats(sk: LogitSketch, temperature: Any = 1.0, *, top_probs: bool = False) -> TemperatureStats:
    """All row statistics at temperature T in one pass over the top-k (numba), plus the tail.

    ``log Z(beta) = log(sum_top exp(beta z) + exp f(beta))``; ``E_p[z]`` and ``Var_p[z]`` add the
    tail's ``f'(beta)`` and ``f''(beta)``; ``sum_j p_j^2 = Z(2 beta) / Z(beta)^2``. At T = 1 the
    stored exact normaliser is used. These are the value, gradient and curvature of the
    log-partition in beta: the NLL of the gold token is ``log Z(beta) - beta z_y``, so a Newton
    step on beta needs exactly these.
    """
    from ._sketch_kernel import temperature_stats as stats_kernel
    from ._threads import torch_aligned

    kernel = torch_aligned(stats_kernel)
    n = len(sk)
    beta = _beta(temperature, n)
    out = [np.empty(n) for _ in range(4)]
    probs = np.empty((n, sk.k) if top_probs else (1, 1))
    tail = np.full((n, 2, 2), -np.inf, np.float32) if sk.layout.kind == "empty" else sk.tail
    nodes = np.asarray(sk.layout.betas[:2] if sk.layout.kind == "empty" else sk.layout.betas, np.float64)
    kernel(np.ascontiguousarray(sk.top_logits), np.ascontiguousarray(tail), nodes, beta,
           sk.log_normalizer, *out, probs, top_probs)
    return TemperatureStats(beta, *out, top_probs=probs if top_probs else None)


def logit_moments(sk: LogitSketch, temperature: Any = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``log Z(beta)``, ``E_p[z]`` and ``Var_p[z]`` under ``p = softmax(beta z)``, beta = 1/T."""
    st = temperature_stats(sk, temperature)
    return st.logz, st.mean, st.var


def log_partition(sk: LogitSketch, temperature: Any = 1.0) -> np.ndarray:
    """``log Z(T) = log sum_j exp(z_j / T)`` per row (float64); exact at T = 1."""
    return temperature_stats(sk, temperature).logz


def top_logprobs(sk: LogitSketch, temperature: Any = 1.0) -> np.ndarray:
    """Log-probabilities of the top-k ids at temperature T, [N, k] float64."""
    beta = _beta(temperature, len(sk))
    return beta[:, None] * sk.top_logits.astype(np.float64) - log_partition(sk, temperature)[:, None]


def label_logprob(sk: LogitSketch, temperature: Any = 1.0) -> np.ndarray:
    """Log-probability of the gold token at temperature T (NaN where the label is unknown)."""
    beta = _beta(temperature, len(sk))
    return beta * sk.label_logit.astype(np.float64) - log_partition(sk, temperature)


def confidence(sk: LogitSketch, temperature: Any = 1.0) -> np.ndarray:
    """Top-1 probability ``c = max_j p_j`` at temperature T."""
    beta = _beta(temperature, len(sk))
    return np.exp(beta * sk.top_logits[:, 0].astype(np.float64) - log_partition(sk, temperature))


def entropy(sk: LogitSketch, temperature: Any = 1.0) -> np.ndarray:
    """Shannon entropy in nats, ``H = log Z(beta) - beta E_p[z]``."""
    return temperature_stats(sk, temperature).entropy


def sum_sq_probs(sk: LogitSketch, temperature: Any = 1.0) -> np.ndarray:
    """``sum_j p_j^2 = Z(2 beta) / Z(beta)^2`` (the quadratic term of the full Brier score)."""
    return temperature_stats(sk, temperature).sum_sq
