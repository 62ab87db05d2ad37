"""Per-token calibrated confidence of a text (teacher forcing) or of a generation.

For each token t_i of the text, with next-token logits z_i (the model's prediction of t_i from the
tokens before it) and calibrated logits z'_i = calibrator.transform_logits(z_i, context):

* ``raw_prob``        softmax(z_i)[t_i]
* ``prob``            softmax(z'_i)[t_i]        (calibrated probability of the token)
* ``confidence``      max_j softmax(z'_i)[j]    (calibrated confidence of the top choice, ``top_id``)
* ``entropy``         -sum_j p'_ij log p'_ij    (calibrated, nats)
* ``set_size``        size of the conformal token set (when a conformal calibrator is given)
* ``flagged``         confidence below the abstainer's threshold (when an abstainer is given)

Spans are character offsets ``[start, end)`` into ``text`` that tile it: concatenating
``text[start:end]`` over the tokens gives back the text exactly (a byte-level token that holds only part
of a multi-byte character gets an empty span; the character goes to the token that completes it).

Text input is tokenised with offsets (a fast tokenizer); when the tokenizer has a BOS token it is
prepended so the first token gets a prediction too, otherwise the first token has NaN probabilities.
A generation (``generate(..., return_dict_in_generate=True, output_logits=True)``) is annotated from its
*raw* logits (``output.logits``), never the processed ``scores`` (which already include calibration and
sampling warpers); its text is the decoded continuation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import TokcalError


@dataclass
class Annotation:
    """Per-token annotation of one text; arrays have one entry per token (see module docstring)."""

    text: str
    token_ids: np.ndarray
    spans: np.ndarray
    raw_prob: np.ndarray
    prob: np.ndarray
    confidence: np.ndarray
    top_id: np.ndarray
    entropy: np.ndarray
    position: np.ndarray
    set_size: np.ndarray | None = None
    flagged: np.ndarray | None = None
    review_spans: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    def token_text(self, i: int) -> str:
        s, e = self.spans[i]
        return self.text[s:e]

    @property
    def tokens(self) -> list[dict[str, Any]]:
        """One dict per token: text, start, end, id and the quantities (NaN -> None)."""
        out = []
        for i in range(len(self)):
            d: dict[str, Any] = {
                "text": self.token_text(i), "start": int(self.spans[i, 0]), "end": int(self.spans[i, 1]),
                "id": int(self.token_ids[i]), "position": int(self.position[i]),
            }
            for name in ("raw_prob", "prob", "confidence", "entropy"):
                v = float(getattr(self, name)[i])
                d[name] = v if np.isfinite(v) else None
            d["top_id"] = int(self.top_id[i]) if self.top_id[i] >= 0 else None
            if self.set_size is not None:
                d["set_size"] = int(self.set_size[i]) if self.set_size[i] >= 0 else None
            if self.flagged is not None:
                d["flagged"] = bool(self.flagged[i])
            out.append(d)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens,
                "review_spans": [list(s) for s in self.review_spans] if self.review_spans is not None else None}


# -- spans -------------------------------------------------------------------------------------------


def spans_from_offsets(offsets: Any, text_len: int) -> np.ndarray:
    """Tile ``[0, text_len)`` with one span per token from tokenizer offsets.

    Token i ends at the running maximum of the offset ends; it starts where token i - 1 ended (the first
    at 0), and the last token runs to the end of the text, so whitespace and characters the tokenizer
    trimmed from offsets are kept and the spans concatenate to the text.
    """
    ends = np.maximum.accumulate(np.asarray(offsets, dtype=np.int64).reshape(-1, 2)[:, 1]) if len(offsets) \
        else np.zeros(0, np.int64)
    ends = np.minimum(ends, text_len)
    if ends.size:
        ends[-1] = text_len
    starts = np.r_[0, ends[:-1]] if ends.size else ends
    return np.stack([starts, ends], axis=1) if ends.size else np.zeros((0, 2), np.int64)


def spans_by_decoding(tokenizer: Any, ids: list[int]) -> tuple[str, np.ndarray]:
    """Text of ``ids`` and its tiling spans by incremental decoding.

    The prefix decoded after token i ends the span of token i, except while it ends inside a multi-byte
    character (a trailing U+FFFD), where the span stays empty until the character completes.
    """
    def dec(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    text = dec(ids)
    ends, prev = [], 0
    for i in range(len(ids)):
        prefix = dec(ids[: i + 1])
        end = prev if prefix.endswith("\ufffd") and i + 1 < len(ids) else len(prefix)
        if not text.startswith(prefix[:end]):  # decoding is not prefix-stable here: keep the span empty
            end = prev
        prev = max(prev, min(end, len(text)))
        ends.append(prev)
    e = np.asarray(ends, dtype=np.int64)
    if e.size:
        e[-1] = len(text)
    return text, np.stack([np.r_[0, e[:-1]], e], axis=1) if e.size else np.zeros((0, 2), np.int64)


# -- probabilities -------------------------------------------------------------------------------------


def _set_sizes(result: Any, n: int) -> np.ndarray:
    """Sizes of conformal sets in any of the shapes ``sets`` may return."""
    sizes = getattr(result, "sizes", None)
    if sizes is not None:
        return np.asarray(sizes() if callable(sizes) else sizes, dtype=np.int64).reshape(n)
    arr = result if isinstance(result, np.ndarray) else None
    if arr is not None and arr.dtype == bool and arr.ndim == 2:
        return arr.sum(1).astype(np.int64)
    return np.asarray([len(s) for s in result], dtype=np.int64)


def _quantities(
    logits: torch.Tensor, targets: torch.Tensor, calibrator: Any, context: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    z = logits.float()
    cal = torch.as_tensor(calibrator.transform_logits(z, dict(context)), dtype=torch.float32)
    lp_raw = torch.log_softmax(z, -1)
    lp = torch.log_softmax(cal, -1)
    p = lp.exp()
    conf, top = p.max(-1)
    idx = targets.clamp(min=0)[:, None]
    ent = torch.special.entr(p).sum(-1)
    return {
        "raw_prob": lp_raw.gather(1, idx)[:, 0].exp().numpy().astype(np.float64),
        "prob": lp.gather(1, idx)[:, 0].exp().numpy().astype(np.float64),
        "confidence": conf.numpy().astype(np.float64),
        "top_id": top.numpy().astype(np.int64),
        "entropy": ent.numpy().astype(np.float64),
    }


def _annotation(
    text: str, ids: np.ndarray, spans: np.ndarray, logits: torch.Tensor, has_pred: np.ndarray,
    positions: np.ndarray, calibrator: Any, groups: Mapping[str, Any] | None, conformal: Any, abstainer: Any,
) -> Annotation:
    n = ids.shape[0]
    q = {k: np.full(n, np.nan) for k in ("raw_prob", "prob", "confidence", "entropy")}
    q["top_id"] = np.full(n, -1, np.int64)
    rows = np.flatnonzero(has_pred)
    set_size = None
    if rows.size:
        ctx = {"position": positions[rows], **{k: v for k, v in (groups or {}).items()}}
        got = _quantities(logits, torch.as_tensor(ids[rows], dtype=torch.long), calibrator, ctx)
        for k, v in got.items():
            q[k][rows] = v
        if conformal is not None:
            from ..table import TokenTable

            table = TokenTable.from_logits(logits.float().numpy(), ids[rows].astype(np.int32),
                                           positions=positions[rows], groups=groups_rows(groups, rows.size))
            set_size = np.full(n, -1, np.int64)
            set_size[rows] = _set_sizes(conformal.sets(table), rows.size)
    elif conformal is not None:
        set_size = np.full(n, -1, np.int64)
    flagged = review = None
    if abstainer is not None:
        flagged = abstainer.flag(q["confidence"])
        review = abstainer.review_spans(flagged, spans)
    return Annotation(text, ids.astype(np.int64), spans, q["raw_prob"], q["prob"], q["confidence"], q["top_id"],
                      q["entropy"], positions.astype(np.int64), set_size, flagged, review)


def groups_rows(groups: Mapping[str, Any] | None, n: int) -> dict[str, Any] | None:
    """Group values broadcast to n rows (a scalar value repeats)."""
    if not groups:
        return None
    return {k: (np.full(n, v, dtype=object) if np.ndim(v) == 0 else np.asarray(v, dtype=object))
            for k, v in groups.items()}


# -- entry point -------------------------------------------------------------------------------------------


def _model_device(model: Any) -> Any:
    return getattr(model, "device", None) or next(model.parameters()).device


def _annotate_text(model: Any, tokenizer: Any, text: str, max_length: int | None) -> tuple:
    if not getattr(tokenizer, "is_fast", False):
        raise TokcalError("annotate needs a fast tokenizer (character offsets); got a slow one")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    spans = spans_from_offsets(enc["offset_mapping"], len(text))
    bos = getattr(tokenizer, "bos_token_id", None)
    inp = np.r_[bos, ids] if bos is not None else ids
    limit = max_length or getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None)
    if limit is not None and inp.size > limit:
        raise TokcalError(f"annotate: the text is {inp.size} tokens long, more than the model's "
                          f"{limit}-token context; split it")
    if ids.size == 0:
        return ids, spans, torch.zeros(0, 0), np.zeros(0, bool), np.zeros(0, np.int64)
    with torch.no_grad():
        x = torch.as_tensor(inp)[None].to(_model_device(model))
        out = model(input_ids=x, attention_mask=torch.ones_like(x))
    logits = out.logits[0].float().cpu()
    shift = 1 if bos is not None else 0
    has_pred = np.ones(ids.size, bool)
    if bos is None:
        has_pred[0] = False
    # logits[j] predicts inp[j + 1]; token ids[i] sits at inp[i + shift]
    pred_rows = np.flatnonzero(has_pred) + shift - 1
    positions = np.arange(ids.size) + shift
    return ids, spans, logits[pred_rows], has_pred, positions


def annotate(
    model: Any,
    tokenizer: Any,
    text_or_generation: Any,
    calibrator: Any,
    conformal: Any = None,
    abstainer: Any = None,
    *,
    groups: Mapping[str, Any] | None = None,
    max_length: int | None = None,
) -> Annotation | list[Annotation]:
    """Per-token calibrated confidence of a text or of a ``generate`` output (``tokcal.annotate``).

    ``text_or_generation``: a string (teacher-forced through ``model``), or the output of
    ``model.generate(..., return_dict_in_generate=True, output_logits=True)`` / ``tokcal.generate`` with
    the same flags — then one :class:`Annotation` per returned sequence (a list), of its generated tokens
    only, from the raw logits. ``conformal``: a conformal calibrator (``sets(table)``) for set sizes;
    ``abstainer``: an :class:`~tokcal.integrations.abstain.Abstainer` that flags tokens and review spans.
    """
    if isinstance(text_or_generation, str):
        text = text_or_generation
        ids, spans, logits, has_pred, positions = _annotate_text(model, tokenizer, text, max_length)
        return _annotation(text, ids, spans, logits, has_pred, positions, calibrator, groups, conformal,
                           abstainer)
    return _annotate_generation(tokenizer, text_or_generation, calibrator, groups, conformal, abstainer)


def _annotate_generation(tokenizer: Any, gen: Any, calibrator: Any, groups: Any, conformal: Any,
                         abstainer: Any) -> list[Annotation]:
    seqs = getattr(gen, "sequences", None)
    raw = getattr(gen, "logits", None)
    if seqs is None or raw is None:
        raise TokcalError("annotate: a generation must come from generate(..., return_dict_in_generate=True, "
                          "output_logits=True); its raw logits are missing")
    if getattr(gen, "beam_indices", None) is not None:
        raise TokcalError("annotate: beam-search outputs are not supported (their logits follow beams, not "
                          "the returned sequences); annotate the returned text instead")
    steps = len(raw)
    logits = torch.stack([t.float().cpu() for t in raw], 1)  # [rows, steps, V]
    seqs = seqs.cpu()
    prompt_len = seqs.shape[1] - steps
    pad = getattr(tokenizer, "pad_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    out = []
    for r in range(seqs.shape[0]):
        new = seqs[r, prompt_len:].tolist()
        # after the first EOS the sequence only holds padding: stop there (the EOS itself is annotated)
        stop = next((i + 1 for i, t in enumerate(new) if eos is not None and t == eos), len(new))
        new = new[:stop]
        prompt = seqs[r, :prompt_len]
        n_pad = int((prompt == pad).cumprod(0).sum()) if pad is not None else 0
        text, spans = spans_by_decoding(tokenizer, new)
        ids = np.asarray(new, dtype=np.int64)
        positions = prompt_len - n_pad + np.arange(ids.size)
        out.append(_annotation(text, ids, spans, logits[r, : ids.size], np.ones(ids.size, bool), positions,
                               calibrator, groups, conformal, abstainer))
    return out
