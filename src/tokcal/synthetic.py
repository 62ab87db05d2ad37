"""Synthetic token tables with known true probabilities (for tests and benchmarks).

The generative model: for each token i the model emits logits z_i (LM-like, see
:func:`make_logits`), and the gold label is drawn from the *true* distribution
``softmax(beta*_i * z_i)``. A model is therefore perfectly calibrated when beta* = 1,
over-confident when beta* < 1 (the truth is flatter than the model) and under-confident when
beta* > 1; the ideal temperature is ``T* = 1 / beta*``.

beta* may be one number, one per domain (a ``domain`` group column), or a function of a
per-token feature stored in ``table.features`` (``log beta* = b + w * feature``).
:func:`true_beta` returns the per-row beta* of a table made here. Everything is deterministic
under ``seed`` (numpy ``default_rng``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from .errors import ValidationError
from .sketch import MAX_VOCAB_SIZE
from .table import GroupColumn, TokenTable
from .validation import Float, Int, Params, PositiveFloat, PositiveInt, Seed, check_params

#: rows per generated chunk, fewer for large vocabularies: at most ``_CHUNK_VALUES`` float32 logits at once
_CHUNK = 32768
_CHUNK_VALUES = 1 << 28
#: the largest synthetic table (tokens) and full logit array (values, 4 bytes each) made on request
MAX_TOKENS = 10**8
MAX_LOGIT_VALUES = 1 << 30
_SPECIALS = ("<eos>", "<bos>", "<pad>", "<unk>")
_PUNCT = (".", ",", "Ġ(", ")", "!", "?", ";", ":", "'", "\"", "-", "Ġ-", "...", "Ġ\"")
_CONS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def _zipf_base(vocab_size: int, zipf_s: float) -> np.ndarray:
    """Global log-frequencies ``-s * log(rank)``: id 0 is the most frequent token."""
    return -zipf_s * np.log(np.arange(1, vocab_size + 1, dtype=np.float64))


def _logits_chunk(rng: np.random.Generator, n: int, base: np.ndarray) -> np.ndarray:
    """n rows of LM-like logits.

    ``z_ij = s_i * (0.5 * g_j + 0.5 * h_ij) + 0.3 * eps_ij``: a global Zipf preference
    ``g_j = -zipf_s * log(j + 1)`` (so some ids are frequent overall), a context-specific Zipf profile
    ``h_ij = -zipf_s * log(1 + U_ij * V)`` with U uniform (the Zipf values in a random order per
    context, drawn with replacement, so each context has its own favourites), and Gaussian noise.
    The per-row sharpness ``s_i ~ logNormal(1.0, 0.6)`` gives peaked and flat rows, so top-1
    confidences span (0, 1).
    """
    v = base.shape[0]
    zipf_s = -base[1] / np.log(2.0) if v > 1 else 1.0
    u = rng.random((n, v), dtype=np.float32)
    ctx = np.float32(-zipf_s) * np.log1p(u * np.float32(v))
    sharp = np.exp(rng.normal(1.0, 0.6, size=(n, 1))).astype(np.float32)
    z = sharp * (np.float32(0.5) * base.astype(np.float32)[None, :] + np.float32(0.5) * ctx)
    z += np.float32(0.3) * rng.standard_normal((n, v), dtype=np.float32)
    return z


def make_logits(n_tokens: int, vocab_size: int, *, zipf_s: float = 1.1, seed: int = 0) -> np.ndarray:
    """LM-like logits ``[n_tokens, vocab_size]`` float32 (see :func:`_logits_chunk` for the model)."""
    rows = _check_sizes(n_tokens, vocab_size)
    if n_tokens * vocab_size > MAX_LOGIT_VALUES:
        raise ValidationError(f"make_logits: {n_tokens:,} x {vocab_size:,} logits exceed {MAX_LOGIT_VALUES:,} "
                              "values (4 GiB); use make_table, which generates in chunks")
    rng = np.random.default_rng(seed)
    base = _zipf_base(vocab_size, zipf_s)
    return np.concatenate([_logits_chunk(rng, min(rows, n_tokens - s), base)
                           for s in range(0, n_tokens, rows)])


def sample_labels(logits: Any, beta_star: Any = 1.0, seed: int = 0) -> np.ndarray:
    """Draw y_i ~ softmax(beta*_i * z_i) by the Gumbel-max trick (argmax of beta* z + Gumbel noise).

    ``beta_star`` is a scalar or one value per row, all > 0. Chunked over rows. Returns int32 [N].
    """
    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValidationError(f"sample_labels: logits must be [N, V] with N, V >= 1, got shape {z.shape}")
    n, v = z.shape
    beta = np.broadcast_to(np.asarray(beta_star, dtype=np.float64), (n,)) if np.ndim(beta_star) == 0 \
        else np.asarray(beta_star, dtype=np.float64)
    if beta.shape != (n,):
        raise ValidationError(f"sample_labels: beta_star has shape {beta.shape}, expected () or ({n},)")
    if not (np.isfinite(beta).all() and (beta > 0).all()):
        raise ValidationError("sample_labels: beta_star must be finite and > 0")
    rng = np.random.default_rng(seed)
    out = np.empty(n, np.int32)
    step = max(1, (1 << 22) // v)
    for s in range(0, n, step):
        e = min(n, s + step)
        g = rng.gumbel(size=(e - s, v))
        out[s:e] = np.argmax(beta[s:e, None] * z[s:e].astype(np.float64) + g, axis=1)
    return out


def make_vocab(vocab_size: int) -> list[str]:
    """A synthetic vocabulary of unique strings, frequent ids first, with every token type.

    First ``"Ġthe"``, punctuation, newlines (``"Ċ"``, ``"\\n"``), ``"Ġ"``, ``"<eos>"`` and digits; then
    a mix of word-initial pieces (``"Ġ"`` + pseudo-word), continuation pieces (no marker) and numbers
    (``"Ġ1999"``, ``"07"``); the last ids are the rare specials ``<bos> <pad> <unk>``.
    """
    if vocab_size < 1:
        raise ValidationError(f"make_vocab: vocab_size must be >= 1, got {vocab_size}")
    head = ["Ġthe", ",", ".", "Ċ", "\n", "Ġ", *_PUNCT[2:], "<eos>", *[str(d) for d in range(10)]]
    vocab: list[str] = []
    seen: set[str] = set()

    def add(s: str) -> None:
        if s not in seen and len(vocab) < vocab_size:
            seen.add(s)
            vocab.append(s)

    for s in head:
        add(s)
    specials = [t for t in _SPECIALS if t != "<eos>"][: max(0, vocab_size - len(head))]
    vocab_size -= len(specials)  # the other specials are the rarest ids, at the end
    j = 0
    while len(vocab) < vocab_size:
        syl = _CONS[j % len(_CONS)] + _VOWELS[(j // len(_CONS)) % len(_VOWELS)]
        word = syl + _CONS[(j // 90) % len(_CONS)] * (1 + j // 1620) + ("" if j < 90 else _VOWELS[(j // 7) % 5])
        kind = j % 10
        if kind < 6:
            add("Ġ" + word)
        elif kind < 9:
            add(word)
        else:
            add(f"Ġ{1900 + j}" if j % 20 == 9 else f"{j % 100:02d}")
        j += 1
        if j > 50 * vocab_size + 1000:  # pragma: no cover - cannot happen, guards the loop
            add(f"<tok{len(vocab)}>")
    return vocab + specials


def make_table(
    n_tokens: int = 20000,
    vocab_size: int = 1000,
    *,
    beta_star: float = 1.0,
    domains: Mapping[str, float] | None = None,
    feature_beta: Callable[[np.ndarray], np.ndarray] | tuple[float, float] | None = None,
    seq_len: int = 50,
    top_k: int = 32,
    zipf_s: float = 1.1,
    seed: int = 0,
) -> TokenTable:
    """A TokenTable whose labels are drawn from ``softmax(beta*_i * z_i)`` (known truth).

    Rows form sequences of ``seq_len`` tokens (``sequence_id = i // seq_len``, ``position = i % seq_len``).

    * ``domains``: name -> beta*; each sequence gets one domain (uniformly at random), stored as the
      group column ``domain``; ``beta_star`` is then ignored.
    * ``feature_beta``: ``(w, b)`` for ``log beta* = b + w * feature`` or a callable feature -> beta*;
      the feature (standard normal per token) is ``table.features[:, 0]``. With ``domains`` as well,
      the two multiply.
    * The vocabulary is :func:`make_vocab`; ``source`` records the generator settings.

    Use :func:`true_beta` for the per-row beta*. Generated in chunks, so memory stays bounded.
    """
    check_params("make_table", _TableParams, n_tokens=n_tokens, vocab_size=vocab_size, beta_star=beta_star,
                 domains=dict(domains) if isinstance(domains, Mapping) else domains, seq_len=seq_len, seed=seed)
    rows = _check_sizes(n_tokens, vocab_size)
    ss = np.random.SeedSequence(seed)
    rng_meta, rng_logits, rng_labels = (np.random.default_rng(s) for s in ss.spawn(3))
    idx = np.arange(n_tokens)
    seq = (idx // seq_len).astype(np.int64)
    pos = (idx % seq_len).astype(np.int32)
    n_seq = int(seq[-1]) + 1

    beta = np.full(n_tokens, float(beta_star))
    groups = None
    source: dict[str, Any] = {"model": "synthetic", "seed": seed, "zipf_s": zipf_s, "seq_len": seq_len}
    if domains is not None:
        names = list(domains)
        seq_dom = rng_meta.integers(0, len(names), size=n_seq)
        codes = seq_dom[seq].astype(np.int32)

        groups = {"domain": GroupColumn(codes, tuple(names))}
        beta = np.asarray([float(domains[k]) for k in names])[codes]
        source["domains"] = {k: float(b) for k, b in domains.items()}
    else:
        source["beta_star"] = float(beta_star)
    features = None
    if feature_beta is not None:
        feat = rng_meta.standard_normal(n_tokens)
        features = feat[:, None].astype(np.float32)
        fb = _feature_beta(feature_beta, features[:, 0].astype(np.float64))
        beta = beta * fb
        if callable(feature_beta):
            source["feature_beta"] = "callable"
        else:
            source["feature_beta"] = [float(feature_beta[0]), float(feature_beta[1])]

    base = _zipf_base(vocab_size, zipf_s)
    parts = []
    for s in range(0, n_tokens, rows):
        e = min(n_tokens, s + rows)
        z = _logits_chunk(rng_logits, e - s, base)
        y = sample_labels(z, beta[s:e], seed=int(rng_labels.integers(2**63)))
        parts.append(TokenTable.from_logits(z, y, sequence_ids=seq[s:e], positions=pos[s:e],
                                            top_k=min(top_k, vocab_size)))
    table = parts[0] if len(parts) == 1 else TokenTable.concat(parts)
    table.groups = dict(groups or {})
    table.features = features
    table.vocab = make_vocab(vocab_size)
    table.source = source
    table._true_beta = beta  # type: ignore[attr-defined]  # not persisted; see true_beta()
    table.validate()
    return table


def true_beta(table: TokenTable) -> np.ndarray:
    """Per-row beta* of a table made by :func:`make_table` (also after a Parquet round trip,
    except for a callable ``feature_beta``, whose values only live on the in-memory table)."""
    cached = getattr(table, "_true_beta", None)
    if cached is not None and len(cached) == len(table):
        return np.asarray(cached, dtype=np.float64)
    src = table.source
    if src.get("model") != "synthetic":
        raise ValidationError("true_beta: table was not made by tokcal.synthetic.make_table")
    if "domains" in src:
        g = table.group("domain")
        beta = np.asarray([float(src["domains"][c]) for c in g.categories])[g.codes]
    else:
        beta = np.full(len(table), float(src["beta_star"]))
    fb = src.get("feature_beta")
    if fb == "callable":
        raise ValidationError("true_beta: the table's feature_beta was a callable; its beta* is not stored")
    if fb is not None:
        if table.features is None:
            raise ValidationError("true_beta: source has feature_beta but the table has no features")
        beta = beta * _feature_beta(tuple(fb), table.features[:, 0].astype(np.float64))
    return beta


def _feature_beta(spec: Any, feature: np.ndarray) -> np.ndarray:
    if callable(spec):
        out = np.asarray(spec(feature), dtype=np.float64)
        out = np.broadcast_to(out, feature.shape)
    else:
        try:
            w, b = (float(x) for x in spec)
        except (TypeError, ValueError):
            raise ValidationError(f"feature_beta must be a callable or a pair (w, b), got {spec!r}") from None
        out = np.exp(b + w * feature)
    if not (np.isfinite(out).all() and (out > 0).all()):
        raise ValidationError("feature_beta produced a beta* that is not finite and > 0")
    return out


class _TableParams(Params):
    """The sizes, truth and seed of :func:`make_table` (and the sizes of :func:`make_logits`)."""

    n_tokens: Annotated[Int, Field(ge=1, le=MAX_TOKENS)]
    vocab_size: Annotated[Int, Field(ge=2, le=MAX_VOCAB_SIZE)]
    beta_star: PositiveFloat = 1.0
    domains: Annotated[dict[str, PositiveFloat], Field(min_length=1)] | None = None
    seq_len: PositiveInt = 50
    seed: Seed = 0
    zipf_s: Float = 1.1


def _check_sizes(n_tokens: int, vocab_size: int) -> int:
    """Validate the sizes; return the rows per generated chunk."""
    check_params("make_logits", _TableParams, n_tokens=n_tokens, vocab_size=vocab_size)
    return max(1, min(_CHUNK, _CHUNK_VALUES // vocab_size))
